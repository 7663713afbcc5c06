//! Helpers shared by the integration-test binaries; each binary that needs them includes this folder
//! with `#[path = "../support/mod.rs"] mod support;`.
#![allow(dead_code)]

pub mod common;
pub mod int8_oracle;
pub mod xformer;
