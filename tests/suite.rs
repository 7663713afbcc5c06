//! The integration tests, one binary for all areas but two: `cargo test --test suite AREA::` runs an
//! area (`backend`, `camera`, `cli`, `eval`, `foundation`, `graph`, `ops`, `output`, `pipeline`,
//! `quant`). One binary keeps both test threads busy from the first test to the last: a test that
//! waits (the soak, a live source paced in real time, a child process) overlaps the others instead of
//! ending its binary alone, and the library is linked once instead of ten times.
//!
//! Apart: `tests/alloc/` (its counting global allocator must see no other test's allocations),
//! `tests/ros2/` (feature `ros2`) and `tests/gpu_device.rs` (feature `cuda`).

mod support;

mod backend;
mod camera;
mod cli;
mod eval;
mod foundation;
mod graph;
mod ops;
mod output;
mod pipeline;
mod quant;
