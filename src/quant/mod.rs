//! INT8 calibration and the precision policy for reduced-precision engines.
//!
//! TensorRT 11 has no implicit INT8 calibrators and no FP16/INT8 builder flags, so every precision decision
//! lives in the exported ONNX: explicit casts for FP16 (strongly typed network) and explicit
//! QuantizeLinear/DequantizeLinear pairs for INT8. This module supplies everything the graph builder needs
//! for that, independent of TensorRT:
//!
//! - [`histogram`]: per-tensor histograms of |x| gathered over a calibration set;
//! - [`calibrate`]: amax selection by entropy (KL divergence, the TensorRT method), percentile or max;
//! - [`scale`]: scale tables (tensor name → symmetric INT8 scale, zero point 0) with serde I/O, and
//!   per-channel weight scales;
//! - [`fake`]: the fake-quantize maths (exactly ONNX QuantizeLinear → DequantizeLinear);
//! - [`policy`]: the engine [`Precision`] and the policy table as Markdown (the policy itself, and the Q/DQ
//!   insertion, live in one place: [`crate::onnx::precision`]);
//! - [`collect`]: the collector that turns named activations into a [`scale::ScaleTable`];
//! - [`recipe`]: the calibration recipe format (`calib/*.toml`);
//! - [`engines`]: the engines at a precision (FP16 / INT8 Q/DQ from a scale table, TensorRT's form or
//!   the host form of `--int8`), exported or made in memory ([`engines::HostInt8`]).
//!
//! Running the model for calibration and agreement is [`crate::calibration`]'s (it runs sessions of the
//! pipeline, which uses this module to make INT8 engines).

pub mod calibrate;
pub mod collect;
pub mod engines;
pub mod fake;
pub mod histogram;
pub mod policy;
pub mod recipe;
pub mod scale;

pub use calibrate::CalibMethod;
pub use fake::fake_quant;
pub use policy::Precision;
pub use scale::{ScaleTable, TensorScale};
