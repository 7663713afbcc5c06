//! Config files, checkpoints and weights, the tokenizer, and bad input (`src/config.rs`,
//! `src/weights/`, `src/text/`).

#[path = "../support/pth.rs"]
mod pth;

mod bad_input;
mod config;
mod fuzz_smoke;
mod layering;
mod text;
mod weights;
