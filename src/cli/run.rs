//! `referdino run`: the live runtime ([`crate::pipeline::live::Runtime`]) from the command line. This
//! module only maps the flags onto a [`RuntimeConfig`] and prints the summary: a capture thread reads
//! the source (latest frame wins for cameras and paced sources, every frame for files), each frame runs
//! through the stream session into a shared-memory mask ring and/or overlays, commands (JSON lines on
//! stdin and an optional Unix socket) are applied between frames and answered with one JSON line on
//! stdout, logs and the status line go to stderr, and Ctrl-C, SIGTERM or SIGHUP stop cleanly with the
//! summary (ring file and socket removed).

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use super::args::{EngineArgs, ModelArgs};
use crate::pipeline::live::config::parse_mode;
use crate::pipeline::live::{interrupt_flag, EndedEarly, Runtime, RuntimeConfig};

pub use crate::pipeline::live::{load_model, RunSummary, FIXTURE};

/// Arguments of `referdino run`.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// `/dev/videoN` (or `/dev/v4l/by-id/…`), a folder of images, a video file (.mp4),
    /// `gst:[WxH:]PIPELINE` (GStreamer), `csi:N[:WxH[@fps]]` (Jetson CSI camera),
    /// `raw:WxH:FORMAT:PATH` (FIFO, file or `-`), or `synthetic[:WxH[@fps]]`. Repeat for several
    /// streams in one process (stream 0, 1, …: own capture thread, objects, ring and status; one
    /// engine set per input size, so cameras of different aspect ratios mix (at most 4 sizes), the
    /// text engine shared; a camera missing at start-up joins when it appears, with its own engines
    /// exported in the background if its size is new).
    #[arg(long, required = true)]
    pub source: Vec<String>,
    /// A referring expression: one object per `--prompt` (ids 0, 1, …), or several in one separated
    /// by `;`. Every stream starts with these; commands add, remove and change them later.
    #[arg(long)]
    pub prompt: Vec<String>,
    /// Most objects per stream (1..=16, the track table of a frame); one more is refused with an
    /// error.
    #[arg(long, default_value_t = crate::pipeline::multi::DEFAULT_MAX_OBJECTS)]
    pub max_objects: usize,
    /// Objects the cross-modal engine takes per run (static batch; engines exported at start-up
    /// only). 1 runs it once per object.
    #[arg(long, default_value_t = 1)]
    pub cross_batch: usize,
    /// Frames of several streams the image engine takes per run (static batch; engines exported at
    /// start-up only): streams of one input size whose frames are ready together share one Swin
    /// run (cameras of another aspect ratio run on their own size's image engine).
    #[arg(long, default_value_t = 1)]
    pub image_batch: usize,
    /// With `--backend tensorrt`: run the plans on the host path (every binding through host
    /// memory) instead of the device-resident path.
    #[arg(long)]
    pub host_path: bool,
    /// `--weights`, `--config`.
    #[command(flatten)]
    pub model: ModelArgs,
    /// `--backend`, `--engines`, `--plugins`, `--threads` and the input geometry.
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Name (or path) of a shared-memory mask ring to write every frame into. With several
    /// streams: once (stream i writes NAME-i) or once per `--source`.
    #[arg(long)]
    pub ring: Vec<String>,
    /// Slots in the mask ring.
    #[arg(long, default_value_t = 8)]
    pub ring_slots: u32,
    /// Write overlays (PNG per frame + animated GIF) here.
    #[arg(long)]
    pub save_dir: Option<PathBuf>,
    /// Stop after this many processed frames and print the summary.
    #[arg(long)]
    pub max_frames: Option<u64>,
    /// Also write the summary as JSON here at the end (counts, fps, per-stage latency percentiles,
    /// the source's health; one entry per stream).
    #[arg(long)]
    pub summary_json: Option<PathBuf>,
    /// Multi-object mode: every track whose running-mean score exceeds this threshold.
    #[arg(long)]
    pub multi: Option<f32>,
    /// Also accept commands on this Unix socket.
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Permission bits of the ring file, in octal (readers need read permission).
    #[arg(long, default_value = "0600", value_parser = parse_mode)]
    pub ring_mode: u32,
    /// Permission bits of the command socket, in octal (clients need write permission).
    #[arg(long, default_value = "0600", value_parser = parse_mode)]
    pub socket_mode: u32,
    /// Group (name or id) for the ring file and the socket, for consumers in another account
    /// (use with e.g. `--ring-mode 0640 --socket-mode 0660`).
    #[arg(long)]
    pub access_group: Option<String>,
    /// Leave the ring file in place at exit (default: removed).
    #[arg(long)]
    pub keep_ring: bool,
    /// Do not read commands from stdin.
    #[arg(long)]
    pub no_stdin: bool,
    /// Files and folders: deliver frames at `--fps` like a camera, dropping frames inference cannot
    /// keep up with (default: every frame is processed).
    #[arg(long)]
    pub realtime: bool,
    /// Frame rate for synthetic and `--realtime` sources, and the overlay GIF.
    #[arg(long, default_value_t = 30)]
    pub fps: u32,
    /// No progress bar or status line.
    #[arg(long)]
    pub quiet: bool,
    /// End the run with an error after this many frames in a row fail (0: never).
    #[arg(long, default_value_t = 30)]
    pub max_failed_frames: u32,
    /// Where H.264 video files are decoded: `isolated` (a child process running this executable, so
    /// a decoder crash on a hostile file is reported as an error) or `in-process`.
    #[arg(long, default_value = "isolated", value_parser = ["isolated", "in-process"])]
    pub decode: String,
}

impl RunArgs {
    /// Defaults for `source`, filled by clap itself (the defaults are written once, on the flags).
    pub fn new(source: &str) -> Self {
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            args: RunArgs,
        }
        use clap::Parser;
        Only::parse_from(["run", "--source", source]).args
    }

    /// The runtime configuration these flags describe.
    pub fn to_config(&self) -> RuntimeConfig {
        let prompts: Vec<&str> = self.prompt.iter().map(String::as_str).collect();
        RuntimeConfig {
            source: self.source.first().cloned().unwrap_or_default(),
            sources: self.source.iter().skip(1).cloned().collect(),
            prompt: (!prompts.is_empty()).then(|| prompts.join("; ")),
            max_objects: self.max_objects,
            cross_batch: self.cross_batch,
            image_batch: self.image_batch,
            host_path: self.host_path,
            weights: self.model.weights.clone(),
            config: self.model.config.clone(),
            backend: self.engine.backend.clone(),
            engines: self.engine.engines.first().cloned(),
            more_engines: self.engine.engines.iter().skip(1).cloned().collect(),
            plugins: self.engine.plugins.clone(),
            int8: self.engine.int8.clone(),
            threads: self.engine.threads,
            window: self.engine.window,
            max_text: self.engine.max_text,
            short_side: self.engine.short_side,
            ring: self.ring.first().cloned(),
            rings: self.ring.iter().skip(1).cloned().collect(),
            ring_slots: self.ring_slots,
            save_dir: self.save_dir.clone(),
            max_frames: self.max_frames,
            multi: self.multi,
            socket: self.socket.clone(),
            ring_mode: self.ring_mode,
            socket_mode: self.socket_mode,
            access_group: self.access_group.clone(),
            keep_ring: self.keep_ring,
            stdin_commands: !self.no_stdin,
            realtime: self.realtime,
            fps: self.fps,
            progress: !self.quiet,
            finalize: false,
            collect_masks: false,
            max_failed_frames: self.max_failed_frames,
            decoder_worker: self.decoder_worker(),
        }
    }
}

impl RunArgs {
    /// The executable that decodes video files (`--decode isolated`): this one.
    fn decoder_worker(&self) -> Option<PathBuf> {
        if self.decode != "isolated" {
            return None;
        }
        match std::env::current_exe() {
            Ok(exe) => Some(exe),
            Err(e) => {
                log::warn!("cannot locate this executable ({e}); decoding video in-process");
                None
            }
        }
    }
}

/// Builds the runtime for `config`, stops it on Ctrl-C / SIGTERM / SIGHUP, and runs it until the
/// source ends, the frame limit, or the signal.
pub fn run_config(config: RuntimeConfig) -> anyhow::Result<RunSummary> {
    // The handler first: a signal while the runtime is built (engines exported, rings and the
    // socket made) must not kill the process with its ring marked live and its socket left
    // behind; the run then stops at its first step and cleans up.
    let interrupted = interrupt_flag();
    interrupted.store(false, Ordering::SeqCst);
    let mut rt = Runtime::new(config)?;
    rt.set_stop_flag(interrupted);
    rt.run()
}

/// Checks at start-up that the summary can be written to `p` (an hours-long run should not learn
/// at its end that the directory is missing); leaves no file behind.
fn check_summary_path(
    p: &std::path::Path,
    save_dir: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    if p.is_dir() {
        anyhow::bail!("--summary-json {}: is a directory", p.display());
    }
    // Inside the save directory (which the run creates) the parent may not exist yet.
    if let (Some(dir), Some(parent)) = (save_dir, p.parent()) {
        if parent.starts_with(dir) {
            std::fs::create_dir_all(parent).map_err(|e| {
                anyhow::anyhow!("--summary-json {}: cannot be written: {e}", p.display())
            })?;
        }
    }
    let existed = p.exists();
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(p)
        .map_err(|e| anyhow::anyhow!("--summary-json {}: cannot be written: {e}", p.display()))?;
    if !existed {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}

/// CLI entry.
pub fn run(a: RunArgs) -> anyhow::Result<()> {
    let json_path = a.summary_json.clone();
    if let Some(p) = &json_path {
        check_summary_path(p, a.save_dir.as_deref())?;
    }
    let s = match run_config(a.to_config()) {
        Ok(s) => s,
        Err(e) => {
            // A run that ended early still says what it did, with why, where monitoring reads it.
            if let (Some(p), Some(early)) = (&json_path, e.downcast_ref::<EndedEarly>()) {
                let mut j = early.summary.to_json();
                j["ended_early"] = early.why.clone().into();
                let written = serde_json::to_string_pretty(&j)
                    .map_err(anyhow::Error::from)
                    .and_then(|t| std::fs::write(p, t + "\n").map_err(Into::into));
                if let Err(w) = written {
                    log::error!("writing the summary to {}: {w:#}", p.display());
                }
            }
            return Err(e);
        }
    };
    eprint!("{}", s.text());
    if let Some(p) = &json_path {
        let text = serde_json::to_string_pretty(&s.to_json())?;
        std::fs::write(p, text + "\n")
            .map_err(|e| anyhow::anyhow!("writing the summary to {}: {e}", p.display()))?;
    }
    if let Some(g) = &s.gif {
        eprintln!("overlays: {} (+ one PNG per frame)", g.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--engines` repeated: the first directory is the configuration's `engines`, the others
    /// `more_engines`, in order; one stays as it was.
    #[test]
    fn engines_repeated_map_to_one_directory_per_input_size() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            args: RunArgs,
        }
        let parse = |extra: &[&str]| {
            let mut argv = vec!["run", "--source", "a", "--source", "b"];
            argv.extend(extra);
            Only::parse_from(argv).args.to_config()
        };
        let c = parse(&["--engines", "e-16x9", "--engines", "e-4x3"]);
        assert_eq!(c.engines, Some(PathBuf::from("e-16x9")));
        assert_eq!(c.more_engines, [PathBuf::from("e-4x3")]);
        assert_eq!(
            c.engine_dirs(),
            [
                std::path::Path::new("e-16x9"),
                std::path::Path::new("e-4x3")
            ]
        );
        let c = parse(&["--engines", "e"]);
        assert_eq!(
            (c.engines, c.more_engines.len()),
            (Some(PathBuf::from("e")), 0)
        );
        let c = parse(&[]);
        assert!(c.engine_dirs().is_empty());
    }

    /// A summary path in a missing directory, or a directory, is refused before the run; a good one
    /// passes and leaves nothing behind (an existing file is kept).
    #[test]
    fn the_summary_path_is_checked_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let e = check_summary_path(&dir.path().join("nodir/s.json"), None).unwrap_err();
        assert!(e.to_string().contains("cannot be written"), "{e}");
        // Inside the save directory, which the run makes: made now.
        let save = dir.path().join("out");
        check_summary_path(&save.join("s.json"), Some(&save)).unwrap();
        assert!(save.is_dir() && !save.join("s.json").exists());
        let e = check_summary_path(dir.path(), None).unwrap_err();
        assert!(e.to_string().contains("is a directory"), "{e}");
        let p = dir.path().join("s.json");
        check_summary_path(&p, None).unwrap();
        assert!(!p.exists());
        std::fs::write(&p, "old").unwrap();
        check_summary_path(&p, None).unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "old");
    }
}
