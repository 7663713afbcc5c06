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
//! | [`MAX_IMAGE_PIXELS`] | 2²⁶ (≈ 67 M) | a PNG/JPEG frame read from a folder; an H.264 video track and the pictures its SPS declares; each buffer of a [`crate::camera::Preprocessor`] (input, horizontal pass, output) | refused from its header (image) or container and SPS (video), before any pixel is decoded; a preprocessor is refused before it allocates |
//! | [`crate::camera::IsolatedDecode::STALL_TIMEOUT`] | 10 s | H.264 decoder process without output while a frame is awaited (opening: at least 10 s) | the process is killed; the source fails with an error |
//! | [`MAX_RING_PIXELS`] | 2²⁸ | mask size of the shared-memory ring (writer and reader) | the ring is refused |
//! | [`MAX_RING_SLOTS`] | 4 096 | slot count of the ring | the ring is refused |
//! | [`GIF_FRAMES`] | 300 | overlay frames held in memory for `overlay.gif` under `--save-dir` | later frames are still written as PNG, not added to the GIF |
//! | [`MIN_SHORT_SIDE`]..=[`MAX_SHORT_SIDE`] | 16..=2 160 px | `--short-side` (`run`, `ros2`, `demo`; [`crate::pipeline::live::RuntimeConfig::short_side`]) | refused before the source opens. 16 is a floor against degenerate sizes (0, 1; a caller's own small engines may take such inputs); whether an input is large enough for a model is the token check's to say; 2 160 is the shorter side of a 4K UHD frame (a larger input only upsamples a camera's frame). The model also needs at least as many feature tokens as it has queries (900 in the official models): a smaller input is refused by name once the model is known, before the engines are built |
//! | [`MAX_INPUT_PIXELS`], [`MAX_INPUT_ASPECT`] | 3 840 × 2 160, 4 : 1 | model input (`export --height × --width`; the resized frame of a live run: a 4000x10 camera would be 144000x360, a 1x11930466 image 360x4294967760) | refused before anything is exported, written or allocated for it (the live run checks the first frame's resized size, computed without overflow, before it builds a preprocessor); each side must also be at least [`MIN_SHORT_SIDE`] |
//! | [`MAX_WINDOW`] | 1 024 | `--window` (every command exporting or running engines) | refused: 28× the default 36, 34 s at 30 fps; the temporal buffers grow with it and a huge window ended in an allocation failure |
//! | [`MAX_CROSS_BATCH`] | 64 | `--cross-batch` (objects per cross-modal run) | refused: 8× the default `--max-objects`; the cross-modal engine's static batch is allocated in full |
//! | [`MAX_IMAGE_BATCH`] | 16 | `--image-batch` (frames per image-engine run) | refused: the runtime never gathers more frames into one run |
//! | [`MAX_GEOMETRIES`] | 4 | input sizes in one live run (cameras of different aspect ratios): engine sets exported at start-up or for a camera that joins later, and `--engines` directories | refused by name: at start-up before anything is exported or loaded; a camera that joins later with one size too many gets its own error and the other streams go on. Each set holds its own image, cross-modal, temporal and head engines (the text engine is shared) |
//! | [`MAX_THREADS`] | 256 | `--threads` (0: every core) | refused: more workers than any supported machine has cores only contend (a huge count made the pool hang at start-up) |
//! | [`MIN_MAX_TEXT`]..=[`crate::text::MAX_TEXT_LEN`] | 3..=256 | `--max-text` (`run`, `ros2`, `demo`, `export`, `bench`) | refused (3: the two special tokens and one word; 256: the model's text length) |
//! | [`crate::output::ring::MAX_TRACKS`] | 1..=16 | `--max-objects` (`run`, `ros2`; [`crate::pipeline::live::RuntimeConfig::max_objects`]) | refused before the source opens: a frame's track table holds 16 tracks, so objects past it would never be reported |
//! | [`MAX_FPS`] | 1..=1 000 | `--fps`: frame rate of synthetic and `--realtime` sources and the overlay GIF | refused: 0 paces nothing (like `synthetic:…@0`); above 1 000 the GIF's whole-millisecond frame delay is 0 |
//! | [`crate::text::MAX_TEXT_LEN`] | 256 | tokens of a prompt | the token sequence is truncated |
//! | `max_failed_frames` ([`crate::pipeline::live::RuntimeConfig`], `--max-failed-frames`) | 30 | frames in a row whose processing fails | the run ends with an error (single failures are logged and the next frame is tried) |
//! | re-open back-off ([`crate::camera::reconnect::Backoff`]) | 0.2 s doubling to 5 s, no attempt limit | a camera (or `faulty:` source) that failed | retried until it comes back or the run is stopped; the delay keeps growing across re-opens until a re-opened source has delivered [`crate::camera::reconnect::HEALTHY_FRAMES`] frames (or frames for 5 s), so a device that opens and fails at once is tried every 5 s, not 5 times a second |
//!
//! Model files (`.pth`, safetensors, engine directories) carry their own structural limits next to
//! their readers (element counts, pickle work, bytes inflated and materialised per `.pth` record and
//! view); they are trusted less than configuration but are not live input.

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
/// Widest model input, longer side to shorter (panoramic 32:9 cameras are 3.6).
pub const MAX_INPUT_ASPECT: u32 = 4;
/// Largest ring mask, in pixels.
pub const MAX_RING_PIXELS: u64 = 1 << 28;
/// Most ring slots.
pub const MAX_RING_SLOTS: u32 = 4096;
/// Overlay frames held for the GIF.
pub const GIF_FRAMES: usize = 300;
/// Smallest accepted shorter side of the model input (`--short-side`), and smallest input side.
pub const MIN_SHORT_SIDE: u32 = 16;
/// Largest accepted shorter side of the model input (`--short-side`): 4K UHD's.
pub const MAX_SHORT_SIDE: u32 = 2160;
/// Largest model input in pixels (one 4K UHD frame).
pub const MAX_INPUT_PIXELS: u64 = 3840 * 2160;
/// Longest temporal window in frames (`--window`).
pub const MAX_WINDOW: usize = 1024;
/// Most objects per cross-modal engine run (`--cross-batch`).
pub const MAX_CROSS_BATCH: usize = 64;
/// Most frames per image engine run (`--image-batch`).
pub const MAX_IMAGE_BATCH: usize = 16;
/// Most input sizes (engine sets) in one live run: cameras of different aspect ratios each need
/// their own image, cross-modal, temporal and head engines.
pub const MAX_GEOMETRIES: usize = 4;
/// Most CPU backend worker threads (`--threads`).
pub const MAX_THREADS: usize = 256;
/// Highest frame rate (`--fps`).
pub const MAX_FPS: u32 = 1000;
/// Shortest engine text length in tokens (`--max-text`): two special tokens and one word.
pub const MIN_MAX_TEXT: usize = 3;

/// Refuses `value` of `flag` outside `lo..=hi`; the error names the flag, the value and the range.
pub fn check_range<T>(flag: &str, value: T, lo: T, hi: T) -> anyhow::Result<()>
where
    T: PartialOrd + std::fmt::Display,
{
    if value < lo || value > hi {
        anyhow::bail!("{flag} {value}: must be between {lo} and {hi}");
    }
    Ok(())
}

/// Refuses a model input of `height` × `width` pixels with a side under [`MIN_SHORT_SIDE`] or more
/// than [`MAX_INPUT_PIXELS`] pixels; `flags` names what set the size (e.g. `--height/--width`).
pub fn check_input_size(flags: &str, height: usize, width: usize) -> anyhow::Result<()> {
    let min = MIN_SHORT_SIDE as usize;
    if height < min || width < min {
        anyhow::bail!(
            "{flags} {height}x{width} (height x width): each side must be at least {min} pixels"
        );
    }
    // Saturating: the sides may come from a frame far beyond any limit (a 1x67108864 image).
    let pixels = (height as u64).saturating_mul(width as u64);
    if pixels > MAX_INPUT_PIXELS {
        anyhow::bail!(
            "{flags} {height}x{width} (height x width): {pixels} pixels, more than the limit of {MAX_INPUT_PIXELS} (3840x2160)"
        );
    }
    if height.max(width) > height.min(width).saturating_mul(MAX_INPUT_ASPECT as usize) {
        anyhow::bail!(
            "{flags} {height}x{width} (height x width): wider than {MAX_INPUT_ASPECT}:1; crop or scale the source (a gst: or csi: pipeline can)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_errors_name_flag_value_and_range() {
        assert!(check_range("--window", 1usize, 1, MAX_WINDOW).is_ok());
        assert!(check_range("--window", MAX_WINDOW, 1, MAX_WINDOW).is_ok());
        let e = check_range("--window", 0usize, 1, MAX_WINDOW)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "--window 0: must be between 1 and 1024");
        let e = check_range("--short-side", 100_000u32, MIN_SHORT_SIDE, MAX_SHORT_SIDE)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "--short-side 100000: must be between 16 and 2160");
    }

    #[test]
    fn input_size_bounds() {
        assert!(check_input_size("--height/--width", 360, 640).is_ok());
        assert!(check_input_size("--height/--width", 2160, 3840).is_ok());
        for (h, w) in [
            (0, 640),
            (1, 1),
            (31, 640),
            (100_000, 100_000),
            (2160, 3841),
        ] {
            let e = check_input_size("--height/--width", h, w)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(&format!("--height/--width {h}x{w}")), "{e}");
        }
    }
}
