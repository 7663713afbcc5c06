//! `referdino run`: the live runtime. A capture thread reads the source into a hand-off (latest frame
//! wins for cameras and paced sources, every frame for files), the inference loop preprocesses each
//! frame straight into the frame engine's input, runs the [`StreamSession`], and writes masks into a
//! shared-memory [`MaskRing`] and/or overlays. Commands (JSON lines on stdin and an optional Unix
//! socket) are applied between frames, each answered with one JSON line on stdout. Logs and the status
//! line go to stderr. Ctrl-C stops cleanly and prints the summary.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use image::RgbImage;

use crate::camera::latest::{LatestSlot, Take};
use crate::camera::{open_source, FrameSource, Preprocessor, SourceOptions};
use crate::config::ModelConfig;
use crate::graph::engines::{ExportOptions, Geometry};
use crate::output::overlay::{draw_overlay, write_gif, OverlayStyle, Track};
use crate::output::ring::{MaskRing, MaskRingReader, RingGeometry};
use crate::pipeline::commands::{
    Command, CommandHub, Controller, Incoming, Limits, RuntimeStats, SelectMode,
};
use crate::pipeline::engine_dir::{load_engine_dir, BackendKind};
use crate::pipeline::post::Selection;
use crate::pipeline::session::{EngineSet, VideoResult};
use crate::pipeline::stream::{FrameResult, StreamConfig, StreamSession};
use crate::pipeline::timing::{Stage, StageTimes};
use crate::weights::Checkpoint;

/// The bundled tiny checkpoint (random weights from the official code) used without `--weights`.
pub const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/referdino-tiny");

/// Overlay frames kept in memory for the animated GIF (PNG frames are written for every frame).
const GIF_FRAMES: usize = 300;

/// Arguments of `referdino run`.
#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// `/dev/videoN`, a folder of images, a video file (.mp4), or `synthetic[:WxH[@fps]]`.
    #[arg(long)]
    pub source: String,
    /// The referring expression (can be set or changed later with a command).
    #[arg(long)]
    pub prompt: Option<String>,
    /// Checkpoint (.safetensors or .pth); default: the bundled tiny checkpoint.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Model configuration: a file, `swin-t` or `swin-b` (default: guessed from the checkpoint).
    #[arg(long)]
    pub config: Option<String>,
    /// Inference backend: `cpu`, or `tensorrt` (plans from `--engines`, binary built with the
    /// `tensorrt` feature).
    #[arg(long, default_value = "cpu")]
    pub backend: String,
    /// Prebuilt engines (`referdino export` / `referdino build` output with its manifest.json)
    /// instead of exporting from `--weights` at start-up. Their geometry fixes the input size.
    #[arg(long, conflicts_with_all = ["weights", "config"])]
    pub engines: Option<PathBuf>,
    /// TensorRT plugin library (libreferdino_plugins.so); searched in the usual places if absent.
    #[arg(long)]
    pub plugins: Option<PathBuf>,
    /// Temporal window W in frames.
    #[arg(long, default_value_t = 36)]
    pub window: usize,
    /// Longest prompt in tokens the engines take (special tokens included).
    #[arg(long, default_value_t = 32)]
    pub max_text: usize,
    /// Shorter side of the model input (360 as in the official evaluation).
    #[arg(long, default_value_t = 360)]
    pub short_side: u32,
    /// Name (or path) of a shared-memory mask ring to write every frame into.
    #[arg(long)]
    pub ring: Option<String>,
    /// Slots in the mask ring.
    #[arg(long, default_value_t = 8)]
    pub ring_slots: u32,
    /// Write overlays (PNG per frame + animated GIF) here.
    #[arg(long)]
    pub save_dir: Option<PathBuf>,
    /// Stop after this many processed frames and print the summary.
    #[arg(long)]
    pub max_frames: Option<u64>,
    /// Multi-object mode: every track whose running-mean score exceeds this threshold.
    #[arg(long)]
    pub multi: Option<f32>,
    /// Also accept commands on this Unix socket.
    #[arg(long)]
    pub socket: Option<PathBuf>,
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
}

impl RunArgs {
    /// Defaults for `source` (as clap would fill them).
    pub fn new(source: &str) -> Self {
        RunArgs {
            source: source.to_string(),
            prompt: None,
            weights: None,
            config: None,
            backend: "cpu".into(),
            engines: None,
            plugins: None,
            window: 36,
            max_text: 32,
            short_side: 360,
            ring: None,
            ring_slots: 8,
            save_dir: None,
            max_frames: None,
            multi: None,
            socket: None,
            no_stdin: false,
            realtime: false,
            fps: 30,
            quiet: false,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// Source description.
    pub source: String,
    /// Frames the source delivered.
    pub frames_captured: u64,
    /// Frames run through the session.
    pub frames_processed: u64,
    /// Frames dropped because inference was busy (latest frame wins).
    pub frames_dropped: u64,
    /// Wall time of the loop.
    pub seconds: f64,
    /// Per-stage latencies.
    pub times: StageTimes,
    /// The caption of the active prompt at the end.
    pub caption: Option<String>,
    /// The last frame's reported tracks.
    pub last: FrameResult,
    /// The stream re-scored as one clip (offline-equivalent), when asked for and `T ≤ W`.
    pub finalized: Option<VideoResult>,
    /// Overlay GIF, with `--save-dir`.
    pub gif: Option<PathBuf>,
    /// Live 0/1 masks per frame, when asked for.
    pub masks: Vec<Vec<u8>>,
}

impl RunSummary {
    /// Processed frames per second over the run.
    pub fn fps(&self) -> f64 {
        if self.seconds > 0.0 {
            self.frames_processed as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// The human-readable summary (frames, dropped, fps, per-stage latency mean/p50/p95).
    pub fn text(&self) -> String {
        let mut s = format!(
            "summary: {} frames processed, {} dropped, {} captured from {}; {:.1} s, {:.2} fps\n",
            self.frames_processed,
            self.frames_dropped,
            self.frames_captured,
            self.source,
            self.seconds,
            self.fps()
        );
        s.push_str("latency ms        mean      p50      p95      max    count\n");
        for st in Stage::ALL {
            let h = self.times.get(st);
            s.push_str(&format!(
                "  {:<10} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8}\n",
                st.name(),
                h.mean_ms(),
                h.quantile_ms(0.5),
                h.quantile_ms(0.95),
                h.max_ms(),
                h.count()
            ));
        }
        s
    }
}

/// Knobs the CLI does not expose (the demo and tests use them).
#[derive(Debug, Clone, Copy, Default)]
pub struct LoopOptions {
    /// Keep per-frame features so the stream can be re-scored as one clip at the end.
    pub finalize: bool,
    /// Keep the live masks of every frame in the summary.
    pub collect_masks: bool,
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static HANDLER: Once = Once::new();

/// Installs the Ctrl-C handler once per process: the first Ctrl-C asks the loop to stop, a second
/// one exits at once (an engine call can take seconds).
fn install_interrupt_handler() {
    HANDLER.call_once(|| {
        let r = ctrlc::set_handler(|| {
            if INTERRUPTED.swap(true, Ordering::SeqCst) {
                eprintln!("\ninterrupted twice; exiting now");
                std::process::exit(130);
            }
        });
        if let Err(e) = r {
            log::warn!("Ctrl-C handler not installed: {e}");
        }
    });
}

/// One captured frame, circulating between the capture thread and the loop.
#[derive(Debug, Default)]
struct Captured {
    id: u64,
    timestamp_ns: u64,
    width: u32,
    height: u32,
    rgb: Vec<u8>,
}

/// The capture → inference hand-off.
enum Feed {
    /// Latest frame wins; stale frames are dropped and counted.
    Latest(Arc<LatestSlot<Captured>>),
    /// Every frame, in order (files): the capture thread waits for a free buffer.
    Lockstep {
        frames: Receiver<Captured>,
        free: SyncSender<Captured>,
    },
}

impl Feed {
    fn take(&self, buf: &mut Captured, timeout: Duration) -> Take {
        match self {
            Feed::Latest(slot) => slot.take(buf, timeout),
            Feed::Lockstep { frames, free } => match frames.recv_timeout(timeout) {
                Ok(f) => {
                    let old = std::mem::replace(buf, f);
                    let _ = free.try_send(old);
                    Take::Fresh
                }
                Err(RecvTimeoutError::Timeout) => Take::Timeout,
                Err(RecvTimeoutError::Disconnected) => Take::Closed,
            },
        }
    }

    fn dropped(&self) -> u64 {
        match self {
            Feed::Latest(slot) => slot.stats().dropped,
            Feed::Lockstep { .. } => 0,
        }
    }
}

/// Opens the source; returns it, its length when known (files), and whether it is a file source.
fn open(a: &RunArgs) -> anyhow::Result<(Box<dyn FrameSource>, Option<u64>, bool)> {
    let opts = SourceOptions {
        fps: a.fps.max(1),
        // Synthetic frames arrive at `--fps` like a camera's; files only when asked.
        realtime: a.realtime || a.source.starts_with("synthetic"),
        ..SourceOptions::default()
    };
    let path = Path::new(&a.source);
    if path.is_dir() {
        let f = crate::camera::files::ImageFolder::open(path, &opts)?;
        let n = f.len() as u64;
        return Ok((Box::new(f), Some(n), true));
    }
    #[cfg(feature = "video")]
    {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase());
        if path.is_file() && matches!(ext.as_deref(), Some("mp4" | "m4v" | "mov")) {
            let v = crate::camera::video::VideoFile::open(path, &opts)?;
            let n = v.frame_count() as u64;
            return Ok((Box::new(v), Some(n), true));
        }
    }
    Ok((open_source(&a.source, &opts)?, None, false))
}

fn fill(buf: &mut Captured, f: &crate::camera::Frame<'_>) {
    buf.id = f.id;
    buf.timestamp_ns = f.timestamp_ns;
    buf.width = f.width;
    buf.height = f.height;
    buf.rgb.clear();
    buf.rgb.extend_from_slice(f.rgb);
}

/// Starts the capture thread; `first` is the frame already read to size the engines.
fn spawn_capture(
    mut src: Box<dyn FrameSource>,
    first: Captured,
    lockstep: bool,
    stop: Arc<AtomicBool>,
    captured: Arc<std::sync::atomic::AtomicU64>,
) -> anyhow::Result<(Feed, std::thread::JoinHandle<()>)> {
    let len = first.rgb.len();
    let blank = || Captured {
        rgb: Vec::with_capacity(len),
        ..Default::default()
    };
    captured.store(1, Ordering::Relaxed);
    let ended = |e: Option<crate::Error>| match e {
        Some(e) => log::error!("source failed: {e}; stopping"),
        None => log::info!("end of stream"),
    };
    if lockstep {
        let (ftx, frx) = sync_channel::<Captured>(1);
        let (btx, brx) = sync_channel::<Captured>(2);
        let _ = btx.try_send(blank());
        ftx.send(first).ok();
        let h = std::thread::Builder::new()
            .name("capture".into())
            .spawn(move || loop {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(mut buf) = brx.recv() else { break };
                match src.next_frame() {
                    Ok(Some(f)) => fill(&mut buf, &f),
                    Ok(None) => break ended(None),
                    Err(e) => break ended(Some(e)),
                }
                captured.fetch_add(1, Ordering::Relaxed);
                if ftx.send(buf).is_err() {
                    break;
                }
            })?;
        return Ok((
            Feed::Lockstep {
                frames: frx,
                free: btx,
            },
            h,
        ));
    }
    let slot = Arc::new(LatestSlot::new(blank()));
    let mut first = first;
    slot.publish(&mut first);
    let s2 = slot.clone();
    let h = std::thread::Builder::new()
        .name("capture".into())
        .spawn(move || {
            let mut buf = first;
            loop {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match src.next_frame() {
                    Ok(Some(f)) => fill(&mut buf, &f),
                    Ok(None) => break ended(None),
                    Err(e) => break ended(Some(e)),
                }
                captured.fetch_add(1, Ordering::Relaxed);
                s2.publish(&mut buf);
            }
            s2.close();
        })?;
    Ok((Feed::Latest(slot), h))
}

/// Loads the checkpoint and configuration (the bundled tiny ones without `--weights`).
pub fn load_model(
    weights: Option<&Path>,
    config: Option<&str>,
) -> anyhow::Result<(Checkpoint, ModelConfig)> {
    let (ck, cfg) = match weights {
        None => {
            let ck = Checkpoint::load(&PathBuf::from(FIXTURE).join("weights.safetensors"))?;
            let cfg = match config {
                Some(c) => crate::cli::export::resolve_config(Some(c), &ck)?,
                None => ModelConfig::from_file(&PathBuf::from(FIXTURE).join("config.json"))?,
            };
            (ck, cfg)
        }
        Some(w) => {
            let ck = Checkpoint::load(w)?;
            let cfg = crate::cli::export::resolve_config(config, &ck)?;
            (ck, cfg)
        }
    };
    ck.validate(&cfg)
        .context("checkpoint does not fit the configuration")?;
    Ok((ck, cfg))
}

fn selection(mode: SelectMode, threshold: f32) -> Selection {
    match mode {
        SelectMode::Single => Selection::Single,
        SelectMode::Multi => Selection::Multi { threshold },
    }
}

/// Applies one command between frames and sends its reply. A prompt the session refuses (empty, too
/// long for the engines) gets an error reply and changes nothing.
fn handle(inc: Incoming, session: &mut StreamSession, ctl: &mut Controller, stats: &RuntimeStats) {
    match &inc.request.command {
        Command::Prompt { prompt } => {
            if let Err(e) = session.set_prompt(prompt) {
                let reply =
                    crate::pipeline::commands::Reply::error(inc.request.id.clone(), e.to_string());
                inc.responder.send(&reply);
                return;
            }
        }
        Command::Clear => session.clear_prompt(),
        _ => {}
    }
    let reply = ctl.apply(&inc.request, stats);
    let s = &ctl.settings;
    session.set_selection(selection(s.mode, s.threshold));
    inc.responder.send(&reply);
}

fn runtime_stats(
    session: &StreamSession,
    source: &str,
    captured: u64,
    processed: u64,
    dropped: u64,
    fps: f64,
) -> RuntimeStats {
    let mut latency_ms = std::collections::BTreeMap::new();
    for st in Stage::ALL {
        latency_ms.insert(st.name().to_string(), session.times().get(st).mean_ms());
    }
    RuntimeStats {
        frames_in: captured,
        frames_processed: processed,
        frames_dropped: dropped,
        fps,
        latency_ms,
        source: source.to_string(),
    }
}

/// Overlay writer for `--save-dir`.
struct Overlays {
    dir: PathBuf,
    gif_frames: Vec<RgbImage>,
    written: usize,
}

impl Overlays {
    fn frame(
        &mut self,
        rgb: &Captured,
        labels: &[u8],
        r: &FrameResult,
        caption: &str,
    ) -> anyhow::Result<()> {
        let img = RgbImage::from_raw(rgb.width, rgb.height, rgb.rgb.clone())
            .context("overlay frame size")?;
        let per_track: Vec<Vec<u8>> = (0..r.tracks.len())
            .map(|k| {
                labels
                    .iter()
                    .map(|&l| (l as usize == k + 1) as u8)
                    .collect()
            })
            .collect();
        let tracks: Vec<Track<'_>> = r
            .tracks
            .iter()
            .zip(&per_track)
            .map(|(t, m)| Track {
                id: t.id,
                mask: m,
                score: Some(t.score),
                bbox: Some(t.bbox),
            })
            .collect();
        let drawn = draw_overlay(&img, &tracks, caption, &OverlayStyle::default())?;
        let p = self.dir.join(format!("{:05}.png", self.written));
        drawn
            .save(&p)
            .with_context(|| format!("writing {}", p.display()))?;
        self.written += 1;
        if self.gif_frames.len() < GIF_FRAMES {
            self.gif_frames.push(drawn);
        }
        Ok(())
    }
}

/// Runs the live loop until the source ends, `--max-frames`, or Ctrl-C. The summary is also
/// printed on stderr.
pub fn run_loop(a: &RunArgs, lo: LoopOptions) -> anyhow::Result<RunSummary> {
    let backend = BackendKind::parse(&a.backend)?;
    if backend == BackendKind::TensorRt && a.engines.is_none() {
        bail!("--backend tensorrt runs prebuilt plans: pass --engines DIR (written by `referdino build`)");
    }
    if a.window == 0 {
        bail!("--window must be at least 1");
    }
    if let Some(t) = a.multi {
        if !(0.0..=1.0).contains(&t) {
            bail!("--multi {t}: the threshold is a score in [0, 1]");
        }
    }
    let (mut src, len, is_file) =
        open(a).with_context(|| format!("opening source '{}'", a.source))?;
    let description = src.describe();
    let first = match src.next_frame()? {
        Some(f) => {
            let mut c = Captured::default();
            fill(&mut c, &f);
            c
        }
        None => bail!("source '{}' delivered no frame", a.source),
    };
    let (fw, fh) = (first.width, first.height);
    log::info!("source {description}: {fw}x{fh}");
    let mut pre = Preprocessor::new(fw, fh, a.short_side.max(1));
    let (iw, ih) = pre.out_size();
    let t_build = Instant::now();
    let (engines, geo, mut scfg) = match &a.engines {
        Some(dir) => {
            let (engines, m) = load_engine_dir(dir, backend, a.plugins.as_deref())?;
            let g = m.geometry;
            if (g.width, g.height) != (iw as usize, ih as usize) {
                bail!(
                    "the engines in {} take {}x{} images, but {fw}x{fh} frames resize to {iw}x{ih} \
                     (shorter side {}); build engines for this geometry or change --short-side",
                    dir.display(),
                    g.width,
                    g.height,
                    a.short_side
                );
            }
            let scfg = StreamConfig {
                tracking_alpha: m.tracking_alpha,
                ..StreamConfig::default()
            };
            (engines, g, scfg)
        }
        None => {
            let (ck, cfg) = load_model(a.weights.as_deref(), a.config.as_deref())?;
            let geo = Geometry {
                height: ih as usize,
                width: iw as usize,
                max_text: a.max_text.max(4),
                window: a.window,
            };
            let engines = EngineSet::cpu(&ck, &cfg, &geo, &ExportOptions::default())?;
            (engines, geo, StreamConfig::for_model(&cfg))
        }
    };
    log::info!(
        "{} engines for {iw}x{ih}, text ≤ {} tokens, window {} ready in {:.1} s",
        a.backend,
        geo.max_text,
        geo.window,
        t_build.elapsed().as_secs_f64()
    );
    scfg.keep_clip = lo.finalize;
    scfg.selection = match a.multi {
        Some(threshold) => Selection::Multi { threshold },
        None => Selection::Single,
    };
    let (oh, ow) = (fh as usize, fw as usize);
    let mut session = StreamSession::new(engines, scfg, (oh, ow))?;
    let mut ctl = Controller::default();
    if let Some(t) = a.multi {
        ctl.settings.mode = SelectMode::Multi;
        ctl.settings.threshold = t;
    }
    if let Some(p) = &a.prompt {
        session
            .set_prompt(p)
            .with_context(|| format!("--prompt {p:?}"))?;
        ctl.settings.prompt = Some(p.clone());
        ctl.settings.prompt_version = 1;
    }
    let mut ring = match &a.ring {
        Some(name) => {
            let r = MaskRing::create(
                name,
                RingGeometry {
                    width: fw,
                    height: fh,
                    slots: a.ring_slots,
                },
            )?;
            log::info!("mask ring {}", r.path().display());
            Some(r)
        }
        None => None,
    };
    // Overlays of ring runs read the committed slot back (the mask lives in shared memory).
    let ring_reader = match (&ring, &a.save_dir) {
        (Some(r), Some(_)) => Some(MaskRingReader::open(&r.path().to_string_lossy())?),
        _ => None,
    };
    let mut overlays = match &a.save_dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            Some(Overlays {
                dir: d.clone(),
                gif_frames: Vec::new(),
                written: 0,
            })
        }
        None => None,
    };
    let mut hub = CommandHub::new(16, Limits::default());
    if !a.no_stdin {
        hub.spawn_stdin();
    }
    if let Some(p) = &a.socket {
        hub.listen_unix(p, 8)?;
    }
    install_interrupt_handler();
    INTERRUPTED.store(false, Ordering::SeqCst);

    let stop = Arc::new(AtomicBool::new(false));
    let captured = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let lockstep = is_file && !a.realtime;
    let (feed, capture) = spawn_capture(src, first, lockstep, stop.clone(), captured.clone())?;

    let tty = std::io::stderr().is_terminal() && !a.quiet;
    let bar = match (len, a.quiet) {
        (Some(n), false) => {
            let n = a.max_frames.map_or(n, |m| m.min(n));
            let pb = indicatif::ProgressBar::new(n);
            pb.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} frames {elapsed_precise} eta {eta} {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            Some(pb)
        }
        _ => None,
    };

    let mut cur = Captured {
        rgb: Vec::with_capacity(fw as usize * fh as usize * 3),
        ..Default::default()
    };
    let mut mask = vec![0u8; oh * ow];
    let mut masks = Vec::new();
    let mut last = FrameResult::default();
    let mut processed = 0u64;
    let mut errors = 0u64;
    let mut skipped = 0u64;
    let t0 = Instant::now();
    let (mut t_status, mut n_status) = (Instant::now(), 0u64);
    let mut fps_now = 0.0;
    let mut prev_sums = [(0.0f64, 0u64); 7];
    let status_every = if tty {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(5)
    };
    loop {
        if INTERRUPTED.load(Ordering::SeqCst) {
            log::info!("interrupted; shutting down");
            break;
        }
        if a.max_frames.is_some_and(|m| processed >= m) {
            break;
        }
        let counters = (
            captured.load(Ordering::Relaxed),
            processed,
            feed.dropped(),
            fps_now,
        );
        let pending = if ctl.settings.paused {
            hub.recv_timeout(Duration::from_millis(100))
        } else {
            hub.try_recv()
        };
        if let Some(inc) = pending {
            let (c, p, d, f) = counters;
            let st = runtime_stats(&session, &description, c, p, d, f);
            handle(inc, &mut session, &mut ctl, &st);
            continue; // drain every pending command before the next frame
        }
        if ctl.settings.paused {
            continue;
        }
        match feed.take(&mut cur, Duration::from_millis(100)) {
            Take::Fresh => {}
            Take::Timeout => continue,
            Take::Closed => break,
        }
        if (cur.width, cur.height) != (fw, fh) {
            skipped += 1;
            if skipped <= 3 || skipped % 100 == 0 {
                log::warn!(
                    "frame {} is {}x{}, the engines were built for {fw}x{fh}; skipped ({skipped} so far; restart to adopt the new size)",
                    cur.id,
                    cur.width,
                    cur.height
                );
            }
            continue;
        }
        let step = session
            .image_mut()
            .and_then(|img| pre.run(&cur.rgb, img))
            .and_then(|_| match ring.as_mut() {
                Some(r) => session.step_into_ring(r, cur.id, cur.timestamp_ns),
                None => session.step(&mut mask),
            });
        match step {
            Ok(r) => last = r,
            Err(e) => {
                errors += 1;
                if errors <= 10 || errors % 1000 == 0 {
                    log::error!("frame {}: {e} ({errors} failed so far)", cur.id);
                }
                continue;
            }
        }
        processed += 1;
        if ring.is_some() && (overlays.is_some() || lo.collect_masks) {
            if let Some(rd) = &ring_reader {
                let mut copy = rd.new_copy();
                if rd.read_latest(&mut copy).is_some() {
                    mask.copy_from_slice(&copy.mask);
                }
            }
        }
        if lo.collect_masks {
            masks.push(mask.iter().map(|&l| (l != 0) as u8).collect());
        }
        if let Some(ov) = overlays.as_mut() {
            let caption = session.caption().unwrap_or("(no prompt)").to_string();
            if let Err(e) = ov.frame(&cur, &mask, &last, &caption) {
                log::error!("overlay: {e:#}");
            }
        }
        if let Some(pb) = &bar {
            pb.inc(1);
        }
        let since = t_status.elapsed();
        if since >= status_every {
            fps_now = (processed - n_status) as f64 / since.as_secs_f64();
            let mut line = format!("{fps_now:.1} fps | dropped {} |", feed.dropped());
            for (k, st) in Stage::ALL.iter().enumerate().skip(1) {
                let h = session.times().get(*st);
                let (s0, c0) = prev_sums[k];
                let n = h.count() - c0;
                let ms = if n > 0 {
                    (h.sum_ms() - s0) / n as f64
                } else {
                    0.0
                };
                prev_sums[k] = (h.sum_ms(), h.count());
                line.push_str(&format!(" {} {ms:.1}", st.name()));
            }
            line.push_str(" ms");
            if let Some(pb) = &bar {
                pb.set_message(line);
            } else if tty {
                eprint!("\r\x1b[2K{line}");
            } else if !a.quiet {
                log::info!("{processed} frames | {line}");
            }
            t_status = Instant::now();
            n_status = processed;
        }
    }
    let seconds = t0.elapsed().as_secs_f64();
    let dropped = feed.dropped();
    stop.store(true, Ordering::Relaxed);
    drop(feed); // unblocks a lockstep capture thread
    if capture.join().is_err() {
        log::error!("capture thread panicked");
    }
    if let Some(pb) = bar {
        pb.finish_and_clear();
    } else if tty {
        eprintln!();
    }
    hub.shutdown();
    let finalized = if lo.finalize && session.prompt_frames() > 0 {
        match session.finalize(session.selection()) {
            Ok(v) => Some(v),
            Err(e) => {
                log::warn!("{e}");
                None
            }
        }
    } else {
        None
    };
    let gif = match overlays {
        Some(ov) if !ov.gif_frames.is_empty() => {
            let p = ov.dir.join("overlay.gif");
            write_gif(&p, &ov.gif_frames, 1000 / a.fps.max(1), 640)?;
            Some(p)
        }
        _ => None,
    };
    let summary = RunSummary {
        source: description,
        frames_captured: captured.load(Ordering::Relaxed),
        frames_processed: processed,
        frames_dropped: dropped,
        seconds,
        times: session.times().clone(),
        caption: session.caption().map(str::to_string),
        last,
        finalized,
        gif,
        masks,
    };
    Ok(summary)
}

/// CLI entry.
pub fn run(a: RunArgs) -> anyhow::Result<()> {
    let s = run_loop(&a, LoopOptions::default())?;
    eprint!("{}", s.text());
    if let Some(g) = &s.gif {
        eprintln!("overlays: {} (+ one PNG per frame)", g.display());
    }
    Ok(())
}
