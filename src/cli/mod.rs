//! Subcommands of the `referdino` binary, one module each.

pub mod build;
pub mod calibrate;
