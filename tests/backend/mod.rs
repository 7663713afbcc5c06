//! `src/backend/` and `src/engines/`: the tract CPU backend on hand-built and emitted graphs,
//! engine profiles and plan sidecars, and the TensorRT backend's failure paths.

mod cpu;
mod cpu_graph;
mod engines;
mod mix;
mod ort;
mod tensorrt;
