//! Helpers shared by the integration tests: a module of `tests/suite.rs`; the other binaries that need
//! them include this folder with `#[path = "../support/mod.rs"] mod support;`.
#![allow(dead_code)]

pub mod cameras;
pub mod common;
pub mod int8_oracle;
pub mod onnx_oracle;
pub mod xformer;
