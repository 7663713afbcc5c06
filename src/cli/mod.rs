//! Subcommands of the `referdino` binary, one module each.

pub mod args;
pub mod bench;
pub mod bench_multi;
pub mod build;
pub mod calibrate;
pub mod demo;
pub mod doctor;
pub mod eval;
pub mod export;
pub mod inspect;
pub mod parity;
#[cfg(feature = "ros2")]
pub mod ros2;
pub mod run;
pub mod synth;
pub mod tokenize;
