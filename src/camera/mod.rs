//! Frame sources: cameras, image folders, video files and a synthetic pattern, behind one trait.
//!
//! Every source yields tight frames into its own reusable buffer ([`Frame`] borrows it), so the
//! capture loop allocates nothing per frame for raw formats. Frames are RGB8 unless the consumer
//! accepts the camera's own layout ([`FrameSource::accept_layouts`]: BGR, YUYV, RGBx or BGRx, which
//! the GPU preprocessing reads itself), which saves the source a conversion and the consumer a
//! third of the bytes for YUYV. [`open_source`] picks the source from a
//! spec string:
//!
//! | spec                         | source |
//! |------------------------------|--------|
//! | `/dev/videoN` (or a stable name of one: `/dev/v4l/by-id/…`, [`is_v4l2_name`]) | V4L2 camera (feature `camera-v4l`), wrapped in [`reconnect::Reconnecting`] |
//! | `nokhwa:N`                   | camera through nokhwa (feature `camera-nokhwa`, for non-Linux development) |
//! | a directory                  | PNG/JPEG files in it, sorted by name ([`files::ImageFolder`]) |
//! | `*.mp4` / `*.m4v` / `*.mov`  | H.264 video, decoded in a child process ([`isolated::IsolatedVideo`]) or in this one ([`video::VideoFile`]) as [`SourceOptions::decode`] says (feature `video`) |
//! | `synthetic[:WxH[@fps]]`      | deterministic moving pattern ([`synthetic::Synthetic`]) |
//! | `gst:[WxH:]PIPELINE`         | a GStreamer pipeline (Jetson CSI camera, RTSP, …) run by `gst-launch-1.0` in a child process, re-launched after failures ([`pipe::GstPipeline`]) |
//! | `csi:N[:WxH[@fps]]`          | Jetson CSI camera `N` through `nvarguscamerasrc` (a `gst:` pipeline: [`pipe::csi_pipeline`]) |
//! | `raw:WxH:FORMAT:PATH`        | raw frames from a FIFO, a file or `-` (stdin) ([`pipe::RawPipe`]) |
//! | `faulty:PLAN:SPEC`           | `SPEC` with injected faults, re-opened like a camera ([`fault`]) |
//!
//! [`convert`] holds the pixel-format conversions and the model-input [`Preprocessor`].

pub mod convert;
pub mod fault;
pub mod files;
pub mod h264;
#[cfg(feature = "video")]
pub mod isolated;
pub mod latest;
pub mod negotiate;
#[cfg(unix)]
pub mod pipe;
pub mod reconnect;
pub mod synthetic;
#[cfg(feature = "video")]
pub mod video;

#[cfg(feature = "camera-nokhwa")]
pub mod nokhwa;
#[cfg(feature = "camera-v4l")]
pub mod v4l2;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use convert::{PixelFormat, Preprocessor};

use crate::{Error, Result};

/// How a frame's pixels are laid out: tight rows (no padding between them), 8 bits per sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Layout {
    /// Packed RGB, 3 bytes per pixel: what every source delivers unless the consumer accepts more.
    #[default]
    Rgb,
    /// Packed BGR, 3 bytes per pixel.
    Bgr,
    /// Packed 4:2:2 `Y0 U Y1 V` (BT.601 limited range), 2 bytes per pixel, even width.
    Yuyv,
    /// Packed RGB and one ignored byte (`RGBx`, `RGBA`), 4 bytes per pixel.
    Rgbx,
    /// Packed BGR and one ignored byte (`BGRx`, `BGRA`), 4 bytes per pixel: what Jetson's `nvvidconv`
    /// writes, so a CSI camera's frames reach the GPU without a CPU conversion.
    Bgrx,
}

impl Layout {
    /// Bytes per pixel.
    pub fn bytes_per_pixel(self) -> usize {
        match self {
            Layout::Rgb | Layout::Bgr => 3,
            Layout::Yuyv => 2,
            Layout::Rgbx | Layout::Bgrx => 4,
        }
    }

    /// Bytes of a `width × height` frame; `None` when that does not fit in a `usize`.
    pub fn frame_bytes(self, width: u32, height: u32) -> Option<usize> {
        (width as usize)
            .checked_mul(height as usize)?
            .checked_mul(self.bytes_per_pixel())
    }

    /// Lower-case name (`rgb`, `bgr`, `yuyv`, `rgbx`, `bgrx`).
    pub fn name(self) -> &'static str {
        match self {
            Layout::Rgb => "rgb",
            Layout::Bgr => "bgr",
            Layout::Yuyv => "yuyv",
            Layout::Rgbx => "rgbx",
            Layout::Bgrx => "bgrx",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

/// The layouts a consumer takes; RGB always.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayoutSet(u8);

impl Default for LayoutSet {
    fn default() -> Self {
        LayoutSet::RGB
    }
}

impl LayoutSet {
    /// RGB only (what every consumer takes).
    pub const RGB: LayoutSet = LayoutSet(1);

    /// RGB and `layouts`.
    pub fn of(layouts: &[Layout]) -> Self {
        LayoutSet(layouts.iter().fold(1, |a, l| a | l.bit()))
    }

    /// Whether `layout` is in the set.
    pub fn contains(self, layout: Layout) -> bool {
        self.0 & layout.bit() != 0
    }
}

/// One frame borrowed from its source's buffer.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    /// Sequence number assigned by the source (0, 1, 2, …; gaps mean the source skipped frames).
    pub id: u64,
    /// Capture time in nanoseconds (monotonic for cameras, presentation time for files).
    pub timestamp_ns: u64,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// How [`Frame::pixels`] is laid out ([`Layout::Rgb`] unless the consumer accepted another).
    pub layout: Layout,
    /// Tight pixels, `width * height * layout.bytes_per_pixel()` bytes.
    pub pixels: &'a [u8],
}

impl<'a> Frame<'a> {
    /// An RGB frame.
    pub fn rgb(id: u64, timestamp_ns: u64, width: u32, height: u32, rgb: &'a [u8]) -> Self {
        Frame {
            id,
            timestamp_ns,
            width,
            height,
            layout: Layout::Rgb,
            pixels: rgb,
        }
    }

    /// The pixels when the frame is RGB.
    pub fn as_rgb(&self) -> Option<&'a [u8]> {
        (self.layout == Layout::Rgb).then_some(self.pixels)
    }

    /// The frame as tight RGB8 in `out` (resized to `width × height × 3`; no allocation once it has
    /// that size). An error, with `out` untouched, if the pixels do not hold a whole frame of their
    /// layout: the size is checked before `out` is sized by it.
    pub fn to_rgb(&self, out: &mut Vec<u8>) -> Result<()> {
        let (w, h) = (self.width, self.height);
        let (need, rgb) = match (self.layout.frame_bytes(w, h), Layout::Rgb.frame_bytes(w, h)) {
            (Some(need), Some(rgb)) => (need, rgb),
            _ => {
                return Err(Error::Frame(format!(
                    "{} frame {w}x{h}: too large to address",
                    self.layout.name()
                )))
            }
        };
        if self.pixels.len() != need {
            return Err(Error::Frame(format!(
                "{} frame {w}x{h}: {} bytes, {need} expected",
                self.layout.name(),
                self.pixels.len()
            )));
        }
        out.resize(rgb, 0);
        convert::layout_to_rgb(self.layout, self.pixels, w, h, out)
    }
}

/// A source of frames (RGB8 unless [`FrameSource::accept_layouts`] allowed others).
pub trait FrameSource: Send {
    /// Human-readable description (device, negotiated format, file).
    fn describe(&self) -> String;
    /// Next frame into the source's own reusable buffer; `Ok(None)` = end of stream.
    fn next_frame(&mut self) -> Result<Option<Frame<'_>>>;
    /// Lets the source deliver frames in any layout of `accepted` from the next frame on, where its
    /// input has that layout: it then hands the bytes over as they are instead of converting them to
    /// RGB. The consumer must still handle RGB. Sources without another layout ignore this (the
    /// default).
    fn accept_layouts(&mut self, _accepted: LayoutSet) {}
    /// Failures survived so far (sources that re-open themselves; others report none).
    fn health(&self) -> SourceHealth {
        SourceHealth::default()
    }
    /// Frames of a finite recording (a folder, a video file, raw frames in a regular file), which the
    /// live loop delivers every one of, in order; `None` for live sources.
    fn file_frames(&self) -> Option<u64> {
        None
    }
}

/// What a self-healing source has been through (see [`reconnect::Reconnecting`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceHealth {
    /// Successful re-opens.
    pub reconnects: u64,
    /// Errors seen: read failures, unexpected ends and failed re-opens.
    pub failures: u64,
    /// Longest time without frames: from the last frame before a failure to the re-opened source
    /// (a stall counts from its last frame, not from when it was detected).
    pub longest_outage: Duration,
    /// All outages together (frames that a camera would have delivered in this time are lost).
    pub total_outage: Duration,
}

/// Options for [`open_source`].
#[derive(Debug, Clone)]
pub struct SourceOptions {
    /// Requested capture width (cameras; synthetic default).
    pub width: u32,
    /// Requested capture height.
    pub height: u32,
    /// Requested frame rate.
    pub fps: u32,
    /// For files and synthetic sources: sleep so frames arrive at `fps` (like a camera). Off = as fast
    /// as possible.
    pub realtime: bool,
    /// For cameras: re-open with back-off when the device fails.
    pub reconnect: bool,
    /// Back-off policy for re-opening.
    pub backoff: reconnect::Backoff,
    /// For the synthetic source: number of frames (0 = endless).
    pub max_frames: u64,
    /// Where H.264 video files are decoded (default: in this process).
    pub decode: VideoDecode,
    /// `gst:` and `raw:` sources: the launcher and the time limits.
    #[cfg(unix)]
    pub pipe: pipe::PipeOptions,
}

/// Where H.264 video files are decoded. The decoder (openh264) is C/C++ code: on hostile input it could
/// crash the whole process, which [`VideoDecode::Isolated`] contains.
///
/// Policy: the `referdino` CLI decodes isolated (`--decode isolated`, its default), re-executing
/// itself as the worker; a library user gets [`VideoDecode::InProcess`] unless they name a worker
/// executable (their own binary calling [`isolated::run_worker_if_requested`] first thing in `main`,
/// or an installed `referdino`).
#[derive(Debug, Clone, Default, PartialEq)]
pub enum VideoDecode {
    /// Decode in this process: needs no executable; a decoder crash ends the process.
    #[default]
    InProcess,
    /// Decode in a child process; its crash, garbage output or stall becomes an [`Error::Source`].
    Isolated(IsolatedDecode),
}

/// Settings of an isolated decoder ([`VideoDecode::Isolated`]).
#[derive(Debug, Clone, PartialEq)]
pub struct IsolatedDecode {
    /// Executable run as `WORKER __referdino-decode-h264 FILE` (see [`isolated`]).
    pub worker: PathBuf,
    /// Longest wait for the worker's next frame before it is killed (opening waits at least 10 s).
    pub stall_timeout: Duration,
    /// Fault injected into the worker (tests only; see [`isolated::FAULT_ENV`]).
    #[doc(hidden)]
    pub fault: Option<String>,
}

impl IsolatedDecode {
    /// Default stall timeout: far above a software decoder's time for one 4K frame.
    pub const STALL_TIMEOUT: Duration = Duration::from_secs(10);

    /// Decoding in `worker` with the default stall timeout.
    pub fn new(worker: impl Into<PathBuf>) -> Self {
        IsolatedDecode {
            worker: worker.into(),
            stall_timeout: Self::STALL_TIMEOUT,
            fault: None,
        }
    }

    /// Decoding in a re-executed copy of the running program (the CLI's choice).
    pub fn current_exe() -> Result<Self> {
        let exe = std::env::current_exe().map_err(|e| {
            Error::Source(format!(
                "cannot locate this executable to run the H.264 decoder process: {e}"
            ))
        })?;
        Ok(Self::new(exe))
    }
}

impl Default for SourceOptions {
    fn default() -> Self {
        SourceOptions {
            width: 640,
            height: 360,
            fps: 30,
            realtime: false,
            reconnect: true,
            backoff: reconnect::Backoff::default(),
            max_frames: 0,
            decode: VideoDecode::InProcess,
            #[cfg(unix)]
            pipe: pipe::PipeOptions::default(),
        }
    }
}

/// Whether the source `spec` names reads its frames from stdin (`raw:WxH:FORMAT:-`, also inside
/// `faulty:`), which then cannot carry commands.
pub fn reads_stdin(spec: &str) -> bool {
    spec.contains("raw:") && spec.ends_with(":-")
}

/// Whether `spec` is the synthetic pattern (also inside `faulty:`), which the live loop delivers at
/// its rate like a camera's ([`SourceOptions::realtime`]) rather than as fast as it renders.
pub fn is_synthetic(spec: &str) -> bool {
    spec.starts_with("synthetic") || spec.contains(":synthetic")
}

/// Opens a source from a spec string (see the module docs).
pub fn open_source(spec: &str, opts: &SourceOptions) -> Result<Box<dyn FrameSource>> {
    if let Some(rest) = spec.strip_prefix("faulty:") {
        return open_faulty(rest, opts);
    }
    if let Some(rest) = spec.strip_prefix("synthetic") {
        let mut o = opts.clone();
        if let Some(params) = rest.strip_prefix(':') {
            parse_synthetic_params(params, &mut o)?;
        } else if !rest.is_empty() {
            return Err(Error::Source(format!(
                "bad source '{spec}': expected synthetic[:WxH[@fps]]"
            )));
        }
        return Ok(Box::new(synthetic::Synthetic::new(
            o.width,
            o.height,
            o.fps,
            o.max_frames,
            o.realtime,
        )?));
    }
    if let Some(rest) = spec.strip_prefix("gst:") {
        return open_gst(rest, opts);
    }
    if let Some(rest) = spec.strip_prefix("raw:") {
        return open_raw(rest, opts);
    }
    if let Some(rest) = spec.strip_prefix("csi:") {
        return open_csi(rest, opts);
    }
    if is_v4l2_name(spec) {
        return open_v4l(spec, opts);
    }
    if let Some(idx) = spec.strip_prefix("nokhwa:") {
        return open_nokhwa(idx, opts);
    }
    let path = Path::new(spec);
    if path.is_dir() {
        return Ok(Box::new(files::ImageFolder::open(path, opts)?));
    }
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .unwrap_or_default();
    if matches!(ext.as_str(), "mp4" | "m4v" | "mov") {
        return open_video(path, opts);
    }
    if !path.exists() {
        return Err(Error::Source(format!(
            "source '{spec}' does not exist (expected /dev/videoN, a folder of images, a .mp4 file, gst:PIPELINE, csi:N, raw:WxH:FORMAT:PATH or synthetic[:WxH[@fps]])"
        )));
    }
    Err(Error::Source(format!(
        "source '{spec}': unsupported file type '{ext}' (expected a folder of images or an .mp4/.m4v/.mov H.264 video)"
    )))
}

/// `faulty:PLAN:SPEC`: the inner source wrapped in [`fault::FaultySource`] and re-opened on every
/// failure; end of stream counts as a failure unless the inner source is a file or folder.
fn open_faulty(rest: &str, opts: &SourceOptions) -> Result<Box<dyn FrameSource>> {
    use std::sync::Arc;
    let (plan, inner) = rest.split_once(':').ok_or_else(|| {
        Error::Source(format!(
            "bad source 'faulty:{rest}': expected faulty:PLAN:SPEC, e.g. faulty:eio@30:synthetic"
        ))
    })?;
    let plan = Arc::new(fault::FaultPlan::parse(plan)?);
    let state = Arc::new(fault::FaultState::default());
    let inner_opts = SourceOptions {
        reconnect: false,
        ..opts.clone()
    };
    let first = open_source(inner, &inner_opts)?;
    // A recording (a folder, a video, raw frames in a regular file) ends; a live source's end is
    // a failure. Asked of the source itself: `raw:WxH:FORMAT:FILE` is no path, but is a recording.
    let live = first.file_frames().is_none();
    let first = fault::FaultySource::new(first, plan.clone(), state.clone());
    let inner = inner.to_string();
    let opener = move || -> Result<fault::FaultySource> {
        state.check_open()?;
        Ok(fault::FaultySource::new(
            open_source(&inner, &inner_opts)?,
            plan.clone(),
            state.clone(),
        ))
    };
    Ok(Box::new(
        reconnect::Reconnecting::new(first, opener, opts.backoff.clone()).end_is_failure(live),
    ))
}

fn parse_synthetic_params(params: &str, o: &mut SourceOptions) -> Result<()> {
    let ((w, h), fps) = parse_size_rate(params).ok_or_else(|| {
        Error::Source(format!(
            "bad synthetic parameters '{params}': expected WxH[@fps]"
        ))
    })?;
    (o.width, o.height) = (w, h);
    if let Some(f) = fps {
        o.fps = f;
    }
    Ok(())
}

/// `WxH` → (W, H).
pub(crate) fn parse_size(s: &str) -> Option<(u32, u32)> {
    let (w, h) = s.split_once('x')?;
    Some((w.parse().ok()?, h.parse().ok()?))
}

/// `WxH[@fps]` → ((W, H), fps).
pub(crate) fn parse_size_rate(s: &str) -> Option<((u32, u32), Option<u32>)> {
    let (size, rate) = match s.split_once('@') {
        Some((size, rate)) => (size, Some(rate)),
        None => (s, None),
    };
    let fps = match rate {
        Some(f) => Some(f.parse().ok()?),
        None => None,
    };
    Some((parse_size(size)?, fps))
}

#[cfg(unix)]
fn open_gst(rest: &str, opts: &SourceOptions) -> Result<Box<dyn FrameSource>> {
    pipe::open_gst(rest, opts)
}

#[cfg(unix)]
fn open_raw(rest: &str, opts: &SourceOptions) -> Result<Box<dyn FrameSource>> {
    Ok(Box::new(pipe::RawPipe::open_spec(rest, opts)?))
}

#[cfg(unix)]
fn open_csi(rest: &str, opts: &SourceOptions) -> Result<Box<dyn FrameSource>> {
    let spec = pipe::csi_pipeline(rest, opts)?;
    pipe::open_gst_as(&spec, pipe::csi_layout(&spec, opts)?, opts)
}

#[cfg(not(unix))]
fn open_csi(_rest: &str, _opts: &SourceOptions) -> Result<Box<dyn FrameSource>> {
    Err(Error::Source("csi: sources need a Unix system".into()))
}

#[cfg(not(unix))]
fn open_gst(_rest: &str, _opts: &SourceOptions) -> Result<Box<dyn FrameSource>> {
    Err(Error::Source("gst: sources need a Unix system".into()))
}

#[cfg(not(unix))]
fn open_raw(_rest: &str, _opts: &SourceOptions) -> Result<Box<dyn FrameSource>> {
    Err(Error::Source("raw: sources need a Unix system".into()))
}

#[cfg(feature = "camera-v4l")]
fn open_v4l(spec: &str, opts: &SourceOptions) -> Result<Box<dyn FrameSource>> {
    let first = v4l2::V4l2Source::open(spec, opts)?;
    if !opts.reconnect {
        return Ok(Box::new(first));
    }
    let spec_owned = spec.to_string();
    let o = opts.clone();
    let opener = move || -> Result<v4l2::V4l2Source> { v4l2::V4l2Source::open(&spec_owned, &o) };
    Ok(Box::new(reconnect::Reconnecting::new(
        first,
        opener,
        opts.backoff.clone(),
    )))
}

#[cfg(not(feature = "camera-v4l"))]
fn open_v4l(spec: &str, _opts: &SourceOptions) -> Result<Box<dyn FrameSource>> {
    Err(Error::Source(format!(
        "{spec}: V4L2 capture needs the `camera-v4l` feature (cargo build --features camera-v4l)"
    )))
}

#[cfg(feature = "camera-nokhwa")]
fn open_nokhwa(idx: &str, opts: &SourceOptions) -> Result<Box<dyn FrameSource>> {
    let index: u32 = idx
        .parse()
        .map_err(|_| Error::Source(format!("bad nokhwa camera index '{idx}'")))?;
    Ok(Box::new(nokhwa::NokhwaSource::open(index, opts)?))
}

#[cfg(not(feature = "camera-nokhwa"))]
fn open_nokhwa(idx: &str, _opts: &SourceOptions) -> Result<Box<dyn FrameSource>> {
    Err(Error::Source(format!(
        "nokhwa:{idx}: the nokhwa backend needs the `camera-nokhwa` feature"
    )))
}

#[cfg(feature = "video")]
fn open_video(path: &Path, opts: &SourceOptions) -> Result<Box<dyn FrameSource>> {
    Ok(open_video_file(path, opts)?.0)
}

/// Opens an H.264 video file as [`SourceOptions::decode`] says; returns the source and the frame
/// count its container declares.
#[cfg(feature = "video")]
pub fn open_video_file(path: &Path, opts: &SourceOptions) -> Result<(Box<dyn FrameSource>, u32)> {
    Ok(match &opts.decode {
        VideoDecode::InProcess => {
            let v = video::VideoFile::open(path, opts)?;
            let n = v.frame_count();
            (Box::new(v), n)
        }
        VideoDecode::Isolated(iso) => {
            let v = isolated::IsolatedVideo::open(path, opts, iso)?;
            let n = v.frame_count();
            (Box::new(v), n)
        }
    })
}

#[cfg(not(feature = "video"))]
fn open_video(path: &Path, _opts: &SourceOptions) -> Result<Box<dyn FrameSource>> {
    Err(Error::Source(format!(
        "{}: video decoding needs the `video` feature",
        path.display()
    )))
}

/// Sleeps until `start + n / fps`, for sources that emulate a camera's pace.
pub(crate) fn pace(start: std::time::Instant, n: u64, fps: u32) {
    if fps == 0 {
        return;
    }
    let due = start + Duration::from_nanos(n.saturating_mul(1_000_000_000) / fps as u64);
    let now = std::time::Instant::now();
    if due > now {
        std::thread::sleep(due - now);
    }
}

/// Whether `spec` names a V4L2 camera: `/dev/videoN`, a stable name udev gives one
/// (`/dev/v4l/by-id/…`, `/dev/v4l/by-path/…`, our rule's `/dev/referdino/by-path/…`), or any other
/// character device. Files and folders under `/dev` (`/dev/shm/clip.mp4`) are not cameras.
pub fn is_v4l2_name(spec: &str) -> bool {
    if ["/dev/video", "/dev/v4l/", "/dev/referdino/"]
        .iter()
        .any(|p| spec.starts_with(p))
    {
        return true;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        spec.starts_with("/dev/")
            && std::fs::metadata(spec).is_ok_and(|m| m.file_type().is_char_device())
    }
    #[cfg(not(unix))]
    false
}

/// Frame `id` of a video file decoded at `fps` (in this process or a decoder process): paced like a
/// camera when `realtime`, stamped with its presentation time.
#[cfg(feature = "video")]
pub(crate) fn file_frame(
    id: u64,
    start: std::time::Instant,
    fps: f64,
    realtime: bool,
    (width, height): (u32, u32),
    rgb: &[u8],
) -> Frame<'_> {
    let timestamp_ns = frame_time_ns(id, fps);
    if realtime {
        let due = start + Duration::from_nanos(timestamp_ns);
        if let Some(wait) = due.checked_duration_since(std::time::Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    Frame::rgb(id, timestamp_ns, width, height, rgb)
}

/// Presentation time of frame `id` at `fps` (a float: 29.97 for NTSC clips), in nanoseconds.
#[cfg(feature = "video")]
pub(crate) fn frame_time_ns(id: u64, fps: f64) -> u64 {
    // `as` saturates: a nonsensical rate cannot wrap the time.
    (id as f64 * 1e9 / fps) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_parsing_and_errors() {
        let o = SourceOptions {
            max_frames: 2,
            ..Default::default()
        };
        let mut s = open_source("synthetic:32x16@10", &o).unwrap();
        assert!(s.describe().contains("32x16"), "{}", s.describe());
        let f = s.next_frame().unwrap().unwrap();
        assert_eq!((f.width, f.height, f.pixels.len()), (32, 16, 32 * 16 * 3));
        assert_eq!(f.layout, Layout::Rgb);
        assert!(open_source("synthetic:32by16", &o).is_err());
        assert!(open_source("syntheticX", &o).is_err());
        let e = open_source("/no/such/thing.avi", &o)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("does not exist"), "{e}");
        let tmp = tempfile::NamedTempFile::with_suffix(".avi").unwrap();
        let e = open_source(tmp.path().to_str().unwrap(), &o)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("unsupported file type 'avi'"), "{e}");
    }

    /// `faulty:` over raw frames in a regular file ends with the file (it is a recording, though
    /// its spec is no path); over the synthetic camera an end is a failure and re-opens.
    #[cfg(unix)]
    #[test]
    fn faulty_raw_file_ends_with_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("frames.rgb");
        std::fs::write(&file, [7u8; 2 * 2 * 3 * 3]).unwrap();
        let spec = format!("faulty:eio@1:raw:2x2:rgb:{}", file.display());
        let o = SourceOptions {
            backoff: reconnect::Backoff {
                initial: Duration::from_millis(1),
                ..Default::default()
            },
            ..Default::default()
        };
        let mut s = open_source(&spec, &o).unwrap();
        let mut frames = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while let Some(f) = s.next_frame().unwrap() {
            assert_eq!(f.pixels, [7u8; 12]);
            frames += 1;
            assert!(
                std::time::Instant::now() < deadline,
                "{frames} frames: loops"
            );
        }
        // One frame, the fault, then the re-opened file's three frames: then the end.
        assert_eq!(frames, 4);
    }

    #[cfg(not(feature = "camera-v4l"))]
    #[test]
    fn v4l_without_feature_says_so() {
        for spec in ["/dev/video0", "/dev/v4l/by-id/usb-cam-video-index0"] {
            let e = open_source(spec, &SourceOptions::default())
                .err()
                .unwrap()
                .to_string();
            assert!(e.contains("camera-v4l"), "{e}");
        }
    }

    /// Folders and files under `/dev` (tmpfs `/dev/shm`) are what they are, not cameras; character
    /// devices and udev's camera names are cameras.
    #[cfg(unix)]
    #[test]
    fn files_under_dev_are_not_cameras() {
        assert!(is_v4l2_name("/dev/video7") && is_v4l2_name("/dev/v4l/by-id/x"));
        assert!(is_v4l2_name("/dev/null"), "a character device");
        if !Path::new("/dev/shm").is_dir() {
            return;
        }
        let dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let spec = dir.path().to_str().unwrap();
        assert!(!is_v4l2_name(spec));
        image::RgbImage::new(4, 2)
            .save(dir.path().join("0.png"))
            .unwrap();
        let mut s = open_source(spec, &SourceOptions::default()).unwrap();
        assert_eq!(s.next_frame().unwrap().unwrap().width, 4);
    }

    /// udev's stable names of a camera are V4L2 devices too, not files.
    #[cfg(feature = "camera-v4l")]
    #[test]
    fn stable_device_names_open_as_cameras() {
        let e = open_source(
            "/dev/referdino/by-path/no-such-bus",
            &SourceOptions::default(),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("no such camera device"), "{e}");
    }
}
