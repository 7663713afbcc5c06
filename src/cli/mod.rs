//! Subcommands of the `referdino` binary, one module each.

pub mod eval;
