//! The inference loop behind the ROS 2 node, on the library pieces: a capture thread reads any
//! [`FrameSource`] into a latest-wins slot, the loop preprocesses each frame into a
//! [`StreamSession`] and hands a [`FrameOut`] (label mask + one [`ObjectOut`] per object) to a
//! callback. Prompts arrive as [`Control`] messages between frames.
//!
//! The boundary is deliberately narrow (frames and prompt strings in, one callback per frame out)
//! so the loop can later move onto the library's live runtime without touching the ROS side.
//!
//! Engines are built for the first frame's size (the CPU backend exports them from the checkpoint);
//! a frame of another size rebuilds them and re-applies the prompt. A prompt that arrives before
//! the first frame is kept and applied once the engines exist. A control message whose caller has
//! given up waiting (its deadline passed, e.g. during an engine build) is dropped with a log line,
//! so a prompt the caller was told failed never takes effect later.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::camera::{FrameSource, Preprocessor};
use crate::config::ModelConfig;
use crate::graph::engines::{ExportOptions, Geometry};
use crate::output::ring::MAX_TRACKS;
use crate::pipeline::engine_dir::{load_engine_dir, BackendKind};
use crate::pipeline::latest::{LatestSlot, Take};
use crate::pipeline::post::Selection;
use crate::pipeline::session::EngineSet;
use crate::pipeline::stream::{StreamConfig, StreamSession};
use crate::weights::Checkpoint;

/// Longest prompt accepted, in characters (the engines' token limit is checked separately).
pub const MAX_PROMPT_CHARS: usize = 512;

/// Model and loop settings.
#[derive(Debug, Clone)]
pub struct RunnerOptions {
    /// Checkpoint; `None` = the bundled tiny checkpoint.
    pub weights: Option<PathBuf>,
    /// Model configuration (file, `swin-t`, `swin-b`); `None` = guessed.
    pub config: Option<String>,
    /// Prebuilt engines (`referdino export` / `referdino build` output) instead of exporting from
    /// `weights`; their geometry must fit the frames.
    pub engines: Option<PathBuf>,
    /// Backend for `engines`: `cpu` or `tensorrt`.
    pub backend: String,
    /// TensorRT plugin library.
    pub plugins: Option<PathBuf>,
    /// Temporal window in frames.
    pub window: usize,
    /// Longest prompt in tokens the engines take.
    pub max_text: usize,
    /// Shorter side of the model input.
    pub short_side: u32,
    /// Multi-object mode threshold; `None` = the best object only.
    pub multi: Option<f32>,
    /// Stop after this many processed frames.
    pub max_frames: Option<u64>,
    /// Initial prompt.
    pub prompt: Option<String>,
    /// Longest prompt in characters.
    pub max_prompt_chars: usize,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        RunnerOptions {
            weights: None,
            config: None,
            engines: None,
            backend: "cpu".into(),
            plugins: None,
            window: 36,
            max_text: 32,
            short_side: 360,
            multi: None,
            max_frames: None,
            prompt: None,
            max_prompt_chars: MAX_PROMPT_CHARS,
        }
    }
}

/// The answer to a prompt request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Whether the prompt is active (or will be once the engines exist).
    pub success: bool,
    /// The caption in use, or why the prompt was refused.
    pub message: String,
}

/// Where a [`Control`] sends its [`Outcome`], and until when the caller waits for it.
#[derive(Debug)]
pub struct ReplyTo {
    /// Channel to the waiting caller.
    pub tx: SyncSender<Outcome>,
    /// After this the caller has answered on its own; the request is dropped unapplied.
    pub deadline: Instant,
}

/// A request applied between frames.
#[derive(Debug)]
pub enum Control {
    /// Set the referring expression.
    Prompt {
        /// The expression.
        text: String,
        /// Where to answer (service calls); `None` for topic messages (errors are logged).
        reply: Option<ReplyTo>,
    },
    /// Drop the prompt (empty masks until the next one).
    Clear,
}

/// One reported object.
#[derive(Debug, Clone, Copy)]
pub struct ObjectOut<'a> {
    /// Its value in the label mask (`k + 1` for the `k`-th object).
    pub label: u8,
    /// Tracker id.
    pub id: u32,
    /// Running-mean score.
    pub score: f32,
    /// `x0, y0, x1, y1` in mask pixels.
    pub bbox: [f32; 4],
    /// The prompt that found it.
    pub prompt: &'a str,
}

/// Counters reported with every frame.
#[derive(Debug, Clone, Copy, Default)]
pub struct LiveStats {
    /// Frames the source delivered.
    pub frames_in: u64,
    /// Frames processed.
    pub processed: u64,
    /// Frames dropped because inference was busy (latest wins).
    pub dropped: u64,
    /// Frames that failed in the engines.
    pub failed: u64,
    /// Processed frames per second over the last second or so.
    pub fps: f64,
    /// This frame's preprocessing + inference time in milliseconds.
    pub latency_ms: f64,
}

/// What one processed frame produced.
#[derive(Debug, Clone, Copy)]
pub struct FrameOut<'a> {
    /// The source's frame id.
    pub id: u64,
    /// The source's capture time in nanoseconds.
    pub timestamp_ns: u64,
    /// Width of frame and mask.
    pub width: u32,
    /// Height of frame and mask.
    pub height: u32,
    /// The frame (tight RGB8).
    pub rgb: &'a [u8],
    /// Label mask: 0 background, `k + 1` = `objects[k]`.
    pub labels: &'a [u8],
    /// Reported objects, best first.
    pub objects: &'a [ObjectOut<'a>],
    /// Counters.
    pub stats: LiveStats,
}

/// Refuses an empty prompt or one over `max_chars` characters.
pub fn check_prompt(text: &str, max_chars: usize) -> Result<(), String> {
    if text.trim().is_empty() {
        return Err("prompt is empty".into());
    }
    let n = text.chars().count();
    if n > max_chars {
        return Err(format!(
            "prompt has {n} characters; the limit is {max_chars}"
        ));
    }
    Ok(())
}

#[derive(Debug, Default)]
struct Captured {
    id: u64,
    timestamp_ns: u64,
    width: u32,
    height: u32,
    rgb: Vec<u8>,
}

struct Live {
    session: StreamSession,
    pre: Preprocessor,
    size: (u32, u32),
    mask: Vec<u8>,
}

/// Model files loaded once; engines are exported from them per frame size (no `engines` dir).
struct Model {
    files: Option<(Checkpoint, ModelConfig)>,
}

fn build(m: &Model, o: &RunnerOptions, w: u32, h: u32) -> anyhow::Result<Live> {
    let t0 = Instant::now();
    let pre = Preprocessor::new(w, h, o.short_side.max(1));
    let (iw, ih) = pre.out_size();
    let (engines, geo, mut scfg) = match (&o.engines, &m.files) {
        (Some(dir), _) => {
            let backend = BackendKind::parse(&o.backend)?;
            let (engines, man) = load_engine_dir(dir, backend, o.plugins.as_deref())?;
            let g = man.geometry;
            if (g.width, g.height) != (iw as usize, ih as usize) {
                anyhow::bail!(
                    "the engines in {} take {}x{} images, but {w}x{h} frames resize to {iw}x{ih}",
                    dir.display(),
                    g.width,
                    g.height
                );
            }
            let scfg = StreamConfig {
                tracking_alpha: man.tracking_alpha,
                ..StreamConfig::default()
            };
            (engines, g, scfg)
        }
        (None, Some((ck, cfg))) => {
            let geo = Geometry {
                height: ih as usize,
                width: iw as usize,
                max_text: o.max_text.max(4),
                window: o.window.max(1),
            };
            let engines = EngineSet::cpu(ck, cfg, &geo, &ExportOptions::default())?;
            (engines, geo, StreamConfig::for_model(cfg))
        }
        (None, None) => anyhow::bail!("no model: neither engines nor weights"),
    };
    scfg.selection = match o.multi {
        Some(threshold) => Selection::Multi { threshold },
        None => Selection::Single,
    };
    let session = StreamSession::new(engines, scfg, (h as usize, w as usize))?;
    log::info!(
        "{} engines for {w}x{h} frames ({iw}x{ih} model input, text <= {} tokens, window {}) ready in {:.1} s",
        o.backend,
        geo.max_text,
        geo.window,
        t0.elapsed().as_secs_f64()
    );
    Ok(Live {
        session,
        pre,
        size: (w, h),
        mask: vec![0; w as usize * h as usize],
    })
}

fn answer(reply: Option<ReplyTo>, success: bool, message: String) {
    if !success {
        log::error!("prompt refused: {message}");
    }
    if let Some(r) = reply {
        // The caller may have stopped waiting; nothing to do then.
        let _ = r.tx.try_send(Outcome { success, message });
    }
}

fn apply(c: Control, live: Option<&mut Live>, prompt: &mut Option<String>, o: &RunnerOptions) {
    match c {
        Control::Clear => {
            if let Some(l) = live {
                l.session.clear_prompt();
            }
            *prompt = None;
            log::info!("prompt cleared");
        }
        Control::Prompt { text, reply } => {
            if let Some(r) = &reply {
                if Instant::now() > r.deadline {
                    log::warn!("prompt {text:?} dropped: its caller stopped waiting");
                    return;
                }
            }
            if let Err(e) = check_prompt(&text, o.max_prompt_chars) {
                return answer(reply, false, e);
            }
            match live {
                Some(l) => match l.session.set_prompt(&text) {
                    Ok(()) => {
                        let cap = l.session.caption().unwrap_or(&text).to_string();
                        log::info!("prompt set: {cap:?}");
                        *prompt = Some(text);
                        answer(reply, true, cap);
                    }
                    Err(e) => answer(reply, false, e.to_string()),
                },
                None => {
                    log::info!("prompt {text:?} kept until the first image builds the engines");
                    *prompt = Some(text);
                    answer(
                        reply,
                        true,
                        "accepted; applied when the first image has built the engines".into(),
                    );
                }
            }
        }
    }
}

fn spawn_capture(
    mut src: Box<dyn FrameSource>,
    stop: Arc<AtomicBool>,
    captured: Arc<AtomicU64>,
) -> anyhow::Result<(Arc<LatestSlot<Captured>>, std::thread::JoinHandle<()>)> {
    let slot = Arc::new(LatestSlot::new(Captured::default()));
    let s2 = slot.clone();
    let h = std::thread::Builder::new()
        .name("capture".into())
        .spawn(move || {
            let mut buf = Captured::default();
            loop {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match src.next_frame() {
                    Ok(Some(f)) => {
                        buf.id = f.id;
                        buf.timestamp_ns = f.timestamp_ns;
                        buf.width = f.width;
                        buf.height = f.height;
                        buf.rgb.clear();
                        buf.rgb.extend_from_slice(f.rgb);
                    }
                    Ok(None) => {
                        log::info!("end of stream");
                        break;
                    }
                    Err(e) => {
                        log::error!("source failed: {e}; stopping");
                        break;
                    }
                }
                captured.fetch_add(1, Ordering::Relaxed);
                s2.publish(&mut buf);
            }
            s2.close();
        })?;
    Ok((slot, h))
}

/// What a run did.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunnerSummary {
    /// Final counters.
    pub stats: LiveStats,
    /// Engine builds (one per frame size seen).
    pub builds: u64,
}

/// Runs until the source ends, `stop` is set, or `max_frames` frames were processed. Every
/// processed frame goes to `on_frame`; failures are logged and the loop goes on.
pub fn run(
    src: Box<dyn FrameSource>,
    o: &RunnerOptions,
    controls: &Receiver<Control>,
    stop: Arc<AtomicBool>,
    on_frame: &mut dyn FnMut(&FrameOut<'_>),
) -> anyhow::Result<RunnerSummary> {
    let model = Model {
        files: match o.engines {
            Some(_) => None,
            None => Some(
                crate::cli::run::load_model(o.weights.as_deref(), o.config.as_deref())
                    .context("loading the model")?,
            ),
        },
    };
    log::info!("source {}", src.describe());
    let captured = Arc::new(AtomicU64::new(0));
    let (slot, capture) = spawn_capture(src, stop.clone(), captured.clone())?;
    let mut prompt = o.prompt.clone();
    if let Some(p) = &prompt {
        check_prompt(p, o.max_prompt_chars).map_err(|e| anyhow::anyhow!("--prompt: {e}"))?;
    }
    let mut live: Option<Live> = None;
    let mut cur = Captured::default();
    let mut stats = LiveStats::default();
    let mut builds = 0u64;
    let (mut t_fps, mut n_fps) = (Instant::now(), 0u64);
    let mut build_failures = 0u64;
    loop {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if o.max_frames.is_some_and(|m| stats.processed >= m) {
            break;
        }
        while let Ok(c) = controls.try_recv() {
            apply(c, live.as_mut(), &mut prompt, o);
        }
        match slot.take(&mut cur, Duration::from_millis(50)) {
            Take::Fresh => {}
            Take::Timeout => continue,
            Take::Closed => break,
        }
        let t0 = Instant::now();
        if live.as_ref().map(|l| l.size) != Some((cur.width, cur.height)) {
            if live.is_some() {
                log::warn!(
                    "frame size changed to {}x{}; rebuilding the engines",
                    cur.width,
                    cur.height
                );
            }
            live = None;
            match build(&model, o, cur.width, cur.height) {
                Ok(mut l) => {
                    builds += 1;
                    if let Some(p) = &prompt {
                        if let Err(e) = l.session.set_prompt(p) {
                            log::error!("prompt {p:?} refused by the new engines: {e}");
                            prompt = None;
                        }
                    }
                    live = Some(l);
                }
                Err(e) => {
                    build_failures += 1;
                    if build_failures <= 5 || build_failures % 100 == 0 {
                        log::error!(
                            "building engines for {}x{}: {e:#} ({build_failures} failed)",
                            cur.width,
                            cur.height
                        );
                    }
                    continue;
                }
            }
            // Requests that queued during the build.
            while let Ok(c) = controls.try_recv() {
                apply(c, live.as_mut(), &mut prompt, o);
            }
        }
        let Some(l) = live.as_mut() else { continue };
        let step = l
            .session
            .image_mut()
            .and_then(|img| l.pre.run(&cur.rgb, img))
            .and_then(|_| l.session.step(&mut l.mask));
        let r = match step {
            Ok(r) => r,
            Err(e) => {
                stats.failed += 1;
                if stats.failed <= 10 || stats.failed % 1000 == 0 {
                    log::error!("frame {}: {e} ({} failed so far)", cur.id, stats.failed);
                }
                continue;
            }
        };
        stats.processed += 1;
        stats.latency_ms = t0.elapsed().as_secs_f64() * 1e3;
        stats.frames_in = captured.load(Ordering::Relaxed);
        stats.dropped = slot.stats().dropped;
        let since = t_fps.elapsed();
        if since >= Duration::from_secs(1) {
            stats.fps = (stats.processed - n_fps) as f64 / since.as_secs_f64();
            (t_fps, n_fps) = (Instant::now(), stats.processed);
        }
        let p = prompt.as_deref().unwrap_or("");
        let mut objects: heapless::Vec<ObjectOut<'_>, MAX_TRACKS> = heapless::Vec::new();
        for (k, t) in r.tracks.iter().enumerate() {
            // Capacity equals the track list's, so this never fails.
            let _ = objects.push(ObjectOut {
                label: (k + 1) as u8,
                id: t.id,
                score: t.score,
                bbox: t.bbox,
                prompt: p,
            });
        }
        on_frame(&FrameOut {
            id: cur.id,
            timestamp_ns: cur.timestamp_ns,
            width: cur.width,
            height: cur.height,
            rgb: &cur.rgb,
            labels: &l.mask,
            objects: &objects,
            stats,
        });
    }
    stop.store(true, Ordering::Relaxed);
    drop(slot);
    if capture.join().is_err() {
        log::error!("capture thread panicked");
    }
    Ok(RunnerSummary { stats, builds })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompt_checks() {
        assert!(check_prompt("  ", 10).unwrap_err().contains("empty"));
        assert!(check_prompt("abcdefghijk", 10).unwrap_err().contains("11 characters"));
        assert!(check_prompt("a cup", 10).is_ok());
    }

    #[test]
    fn late_requests_are_dropped_and_early_ones_kept() {
        let o = RunnerOptions::default();
        let mut prompt = None;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let late = Control::Prompt {
            text: "a dog".into(),
            reply: Some(ReplyTo {
                tx: tx.clone(),
                deadline: Instant::now() - Duration::from_secs(1),
            }),
        };
        apply(late, None, &mut prompt, &o);
        assert!(prompt.is_none() && rx.try_recv().is_err());
        let ok = Control::Prompt {
            text: "a dog".into(),
            reply: Some(ReplyTo {
                tx: tx.clone(),
                deadline: Instant::now() + Duration::from_secs(5),
            }),
        };
        apply(ok, None, &mut prompt, &o);
        assert_eq!(prompt.as_deref(), Some("a dog"));
        assert!(rx.try_recv().unwrap().success);
        let empty = Control::Prompt {
            text: "".into(),
            reply: Some(ReplyTo {
                tx,
                deadline: Instant::now() + Duration::from_secs(5),
            }),
        };
        apply(empty, None, &mut prompt, &o);
        assert!(!rx.try_recv().unwrap().success);
        assert_eq!(prompt.as_deref(), Some("a dog"));
    }
}
