//! Opening the source and the capture thread. The capture thread reads the source into a hand-off:
//! latest frame wins for cameras and paced sources (stale frames are dropped and counted), every frame
//! in order for files. Frame buffers circulate between the two threads, so steady state allocates
//! nothing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::camera::convert::resize_nearest;
use crate::camera::latest::{LatestSlot, Take};
use crate::camera::reconnect::MAX_BAD_FRAMES_IN_A_ROW;
use crate::camera::{
    open_source, Frame, FrameSource, Layout, LayoutSet, SourceHealth, SourceOptions, VideoDecode,
};

/// One captured frame, circulating between the capture thread and the loop.
#[derive(Debug, Default)]
pub struct Captured {
    /// Frame number from the source.
    pub id: u64,
    /// Capture time.
    pub timestamp_ns: u64,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// How `pixels` is laid out: RGB, or a layout the stream accepted from its source.
    pub layout: Layout,
    /// Tight pixels, `height × width × layout.bytes_per_pixel()`.
    pub pixels: Vec<u8>,
}

impl Captured {
    /// Copies a source frame into this buffer, converted to RGB unless `accepted` holds its layout
    /// (no allocation once the buffer has the frame's size). An error for a frame whose pixels do not
    /// fill its size.
    pub fn fill(&mut self, f: &Frame<'_>, accepted: LayoutSet) -> crate::Result<()> {
        if f.width == 0 || f.height == 0 {
            // A driver's 0x0 frame would size a stream that no preprocessing can take.
            return Err(crate::Error::Frame(format!(
                "{} frame {}x{} has no pixels",
                f.layout.name(),
                f.width,
                f.height
            )));
        }
        if accepted.contains(f.layout) {
            if Some(f.pixels.len()) != f.layout.frame_bytes(f.width, f.height) {
                return Err(crate::Error::Frame(format!(
                    "{} frame {}x{} of {} bytes",
                    f.layout.name(),
                    f.width,
                    f.height,
                    f.pixels.len()
                )));
            }
            self.pixels.clear();
            self.pixels.extend_from_slice(f.pixels);
            self.layout = f.layout;
        } else {
            f.to_rgb(&mut self.pixels)?;
            self.layout = Layout::Rgb;
        }
        // The header last: a refused frame leaves the buffer's description as it was.
        self.id = f.id;
        self.timestamp_ns = f.timestamp_ns;
        self.width = f.width;
        self.height = f.height;
        Ok(())
    }

    /// Copies a source frame at `width × height`, resampled (nearest neighbour, into RGB) when the
    /// source delivers another size (a camera renegotiated its resolution): the stream keeps the
    /// geometry its engines, ring and overlays were set up for. Returns whether it resampled.
    pub fn fill_at(
        &mut self,
        f: &Frame<'_>,
        width: u32,
        height: u32,
        accepted: LayoutSet,
    ) -> crate::Result<bool> {
        if (f.width, f.height) == (width, height) {
            self.fill(f, accepted)?;
            return Ok(false);
        }
        self.id = f.id;
        self.timestamp_ns = f.timestamp_ns;
        self.width = width;
        self.height = height;
        self.layout = Layout::Rgb;
        resize_nearest(f, width, height, &mut self.pixels)?;
        Ok(true)
    }

    /// The frame as RGB: its own pixels when it is RGB, else converted into `scratch`.
    pub fn rgb<'a>(&'a self, scratch: &'a mut Vec<u8>) -> crate::Result<&'a [u8]> {
        if self.layout == Layout::Rgb {
            return Ok(&self.pixels);
        }
        Frame {
            id: self.id,
            timestamp_ns: self.timestamp_ns,
            width: self.width,
            height: self.height,
            layout: self.layout,
            pixels: &self.pixels,
        }
        .to_rgb(scratch)?;
        Ok(scratch)
    }
}

/// What the capture thread has seen of the source's health, readable from the loop.
#[derive(Debug, Default)]
struct HealthCell {
    reconnects: AtomicU64,
    failures: AtomicU64,
    longest_ns: AtomicU64,
    total_ns: AtomicU64,
    resized: AtomicU64,
    /// The error that ended the capture, if one did (not the source's normal end).
    failed: std::sync::Mutex<Option<String>>,
}

impl HealthCell {
    fn store(&self, h: SourceHealth) {
        self.reconnects.store(h.reconnects, Ordering::Relaxed);
        self.failures.store(h.failures, Ordering::Relaxed);
        self.longest_ns
            .store(h.longest_outage.as_nanos() as u64, Ordering::Relaxed);
        self.total_ns
            .store(h.total_outage.as_nanos() as u64, Ordering::Relaxed);
    }

    fn set_failed(&self, why: String) {
        if let Ok(mut f) = self.failed.lock() {
            f.get_or_insert(why);
        }
    }

    fn load(&self) -> SourceHealth {
        SourceHealth {
            reconnects: self.reconnects.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            longest_outage: Duration::from_nanos(self.longest_ns.load(Ordering::Relaxed)),
            total_outage: Duration::from_nanos(self.total_ns.load(Ordering::Relaxed)),
        }
    }
}

/// What the capture thread works with besides the source and the buffer.
struct CaptureState {
    /// The stream's frame size.
    size: (u32, u32),
    /// Layouts the stream takes from its source as they are (the rest is converted to RGB).
    accepted: LayoutSet,
    /// Size of the last frame the source delivered (to log each change once).
    last_size: (u32, u32),
    /// Frames skipped because their pixels did not fill their size.
    malformed: u64,
    health: Arc<HealthCell>,
    stop: Arc<AtomicBool>,
}

/// Reads the next frame into `buf` at the stream's size, logging the first frame of each new
/// source size, and publishes the source's health. A frame whose pixels do not fill its size is
/// counted as a failure, logged and skipped. `Err(None)`: end of stream (or stop).
fn capture_one(
    src: &mut dyn FrameSource,
    buf: &mut Captured,
    st: &mut CaptureState,
) -> Result<(), Option<crate::Error>> {
    loop {
        let r = match src.next_frame() {
            Ok(Some(f)) => {
                if (f.width, f.height) != st.last_size {
                    st.last_size = (f.width, f.height);
                    if st.last_size != st.size {
                        log::warn!(
                            "the source now delivers {}x{} frames; resampling them to the stream's {}x{}",
                            f.width,
                            f.height,
                            st.size.0,
                            st.size.1
                        );
                    }
                }
                match buf.fill_at(&f, st.size.0, st.size.1, st.accepted) {
                    Ok(resized) => {
                        if resized {
                            st.health.resized.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(true)
                    }
                    Err(e) => {
                        st.malformed += 1;
                        if st.malformed <= 3 || st.malformed.is_multiple_of(1000) {
                            log::error!(
                                "frame {} skipped: {e} ({} malformed frames so far)",
                                f.id,
                                st.malformed
                            );
                        }
                        Ok(false)
                    }
                }
            }
            Ok(None) => Err(None),
            // One unusable frame (a source that skips them itself never reports one).
            Err(crate::Error::Frame(why)) => {
                st.malformed += 1;
                if st.malformed <= 3 || st.malformed.is_multiple_of(1000) {
                    log::error!(
                        "frame skipped: {why} ({} malformed frames so far)",
                        st.malformed
                    );
                }
                Ok(false)
            }
            Err(e) => Err(Some(e)),
        };
        let mut h = src.health();
        h.failures += st.malformed;
        st.health.store(h);
        match r {
            Ok(true) => return Ok(()),
            Ok(false) if st.stop.load(Ordering::Relaxed) => return Err(None),
            Ok(false) => {}
            Err(e) => return Err(e),
        }
    }
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

/// An opened source whose first frame has been read (it sizes the engines); not yet capturing.
pub struct OpenedSource {
    src: Box<dyn FrameSource>,
    first: Captured,
    /// Unusable frames skipped before `first` (counted with the capture's malformed frames).
    skipped: u64,
    /// What the source says it is (for logs and the summary).
    pub description: String,
    /// Frames in the source when known (files).
    pub len: Option<u64>,
    /// Files and folders (frames in order unless `realtime`).
    pub is_file: bool,
    /// Stops the capture thread, and a source's re-open back-off with it.
    stop: Arc<AtomicBool>,
}

impl OpenedSource {
    /// Opens `source` and reads its first frame. Synthetic frames arrive at `fps` like a camera's;
    /// files only when `realtime`.
    pub fn open(source: &str, fps: u32, realtime: bool) -> anyhow::Result<Self> {
        Self::open_with(source, fps, realtime, &VideoDecode::InProcess)
    }

    /// [`OpenedSource::open`], with video files decoded as `decode` says.
    pub fn open_with(
        source: &str,
        fps: u32,
        realtime: bool,
        decode: &VideoDecode,
    ) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (mut src, len, is_file) = open(source, fps, realtime, decode, stop.clone())
            .with_context(|| format!("opening source '{source}'"))?;
        let description = src.describe();
        let (first, skipped) = first_frame(&mut *src, source)?;
        Ok(OpenedSource {
            src,
            first,
            skipped,
            description,
            len,
            is_file,
            stop,
        })
    }

    /// Wraps a source the caller opened (a camera of its own, a test source; wrap it in
    /// [`crate::camera::reconnect::Reconnecting`] to have it re-opened after failures) and reads
    /// its first frame. `len`: frames when known; `is_file`: deliver every frame in order.
    pub fn from_source(
        mut src: Box<dyn FrameSource>,
        len: Option<u64>,
        is_file: bool,
    ) -> anyhow::Result<Self> {
        let description = src.describe();
        let (first, skipped) = first_frame(&mut *src, &description)?;
        Ok(OpenedSource {
            src,
            first,
            skipped,
            description,
            len,
            is_file,
            // A caller's source has its own back-off (if any); this only stops the capture thread.
            stop: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Width and height of the first frame (the size the stream is set up for).
    pub fn frame_size(&self) -> (u32, u32) {
        (self.first.width, self.first.height)
    }

    /// Starts the capture thread. `lockstep`: every frame in order (the thread waits for the loop);
    /// otherwise the latest frame wins. Frames arrive as RGB.
    pub fn start(self, lockstep: bool) -> anyhow::Result<Capture> {
        self.start_accepting(lockstep, LayoutSet::RGB)
    }

    /// [`OpenedSource::start`], with frames in any layout of `accepted` handed over as the source
    /// delivers them (the first frame, read at open, is RGB).
    pub fn start_accepting(self, lockstep: bool, accepted: LayoutSet) -> anyhow::Result<Capture> {
        let stop = self.stop;
        let captured = Arc::new(AtomicU64::new(0));
        let health = Arc::new(HealthCell::default());
        let (feed, thread) = spawn_capture(
            self.src,
            (self.first, self.skipped),
            lockstep,
            accepted,
            stop.clone(),
            captured.clone(),
            health.clone(),
        )?;
        Ok(Capture {
            feed,
            thread: Some(thread),
            stop,
            captured,
            health,
        })
    }
}

/// Reads the first usable frame of `src` (named `name` in errors). Unusable frames
/// ([`crate::Error::Frame`]: an image of a folder that does not decode, a truncated camera buffer;
/// or a frame without pixels) are skipped, logged and counted, as they are later in the stream, up
/// to [`MAX_BAD_FRAMES_IN_A_ROW`] in a row; returns the frame and the count skipped.
fn first_frame(src: &mut dyn FrameSource, name: &str) -> anyhow::Result<(Captured, u64)> {
    let mut skipped = 0u64;
    loop {
        let why = match src.next_frame() {
            Ok(Some(f)) => {
                let mut c = Captured::default();
                match c.fill(&f, LayoutSet::RGB) {
                    Ok(()) => return Ok((c, skipped)),
                    Err(e) => e.to_string(),
                }
            }
            Ok(None) if skipped == 0 => bail!("source '{name}' delivered no frame"),
            Ok(None) => {
                bail!("source '{name}' delivered no usable frame ({skipped} unusable)")
            }
            Err(crate::Error::Frame(why)) => why,
            Err(e) => return Err(e.into()),
        };
        skipped += 1;
        log::warn!("source '{name}': first frame skipped: {why}");
        if skipped >= u64::from(MAX_BAD_FRAMES_IN_A_ROW) {
            bail!("source '{name}': none of its first {skipped} frames is usable; the last: {why}");
        }
    }
}

/// The text of a panic's payload (`panic!` with a message gives a `&str` or a `String`).
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// Runs a capture thread's loop, containing a panic in it (in the source: a demuxer's `unwrap` on
/// a malformed file): the panic is recorded as the capture's failure before the caller closes the
/// hand-off, so that the loop reads a failed source (and the run its error), never a normal end or
/// a slot left open.
fn contain_panic(health: &HealthCell, body: impl FnOnce()) {
    if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
        let why = format!("capture thread panicked: {}", panic_message(&*p));
        log::error!("{why}; stopping");
        health.set_failed(why);
    }
}

/// What a capture thread saw, from [`Capture::finish`].
#[derive(Debug, Clone, Copy, Default)]
pub struct CaptureTotals {
    /// Frames the source delivered.
    pub captured: u64,
    /// Frames dropped because the loop was busy.
    pub dropped: u64,
    /// The source's re-opens, failures and outages.
    pub health: SourceHealth,
    /// Frames resampled after a resolution change.
    pub resized: u64,
}

/// A running capture thread and its hand-off.
pub struct Capture {
    feed: Feed,
    thread: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    captured: Arc<AtomicU64>,
    health: Arc<HealthCell>,
}

impl Capture {
    /// The source's re-opens, failures and outages so far.
    pub fn health(&self) -> SourceHealth {
        self.health.load()
    }

    /// The error that ended the source, once it has (`None` while it runs, and after a normal end).
    pub fn failure(&self) -> Option<String> {
        self.health.failed.lock().ok().and_then(|f| f.clone())
    }

    /// Frames resampled to the stream's size because the source changed its resolution.
    pub fn resized(&self) -> u64 {
        self.health.resized.load(Ordering::Relaxed)
    }

    /// Swaps the next frame into `buf` (its old buffer goes back to the capture thread), waiting up
    /// to `timeout`.
    pub fn take(&self, buf: &mut Captured, timeout: Duration) -> Take {
        self.feed.take(buf, timeout)
    }

    /// Frames the source delivered so far.
    pub fn captured(&self) -> u64 {
        self.captured.load(Ordering::Relaxed)
    }

    /// Frames dropped because the loop was busy (latest frame wins; 0 in lockstep).
    pub fn dropped(&self) -> u64 {
        self.feed.dropped()
    }

    /// Stops the capture thread, waits for it, and returns what it saw (the source's health is read
    /// after the thread ends, so a re-open abandoned by the stop is counted).
    pub fn finish(mut self) -> CaptureTotals {
        let dropped = self.dropped();
        self.shutdown();
        CaptureTotals {
            captured: self.captured(),
            dropped,
            health: self.health(),
            resized: self.resized(),
        }
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Unblocks a lockstep capture thread waiting to hand over a frame or for a free buffer.
        self.feed = Feed::Latest(Arc::new(LatestSlot::new(Captured::default())));
        if let Some(h) = self.thread.take() {
            if h.join().is_err() {
                log::error!("capture thread panicked");
            }
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.shutdown();
        }
    }
}

/// Opens the source; returns it, its length when known (files), and whether it is a file source.
fn open(
    source: &str,
    fps: u32,
    realtime: bool,
    decode: &VideoDecode,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<(Box<dyn FrameSource>, Option<u64>, bool)> {
    let mut opts = SourceOptions {
        fps: fps.max(1),
        decode: decode.clone(),
        // Synthetic frames arrive at `fps` like a camera's (also behind a fault injector); files
        // only when asked.
        realtime: realtime || crate::camera::is_synthetic(source),
        ..SourceOptions::default()
    };
    opts.backoff.stop = stop;
    // Recordings (folders, video files, raw frames in a regular file) are delivered every frame, in
    // order; everything else is a camera.
    let src = open_source(source, &opts)?;
    let n = src.file_frames();
    Ok((src, n, n.is_some()))
}

/// Starts the capture thread; `first` is the frame already read to size the engines, and the
/// count of unusable frames skipped before it.
fn spawn_capture(
    mut src: Box<dyn FrameSource>,
    (first, skipped): (Captured, u64),
    lockstep: bool,
    accepted: LayoutSet,
    stop: Arc<AtomicBool>,
    captured: Arc<AtomicU64>,
    health: Arc<HealthCell>,
) -> anyhow::Result<(Feed, JoinHandle<()>)> {
    let len = first.pixels.len();
    let size = (first.width, first.height);
    let mut st = CaptureState {
        size,
        accepted,
        last_size: size,
        malformed: skipped,
        health,
        stop: stop.clone(),
    };
    src.accept_layouts(accepted);
    let blank = || Captured {
        pixels: Vec::with_capacity(len),
        ..Default::default()
    };
    captured.store(1, Ordering::Relaxed);
    let failure = st.health.clone();
    let stopping = stop.clone();
    let ended = move |e: Option<crate::Error>| match e {
        // An error once the capture is being stopped (a decoder process killed by the same
        // Ctrl-C, a pipe closed by the shutdown) is the end the stop asked for, not a failure.
        Some(e) if stopping.load(Ordering::Relaxed) => {
            log::info!("source ended while stopping: {e}")
        }
        Some(e) => {
            log::error!("source failed: {e}; stopping");
            failure.set_failed(e.to_string());
        }
        None => log::info!("end of stream"),
    };
    let health = st.health.clone();
    if lockstep {
        let (ftx, frx) = sync_channel::<Captured>(1);
        let (btx, brx) = sync_channel::<Captured>(2);
        let _ = btx.try_send(blank());
        ftx.send(first).ok();
        let h = std::thread::Builder::new()
            .name("capture".into())
            .spawn(move || {
                // The loop borrows the frame sender: it is dropped (the loop reads Closed) only
                // after a panic has been recorded.
                contain_panic(&health, || loop {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let Ok(mut buf) = brx.recv() else { break };
                    if let Err(e) = capture_one(&mut *src, &mut buf, &mut st) {
                        break ended(e);
                    }
                    captured.fetch_add(1, Ordering::Relaxed);
                    if ftx.send(buf).is_err() {
                        break;
                    }
                });
                drop(ftx);
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
            contain_panic(&health, || loop {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if let Err(e) = capture_one(&mut *src, &mut buf, &mut st) {
                    break ended(e);
                }
                captured.fetch_add(1, Ordering::Relaxed);
                s2.publish(&mut buf);
            });
            // Closed in every case, a panic included: the loop must not wait for frames forever.
            s2.close();
        })?;
    Ok((Feed::Latest(slot), h))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// 2x1 RGB frames; `script(n)` says what call `n` does.
    struct Scripted {
        n: u64,
        script: fn(u64) -> Step,
        buf: [u8; 6],
    }

    enum Step {
        Frame,
        Bad,
        Panic,
        End,
    }

    impl FrameSource for Scripted {
        fn describe(&self) -> String {
            "scripted".into()
        }

        fn next_frame(&mut self) -> crate::Result<Option<Frame<'_>>> {
            let n = self.n;
            self.n += 1;
            match (self.script)(n) {
                Step::Frame => Ok(Some(Frame::rgb(n, n, 2, 1, &self.buf))),
                Step::Bad => Err(crate::Error::Frame(format!("image {n} does not decode"))),
                Step::Panic => panic!("boom at frame {n}"),
                Step::End => Ok(None),
            }
        }
    }

    fn scripted(script: fn(u64) -> Step) -> Box<dyn FrameSource> {
        Box::new(Scripted {
            n: 0,
            script,
            buf: [9; 6],
        })
    }

    /// Takes frames until the hand-off closes (bounded: a slot left open fails the test).
    fn drain(c: &Capture) -> Vec<u64> {
        let mut buf = Captured::default();
        let mut ids = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match c.take(&mut buf, Duration::from_millis(50)) {
                Take::Fresh => ids.push(buf.id),
                Take::Closed => return ids,
                Take::Timeout => assert!(Instant::now() < deadline, "never closed: {ids:?}"),
            }
        }
    }

    /// A panic in the source on frame 3 closes the hand-off with the panic as the capture's
    /// failure, in both modes: the loop reads a failed source, not a normal end (lockstep) or
    /// nothing at all (latest frame wins).
    #[test]
    fn a_panicking_source_fails_the_capture_in_both_modes() {
        for lockstep in [true, false] {
            let src = scripted(|n| if n == 3 { Step::Panic } else { Step::Frame });
            let c = OpenedSource::from_source(src, None, lockstep)
                .unwrap()
                .start(lockstep)
                .unwrap();
            let ids = drain(&c);
            if lockstep {
                assert_eq!(ids, [0, 1, 2]);
            }
            let why = c.failure().expect("the panic is the capture's failure");
            assert_eq!(
                why, "capture thread panicked: boom at frame 3",
                "{lockstep}"
            );
            c.finish();
        }
    }

    /// Unusable first frames (an image folder whose first file does not decode) are skipped and
    /// counted, not the end of the start; too many in a row are a clear error.
    #[test]
    fn unusable_first_frames_are_skipped_and_counted() {
        let src = scripted(|n| match n {
            0 | 1 => Step::Bad,
            2..=4 => Step::Frame,
            _ => Step::End,
        });
        let opened = OpenedSource::from_source(src, Some(5), true).unwrap();
        assert_eq!(opened.frame_size(), (2, 1));
        let c = opened.start(true).unwrap();
        assert_eq!(drain(&c), [2, 3, 4]);
        assert_eq!(c.failure(), None);
        assert_eq!(c.finish().health.failures, 2);

        let src = scripted(|_| Step::Bad);
        let e = OpenedSource::from_source(src, None, false)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("none of its first 30 frames") && e.contains("image 29"),
            "{e}"
        );
        let src = scripted(|n| if n == 0 { Step::Bad } else { Step::End });
        let e = OpenedSource::from_source(src, None, false)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("no usable frame (1 unusable)"), "{e}");
    }

    /// A frame without pixels (a driver's 0x0) or whose bytes do not fill its size is refused
    /// before the buffer is touched.
    #[test]
    fn empty_and_short_frames_are_refused() {
        let mut c = Captured::default();
        c.fill(&Frame::rgb(0, 0, 2, 1, &[1; 6]), LayoutSet::RGB)
            .unwrap();
        for f in [
            Frame::rgb(1, 0, 0, 0, &[]),
            Frame::rgb(1, 0, 0, 5, &[]),
            Frame::rgb(1, 0, 4, 1, &[1; 6]),
        ] {
            assert!(c.fill(&f, LayoutSet::RGB).is_err(), "{f:?}");
            assert_eq!((c.id, c.width, c.height, c.pixels.len()), (0, 2, 1, 6));
        }
    }
}
