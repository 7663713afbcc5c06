//! `src/eval/`: metrics, benchmark readers, the DAVIS protocol, overlays, the model and streaming
//! runs, and `referdino eval`.

mod cli;
mod datasets;
mod davis_protocol;
mod e2e;
mod metrics;
mod model;
mod overlay;
mod stream;
