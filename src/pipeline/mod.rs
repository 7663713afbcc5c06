//! The host side of inference: tracker, temporal window, selection and post-processing, the sessions
//! that drive the engines (offline [`session`], live [`stream`]), and the streaming runtime around
//! them (commands, frame hand-off, timing). With feature `cuda`, the device-resident session
//! (`device_stream`) and the device memory and GPU frame I/O it runs on (`gpu`).

pub mod commands;
#[cfg(feature = "cuda")]
pub mod device_stream;
pub mod engine_dir;
// Crate-private: its safe functions take raw device addresses that only this crate's callers
// derive from live allocations.
#[cfg(feature = "cuda")]
pub(crate) mod gpu;
pub mod labels;
pub use crate::camera::latest;
pub mod live;
pub(crate) mod mru;
pub mod multi;
pub mod objects;
pub mod post;
pub mod predictor;
pub mod replay;
pub mod selector;
pub mod session;
pub(crate) mod slots;
pub mod stream;
pub mod timing;
pub mod tracker;
pub mod window;
