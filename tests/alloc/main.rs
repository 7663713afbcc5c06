//! Allocation budgets: the per-frame host path, the streaming session's host path, the kernels and
//! the CPU backend's steady state and the heap of checkpoint loading, counted by one global allocator
//! (`counter`).

#[path = "../support/mod.rs"]
mod support;

mod backend_cpu;
mod counter;
mod host_path;
mod lanes;
mod mix;
mod ops;
mod ort;
#[path = "../support/pth.rs"]
mod pth;
mod stream;
mod video;
mod weights;
