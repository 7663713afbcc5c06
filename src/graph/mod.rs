//! The ReferDINO network, defined once, as an ONNX graph builder.
//!
//! One file per paper module, each a plain function that reads like the paper and appends nodes to a
//! [`crate::onnx::Graph`]. [`engines`] splits the network into the four engines of the runtime.

pub mod attention;
pub mod bert;
pub mod decoder;
pub mod deformable;
pub mod engines;
pub mod enhancer;
pub mod export;
pub mod ffn;
pub mod fp32_policy;
pub mod fpn;
pub mod heads;
pub mod input_proj;
pub mod mask_decoder;
pub mod mlp;
pub mod object_engines;
pub mod position;
pub mod query_selection;
pub mod scoring;
pub mod swin;
pub mod temporal;
