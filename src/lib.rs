//! referdino: an edge runtime for ReferDINO referring video object segmentation.
//!
//! The network is defined once (`graph`), emitted as ONNX engines, and run by a [`backend::Backend`]:
//! the CPU backend everywhere, TensorRT on Jetson. See docs/architecture.md and docs/model.md.

pub mod access;
pub mod backend;
pub mod calibration;
pub mod camera;
pub mod cli;
pub mod config;
pub mod engines;
pub mod error;
pub mod eval;
#[doc(hidden)]
pub mod fuzzing;
pub mod graph;
pub mod limits;
pub mod onnx;
pub mod ops;
pub mod output;
pub mod pipeline;
pub mod quant;
#[cfg(feature = "ros2")]
pub mod ros2;
pub mod tensor;
pub mod text;
pub mod weights;

pub use error::{Error, Result};
