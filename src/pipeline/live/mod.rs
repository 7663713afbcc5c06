//! The live runtime as a library type: frames from a camera, file or synthetic source, a prompt, and
//! per frame the referred object's mask into sinks (a shared-memory mask ring, overlays, your own),
//! steered by JSON commands between frames.
//!
//! - [`config`]: [`RuntimeConfig`], plain data (the CLI maps its flags onto it).
//! - [`source`]: opening the source, the capture thread and its hand-off to the loop.
//! - [`engines`]: loading the engines (exported from a checkpoint, or engine directories), one set per
//!   input size the sources resize to (cameras of different aspect ratios), the text engine shared.
//! - [`joining`]: a stream whose source is not there at start-up, waiting on a thread of its own
//!   until it opens and joins the run.
//! - [`exporter`]: the run's export worker, which exports the engines of a late camera's new input
//!   size from the weights in the background, one size after another.
//! - [`runtime`]: [`Runtime`], its accessors and the loop, [`Runtime::step`] / [`Runtime::run`].
//! - `startup`: making a [`Runtime`] (its constructors): the configuration checked, the sources
//!   opened, the engines bound, the streams built, the command inbox set up.
//! - `building`: building a stream on its opened source (at start-up and when it joins later), and
//!   the engine sets streams run on.
//! - `live_stream`: the [`LiveStream`] the runtime drives (one per source), and [`Step`].
//! - `routing`: commands to the stream they address, to all streams, or to one still to come.
//! - `admission`: admitting the streams that join later, and the engine exports they wait for.
//! - `turns`: the frame turns beyond taking streams in turn (device streams side by side, a batched
//!   image engine).
//! - `finish`: the end of a run, [`Runtime::finish`], and its summary.
//! - `device` (feature `cuda`): a stream on the device-resident path (its own execution contexts and
//!   CUDA stream, its objects, masks written by a kernel into its ring).
//! - [`pool`]: the device path's engine sets by input size, given ready or made (execution contexts
//!   of plans deserialized once) when a stream takes one.
//! - [`lanes`]: threads that step several device streams side by side (their GPU work overlaps).
//! - `masks`: where a stream's masks are written (its ring's next slot in place, or a host buffer).
//! - [`sink`]: the [`Sink`] trait and the built-in sinks.
//! - [`status`]: periodic status and its stderr presentation.
//! - [`template`]: what a stream joining late starts with (commands sent to all streams since the start).
//! - [`summary`]: the [`RunSummary`] and the Ctrl-C flag.

mod admission;
mod building;
pub mod config;
#[cfg(feature = "cuda")]
mod device;
pub mod engines;
pub mod exporter;
mod finish;
pub mod joining;
pub mod lanes;
mod live_stream;
mod masks;
pub mod pool;
mod routing;
pub mod runtime;
pub mod sink;
pub mod source;
mod startup;
pub mod status;
pub mod summary;
pub mod template;
mod turns;

pub use config::RuntimeConfig;
pub use engines::{load_model, FIXTURE};
pub use exporter::ExportWatch;
pub use pool::{DeviceSets, SetPool};
pub use runtime::{LiveStream, Runtime, Step};
pub use sink::{FrameOutput, Sink};
pub use status::Status;
pub use summary::{interrupt_flag, EndedEarly, RunSummary};
