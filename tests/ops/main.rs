//! `src/ops/`: the host kernels against the official fixtures and brute force.

#[path = "../support/mod.rs"]
mod support;

mod hungarian;
mod msdeform;
mod prune;
