//! `src/ops/`: the host kernels against the official fixtures and brute force.

mod hungarian;
mod msdeform;
mod prune;
