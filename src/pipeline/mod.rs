//! The streaming runtime around the engines: commands, frame hand-off, session.

pub mod commands;
pub mod latest;
