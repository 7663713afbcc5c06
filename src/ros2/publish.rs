//! Per-frame outputs of the node: `mask` (sensor_msgs/Image mono8; each object's pixels hold its
//! label, i.e. its position in `detections` + 1; stamp and frame_id copied from the input image),
//! `detections` (vision_msgs/Detection2DArray: one Detection2D per object, id = tracker id, one
//! hypothesis whose class_id is the prompt and whose score is the object's running-mean score, box
//! centre/size in mask pixels), optional `mask/compressed` (sensor_msgs/CompressedImage, the same
//! mask as a PNG), optional `overlay` (rgb8 annotated frame) and `status` (std_msgs/String, JSON).
//!
//! The mask buffer is reused from frame to frame (it is shared with the outgoing message and
//! returns to us once the middleware has serialised it). The middleware itself serialises each
//! sample into a fresh buffer, and the detections' strings are built per frame: this path is not
//! allocation-free, unlike the inference loop.

use std::sync::Arc;
use std::time::Instant;

use ros2_client::Publisher;

use crate::output::overlay::{draw_overlay, OverlayStyle, Track};
use crate::ros2::msgs::{
    BoundingBox2D, Bytes, CompressedImage, Detection2D, Detection2DArray, Header, Image,
    ObjectHypothesis, ObjectHypothesisWithPose, Point2D, Pose2D, PoseWithCovariance, StringMsg,
};
use crate::ros2::runner::FrameOut;

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

/// The node's publishers and reusable buffers.
pub struct Outputs {
    /// `mask`.
    pub mask: Publisher<Image>,
    /// `detections`.
    pub detections: Publisher<Detection2DArray>,
    /// `mask/compressed`, when enabled.
    pub mask_png: Option<Publisher<CompressedImage>>,
    /// `overlay`, when enabled.
    pub overlay: Option<Publisher<Image>>,
    /// `status`.
    pub status: Publisher<StringMsg>,
    mask_buf: Bytes,
    publish_errors: u64,
    /// Time in `mask` publish calls.
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
        status: Publisher<StringMsg>,
    ) -> Self {
        Outputs {
            mask,
            detections,
            mask_png,
            overlay,
            status,
            mask_buf: Bytes::default(),
            publish_errors: 0,
            mask_times: Timings::default(),
            detection_times: Timings::default(),
            png_times: Timings::default(),
        }
    }

    fn failed(&mut self, what: &str, e: impl std::fmt::Debug) {
        self.publish_errors += 1;
        let n = self.publish_errors;
        if n <= 10 || n % 1000 == 0 {
            log::error!("publishing {what}: {e:?} ({n} failed so far)");
        }
    }

    /// Publishes one processed frame's outputs under `header` (the input image's).
    pub fn publish_frame(&mut self, header: &Header, f: &FrameOut<'_>) {
        let t0 = Instant::now();
        // Reuse the buffer when the last message has released it (the usual case).
        match Arc::get_mut(&mut self.mask_buf.0) {
            Some(v) => {
                v.clear();
                v.extend_from_slice(f.labels);
            }
            None => self.mask_buf = Bytes::new(f.labels.to_vec()),
        }
        let msg = mono8(header, f.width, f.height, self.mask_buf.clone());
        if let Err(e) = self.mask.publish(msg) {
            self.failed("mask", e);
        }
        let t1 = Instant::now();
        self.mask_times.record(ms(t1 - t0));
        let det = detections(header, f);
        if let Err(e) = self.detections.publish(det) {
            self.failed("detections", e);
        }
        self.detection_times.record(ms(t1.elapsed()));
        if self.mask_png.is_some() {
            let t2 = Instant::now();
            match png_mono8(f.labels, f.width, f.height) {
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

    /// Publishes a status line (JSON).
    pub fn publish_status(&mut self, json: String) {
        if let Err(e) = self.status.publish(StringMsg { data: json }) {
            self.failed("status", e);
        }
    }
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
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

/// The Detection2DArray of one frame: one detection per object, in label order.
pub fn detections(header: &Header, f: &FrameOut<'_>) -> Detection2DArray {
    Detection2DArray {
        header: header.clone(),
        detections: f
            .objects
            .iter()
            .map(|o| {
                let [x0, y0, x1, y1] = o.bbox;
                Detection2D {
                    header: header.clone(),
                    results: vec![ObjectHypothesisWithPose {
                        hypothesis: ObjectHypothesis {
                            class_id: o.prompt.to_string(),
                            score: o.score as f64,
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
                    id: o.id.to_string(),
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

fn overlay(header: &Header, f: &FrameOut<'_>) -> crate::Result<Image> {
    let img = image::RgbImage::from_raw(f.width, f.height, f.rgb.to_vec())
        .ok_or_else(|| crate::Error::Shape("overlay frame size".into()))?;
    let per_object: Vec<Vec<u8>> = f
        .objects
        .iter()
        .map(|o| f.labels.iter().map(|&l| (l == o.label) as u8).collect())
        .collect();
    let tracks: Vec<Track<'_>> = f
        .objects
        .iter()
        .zip(&per_object)
        .map(|(o, m)| Track {
            id: o.id,
            mask: m,
            score: Some(o.score),
            bbox: Some(o.bbox),
        })
        .collect();
    let caption = f.objects.first().map_or("", |o| o.prompt);
    let drawn = draw_overlay(&img, &tracks, caption, &OverlayStyle::default())?;
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
    use crate::ros2::msgs::Time;
    use crate::ros2::runner::{LiveStats, ObjectOut};

    #[test]
    fn detections_follow_the_objects() {
        let objects = [
            ObjectOut {
                label: 1,
                id: 42,
                score: 0.75,
                bbox: [10.0, 20.0, 30.0, 60.0],
                prompt: "the cat",
            },
            ObjectOut {
                label: 2,
                id: 7,
                score: 0.5,
                bbox: [0.0, 0.0, 4.0, 2.0],
                prompt: "the cat",
            },
        ];
        let labels = [0u8; 8];
        let f = FrameOut {
            id: 3,
            timestamp_ns: 5,
            width: 4,
            height: 2,
            rgb: &[0; 24],
            labels: &labels,
            objects: &objects,
            stats: LiveStats::default(),
        };
        let h = Header {
            stamp: Time { sec: 1, nanosec: 2 },
            frame_id: "cam".into(),
        };
        let d = detections(&h, &f);
        assert_eq!(d.header, h);
        assert_eq!(d.detections.len(), 2);
        let a = &d.detections[0];
        assert_eq!((a.id.as_str(), a.header.frame_id.as_str()), ("42", "cam"));
        assert_eq!(a.results[0].hypothesis.class_id, "the cat");
        assert_eq!(a.results[0].hypothesis.score, 0.75);
        assert_eq!(a.bbox.center.position, Point2D { x: 20.0, y: 40.0 });
        assert_eq!((a.bbox.size_x, a.bbox.size_y), (20.0, 40.0));
        assert_eq!(d.detections[1].id, "7");
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
