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
//!
//! This file holds the [`Runtime`] type, its accessors and the loop itself ([`Runtime::step`],
//! [`Runtime::run`]); its other methods are in the files beside it, each an `impl Runtime` of its
//! own: making one (`startup.rs`), admitting streams that join later (`admission.rs`), routing
//! commands to streams (`routing.rs`), the frame turns (`turns.rs`) and the end of the run
//! (`finish.rs`). The stream itself is `live_stream.rs`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;

use super::building::{Sets, StreamPlan};
use super::config::RuntimeConfig;
use super::exporter::{ExportWatch, Exporter};
use super::joining::Joining;
pub use super::live_stream::{LiveStream, Step};
use super::sink::Sink;
use super::summary::RunSummary;
use super::template::JoinTemplate;
use crate::camera::latest::Take;
use crate::pipeline::commands::{CommandHub, RuntimeStats, Settings};
use crate::pipeline::multi::SharedEngines;
use crate::pipeline::stream::FrameResult;

/// How long a step waits for a frame (or, while paused, for a command) before it returns.
const WAIT: Duration = Duration::from_millis(100);

/// With several streams, how long a step waits on one of them when none has a frame ready.
pub(super) const WAIT_SHARED: Duration = Duration::from_millis(5);

/// Most commands applied in a row while frames could run; then a frame turn comes first.
const COMMAND_BURST: u32 = 8;

/// Longest time spent on commands in a row while frames could run (a new prompt runs the text
/// engine, tens of milliseconds each); then a frame turn comes first.
const COMMAND_BURST_TIME: Duration = Duration::from_millis(50);

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
    pub(super) config: RuntimeConfig,
    pub(super) hub: CommandHub,
    pub(super) stop: Arc<AtomicBool>,
    /// The engine sets streams run on.
    pub(super) sets: Sets,
    /// The open streams, ascending index.
    pub(super) streams: Vec<LiveStream>,
    /// Streams whose source has not opened yet (or opened and waits for the engines of its size).
    pub(super) joining: Vec<Joining>,
    /// Streams whose source failed for good before it opened (index, why).
    pub(super) gone: Vec<(usize, String)>,
    /// How a joining stream is built.
    pub(super) plan: StreamPlan,
    /// What a joining stream starts with.
    pub(super) join: JoinTemplate,
    pub(super) next: usize,
    pub(super) last_stream: usize,
    /// Commands applied in a row since the last frame turn, and since when (`None` after a frame
    /// turn or while paused).
    pub(super) burst: Option<(u32, Instant)>,
    /// Steps the device streams that have a frame ready side by side ([`Runtime::device_turn`]).
    #[cfg(feature = "cuda")]
    pub(super) turn: DeviceTurn,
    pub(super) started: Instant,
    pub(super) ended: bool,
    /// Exports the engine sets of new input sizes in the background, for streams that joined with
    /// them (they wait in `joining`, parked with their opened source); `None` when the run cannot
    /// export (engine directories, the caller's engines). Last, so that dropping the runtime tears
    /// the streams down first and then stops and joins the worker ([`Exporter`]'s drop).
    pub(super) exporter: Option<Exporter>,
}

/// A device turn's threads and its reused lists (sized by the most streams ever stepped at once).
#[cfg(feature = "cuda")]
pub(super) struct DeviceTurn {
    pub(super) lanes: super::lanes::LaneThreads,
    /// The streams stepped this turn, in turn order.
    pub(super) picks: Vec<usize>,
    /// What each one's step did (`None`: it panicked).
    pub(super) steps: Vec<Option<Step>>,
}

impl Runtime {
    /// The device engine sets made so far by the pool's makers (at most one per stream that opened
    /// on the device path: none for a camera still to come; ready-made sets are not counted).
    pub fn device_sets_made(&self) -> usize {
        self.sets.device.made()
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

    /// Steps until the run ends, then shuts down and returns the summary.
    pub fn run(mut self) -> anyhow::Result<RunSummary> {
        while self.step() != Step::Ended {}
        self.finish()
    }
}
