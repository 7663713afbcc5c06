//! Re-opening a failed camera with exponential back-off, without stopping the process.
//!
//! [`Reconnecting`] wraps a source and an opener. When the source returns an error (unplugged, device
//! error), the error is logged, the source is dropped, and the opener is retried with delays
//! `initial, initial·factor, …` capped at `max`, until it succeeds, `max_attempts` is reached, or the
//! stop flag is raised. The back-off goes on growing across re-opens until a re-opened source has
//! proven itself ([`HEALTHY_FRAMES`] frames, or frames for `max`): a device that opens and fails at
//! once is retried every `max`, not five times a second. Frame ids stay increasing across
//! reconnects.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Frame, FrameSource, LayoutSet, SourceHealth};
use crate::{Error, Result};

/// Back-off policy.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// First delay.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
    /// Growth factor per failed attempt.
    pub factor: f64,
    /// Give up after this many consecutive failed opens (0 = never).
    pub max_attempts: u32,
    /// Raised by the owner to abandon reconnecting (e.g. on Ctrl-C).
    pub stop: Arc<AtomicBool>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(200),
            max: Duration::from_secs(5),
            factor: 2.0,
            max_attempts: 0,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl Backoff {
    /// Delay before attempt `k` (0-based).
    pub fn delay(&self, k: u32) -> Duration {
        let d = self.initial.as_secs_f64() * self.factor.powi(k.min(64) as i32);
        Duration::from_secs_f64(d.min(self.max.as_secs_f64()))
    }
}

/// A source that re-opens itself after failures.
pub struct Reconnecting<S, F> {
    inner: Option<S>,
    opener: F,
    backoff: Backoff,
    id_offset: u64,
    last_id: Option<u64>,
    reconnects: u64,
    failures: u64,
    end_is_failure: bool,
    /// When the last frame was delivered.
    last_frame: Option<Instant>,
    /// When the current outage began (the last frame before the failure that dropped the source).
    down_since: Option<Instant>,
    longest_outage: Duration,
    total_outage: Duration,
    /// What the consumer accepts, passed on to every re-opened source.
    accepted: LayoutSet,
    /// Unusable frames in a row ([`Error::Frame`]) from the current source.
    bad_in_a_row: u32,
    /// Back-off step of the next re-open: failed opens and re-opened sources that failed before
    /// proving themselves, since the last healthy one.
    step: u32,
    /// While a re-opened source is on probation: when it was opened, and the frames it delivered.
    probation: Option<(Instant, u32)>,
}

/// Frames a re-opened source delivers before it counts as healthy (the back-off starts over at
/// `initial`); so does one that delivers frames for at least the back-off's `max`. A few frames:
/// the device streams again, and its next failure is a new outage (recovered in under 2 s, README:
/// Reliability); one that fails before them keeps backing off.
pub const HEALTHY_FRAMES: u32 = 4;

/// Unusable frames in a row after which the source is taken for broken and re-opened (a USB link
/// that corrupts every frame needs a new negotiation; one bad JPEG does not).
pub const MAX_BAD_FRAMES_IN_A_ROW: u32 = 30;

impl<S: FrameSource, F: FnMut() -> Result<S> + Send> Reconnecting<S, F> {
    /// Wraps an already opened `source`; `opener` makes a fresh one after a failure.
    pub fn new(source: S, opener: F, backoff: Backoff) -> Self {
        Reconnecting {
            inner: Some(source),
            opener,
            backoff,
            id_offset: 0,
            last_id: None,
            reconnects: 0,
            failures: 0,
            bad_in_a_row: 0,
            end_is_failure: false,
            last_frame: None,
            down_since: None,
            longest_outage: Duration::ZERO,
            total_outage: Duration::ZERO,
            accepted: LayoutSet::RGB,
            step: 0,
            probation: None,
        }
    }

    /// Treat an end of stream as a failure and re-open (a live device never ends on its own; a
    /// pipe or device that closes is reconnected like one that errors).
    pub fn end_is_failure(mut self, yes: bool) -> Self {
        self.end_is_failure = yes;
        self
    }

    /// Number of successful re-opens so far.
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// Number of errors seen (read failures and failed opens).
    pub fn failures(&self) -> u64 {
        self.failures
    }

    fn reopen(&mut self) -> Result<()> {
        // Failed opens in this outage (the give-up count); the delay follows `self.step`, which
        // also counts re-opened sources that failed before proving themselves.
        let mut attempt = 0u32;
        loop {
            if self.backoff.stop.load(Ordering::Relaxed) {
                return Err(Error::Source("reconnect abandoned: stop requested".into()));
            }
            // Sleep in short steps so a stop request does not wait out a long back-off.
            let wake = Instant::now() + self.backoff.delay(self.step);
            self.step = self.step.saturating_add(1);
            while Instant::now() < wake && !self.backoff.stop.load(Ordering::Relaxed) {
                std::thread::sleep(
                    Duration::from_millis(20).min(wake.saturating_duration_since(Instant::now())),
                );
            }
            if self.backoff.stop.load(Ordering::Relaxed) {
                return Err(Error::Source("reconnect abandoned: stop requested".into()));
            }
            match (self.opener)() {
                Ok(mut s) => {
                    log::info!(
                        "source re-opened after {} attempt(s): {}",
                        attempt + 1,
                        s.describe()
                    );
                    s.accept_layouts(self.accepted);
                    self.inner = Some(s);
                    self.reconnects += 1;
                    self.probation = Some((Instant::now(), 0));
                    if let Some(t) = self.down_since.take() {
                        let d = t.elapsed();
                        self.longest_outage = self.longest_outage.max(d);
                        self.total_outage += d;
                    }
                    // New sources restart their ids; keep ours increasing.
                    self.id_offset = self.last_id.map_or(0, |l| l + 1);
                    return Ok(());
                }
                Err(e) => {
                    self.failures += 1;
                    attempt += 1;
                    log::warn!(
                        "re-open attempt {attempt} failed: {e}; next try in {:?}",
                        self.backoff.delay(self.step)
                    );
                    if self.backoff.max_attempts != 0 && attempt >= self.backoff.max_attempts {
                        return Err(Error::Source(format!(
                            "gave up re-opening the source after {attempt} attempts; last error: {e}"
                        )));
                    }
                }
            }
        }
    }
}

impl<S, F> Reconnecting<S, F> {
    /// A frame from the current source: a re-opened source that has delivered [`HEALTHY_FRAMES`]
    /// frames, or frames for the back-off's `max`, has proven itself and the back-off starts over.
    fn note_good_frame(&mut self) {
        if let Some((since, frames)) = self.probation.as_mut() {
            *frames += 1;
            if *frames >= HEALTHY_FRAMES || since.elapsed() >= self.backoff.max {
                self.probation = None;
                self.step = 0;
            }
        }
    }
}

impl<S: FrameSource, F: FnMut() -> Result<S> + Send> FrameSource for Reconnecting<S, F> {
    fn describe(&self) -> String {
        match &self.inner {
            Some(s) => s.describe(),
            None => "disconnected source".into(),
        }
    }

    fn accept_layouts(&mut self, accepted: LayoutSet) {
        self.accepted = accepted;
        if let Some(s) = self.inner.as_mut() {
            s.accept_layouts(accepted);
        }
    }

    fn health(&self) -> SourceHealth {
        SourceHealth {
            reconnects: self.reconnects,
            failures: self.failures,
            longest_outage: self.longest_outage,
            total_outage: self.total_outage,
        }
    }

    fn next_frame(&mut self) -> Result<Option<Frame<'_>>> {
        loop {
            if self.inner.is_none() {
                self.reopen()?;
            }
            let Some(src) = self.inner.as_mut() else {
                continue;
            };
            // The frame borrows `src`; returning it from inside this loop while the error arm mutates
            // `self.inner` is rejected by the current borrow checker, so the frame is carried out as
            // raw parts and rebuilt below.
            let raw = match src.next_frame() {
                Ok(Some(f)) => Some((
                    f.id,
                    f.timestamp_ns,
                    f.width,
                    f.height,
                    f.layout,
                    f.pixels.as_ptr(),
                    f.pixels.len(),
                )),
                Ok(None) if !self.end_is_failure => return Ok(None),
                Ok(None) => {
                    self.failures += 1;
                    log::warn!("source ended; re-opening with back-off");
                    self.inner = None;
                    self.down_since = Some(self.last_frame.unwrap_or_else(Instant::now));
                    None
                }
                Err(Error::Frame(why)) if self.bad_in_a_row + 1 < MAX_BAD_FRAMES_IN_A_ROW => {
                    // One unusable frame: skip it, keep the device.
                    self.failures += 1;
                    self.bad_in_a_row += 1;
                    if self.failures <= 3 || self.failures.is_multiple_of(100) {
                        log::warn!(
                            "frame skipped: {why} ({} source failures so far)",
                            self.failures
                        );
                    }
                    continue;
                }
                Err(e) => {
                    self.failures += 1;
                    self.bad_in_a_row = 0;
                    log::warn!("source failed: {e}; re-opening with back-off");
                    self.inner = None;
                    self.down_since = Some(self.last_frame.unwrap_or_else(Instant::now));
                    None
                }
            };
            if let Some((id, ts, w, h, layout, ptr, len)) = raw {
                self.bad_in_a_row = 0;
                self.note_good_frame();
                let id = id + self.id_offset;
                self.last_id = Some(id);
                self.last_frame = Some(Instant::now());
                // SAFETY: `ptr/len` come from a slice borrowed from `self.inner`, which is neither
                // moved nor mutated until the returned frame (tied to `&mut self`) is dropped.
                let pixels = unsafe { std::slice::from_raw_parts(ptr, len) };
                return Ok(Some(Frame {
                    id,
                    timestamp_ns: ts,
                    width: w,
                    height: h,
                    layout,
                    pixels,
                }));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    /// Yields `ok_frames` frames, then fails forever.
    struct Flaky {
        left: u32,
        n: u64,
        buf: Vec<u8>,
    }

    impl FrameSource for Flaky {
        fn describe(&self) -> String {
            "flaky".into()
        }
        fn next_frame(&mut self) -> Result<Option<Frame<'_>>> {
            if self.left == 0 {
                return Err(Error::Source("device unplugged".into()));
            }
            self.left -= 1;
            let id = self.n;
            self.n += 1;
            self.buf.fill(id as u8);
            Ok(Some(Frame::rgb(id, id, 1, 1, &self.buf)))
        }
    }

    fn fast() -> Backoff {
        Backoff {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(4),
            factor: 2.0,
            max_attempts: 0,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    #[test]
    fn delays_grow_and_cap() {
        let b = Backoff::default();
        assert_eq!(b.delay(0), Duration::from_millis(200));
        assert_eq!(b.delay(1), Duration::from_millis(400));
        assert_eq!(b.delay(10), Duration::from_secs(5));
        assert_eq!(b.delay(1000), Duration::from_secs(5));
    }

    #[test]
    fn reopens_after_n_failed_opens_and_keeps_ids_increasing() {
        let opens = Arc::new(AtomicU32::new(0));
        let o2 = opens.clone();
        let opener = move || {
            let k = o2.fetch_add(1, Ordering::SeqCst);
            if k < 3 {
                Err(Error::Source(format!("no device (try {k})")))
            } else {
                Ok(Flaky {
                    left: 2,
                    n: 0,
                    buf: vec![0; 3],
                })
            }
        };
        let mut src = Reconnecting::new(
            Flaky {
                left: 2,
                n: 0,
                buf: vec![0; 3],
            },
            opener,
            fast(),
        );
        let mut ids = Vec::new();
        for _ in 0..4 {
            let f = src.next_frame().unwrap().unwrap();
            assert_eq!(f.pixels[0], (f.id % 2) as u8);
            ids.push(f.id);
        }
        assert_eq!(ids, vec![0, 1, 2, 3]);
        assert_eq!(src.reconnects(), 1);
        // One read failure and three failed opens.
        assert_eq!(src.failures(), 4);
        assert_eq!(opens.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn gives_up_after_max_attempts_and_honours_stop() {
        let mut b = fast();
        b.max_attempts = 3;
        let opener = || -> Result<Flaky> { Err(Error::Source("gone".into())) };
        let mut src = Reconnecting::new(
            Flaky {
                left: 1,
                n: 0,
                buf: vec![0; 3],
            },
            opener,
            b,
        );
        assert!(src.next_frame().unwrap().is_some());
        let e = src.next_frame().unwrap_err().to_string();
        assert!(e.contains("after 3 attempts") && e.contains("gone"), "{e}");

        let b = fast();
        b.stop.store(true, Ordering::SeqCst);
        let opener = || -> Result<Flaky> { Err(Error::Source("gone".into())) };
        let mut src = Reconnecting::new(
            Flaky {
                left: 0,
                n: 0,
                buf: vec![],
            },
            opener,
            b,
        );
        let e = src.next_frame().unwrap_err().to_string();
        assert!(e.contains("stop requested"), "{e}");
    }

    /// Frames 0, 1, … where `bad(n)` gives an unusable one instead ([`Error::Frame`]).
    struct Corrupting {
        n: u64,
        bad: fn(u64) -> bool,
        buf: [u8; 3],
    }

    impl FrameSource for Corrupting {
        fn describe(&self) -> String {
            "corrupting".into()
        }
        fn next_frame(&mut self) -> Result<Option<Frame<'_>>> {
            let id = self.n;
            self.n += 1;
            if (self.bad)(id) {
                return Err(Error::Frame(format!("frame {id}: truncated JPEG")));
            }
            Ok(Some(Frame::rgb(id, id, 1, 1, &self.buf)))
        }
    }

    /// An unusable frame is skipped and counted, the device kept (no re-open, ids go on); a source
    /// whose frames are all unusable is re-opened after [`MAX_BAD_FRAMES_IN_A_ROW`] of them.
    #[test]
    fn unusable_frames_are_skipped_without_reopening_until_too_many_in_a_row() {
        let opens = Arc::new(AtomicU32::new(0));
        let o2 = opens.clone();
        let fresh = |bad: fn(u64) -> bool| Corrupting {
            n: 0,
            bad,
            buf: [7; 3],
        };
        let opener = move || {
            o2.fetch_add(1, Ordering::SeqCst);
            Ok(fresh(|n| n % 3 == 1))
        };
        let mut src = Reconnecting::new(fresh(|n| n % 3 == 1), opener, fast());
        let ids: Vec<u64> = (0..6)
            .map(|_| src.next_frame().unwrap().unwrap().id)
            .collect();
        assert_eq!(ids, [0, 2, 3, 5, 6, 8]);
        assert_eq!((src.reconnects(), src.failures()), (0, 3));
        assert_eq!(opens.load(Ordering::SeqCst), 0);

        // Everything unusable from frame 2 on: re-opened after the limit, and the fresh source's
        // frames arrive (ids after the last one delivered).
        let o3 = opens.clone();
        let opener = move || {
            o3.fetch_add(1, Ordering::SeqCst);
            Ok(fresh(|_| false))
        };
        let mut src = Reconnecting::new(fresh(|n| n >= 2), opener, fast());
        let ids: Vec<u64> = (0..4)
            .map(|_| src.next_frame().unwrap().unwrap().id)
            .collect();
        assert_eq!(ids, [0, 1, 2, 3]);
        assert_eq!(src.reconnects(), 1);
        assert_eq!(src.failures(), u64::from(MAX_BAD_FRAMES_IN_A_ROW));
        assert_eq!(opens.load(Ordering::SeqCst), 1);
    }

    /// Opens, then fails its first read.
    struct DeadOnArrival;

    impl FrameSource for DeadOnArrival {
        fn describe(&self) -> String {
            "dead on arrival".into()
        }
        fn next_frame(&mut self) -> Result<Option<Frame<'_>>> {
            Err(Error::Source("EIO".into()))
        }
    }

    /// A device that opens and fails at once is re-opened with a growing back-off, not at the
    /// first delay forever: over 1.5 s with delays from 20 ms doubling to 640 ms that is about 6
    /// opens (20 + 40 + … + 640 ms), where restarting at 20 ms each time made about 75.
    #[test]
    fn a_source_that_fails_at_once_backs_off_across_reopens() {
        let opens = Arc::new(AtomicU32::new(0));
        let o2 = opens.clone();
        let opener = move || {
            o2.fetch_add(1, Ordering::SeqCst);
            Ok(DeadOnArrival)
        };
        let backoff = Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(640),
            factor: 2.0,
            max_attempts: 0,
            stop: Arc::new(AtomicBool::new(false)),
        };
        let stop = backoff.stop.clone();
        let mut src = Reconnecting::new(DeadOnArrival, opener, backoff);
        let t = std::thread::spawn(move || src.next_frame().err().map(|e| e.to_string()));
        std::thread::sleep(Duration::from_millis(1500));
        stop.store(true, Ordering::SeqCst);
        let e = t.join().unwrap().unwrap();
        assert!(e.contains("stop requested"), "{e}");
        let n = opens.load(Ordering::SeqCst);
        assert!((1..=15).contains(&n), "{n} opens in 1.5 s");
    }

    /// The back-off keeps growing while re-opened sources fail early, and starts over once one
    /// has delivered [`HEALTHY_FRAMES`] frames.
    #[test]
    fn the_backoff_starts_over_after_a_healthy_source() {
        let opens = Arc::new(AtomicU32::new(0));
        let o2 = opens.clone();
        // Opens 0 and 1 deliver 1 frame, open 2 delivers enough to prove itself.
        let opener = move || {
            let k = o2.fetch_add(1, Ordering::SeqCst);
            Ok(Flaky {
                left: if k < 2 { 1 } else { HEALTHY_FRAMES + 1 },
                n: 0,
                buf: vec![0; 3],
            })
        };
        let mut src = Reconnecting::new(
            Flaky {
                left: 1,
                n: 0,
                buf: vec![0; 3],
            },
            opener,
            // A long `max`, so that only the frame count can end the probation.
            Backoff {
                max: Duration::from_secs(600),
                ..fast()
            },
        );
        let mut steps = Vec::new();
        for _ in 0..(3 + HEALTHY_FRAMES) {
            src.next_frame().unwrap().unwrap();
            steps.push(src.step);
        }
        // Frame 0 from the first source; one frame after each of two re-opens (steps 1, 2); then
        // the third re-open's frames, the step back to 0 at its HEALTHY_FRAMES-th.
        let mut want = vec![0, 1, 2];
        want.extend(std::iter::repeat_n(3, HEALTHY_FRAMES as usize - 1));
        want.push(0);
        assert_eq!(steps, want);
        assert_eq!(opens.load(Ordering::SeqCst), 3);
    }

    /// Delivers 1×1 frames in whichever of RGB and YUYV it was last allowed, then fails.
    struct Layouts {
        accepted: LayoutSet,
        left: u32,
        buf: [u8; 3],
    }

    impl FrameSource for Layouts {
        fn describe(&self) -> String {
            "layouts".into()
        }
        fn accept_layouts(&mut self, accepted: LayoutSet) {
            self.accepted = accepted;
        }
        fn next_frame(&mut self) -> Result<Option<Frame<'_>>> {
            if self.left == 0 {
                return Err(Error::Source("unplugged".into()));
            }
            self.left -= 1;
            let layout = if self.accepted.contains(super::super::Layout::Yuyv) {
                super::super::Layout::Bgr
            } else {
                super::super::Layout::Rgb
            };
            Ok(Some(Frame {
                id: 0,
                timestamp_ns: 0,
                width: 1,
                height: 1,
                layout,
                pixels: &self.buf,
            }))
        }
    }

    #[test]
    fn a_reopened_source_keeps_the_layouts_the_consumer_accepts() {
        let fresh = || Layouts {
            accepted: LayoutSet::RGB,
            left: 1,
            buf: [1, 2, 3],
        };
        let mut r = Reconnecting::new(fresh(), move || Ok(fresh()), fast());
        r.accept_layouts(LayoutSet::of(&[super::super::Layout::Yuyv]));
        for _ in 0..3 {
            let f = r.next_frame().unwrap().unwrap();
            assert_eq!(f.layout, super::super::Layout::Bgr);
        }
        assert_eq!(r.reconnects, 2);
    }
}
