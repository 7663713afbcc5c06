//! Camera capture through `nokhwa` (feature `camera-nokhwa`), for development machines without V4L2
//! (macOS AVFoundation, Windows Media Foundation). On Linux prefer `/dev/videoN` (the `v4l2` module):
//! nokhwa's Linux backend is the same `v4l` crate with more layers.
//!
//! nokhwa's `Camera` is not `Send` on every platform, so it lives on its own capture thread; frames come
//! over a [`LatestSlot`] (newest frame wins), which also makes this source drop stale frames itself.

use std::sync::atomic::{AtomicBool, Ordering};
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
        let (slot2, error2, stop2) = (slot.clone(), error.clone(), stop.clone());
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
                let _ = ready_tx.send(Ok((cw, ch, cam.frame_rate())));
                let start = Instant::now();
                let mut buf = Captured {
                    timestamp_ns: 0,
                    rgb: vec![0; cw as usize * ch as usize * 3],
                };
                while !stop2.load(Ordering::Relaxed) {
                    let res = cam.frame().and_then(|f| {
                        buf.timestamp_ns = start.elapsed().as_nanos() as u64;
                        f.decode_image_to_buffer::<RgbFormat>(&mut buf.rgb)
                    });
                    match res {
                        Ok(()) => {
                            slot2.publish(&mut buf);
                            if buf.rgb.len() != cw as usize * ch as usize * 3 {
                                buf.rgb.resize(cw as usize * ch as usize * 3, 0);
                            }
                        }
                        Err(e) => {
                            if let Ok(mut g) = error2.lock() {
                                *g = Some(format!("nokhwa camera {index}: {e}"));
                            }
                            break;
                        }
                    }
                }
                let _ = cam.stop_stream();
                slot2.close();
            })
            .map_err(|e| {
                Error::Source(format!("nokhwa camera {index}: cannot start thread: {e}"))
            })?;
        let (width, height, fps) =
            ready_rx
                .recv_timeout(Duration::from_secs(10))
                .map_err(|_| {
                    Error::Source(format!(
                        "nokhwa camera {index}: no answer from the camera within 10 s"
                    ))
                })??;
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
