//! Streams whose source is not there at start-up: a camera still enumerating when the service
//! starts, one unplugged, a ROS 2 topic nobody publishes yet. The run starts with the sources that
//! opened; each missing one is opened again in a thread of its own (with back-off, for our own
//! sources) and its stream joins the run when its first frame arrives ([`Joining::poll`], between two
//! frames). A source whose frames resize to an input size the run has no engines for waits, opened,
//! while they are exported in the background (engines exported from the weights), or cannot join
//! (engine directories of other sizes). A source that cannot exist (a file that is not there) still
//! fails the start-up.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::engines::SourceInput;
use super::sink::Sink;
use super::source::OpenedSource;
use super::template::JoinTemplate;
use crate::camera::reconnect::Backoff;
use crate::camera::{FrameSource, VideoDecode};

/// Whether a source spec names a camera that can appear later (a V4L2 device of a build that
/// reads them, a well-formed `gst:`/`csi:` pipeline), rather than a recording or a generator, which
/// either exists at start-up or never will, or a spec that cannot work in this build.
pub fn may_appear_later(spec: &str) -> bool {
    if crate::camera::is_v4l2_name(spec) {
        return cfg!(feature = "camera-v4l");
    }
    if spec.starts_with("nokhwa:") {
        return cfg!(feature = "camera-nokhwa");
    }
    #[cfg(unix)]
    {
        use crate::camera::pipe::{csi_pipeline, GstPipeline};
        let opts = crate::camera::SourceOptions::default();
        if let Some(rest) = spec.strip_prefix("gst:") {
            return GstPipeline::parse_spec(rest, &opts).is_ok();
        }
        if let Some(rest) = spec.strip_prefix("csi:") {
            return csi_pipeline(rest, &opts).is_ok();
        }
    }
    false
}

/// A stream waiting for its source, with what it gets when it joins.
pub struct Joining {
    /// The stream's index (its place among the configured sources).
    pub index: usize,
    /// The source as configured (for logs and errors).
    pub label: String,
    /// Since when it has been waiting.
    pub since: Instant,
    /// Its mask ring's name, when named.
    pub ring: Option<String>,
    /// Sinks added while it waits.
    pub sinks: Vec<Box<dyn Sink>>,
    /// What it starts with when commands addressed to it alone arrived while it waits (else the
    /// runtime's template for every joining stream).
    pub template: Option<JoinTemplate>,
    /// The source, once it opened with frames of an input size the run is still exporting engines
    /// for (in the background; the stream joins when they are ready).
    /// (Boxed: most streams never park, and the opened source is large.)
    pub(super) parked: Option<Box<(OpenedSource, SourceInput)>>,
    rx: Receiver<anyhow::Result<OpenedSource>>,
    /// Stops the opener (ignored by a caller's source, which has its own stop).
    stop: Arc<AtomicBool>,
}

/// What [`Joining::poll`] found.
pub enum Polled {
    /// Still waiting.
    Waiting,
    /// The source opened and delivered its first frame.
    Opened(OpenedSource),
    /// The opener gave up (a caller's source ended before its first frame).
    Failed(anyhow::Error),
}

impl Joining {
    /// Re-opens `spec` in a thread until it opens or the run stops: delays from `backoff`, a log
    /// line on the 1st, 2nd, 4th, 8th, … failure.
    pub fn reopen(
        index: usize,
        spec: &str,
        (fps, realtime): (u32, bool),
        decode: VideoDecode,
        backoff: Backoff,
    ) -> anyhow::Result<Self> {
        let stop = backoff.stop.clone();
        let (tx, rx) = sync_channel(1);
        let s = spec.to_string();
        std::thread::Builder::new()
            .name(format!("open-{index}"))
            .spawn(move || {
                let mut attempt = 0u32;
                loop {
                    let wake = Instant::now() + backoff.delay(attempt);
                    while Instant::now() < wake {
                        if backoff.stop.load(Ordering::Relaxed) {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    match OpenedSource::open_with(&s, fps, realtime, &decode) {
                        Ok(src) => {
                            log::info!("stream {index}: {s} opened after {} attempt(s)", attempt + 1);
                            let _ = tx.send(Ok(src));
                            return;
                        }
                        Err(e) => {
                            attempt += 1;
                            if attempt.is_power_of_two() {
                                log::warn!(
                                    "stream {index}: {s} still cannot be opened ({e:#}); attempt {attempt}, retrying"
                                );
                            }
                        }
                    }
                }
            })?;
        Ok(Self::new(index, spec, rx, stop))
    }

    /// Reads the first frame of a caller's source in a thread (it waits as long as the source
    /// does; the source's own stop flag ends it).
    pub fn first_frame(
        index: usize,
        label: &str,
        src: Box<dyn FrameSource>,
    ) -> anyhow::Result<Self> {
        let (tx, rx) = sync_channel(1);
        std::thread::Builder::new()
            .name(format!("first-{index}"))
            .spawn(move || {
                let _ = tx.send(OpenedSource::from_source(src, None, false));
            })?;
        Ok(Self::new(
            index,
            label,
            rx,
            Arc::new(AtomicBool::new(false)),
        ))
    }

    fn new(
        index: usize,
        label: &str,
        rx: Receiver<anyhow::Result<OpenedSource>>,
        stop: Arc<AtomicBool>,
    ) -> Self {
        Joining {
            index,
            label: label.to_string(),
            since: Instant::now(),
            ring: None,
            sinks: Vec::new(),
            template: None,
            parked: None,
            rx,
            stop,
        }
    }

    /// Whether the source has opened, without waiting.
    pub fn poll(&self) -> Polled {
        match self.rx.try_recv() {
            Ok(Ok(src)) => Polled::Opened(src),
            Ok(Err(e)) => Polled::Failed(e),
            Err(TryRecvError::Empty) => Polled::Waiting,
            Err(TryRecvError::Disconnected) => {
                Polled::Failed(anyhow::anyhow!("the opener stopped"))
            }
        }
    }

    /// Waits up to `timeout` for the source (start-up: the first source to open sizes the
    /// engines).
    pub fn wait(&self, timeout: Duration) -> Polled {
        match self.rx.recv_timeout(timeout) {
            Ok(Ok(src)) => Polled::Opened(src),
            Ok(Err(e)) => Polled::Failed(e),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Polled::Waiting,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                Polled::Failed(anyhow::anyhow!("the opener stopped"))
            }
        }
    }
}

impl Drop for Joining {
    fn drop(&mut self) {
        // The opener notices within its next back-off step; it is not joined (an open in progress
        // may take seconds), and a source it opens after this is dropped with the channel.
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cameras_may_appear_later_recordings_and_bad_specs_may_not() {
        let v4l = cfg!(feature = "camera-v4l");
        for s in ["/dev/video2", "/dev/v4l/by-id/usb-cam-video-index0"] {
            assert_eq!(may_appear_later(s), v4l, "{s}");
        }
        for s in [
            "gst:videotestsrc",
            "gst:64x32:fakesrc",
            "csi:0",
            "csi:1:1280x720@30",
        ] {
            assert!(may_appear_later(s), "{s}");
        }
        for s in [
            "clip.mp4",
            "frames/",
            "synthetic:64x32",
            "raw:4x2:rgb:-",
            "/dev/shm/clip.mp4",
            "gst:",
            "csi:x",
            "csi:0:huge",
        ] {
            assert!(!may_appear_later(s), "{s}");
        }
    }
}
