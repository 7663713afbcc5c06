//! [`RuntimeConfig`]: everything a live run needs to know, as plain data. The CLI maps its flags onto
//! it; a library user fills it in code or deserialises it (JSON, TOML) with serde.

use std::path::PathBuf;

use serde::Deserialize;

use crate::access::Access;

/// What to run, on what, and where the results go. Fields left out when deserialising take the
/// [`Default`] values, which are the CLI's defaults except for the ones noted.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// `/dev/videoN`, a folder of images, a video file (.mp4), `gst:[WxH:]PIPELINE`, `csi:N`,
    /// `raw:WxH:FORMAT:PATH` or `synthetic[:WxH[@fps]]`: stream 0.
    pub source: String,
    /// Further sources, each its own stream (1, 2, …) with its own capture thread, objects, ring and
    /// status. Streams whose frames resize to the same input size share one engine set; cameras of
    /// other aspect ratios get one set per input size (at most [`crate::limits::MAX_GEOMETRIES`]),
    /// the text engine shared by all.
    pub sources: Vec<String>,
    /// The referred objects at start-up, `;`-separated ([`split_prompts`]), ids 0, 1, … on every
    /// stream (commands can add, remove and change them later).
    ///
    /// [`split_prompts`]: crate::pipeline::commands::split_prompts
    pub prompt: Option<String>,
    /// Most objects per stream, 1..=16 (a frame's track table holds 16 tracks,
    /// [`crate::output::ring::MAX_TRACKS`]); one more is refused with an error.
    pub max_objects: usize,
    /// Objects the cross-modal engine takes per run (a static batch: fewer objects are padded, more
    /// take several runs). Exported engines only; an engine directory's frame engine runs per object.
    pub cross_batch: usize,
    /// Frames of several streams the image engine takes per run: when frames of several streams of
    /// one input size are ready together their image part runs in one engine call (exported engines
    /// only; each input size has its own image engine).
    pub image_batch: usize,
    /// With `backend = "tensorrt"`: run the plans on the host path (every binding through host
    /// memory) instead of the device-resident path (intermediates on the device, masks
    /// written by a kernel into the ring).
    pub host_path: bool,
    /// Checkpoint (.safetensors or .pth); `None`: the bundled tiny checkpoint.
    pub weights: Option<PathBuf>,
    /// Model configuration: a file, `swin-t` or `swin-b` (`None`: guessed from the checkpoint).
    pub config: Option<String>,
    /// Inference backend: `cpu` (tract; the default here), `ort`, `auto` (the CLI's default: per
    /// engine, the faster of ONNX Runtime and tract; tract when ONNX Runtime's library does not load),
    /// `tensorrt`, or a per-engine mix (`text=ort,frame=ort,temporal=cpu,head=cpu`).
    pub backend: String,
    /// Prebuilt engines (an export or build directory with its manifest.json) instead of exporting
    /// from `weights` at start-up. Their geometry fixes the input size: each source must resize to
    /// the geometry of this directory or of one in `more_engines`.
    pub engines: Option<PathBuf>,
    /// Further engine directories, one per further input size (cameras of other aspect ratios), at
    /// most [`crate::limits::MAX_GEOMETRIES`] with `engines`: each stream runs on the directory
    /// whose geometry equals its resized frames. They must agree on window, text length, tracking
    /// momentum and text engine.
    pub more_engines: Vec<PathBuf>,
    /// TensorRT plugin library; searched in the usual places when `None`.
    pub plugins: Option<PathBuf>,
    /// INT8 engines for the export at start-up: Q/DQ pairs from this scale table (`referdino
    /// calibrate`, same checkpoint, input size and export form), FP32 elsewhere; ONNX Runtime runs
    /// their products in integers. An engine directory is made INT8 when exported instead (`referdino
    /// export --precision int8`).
    pub int8: Option<PathBuf>,
    /// Worker threads of the CPU backend (`None`: every available core).
    pub threads: Option<usize>,
    /// Temporal window W in frames; `None`: [`crate::config::DEFAULT_WINDOW`] for engines exported
    /// at start-up, the engine directory's own with `engines` (a value given must equal it).
    pub window: Option<usize>,
    /// Longest prompt in tokens the engines take (special tokens included); `None`:
    /// [`crate::config::DEFAULT_MAX_TEXT`], or the engine directory's own as for `window`.
    pub max_text: Option<usize>,
    /// Shorter side of the model input.
    pub short_side: u32,
    /// Name (or path) of a shared-memory mask ring to write every frame into. With several streams
    /// and no `rings`, stream `i` writes `NAME-i`.
    pub ring: Option<String>,
    /// Rings of streams 1, 2, … when each is named (`ring` is stream 0's).
    pub rings: Vec<String>,
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
    /// Permission bits of the mask ring file (owner-only `0o600` by default; readers need read
    /// permission). Written as a number or an octal string such as `"0640"`.
    #[serde(deserialize_with = "octal_mode")]
    pub ring_mode: u32,
    /// Permission bits of the command socket (owner-only `0o600` by default; clients need write
    /// permission). Written as a number or an octal string such as `"0660"`.
    #[serde(deserialize_with = "octal_mode")]
    pub socket_mode: u32,
    /// Group (name or id) given to the ring file and the socket, for consumers in another account.
    pub access_group: Option<String>,
    /// Leave the ring file in place at exit (default: removed, so no stale masks stay readable).
    pub keep_ring: bool,
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
    /// Frames in a row whose processing fails before the run ends with an error (0: never). A
    /// single failure is logged and the next frame is tried.
    pub max_failed_frames: u32,
    /// Decode H.264 video files in a child process running this executable (a `referdino` binary,
    /// or one calling [`crate::camera::isolated::run_worker_if_requested`]), so a decoder crash is
    /// an error instead of the end of the process. `None` (the default here; the CLI sets its own
    /// executable unless `--decode in-process`): decode in this process.
    pub decoder_worker: Option<PathBuf>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            source: String::new(),
            sources: Vec::new(),
            prompt: None,
            max_objects: crate::pipeline::multi::DEFAULT_MAX_OBJECTS,
            cross_batch: 1,
            image_batch: 1,
            host_path: false,
            weights: None,
            config: None,
            backend: "cpu".into(),
            engines: None,
            more_engines: Vec::new(),
            plugins: None,
            int8: None,
            threads: None,
            window: None,
            max_text: None,
            short_side: crate::config::DEFAULT_SHORT_SIDE,
            ring: None,
            rings: Vec::new(),
            ring_slots: 8,
            save_dir: None,
            max_frames: None,
            multi: None,
            socket: None,
            ring_mode: crate::access::OWNER_ONLY,
            socket_mode: crate::access::OWNER_ONLY,
            access_group: None,
            keep_ring: false,
            stdin_commands: false,
            realtime: false,
            fps: 30,
            progress: false,
            finalize: false,
            collect_masks: false,
            max_failed_frames: 30,
            decoder_worker: None,
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

    /// Every source, stream 0 first.
    pub fn all_sources(&self) -> Vec<&str> {
        std::iter::once(self.source.as_str())
            .chain(self.sources.iter().map(String::as_str))
            .collect()
    }

    /// Every engine directory (`engines` then `more_engines`); empty: engines exported from the
    /// weights at start-up.
    pub fn engine_dirs(&self) -> Vec<&std::path::Path> {
        self.engines
            .iter()
            .chain(&self.more_engines)
            .map(PathBuf::as_path)
            .collect()
    }

    /// The ring of each of `streams` streams: `ring` then `rings` when there is one name per
    /// stream, `NAME-i` from a single name, none without a name. Another count is an error.
    pub fn ring_names(&self, streams: usize) -> anyhow::Result<Vec<Option<String>>> {
        let named: Vec<&String> = self.ring.iter().chain(&self.rings).collect();
        match named.len() {
            0 => Ok(vec![None; streams]),
            1 if streams > 1 => Ok((0..streams)
                .map(|i| Some(format!("{}-{i}", named[0])))
                .collect()),
            k if k == streams => Ok(named.into_iter().map(|r| Some(r.clone())).collect()),
            k => anyhow::bail!(
                "{k} ring names for {streams} streams: give one name (streams get NAME-0, NAME-1, …) or one per --source"
            ),
        }
    }

    /// The temporal window of engines exported at start-up: `window`, or the default.
    pub fn window(&self) -> usize {
        self.window.unwrap_or(crate::config::DEFAULT_WINDOW)
    }

    /// The text length of engines exported at start-up: `max_text`, or the default.
    pub fn max_text(&self) -> usize {
        self.max_text.unwrap_or(crate::config::DEFAULT_MAX_TEXT)
    }

    /// Refuses flag values outside their ranges ([`crate::limits`]), naming the flag, the value and
    /// the range, before anything is opened, allocated or written; and start-up prompts the command
    /// channel would refuse ([`check_prompt`]). The model-dependent checks (enough feature tokens
    /// for the queries, `max_text` within the model's text length) follow once the model is loaded.
    ///
    /// [`check_prompt`]: crate::pipeline::commands::check_prompt
    pub fn check_ranges(&self) -> anyhow::Result<()> {
        use crate::limits::{self as l, check_range};
        check_range("--window", self.window(), 1, l::MAX_WINDOW)?;
        check_range("--cross-batch", self.cross_batch, 1, l::MAX_CROSS_BATCH)?;
        check_range("--image-batch", self.image_batch, 1, l::MAX_IMAGE_BATCH)?;
        // 0 keeps its meaning "every available core".
        check_range("--threads", self.threads.unwrap_or(0), 0, l::MAX_THREADS)?;
        check_range(
            "--max-text",
            self.max_text(),
            l::MIN_MAX_TEXT,
            crate::text::MAX_TEXT_LEN,
        )?;
        check_range(
            "--short-side",
            self.short_side,
            l::MIN_SHORT_SIDE,
            l::MAX_SHORT_SIDE,
        )?;
        // A frame rate of 0 would pace nothing; refused like `synthetic:…@0`.
        check_range("--fps", self.fps, 1, l::MAX_FPS)?;
        // One frame reports at most MAX_TRACKS tracks (the ring's track table): objects past it
        // would never be reported.
        check_range(
            "--max-objects",
            self.max_objects,
            1,
            crate::output::ring::MAX_TRACKS,
        )?;
        if let Some(p) = &self.prompt {
            check_cli_prompt("--prompt", p)?;
        }
        Ok(())
    }

    /// Who may open the ring file and the socket: `(ring, socket)` access with the configured modes
    /// and group (the group name resolved here, so a typo fails before anything is created).
    pub fn access(&self) -> crate::Result<(Access, Access)> {
        let group = match &self.access_group {
            Some(g) => Some(crate::access::resolve_group(g)?),
            None => None,
        };
        let ring = Access {
            mode: self.ring_mode,
            group,
        };
        let socket = Access {
            mode: self.socket_mode,
            group,
        };
        ring.validate()?;
        socket.validate()?;
        Ok((ring, socket))
    }
}

/// Refuses a prompt given as `flag` that the command channel would refuse (the same
/// [`crate::pipeline::commands::check_prompt`] with the default limits), naming the flag.
pub fn check_cli_prompt(flag: &str, prompt: &str) -> anyhow::Result<()> {
    let limits = crate::pipeline::commands::Limits::default();
    match crate::pipeline::commands::check_prompt(prompt, &limits) {
        Ok(_) => Ok(()),
        Err(e) => anyhow::bail!("{flag}: {e}"),
    }
}

/// Parses a file mode written in octal (`"0640"`, `"640"`, `"0o640"`), as `chmod` takes it.
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.trim().trim_start_matches("0o");
    let mode = u32::from_str_radix(digits, 8)
        .map_err(|_| format!("file mode `{s}` is not an octal number such as 0600 or 0640"))?;
    if mode & !0o777 != 0 {
        return Err(format!(
            "file mode `{s}` has bits beyond 0777 (set-id and sticky bits are not allowed)"
        ));
    }
    Ok(mode)
}

/// Serde reader for a mode given as a number or as an octal string.
fn octal_mode<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Mode {
        Number(u32),
        Text(String),
    }
    match Mode::deserialize(d)? {
        Mode::Number(n) => Ok(n),
        Mode::Text(t) => parse_mode(&t).map_err(serde::de::Error::custom),
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
        assert_eq!(c.window, Some(4));
        assert_eq!((c.max_text, c.max_text()), (None, 32));
        assert_eq!(c.backend, "cpu");
        assert!(!c.stdin_commands);
        assert!(serde_json::from_str::<RuntimeConfig>(r#"{"source": "x", "windw": 4}"#).is_err());
        assert_eq!(c.max_objects, 8);
        assert_eq!(c.ring_mode, 0o600);
        assert!(!c.keep_ring);
    }

    #[test]
    fn modes_read_as_octal_and_bad_ones_are_refused() {
        let c: RuntimeConfig =
            serde_json::from_str(r#"{"source": "x", "ring_mode": "0640", "socket_mode": 432}"#)
                .unwrap();
        assert_eq!(c.ring_mode, 0o640);
        assert_eq!(c.socket_mode, 0o660);
        assert_eq!(parse_mode("0o600"), Ok(0o600));
        assert!(parse_mode("0955").is_err());
        assert!(parse_mode("4755").unwrap_err().contains("beyond 0777"));
        assert!(
            serde_json::from_str::<RuntimeConfig>(r#"{"source": "x", "ring_mode": "rw"}"#).is_err()
        );
        let c = RuntimeConfig {
            access_group: Some("no-such-group-referdino".into()),
            ..RuntimeConfig::new("x")
        };
        assert!(c.access().is_err());
        let c = RuntimeConfig {
            ring_mode: 0o1777,
            ..RuntimeConfig::new("x")
        };
        assert!(c.access().is_err());
    }

    #[test]
    fn out_of_range_flags_are_refused_by_name() {
        assert!(RuntimeConfig::new("x").check_ranges().is_ok());
        type Set = fn(&mut RuntimeConfig);
        let cases: Vec<(Set, &str)> = vec![
            (
                |c| c.short_side = 100_000,
                "--short-side 100000: must be between 16 and 2160",
            ),
            (
                |c| c.short_side = 0,
                "--short-side 0: must be between 16 and 2160",
            ),
            (
                |c| c.short_side = 1,
                "--short-side 1: must be between 16 and 2160",
            ),
            (
                |c| c.threads = Some(100_000),
                "--threads 100000: must be between 0 and 256",
            ),
            (
                |c| c.max_text = Some(100_000),
                "--max-text 100000: must be between 3 and 256",
            ),
            (
                |c| c.max_text = Some(0),
                "--max-text 0: must be between 3 and 256",
            ),
            (
                |c| c.max_text = Some(2),
                "--max-text 2: must be between 3 and 256",
            ),
            (
                |c| c.window = Some(100_000_000),
                "--window 100000000: must be between 1 and 1024",
            ),
            (
                |c| c.window = Some(0),
                "--window 0: must be between 1 and 1024",
            ),
            (
                |c| c.cross_batch = 100_000,
                "--cross-batch 100000: must be between 1 and 64",
            ),
            (
                |c| c.cross_batch = 0,
                "--cross-batch 0: must be between 1 and 64",
            ),
            (
                |c| c.image_batch = 0,
                "--image-batch 0: must be between 1 and 16",
            ),
            (
                |c| c.image_batch = 17,
                "--image-batch 17: must be between 1 and 16",
            ),
            (|c| c.fps = 0, "--fps 0: must be between 1 and 1000"),
            (
                |c| c.max_objects = 0,
                "--max-objects 0: must be between 1 and 16",
            ),
            (
                |c| c.max_objects = 17,
                "--max-objects 17: must be between 1 and 16",
            ),
            (
                |c| c.max_objects = 1 << 40,
                "--max-objects 1099511627776: must be between 1 and 16",
            ),
        ];
        for (set, want) in cases {
            let mut c = RuntimeConfig::new("x");
            set(&mut c);
            assert_eq!(c.check_ranges().unwrap_err().to_string(), want);
        }
        let mut c = RuntimeConfig::new("x");
        (c.threads, c.max_text, c.short_side, c.window) = (Some(0), Some(3), 32, Some(1024));
        (c.cross_batch, c.image_batch, c.max_objects) = (64, 16, 16);
        assert!(c.check_ranges().is_ok());
        c.max_objects = 1;
        assert!(c.check_ranges().is_ok());
        (c.threads, c.max_text, c.short_side) = (Some(256), Some(256), 2160);
        assert!(c.check_ranges().is_ok());
    }

    #[test]
    fn start_up_prompts_are_checked_like_commands() {
        let mut c = RuntimeConfig::new("x");
        c.prompt = Some("the dog; the red ball".into());
        assert!(c.check_ranges().is_ok());
        for (p, want) in [
            ("the\u{7}dog", "control characters"),
            ("?!", "no letter or digit"),
            ("the dog; ...", "no letter or digit"),
            ("", "empty"),
        ] {
            c.prompt = Some(p.into());
            let e = c.check_ranges().unwrap_err().to_string();
            assert!(
                e.starts_with("--prompt: ") && e.contains(want),
                "{p:?}: {e}"
            );
        }
        c.prompt = Some("a".repeat(1025));
        let e = c.check_ranges().unwrap_err().to_string();
        assert!(e.contains("exceeds the limit of 1024 bytes"), "{e}");
        let e = check_cli_prompt("--then", "\t\n").unwrap_err().to_string();
        assert!(e.starts_with("--then: "), "{e}");
    }

    #[test]
    fn ring_names_per_stream() {
        let mut c = RuntimeConfig::new("a");
        c.sources = vec!["b".into(), "c".into()];
        assert_eq!(c.all_sources(), ["a", "b", "c"]);
        assert_eq!(c.ring_names(3).unwrap(), [None, None, None]);
        c.ring = Some("r".into());
        assert_eq!(
            c.ring_names(3).unwrap(),
            [Some("r-0".into()), Some("r-1".into()), Some("r-2".into())]
        );
        assert_eq!(c.ring_names(1).unwrap(), [Some("r".to_string())]);
        c.rings = vec!["s".into(), "t".into()];
        assert_eq!(
            c.ring_names(3).unwrap(),
            [Some("r".into()), Some("s".into()), Some("t".into())]
        );
        let e = c.ring_names(2).unwrap_err().to_string();
        assert!(e.contains("3 ring names for 2 streams"), "{e}");
    }
}
