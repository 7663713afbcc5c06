//! The loop: [`Runtime`] owns what a process shares (configuration, command inbox, stop flag) and a
//! [`LiveStream`] (source capture, preprocessing, session, selection settings, sinks). [`Runtime::step`]
//! applies one pending command or processes one frame; [`Runtime::run`] steps until the source ends,
//! the frame limit is reached or the stop flag is set, then returns the summary.
//!
//! Commands are applied between frames, each answered where it came from. Per-frame failures (an
//! engine error, a frame of another size) are logged and counted; the loop goes on.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::config::RuntimeConfig;
use super::engines::{backend_kind, load_engines};
use super::sink::StderrStatus;
use super::sink::{FrameOutput, MaskCollector, OverlaySink, RingSink, Sink};
use super::source::{Capture, Captured, OpenedSource};
use super::status::{status_interval, stderr_is_tty, StatusMeter};
use super::summary::RunSummary;
use crate::camera::latest::Take;
use crate::camera::{FrameSource, Preprocessor};
use crate::output::ring::RingOptions;
use crate::pipeline::commands::{
    Command, CommandHub, Controller, Incoming, Limits, Reply, Request, RuntimeStats, SelectMode,
    Settings,
};
use crate::pipeline::post::Selection;
use crate::pipeline::session::EngineSet;
use crate::pipeline::stream::{FrameResult, StreamConfig, StreamSession};
use crate::pipeline::timing::Stage;

/// How long a step waits for a frame (or, while paused, for a command) before it returns.
const WAIT: Duration = Duration::from_millis(100);

/// What one [`Runtime::step`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A frame was processed and handed to the sinks ([`Runtime::last`] has its tracks).
    Frame,
    /// A command was applied (pending commands are drained before the next frame).
    Command,
    /// Nothing to do yet: no frame arrived in time, or the stream is paused.
    Idle,
    /// A frame of another size than the stream was set up for was skipped.
    Skipped,
    /// Processing a frame failed (logged); the loop goes on.
    Failed,
    /// The run is over: the source ended, the frame limit was reached, or a stop was requested.
    Ended,
}

/// One live stream: its source, preprocessing, session, selection settings and sinks. A process
/// with several streams holds several of these (see [`Runtime`]).
pub struct LiveStream {
    description: String,
    frame_size: (u32, u32),
    capture: Capture,
    pre: Preprocessor,
    session: StreamSession,
    ctl: Controller,
    sinks: Vec<Box<dyn Sink>>,
    cur: Captured,
    mask: Vec<u8>,
    last: FrameResult,
    processed: u64,
    errors: u64,
    /// Failed frames in a row (reset by a processed frame).
    consecutive_errors: u32,
    /// Consecutive failures that end the run ([`RuntimeConfig::max_failed_frames`]).
    max_failed: u32,
    /// Why the run ended early, when a persistent failure ended it.
    fatal: Option<String>,
    sink_errors: u64,
    skipped: u64,
    meter: StatusMeter,
}

fn selection(mode: SelectMode, threshold: f32) -> Selection {
    match mode {
        SelectMode::Single => Selection::Single,
        SelectMode::Multi => Selection::Multi { threshold },
    }
}

impl LiveStream {
    fn stats(&self) -> RuntimeStats {
        let mut latency_ms = BTreeMap::new();
        for st in Stage::ALL {
            latency_ms.insert(
                st.name().to_string(),
                self.session.times().get(st).mean_ms(),
            );
        }
        RuntimeStats {
            frames_in: self.capture.captured(),
            frames_processed: self.processed,
            frames_dropped: self.capture.dropped(),
            fps: self.meter.fps(),
            latency_ms,
            source: self.description.clone(),
        }
    }

    /// Applies one command. A prompt the session refuses (empty, too long for the engines) gets an
    /// error reply and changes nothing.
    fn apply(&mut self, req: &Request) -> Reply {
        match &req.command {
            Command::Prompt { prompt } => {
                if let Err(e) = self.session.set_prompt(prompt) {
                    return Reply::error(req.id.clone(), e.to_string());
                }
            }
            Command::Clear => self.session.clear_prompt(),
            _ => {}
        }
        let stats = self.stats();
        let reply = self.ctl.apply(req, &stats);
        let s = &self.ctl.settings;
        self.session.set_selection(selection(s.mode, s.threshold));
        reply
    }

    fn notify_reply(&mut self, req: &Request, reply: &Reply) {
        for s in &mut self.sinks {
            s.reply(req, reply);
        }
    }

    /// Takes the next frame, runs it, hands the result to the sinks.
    fn next_frame(&mut self) -> Step {
        match self.capture.take(&mut self.cur, WAIT) {
            Take::Fresh => {}
            Take::Timeout => return Step::Idle,
            Take::Closed => return Step::Ended,
        }
        let (fw, fh) = self.frame_size;
        if (self.cur.width, self.cur.height) != (fw, fh) {
            self.skipped += 1;
            let skipped = self.skipped;
            if skipped <= 3 || skipped % 100 == 0 {
                log::warn!(
                    "frame {} is {}x{}, the engines were built for {fw}x{fh}; skipped ({skipped} so far; restart to adopt the new size)",
                    self.cur.id,
                    self.cur.width,
                    self.cur.height
                );
            }
            return Step::Skipped;
        }
        let (pre, cur, mask) = (&mut self.pre, &self.cur, &mut self.mask);
        let step = self
            .session
            .image_mut()
            .and_then(|img| pre.run(&cur.rgb, img))
            .and_then(|_| self.session.step(mask));
        match step {
            Ok(r) => {
                self.last = r;
                self.consecutive_errors = 0;
            }
            Err(e) => {
                self.errors += 1;
                self.consecutive_errors += 1;
                let errors = self.errors;
                if errors <= 10 || errors % 1000 == 0 {
                    log::error!("frame {}: {e} ({errors} failed so far)", self.cur.id);
                }
                if self.max_failed > 0 && self.consecutive_errors >= self.max_failed {
                    let why = format!(
                        "{} frames in a row failed; the last error: {e}",
                        self.consecutive_errors
                    );
                    log::error!("{why}; ending the run");
                    self.fatal = Some(why);
                    return Step::Ended;
                }
                return Step::Failed;
            }
        }
        self.processed += 1;
        let out = FrameOutput {
            frame_id: self.cur.id,
            timestamp_ns: self.cur.timestamp_ns,
            width: self.cur.width,
            height: self.cur.height,
            rgb: &self.cur.rgb,
            mask: &self.mask,
            result: &self.last,
            caption: self.session.caption(),
        };
        for s in &mut self.sinks {
            if let Err(e) = s.frame(&out) {
                // A failing sink (a full disk under the save directory) does not stop the others.
                self.sink_errors += 1;
                if self.sink_errors <= 10 || self.sink_errors % 1000 == 0 {
                    log::error!(
                        "{}: {e:#} ({} sink errors so far; the other outputs go on)",
                        s.name(),
                        self.sink_errors
                    );
                }
            }
        }
        let dropped = self.capture.dropped();
        if let Some(st) = self
            .meter
            .poll(self.processed, dropped, self.session.times())
        {
            for s in &mut self.sinks {
                s.status(&st);
            }
        }
        Step::Frame
    }
}

/// The live runtime: frames from a source through the engines into sinks, steered by commands.
///
/// ```no_run
/// use referdino::pipeline::live::{Runtime, RuntimeConfig};
/// let mut c = RuntimeConfig::new("synthetic:118x70@30");
/// c.prompt = Some("the moving square".into());
/// c.short_side = 70;
/// c.window = 4;
/// c.max_frames = Some(10);
/// let summary = Runtime::new(c)?.run()?;
/// println!("{}", summary.text());
/// # Ok::<(), anyhow::Error>(())
/// ```
pub struct Runtime {
    config: RuntimeConfig,
    hub: CommandHub,
    stop: Arc<AtomicBool>,
    stream: LiveStream,
    started: Instant,
    ended: bool,
}

fn validate(c: &RuntimeConfig) -> anyhow::Result<()> {
    if c.window == 0 {
        bail!("--window must be at least 1");
    }
    if let Some(t) = c.multi {
        if !(0.0..=1.0).contains(&t) {
            bail!("--multi {t}: the threshold is a score in [0, 1]");
        }
    }
    Ok(())
}

fn open_source(c: &RuntimeConfig) -> anyhow::Result<(OpenedSource, Preprocessor)> {
    let src = OpenedSource::open(&c.source, c.fps, c.realtime)?;
    Ok(with_preprocessor(c, src))
}

/// The preprocessor for the source's frame size (logged).
fn with_preprocessor(c: &RuntimeConfig, src: OpenedSource) -> (OpenedSource, Preprocessor) {
    let (fw, fh) = src.frame_size();
    log::info!("source {}: {fw}x{fh}", src.description);
    let pre = Preprocessor::new(fw, fh, c.short_side.max(1));
    (src, pre)
}

impl Runtime {
    /// Opens the source, loads the engines (exported from the weights, or from the engine
    /// directory), creates the sinks the configuration names and starts capturing.
    pub fn new(config: RuntimeConfig) -> anyhow::Result<Self> {
        let backend = backend_kind(&config)?;
        validate(&config)?;
        let (src, pre) = open_source(&config)?;
        let loaded = load_engines(&config, backend, src.frame_size(), pre.out_size())?;
        Self::assemble(config, src, pre, loaded.engines, loaded.stream)
    }

    /// Like [`Runtime::new`] with a source the caller opened instead of `config.source` (which is
    /// then only a label): its first frame, read here (waiting as long as the source does), sizes
    /// the engines; later frames are taken latest-wins.
    pub fn with_source(
        config: RuntimeConfig,
        source: Box<dyn FrameSource>,
    ) -> anyhow::Result<Self> {
        let backend = backend_kind(&config)?;
        validate(&config)?;
        let stop = Arc::new(AtomicBool::new(false));
        let (src, pre) = with_preprocessor(
            &config,
            OpenedSource::from_source(source, None, false, stop)?,
        );
        let loaded = load_engines(&config, backend, src.frame_size(), pre.out_size())?;
        Self::assemble(config, src, pre, loaded.engines, loaded.stream)
    }

    /// Like [`Runtime::new`] with engines the caller loaded (they must take the preprocessed frame
    /// size); `stream` gives the model's stream settings ([`StreamConfig::for_model`]). The engine
    /// fields of the configuration are ignored.
    pub fn with_engines(
        config: RuntimeConfig,
        engines: EngineSet,
        stream: StreamConfig,
    ) -> anyhow::Result<Self> {
        validate(&config)?;
        let (src, pre) = open_source(&config)?;
        Self::assemble(config, src, pre, engines, stream)
    }

    fn assemble(
        c: RuntimeConfig,
        src: OpenedSource,
        pre: Preprocessor,
        engines: EngineSet,
        mut scfg: StreamConfig,
    ) -> anyhow::Result<Self> {
        let (fw, fh) = src.frame_size();
        scfg.keep_clip = c.finalize;
        scfg.selection = match c.multi {
            Some(threshold) => Selection::Multi { threshold },
            None => Selection::Single,
        };
        let mut session = StreamSession::new(engines, scfg, (fh as usize, fw as usize))?;
        let mut ctl = Controller::default();
        if let Some(t) = c.multi {
            ctl.settings.mode = SelectMode::Multi;
            ctl.settings.threshold = t;
        }
        if let Some(p) = &c.prompt {
            session
                .set_prompt(p)
                .with_context(|| format!("--prompt {p:?}"))?;
            ctl.settings.prompt = Some(p.clone());
            ctl.settings.prompt_version = 1;
        }
        let (ring_access, socket_access) = c.access()?;
        let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
        if let Some(name) = &c.ring {
            let opts = RingOptions {
                access: ring_access,
                keep: c.keep_ring,
            };
            sinks.push(Box::new(RingSink::create_with(
                name,
                fw,
                fh,
                c.ring_slots,
                &opts,
            )?));
        }
        let overlays = match &c.save_dir {
            Some(d) => Some(OverlaySink::create(d.clone(), c.fps)?),
            None => None,
        };
        if c.collect_masks {
            sinks.push(Box::<MaskCollector>::default());
        }
        if let Some(o) = overlays {
            sinks.push(Box::new(o));
        }
        let mut hub = CommandHub::new(16, Limits::default());
        if c.stdin_commands {
            hub.spawn_stdin();
        }
        if let Some(p) = &c.socket {
            hub.listen_unix_with(p, crate::limits::MAX_CONNECTIONS, &socket_access)?;
        }
        let lockstep = src.is_file && !c.realtime;
        let len = src.len;
        let description = src.description.clone();
        let capture = src.start(lockstep)?;
        if c.progress {
            sinks.push(Box::new(StderrStatus::new(len, c.max_frames)));
        }
        let tty = stderr_is_tty(c.progress);
        let stream = LiveStream {
            description,
            frame_size: (fw, fh),
            capture,
            pre,
            session,
            ctl,
            sinks,
            cur: Captured {
                rgb: Vec::with_capacity(fw as usize * fh as usize * 3),
                ..Default::default()
            },
            mask: vec![0u8; fh as usize * fw as usize],
            last: FrameResult::default(),
            processed: 0,
            errors: 0,
            consecutive_errors: 0,
            max_failed: c.max_failed_frames,
            fatal: None,
            sink_errors: 0,
            skipped: 0,
            meter: StatusMeter::new(status_interval(tty)),
        };
        Ok(Runtime {
            config: c,
            hub,
            stop: Arc::new(AtomicBool::new(false)),
            stream,
            started: Instant::now(),
            ended: false,
        })
    }

    /// Adds a sink; it sees every frame processed from now on.
    pub fn add_sink(&mut self, sink: Box<dyn Sink>) {
        self.stream.sinks.push(sink);
    }

    /// The flag that stops the run at the next step (set it from any thread).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Replaces the stop flag (for example with [`super::interrupt_flag`], for Ctrl-C).
    pub fn set_stop_flag(&mut self, stop: Arc<AtomicBool>) {
        self.stop = stop;
    }

    /// The configuration the runtime was built from.
    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// Width and height of the stream's frames (and masks).
    pub fn frame_size(&self) -> (u32, u32) {
        self.stream.frame_size
    }

    /// The last processed frame's reported tracks.
    pub fn last(&self) -> &FrameResult {
        &self.stream.last
    }

    /// The last processed frame's label mask (0 = background, `k + 1` = reported track `k`).
    pub fn last_mask(&self) -> &[u8] {
        &self.stream.mask
    }

    /// Counters as the `status` command reports them (frames in, processed, dropped, fps, mean
    /// latency per stage, source); allocates, so call it at status rate, not per frame.
    pub fn stats(&self) -> RuntimeStats {
        self.stream.stats()
    }

    /// Frames processed so far.
    pub fn frames_processed(&self) -> u64 {
        self.stream.processed
    }

    /// Current settings (prompt, selection mode, paused).
    pub fn settings(&self) -> &Settings {
        &self.stream.ctl.settings
    }

    /// The session (caption, stage times, scores).
    pub fn session(&self) -> &StreamSession {
        &self.stream.session
    }

    /// Applies a command now, as if it had arrived between two frames, and returns its reply (the
    /// sinks see it too).
    pub fn command(&mut self, request: &Request) -> Reply {
        let reply = self.stream.apply(request);
        self.stream.notify_reply(request, &reply);
        reply
    }

    fn handle(&mut self, inc: Incoming) {
        let reply = self.stream.apply(&inc.request);
        inc.responder.send(&reply);
        self.stream.notify_reply(&inc.request, &reply);
    }

    /// Applies one pending command, or processes one frame (waiting up to 100 ms for one).
    pub fn step(&mut self) -> Step {
        if self.ended {
            return Step::Ended;
        }
        if self.stop.load(Ordering::SeqCst) {
            log::info!("interrupted; shutting down");
            self.ended = true;
            return Step::Ended;
        }
        if self
            .config
            .max_frames
            .is_some_and(|m| self.stream.processed >= m)
        {
            self.ended = true;
            return Step::Ended;
        }
        let paused = self.stream.ctl.settings.paused;
        let pending = if paused {
            self.hub.recv_timeout(WAIT)
        } else {
            self.hub.try_recv()
        };
        if let Some(inc) = pending {
            self.handle(inc);
            return Step::Command;
        }
        if paused {
            return Step::Idle;
        }
        let s = self.stream.next_frame();
        if s == Step::Ended {
            self.ended = true;
        }
        s
    }

    /// Steps until the run ends, then shuts down and returns the summary.
    pub fn run(mut self) -> anyhow::Result<RunSummary> {
        while self.step() != Step::Ended {}
        self.finish()
    }

    /// Stops capturing and the command inbox, re-scores the stream as one clip when the
    /// configuration asks for it, lets every sink finish (the overlay GIF is written here) and
    /// returns the summary.
    pub fn finish(self) -> anyhow::Result<RunSummary> {
        let seconds = self.started.elapsed().as_secs_f64();
        let Runtime {
            config,
            mut hub,
            stream,
            ..
        } = self;
        let LiveStream {
            description,
            capture,
            mut session,
            mut sinks,
            last,
            processed,
            errors,
            fatal,
            sink_errors,
            ..
        } = stream;
        let totals = capture.finish();
        hub.shutdown();
        let finalized = if config.finalize && session.prompt_frames() > 0 {
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
        let mut summary = RunSummary {
            source: description,
            frames_captured: totals.captured,
            frames_processed: processed,
            frames_dropped: totals.dropped,
            seconds,
            times: session.times().clone(),
            caption: session.caption().map(str::to_string),
            last,
            finalized,
            gif: None,
            masks: Vec::new(),
            frames_failed: errors,
            sink_errors,
            source_health: totals.health,
            frames_resized: totals.resized,
        };
        // The status sink (added last) clears its progress bar before the others report.
        let mut failed = None;
        for s in sinks.iter_mut().rev() {
            if let Err(e) = s.finish(&mut summary) {
                failed.get_or_insert(e);
            }
        }
        if let Some(why) = fatal {
            // The sinks have finished (ring consistent, GIF written); the run still failed.
            eprint!("{}", summary.text());
            bail!("the run ended early: {why}");
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(summary),
        }
    }
}
