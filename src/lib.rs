//! referdino: an edge runtime for ReferDINO referring video object segmentation.
//!
//! The network is defined once (`graph`), emitted as ONNX engines, and run by a [`backend::Backend`]:
//! the CPU backend everywhere, TensorRT on Jetson. See `ARCHITECTURE` notes in the README.

pub mod backend;
pub mod cli;
pub mod engines;
pub mod error;
pub mod graph;
pub mod output;
pub mod quant;
pub mod tensor;

pub use error::{Error, Result};
