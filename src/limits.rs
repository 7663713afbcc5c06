//! Every limit the runtime applies to input it does not control, in one place.
//!
//! | limit | value | where it applies | what happens past it |
//! |---|---:|---|---|
//! | [`MAX_CONNECTIONS`] | 8 | command socket clients served at once | the next client gets `{"ok":false,"error":"too many connections"}` and is closed |
//! | [`MAX_LINE_BYTES`] | 16 384 | one command line (stdin or socket) | the line is discarded while read (never buffered) and answered with an error |
//! | [`MAX_PROMPT_BYTES`] | 1 024 | the text of a `prompt` command | error reply; the prompt in use is kept |
//! | [`MAX_ID_BYTES`] | 64 | a string `id` in a command | error reply |
//! | [`COMMAND_QUEUE`] | 16 | commands waiting for the streaming loop | the reader stops reading its input until the loop takes one (back-pressure) |
//! | [`REPLY_QUEUE`] | 64 | reply lines of a socket client waiting for its writer thread (beyond what the socket buffers) | the client reads no replies: it is disconnected (the loop never waits for a client) |
//! | [`MAX_IMAGE_PIXELS`] | 2²⁶ (≈ 67 M) | a PNG/JPEG frame read from a folder; an H.264 video track and the pictures its SPS declares | refused from its header (image) or container and SPS (video), before any pixel is decoded |
//! | [`crate::camera::IsolatedDecode::STALL_TIMEOUT`] | 10 s | H.264 decoder process without output while a frame is awaited (opening: at least 10 s) | the process is killed; the source fails with an error |
//! | [`MAX_MODEL_INPUT_PIXELS`], [`MAX_INPUT_ASPECT`] | 2²² (≈ 4.2 M), 4 : 1 | the model input a source's frames resize to (`--short-side`) | the run is refused at start-up, naming the sizes (crop or scale the source, or lower `--short-side`) |
//! | [`MAX_RING_PIXELS`] | 2²⁸ | mask size of the shared-memory ring (writer and reader) | the ring is refused |
//! | [`MAX_RING_SLOTS`] | 4 096 | slot count of the ring | the ring is refused |
//! | [`GIF_FRAMES`] | 300 | overlay frames held in memory for `overlay.gif` under `--save-dir` | later frames are still written as PNG, not added to the GIF |
//! | [`crate::text::MAX_TEXT_LEN`] | 256 | tokens of a prompt | the token sequence is truncated |
//! | `max_failed_frames` ([`crate::pipeline::live::RuntimeConfig`], `--max-failed-frames`) | 30 | frames in a row whose processing fails | the run ends with an error (single failures are logged and the next frame is tried) |
//! | re-open back-off ([`crate::camera::reconnect::Backoff`]) | 0.2 s doubling to 5 s, no attempt limit | a camera (or `faulty:` source) that failed | retried until it comes back or the run is stopped |
//!
//! Model files (`.pth`, safetensors, engine directories) carry their own structural limits next to
//! their readers (element counts, pickle object counts); they are trusted less than configuration but
//! are not live input.

/// Command socket clients served at once.
pub const MAX_CONNECTIONS: usize = 8;
/// Longest command line in bytes.
pub const MAX_LINE_BYTES: usize = 16 * 1024;
/// Longest prompt in bytes.
pub const MAX_PROMPT_BYTES: usize = 1024;
/// Longest string `id` in a command, in bytes.
pub const MAX_ID_BYTES: usize = 64;
/// Commands queued for the streaming loop.
pub const COMMAND_QUEUE: usize = 16;
/// Reply lines queued for a socket client's writer thread.
pub const REPLY_QUEUE: usize = 64;
/// Largest PNG/JPEG frame accepted from an image folder, and largest H.264 picture, in pixels.
pub const MAX_IMAGE_PIXELS: u64 = 1 << 26;
/// Largest model input (the frame after its resize to `--short-side`), in pixels: 2730x1536 at 16:9;
/// the backbone's activations grow with it (360x640, the model's own size, is 230 k).
pub const MAX_MODEL_INPUT_PIXELS: u64 = 1 << 22;
/// Widest model input, longer side to shorter (panoramic 32:9 cameras are 3.6).
pub const MAX_INPUT_ASPECT: u32 = 4;
/// Largest ring mask, in pixels.
pub const MAX_RING_PIXELS: u64 = 1 << 28;
/// Most ring slots.
pub const MAX_RING_SLOTS: u32 = 4096;
/// Overlay frames held for the GIF.
pub const GIF_FRAMES: usize = 300;
