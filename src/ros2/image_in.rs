//! Incoming `sensor_msgs/Image` → our tight RGB8 frames, as a [`FrameSource`].
//!
//! Accepted encodings: `rgb8`, `bgr8`, `rgba8` and `bgra8` (alpha ignored), `mono8`/`8UC1`,
//! `yuv422_yuy2`/`yuyv` (Y0 U Y1 V) and `yuv422`/`uyvy` (U Y0 V Y1; ROS's `yuv422` names that byte
//! order). Any other encoding, a `step` shorter than a row, or `data` that is not `step × height`
//! bytes is rejected with a logged error and the source waits for the next image. Stale images are
//! dropped, latest wins: every call drains what DDS has queued and keeps only the newest. A topic
//! that goes silent gets a warning every `silent_after` and the source keeps waiting.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ros2_client::Subscription;

use crate::camera::{convert, Frame, FrameSource, Layout, LayoutSet};
use crate::ros2::msgs::{Image, Time};
use crate::{Error, Result};

/// Pixel encodings we convert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Packed R, G, B.
    Rgb8,
    /// Packed B, G, R.
    Bgr8,
    /// One grey byte per pixel.
    Mono8,
    /// 4:2:2 `Y0 U Y1 V`.
    Yuyv,
    /// 4:2:2 `U Y0 V Y1`.
    Uyvy,
    /// Packed R, G, B, A (alpha ignored).
    Rgba8,
    /// Packed B, G, R, A (alpha ignored).
    Bgra8,
}

impl Encoding {
    /// Parses a ROS encoding string; `None` for encodings we do not convert.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "rgb8" => Encoding::Rgb8,
            "bgr8" => Encoding::Bgr8,
            "mono8" | "8UC1" => Encoding::Mono8,
            "yuv422_yuy2" | "yuyv" => Encoding::Yuyv,
            "yuv422" | "uyvy" => Encoding::Uyvy,
            "rgba8" => Encoding::Rgba8,
            "bgra8" => Encoding::Bgra8,
            _ => return None,
        })
    }

    /// Bytes per pixel.
    pub fn bytes_per_pixel(self) -> usize {
        match self {
            Encoding::Rgb8 | Encoding::Bgr8 => 3,
            Encoding::Mono8 => 1,
            Encoding::Yuyv | Encoding::Uyvy => 2,
            Encoding::Rgba8 | Encoding::Bgra8 => 4,
        }
    }
}

/// Checks an image's geometry and copies it into `dst` as it is when its encoding is a frame layout
/// that `accepted` holds (`bgr8` as BGR, `yuv422_yuy2` as YUYV, `yuv422`/`uyvy` reordered to YUYV;
/// tight rows), else converts it to RGB8 ([`image_to_rgb`]). Returns the layout of `dst`.
pub fn image_to_frame(
    img: &Image,
    accepted: LayoutSet,
    dst: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
) -> Result<Layout> {
    let enc = checked_encoding(img)?;
    let native = match enc {
        Encoding::Rgb8 => Some(Layout::Rgb),
        Encoding::Bgr8 => Some(Layout::Bgr),
        Encoding::Yuyv | Encoding::Uyvy => Some(Layout::Yuyv),
        Encoding::Rgba8 => Some(Layout::Rgbx),
        Encoding::Bgra8 => Some(Layout::Bgrx),
        Encoding::Mono8 => None,
    }
    .filter(|l| accepted.contains(*l));
    let Some(layout) = native else {
        image_to_rgb(img, dst, scratch)?;
        return Ok(Layout::Rgb);
    };
    let (row, step) = (
        img.width as usize * enc.bytes_per_pixel(),
        img.step as usize,
    );
    dst.resize(row * img.height as usize, 0);
    for (out, src) in dst
        .chunks_exact_mut(row)
        .zip(img.data.as_slice().chunks(step))
    {
        if enc == Encoding::Uyvy {
            for (d, s) in out.chunks_exact_mut(2).zip(src.chunks_exact(2)) {
                d[0] = s[1];
                d[1] = s[0];
            }
        } else {
            out.copy_from_slice(&src[..row]);
        }
    }
    Ok(layout)
}

/// The image's encoding once its geometry is checked: size, `step` and `data` length, 4:2:2's even
/// width.
fn checked_encoding(img: &Image) -> Result<Encoding> {
    let enc = Encoding::parse(&img.encoding).ok_or_else(|| {
        Error::Source(format!(
            "unsupported encoding '{}' (accepted: rgb8, bgr8, rgba8, bgra8, mono8/8UC1, yuv422_yuy2/yuyv, yuv422/uyvy)",
            img.encoding
        ))
    })?;
    let (w, h) = (img.width as usize, img.height as usize);
    if w == 0 || h == 0 {
        return Err(Error::Source(format!("empty image {w}x{h}")));
    }
    let row = w * enc.bytes_per_pixel();
    let step = img.step as usize;
    if step < row {
        return Err(Error::Source(format!(
            "step {step} is shorter than a {} row of {w} pixels ({row} bytes)",
            img.encoding
        )));
    }
    let data = img.data.as_slice();
    if data.len() != step * h {
        return Err(Error::Source(format!(
            "data has {} bytes, expected step {step} x height {h} = {}",
            data.len(),
            step * h
        )));
    }
    if matches!(enc, Encoding::Yuyv | Encoding::Uyvy) && w % 2 != 0 {
        return Err(Error::Source(format!("4:2:2 image width {w} must be even")));
    }
    Ok(enc)
}

/// Checks an image's geometry and converts it into `dst` (resized to `width × height × 3`);
/// `scratch` holds a reordered copy for UYVY. Both buffers keep their capacity between calls.
pub fn image_to_rgb(img: &Image, dst: &mut Vec<u8>, scratch: &mut Vec<u8>) -> Result<()> {
    let enc = checked_encoding(img)?;
    let (w, h) = (img.width as usize, img.height as usize);
    let (row, step) = (w * enc.bytes_per_pixel(), img.step as usize);
    let data = img.data.as_slice();
    dst.resize(w * h * 3, 0);
    match enc {
        Encoding::Rgb8 | Encoding::Bgr8 => convert::rgb24_to_rgb(
            data,
            img.width,
            img.height,
            step,
            enc == Encoding::Bgr8,
            dst,
        ),
        Encoding::Mono8 => {
            for y in 0..h {
                let src = &data[y * step..y * step + w];
                let out = &mut dst[y * w * 3..(y + 1) * w * 3];
                for (g, px) in src.iter().zip(out.chunks_exact_mut(3)) {
                    px.fill(*g);
                }
            }
            Ok(())
        }
        Encoding::Rgba8 | Encoding::Bgra8 => convert::rgbx_to_rgb(
            data,
            img.width,
            img.height,
            step,
            enc == Encoding::Bgra8,
            dst,
        ),
        Encoding::Yuyv => convert::yuyv_to_rgb(data, img.width, img.height, step, dst),
        Encoding::Uyvy => {
            // Swap each byte pair (U Y0 V Y1 → Y0 U Y1 V) into a tight scratch copy.
            scratch.resize(row * h, 0);
            for y in 0..h {
                let src = &data[y * step..y * step + row];
                let out = &mut scratch[y * row..(y + 1) * row];
                for (s, d) in src.chunks_exact(2).zip(out.chunks_exact_mut(2)) {
                    d[0] = s[1];
                    d[1] = s[0];
                }
            }
            convert::yuyv_to_rgb(scratch, img.width, img.height, row, dst)
        }
    }
}

/// Counters of an [`ImageTopicSource`], shared with whoever reports status.
#[derive(Debug, Default)]
pub struct InputStats {
    /// Images taken from DDS.
    pub received: AtomicU64,
    /// Images rejected (encoding, step, size).
    pub rejected: AtomicU64,
    /// Images replaced by a newer one before they were converted.
    pub dropped: AtomicU64,
    /// Samples that did not decode as `sensor_msgs/Image` (DDS matches topics by name, so a topic of
    /// another type remapped onto the input, such as a CompressedImage topic, arrives as these).
    pub undecodable: AtomicU64,
}

/// One reading of [`InputStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InputCounts {
    /// Images taken from DDS.
    pub received: u64,
    /// Images rejected.
    pub rejected: u64,
    /// Images superseded before conversion.
    pub dropped: u64,
    /// Samples that were not `sensor_msgs/Image`.
    pub undecodable: u64,
}

impl InputStats {
    /// The counters now.
    pub fn counts(&self) -> InputCounts {
        InputCounts {
            received: self.received.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            undecodable: self.undecodable.load(Ordering::Relaxed),
        }
    }
}

/// The `frame_id` of each delivered frame, so the node can copy an input's header onto the outputs
/// of that frame (its stamp travels exactly in the frame's `timestamp_ns`).
///
/// Stored as runs: an entry is added only when the `frame_id` changes, so a camera with a fixed
/// frame id records (and allocates) nothing per frame, and a frame still being processed while many
/// newer ones were converted (slow inference, latest wins) keeps its id. The last [`BOOK_RUNS`]
/// changes are kept.
#[derive(Debug, Default)]
pub struct HeaderBook {
    runs: Mutex<VecDeque<(u64, String)>>,
}

/// Changes of `frame_id` remembered by a [`HeaderBook`].
pub const BOOK_RUNS: usize = 16;

impl HeaderBook {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(u64, String)>> {
        // Only whole-entry pushes and pops happen under the lock; a poisoned one is still consistent.
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that frame `id` (ids increase) carries `frame_id`.
    pub fn record(&self, id: u64, frame_id: &str) {
        let mut r = self.lock();
        if r.back().is_some_and(|(_, f)| f == frame_id) {
            return;
        }
        if r.len() == BOOK_RUNS {
            r.pop_front();
        }
        r.push_back((id, frame_id.to_string()));
    }

    /// Copies frame `id`'s `frame_id` into `out`; false when it is older than what is remembered.
    pub fn lookup(&self, id: u64, out: &mut String) -> bool {
        let r = self.lock();
        match r.iter().rev().find(|(first, _)| *first <= id) {
            Some((_, f)) => {
                out.clone_from(f);
                true
            }
            None => false,
        }
    }
}

/// Which image sizes a camera topic takes. Every image passes the runtime's input limits (each side at
/// least 16 pixels, at most 3840x2160, at most 4:1), so a stray 1x1 or 4000x10 image is rejected and
/// counted instead of sizing the stream (the first image sizes the engines) or ending it; `exact`
/// (`--image-size`) and `engine` (prebuilt engines' inputs at a shorter side) narrow it further.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SizeGate {
    /// Only this `width × height`.
    pub exact: Option<(u32, u32)>,
    /// `(short_side, [(width, height), …])`: only images that resize to one of the engine
    /// directories' inputs (one directory per input size).
    pub engine: Option<(u32, Vec<(u32, u32)>)>,
}

impl SizeGate {
    /// Whether a `w × h` image may enter the stream; the error says why not.
    pub fn check(&self, w: u32, h: u32) -> Result<()> {
        if let Some((ew, eh)) = self.exact {
            if (w, h) != (ew, eh) {
                return Err(Error::Source(format!(
                    "the node takes {ew}x{eh} images (--image-size)"
                )));
            }
        }
        crate::limits::check_input_size("an image of", h as usize, w as usize)
            .map_err(|e| Error::Source(e.to_string()))?;
        if let Some((short, inputs)) = &self.engine {
            // Sides already checked above (at least 16 pixels): the image has a resized size.
            let got = crate::camera::convert::resized_size_wide(w, h, (*short).max(1));
            let takes = |&(iw, ih): &(u32, u32)| got == Some((u64::from(iw), u64::from(ih)));
            if !inputs.iter().any(takes) {
                let (gw, gh) = got.unwrap_or_default();
                let sizes: Vec<String> = inputs.iter().map(|(w, h)| format!("{w}x{h}")).collect();
                return Err(Error::Source(format!(
                    "the engines (--engines) take {} input; this image resizes to {gw}x{gh} \
                     (shorter side {short})",
                    sizes.join(" or ")
                )));
            }
        }
        Ok(())
    }
}

/// A camera topic as a [`FrameSource`]: frames carry the image's stamp as `timestamp_ns` and a
/// sequence number as `id`; [`HeaderBook`] maps the id back to the image's `frame_id`.
pub struct ImageTopicSource {
    sub: Subscription<Image>,
    topic: String,
    /// The frame handed out: RGB8, or a layout the consumer accepted.
    pixels: Vec<u8>,
    layout: Layout,
    accepted: LayoutSet,
    scratch: Vec<u8>,
    next_id: u64,
    stop: Arc<AtomicBool>,
    stats: Arc<InputStats>,
    book: Arc<HeaderBook>,
    silent_after: Duration,
    gate: SizeGate,
    poll: Duration,
    errors_logged: u64,
}

impl ImageTopicSource {
    /// Wraps a subscription. `stop` ends the stream: `next_frame` returns `Ok(None)`, or before the
    /// first image an error saying it was interrupted.
    pub fn new(
        sub: Subscription<Image>,
        topic: &str,
        stop: Arc<AtomicBool>,
        silent_after: Duration,
    ) -> Self {
        ImageTopicSource {
            sub,
            topic: topic.to_string(),
            pixels: Vec::new(),
            layout: Layout::Rgb,
            accepted: LayoutSet::RGB,
            scratch: Vec::new(),
            next_id: 0,
            stop,
            stats: Arc::new(InputStats::default()),
            book: Arc::new(HeaderBook::default()),
            silent_after,
            gate: SizeGate::default(),
            poll: Duration::from_millis(2),
            errors_logged: 0,
        }
    }

    /// Accepts only `width × height` images (others are rejected like a bad encoding), so a stray
    /// image of another size cannot be the first one, which sizes the engines.
    pub fn with_size(mut self, size: Option<(u32, u32)>) -> Self {
        self.gate.exact = size;
        self
    }

    /// Accepts only images that resize (shorter side `short_side`) to one of `inputs`, the prebuilt
    /// engine directories' input sizes (none: any size): others could not run on them (and, as a
    /// first image, would end the stream).
    pub fn with_engine_input(mut self, short_side: u32, inputs: Vec<(u32, u32)>) -> Self {
        self.gate.engine = (!inputs.is_empty()).then_some((short_side, inputs));
        self
    }

    /// The shared counters.
    pub fn stats(&self) -> Arc<InputStats> {
        self.stats.clone()
    }

    /// The shared header book.
    pub fn headers(&self) -> Arc<HeaderBook> {
        self.book.clone()
    }

    /// Newest queued image, counting the ones it replaces.
    fn take_latest(&mut self) -> Option<Image> {
        let mut latest = None;
        loop {
            match self.sub.take() {
                Ok(Some((img, _info))) => {
                    self.stats.received.fetch_add(1, Ordering::Relaxed);
                    if latest.replace(img).is_some() {
                        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    self.stats.undecodable.fetch_add(1, Ordering::Relaxed);
                    self.log_error(&format!(
                        "reading {}: {e:?} (not a sensor_msgs/Image: is a topic of another type, \
                         such as a CompressedImage topic, remapped onto it?)",
                        self.topic
                    ));
                    break;
                }
            }
        }
        latest
    }

    fn log_error(&mut self, msg: &str) {
        self.errors_logged += 1;
        let n = self.errors_logged;
        if n <= 20 || n.is_multiple_of(1000) {
            log::error!("{msg} ({n} input errors so far)");
        }
    }
}

impl FrameSource for ImageTopicSource {
    fn describe(&self) -> String {
        format!("ROS 2 topic {} (sensor_msgs/Image)", self.topic)
    }

    fn accept_layouts(&mut self, accepted: LayoutSet) {
        self.accepted = accepted;
    }

    fn next_frame(&mut self) -> Result<Option<Frame<'_>>> {
        let mut waiting_since = Instant::now();
        let mut silent_logged = 0u32;
        let (w, h, stamp) = loop {
            if self.stop.load(Ordering::Relaxed) {
                // The runtime reports a source that ends before its first frame as one that
                // "delivered no frame", a fault; a stop (SIGINT, SIGTERM) is none, so say so.
                if self.next_id == 0 {
                    return Err(Error::Source("interrupted before the first image".into()));
                }
                return Ok(None);
            }
            let Some(img) = self.take_latest() else {
                let waited = waiting_since.elapsed();
                if !self.silent_after.is_zero() && waited >= self.silent_after * (silent_logged + 1)
                {
                    silent_logged += 1;
                    log::warn!(
                        "no image on {} for {:.1} s; still waiting",
                        self.topic,
                        waited.as_secs_f64()
                    );
                }
                std::thread::sleep(self.poll);
                continue;
            };
            let checked = match self.gate.check(img.width, img.height) {
                Err(e) => Err(e),
                Ok(()) => image_to_frame(&img, self.accepted, &mut self.pixels, &mut self.scratch),
            };
            match checked {
                Ok(layout) => {
                    self.layout = layout;
                    let id = self.next_id;
                    self.next_id += 1;
                    self.book.record(id, &img.header.frame_id);
                    break (img.width, img.height, img.header.stamp);
                }
                Err(e) => {
                    self.stats.rejected.fetch_add(1, Ordering::Relaxed);
                    let msg = format!(
                        "{}: image {}x{} '{}' stamped {}.{:09} rejected: {e}",
                        self.topic,
                        img.width,
                        img.height,
                        img.encoding,
                        img.header.stamp.sec,
                        img.header.stamp.nanosec
                    );
                    self.log_error(&msg);
                    waiting_since = Instant::now();
                    silent_logged = 0;
                }
            }
        };
        Ok(Some(Frame {
            id: self.next_id - 1,
            timestamp_ns: Time::to_nanos(stamp),
            width: w,
            height: h,
            layout: self.layout,
            pixels: &self.pixels,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ros2::msgs::{Bytes, Header};

    fn img(enc: &str, w: u32, h: u32, step: u32, data: Vec<u8>) -> Image {
        Image {
            header: Header::default(),
            height: h,
            width: w,
            encoding: enc.into(),
            is_bigendian: 0,
            step,
            data: Bytes::new(data),
        }
    }

    #[test]
    fn converts_the_accepted_encodings() {
        let (mut dst, mut scratch) = (Vec::new(), Vec::new());
        // 2x1 rgb8 with 1 byte of row padding.
        image_to_rgb(
            &img("rgb8", 2, 1, 7, vec![1, 2, 3, 4, 5, 6, 99]),
            &mut dst,
            &mut scratch,
        )
        .unwrap();
        assert_eq!(dst, [1, 2, 3, 4, 5, 6]);
        image_to_rgb(
            &img("bgr8", 2, 1, 6, vec![1, 2, 3, 4, 5, 6]),
            &mut dst,
            &mut scratch,
        )
        .unwrap();
        assert_eq!(dst, [3, 2, 1, 6, 5, 4]);
        image_to_rgb(&img("mono8", 2, 1, 2, vec![7, 9]), &mut dst, &mut scratch).unwrap();
        assert_eq!(dst, [7, 7, 7, 9, 9, 9]);
        // Limited-range grey: Y=16 is black, Y=235 white, U=V=128 no colour.
        image_to_rgb(
            &img("yuv422_yuy2", 2, 1, 4, vec![16, 128, 235, 128]),
            &mut dst,
            &mut scratch,
        )
        .unwrap();
        assert_eq!(dst, [0, 0, 0, 255, 255, 255]);
        image_to_rgb(
            &img("yuv422", 2, 1, 4, vec![128, 235, 128, 16]),
            &mut dst,
            &mut scratch,
        )
        .unwrap();
        assert_eq!(dst, [255, 255, 255, 0, 0, 0]);
    }

    /// A consumer that takes BGR, YUYV and BGRx gets `bgr8`, `bgra8` and 4:2:2 images without their row padding
    /// and unconverted (UYVY reordered to YUYV); `mono8` is still converted; the RGB of a native
    /// frame is the converted image's.
    #[test]
    fn accepted_layouts_come_unconverted_without_padding() {
        let (mut dst, mut scratch, mut rgb) = (Vec::new(), Vec::new(), Vec::new());
        let yes = LayoutSet::of(&[Layout::Bgr, Layout::Yuyv, Layout::Bgrx]);
        let cases = [
            (
                img("bgra8", 2, 1, 9, vec![1, 2, 3, 4, 5, 6, 7, 8, 0]),
                Layout::Bgrx,
                vec![1, 2, 3, 4, 5, 6, 7, 8],
            ),
            // Not accepted: converted to RGB, alpha dropped.
            (
                img("rgba8", 2, 1, 8, vec![1, 2, 3, 4, 5, 6, 7, 8]),
                Layout::Rgb,
                vec![1, 2, 3, 5, 6, 7],
            ),
            (
                img("bgr8", 2, 1, 7, vec![1, 2, 3, 4, 5, 6, 0]),
                Layout::Bgr,
                vec![1, 2, 3, 4, 5, 6],
            ),
            (
                img(
                    "yuyv",
                    2,
                    2,
                    5,
                    vec![90, 100, 91, 150, 0, 60, 110, 61, 140, 0],
                ),
                Layout::Yuyv,
                vec![90, 100, 91, 150, 60, 110, 61, 140],
            ),
            (
                img("uyvy", 2, 1, 4, vec![100, 90, 150, 91]),
                Layout::Yuyv,
                vec![90, 100, 91, 150],
            ),
            (
                img("mono8", 2, 1, 2, vec![7, 9]),
                Layout::Rgb,
                vec![7, 7, 7, 9, 9, 9],
            ),
        ];
        for (i, layout, want) in cases {
            assert_eq!(
                image_to_frame(&i, yes, &mut dst, &mut scratch).unwrap(),
                layout,
                "{}",
                i.encoding
            );
            assert_eq!(dst, want, "{}", i.encoding);
            image_to_rgb(&i, &mut rgb, &mut scratch).unwrap();
            let f = Frame {
                id: 0,
                timestamp_ns: 0,
                width: i.width,
                height: i.height,
                layout,
                pixels: &dst,
            };
            let mut back = Vec::new();
            f.to_rgb(&mut back).unwrap();
            assert_eq!(back, rgb, "{}", i.encoding);
            // Without the consumer's word: RGB.
            assert_eq!(
                image_to_frame(&i, LayoutSet::RGB, &mut dst, &mut scratch).unwrap(),
                Layout::Rgb
            );
            assert_eq!(dst, rgb, "{}", i.encoding);
        }
        // Checked as before: a short step is refused whatever the consumer takes.
        assert!(image_to_frame(
            &img("bgr8", 2, 1, 5, vec![0; 5]),
            yes,
            &mut dst,
            &mut scratch
        )
        .is_err());
    }

    #[test]
    fn rejects_bad_encodings_and_geometry() {
        let (mut dst, mut scratch) = (Vec::new(), Vec::new());
        let mut bad = |i: Image| {
            image_to_rgb(&i, &mut dst, &mut scratch)
                .unwrap_err()
                .to_string()
        };
        assert!(bad(img("bayer_rggb8", 2, 1, 2, vec![0; 2])).contains("unsupported encoding"));
        assert!(bad(img("rgb8", 2, 1, 5, vec![0; 5])).contains("shorter than"));
        assert!(bad(img("rgb8", 2, 2, 6, vec![0; 6])).contains("expected step"));
        assert!(bad(img("yuyv", 3, 1, 6, vec![0; 6])).contains("even"));
        assert!(bad(img("mono8", 0, 1, 0, vec![])).contains("empty"));
    }

    #[test]
    fn header_book_keeps_frame_ids_of_frames_in_flight() {
        let b = HeaderBook::default();
        let mut out = String::new();
        assert!(!b.lookup(0, &mut out));
        // A fixed frame id: one run, whatever the number of frames.
        for i in 0..100 {
            b.record(i, "cam");
        }
        assert!(b.lookup(3, &mut out) && out == "cam");
        // Ids changing every frame: the last BOOK_RUNS frames are remembered.
        for i in 100..100 + BOOK_RUNS as u64 {
            b.record(i, &format!("f{i}"));
        }
        assert!(b.lookup(100, &mut out) && out == "f100");
        assert!(b.lookup(100 + BOOK_RUNS as u64 + 5, &mut out));
        assert_eq!(out, format!("f{}", 99 + BOOK_RUNS));
        assert!(!b.lookup(99, &mut out));
    }

    /// A stray first image cannot size the stream: tiny, huge and too-wide images are refused whatever
    /// the flags; `--image-size` and prebuilt engines narrow what is taken.
    #[test]
    fn the_size_gate_refuses_images_that_cannot_size_the_stream() {
        let any = SizeGate::default();
        any.check(640, 480).unwrap();
        any.check(16, 16).unwrap();
        for (w, h, why) in [
            (1, 1, "at least 16"),
            (4000, 10, "at least 16"),
            (4000, 900, "wider than 4:1"),
            (7680, 4320, "more than the limit"),
        ] {
            let e = any.check(w, h).unwrap_err().to_string();
            assert!(e.contains(why), "{w}x{h}: {e}");
        }
        let exact = SizeGate {
            exact: Some((64, 48)),
            ..Default::default()
        };
        exact.check(64, 48).unwrap();
        assert!(exact
            .check(48, 64)
            .unwrap_err()
            .to_string()
            .contains("--image-size"));
        // Engines built for 118x70 at shorter side 70: a 236x140 camera resizes to it, 4:3 does not.
        let engines = SizeGate {
            engine: Some((70, vec![(118, 70)])),
            ..Default::default()
        };
        engines.check(118, 70).unwrap();
        engines.check(236, 140).unwrap();
        let e = engines.check(640, 480).unwrap_err().to_string();
        assert!(
            e.contains("take 118x70") && e.contains("resizes to 93x70"),
            "{e}"
        );
        // A second directory for 4:3 cameras: both sizes pass, a third does not.
        let two = SizeGate {
            engine: Some((70, vec![(118, 70), (93, 70)])),
            ..Default::default()
        };
        two.check(236, 140).unwrap();
        two.check(640, 480).unwrap();
        let e = two.check(70, 140).unwrap_err().to_string();
        assert!(e.contains("take 118x70 or 93x70 input"), "{e}");
    }
}
