//! CUDA kernels and TensorRT plugins for referdino's custom ops `MSDeformAttn` and `QueryPrune`.
//!
//! * [`sources`]: the `.cu` kernel sources (always available, embedded with `include_str!`).
//! * [`dims`]: problem sizes, validation and launch geometry (pure Rust).
//! * [`plugin`]: the TensorRT plugin logic (shape inference, type/format negotiation, attributes,
//!   workspace) in plain Rust, testable without TensorRT.
//! * `kernels` (feature `cuda`): NVRTC compilation and driver-API launches.
//! * `ffi` (feature `tensorrt`): the `extern "C"` surface the C++ shim (`shim/`) forwards TensorRT's
//!   virtual calls to, plus the `getCreators`/`setLoggerFinder` exports `trtexec --dynamicPlugins` needs.

pub mod dims;
pub mod error;
pub mod plugin;
pub mod sources;
pub mod tracks;

#[cfg(feature = "cuda")]
pub mod kernels;

#[cfg(feature = "tensorrt")]
mod ffi;

pub use error::{Error, Result};
