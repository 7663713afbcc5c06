//! Subcommands of the `referdino` binary, one module each.

pub mod inspect;
pub mod parity;
pub mod tokenize;
