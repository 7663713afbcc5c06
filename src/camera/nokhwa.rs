//! Camera capture through `nokhwa` (feature `camera-nokhwa`), for development machines without V4L2
//! (macOS AVFoundation, Windows Media Foundation). On Linux prefer `/dev/videoN` (the `v4l2` module):
//! nokhwa's Linux backend is the same `v4l` crate with more layers.
//!
//! nokhwa's `Camera` is not `Send` on every platform, so it lives on its own capture thread; frames come
//! over a [`LatestSlot`] (newest frame wins), which also makes this source drop stale frames itself.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nokhwa::pixel_format::RgbFormat;
use nokhwa::utils::{
    CameraFormat, CameraIndex, FrameFormat, RequestedFormat, RequestedFormatType, Resolution,
};
use nokhwa::Camera;

use super::{Frame, FrameSource, SourceOptions};
use crate::camera::latest::{LatestSlot, Take};
use crate::{Error, Result};

/// How long `next_frame` waits for the camera before reporting a failure.
const FRAME_TIMEOUT: Duration = Duration::from_secs(3);
/// How long opening waits for the camera's answer.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Frames in a row that do not decode after which the camera counts as failed (one bad frame is
/// skipped and counted).
const MAX_UNDECODABLE_IN_A_ROW: u32 = super::reconnect::MAX_BAD_FRAMES_IN_A_ROW;

/// One captured frame with its capture time.
#[derive(Debug, Default)]
struct Captured {
    timestamp_ns: u64,
    rgb: Vec<u8>,
}

/// A nokhwa camera on a capture thread.
pub struct NokhwaSource {
    index: u32,
    width: u32,
    height: u32,
    fps: u32,
    slot: Arc<LatestSlot<Captured>>,
    error: Arc<Mutex<Option<String>>>,
    /// Frames that did not decode (skipped), reported as failures in [`FrameSource::health`].
    undecodable: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    current: Captured,
    next_id: u64,
}

impl NokhwaSource {
    /// Opens camera `index` asking for the format closest to `opts` (decodable to RGB), and starts
    /// capturing.
    pub fn open(index: u32, opts: &SourceOptions) -> Result<Self> {
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<Result<(u32, u32, u32)>>(1);
        let slot = Arc::new(LatestSlot::new(Captured::default()));
        let error = Arc::new(Mutex::new(None));
        let stop = Arc::new(AtomicBool::new(false));
        let (w, h, fps) = (opts.width, opts.height, opts.fps);
        let undecodable = Arc::new(AtomicU64::new(0));
        let (slot2, error2, stop2) = (slot.clone(), error.clone(), stop.clone());
        let undecodable2 = undecodable.clone();
        let thread = std::thread::Builder::new()
            .name(format!("nokhwa-{index}"))
            .spawn(move || {
                let want = CameraFormat::new(Resolution::new(w, h), FrameFormat::YUYV, fps);
                let requested =
                    RequestedFormat::new::<RgbFormat>(RequestedFormatType::Closest(want));
                let mut cam = match Camera::new(CameraIndex::Index(index), requested) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx
                            .send(Err(Error::Source(format!("nokhwa camera {index}: {e}"))));
                        return;
                    }
                };
                if let Err(e) = cam.open_stream() {
                    let _ = ready_tx.send(Err(Error::Source(format!(
                        "nokhwa camera {index}: open stream: {e}"
                    ))));
                    return;
                }
                let res = cam.resolution();
                let (cw, ch) = (res.width(), res.height());
                let bytes = crate::camera::Layout::Rgb
                    .frame_bytes(cw, ch)
                    .filter(|&n| n > 0);
                let Some(bytes) = bytes else {
                    let _ = cam.stop_stream();
                    let _ = ready_tx.send(Err(Error::Source(format!(
                        "nokhwa camera {index}: unusable frame size {cw}x{ch}"
                    ))));
                    return;
                };
                if ready_tx.send(Ok((cw, ch, cam.frame_rate()))).is_err() {
                    // Opening gave up waiting (its timeout): nobody will read this camera.
                    let _ = cam.stop_stream();
                    return;
                }
                let start = Instant::now();
                let mut buf = Captured {
                    timestamp_ns: 0,
                    rgb: vec![0; bytes],
                };
                let mut bad_in_a_row = 0u32;
                while !stop2.load(Ordering::Relaxed) {
                    // A capture error is the camera's; a frame that does not decode is that
                    // frame's only, skipped and counted like a V4L2 camera's bad frame.
                    let frame = match cam.frame() {
                        Ok(f) => f,
                        Err(e) => {
                            if let Ok(mut g) = error2.lock() {
                                *g = Some(format!("nokhwa camera {index}: {e}"));
                            }
                            break;
                        }
                    };
                    buf.timestamp_ns = start.elapsed().as_nanos() as u64;
                    match frame.decode_image_to_buffer::<RgbFormat>(&mut buf.rgb) {
                        Ok(()) => {
                            bad_in_a_row = 0;
                            slot2.publish(&mut buf);
                            if buf.rgb.len() != bytes {
                                buf.rgb.resize(bytes, 0);
                            }
                        }
                        Err(e) => {
                            let n = undecodable2.fetch_add(1, Ordering::Relaxed) + 1;
                            bad_in_a_row += 1;
                            if n <= 3 || n % 1000 == 0 {
                                log::warn!(
                                    "nokhwa camera {index}: frame skipped: {e} ({n} so far)"
                                );
                            }
                            if bad_in_a_row >= MAX_UNDECODABLE_IN_A_ROW {
                                if let Ok(mut g) = error2.lock() {
                                    *g = Some(format!(
                                        "nokhwa camera {index}: {bad_in_a_row} frames in a row do not decode; the last: {e}"
                                    ));
                                }
                                break;
                            }
                        }
                    }
                }
                let _ = cam.stop_stream();
                slot2.close();
            })
            .map_err(|e| {
                Error::Source(format!("nokhwa camera {index}: cannot start thread: {e}"))
            })?;
        let (width, height, fps) = match ready_rx.recv_timeout(OPEN_TIMEOUT) {
            Ok(r) => r?,
            Err(_) => {
                // The thread may still be inside the camera's open: it stops as soon as it
                // returns (the failed hand-over, or this flag), instead of capturing forever.
                stop.store(true, Ordering::Relaxed);
                return Err(Error::Source(format!(
                    "nokhwa camera {index}: no answer from the camera within {} s",
                    OPEN_TIMEOUT.as_secs()
                )));
            }
        };
        log::info!(
            "nokhwa camera {index}: {width}x{height} @ {fps} fps (asked {w}x{h} @ {})",
            opts.fps
        );
        Ok(NokhwaSource {
            index,
            width,
            height,
            fps,
            slot,
            error,
            undecodable,
            stop,
            thread: Some(thread),
            current: Captured {
                timestamp_ns: 0,
                rgb: vec![0; width as usize * height as usize * 3],
            },
            next_id: 0,
        })
    }
}

impl FrameSource for NokhwaSource {
    fn describe(&self) -> String {
        format!(
            "nokhwa camera {} {}x{} @ {} fps",
            self.index, self.width, self.height, self.fps
        )
    }

    fn health(&self) -> super::SourceHealth {
        super::SourceHealth {
            failures: self.undecodable.load(Ordering::Relaxed),
            ..Default::default()
        }
    }

    fn next_frame(&mut self) -> Result<Option<Frame<'_>>> {
        match self.slot.take(&mut self.current, FRAME_TIMEOUT) {
            Take::Fresh => {}
            Take::Timeout => {
                return Err(Error::Source(format!(
                    "nokhwa camera {}: no frame within {:?}",
                    self.index, FRAME_TIMEOUT
                )))
            }
            Take::Closed => {
                let msg = self
                    .error
                    .lock()
                    .ok()
                    .and_then(|g| g.clone())
                    .unwrap_or_else(|| format!("nokhwa camera {}: capture stopped", self.index));
                return Err(Error::Source(msg));
            }
        }
        if self.current.rgb.len() != self.width as usize * self.height as usize * 3 {
            return Err(Error::Source(format!(
                "nokhwa camera {}: frame of {} bytes does not match {}x{}",
                self.index,
                self.current.rgb.len(),
                self.width,
                self.height
            )));
        }
        let id = self.next_id;
        self.next_id += 1;
        Ok(Some(Frame {
            id,
            timestamp_ns: self.current.timestamp_ns,
            width: self.width,
            height: self.height,
            layout: crate::camera::Layout::Rgb,
            pixels: &self.current.rgb,
        }))
    }
}

impl Drop for NokhwaSource {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
