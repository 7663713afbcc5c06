//! The loop: [`Runtime`] owns what a process shares (configuration, command inbox, stop flag, the
//! engines) and one [`LiveStream`] per source (capture thread, preprocessing, objects, selection
//! settings, sinks, status). [`Runtime::step`] applies one pending command or processes one frame of
//! one stream (streams take turns, and a burst of commands yields to a frame turn);
//! [`Runtime::run`] steps until every source ends or reaches the frame limit (a camera still to
//! come, [`super::joining`], keeps the run going), or the stop flag is set, then returns the
//! summary.
//!
//! Commands are applied between frames, each answered where it came from; `"stream": N` addresses a
//! stream (default 0). Per-frame failures (an engine error, a frame of another size) are logged and
//! counted; the loop goes on. A source that ends or fails ends its own stream only: cameras re-open
//! themselves after failures inside their capture thread ([`crate::camera::reconnect`]) while the
//! other streams carry on.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::config::RuntimeConfig;
use super::engines::{
    backend_kind, load_engines, model_input, no_set_for, MoreGeometries, RunEngines, SourceInput,
};
use super::exporter::{ExportWatch, Exporter};
use super::joining::{may_appear_later, Joining, Polled};
use super::masks::MaskTarget;
#[cfg(feature = "cuda")]
use super::pool::DeviceSets;
use super::sink::StderrStatus;
use super::sink::{FrameOutput, MaskCollector, OverlaySink, Sink};
use super::source::{Capture, Captured, OpenedSource};
use super::status::{status_interval, stderr_is_tty, StatusMeter};
use super::summary::{EndedEarly, RunSummary};
use super::template::JoinTemplate;
use crate::camera::latest::Take;
use crate::camera::{FrameSource, Layout, LayoutSet, Preprocessor};
use crate::output::ring::{MaskRing, RingOptions};
use crate::pipeline::commands::{
    split_prompts, Command, CommandHub, Controller, Incoming, InputSize, Limits, ObjectId,
    ObjectInfo, Reply, Request, RuntimeStats, SelectMode, Settings, Streams,
};
use crate::pipeline::multi::{MultiConfig, MultiEngineSet, MultiStream, SharedEngines, SharedText};
use crate::pipeline::objects::IdSpace;
use crate::pipeline::post::Selection;
use crate::pipeline::stream::{FrameResult, StreamConfig};
use crate::pipeline::timing::Stage;
// Largest image batch the runtime gathers frames for (also the `--image-batch` limit).
use crate::limits::MAX_IMAGE_BATCH;

/// How long a step waits for a frame (or, while paused, for a command) before it returns.
const WAIT: Duration = Duration::from_millis(100);

/// With several streams, how long a step waits on one of them when none has a frame ready.
const WAIT_SHARED: Duration = Duration::from_millis(5);

/// Most commands applied in a row while frames could run; then a frame turn comes first.
const COMMAND_BURST: u32 = 8;

/// Longest time spent on commands in a row while frames could run (a new prompt runs the text
/// engine, tens of milliseconds each); then a frame turn comes first.
const COMMAND_BURST_TIME: Duration = Duration::from_millis(50);

/// What one [`Runtime::step`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A frame was processed and handed to the sinks ([`Runtime::last`] has its tracks).
    Frame,
    /// A command was applied (pending commands go before the next frame, at most 8 of them or
    /// 50 ms in a row while frames can run).
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

/// One live stream: its source, preprocessing, objects, selection settings and sinks. A process
/// with several sources holds one per source (see [`Runtime`]); the engines are the runtime's.
pub struct LiveStream {
    index: usize,
    description: String,
    frame_size: (u32, u32),
    /// The model input (width, height) its frames resize to.
    input: (u32, u32),
    /// Its engine set among the runtime's host sets (one per input size; unused on the device
    /// path, where the lane holds the stream's own set).
    geo: usize,
    capture: Capture,
    pre: Preprocessor,
    /// The objects and how they run (declared before `masks`: a device lane unregisters the ring
    /// from CUDA before the ring is unmapped).
    lane: Lane,
    ctl: Controller,
    sinks: Vec<Box<dyn Sink>>,
    cur: Captured,
    /// `cur` as RGB when it arrived in another layout and something needs RGB (sized once).
    rgb: Vec<u8>,
    /// Where masks are written: the ring's next slot, or a host buffer.
    masks: MaskTarget,
    last: FrameResult,
    objects: Vec<ObjectInfo>,
    caption: String,
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
    ended: bool,
    meter: StatusMeter,
}

fn selection(mode: SelectMode, threshold: f32) -> Selection {
    match mode {
        SelectMode::Single => Selection::Single,
        SelectMode::Multi => Selection::Multi { threshold },
    }
}

/// How a stream's objects run.
enum Lane {
    /// On the runtime's shared engines, every binding through host memory (any number of objects).
    Host(Box<MultiStream>),
    /// On the stream's own device-resident session (see [`super::device`]).
    #[cfg(feature = "cuda")]
    Device(Box<super::device::DeviceLane>),
}

impl Lane {
    fn times(&self) -> &crate::pipeline::timing::StageTimes {
        match self {
            Lane::Host(m) => m.times(),
            #[cfg(feature = "cuda")]
            Lane::Device(d) => d.times(),
        }
    }

    fn set_selection(&mut self, sel: Selection) {
        match self {
            Lane::Host(m) => m.set_selection(sel),
            #[cfg(feature = "cuda")]
            Lane::Device(d) => d.set_selection(sel),
        }
    }

    /// Id, prompt and caption of every object, ascending id (at command time, never per frame).
    fn objects(&self) -> Vec<(ObjectId, String, String)> {
        match self {
            Lane::Host(m) => m
                .objects()
                .map(|(id, p, c)| (id, p.to_string(), c.to_string()))
                .collect(),
            #[cfg(feature = "cuda")]
            Lane::Device(d) => d
                .objects()
                .map(|(id, p, c)| (id, p.to_string(), c.to_string()))
                .collect(),
        }
    }

    /// Applies an object command (nothing else); ids the command added come back. An `add` gives
    /// its objects `ids` when given (one per prompt).
    fn apply(
        &mut self,
        eng: Option<&mut SharedEngines>,
        command: &Command,
        ids: Option<&[ObjectId]>,
    ) -> crate::Result<Vec<ObjectId>> {
        match (self, eng) {
            (Lane::Host(m), Some(eng)) => crate::pipeline::objects::apply_command_with_ids(
                &mut crate::pipeline::multi::HostObjects {
                    stream: m,
                    engines: eng,
                },
                command,
                ids,
            ),
            #[cfg(feature = "cuda")]
            (Lane::Device(d), _) => d.apply(command, ids),
            (Lane::Host(_), None) => Err(no_host_engines()),
        }
    }

    /// Whether [`Lane::apply`] would take the command; changes no object (prompts are encoded, and
    /// cached, so applying it then costs no text run).
    fn check(
        &mut self,
        eng: Option<&mut SharedEngines>,
        command: &Command,
        ids: Option<&[ObjectId]>,
    ) -> crate::Result<()> {
        match (self, eng) {
            (Lane::Host(m), Some(eng)) => crate::pipeline::objects::check_command(
                &mut crate::pipeline::multi::HostObjects {
                    stream: m,
                    engines: eng,
                },
                command,
                ids,
            ),
            #[cfg(feature = "cuda")]
            (Lane::Device(d), _) => d.check(command, ids),
            (Lane::Host(_), None) => Err(no_host_engines()),
        }
    }

    /// Encodes `prompt` with the text engine this lane uses (cached): whether any stream of the
    /// run would take it (they all have the same text engine).
    fn check_prompt(&mut self, eng: Option<&mut SharedEngines>, prompt: &str) -> crate::Result<()> {
        match (self, eng) {
            // Untimed: the check is for a stream still waiting for its camera, which has no
            // timings yet; the open stream that later encodes it hits the cache.
            (Lane::Host(_), Some(eng)) => eng.encode(prompt).map(drop),
            #[cfg(feature = "cuda")]
            (Lane::Device(d), _) => d.check_prompt(prompt),
            (Lane::Host(_), None) => Err(no_host_engines()),
        }
    }

    /// The objects' ids, and the ids given out with where the automatic search starts.
    fn id_space(&self) -> (Vec<ObjectId>, &IdSpace) {
        match self {
            Lane::Host(m) => (m.objects().map(|o| o.0).collect(), m.id_space()),
            #[cfg(feature = "cuda")]
            Lane::Device(d) => d.id_space(),
        }
    }

    /// Gives the stream `t`'s objects with their ids (a stream joining late); the objects it refuses
    /// come back with the reason.
    fn restore(
        &mut self,
        eng: Option<&mut SharedEngines>,
        t: &JoinTemplate,
    ) -> crate::Result<Vec<(ObjectId, crate::Error)>> {
        match (self, eng) {
            (Lane::Host(m), Some(eng)) => Ok(t.restore(&mut crate::pipeline::multi::HostObjects {
                stream: m,
                engines: eng,
            })),
            #[cfg(feature = "cuda")]
            (Lane::Device(d), _) => Ok(d.restore(t)),
            (Lane::Host(_), None) => Err(no_host_engines()),
        }
    }
}

/// A host stream in a run without host engines: cannot happen (a run is all host or all device).
fn no_host_engines() -> crate::Error {
    crate::Error::Config("this run's engines are on the device path; the host path has none".into())
}

impl LiveStream {
    /// This stream's counters as the `status` command reports them; allocates, so call it at
    /// status rate, not per frame.
    pub fn stats(&self) -> RuntimeStats {
        let mut latency_ms = BTreeMap::new();
        for st in Stage::ALL {
            latency_ms.insert(st.name().to_string(), self.lane.times().get(st).mean_ms());
        }
        RuntimeStats {
            frames_in: self.capture.captured(),
            frames_processed: self.processed,
            frames_dropped: self.capture.dropped(),
            fps: self.meter.fps(),
            latency_ms,
            source: self.description.clone(),
            input: Some(self.input_size()),
        }
    }

    /// Refreshes what the sinks and settings show of the objects (at command time, never per frame).
    fn sync_objects(&mut self) {
        let objects = self.lane.objects();
        self.objects = objects
            .iter()
            .map(|(id, p, _)| ObjectInfo {
                id: *id,
                prompt: p.clone(),
            })
            .collect();
        let captions: Vec<&str> = objects.iter().map(|o| o.2.as_str()).collect();
        self.caption = captions.join("; ");
        let s = &mut self.ctl.settings;
        s.objects = self.objects.clone();
        let prompts: Vec<&str> = self.objects.iter().map(|o| o.prompt.as_str()).collect();
        s.prompt = (!prompts.is_empty()).then(|| prompts.join("; "));
    }

    /// Applies one command (an `add` gives its objects `ids` when given). An object command the
    /// stream refuses (unknown or duplicate id, over the limit, an empty or too long prompt) gets
    /// an error reply and changes nothing.
    fn apply(
        &mut self,
        eng: Option<&mut SharedEngines>,
        req: &Request,
        ids: Option<&[ObjectId]>,
    ) -> Reply {
        let added = match self.lane.apply(eng, &req.command, ids) {
            Ok(a) => a,
            Err(e) => {
                log::warn!("stream {}: {} refused: {e}", self.index, req.command.name());
                return Reply::error(req.id.clone(), e.to_string());
            }
        };
        let stats = self.stats();
        let mut reply = self.ctl.apply(req, &stats);
        self.sync_objects();
        reply.settings = Some(self.ctl.settings.clone());
        reply.added = added;
        reply.stream = Some(self.index);
        let s = &self.ctl.settings;
        self.lane.set_selection(selection(s.mode, s.threshold));
        reply
    }

    /// Takes `t`'s objects (with their ids and next id), selection mode and pause state: a stream
    /// joining late starts where the commands sent to all streams left the others. An object its
    /// text encoder refuses is left out (logged); the stream joins with the rest.
    fn adopt(&mut self, eng: Option<&mut SharedEngines>, t: &JoinTemplate) -> crate::Result<()> {
        for (id, e) in self.lane.restore(eng, t)? {
            log::warn!(
                "stream {}: joins without object {id}, which the others have: {e}",
                self.index
            );
        }
        let from = t.settings();
        let s = &mut self.ctl.settings;
        s.mode = from.mode;
        s.threshold = from.threshold;
        s.paused = from.paused;
        self.sync_objects();
        let s = &mut self.ctl.settings;
        s.prompt_version = u64::from(!s.objects.is_empty());
        self.lane.set_selection(selection(s.mode, s.threshold));
        Ok(())
    }

    fn notify_reply(&mut self, req: &Request, reply: &Reply) {
        for s in &mut self.sinks {
            s.reply(req, reply);
        }
    }

    /// The source delivers no more frames: the stream ends; if its source failed (rather than
    /// reaching its end), the run will end with that error once the other streams are done. A
    /// failure seen once the run is `stopping` (a decoder child that took the same Ctrl-C) ends the
    /// stream as its end would.
    fn source_closed(&mut self, stopping: bool) {
        self.ended = true;
        match self.capture.failure() {
            Some(why) if stopping => {
                log::info!(
                    "stream {} ({}) ended while stopping: {why}",
                    self.index,
                    self.description
                );
            }
            Some(why) => {
                log::error!("stream {} ({}) ended: {why}", self.index, self.description);
                self.fatal.get_or_insert(format!("source failed: {why}"));
            }
            None => log::info!("stream {} ({}) ended", self.index, self.description),
        }
    }

    fn done(&self, max_frames: Option<u64>) -> bool {
        self.ended || max_frames.is_some_and(|m| self.processed >= m)
    }

    /// Checks the frame in `cur` and preprocesses it into the stream's image input.
    fn prepare(&mut self) -> Result<(), Step> {
        let (fw, fh) = self.frame_size;
        if (self.cur.width, self.cur.height) != (fw, fh) {
            self.skipped += 1;
            let skipped = self.skipped;
            if skipped <= 3 || skipped % 100 == 0 {
                log::warn!(
                    "stream {}: frame {} is {}x{}, the engines were built for {fw}x{fh}; skipped ({skipped} so far; restart to adopt the new size)",
                    self.index,
                    self.cur.id,
                    self.cur.width,
                    self.cur.height
                );
            }
            return Err(Step::Skipped);
        }
        let (pre, cur) = (&mut self.pre, &self.cur);
        let r = match &mut self.lane {
            // The capture thread converted the frame to RGB (the host lane accepts nothing else).
            Lane::Host(m) => cur
                .rgb(&mut self.rgb)
                .and_then(|rgb| m.image_mut().and_then(|img| pre.run(rgb, img))),
            // The preprocessing kernel reads the frame where it is copied (page-locked, mapped).
            #[cfg(feature = "cuda")]
            Lane::Device(d) => d.load_frame(cur.layout, &cur.pixels, cur.width, cur.height),
        };
        self.after_error(r.err()).map_or(Ok(()), Err)
    }

    /// Counts and logs a failed frame (`Some(Step::Failed)`; `Some(Step::Ended)` once
    /// `max_failed` frames in a row have failed); `None` when there is no error.
    fn after_error(&mut self, e: Option<crate::Error>) -> Option<Step> {
        let e = e?;
        self.errors += 1;
        self.consecutive_errors += 1;
        let errors = self.errors;
        if errors <= 10 || errors % 1000 == 0 {
            log::error!(
                "stream {} frame {}: {e} ({errors} failed so far)",
                self.index,
                self.cur.id
            );
        }
        if self.max_failed > 0 && self.consecutive_errors >= self.max_failed {
            let why = format!(
                "{} frames in a row failed; the last error: {e}",
                self.consecutive_errors
            );
            log::error!("stream {}: {why}; ending the run", self.index);
            self.fatal = Some(why);
            self.ended = true;
            return Some(Step::Ended);
        }
        Some(Step::Failed)
    }

    /// Runs the frame in `cur` and hands the result to the sinks.
    fn process(&mut self, eng: Option<&mut SharedEngines>) -> Step {
        if let Err(s) = self.prepare() {
            return s;
        }
        let cur = &self.cur;
        let r = match (&mut self.lane, eng) {
            (Lane::Host(multi), Some(eng)) => self
                .masks
                .write(cur.id, cur.timestamp_ns, |mask| multi.step(eng, mask)),
            // The kernel writes the ring slot, which the lane commits.
            #[cfg(feature = "cuda")]
            (Lane::Device(d), _) => match self.masks.ring_mut() {
                Some(ring) => d.step(ring, cur.id, cur.timestamp_ns),
                None => Err(crate::Error::Config(
                    "a device stream writes its masks into a ring; it has none".into(),
                )),
            },
            (Lane::Host(_), None) => Err(no_host_engines()),
        };
        self.deliver(r)
    }

    /// Ends this stream after its step panicked on a lane thread (logged there): its state may be
    /// half-updated, so it takes no more frames; the other streams go on.
    #[cfg(feature = "cuda")]
    fn lost_to_panic(&mut self) -> Step {
        log::error!(
            "stream {} ({}): its frame step panicked; the stream ends, the others go on",
            self.index,
            self.description
        );
        self.errors += 1;
        self.ended = true;
        Step::Failed
    }

    /// Hands a step's result to the sinks (or counts its failure).
    fn deliver(&mut self, r: crate::Result<FrameResult>) -> Step {
        match r {
            Ok(r) => {
                self.last = r;
                self.consecutive_errors = 0;
            }
            Err(e) => return self.after_error(Some(e)).unwrap_or(Step::Failed),
        }
        self.processed += 1;
        // Sinks that draw the frame get it as RGB: converted here only when it came in another
        // layout and such a sink is there.
        let rgb = if self.cur.layout == Layout::Rgb {
            Some(&self.cur.pixels[..])
        } else if self.sinks.iter().any(|s| s.needs_rgb()) {
            match self.cur.rgb(&mut self.rgb) {
                Ok(rgb) => Some(rgb),
                Err(e) => {
                    log::error!("stream {}: frame {}: {e}", self.index, self.cur.id);
                    None
                }
            }
        } else {
            None
        };
        let out = FrameOutput {
            stream: self.index,
            frame_id: self.cur.id,
            timestamp_ns: self.cur.timestamp_ns,
            width: self.cur.width,
            height: self.cur.height,
            rgb,
            mask: self.masks.newest(),
            result: &self.last,
            caption: (!self.caption.is_empty()).then_some(self.caption.as_str()),
            objects: &self.objects,
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
        if let Some(st) = self.meter.poll(self.processed, dropped, self.lane.times()) {
            for s in &mut self.sinks {
                s.status(&st);
            }
        }
        Step::Frame
    }

    /// Index of the stream in its runtime (its `"stream"` in commands).
    pub fn index(&self) -> usize {
        self.index
    }

    /// What the source says it is.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Width and height of the stream's frames (and masks).
    pub fn frame_size(&self) -> (u32, u32) {
        self.frame_size
    }

    /// The model input its frames resize to: the input size of the engine set it runs on.
    pub fn input_size(&self) -> InputSize {
        InputSize {
            width: self.input.0,
            height: self.input.1,
        }
    }

    /// Layout of the last frame taken from the source: RGB, or on a device stream the camera's own
    /// BGR, YUYV, RGBx or BGRx, which its preprocessing kernel decodes.
    pub fn frame_layout(&self) -> Layout {
        self.cur.layout
    }

    /// The last processed frame's reported tracks.
    pub fn last(&self) -> &FrameResult {
        &self.last
    }

    /// The last processed frame's label mask (0 = background, `k + 1` = track table entry `k`):
    /// with a ring, its newest committed slot (empty before the first frame).
    pub fn last_mask(&self) -> &[u8] {
        self.masks.newest()
    }

    /// The stream's shared-memory mask ring, when the run writes one.
    pub fn ring(&self) -> Option<&MaskRing> {
        self.masks.ring()
    }

    /// Frames processed so far.
    pub fn frames_processed(&self) -> u64 {
        self.processed
    }

    /// Frames that failed so far.
    pub fn frames_failed(&self) -> u64 {
        self.errors
    }

    /// True once the source ended (or failed for good).
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Current settings (objects, selection mode, paused).
    pub fn settings(&self) -> &Settings {
        &self.ctl.settings
    }

    /// The objects and their per-frame state on the host path (`None` on the device-resident
    /// path, whose objects are in [`LiveStream::settings`]).
    pub fn objects(&self) -> Option<&MultiStream> {
        match &self.lane {
            Lane::Host(m) => Some(m),
            #[cfg(feature = "cuda")]
            Lane::Device(_) => None,
        }
    }

    /// The objects' captions joined by `"; "` (empty without objects).
    pub fn caption(&self) -> &str {
        &self.caption
    }
}

/// The live runtime: frames from one or several sources through shared engines into sinks,
/// steered by commands. Streams whose frames resize to the same input size share an engine set;
/// cameras of other aspect ratios run on a set of their own size (the text engine shared by all).
///
/// ```no_run
/// use referdino::pipeline::live::{Runtime, RuntimeConfig};
/// let mut c = RuntimeConfig::new("synthetic:118x70@30");
/// c.prompt = Some("the moving square; the white block".into());
/// c.short_side = 70;
/// c.window = Some(4);
/// c.max_frames = Some(10);
/// let summary = Runtime::new(c)?.run()?;
/// println!("{}", summary.text());
/// # Ok::<(), anyhow::Error>(())
/// ```
pub struct Runtime {
    config: RuntimeConfig,
    hub: CommandHub,
    stop: Arc<AtomicBool>,
    /// The engine sets streams run on.
    sets: Sets,
    /// The open streams, ascending index.
    streams: Vec<LiveStream>,
    /// Streams whose source has not opened yet (or opened and waits for the engines of its size).
    joining: Vec<Joining>,
    /// Streams whose source failed for good before it opened (index, why).
    gone: Vec<(usize, String)>,
    /// How a joining stream is built.
    plan: StreamPlan,
    /// What a joining stream starts with.
    join: JoinTemplate,
    next: usize,
    last_stream: usize,
    /// Commands applied in a row since the last frame turn, and since when (`None` after a frame
    /// turn or while paused).
    burst: Option<(u32, Instant)>,
    /// Steps the device streams that have a frame ready side by side ([`Runtime::device_turn`]).
    #[cfg(feature = "cuda")]
    turn: DeviceTurn,
    started: Instant,
    ended: bool,
    /// Exports the engine sets of new input sizes in the background, for streams that joined with
    /// them (they wait in `joining`, parked with their opened source); `None` when the run cannot
    /// export (engine directories, the caller's engines). Last, so that dropping the runtime tears
    /// the streams down first and then stops and joins the worker ([`Exporter`]'s drop).
    exporter: Option<Exporter>,
}

/// Appends to `picks`, in turn order from `from`, every stream not in it yet that is still going and
/// has a new frame ready now (taken into its `cur`); notes the sources found closed.
#[cfg(feature = "cuda")]
fn gather_fresh(
    streams: &mut [LiveStream],
    picks: &mut Vec<usize>,
    from: usize,
    max: Option<u64>,
    stopping: bool,
) {
    let n = streams.len();
    for off in 0..n {
        let i = (from + off) % n;
        let st = &mut streams[i];
        if st.done(max) || st.ctl.settings.paused || picks.contains(&i) {
            continue;
        }
        match st.capture.take(&mut st.cur, Duration::ZERO) {
            Take::Fresh => picks.push(i),
            Take::Timeout => {}
            Take::Closed => st.source_closed(stopping),
        }
    }
}

/// A device turn's threads and its reused lists (sized by the most streams ever stepped at once).
#[cfg(feature = "cuda")]
struct DeviceTurn {
    lanes: super::lanes::LaneThreads,
    /// The streams stepped this turn, in turn order.
    picks: Vec<usize>,
    /// What each one's step did (`None`: it panicked).
    steps: Vec<Option<Step>>,
}

fn validate(c: &RuntimeConfig) -> anyhow::Result<()> {
    c.check_ranges()?;
    if c.all_sources()
        .iter()
        .filter(|s| crate::camera::reads_stdin(s))
        .count()
        > 1
    {
        bail!("only one source can read its frames from stdin (raw:WxH:FORMAT:-)");
    }
    if let Some(t) = c.multi {
        if !(0.0..=1.0).contains(&t) {
            bail!("--multi {t}: the threshold is a score in [0, 1]");
        }
    }
    Ok(())
}

/// Opens the configured sources. A camera that cannot be opened now (still enumerating,
/// unplugged) is re-opened in the background and joins later, as long as another source opened;
/// any other source that fails fails the start-up.
fn open_sources(c: &RuntimeConfig) -> anyhow::Result<Vec<Start>> {
    let decode = match &c.decoder_worker {
        Some(w) => crate::camera::VideoDecode::Isolated(crate::camera::IsolatedDecode::new(w)),
        None => crate::camera::VideoDecode::InProcess,
    };
    let specs = c.all_sources();
    let mut starts = Vec::with_capacity(specs.len());
    let mut first_error = None;
    // All at once: a camera slow to open (a GStreamer pipeline negotiating an RTSP stream, one that
    // hangs until its open timeout) delays the start by its own time only, not the others' too.
    let opened: Vec<anyhow::Result<OpenedSource>> = std::thread::scope(|scope| {
        let handles: Vec<_> = specs
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let decode = &decode;
                std::thread::Builder::new()
                    .name(format!("open-{i}"))
                    .spawn_scoped(scope, move || {
                        OpenedSource::open_with(spec, c.fps, c.realtime, decode)
                    })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h {
                Ok(h) => h
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("opening the source panicked"))),
                Err(e) => Err(anyhow::anyhow!("cannot start a thread to open it: {e}")),
            })
            .collect()
    });
    for ((i, spec), opened) in specs.iter().enumerate().zip(opened) {
        match opened {
            Ok(src) => starts.push(Start::Opened(src)),
            Err(e) if specs.len() > 1 && may_appear_later(spec) => {
                log::warn!("stream {i}: {e:#}");
                first_error.get_or_insert(e);
                let j = Joining::reopen(
                    i,
                    spec,
                    (c.fps, c.realtime),
                    decode.clone(),
                    Default::default(),
                )?;
                starts.push(Start::Waiting(j));
            }
            Err(e) => return Err(e),
        }
    }
    match (first_error, first_opened(&starts)) {
        (Some(e), None) => Err(e.context("no source could be opened")),
        _ => Ok(starts),
    }
}

/// The first source that opened (a run starts with at least one).
fn first_opened(starts: &[Start]) -> Option<&OpenedSource> {
    starts.iter().find_map(|s| match s {
        Start::Opened(o) => Some(o),
        Start::Waiting(_) | Start::Gone(_) => None,
    })
}

/// A device stream's lane: its engine set, its ring registered with CUDA, its objects (one per
/// prompt); `emulated`: under the device session's host emulation.
#[cfg(feature = "cuda")]
fn device_lane(
    set: crate::pipeline::multi::MultiEngineSet,
    masks: &mut MaskTarget,
    cfg: StreamConfig,
    out_size: (usize, usize),
    (max_objects, emulated): (usize, bool),
    prompts: &[&str],
) -> anyhow::Result<Lane> {
    let ring = masks
        .ring_mut()
        .context("a device stream writes its masks into a ring")?;
    let mut lane = super::device::DeviceLane::new(set, cfg, out_size, max_objects, ring, emulated)?;
    if !prompts.is_empty() {
        lane.apply(
            &Command::Prompt {
                prompt: prompts.join("; "),
            },
            None,
        )?;
    }
    Ok(Lane::Device(Box::new(lane)))
}

/// Without the `cuda` feature every run has host engines, so this is never reached.
#[cfg(not(feature = "cuda"))]
fn device_lane(
    set: std::convert::Infallible,
    _masks: &mut MaskTarget,
    _cfg: StreamConfig,
    _out_size: (usize, usize),
    _objects: (usize, bool),
    _prompts: &[&str],
) -> anyhow::Result<Lane> {
    match set {}
}

/// What building a stream needs besides its source; kept for streams that join later.
#[derive(Clone, Copy)]
struct StreamPlan {
    /// This runtime among the process's (names the private rings of device streams, so that two
    /// runtimes of one process never take each other's).
    run: u64,
    /// Streams run on the device-resident path (each on a set of its own, taken from the pool).
    device: bool,
    mcfg: MultiConfig,
    scfg: StreamConfig,
    ring_access: crate::access::Access,
    emulated: bool,
    /// Configured streams (open and waiting).
    streams: usize,
    tty: bool,
}

/// A device stream's engine set (device-resident path; nothing without the `cuda` feature).
#[cfg(feature = "cuda")]
type DeviceSet = MultiEngineSet;
/// A device stream's engine set (device-resident path; nothing without the `cuda` feature).
#[cfg(not(feature = "cuda"))]
type DeviceSet = std::convert::Infallible;
/// The device path's pool of engine sets (always empty without the `cuda` feature).
type DevicePool = super::pool::SetPool<DeviceSet>;

/// The host path's engines from whole sets: the first set's text engine serves all (the others'
/// are dropped).
fn host_engines(sets: Vec<MultiEngineSet>) -> anyhow::Result<RunEngines> {
    let mut text = None;
    let mut out = Vec::with_capacity(sets.len());
    for e in sets {
        let (t, g) = e.split_text();
        text.get_or_insert(t);
        out.push(g);
    }
    Ok(RunEngines::Host {
        text: text.context("no engine set to run the streams on")?,
        sets: out,
    })
}

/// A configured source at start-up: open, still to come, or failed for good (why).
enum Start {
    Opened(OpenedSource),
    Waiting(Joining),
    Gone(String),
}

/// The engine sets streams run on.
struct Sets {
    /// Host path: one bound set per input size, the text engine shared; empty on the device path.
    host: Vec<SharedEngines>,
    /// Device path: the sets streams take, one each of its input size (given ready, or made when
    /// taken).
    device: DevicePool,
    /// Where the set of another input size comes from (a camera joining later with it).
    more: MoreGeometries,
}

impl Sets {
    /// The host set of input (width, height) `input`.
    fn host_index(&self, (w, h): (u32, u32)) -> Option<usize> {
        self.host.iter().position(|e| {
            let d = e.dims();
            (d.width, d.height) == (w as usize, h as usize)
        })
    }

    /// Takes (or makes) a device set for stream `s` from the pool: an error naming the sizes there
    /// are when none is of its size, or saying why making one failed.
    fn take_device(&mut self, s: &SourceInput, short_side: u32) -> anyhow::Result<DeviceSet> {
        match self.device.take(s.input) {
            Some(set) => set.with_context(|| {
                format!(
                    "source {} ({}): cannot make an engine set of its {}x{} input (execution \
                     contexts of the plans, on a CUDA stream of its own)",
                    s.stream, s.description, s.input.0, s.input.1
                )
            }),
            None => Err(self.none_for(s, short_side, true)),
        }
    }

    /// The input sizes the sets take, each with where it came from when known (a directory).
    fn available(&self) -> Vec<((u32, u32), String)> {
        let mut sizes: Vec<(u32, u32)> = Vec::new();
        let all = self.host.iter().map(|e| {
            let d = e.dims();
            (d.width as u32, d.height as u32)
        });
        for size in all.chain(self.device.sizes()) {
            if !sizes.contains(&size) {
                sizes.push(size);
            }
        }
        let from = |size: (u32, u32)| match &self.more {
            MoreGeometries::Fixed { sizes, .. } => sizes
                .iter()
                .find(|(s, _)| *s == size)
                .map(|(_, from)| from.clone())
                .unwrap_or_default(),
            MoreGeometries::Export(_) => String::new(),
        };
        sizes.into_iter().map(|s| (s, from(s))).collect()
    }

    /// The error for a stream of input size `s.input` no set takes.
    fn none_for(&self, s: &SourceInput, short_side: u32, device: bool) -> anyhow::Error {
        let what = match (&self.more, device) {
            (_, true) => "the device engine sets left (one per stream)",
            (MoreGeometries::Fixed { what, .. }, false) => what.as_str(),
            (MoreGeometries::Export(_), false) => "the engines exported",
        };
        anyhow::anyhow!(no_set_for(s, short_side, what, &self.available()))
    }
}

/// `src`'s frame size and the model input its frames resize to, refused beyond the input limits
/// ([`model_input`]) with the source named.
fn source_input(
    c: &RuntimeConfig,
    index: usize,
    src: &OpenedSource,
) -> anyhow::Result<SourceInput> {
    let frame = src.frame_size();
    let input = model_input(c.short_side, frame)
        .with_context(|| format!("source {index} ({})", src.description))?;
    Ok(SourceInput {
        stream: index,
        description: src.description.clone(),
        frame,
        input,
    })
}

/// The frame and input sizes of the sources open at start-up.
fn opened_inputs(c: &RuntimeConfig, starts: &[Start]) -> anyhow::Result<Vec<SourceInput>> {
    starts
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match s {
            Start::Opened(src) => Some(source_input(c, i, src)),
            Start::Waiting(_) | Start::Gone(_) => None,
        })
        .collect()
}

/// Builds stream `index` on its opened source `src`, whose frames resize to `si.input`: the engine
/// set of that size (the host set, or a device set taken from the pool; none is an error naming the
/// sizes there are), preprocessing for its frame size, its mask target (ring), its objects
/// (`prompt`), its sinks, and starts its capture thread.
fn build_stream(
    c: &RuntimeConfig,
    plan: &StreamPlan,
    sets: &mut Sets,
    (src, si): (OpenedSource, SourceInput),
    ring: Option<String>,
    prompt: Option<&str>,
) -> anyhow::Result<LiveStream> {
    let index = si.stream;
    let mcfg = plan.mcfg;
    let (fw, fh) = src.frame_size();
    let short = c.short_side.max(1);
    // Found before the preprocessor is built: a frame of another stream may be far beyond what
    // the engines (already sized) take, and its preprocessing buffers with it.
    let geo = match plan.device {
        true => {
            if !sets.device.takes(si.input) {
                return Err(sets.none_for(&si, c.short_side, true));
            }
            0
        }
        false => match sets.host_index(si.input) {
            Some(g) => g,
            None => return Err(sets.none_for(&si, c.short_side, false)),
        },
    };
    let pre = Preprocessor::try_new(fw, fh, short)
        .with_context(|| format!("source {index} ({})", src.description))?;
    log::info!(
        "stream {index}: source {}: {fw}x{fh}, model input {}x{}",
        src.description,
        si.input.0,
        si.input.1
    );
    let prompts: Vec<&str> = prompt.map(split_prompts).into_iter().flatten().collect();
    let mut ctl = Controller::default();
    if let Some(t) = c.multi {
        ctl.settings.mode = SelectMode::Multi;
        ctl.settings.threshold = t;
    }
    if !prompts.is_empty() {
        ctl.settings.prompt_version = 1;
    }
    let ring_opts = |keep: bool| RingOptions {
        access: plan.ring_access,
        keep,
    };
    let mut masks = match (&ring, plan.device) {
        (Some(name), _) => {
            MaskTarget::create_ring(name, fw, fh, c.ring_slots, &ring_opts(c.keep_ring))?
        }
        (None, false) => MaskTarget::host(fw, fh),
        // The device path writes masks into a ring (registered with CUDA); without --ring the
        // stream gets a private one, removed at exit.
        (None, true) => MaskTarget::create_ring(
            &format!("referdino-{}-{}-{index}", std::process::id(), plan.run),
            fw,
            fh,
            c.ring_slots,
            &ring_opts(false),
        )?,
    };
    let prompt_error = || format!("--prompt {:?}", prompt.unwrap_or(""));
    let lane = match plan.device {
        false => {
            let eng = sets
                .host
                .get_mut(geo)
                .context("a host stream without its engine set")?;
            let mut multi = MultiStream::new(eng, mcfg, (fh as usize, fw as usize))?;
            multi
                .set_prompts(eng, &prompts)
                .with_context(prompt_error)?;
            Lane::Host(Box::new(multi))
        }
        true => device_lane(
            sets.take_device(&si, c.short_side)?,
            &mut masks,
            StreamConfig {
                selection: mcfg.selection,
                keep_clip: c.finalize,
                ..plan.scfg
            },
            (fh as usize, fw as usize),
            (c.max_objects, plan.emulated),
            &prompts,
        )
        .with_context(prompt_error)?,
    };
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    if c.collect_masks {
        sinks.push(Box::<MaskCollector>::default());
    }
    if let Some(d) = &c.save_dir {
        let dir = if plan.streams > 1 {
            d.join(format!("stream-{index}"))
        } else {
            d.clone()
        };
        sinks.push(Box::new(OverlaySink::create(dir, c.fps)?));
    }
    let lockstep = src.is_file && !c.realtime;
    let len = src.len;
    let description = src.description.clone();
    // A device lane's preprocessing kernel reads BGR, YUYV, RGBx and BGRx itself: the capture
    // thread hands those over as the camera delivers them (no conversion; a third fewer bytes for
    // YUYV; a Jetson CSI camera's BGRx as nvvidconv wrote it). The host preprocessor reads RGB,
    // converted on the capture thread.
    let accepted = match &lane {
        Lane::Host(_) => LayoutSet::RGB,
        #[cfg(feature = "cuda")]
        Lane::Device(_) => LayoutSet::of(&[Layout::Bgr, Layout::Yuyv, Layout::Rgbx, Layout::Bgrx]),
    };
    let capture = src.start_accepting(lockstep, accepted)?;
    if c.progress {
        sinks.push(Box::new(if plan.streams == 1 {
            StderrStatus::new(len, c.max_frames)
        } else {
            StderrStatus::for_stream(index)
        }));
    }
    let mut st = LiveStream {
        index,
        description,
        frame_size: (fw, fh),
        input: si.input,
        geo,
        capture,
        pre,
        lane,
        ctl,
        sinks,
        cur: Captured {
            pixels: Vec::with_capacity(fw as usize * fh as usize * 3),
            ..Default::default()
        },
        rgb: Vec::new(),
        masks,
        last: FrameResult::default(),
        objects: Vec::new(),
        caption: String::new(),
        processed: 0,
        errors: 0,
        consecutive_errors: 0,
        max_failed: c.max_failed_frames,
        fatal: None,
        sink_errors: 0,
        skipped: 0,
        ended: false,
        meter: StatusMeter::new(status_interval(plan.tty)),
    };
    st.sync_objects();
    Ok(st)
}

/// The starts of the caller's sources: their first frames read in parallel until one delivers
/// (that one opened; the others wait for theirs, or, ended before their first frame, are gone);
/// an error when every one ends first.
fn caller_starts(sources: Vec<Box<dyn FrameSource>>) -> anyhow::Result<Vec<Start>> {
    if sources.is_empty() {
        bail!("no source");
    }
    let waiting = sources
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let label = s.describe();
            Joining::first_frame(i, &label, s)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Sources that ended before their first frame stay in their place (indices are the
    // caller's); they never join. A source's failure is logged once another source has opened (the
    // run goes on without it); when every source fails, the error goes to the caller alone, who
    // knows whether it is one (a node stopped before its first image is not).
    let mut failed: Vec<Option<anyhow::Error>> = waiting.iter().map(|_| None).collect();
    let mut first = None;
    while first.is_none() {
        if failed.iter().all(Option::is_some) {
            return Err(failed
                .into_iter()
                .flatten()
                .next()
                .unwrap_or_else(|| anyhow::anyhow!("no source"))
                .context("no source delivered a first frame"));
        }
        for (i, j) in waiting.iter().enumerate() {
            if failed[i].is_some() {
                continue;
            }
            match j.wait(Duration::from_millis(20)) {
                Polled::Waiting => {}
                Polled::Opened(src) => {
                    first = Some((i, src));
                    break;
                }
                Polled::Failed(e) => failed[i] = Some(e),
            }
        }
    }
    for (i, e) in failed.iter().enumerate() {
        if let Some(e) = e {
            log::error!("stream {i} ({}): {e:#}", waiting[i].label);
        }
    }
    let (k, src) = first.context("no source")?;
    let mut src = Some(src);
    let starts: Vec<Start> = waiting
        .into_iter()
        .enumerate()
        .map(|(i, j)| match src.take_if(|_| i == k) {
            Some(s) => Start::Opened(s),
            None if failed[i].is_some() => {
                Start::Gone(format!("{} ended before its first frame", j.label))
            }
            None => Start::Waiting(j),
        })
        .collect();
    Ok(starts)
}

impl Runtime {
    /// Opens the sources, loads the engines (exported from the weights at every input size among
    /// the sources, or from the engine directories, one per input size), creates the sinks the
    /// configuration names and starts capturing.
    pub fn new(config: RuntimeConfig) -> anyhow::Result<Self> {
        let backend = backend_kind(&config)?;
        validate(&config)?;
        let starts = open_sources(&config)?;
        first_opened(&starts).context("no source")?;
        let inputs = opened_inputs(&config, &starts)?;
        let loaded = load_engines(&config, backend, &inputs, starts.len())?;
        Self::assemble(config, starts, loaded.engines, loaded.stream, loaded.more)
    }

    /// Like [`Runtime::new`] with one source the caller opened (a ROS 2 image topic) instead of the
    /// configuration's sources (then only labels): its first frame, read here (waiting as long as
    /// the source does), sizes the engines; later frames are taken latest-wins.
    pub fn with_source(
        config: RuntimeConfig,
        source: Box<dyn FrameSource>,
    ) -> anyhow::Result<Self> {
        Self::with_caller_sources(config, vec![source])
    }

    /// [`Runtime::with_source`] for several sources the caller opened (a ROS 2 node's cameras),
    /// stream `i` on `sources[i]`. Their first frames are read in parallel: the first source to
    /// deliver one sizes the engines and the run starts; each other stream joins when its first
    /// frame arrives (one of another input size once its engines are exported in the background, or
    /// with engine directories when one takes that size). A
    /// source that ends before its first frame never opens ([`Runtime::gone`]); the start-up fails
    /// only when every one does. A source still waiting for its first frame keeps its thread until
    /// it delivers or ends: give it a way to stop (the ROS 2 image source watches the node's stop
    /// flag).
    pub fn with_caller_sources(
        config: RuntimeConfig,
        sources: Vec<Box<dyn FrameSource>>,
    ) -> anyhow::Result<Self> {
        let backend = backend_kind(&config)?;
        validate(&config)?;
        let starts = caller_starts(sources)?;
        let inputs = opened_inputs(&config, &starts)?;
        let loaded = load_engines(&config, backend, &inputs, starts.len())?;
        Self::assemble(config, starts, loaded.engines, loaded.stream, loaded.more)
    }

    /// Like [`Runtime::new`] with engines the caller loaded (they must take the preprocessed frame
    /// size: a source of another input size is refused, there being no weights to export its
    /// engines from): an [`crate::pipeline::session::EngineSet`] (its frame engine runs once per
    /// object) or a [`MultiEngineSet`]. `stream` gives the model's stream settings
    /// ([`StreamConfig::for_model`]). The engine fields of the configuration are ignored.
    pub fn with_engines(
        config: RuntimeConfig,
        engines: impl Into<MultiEngineSet>,
        stream: StreamConfig,
    ) -> anyhow::Result<Self> {
        Self::with_engine_sets(config, vec![engines.into()], stream)
    }

    /// [`Runtime::with_engines`] with one engine set per input size (cameras of different aspect
    /// ratios), each stream on the set its frames resize to: the first set's text engine serves
    /// all (the others' are dropped), so every set must come from the same model and text length.
    /// Two sets of one size are refused.
    pub fn with_engine_sets(
        config: RuntimeConfig,
        sets: Vec<MultiEngineSet>,
        stream: StreamConfig,
    ) -> anyhow::Result<Self> {
        validate(&config)?;
        let starts = open_sources(&config)?;
        Self::assemble(
            config,
            starts,
            host_engines(sets)?,
            stream,
            MoreGeometries::given(),
        )
    }

    /// The device-resident path under the device session's host emulation: host engine sets for the
    /// streams to take (each stream, when it opens, the first set left of the input size its frames
    /// resize to, or one made then by the pool's maker of that size; a stream with none is refused),
    /// each stream a device lane (its own session, masks written into its ring slot) whose device
    /// memory is host memory and whose kernels are their CPU counterparts. For testing the runtime's
    /// device lanes on machines without a GPU; `--backend tensorrt` runs the real thing.
    #[cfg(feature = "cuda")]
    pub fn emulating_the_device(
        config: RuntimeConfig,
        sets: impl Into<DeviceSets>,
        stream: StreamConfig,
    ) -> anyhow::Result<Self> {
        validate(&config)?;
        let starts = open_sources(&config)?;
        Self::emulated(config, starts, sets.into(), stream)
    }

    /// [`Runtime::emulating_the_device`] on sources the caller opened, as
    /// [`Runtime::with_caller_sources`] takes them (a source still waiting for its first frame
    /// joins when it delivers one, taking its set then).
    #[cfg(feature = "cuda")]
    pub fn emulating_the_device_on(
        config: RuntimeConfig,
        sets: impl Into<DeviceSets>,
        stream: StreamConfig,
        sources: Vec<Box<dyn FrameSource>>,
    ) -> anyhow::Result<Self> {
        validate(&config)?;
        let starts = caller_starts(sources)?;
        Self::emulated(config, starts, sets.into(), stream)
    }

    #[cfg(feature = "cuda")]
    fn emulated(
        config: RuntimeConfig,
        starts: Vec<Start>,
        sets: DeviceSets,
        stream: StreamConfig,
    ) -> anyhow::Result<Self> {
        let engines = RunEngines::Device {
            sets,
            emulated: true,
        };
        let more = MoreGeometries::Fixed {
            what: "the device engine sets given".into(),
            sizes: Vec::new(),
        };
        Self::assemble(config, starts, engines, stream, more)
    }

    /// The device engine sets made so far by the pool's makers (at most one per stream that opened
    /// on the device path: none for a camera still to come; ready-made sets are not counted).
    pub fn device_sets_made(&self) -> usize {
        self.sets.device.made()
    }

    /// Like [`Runtime::with_engines`] on sources the caller opened ([`OpenedSource::from_source`]),
    /// stream `i` on `sources[i]`; the configuration's source fields are ignored.
    pub fn with_sources(
        config: RuntimeConfig,
        engines: impl Into<MultiEngineSet>,
        stream: StreamConfig,
        sources: Vec<OpenedSource>,
    ) -> anyhow::Result<Self> {
        validate(&config)?;
        if sources.is_empty() {
            bail!("no source");
        }
        let starts = sources.into_iter().map(Start::Opened).collect();
        let set: MultiEngineSet = engines.into();
        Self::assemble(config, starts, set.into(), stream, MoreGeometries::given())
    }

    fn assemble(
        c: RuntimeConfig,
        starts: Vec<Start>,
        engines: RunEngines,
        scfg: StreamConfig,
        more: MoreGeometries,
    ) -> anyhow::Result<Self> {
        let n = starts.len();
        let (mut sets, emulated) = match engines {
            RunEngines::Host { text, sets } => {
                let text = SharedText::new(text, scfg.max_text_len)?;
                let mut host: Vec<SharedEngines> = Vec::with_capacity(sets.len());
                for g in sets {
                    let e = SharedEngines::with_text(text.clone(), g)?;
                    let d = e.dims();
                    if host.iter().any(|h| {
                        let hd = h.dims();
                        (hd.width, hd.height) == (d.width, d.height)
                    }) {
                        bail!(
                            "two engine sets take {}x{} images: give one per input size",
                            d.width,
                            d.height
                        );
                    }
                    host.push(e);
                }
                if host.is_empty() {
                    bail!("no engine set to run the streams on");
                }
                let sets = Sets {
                    host,
                    device: DevicePool::default(),
                    more,
                };
                (sets, false)
            }
            #[cfg(feature = "cuda")]
            RunEngines::Device { sets, emulated } => {
                if sets.is_empty() {
                    bail!("no device engine set to run the streams on");
                }
                let sets = Sets {
                    host: Vec::new(),
                    device: sets,
                    more,
                };
                (sets, emulated)
            }
        };
        let rings = c.ring_names(n)?;
        let (ring_access, socket_access) = c.access()?;
        // Runtimes made in this process so far.
        static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let plan = StreamPlan {
            run: RUNS.fetch_add(1, Ordering::Relaxed),
            device: sets.host.is_empty(),
            mcfg: MultiConfig {
                tracking_alpha: scfg.tracking_alpha,
                selection: match c.multi {
                    Some(threshold) => Selection::Multi { threshold },
                    None => Selection::Single,
                },
                max_objects: c.max_objects,
                keep_clip: c.finalize,
            },
            scfg,
            ring_access,
            emulated,
            streams: n,
            tty: stderr_is_tty(c.progress) && n == 1,
        };
        let mut streams = Vec::with_capacity(n);
        let mut joining = Vec::new();
        let mut gone = Vec::new();
        for (index, (start, ring)) in starts.into_iter().zip(rings).enumerate() {
            match start {
                Start::Opened(src) => {
                    let si = source_input(&c, index, &src)?;
                    streams.push(build_stream(
                        &c,
                        &plan,
                        &mut sets,
                        (src, si),
                        ring,
                        c.prompt.as_deref(),
                    )?)
                }
                Start::Gone(why) => gone.push((index, why)),
                Start::Waiting(mut j) => {
                    j.index = index;
                    log::warn!(
                        "stream {index}: {} is not there yet; the run starts without it, and it joins when it opens",
                        j.label
                    );
                    j.ring = ring;
                    joining.push(j);
                }
            }
        }
        let mut hub = CommandHub::new(crate::limits::COMMAND_QUEUE, Limits::default());
        // A `raw:…:-` source reads its frames from stdin, so commands cannot.
        let stdin_frames = c
            .all_sources()
            .iter()
            .any(|s| crate::camera::reads_stdin(s));
        if c.stdin_commands && stdin_frames {
            log::info!("stdin carries frames (a raw:…:- source): commands only on the socket");
        } else if c.stdin_commands {
            hub.spawn_stdin();
        }
        if let Some(p) = &c.socket {
            hub.listen_unix_with(p, crate::limits::MAX_CONNECTIONS, &socket_access)?;
        }
        let exporter = match &sets.more {
            MoreGeometries::Export(backends) => Some(Exporter::new(&c, backends)),
            MoreGeometries::Fixed { .. } => None,
        };
        Ok(Runtime {
            join: JoinTemplate::new(c.prompt.as_deref(), c.max_objects, c.multi)
                .with_context(|| format!("--prompt {:?}", c.prompt.as_deref().unwrap_or("")))?,
            config: c,
            hub,
            stop: Arc::new(AtomicBool::new(false)),
            sets,
            streams,
            joining,
            gone,
            plan,
            next: 0,
            last_stream: 0,
            burst: None,
            #[cfg(feature = "cuda")]
            turn: DeviceTurn {
                lanes: super::lanes::LaneThreads::new("referdino-lane"),
                picks: Vec::new(),
                steps: Vec::new(),
            },
            started: Instant::now(),
            ended: false,
            exporter,
        })
    }

    /// Admits the streams whose source opened since the last step (between two frames; nothing
    /// to do, and no allocation, while none is waiting). One whose frames resize to an input size
    /// the run has no engines for waits, opened, while they are exported in the background (when
    /// the run exports its engines from the weights); otherwise it cannot join, and says why.
    fn admit_joining(&mut self) {
        if self.exporter.as_ref().is_some_and(Exporter::busy) {
            self.collect_exports();
        }
        let mut k = 0;
        while k < self.joining.len() {
            // A parked stream whose engines are ready, or still being exported.
            let ready = self.joining[k]
                .parked
                .as_deref()
                .map(|(_, si)| self.sets.host_index(si.input).is_some());
            let (src, si) = match ready {
                Some(false) => {
                    k += 1;
                    continue;
                }
                Some(true) => match self.joining[k].parked.take() {
                    Some(p) => *p,
                    // Not reached (`ready` saw it parked); moving on keeps the loop finite.
                    None => {
                        k += 1;
                        continue;
                    }
                },
                None => match self.joining[k].poll() {
                    Polled::Waiting => {
                        k += 1;
                        continue;
                    }
                    Polled::Opened(src) => {
                        match source_input(&self.config, self.joining[k].index, &src) {
                            Ok(si) => (src, si),
                            Err(e) => {
                                self.cannot_join(k, e);
                                continue;
                            }
                        }
                    }
                    Polled::Failed(e) => {
                        let j = self.joining.remove(k);
                        log::error!("stream {} ({}): {e:#}; it will not join", j.index, j.label);
                        self.gone.push((j.index, format!("{}: {e:#}", j.label)));
                        continue;
                    }
                },
            };
            if !self.plan.device && self.sets.host_index(si.input).is_none() {
                match self.export_for(&si) {
                    Ok(()) => {
                        self.joining[k].parked = Some(Box::new((src, si)));
                        k += 1;
                    }
                    Err(e) => self.cannot_join(k, e),
                }
                continue;
            }
            let mut j = self.joining.remove(k);
            let geo = self.sets.host_index(si.input).unwrap_or(0);
            let built = build_stream(
                &self.config,
                &self.plan,
                &mut self.sets,
                (src, si),
                j.ring.take(),
                None,
            )
            .and_then(|mut st| {
                st.adopt(
                    self.sets.host.get_mut(geo),
                    j.template.as_ref().unwrap_or(&self.join),
                )?;
                Ok(st)
            });
            match built {
                Ok(mut st) => {
                    st.sinks.append(&mut j.sinks);
                    log::info!(
                        "stream {} ({}) joined the run after {:.1} s",
                        j.index,
                        st.description,
                        j.since.elapsed().as_secs_f64()
                    );
                    let at = self.streams.partition_point(|s| s.index < st.index);
                    self.streams.insert(at, st);
                }
                Err(e) => {
                    log::error!("stream {} ({}) cannot join: {e:#}", j.index, j.label);
                    self.gone.push((j.index, format!("{}: {e:#}", j.label)));
                }
            }
        }
    }

    /// Joining stream `k` cannot join (`why`): it leaves the run, which goes on without it.
    fn cannot_join(&mut self, k: usize, why: anyhow::Error) {
        let j = self.joining.remove(k);
        log::error!("stream {} ({}) cannot join: {why:#}", j.index, j.label);
        self.gone.push((j.index, format!("{}: {why:#}", j.label)));
    }

    /// Queues the export of the engines of `si.input` for the run's export worker (unless already
    /// queued or under way), within [`crate::limits::MAX_GEOMETRIES`] sizes, those queued
    /// included; an error when the run cannot make them (its engines came from directories or the
    /// caller, or the export of that size failed earlier in this run).
    fn export_for(&mut self, si: &SourceInput) -> anyhow::Result<()> {
        let Some(ex) = self.exporter.as_mut() else {
            return Err(self.sets.none_for(si, self.config.short_side, false));
        };
        if ex.is_pending(si.input) {
            return Ok(());
        }
        let ((fw, fh), (iw, ih)) = (si.frame, si.input);
        if let Some(why) = ex.failed(si.input) {
            bail!(
                "source {} ({}): {fw}x{fh} frames resize to {iw}x{ih}, an input size whose engine \
                 export failed earlier in this run (not tried again): {why}",
                si.stream,
                si.description
            );
        }
        let ahead = ex.pending().count();
        if self.sets.host.len() + ahead >= crate::limits::MAX_GEOMETRIES {
            let have: Vec<String> = self
                .sets
                .available()
                .iter()
                .map(|((w, h), _)| format!("{w}x{h}"))
                .chain(ex.pending().map(|(w, h)| format!("{w}x{h}")))
                .collect();
            bail!(
                "source {} ({}): {fw}x{fh} frames resize to {iw}x{ih} (shorter side {}), one input \
                 size more than the {} engine sets a run holds (it has {})",
                si.stream,
                si.description,
                self.config.short_side,
                crate::limits::MAX_GEOMETRIES,
                have.join(", ")
            );
        }
        ex.queue(si.clone())?;
        let queued = match ahead {
            0 => String::new(),
            n => format!(" (after the {n} size(s) queued before it)"),
        };
        log::info!(
            "stream {} ({}): {fw}x{fh} frames resize to {iw}x{ih}, an input size without engines \
             yet: exporting them in the background{queued}; the other streams go on meanwhile",
            si.stream,
            si.description
        );
        Ok(())
    }

    /// Binds the engine sets whose background export has finished beside the run's text engine;
    /// the streams waiting for a set that could not be made leave the run with the reason.
    fn collect_exports(&mut self) {
        let Some(ex) = self.exporter.as_mut() else {
            return;
        };
        while let Some(done) = ex.poll() {
            let (w, h) = done.input;
            let bound = done.engines.map_err(anyhow::Error::msg).and_then(|g| {
                let text = self
                    .sets
                    .host
                    .first()
                    .context("the run has no text engine to share")?
                    .text()
                    .clone();
                Ok(SharedEngines::with_text(text, g)?)
            });
            match bound {
                Ok(e) => {
                    log::info!(
                        "engines for {w}x{h} ready after {:.1} s",
                        done.since.elapsed().as_secs_f64()
                    );
                    self.sets.host.push(e);
                }
                Err(e) => {
                    let why = format!("its {w}x{h} engines could not be made: {e:#}");
                    let mut k = 0;
                    while k < self.joining.len() {
                        match self.joining[k].parked.as_deref() {
                            Some((_, si)) if si.input == done.input => {
                                let j = self.joining.remove(k);
                                log::error!("stream {} ({}) cannot join: {why}", j.index, j.label);
                                self.gone.push((j.index, format!("{}: {why}", j.label)));
                            }
                            _ => k += 1,
                        }
                    }
                }
            }
        }
    }

    /// The input sizes whose engines are queued or being exported in the background (for streams
    /// that joined with them), as (width, height), in the order the worker takes them.
    pub fn exporting(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.exporter.iter().flat_map(Exporter::pending)
    }

    /// What the run's export worker has done so far (sizes exported and failed, checkpoint loads,
    /// whether it ended); it stays readable once the runtime is gone. `None` when the run cannot
    /// export engines (engine directories, the caller's engines).
    pub fn export_watch(&self) -> Option<ExportWatch> {
        self.exporter.as_ref().map(|e| e.watch().clone())
    }

    /// Sets the objects a stream that joins later starts with, as a `prompt` (or, for `None`, a
    /// `clear`) sent to all streams would (without changing the open ones). The template starts as
    /// the configuration's prompt and follows every command sent to all streams; see
    /// [`JoinTemplate`].
    pub fn set_join_prompt(&mut self, prompt: Option<&str>) -> crate::Result<()> {
        self.join.set_prompt(prompt)
    }

    /// What a stream that joins later starts with.
    pub fn join_template(&self) -> &JoinTemplate {
        &self.join
    }

    /// The streams still waiting for their source (or, opened, for the engines of their input
    /// size, [`Runtime::exporting`]): index and source.
    pub fn waiting(&self) -> impl Iterator<Item = (usize, &str)> {
        self.joining.iter().map(|j| (j.index, j.label.as_str()))
    }

    /// The streams whose source failed for good before they opened: index and why.
    pub fn gone(&self) -> impl Iterator<Item = (usize, &str)> {
        self.gone.iter().map(|(i, w)| (*i, w.as_str()))
    }

    /// The open stream of index `index` (its place among the configured sources).
    pub fn stream(&self, index: usize) -> Option<&LiveStream> {
        self.streams.iter().find(|s| s.index == index)
    }

    /// Adds a sink to stream 0 (if its source is still to come, the sink waits for it; if it never
    /// opened, to the first open stream); it sees every frame processed from now on.
    pub fn add_sink(&mut self, sink: Box<dyn Sink>) {
        if self.joining.iter().any(|j| j.index == 0)
            || self.streams.first().is_none_or(|s| s.index == 0)
        {
            let _ = self.add_stream_sink(0, sink);
        } else {
            self.streams[0].sinks.push(sink);
        }
    }

    /// Adds a sink to stream `stream` (one still waiting for its source gets it when it joins).
    pub fn add_stream_sink(&mut self, stream: usize, sink: Box<dyn Sink>) -> anyhow::Result<()> {
        if let Some(s) = self.streams.iter_mut().find(|s| s.index == stream) {
            s.sinks.push(sink);
        } else if let Some(j) = self.joining.iter_mut().find(|j| j.index == stream) {
            j.sinks.push(sink);
        } else {
            bail!("no stream {stream}: this run has {}", self.plan.streams);
        }
        Ok(())
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

    /// The open streams, ascending index: one per source, except those still waiting for theirs
    /// ([`Runtime::waiting`]), which join when it opens. "Stream 0" in the accessors below is the
    /// first of these.
    pub fn streams(&self) -> &[LiveStream] {
        &self.streams
    }

    /// The index of the stream whose frame the last [`Step::Frame`] (or failure) was.
    pub fn last_stream(&self) -> usize {
        self.last_stream
    }

    /// The first input size's shared engines (sizes, batch, whether the image part is split off);
    /// `None` on the device-resident path, where each stream has its own.
    pub fn engines(&self) -> Option<&SharedEngines> {
        self.sets.host.first()
    }

    /// The shared engines of every input size, in the order they were made (empty on the
    /// device-resident path).
    pub fn engine_sets(&self) -> &[SharedEngines] {
        &self.sets.host
    }

    /// Width and height of stream 0's frames (and masks).
    pub fn frame_size(&self) -> (u32, u32) {
        self.streams[0].frame_size
    }

    /// Stream 0's last processed frame's reported tracks.
    pub fn last(&self) -> &FrameResult {
        &self.streams[0].last
    }

    /// Stream 0's last label mask (0 = background, `k + 1` = track table entry `k`).
    pub fn last_mask(&self) -> &[u8] {
        self.streams[0].last_mask()
    }

    /// Stream 0's counters as the `status` command reports them (frames in, processed, dropped,
    /// fps, mean latency per stage, source); allocates, so call it at status rate, not per frame.
    pub fn stats(&self) -> RuntimeStats {
        self.streams[0].stats()
    }

    /// Frames processed so far, all streams together.
    pub fn frames_processed(&self) -> u64 {
        self.streams.iter().map(|s| s.processed).sum()
    }

    /// Stream 0's settings (objects, selection mode, paused).
    pub fn settings(&self) -> &Settings {
        &self.streams[0].ctl.settings
    }

    /// Stream 0's object captions joined by `"; "`, `None` without objects.
    pub fn caption(&self) -> Option<&str> {
        let c = self.streams[0].caption();
        (!c.is_empty()).then_some(c)
    }

    /// Applies `req` to the stream it addresses; the stream's position in `streams` with the reply.
    fn route(&mut self, req: &Request) -> (Reply, Option<usize>) {
        let k = match req.stream {
            Some(Streams::One(k)) => k,
            None => 0,
            Some(Streams::All) => return (self.apply_to_all(req), None),
        };
        if let Some(p) = self.streams.iter().position(|s| s.index == k) {
            let geo = self.streams[p].geo;
            return (
                self.streams[p].apply(self.sets.host.get_mut(geo), req, None),
                Some(p),
            );
        }
        if let Some(w) = self.joining.iter().position(|j| j.index == k) {
            let text = self.check_prompts(&req.command);
            return (
                Self::apply_waiting(&mut self.joining[w], &self.join, req, text),
                None,
            );
        }
        let why = match self.gone.iter().find(|g| g.0 == k) {
            Some((_, why)) => format!("stream {k} never opened: {why}"),
            None => {
                let n = self.plan.streams;
                format!("no stream {k}: this run has {n} (0..={})", n - 1)
            }
        };
        (Reply::error(req.id.clone(), why), None)
    }

    /// Encodes the prompts of `command` with the run's text engine (shared by the host sets, or an
    /// open device stream's: every stream has the same), for a stream that cannot judge them itself yet
    /// (one waiting for its source), so that a prompt it would refuse when it joins is refused now.
    /// A device run always has an open stream (one opened first); were none open, nothing is
    /// checked here and the joining stream leaves out what it refuses (logged).
    fn check_prompts(&mut self, command: &Command) -> crate::Result<()> {
        let prompt = match command {
            Command::Prompt { prompt }
            | Command::Add { prompt, .. }
            | Command::Replace { prompt, .. } => prompt,
            _ => return Ok(()),
        };
        let Some(st) = self.streams.first_mut() else {
            return Ok(());
        };
        for p in split_prompts(prompt) {
            st.lane.check_prompt(self.sets.host.get_mut(st.geo), p)?;
        }
        Ok(())
    }

    /// A command for a stream still waiting for its source: kept in what it starts with when it
    /// joins (its own copy of the template `all` from the first such command on), answered with
    /// those settings; `status` has nothing to report yet, and a prompt the text engine refused
    /// (`text`, [`Runtime::check_prompts`]) is refused.
    fn apply_waiting(
        j: &mut Joining,
        all: &JoinTemplate,
        req: &Request,
        text: crate::Result<()>,
    ) -> Reply {
        let k = j.index;
        let waiting = || match j.parked.as_deref() {
            Some((_, si)) => format!(
                "stream {k} ({}) is not open yet: the engines of its {}x{} input are being \
                 exported (it has waited {:.0} s, for its source and then its engines)",
                j.label,
                si.input.0,
                si.input.1,
                j.since.elapsed().as_secs_f64()
            ),
            None => format!(
                "stream {k} ({}) is not open yet: waiting for its source for {:.0} s",
                j.label,
                j.since.elapsed().as_secs_f64()
            ),
        };
        if matches!(req.command, Command::Status) {
            return Reply::error(req.id.clone(), waiting());
        }
        if let Err(e) = text {
            return Reply::error(req.id.clone(), format!("{}; {e}", waiting()));
        }
        // A refused command changes nothing, so a copy made for it equals the shared template and,
        // like it, follows every later command sent to all.
        let t = j.template.get_or_insert_with(|| all.clone());
        match t.apply(&req.command) {
            Ok(added) => {
                let settings = t.settings();
                log::info!(
                    "stream {k} ({}) is not open yet: {} kept for when it joins",
                    j.label,
                    req.command.name()
                );
                Reply {
                    ok: true,
                    id: req.id.clone(),
                    cmd: Some(req.command.name()),
                    error: None,
                    settings: Some(settings),
                    stats: None,
                    added,
                    stream: Some(k),
                }
            }
            Err(e) => Reply::error(req.id.clone(), format!("{}; {e}", waiting())),
        }
    }

    /// Ids for the `n` objects of an `add` sent to all: new in every open stream and in what
    /// joining streams start with ([`crate::pipeline::objects::common_ids`]), so each camera gives
    /// the object the same id.
    fn common_ids(&self, n: usize) -> crate::Result<Vec<ObjectId>> {
        let mut spaces: Vec<(Vec<ObjectId>, &IdSpace)> =
            self.streams.iter().map(|s| s.lane.id_space()).collect();
        spaces.push((self.join.ids(), self.join.id_space()));
        for t in self.joining.iter().filter_map(|j| j.template.as_ref()) {
            spaces.push((t.ids(), t.id_space()));
        }
        let view: Vec<(&IdSpace, &[ObjectId])> = spaces
            .iter()
            .map(|(ids, space)| (*space, ids.as_slice()))
            .collect();
        crate::pipeline::objects::common_ids(&view, n)
    }

    /// `"stream": "all"`: applies `req` to every open stream (each one's sinks see its reply), or
    /// to none: every stream is checked first (ids, limits, prompts), and a refusal is returned
    /// naming the stream that refused it. An `add` without `"object"` gives its objects the same
    /// ids on every stream ([`Runtime::common_ids`]). Otherwise the first stream's reply without a
    /// `stream`. A command every open stream took also changes what a stream joining later starts
    /// with ([`JoinTemplate`]).
    fn apply_to_all(&mut self, req: &Request) -> Reply {
        if self.streams.is_empty() {
            // A runtime starts with a stream open, and open streams stay in place: kept for safety.
            return Reply::error(req.id.clone(), "no stream is open yet");
        }
        let many = self.streams.len() > 1;
        let ids = match &req.command {
            Command::Add {
                prompt,
                object: None,
            } => match self.common_ids(split_prompts(prompt).count()) {
                Ok(ids) => Some(ids),
                Err(e) => return Reply::error(req.id.clone(), e.to_string()),
            },
            _ => None,
        };
        let ids = ids.as_deref();
        for p in 0..self.streams.len() {
            let st = &mut self.streams[p];
            if let Err(e) = st
                .lane
                .check(self.sets.host.get_mut(st.geo), &req.command, ids)
            {
                let k = st.index;
                log::warn!("stream {k}: {} refused: {e}", req.command.name());
                let mut r = Reply::error(req.id.clone(), e.to_string());
                st.notify_reply(req, &r);
                if many {
                    r.error = r
                        .error
                        .map(|e| format!("stream {k}: {e} (no stream took it)"));
                }
                return r;
            }
        }
        let mut first = None;
        for p in 0..self.streams.len() {
            let geo = self.streams[p].geo;
            let mut r = self.streams[p].apply(self.sets.host.get_mut(geo), req, ids);
            self.streams[p].notify_reply(req, &r);
            if !r.ok {
                // Every stream took it when checked: only an engine failure (no device memory
                // left for another object) gets here; the streams before this one keep it.
                let k = self.streams[p].index;
                log::error!(
                    "{} sent to all streams failed on stream {k} after {p} took it",
                    req.command.name()
                );
                if many {
                    r.error = r.error.map(|e| format!("stream {k}: {e}"));
                }
                return r;
            }
            first.get_or_insert(r);
        }
        let Some(mut r) = first else {
            return Reply::error(req.id.clone(), "no stream is open yet");
        };
        if let Err(e) = self.join.apply_with_ids(&req.command, ids) {
            // Every open stream took it, so only objects some streams were given one by one can
            // differ; the joining streams keep what they had.
            log::info!(
                "{} sent to all streams: streams joining later do not take it ({e})",
                req.command.name()
            );
        }
        for j in &mut self.joining {
            if let Some(t) = j.template.as_mut() {
                if let Err(e) = t.apply_with_ids(&req.command, ids) {
                    log::info!(
                        "{} sent to all streams: stream {} (waiting) does not take it ({e})",
                        req.command.name(),
                        j.index
                    );
                }
            }
        }
        // Applied to every stream, not only to the one whose settings it shows.
        r.stream = None;
        r
    }

    /// Applies a command now, as if it had arrived between two frames, and returns its reply (the
    /// addressed streams' sinks see it too).
    pub fn command(&mut self, request: &Request) -> Reply {
        let (reply, k) = self.route(request);
        if let Some(k) = k {
            self.streams[k].notify_reply(request, &reply);
        }
        reply
    }

    fn handle(&mut self, inc: Incoming) {
        let request = match inc.request {
            Ok(r) => r,
            Err(r) => {
                // A malformed line: answered in its turn, so replies keep the lines' order.
                inc.responder.send(&Reply::error(r.id, r.error));
                return;
            }
        };
        let (reply, k) = self.route(&request);
        inc.responder.send(&reply);
        if let Some(k) = k {
            self.streams[k].notify_reply(&request, &reply);
        }
    }

    /// Applies one pending command, or processes one frame of the next stream with one ready
    /// (waiting up to 100 ms for one; on the device-resident path with several streams, one frame
    /// of every stream with one ready, side by side: [`super::lanes`]). Commands go first, but while frames can run at most 8 of
    /// them or 50 ms in a row: then a frame turn comes, so a client sending commands as fast as it
    /// can (each new prompt a text-engine run) cannot stop the streams.
    pub fn step(&mut self) -> Step {
        if self.ended {
            return Step::Ended;
        }
        if self.stop.load(Ordering::SeqCst) {
            log::info!("interrupted; shutting down");
            self.ended = true;
            return Step::Ended;
        }
        if !self.joining.is_empty() {
            self.admit_joining();
        }
        // Ring readers tell a silent camera (writer alive, mask old) from a dead or hung writer by
        // this beat (output::ring, "Is the newest mask current?"); a turn waits at most 100 ms.
        for st in &self.streams {
            if let Some(r) = st.masks.ring() {
                r.heartbeat();
            }
        }
        let max = self.config.max_frames;
        // A stream still waiting for its source keeps the run going (it has its frames to do).
        let all_done = self.streams.iter().all(|s| s.done(max));
        if all_done && self.joining.is_empty() {
            self.ended = true;
            return Step::Ended;
        }
        let paused = all_done
            || self
                .streams
                .iter()
                .filter(|s| !s.done(max))
                .all(|s| s.ctl.settings.paused);
        let frames_waited = self
            .burst
            .is_some_and(|(n, since)| n >= COMMAND_BURST || since.elapsed() >= COMMAND_BURST_TIME);
        let pending = if paused {
            self.burst = None;
            self.hub.recv_timeout(WAIT)
        } else if frames_waited {
            None
        } else {
            self.hub.try_recv()
        };
        if let Some(inc) = pending {
            if !paused {
                self.burst.get_or_insert_with(|| (0, Instant::now())).0 += 1;
            }
            self.handle(inc);
            return Step::Command;
        }
        if paused {
            return Step::Idle;
        }
        // A frame turn: the commands waiting, if any, get the next steps.
        self.burst = None;
        let n = self.streams.len();
        #[cfg(feature = "cuda")]
        if self.plan.device && n > 1 {
            if let Some(s) = self.device_turn(max) {
                return s;
            }
        }
        if self.sets.host.iter().any(|e| e.image_batch() > 1) && n > 1 {
            if let Some(s) = self.batched_frames(max) {
                return s;
            }
        }
        let active = self
            .streams
            .iter()
            .filter(|s| !s.done(max) && !s.ctl.settings.paused)
            .count();
        // Streams take turns: the first with a frame ready after the last one served goes next;
        // when none is ready, wait briefly on the next in turn.
        for pass in 0..2 {
            for off in 0..n {
                let i = (self.next + off) % n;
                let st = &mut self.streams[i];
                if st.done(max) || st.ctl.settings.paused {
                    continue;
                }
                let wait = match (pass, active) {
                    (0, _) => Duration::ZERO,
                    (_, 1) => WAIT,
                    _ => WAIT_SHARED,
                };
                match st.capture.take(&mut st.cur, wait) {
                    Take::Fresh => return self.process_fresh(i),
                    Take::Timeout => {}
                    Take::Closed => st.source_closed(self.stop.load(Ordering::SeqCst)),
                }
                if pass == 1 {
                    break;
                }
            }
        }
        if self.joining.is_empty() && self.streams.iter().all(|s| s.done(max)) {
            self.ended = true;
            return Step::Ended;
        }
        Step::Idle
    }

    /// Processes the frame stream `i` just took, on its own, and makes the next stream in turn first.
    fn process_fresh(&mut self, i: usize) -> Step {
        let n = self.streams.len();
        let st = &mut self.streams[i];
        self.next = (i + 1) % n;
        self.last_stream = st.index;
        let step = st.process(self.sets.host.get_mut(st.geo));
        if st.fatal.is_some() {
            self.ended = true;
        }
        step
    }

    /// On the device path with several streams: every stream with a frame ready now is stepped, each
    /// on a thread of its own (the first on this one), so that one camera's host work and
    /// synchronizations overlap the others' GPU work instead of adding up (each lane has its own
    /// execution contexts, CUDA stream and ring). Returns when all are done; `None` when no stream
    /// had a frame ready. A step that panicked ends its stream only.
    #[cfg(feature = "cuda")]
    fn device_turn(&mut self, max: Option<u64>) -> Option<Step> {
        let n = self.streams.len();
        let stopping = self.stop.load(Ordering::SeqCst);
        self.turn.picks.clear();
        gather_fresh(
            &mut self.streams,
            &mut self.turn.picks,
            self.next,
            max,
            stopping,
        );
        if self.turn.picks.is_empty() {
            // None ready: wait briefly on the next in turn, then take along every other stream whose
            // frame came meanwhile (sources that hand over every frame, one at a time, are rarely
            // all ready at the same instant).
            let next = (0..n)
                .map(|off| (self.next + off) % n)
                .find(|&i| !self.streams[i].done(max) && !self.streams[i].ctl.settings.paused)?;
            let st = &mut self.streams[next];
            match st.capture.take(&mut st.cur, WAIT_SHARED) {
                Take::Fresh => {
                    self.turn.picks.push(next);
                    gather_fresh(&mut self.streams, &mut self.turn.picks, next, max, stopping);
                }
                Take::Timeout => return None,
                Take::Closed => {
                    st.source_closed(stopping);
                    return None;
                }
            }
        }
        let t = &mut self.turn;
        let last = *t.picks.last()?;
        t.steps.clear();
        t.steps.resize(t.picks.len(), None);
        // Device lanes hold their own engines: the runtime's host sets are not involved.
        let ran = t.lanes.run_each(
            &mut self.streams,
            &t.picks,
            |st| st.process(None),
            &mut t.steps,
        );
        if let Err(e) = ran {
            // Not reached: the picks are distinct indices of `streams`, the steps sized for them.
            log::error!("device turn: {e}");
            return Some(Step::Failed);
        }
        let mut step = Step::Frame;
        for (&i, s) in t.picks.iter().zip(&t.steps) {
            let st = &mut self.streams[i];
            let s = s.unwrap_or_else(|| st.lost_to_panic());
            if st.fatal.is_some() {
                self.ended = true;
            }
            step = match (step, s) {
                (Step::Ended, _) | (_, Step::Ended) => Step::Ended,
                (_, Step::Frame) => step,
                _ => Step::Failed,
            };
        }
        if self.ended {
            step = Step::Ended;
        }
        self.last_stream = self.streams[last].index;
        self.next = (last + 1) % n;
        Some(step)
    }

    /// With a batched image engine: takes the frames streams have ready now (up to the batch),
    /// runs their image part in one engine call, then each stream's objects. `None` when no
    /// stream had a frame ready. Only streams of one input size share a call (their set's image
    /// engine): the first in turn with a frame ready picks it; a stream of another size passed over
    /// goes first next time. A stream whose set has no separate image engine (a caller's
    /// whole-frame set beside a batched one), first in turn with a frame ready, runs on its own.
    fn batched_frames(&mut self, max: Option<u64>) -> Option<Step> {
        let n = self.streams.len();
        let mut ready = [0usize; MAX_IMAGE_BATCH];
        let mut count = 0;
        let mut skipped = None;
        let mut geo = None;
        let mut b = MAX_IMAGE_BATCH;
        let mut passed_over = None;
        for off in 0..n {
            if count == b {
                break;
            }
            let i = (self.next + off) % n;
            let st = &mut self.streams[i];
            if st.done(max) || st.ctl.settings.paused {
                continue;
            }
            if geo.is_some_and(|g| g != st.geo) {
                passed_over.get_or_insert(i);
                continue;
            }
            // A set without a separate image engine (a library caller's whole-frame set beside a
            // batched one) cannot share an image run: the stream, first in turn, runs on its own.
            let alone = !self
                .sets
                .host
                .get(st.geo)
                .is_some_and(|e| e.has_image_engine());
            match st.capture.take(&mut st.cur, Duration::ZERO) {
                Take::Fresh if alone => return Some(self.process_fresh(i)),
                Take::Fresh => match st.prepare() {
                    Ok(()) => {
                        ready[count] = i;
                        count += 1;
                        if geo.is_none() {
                            geo = Some(st.geo);
                            let batch = self.sets.host.get(st.geo).map_or(1, |e| e.image_batch());
                            b = batch.clamp(1, MAX_IMAGE_BATCH);
                        }
                    }
                    Err(s) => skipped = Some(s),
                },
                Take::Timeout => {}
                Take::Closed => st.source_closed(self.stop.load(Ordering::SeqCst)),
            }
        }
        if count == 0 {
            return skipped;
        }
        let eng = self.sets.host.get_mut(geo?)?;
        let ready = &ready[..count];
        let mut loaded = Ok(());
        for (r, &i) in ready.iter().enumerate() {
            loaded = loaded.and_then(|_| match &self.streams[i].lane {
                Lane::Host(m) => m.load_image_row(eng, r),
                #[cfg(feature = "cuda")]
                Lane::Device(_) => Err(no_host_engines()),
            });
        }
        let ran = loaded.and_then(|_| eng.run_images());
        let mut step = Step::Frame;
        for (r, &i) in ready.iter().enumerate() {
            let st = &mut self.streams[i];
            let res = match &ran {
                Ok(()) => match &mut st.lane {
                    Lane::Host(multi) => {
                        let cur = &st.cur;
                        st.masks.write(cur.id, cur.timestamp_ns, |mask| {
                            multi.step_from_row(eng, r, mask)
                        })
                    }
                    #[cfg(feature = "cuda")]
                    Lane::Device(_) => Err(no_host_engines()),
                },
                Err(e) => Err(crate::Error::Backend(format!("image engine: {e}"))),
            };
            match st.deliver(res) {
                Step::Frame => {}
                Step::Ended => {
                    self.ended = true;
                    step = Step::Ended;
                }
                _ if step != Step::Ended => step = Step::Failed,
                _ => {}
            }
            self.last_stream = self.streams[i].index;
            self.next = (i + 1) % n;
        }
        if let Some(i) = passed_over {
            self.next = i;
        }
        Some(step)
    }

    /// Steps until the run ends, then shuts down and returns the summary.
    pub fn run(mut self) -> anyhow::Result<RunSummary> {
        while self.step() != Step::Ended {}
        self.finish()
    }

    /// Stops capturing and the command inbox, re-scores stream 0's first object as one clip when
    /// the configuration asks for it, lets every sink finish (the overlay GIF is written here) and
    /// returns the summary (the lowest stream index's, with the other streams' in
    /// [`RunSummary::streams`], those that never opened included). A run a persistent failure
    /// ended returns [`EndedEarly`] (with that summary) as its error; a sink that cannot finish
    /// counts as a sink error.
    pub fn finish(self) -> anyhow::Result<RunSummary> {
        let seconds = self.started.elapsed().as_secs_f64();
        let Runtime {
            config,
            mut hub,
            mut sets,
            streams,
            joining,
            gone,
            mut exporter,
            ..
        } = self;
        hub.shutdown();
        // Stops between two engines while the sinks finish; joined below.
        if let Some(e) = &exporter {
            e.cancel();
        }
        // Nothing new comes: readers learn it now, not after the GIF is encoded and the clip
        // re-scored (the heartbeat has stopped; a reader would see a hung writer meanwhile).
        for st in &streams {
            if let Some(r) = st.masks.ring() {
                r.mark_closed();
            }
        }
        let mut unopened: Vec<RunSummary> = Vec::new();
        for j in joining {
            let (source, input) = match j.parked.as_deref() {
                Some((_, si)) => (
                    format!(
                        "{} (opened; its {}x{} engines were still being exported)",
                        j.label, si.input.0, si.input.1
                    ),
                    Some(InputSize {
                        width: si.input.0,
                        height: si.input.1,
                    }),
                ),
                None => (format!("{} (never opened)", j.label), None),
            };
            log::warn!(
                "stream {} ({}) never joined (waited {:.0} s)",
                j.index,
                j.label,
                j.since.elapsed().as_secs_f64()
            );
            unopened.push(RunSummary {
                stream: j.index,
                source,
                seconds,
                input,
                ..RunSummary::default()
            });
        }
        for (index, why) in gone {
            unopened.push(RunSummary {
                stream: index,
                source: format!("never opened: {why}"),
                seconds,
                ..RunSummary::default()
            });
        }
        let mut summaries = Vec::with_capacity(streams.len());
        let mut fatal = None;
        for stream in streams {
            let input = stream.input_size();
            let LiveStream {
                index,
                description,
                geo,
                capture,
                mut lane,
                mut sinks,
                last,
                processed,
                caption,
                errors,
                fatal: stream_fatal,
                sink_errors,
                ..
            } = stream;
            let totals = capture.finish();
            if let Some(why) = stream_fatal {
                fatal.get_or_insert(format!("stream {index}: {why}"));
            }
            let finalized = match (&mut lane, sets.host.get_mut(geo)) {
                (Lane::Host(multi), Some(eng))
                    if config.finalize && index == 0 && !multi.is_empty() =>
                {
                    match multi.finalize(eng, multi.selection()) {
                        Ok(v) => Some(v),
                        Err(e) => {
                            log::warn!("{e}");
                            None
                        }
                    }
                }
                #[cfg(feature = "cuda")]
                (Lane::Device(d), _) if config.finalize && index == 0 => match d.finalize() {
                    Ok(v) => v,
                    Err(e) => {
                        log::warn!("{e}");
                        None
                    }
                },
                _ => None,
            };
            let mut summary = RunSummary {
                stream: index,
                source: description,
                frames_captured: totals.captured,
                frames_processed: processed,
                frames_dropped: totals.dropped,
                seconds,
                times: lane.times().clone(),
                caption: (!caption.is_empty()).then_some(caption),
                last,
                finalized,
                gif: None,
                masks: Vec::new(),
                streams: Vec::new(),
                frames_failed: errors,
                sink_errors,
                source_health: totals.health,
                frames_resized: totals.resized,
                input: Some(input),
            };
            // The status sink (added last) clears its progress bar before the others report. A
            // sink that cannot finish (the GIF on a full disk) is a sink error like a frame it
            // could not take: counted and logged, the summary and the other outputs stand.
            for s in sinks.iter_mut().rev() {
                if let Err(e) = s.finish(&mut summary) {
                    log::error!("stream {index}: sink {} could not finish: {e:#}", s.name());
                    summary.sink_errors += 1;
                }
            }
            summaries.push(summary);
        }
        if fatal.is_some() {
            // The sinks have finished (rings consistent, GIFs written); the run still failed.
            for s in &summaries {
                eprint!("{}", s.text());
            }
        }
        summaries.append(&mut unopened);
        summaries.sort_by_key(|s| s.stream);
        // The worker was cancelled above: this waits for the engine it was on at most.
        if let Some(e) = &mut exporter {
            e.shutdown();
        }
        let mut it = summaries.into_iter();
        let mut first = it
            .next()
            .ok_or_else(|| anyhow::anyhow!("a run without streams"))?;
        first.streams = it.collect();
        match fatal {
            Some(why) => Err(EndedEarly {
                why,
                summary: Box::new(first),
            }
            .into()),
            None => Ok(first),
        }
    }
}
