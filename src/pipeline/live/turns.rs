//! The frame turns [`Runtime::step`] picks among beyond taking streams in turn: one stream's fresh
//! frame processed alone (`process_fresh`), a device turn (on the device path with several
//! streams, every stream with a frame ready stepped side by side on the lane threads,
//! [`super::lanes`]) and a batched turn (several streams' frames of one input size through one call
//! of a batched image engine).

use std::sync::atomic::Ordering;
use std::time::Duration;

#[cfg(feature = "cuda")]
use super::live_stream::{no_host_engines, LiveStream};
use super::live_stream::{Lane, Step};
use super::runtime::Runtime;
#[cfg(feature = "cuda")]
use super::runtime::WAIT_SHARED;
use crate::camera::latest::Take;
// Largest image batch the runtime gathers frames for (also the `--image-batch` limit).
use crate::limits::MAX_IMAGE_BATCH;

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

impl Runtime {
    /// Processes the frame stream `i` just took, on its own, and makes the next stream in turn first.
    pub(super) fn process_fresh(&mut self, i: usize) -> Step {
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
    pub(super) fn device_turn(&mut self, max: Option<u64>) -> Option<Step> {
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
    pub(super) fn batched_frames(&mut self, max: Option<u64>) -> Option<Step> {
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
}
