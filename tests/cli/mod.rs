//! The `referdino` subcommands run as a user runs them (`src/cli/`), including end-to-end parity.

mod bench;
mod build_calibrate;
mod doctor;
mod parity;
mod run;
mod soak;
mod synth;
mod tokenize_inspect;
