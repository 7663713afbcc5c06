//! One live stream, [`LiveStream`]: a source's capture thread, preprocessing, objects, selection
//! settings, mask target, sinks and counters, with how its objects run (`Lane`: on the runtime's
//! shared host engines, or on a device-resident session of its own, [`super::device`]); and
//! [`Step`], what one step of the runtime (or one stream's frame) did.
//!
//! Apart from the runtime because it is the per-stream half: the runtime (`runtime.rs` and the
//! files beside it) owns what the streams share, the engines first, and lends each stream those of
//! its input size for a frame or a command.

use std::collections::BTreeMap;

use super::masks::MaskTarget;
use super::sink::{FrameOutput, Sink};
use super::source::{Capture, Captured};
use super::status::StatusMeter;
use super::template::JoinTemplate;
use crate::camera::{Layout, Preprocessor};
use crate::output::ring::MaskRing;
use crate::pipeline::commands::{
    Command, Controller, InputSize, ObjectId, ObjectInfo, Reply, Request, RuntimeStats, SelectMode,
    Settings,
};
use crate::pipeline::multi::{MultiStream, SharedEngines};
use crate::pipeline::objects::IdSpace;
use crate::pipeline::post::Selection;
use crate::pipeline::stream::FrameResult;
use crate::pipeline::timing::Stage;

/// What one [`Runtime::step`](super::Runtime::step) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// A frame was processed and handed to the sinks ([`Runtime::last`](super::Runtime::last) has its tracks).
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
/// with several sources holds one per source (see [`Runtime`](super::Runtime)); the engines are the runtime's.
pub struct LiveStream {
    pub(super) index: usize,
    pub(super) description: String,
    pub(super) frame_size: (u32, u32),
    /// The model input (width, height) its frames resize to.
    pub(super) input: (u32, u32),
    /// Its engine set among the runtime's host sets (one per input size; unused on the device
    /// path, where the lane holds the stream's own set).
    pub(super) geo: usize,
    pub(super) capture: Capture,
    pub(super) pre: Preprocessor,
    /// The objects and how they run (declared before `masks`: a device lane unregisters the ring
    /// from CUDA before the ring is unmapped).
    pub(super) lane: Lane,
    pub(super) ctl: Controller,
    pub(super) sinks: Vec<Box<dyn Sink>>,
    pub(super) cur: Captured,
    /// `cur` as RGB when it arrived in another layout and something needs RGB (sized once).
    pub(super) rgb: Vec<u8>,
    /// Where masks are written: the ring's next slot, or a host buffer.
    pub(super) masks: MaskTarget,
    pub(super) last: FrameResult,
    pub(super) objects: Vec<ObjectInfo>,
    pub(super) caption: String,
    pub(super) processed: u64,
    pub(super) errors: u64,
    /// Failed frames in a row (reset by a processed frame).
    pub(super) consecutive_errors: u32,
    /// Consecutive failures that end the run ([`RuntimeConfig::max_failed_frames`](super::RuntimeConfig::max_failed_frames)).
    pub(super) max_failed: u32,
    /// Why the run ended early, when a persistent failure ended it.
    pub(super) fatal: Option<String>,
    pub(super) sink_errors: u64,
    pub(super) skipped: u64,
    pub(super) ended: bool,
    pub(super) meter: StatusMeter,
}

fn selection(mode: SelectMode, threshold: f32) -> Selection {
    match mode {
        SelectMode::Single => Selection::Single,
        SelectMode::Multi => Selection::Multi { threshold },
    }
}

/// How a stream's objects run.
pub(super) enum Lane {
    /// On the runtime's shared engines, every binding through host memory (any number of objects).
    Host(Box<MultiStream>),
    /// On the stream's own device-resident session (see [`super::device`]).
    #[cfg(feature = "cuda")]
    Device(Box<super::device::DeviceLane>),
}

impl Lane {
    pub(super) fn times(&self) -> &crate::pipeline::timing::StageTimes {
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
    pub(super) fn check(
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
    pub(super) fn check_prompt(
        &mut self,
        eng: Option<&mut SharedEngines>,
        prompt: &str,
    ) -> crate::Result<()> {
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
    pub(super) fn id_space(&self) -> (Vec<ObjectId>, &IdSpace) {
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
pub(super) fn no_host_engines() -> crate::Error {
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
    pub(super) fn sync_objects(&mut self) {
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
    pub(super) fn apply(
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
    pub(super) fn adopt(
        &mut self,
        eng: Option<&mut SharedEngines>,
        t: &JoinTemplate,
    ) -> crate::Result<()> {
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

    pub(super) fn notify_reply(&mut self, req: &Request, reply: &Reply) {
        for s in &mut self.sinks {
            s.reply(req, reply);
        }
    }

    /// The source delivers no more frames: the stream ends; if its source failed (rather than
    /// reaching its end), the run will end with that error once the other streams are done. A
    /// failure seen once the run is `stopping` (a decoder child that took the same Ctrl-C) ends the
    /// stream as its end would.
    pub(super) fn source_closed(&mut self, stopping: bool) {
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

    pub(super) fn done(&self, max_frames: Option<u64>) -> bool {
        self.ended || max_frames.is_some_and(|m| self.processed >= m)
    }

    /// Checks the frame in `cur` and preprocesses it into the stream's image input.
    pub(super) fn prepare(&mut self) -> Result<(), Step> {
        let (fw, fh) = self.frame_size;
        if (self.cur.width, self.cur.height) != (fw, fh) {
            self.skipped += 1;
            let skipped = self.skipped;
            if skipped <= 3 || skipped.is_multiple_of(100) {
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
        if errors <= 10 || errors.is_multiple_of(1000) {
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
    pub(super) fn process(&mut self, eng: Option<&mut SharedEngines>) -> Step {
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
    pub(super) fn lost_to_panic(&mut self) -> Step {
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
    pub(super) fn deliver(&mut self, r: crate::Result<FrameResult>) -> Step {
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
                if self.sink_errors <= 10 || self.sink_errors.is_multiple_of(1000) {
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
