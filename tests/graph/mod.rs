//! `src/graph/`: each paper module's graph against the official fixture, the weight keys it reads, the
//! builder, cost counting and the ONNX export.

mod batch_axis;
mod bert;
mod builder;
mod cost;
mod decoder;
mod enhancer;
mod export;
mod input_proj;
mod split;
mod swin;
mod video_heads;
mod weight_keys;
