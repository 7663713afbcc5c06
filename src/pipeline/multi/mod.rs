//! Several referred objects per stream, several streams per process, and the text-independent work
//! done once per frame.
//!
//! [`SharedEngines`] holds the engines every stream of one input size uses: the text engine
//! ([`SharedText`], one for every input size of the process: text features do not depend on the
//! image), the *front* (either the split `image` engine, Swin + input projections run once per frame
//! whatever the number of objects, followed by the `cross` engine, enhancer → query selection →
//! decoder → FPN, at a static batch `B` over the objects; or, for engine directories without the
//! split, the whole `frame` engine once per object), the temporal engine and the head engine (both
//! once per object).
//!
//! [`MultiStream`] is one stream's state: its image buffer and its objects, each with a stable
//! [`ObjectId`], its prompt's text features, its own tracker, window and running scores. Per frame
//! the image part runs once, the cross part runs `ceil(N / B)` times, and each object's tracks go
//! into one label mask and one track table (see [`MultiStream::step`]).
//!
//! Every per-frame buffer is allocated when the stream is built or an object is added; in steady
//! state [`MultiStream::step`] allocates nothing on the host side and never panics.
//!
//! [`ObjectId`]: crate::pipeline::commands::ObjectId
//!
//! # Files
//!
//! - `engine_set`: the engines before binding ([`MultiEngineSet`], [`GeometryEngines`], [`Front`])
//!   and their export in memory.
//! - `shared_text`: the text engine shared by every input size ([`SharedText`]).
//! - `shared_engines`: the engines of one input size bound to their buffers ([`SharedEngines`]).
//! - `object`: one referred object's state.
//! - `stream`: [`MultiStream`], its settings ([`MultiConfig`]) and object changes, and
//!   [`HostObjects`].
//! - `step`: one frame through the engines ([`MultiStream::step`], [`MultiStream::step_from_row`]).
//! - `finalize`: the first object's clip re-scored ([`MultiStream::finalize`]).
//! - `buffers`: row helpers on engine buffers.
//!
//! `buffers`, `engine_set` and `object` use no other file here; `shared_text` uses `buffers`,
//! `shared_engines` uses those three; `stream` uses `shared_engines` and `object`; `step` and
//! `finalize` add to [`MultiStream`] and use the files before them.

mod buffers;
mod engine_set;
mod finalize;
mod object;
mod shared_engines;
mod shared_text;
mod step;
mod stream;

pub use engine_set::{text_engine_on, Front, GeometryEngines, MultiEngineSet};
pub use shared_engines::SharedEngines;
pub use shared_text::SharedText;
pub use stream::{HostObjects, MultiConfig, MultiStream, DEFAULT_MAX_OBJECTS};
