//! The host side of inference: tracker, temporal window, selection and post-processing, the sessions
//! that drive the engines, and the streaming runtime around them (commands, frame hand-off).

pub mod commands;
pub mod latest;
pub mod post;
pub mod predictor;
pub mod session;
pub mod tracker;
