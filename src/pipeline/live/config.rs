//! [`RuntimeConfig`]: everything a live run needs to know, as plain data. The CLI maps its flags onto
//! it; a library user fills it in code or deserialises it (JSON, TOML) with serde.

use std::path::PathBuf;

use serde::Deserialize;

/// What to run, on what, and where the results go. Fields left out when deserialising take the
/// [`Default`] values, which are the CLI's defaults except for the ones noted.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// `/dev/videoN`, a folder of images, a video file (.mp4), or `synthetic[:WxH[@fps]]`.
    pub source: String,
    /// The referring expression at start-up (commands can set or change it later).
    pub prompt: Option<String>,
    /// Checkpoint (.safetensors or .pth); `None`: the bundled tiny checkpoint.
    pub weights: Option<PathBuf>,
    /// Model configuration: a file, `swin-t` or `swin-b` (`None`: guessed from the checkpoint).
    pub config: Option<String>,
    /// Inference backend: `cpu` or `tensorrt`.
    pub backend: String,
    /// Prebuilt engines (an export or build directory with its manifest.json) instead of exporting
    /// from `weights` at start-up. Their geometry fixes the input size.
    pub engines: Option<PathBuf>,
    /// TensorRT plugin library; searched in the usual places when `None`.
    pub plugins: Option<PathBuf>,
    /// Worker threads of the CPU backend (`None`: every available core).
    pub threads: Option<usize>,
    /// Temporal window W in frames.
    pub window: usize,
    /// Longest prompt in tokens the engines take (special tokens included).
    pub max_text: usize,
    /// Shorter side of the model input.
    pub short_side: u32,
    /// Name (or path) of a shared-memory mask ring to write every frame into.
    pub ring: Option<String>,
    /// Slots in the mask ring.
    pub ring_slots: u32,
    /// Write overlays (PNG per frame + animated GIF) here.
    pub save_dir: Option<PathBuf>,
    /// Stop after this many processed frames.
    pub max_frames: Option<u64>,
    /// Multi-object mode: every track whose running-mean score exceeds this threshold.
    pub multi: Option<f32>,
    /// Also accept commands on this Unix socket.
    pub socket: Option<PathBuf>,
    /// Read commands from stdin, replies on stdout (default here: `false`; the CLI's is on).
    pub stdin_commands: bool,
    /// Files and folders: deliver frames at `fps` like a camera, dropping frames inference cannot
    /// keep up with (default: every frame is processed).
    pub realtime: bool,
    /// Frame rate for synthetic and `realtime` sources, and the overlay GIF.
    pub fps: u32,
    /// Progress bar and status line on stderr (default here: `false`; the CLI's is on unless
    /// `--quiet`).
    pub progress: bool,
    /// Keep per-frame features so the stream can be re-scored as one clip at the end.
    pub finalize: bool,
    /// Keep the live 0/1 mask of every frame in the summary.
    pub collect_masks: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            source: String::new(),
            prompt: None,
            weights: None,
            config: None,
            backend: "cpu".into(),
            engines: None,
            plugins: None,
            threads: None,
            window: 36,
            max_text: 32,
            short_side: 360,
            ring: None,
            ring_slots: 8,
            save_dir: None,
            max_frames: None,
            multi: None,
            socket: None,
            stdin_commands: false,
            realtime: false,
            fps: 30,
            progress: false,
            finalize: false,
            collect_masks: false,
        }
    }
}

impl RuntimeConfig {
    /// Defaults for `source`.
    pub fn new(source: &str) -> Self {
        RuntimeConfig {
            source: source.to_string(),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deserialises_with_defaults_and_refuses_unknown_fields() {
        let c: RuntimeConfig =
            serde_json::from_str(r#"{"source": "synthetic:64x48", "threads": 2, "window": 4}"#)
                .unwrap();
        assert_eq!(c.source, "synthetic:64x48");
        assert_eq!(c.threads, Some(2));
        assert_eq!(c.window, 4);
        assert_eq!(c.max_text, 32);
        assert_eq!(c.backend, "cpu");
        assert!(!c.stdin_commands);
        assert!(serde_json::from_str::<RuntimeConfig>(r#"{"source": "x", "windw": 4}"#).is_err());
    }
}
