//! The runtime command protocol: one JSON object per line in, one JSON reply line out.
//!
//! Commands arrive on stdin and/or a Unix socket. Reader threads parse and validate each line; valid
//! commands and the refusals of malformed lines go through one bounded channel to the streaming
//! session, which applies the commands between frames with a [`Controller`] and answers every line
//! in the order it arrived (a malformed one with `{"ok":false,"error":"..."}`; reading goes on),
//! where it came from (stdout for stdin, the same connection for the socket). A socket client that
//! sends no complete line for [`SOCKET_IDLE`] is told so and disconnected.
//!
//! # Requests
//!
//! ```text
//! {"prompt": "the dog on the left"}            replace every object by this one (same as {"cmd":"prompt","prompt":...})
//! {"prompt": "the dog; the ball"}              ... or by several: `;` separates prompts (see split_prompts)
//! {"cmd": "add", "prompt": "the cup"}          add an object; its id is assigned (one past the highest given out) and replied
//! {"cmd": "add", "prompt": "the cup", "object": 7}   add an object with the caller's id (0..=65535)
//! {"cmd": "replace", "object": 7, "prompt": "the blue cup"}   new prompt for object 7 (its track restarts)
//! {"cmd": "remove", "object": 7}               drop object 7; the others keep their ids and tracks
//! {"cmd": "list"}                              the objects (ids and prompts) in `settings.objects`
//! {"cmd": "clear"}                             drop every object; no masks until a new one
//! {"cmd": "mode", "mode": "single"}            best track only
//! {"cmd": "mode", "mode": "multi", "threshold": 0.2}   every track whose running-mean score > threshold
//! {"cmd": "pause"} / {"cmd": "resume"}         stop / restart inference (capture keeps draining the camera)
//! {"cmd": "status"}                            settings and runtime counters
//! ```
//! Any request may carry `"id"` (a number or a string of ≤ 64 bytes); the reply echoes it.
//! Any request may carry `"stream": N` to address the N-th source of a run with several (default 0),
//! or `"stream": "all"` to apply it to every open stream or to none: each is checked first, and a
//! refusal by one (naming it) changes no stream; otherwise the reply is the first stream's. An `add`
//! to all gives its objects the same ids on every stream. A camera that joins later starts with
//! what the commands every open stream took left them: objects with their ids, the next id, mode,
//! pause ([`crate::pipeline::live::template::JoinTemplate`]).
//! Unknown fields are errors. Blank lines are ignored. Each stream holds at most its configured
//! number of objects (default 8); an unknown id, an id already in use, or one object too many is
//! answered with an error and changes nothing.
//!
//! # Replies
//!
//! ```text
//! {"ok":true,"cmd":"prompt","settings":{"prompt":"the dog on the left","mode":"single","threshold":0.2,"paused":false,"prompt_version":3}}
//! {"ok":true,"cmd":"status","settings":{...},"stats":{"frames_in":120,"frames_processed":97,"frames_dropped":23,"fps":14.8,"latency_ms":{"frame":41.0,...},"source":"..."}}
//! {"ok":false,"error":"prompt is empty"}
//! ```
//!
//! # Files
//!
//! - `protocol`: the requests ([`Command`], [`Request`], [`Limits`]) and the parsing and validation
//!   of a line ([`parse_line`], [`check_prompt`], [`split_prompts`]).
//! - `reply`: the [`Reply`] line, the [`Settings`] and [`RuntimeStats`] it carries, and the
//!   [`Controller`] that applies requests to settings.
//! - `responders`: where a reply goes ([`Responder`]): stdout or a socket connection, each written by
//!   a thread of its own.
//! - `lines`: reading lines with bounded memory ([`LineReader`]) and serving them to the loop
//!   ([`serve_lines`], [`Incoming`]).
//! - `hub`: the [`CommandHub`], the inbox fed by stdin and the Unix socket.
//!
//! Each uses only those listed before it.

mod hub;
mod lines;
mod protocol;
mod reply;
mod responders;

pub use hub::{CommandHub, SOCKET_IDLE};
pub use lines::{serve_lines, serve_lines_idle, Incoming, Line, LineReader, Served};
pub use protocol::{
    check_prompt, parse_line, split_prompts, Command, Limits, ObjectId, Rejected, Request,
    SelectMode, Streams,
};
pub use reply::{Controller, InputSize, ObjectInfo, Reply, RuntimeStats, Settings};
pub use responders::{flush_stdout_replies, Responder, SocketReplies};
