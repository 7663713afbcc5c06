//! The ReferDINO network, defined once, as an ONNX graph builder.
//!
//! One file per paper module, each a plain function that reads like the paper and appends nodes to a
//! [`builder::Graph`]. [`engines`] splits the network into the four engines of the runtime.

pub mod attention;
pub mod builder;
pub mod decoder;
pub mod enhancer;
pub mod query_selection;
pub mod run;

pub use builder::{Graph, GraphOptions, Value, Weights};
