//! The ONNX machinery under the paper's graph: the [`builder`] the modules of `crate::graph` append
//! nodes to, shape and type inference ([`infer`]), the cost model ([`cost`]), the precision passes
//! ([`precision`]: FP16, INT8 Q/DQ, calibration taps) and a reference runner ([`run`]). Nothing here
//! knows ReferDINO: the model lives in `crate::graph`, which depends on this module and never the
//! other way round.

pub mod batch_axis;
pub mod builder;
pub mod cost;
pub mod infer;
pub mod int8_products;
pub mod precision;
pub mod run;
pub mod scope;

pub use builder::{Bias, Graph, GraphOptions, Value};
pub use scope::{Scope, Weights};
