//! Config files, checkpoints and weights, the tokenizer, and bad input (`src/config.rs`,
//! `src/weights/`, `src/text/`).

mod bad_input;
mod config;
mod layering;
mod text;
mod weights;
