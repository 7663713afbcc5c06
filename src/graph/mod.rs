//! The ReferDINO network, defined once, as an ONNX graph builder.
//!
//! One file per paper module, each a plain function that reads like the paper and appends nodes to a
//! [`builder::Graph`]. [`engines`] splits the network into the four engines of the runtime.

pub mod attention;
pub mod bert;
pub mod builder;
pub mod cost;
pub mod decoder;
pub mod engines;
pub mod enhancer;
pub mod export;
pub mod fpn;
pub mod heads;
pub mod infer;
pub mod input_proj;
pub mod mask_decoder;
pub mod position;
pub mod precision;
pub mod query_selection;
pub mod run;
pub mod swin;
pub mod temporal;

pub use builder::{Graph, GraphOptions, Value, Weights};
