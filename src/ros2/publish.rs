//! Per-frame outputs of the node: `mask` (sensor_msgs/Image mono8; each track's pixels hold its
//! label, i.e. its position in `detections` + 1; stamp and frame_id copied from the input image),
//! `detections` (vision_msgs/Detection2DArray: one Detection2D per reported track, in label order;
//! id = the referred object's id (`<object>.<track>` in multi-object selection mode, where one
//! object may report several tracks), one hypothesis whose class_id is that object's prompt and
//! whose score is the track's running-mean score, box centre/size in mask pixels), optional
//! `mask/compressed` (sensor_msgs/CompressedImage, the same mask as a PNG) and optional `overlay`
//! (rgb8 annotated frame, each object labelled with its id and prompt). [`RosSink`] is the runtime
//! [`Sink`] that publishes them; `status` is published by the node's loop (`super::node`).
//!
//! A prompt string holds one object per `;`-separated prompt
//! ([`crate::pipeline::commands::split_prompts`]), with ids 0, 1, ... in order.
//!
//! What allocates per frame: the middleware serialises every sample into a fresh buffer (RustDDS's
//! publish path), and every message owns its strings: the header (its `frame_id`) is cloned into
//! each message, and the detections hold a prompt and an id per track. The mask payload is reused
//! from frame to frame (it is shared with the outgoing message and returns to us once the
//! middleware has serialised it), and the sink's own header is rewritten in place. The optional
//! PNG and overlay outputs allocate their images per frame.
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ros2_client::Publisher;

use crate::output::overlay::{draw_overlay_on, OverlayStyle};
use crate::output::ring::TrackEntry;
use crate::pipeline::commands::{ObjectInfo, Reply, Request, SelectMode};
use crate::pipeline::live::sink::{overlay_tracks, track_labels};
use crate::pipeline::live::{FrameOutput, Sink};
use crate::ros2::image_in::HeaderBook;
use crate::ros2::msgs::{
    BoundingBox2D, Bytes, CompressedImage, Detection2D, Detection2DArray, Header, Image,
    ObjectHypothesis, ObjectHypothesisWithPose, Point2D, Pose2D, PoseWithCovariance, Time,
};

/// Publish-call timings, milliseconds, over the last [`Timings::KEEP`] frames plus running totals.
#[derive(Debug, Clone)]
pub struct Timings {
    samples: Vec<f64>,
    next: usize,
    /// Calls timed.
    pub count: u64,
    /// Sum of all calls, milliseconds.
    pub sum_ms: f64,
    /// Slowest call, milliseconds.
    pub max_ms: f64,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            samples: Vec::with_capacity(Self::KEEP),
            next: 0,
            count: 0,
            sum_ms: 0.0,
            max_ms: 0.0,
        }
    }
}

impl Timings {
    /// Samples kept for quantiles.
    pub const KEEP: usize = 4096;

    /// Records one call.
    pub fn record(&mut self, ms: f64) {
        if self.samples.len() < Self::KEEP {
            self.samples.push(ms);
        } else {
            self.samples[self.next] = ms;
            self.next = (self.next + 1) % Self::KEEP;
        }
        self.count += 1;
        self.sum_ms += ms;
        self.max_ms = self.max_ms.max(ms);
    }

    /// Mean over every call.
    pub fn mean_ms(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum_ms / self.count as f64
        }
    }

    /// Quantile `q` of the kept samples.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.samples.is_empty() {
            return 0.0;
        }
        let mut s = self.samples.clone();
        s.sort_by(|a, b| a.total_cmp(b));
        s[((s.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize]
    }
}

/// The node's per-frame publishers, their reusable buffers and publish-call timings.
pub struct Outputs {
    /// `mask`.
    pub mask: Publisher<Image>,
    /// `detections`.
    pub detections: Publisher<Detection2DArray>,
    /// `mask/compressed`, when enabled.
    pub mask_png: Option<Publisher<CompressedImage>>,
    /// `overlay`, when enabled.
    pub overlay: Option<Publisher<Image>>,
    mask_buf: Bytes,
    publish_errors: u64,
    /// Time in `mask` publish calls (copy into the payload included).
    pub mask_times: Timings,
    /// Time in `detections` publish calls (message building included).
    pub detection_times: Timings,
    /// Time to encode and publish `mask/compressed`.
    pub png_times: Timings,
}

impl Outputs {
    /// Wraps the publishers.
    pub fn new(
        mask: Publisher<Image>,
        detections: Publisher<Detection2DArray>,
        mask_png: Option<Publisher<CompressedImage>>,
        overlay: Option<Publisher<Image>>,
    ) -> Self {
        Outputs {
            mask,
            detections,
            mask_png,
            overlay,
            mask_buf: Bytes::default(),
            publish_errors: 0,
            mask_times: Timings::default(),
            detection_times: Timings::default(),
            png_times: Timings::default(),
        }
    }

    /// Publish calls that failed so far.
    pub fn publish_errors(&self) -> u64 {
        self.publish_errors
    }

    fn failed(&mut self, what: &str, e: impl std::fmt::Debug) {
        self.publish_errors += 1;
        let n = self.publish_errors;
        if n <= 10 || n.is_multiple_of(1000) {
            log::error!("publishing {what}: {e:?} ({n} failed so far)");
        }
    }

    /// Publishes one processed frame's outputs under `header` (the input image's); each detection
    /// carries its object's id and prompt (`multi`: the selection mode reports several tracks per
    /// object, so ids name the track too, see [`detections`]). Failures are logged and counted,
    /// never returned: the next frame is published as usual.
    pub fn publish_frame(&mut self, header: &Header, f: &FrameOutput<'_>, multi: bool) {
        let t0 = Instant::now();
        // Reuse the buffer when the last message has released it (the usual case).
        match Arc::get_mut(&mut self.mask_buf.0) {
            Some(v) => {
                v.clear();
                v.extend_from_slice(f.mask);
            }
            None => self.mask_buf = Bytes::new(f.mask.to_vec()),
        }
        let msg = mono8(header, f.width, f.height, self.mask_buf.clone());
        if let Err(e) = self.mask.publish(msg) {
            self.failed("mask", e);
        }
        let t1 = Instant::now();
        self.mask_times.record(ms(t1 - t0));
        let det = detections(header, &f.result.tracks, f.objects, multi);
        if let Err(e) = self.detections.publish(det) {
            self.failed("detections", e);
        }
        self.detection_times.record(ms(t1.elapsed()));
        if self.mask_png.is_some() {
            let t2 = Instant::now();
            match png_mono8(f.mask, f.width, f.height) {
                Ok(data) => {
                    let msg = CompressedImage {
                        header: header.clone(),
                        format: "mono8; png compressed".into(),
                        data: Bytes::new(data),
                    };
                    if let Some(p) = &self.mask_png {
                        if let Err(e) = p.publish(msg) {
                            self.failed("mask/compressed", e);
                        }
                    }
                }
                Err(e) => self.failed("mask/compressed", e),
            }
            self.png_times.record(ms(t2.elapsed()));
        }
        if self.overlay.is_some() {
            match overlay(header, f) {
                Ok(img) => {
                    if let Some(p) = &self.overlay {
                        if let Err(e) = p.publish(img) {
                            self.failed("overlay", e);
                        }
                    }
                }
                Err(e) => self.failed("overlay", e),
            }
        }
    }
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Wall-clock time now, in nanoseconds since the epoch (0 if the clock is before it).
pub fn wall_clock_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The runtime [`Sink`] of the node: publishes every processed frame's mask and detections (and
/// the optional PNG mask and overlay) with the input image's stamp and frame id, and follows the
/// selection mode through the command replies (the objects come with every frame).
pub struct RosSink {
    outputs: Arc<Mutex<Outputs>>,
    book: Option<Arc<HeaderBook>>,
    frame_id: String,
    header: Header,
    multi: bool,
    /// An overlay topic is published (the sink then reads the frame's RGB).
    overlay: bool,
}

impl RosSink {
    /// A sink publishing through `outputs`. `book`: frame ids of the image topic (their stamps
    /// travel in the frames' timestamps); without one (our own sources) the outputs carry the wall
    /// clock at publish time and `frame_id`. `multi`: the selection mode at start-up reports
    /// several tracks per object (`--multi`).
    pub fn new(
        outputs: Arc<Mutex<Outputs>>,
        book: Option<Arc<HeaderBook>>,
        frame_id: &str,
        multi: bool,
    ) -> Self {
        let overlay = outputs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .overlay
            .is_some();
        RosSink {
            overlay,
            outputs,
            book,
            frame_id: frame_id.to_string(),
            header: Header::default(),
            multi,
        }
    }
}

impl Sink for RosSink {
    fn name(&self) -> &str {
        "ros2"
    }

    fn needs_rgb(&self) -> bool {
        // The overlay topic draws on the frame.
        self.overlay
    }

    fn frame(&mut self, out: &FrameOutput<'_>) -> anyhow::Result<()> {
        stamp_header(
            &mut self.header,
            self.book.as_deref(),
            &self.frame_id,
            (out.frame_id, out.timestamp_ns),
            wall_clock_ns,
        );
        // Only this sink and the status path (once a period) take the lock; a poisoned lock
        // still holds consistent publishers.
        let mut o = self.outputs.lock().unwrap_or_else(|p| p.into_inner());
        o.publish_frame(&self.header, out, self.multi);
        Ok(())
    }

    fn reply(&mut self, _request: &Request, reply: &Reply) {
        if let Some(s) = reply.settings.as_ref().filter(|_| reply.ok) {
            self.multi = s.mode == SelectMode::Multi;
        }
    }
}

/// Sets `header` for `(frame, timestamp_ns)` in place (no allocation once its `frame_id` has
/// grown). Frames from the image topic (`book` given) keep the image's stamp, their timestamp;
/// their `frame_id` comes from the book, or is `fallback` when the book no longer remembers the
/// frame (more `frame_id` changes in flight than it keeps): the stamp is known either way. Frames
/// of our own sources carry `now()` and `fallback`.
fn stamp_header(
    header: &mut Header,
    book: Option<&HeaderBook>,
    fallback: &str,
    (frame, timestamp_ns): (u64, u64),
    now: impl FnOnce() -> u64,
) {
    let known = match book {
        Some(book) => {
            header.stamp = Time::from_nanos(timestamp_ns);
            book.lookup(frame, &mut header.frame_id)
        }
        None => {
            header.stamp = Time::from_nanos(now());
            false
        }
    };
    if !known {
        header.frame_id.clear();
        header.frame_id.push_str(fallback);
    }
}

/// A mono8 image message over `data` (`width * height` bytes).
pub fn mono8(header: &Header, width: u32, height: u32, data: Bytes) -> Image {
    Image {
        header: header.clone(),
        height,
        width,
        encoding: "mono8".into(),
        is_bigendian: 0,
        step: width,
        data,
    }
}

/// The Detection2DArray of one frame: one detection per reported track, in label order. Its id
/// is the track's object id (`"3"`), stable for as long as the object exists; with `multi` (an
/// object may report several tracks) the track follows it (`"3.17"`: object 3, tracker query 17).
/// Its class id is the object's prompt (empty if `objects` lacks the object).
pub fn detections(
    header: &Header,
    tracks: &[TrackEntry],
    objects: &[ObjectInfo],
    multi: bool,
) -> Detection2DArray {
    Detection2DArray {
        header: header.clone(),
        detections: tracks
            .iter()
            .map(|t| {
                let [x0, y0, x1, y1] = t.bbox;
                let prompt = objects
                    .iter()
                    .find(|o| o.id == t.object)
                    .map_or("", |o| o.prompt.as_str());
                Detection2D {
                    header: header.clone(),
                    results: vec![ObjectHypothesisWithPose {
                        hypothesis: ObjectHypothesis {
                            class_id: prompt.to_string(),
                            score: t.score as f64,
                        },
                        pose: PoseWithCovariance::default(),
                    }],
                    bbox: BoundingBox2D {
                        center: Pose2D {
                            position: Point2D {
                                x: (x0 as f64 + x1 as f64) * 0.5,
                                y: (y0 as f64 + y1 as f64) * 0.5,
                            },
                            theta: 0.0,
                        },
                        size_x: (x1 - x0).max(0.0) as f64,
                        size_y: (y1 - y0).max(0.0) as f64,
                    },
                    id: if multi {
                        format!("{}.{}", t.object, t.id)
                    } else {
                        t.object.to_string()
                    },
                }
            })
            .collect(),
    }
}

/// Encodes a mono8 mask as a greyscale PNG.
pub fn png_mono8(labels: &[u8], width: u32, height: u32) -> Result<Vec<u8>, png::EncodingError> {
    let mut out = Vec::with_capacity(labels.len() / 16 + 256);
    {
        let mut enc = png::Encoder::new(&mut out, width, height);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(png::Compression::Fast);
        let mut w = enc.write_header()?;
        w.write_image_data(labels)?;
        w.finish()?;
    }
    Ok(out)
}

fn overlay(header: &Header, f: &FrameOutput<'_>) -> crate::Result<Image> {
    let rgb = f
        .rgb
        .ok_or_else(|| crate::Error::Source("the frame could not be had as RGB".into()))?;
    // The published message owns its pixels: drawn in place on that copy, each object in its own
    // colour, labelled with its id and prompt, as the runtime's overlay sink draws them.
    let mut img = image::RgbImage::from_raw(f.width, f.height, rgb.to_vec())
        .ok_or_else(|| crate::Error::Shape("overlay frame size".into()))?;
    let mut labels = Vec::new();
    track_labels(f, &mut labels);
    let tracks = overlay_tracks(f, &labels);
    let caption = f.caption.unwrap_or("(no prompt)");
    draw_overlay_on(&mut img, &tracks, caption, &OverlayStyle::default())?;
    let drawn = img;
    Ok(Image {
        header: header.clone(),
        height: f.height,
        width: f.width,
        encoding: "rgb8".into(),
        is_bigendian: 0,
        step: f.width * 3,
        data: Bytes::new(drawn.into_raw()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detections_follow_the_tracks() {
        let tracks = [
            TrackEntry {
                id: 42,
                object: 3,
                score: 0.75,
                bbox: [10.0, 20.0, 30.0, 60.0],
            },
            TrackEntry {
                id: 7,
                object: 0,
                score: 0.5,
                bbox: [0.0, 0.0, 4.0, 2.0],
            },
        ];
        let objects = [
            ObjectInfo {
                id: 0,
                prompt: "the dog".into(),
            },
            ObjectInfo {
                id: 3,
                prompt: "the cat".into(),
            },
        ];
        let h = Header {
            stamp: Time { sec: 1, nanosec: 2 },
            frame_id: "cam".into(),
        };
        let d = detections(&h, &tracks, &objects, false);
        assert_eq!(d.header, h);
        assert_eq!(d.detections.len(), 2);
        let a = &d.detections[0];
        assert_eq!((a.id.as_str(), a.header.frame_id.as_str()), ("3", "cam"));
        assert_eq!(a.results[0].hypothesis.class_id, "the cat");
        assert_eq!(a.results[0].hypothesis.score, 0.75);
        assert_eq!(a.bbox.center.position, Point2D { x: 20.0, y: 40.0 });
        assert_eq!((a.bbox.size_x, a.bbox.size_y), (20.0, 40.0));
        let b = &d.detections[1];
        assert_eq!(
            (b.id.as_str(), b.results[0].hypothesis.class_id.as_str()),
            ("0", "the dog")
        );
        // Several tracks per object: the track follows the object id.
        let d = detections(&h, &tracks, &objects, true);
        assert_eq!(d.detections[0].id, "3.42");
        assert_eq!(d.detections[1].id, "0.7");
        // An object the list lacks: empty class id, never a panic.
        let d = detections(&h, &tracks, &objects[..1], false);
        assert_eq!(d.detections[0].results[0].hypothesis.class_id, "");
    }

    /// A frame the header book no longer remembers (more frame_id changes in flight than it keeps)
    /// keeps its image's stamp; only its frame_id falls back. Our own sources' frames carry the
    /// clock and the configured frame_id.
    #[test]
    fn headers_keep_the_image_stamp_when_the_book_misses() {
        let book = HeaderBook::default();
        // Frames 100.. each with a new frame_id: the book keeps the last BOOK_RUNS of them.
        let changes = crate::ros2::image_in::BOOK_RUNS as u64 + 4;
        for k in 0..changes {
            book.record(100 + k, &format!("cam{k}"));
        }
        let stamp = 1_700_000_000_123_456_789u64;
        let image_time = Time {
            sec: 1_700_000_000,
            nanosec: 123_456_789,
        };
        let clock = || -> u64 { panic!("a topic frame must not read the clock") };
        let mut h = Header::default();
        // Remembered: its own frame_id.
        stamp_header(
            &mut h,
            Some(&book),
            "camera",
            (100 + changes - 1, stamp),
            clock,
        );
        let last = format!("cam{}", changes - 1);
        assert_eq!((h.stamp, h.frame_id.as_str()), (image_time, last.as_str()));
        // Forgotten (frame 101 changed frame_id long ago): the stamp is still the image's.
        stamp_header(&mut h, Some(&book), "camera", (101, stamp), clock);
        assert_eq!((h.stamp, h.frame_id.as_str()), (image_time, "camera"));
        // Our own source: the clock at publish time.
        stamp_header(&mut h, None, "synth", (5, stamp), || 2_000_000_003);
        assert_eq!(
            (h.stamp, h.frame_id.as_str()),
            (Time { sec: 2, nanosec: 3 }, "synth")
        );
    }

    #[test]
    fn png_mask_decodes_to_the_same_labels() {
        let labels: Vec<u8> = (0..6 * 4).map(|i| (i % 3) as u8).collect();
        let data = png_mono8(&labels, 6, 4).unwrap();
        let dec = png::Decoder::new(std::io::Cursor::new(data));
        let mut r = dec.read_info().unwrap();
        let mut buf = vec![0; r.output_buffer_size().unwrap()];
        let info = r.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (6, 4));
        assert_eq!(&buf[..info.buffer_size()], &labels[..]);
    }

    #[test]
    fn timings_quantiles() {
        let mut t = Timings::default();
        for i in 1..=100 {
            t.record(i as f64);
        }
        assert_eq!(t.count, 100);
        assert_eq!(t.max_ms, 100.0);
        assert!((t.mean_ms() - 50.5).abs() < 1e-9);
        assert_eq!(t.quantile_ms(0.5), 51.0);
    }
}
