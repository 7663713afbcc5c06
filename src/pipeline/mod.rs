//! The host side of inference: tracker, temporal window, selection and post-processing, and the sessions
//! that drive the engines.

pub mod post;
pub mod session;
pub mod tracker;
