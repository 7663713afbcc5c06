//! Frames through a pipe: raw frames of a fixed size and pixel format from a FIFO, a file or stdin
//! (`raw:`), and a GStreamer pipeline run by `gst-launch-1.0` in a child process (`gst:`).
//!
//! `gst:` is how cameras that V4L2 cannot read usefully reach the runtime: a Jetson CSI camera (its
//! V4L2 node gives raw Bayer; the ISP is behind `nvarguscamerasrc`), an RTSP/IP camera, anything with
//! a GStreamer element. The source appends a conversion to RGB at the requested size and `fdsink`
//! to the user's pipeline (`csi:` asks for BGRx instead, which `nvvidconv` already writes, so the
//! conversion passes the buffers through and the GPU's kernel reads them: [`GstPipeline::open_as`]), reads the child's stdout frame by frame into one buffer allocated
//! at open, and turns every way the child can fail into an [`Error::Source`] carrying the child's last
//! lines of stderr: it could not start (not installed, bad pipeline), it exited with an error (camera
//! unplugged, stream lost), or it stalled (no frame for [`PipeOptions::stall_timeout`]: it is killed).
//! [`open_gst`] wraps it in [`Reconnecting`], so a failed pipeline is re-launched with back-off like a
//! failed V4L2 camera; a pipeline that ends cleanly (exit status 0, e.g. a file played to its end) ends
//! the stream.
//!
//! `csi:N[:WxH[@fps]]` is the `gst:` pipeline of Jetson CSI camera `N` ([`csi_pipeline`]).
//!
//! `raw:WxH:FORMAT:PATH` reads frames with tight rows, as `ffmpeg … -f rawvideo -` or a custom driver
//! writes them, from a FIFO, a regular file, or `-` (stdin). (GStreamer pads RGB and planar rows to 4
//! bytes: take its frames through `gst:`, which reads them with that stride.) The producer
//! closing the pipe ends the stream; a partial last frame is an error. Reads from pipes wait with
//! `poll(2)` in short steps, so a stop request (Ctrl-C, the runtime shutting down) never hangs on a
//! silent producer, and opening a FIFO does not wait for its writer.
//!
//! Frames are delivered as soon as they are read; timestamps are `CLOCK_MONOTONIC` at arrival (the
//! V4L2 clock), except for regular files, which count at `fps`.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::convert::{rgb24_to_rgb, rgbx_to_rgb, yuv420_to_rgb, yuyv_to_rgb, Chroma420};
use super::reconnect::Reconnecting;
use super::{parse_size, parse_size_rate, Frame, FrameSource, Layout, LayoutSet, SourceOptions};
use crate::{Error, Result};

/// Environment variable naming the `gst-launch-1.0` executable (default: found on `PATH`).
pub const GST_LAUNCH_ENV: &str = "REFERDINO_GST_LAUNCH";
/// The launcher when [`GST_LAUNCH_ENV`] is unset.
pub const GST_LAUNCH: &str = "gst-launch-1.0";
/// Lines of a child's stderr kept for the error message.
const STDERR_LINES: usize = 6;
/// Longest step of a wait on a pipe between checks of the stop flag.
const TICK: Duration = Duration::from_millis(100);

/// Settings of the pipe sources ([`SourceOptions::pipe`]).
#[derive(Debug, Clone, PartialEq)]
pub struct PipeOptions {
    /// The GStreamer launcher (`gst-launch-1.0`, or [`GST_LAUNCH_ENV`]).
    pub gst_launch: PathBuf,
    /// Longest wait for a `gst:` pipeline's first frame (camera start-up: Argus takes seconds).
    pub open_timeout: Duration,
    /// Longest wait for a `gst:` pipeline's next frame before it is killed and counted as failed.
    pub stall_timeout: Duration,
}

impl Default for PipeOptions {
    fn default() -> Self {
        PipeOptions {
            gst_launch: std::env::var_os(GST_LAUNCH_ENV)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(GST_LAUNCH)),
            open_timeout: Duration::from_secs(15),
            stall_timeout: Duration::from_secs(5),
        }
    }
}

/// Pixel formats of raw frames (`raw:`), named as GStreamer and ffmpeg name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawFormat {
    /// Packed RGB, 3 bytes per pixel (`RGB`, `rgb24`).
    Rgb24,
    /// Packed BGR, 3 bytes per pixel (`BGR`, `bgr24`).
    Bgr24,
    /// Packed RGB + one ignored byte (`RGBx`, `RGBA`, `rgb0`, `rgba`).
    Rgbx,
    /// Packed BGR + one ignored byte (`BGRx`, `BGRA`, `bgr0`, `bgra`: Jetson's `nvvidconv`).
    Bgrx,
    /// Packed 4:2:2 `Y0 U Y1 V` (`YUY2`, `yuyv422`), even width.
    Yuyv,
    /// Planar 4:2:0, interleaved chroma (`NV12`), even width and height.
    Nv12,
    /// Planar 4:2:0, `U` then `V` planes (`I420`, `yuv420p`), even width and height.
    I420,
}

impl RawFormat {
    /// Parses a format name (case-insensitive).
    pub fn parse(name: &str) -> Result<Self> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "rgb" | "rgb24" => RawFormat::Rgb24,
            "bgr" | "bgr24" => RawFormat::Bgr24,
            "rgbx" | "rgba" | "rgb0" => RawFormat::Rgbx,
            "bgrx" | "bgra" | "bgr0" => RawFormat::Bgrx,
            "yuyv" | "yuy2" | "yuyv422" => RawFormat::Yuyv,
            "nv12" => RawFormat::Nv12,
            "i420" | "yuv420p" => RawFormat::I420,
            _ => {
                return Err(Error::Source(format!(
                    "raw pixel format '{name}' is not supported (rgb, bgr, rgbx, bgrx, yuyv, nv12, i420)"
                )))
            }
        })
    }

    /// Bytes of one `width × height` frame; an error for sizes the format cannot hold.
    pub fn frame_bytes(self, width: u32, height: u32) -> Result<usize> {
        let (w, h) = (width as usize, height as usize);
        let pixels = width as u64 * height as u64;
        if w == 0 || h == 0 || pixels > crate::limits::MAX_IMAGE_PIXELS {
            return Err(Error::Source(format!(
                "raw frame size {w}x{h} is out of range"
            )));
        }
        let even = |both: bool| {
            if w % 2 != 0 || (both && h % 2 != 0) {
                Err(Error::Source(format!(
                    "raw {self:?} frames need an even width{}: got {w}x{h}",
                    if both { " and height" } else { "" }
                )))
            } else {
                Ok(())
            }
        };
        Ok(match self {
            RawFormat::Rgb24 | RawFormat::Bgr24 => 3 * w * h,
            RawFormat::Rgbx | RawFormat::Bgrx => 4 * w * h,
            RawFormat::Yuyv => {
                even(false)?;
                2 * w * h
            }
            RawFormat::Nv12 | RawFormat::I420 => {
                even(true)?;
                w * h * 3 / 2
            }
        })
    }

    /// The frame layout this format is, if it is one ([`Frame`] can carry it as it is).
    pub fn layout(self) -> Option<Layout> {
        match self {
            RawFormat::Rgb24 => Some(Layout::Rgb),
            RawFormat::Bgr24 => Some(Layout::Bgr),
            RawFormat::Yuyv => Some(Layout::Yuyv),
            RawFormat::Rgbx => Some(Layout::Rgbx),
            RawFormat::Bgrx => Some(Layout::Bgrx),
            RawFormat::Nv12 | RawFormat::I420 => None,
        }
    }

    /// Converts one tight frame into RGB8 (`dst`: `width·height·3` bytes).
    pub fn to_rgb(self, src: &[u8], width: u32, height: u32, dst: &mut [u8]) -> Result<()> {
        let w = width as usize;
        match self {
            RawFormat::Rgb24 => rgb24_to_rgb(src, width, height, 3 * w, false, dst),
            RawFormat::Bgr24 => rgb24_to_rgb(src, width, height, 3 * w, true, dst),
            RawFormat::Rgbx => rgbx_to_rgb(src, width, height, 4 * w, false, dst),
            RawFormat::Bgrx => rgbx_to_rgb(src, width, height, 4 * w, true, dst),
            RawFormat::Yuyv => yuyv_to_rgb(src, width, height, 2 * w, dst),
            RawFormat::Nv12 => yuv420_to_rgb(src, width, height, Chroma420::Nv12, dst),
            RawFormat::I420 => yuv420_to_rgb(src, width, height, Chroma420::I420, dst),
        }
    }
}

/// How filling a frame buffer from a pipe ended.
#[derive(Debug)]
enum Fill {
    /// The whole buffer was read.
    Full,
    /// End of input before the first byte.
    End,
    /// End of input after this many bytes.
    Truncated(usize),
    /// The stop flag was raised while waiting.
    Stopped,
    /// Nothing arrived for this long.
    Stalled(Duration),
}

/// Reads whole frames from a file descriptor; see the module documentation for the waiting rules.
struct FrameReader<R> {
    r: R,
    /// Wait with `poll(2)` before reading (pipes, FIFOs, stdin); regular files are always readable.
    poll: bool,
    stop: Arc<AtomicBool>,
}

impl<R: Read + AsFd> FrameReader<R> {
    /// Fills `buf`, waiting at most `stall` for each piece of it (`None`: as long as it takes).
    fn fill(&mut self, buf: &mut [u8], stall: Option<Duration>) -> std::io::Result<Fill> {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        let mut got = 0;
        let mut since = Instant::now();
        while got < buf.len() {
            if self.poll {
                loop {
                    if self.stop.load(Ordering::Relaxed) {
                        return Ok(Fill::Stopped);
                    }
                    let waited = since.elapsed();
                    let step = match stall {
                        Some(t) if waited >= t => return Ok(Fill::Stalled(waited)),
                        Some(t) => (t - waited).min(TICK),
                        None => TICK,
                    };
                    let ts = Timespec {
                        tv_sec: 0,
                        tv_nsec: step.as_nanos() as _,
                    };
                    let mut fds = [PollFd::new(&self.r, PollFlags::IN)];
                    match poll(&mut fds, Some(&ts)) {
                        Ok(0) | Err(rustix::io::Errno::INTR) => {}
                        Ok(_) => break,
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            match self.r.read(&mut buf[got..]) {
                Ok(0) if got == 0 => return Ok(Fill::End),
                Ok(0) => return Ok(Fill::Truncated(got)),
                Ok(n) => {
                    got += n;
                    since = Instant::now();
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
                    ) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Fill::Full)
    }
}

/// Nanoseconds of `CLOCK_MONOTONIC` (the clock of V4L2 buffer timestamps).
fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// Raw frames of one size and pixel format from a FIFO, a regular file or stdin (`raw:`).
pub struct RawPipe {
    what: String,
    reader: FrameReader<File>,
    regular: bool,
    format: RawFormat,
    width: u32,
    height: u32,
    fps: u32,
    realtime: bool,
    start: Instant,
    next_id: u64,
    raw: Vec<u8>,
    rgb: Vec<u8>,
    ended: bool,
    /// Whole frames in a regular file.
    file_frames: Option<u64>,
    /// Layouts the consumer takes as they are (RGB frames are always handed over unconverted).
    accepted: LayoutSet,
}

impl RawPipe {
    /// Opens `raw:` spec's rest, `WxH:FORMAT:PATH` (`PATH` = `-` for stdin).
    pub fn open_spec(rest: &str, opts: &SourceOptions) -> Result<Self> {
        let bad = || {
            Error::Source(format!(
                "bad source 'raw:{rest}': expected raw:WxH:FORMAT:PATH, e.g. raw:640x360:bgrx:/tmp/cam.fifo or raw:640x360:i420:- (stdin)"
            ))
        };
        let mut parts = rest.splitn(3, ':');
        let (Some(size), Some(format), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let (width, height) = parse_size(size).ok_or_else(bad)?;
        if path.is_empty() {
            return Err(bad());
        }
        Self::open(
            Path::new(path),
            width,
            height,
            RawFormat::parse(format)?,
            opts,
        )
    }

    /// Opens `path` (`-`: stdin) for frames of `width × height` in `format`.
    pub fn open(
        path: &Path,
        width: u32,
        height: u32,
        format: RawFormat,
        opts: &SourceOptions,
    ) -> Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let frame = format.frame_bytes(width, height)?;
        let (file, what) = if path == Path::new("-") {
            let fd: OwnedFd = std::io::stdin()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|e| Error::Source(format!("stdin: {e}")))?;
            (File::from(fd), "stdin".to_string())
        } else {
            // Non-blocking, so that opening a FIFO does not wait for its writer (the reads wait with
            // poll instead, watching the stop flag).
            let f = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path)
                .map_err(|e| Error::Source(format!("{}: {e}", path.display())))?;
            (f, path.display().to_string())
        };
        let meta = file
            .metadata()
            .map_err(|e| Error::Source(format!("{what}: {e}")))?;
        if meta.is_dir() {
            return Err(Error::Source(format!(
                "{what} is a directory; raw: reads a FIFO, a file or - (stdin)"
            )));
        }
        let regular = meta.is_file();
        let file_frames = regular.then(|| meta.len() / frame as u64);
        Ok(RawPipe {
            file_frames,
            what: format!("raw {width}x{height} {format:?} from {what}"),
            reader: FrameReader {
                r: file,
                poll: !regular,
                stop: opts.backoff.stop.clone(),
            },
            regular,
            format,
            width,
            height,
            fps: opts.fps.max(1),
            realtime: opts.realtime,
            start: Instant::now(),
            next_id: 0,
            raw: vec![0; frame],
            // Filled only for formats handed over converted.
            rgb: Vec::new(),
            ended: false,
            accepted: LayoutSet::RGB,
        })
    }
}

impl FrameSource for RawPipe {
    /// Whole frames in the file when reading a regular file (`None` for pipes and stdin).
    fn file_frames(&self) -> Option<u64> {
        self.file_frames
    }

    fn describe(&self) -> String {
        self.what.clone()
    }

    fn accept_layouts(&mut self, accepted: LayoutSet) {
        self.accepted = accepted;
    }

    fn next_frame(&mut self) -> Result<Option<Frame<'_>>> {
        if self.ended {
            return Ok(None);
        }
        let id = self.next_id;
        match self.reader.fill(&mut self.raw, None) {
            Ok(Fill::Full) => {}
            Ok(Fill::End | Fill::Stopped) => {
                self.ended = true;
                return Ok(None);
            }
            Ok(Fill::Truncated(n)) => {
                self.ended = true;
                return Err(Error::Source(format!(
                    "{}: input ended inside frame {id} ({n} of {} bytes)",
                    self.what,
                    self.raw.len()
                )));
            }
            Ok(Fill::Stalled(_)) => unreachable!("no stall limit was given"),
            Err(e) => return Err(Error::Source(format!("{}: {e}", self.what))),
        }
        let layout = self.format.layout().filter(|l| self.accepted.contains(*l));
        if layout.is_none() {
            // The size was bounded at open (`RawFormat::frame_bytes`): it always fits.
            let bytes = Layout::Rgb
                .frame_bytes(self.width, self.height)
                .unwrap_or(0);
            self.rgb.resize(bytes, 0);
            self.format
                .to_rgb(&self.raw, self.width, self.height, &mut self.rgb)?;
        }
        self.next_id += 1;
        let timestamp_ns = if self.regular {
            let t = id * 1_000_000_000 / self.fps as u64;
            if self.realtime {
                let due = self.start + Duration::from_nanos(t);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            t
        } else {
            monotonic_ns()
        };
        Ok(Some(Frame {
            id,
            timestamp_ns,
            width: self.width,
            height: self.height,
            layout: layout.unwrap_or(Layout::Rgb),
            pixels: if layout.is_some() {
                &self.raw
            } else {
                &self.rgb
            },
        }))
    }
}

/// Splits `s` into words as a POSIX shell would, without expansions: at unquoted whitespace;
/// `'…'` keeps everything, `"…"` everything but backslash escapes; a backslash outside quotes escapes
/// the next character.
pub fn split_words(s: &str) -> std::result::Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur: Option<String> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if let Some(w) = cur.take() {
                    words.push(w);
                }
            }
            '\'' => {
                let w = cur.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err("unbalanced single quote".into()),
                    }
                }
            }
            '"' => {
                let w = cur.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => w.push(c),
                            Some(c) => {
                                w.push('\\');
                                w.push(c);
                            }
                            None => return Err("unbalanced double quote".into()),
                        },
                        Some(c) => w.push(c),
                        None => return Err("unbalanced double quote".into()),
                    }
                }
            }
            '\\' => match chars.next() {
                Some(c) => cur.get_or_insert_with(String::new).push(c),
                None => return Err("a trailing backslash".into()),
            },
            c => cur.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(cur);
    Ok(words)
}

/// The last lines a child wrote to stderr (each also logged as it arrives).
#[derive(Default)]
struct Tail(Mutex<VecDeque<String>>);

impl Tail {
    fn push(&self, line: String) {
        let mut t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if t.len() == STDERR_LINES {
            t.pop_front();
        }
        t.push_back(line);
    }

    fn text(&self) -> String {
        let t = self.0.lock().unwrap_or_else(|p| p.into_inner());
        t.iter().map(String::as_str).collect::<Vec<_>>().join(" | ")
    }
}

/// A GStreamer pipeline in a `gst-launch-1.0` child process, delivering RGB frames (`gst:`; see the
/// module documentation).
pub struct GstPipeline {
    pipeline: String,
    child: Child,
    /// The child was waited for (its pid, the group's id, may be reused from then on).
    reaped: bool,
    reader: FrameReader<std::process::ChildStdout>,
    tail: Arc<Tail>,
    stderr: Option<JoinHandle<()>>,
    open_timeout: Duration,
    stall_timeout: Duration,
    width: u32,
    height: u32,
    next_id: u64,
    /// GStreamer's RGB rows are padded to a multiple of 4 bytes.
    stride: usize,
    /// One frame as the child writes it (`stride · height` bytes).
    buf: Vec<u8>,
    /// The tight copy (rows padded) or the RGB conversion (a layout the consumer does not take).
    rgb: Vec<u8>,
    /// The layout the pipeline's tail asks GStreamer for.
    layout: Layout,
    /// Layouts the consumer takes (RGB unless it said otherwise).
    accepted: LayoutSet,
    /// `Some` once the child ended or failed: the error to repeat, or `None` inside for the end.
    finished: Option<Option<String>>,
}

/// GStreamer's name of a layout (the `format` of `video/x-raw` caps).
fn caps_format(layout: Layout) -> &'static str {
    match layout {
        Layout::Rgb => "RGB",
        Layout::Bgr => "BGR",
        Layout::Yuyv => "YUY2",
        Layout::Rgbx => "RGBx",
        Layout::Bgrx => "BGRx",
    }
}

impl GstPipeline {
    /// The elements appended to the user's pipeline: RGB at `width × height` on stdout.
    pub fn tail_elements(width: u32, height: u32) -> String {
        Self::tail_elements_as(width, height, Layout::Rgb)
    }

    /// The elements appended to the user's pipeline for frames of `layout`. When the pipeline
    /// already ends in that format and size (`csi:`'s `nvvidconv` writes BGRx), `videoconvert` and
    /// `videoscale` pass the buffers through untouched: no conversion on the CPU.
    pub fn tail_elements_as(width: u32, height: u32, layout: Layout) -> String {
        format!(
            "videoconvert ! videoscale ! video/x-raw,format={},width={width},height={height} ! fdsink fd=1 sync=false",
            caps_format(layout)
        )
    }

    /// Parses the `gst:` spec's rest, `[WxH:]PIPELINE` (default size: the options' width and height).
    pub fn parse_spec(rest: &str, opts: &SourceOptions) -> Result<(u32, u32, String)> {
        let sized = rest
            .split_once(':')
            .and_then(|(size, p)| Some((parse_size(size)?, p)));
        let ((w, h), pipeline) = sized.unwrap_or(((opts.width, opts.height), rest));
        let pipeline = pipeline.trim();
        if pipeline.is_empty() {
            return Err(Error::Source(
                "bad source 'gst:': expected gst:[WxH:]PIPELINE, e.g. gst:nvarguscamerasrc ! nvvidconv".into(),
            ));
        }
        RawFormat::Rgb24.frame_bytes(w, h)?;
        Ok((w, h, pipeline.trim_end_matches('!').trim_end().to_string()))
    }

    /// The launcher's arguments for `pipeline`: `-q` (no progress messages on stdout, which carries
    /// the frames), then the pipeline's words and the appended elements' (gst-launch takes each word
    /// as one argument and escapes the spaces inside one, so the pipeline is split as a shell would:
    /// at spaces, keeping quoted parts together).
    pub fn launch_args(pipeline: &str, width: u32, height: u32) -> Result<Vec<String>> {
        Self::launch_args_as(pipeline, width, height, Layout::Rgb)
    }

    /// As [`GstPipeline::launch_args`], for frames of `layout`.
    pub fn launch_args_as(
        pipeline: &str,
        width: u32,
        height: u32,
        layout: Layout,
    ) -> Result<Vec<String>> {
        let mut args = vec!["-q".to_string()];
        args.extend(
            split_words(pipeline).map_err(|e| Error::Source(format!("gst:{pipeline}: {e}")))?,
        );
        args.push("!".into());
        args.extend(
            Self::tail_elements_as(width, height, layout)
                .split(' ')
                .map(String::from),
        );
        Ok(args)
    }

    /// Launches `pipeline` (without the appended elements) for RGB frames and waits for its first
    /// frame.
    pub fn open(pipeline: &str, width: u32, height: u32, opts: &SourceOptions) -> Result<Self> {
        Self::open_as(pipeline, width, height, Layout::Rgb, opts)
    }

    /// As [`GstPipeline::open`], asking GStreamer for frames of `layout`; they are handed over as
    /// they are to a consumer that accepts `layout` and converted to RGB for any other.
    pub fn open_as(
        pipeline: &str,
        width: u32,
        height: u32,
        layout: Layout,
        opts: &SourceOptions,
    ) -> Result<Self> {
        use std::os::unix::process::CommandExt;
        if layout == Layout::Yuyv && !width.is_multiple_of(2) {
            return Err(Error::Source(format!(
                "gst:{pipeline}: YUY2 frames need an even width, got {width}"
            )));
        }
        let launch = &opts.pipe.gst_launch;
        // GStreamer pads the rows of packed 3- and 2-byte formats to a multiple of 4 bytes.
        let tight = layout.bytes_per_pixel() * width as usize;
        let stride = tight.next_multiple_of(4);
        let mut cmd = Command::new(launch);
        cmd.args(Self::launch_args_as(pipeline, width, height, layout)?)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: a terminal's Ctrl-C reaches this process, which stops the
            // child itself (the stop flag), instead of the child failing first.
            .process_group(0);
        let mut child = cmd.spawn().map_err(|e| {
            Error::Source(format!(
                "gst:{pipeline}: cannot run {} ({e}); install GStreamer's tools (gstreamer1.0-tools) or set {GST_LAUNCH_ENV}",
                launch.display()
            ))
        })?;
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Source(format!(
                "gst:{pipeline}: the child process has no pipes"
            )));
        };
        let tail = Arc::new(Tail::default());
        let t = tail.clone();
        let stderr = std::thread::Builder::new()
            .name("gst-stderr".into())
            .spawn(move || {
                // Bytes, not `lines()`: a line that is not UTF-8 must not stop the draining (a
                // full stderr pipe would block the child).
                let mut r = BufReader::new(stderr);
                let mut buf = Vec::new();
                // At most 4 KiB a line, so a child writing without newlines cannot grow it.
                while matches!((&mut r).take(4096).read_until(b'\n', &mut buf), Ok(n) if n > 0) {
                    let line = String::from_utf8_lossy(&buf).trim().to_string();
                    buf.clear();
                    if !line.is_empty() {
                        log::warn!("gst: {line}");
                        t.push(line);
                    }
                }
            });
        let stderr = match stderr {
            Ok(h) => h,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Source(format!("gst:{pipeline}: stderr thread: {e}")));
            }
        };
        let mut g = GstPipeline {
            pipeline: pipeline.to_string(),
            child,
            reaped: false,
            reader: FrameReader {
                r: stdout,
                poll: true,
                stop: opts.backoff.stop.clone(),
            },
            tail,
            stderr: Some(stderr),
            open_timeout: opts.pipe.open_timeout,
            stall_timeout: opts.pipe.stall_timeout,
            width,
            height,
            next_id: 0,
            stride,
            buf: vec![0; stride * height as usize],
            rgb: Vec::new(),
            layout,
            accepted: LayoutSet::RGB,
            finished: None,
        };
        // The first frame proves the pipeline runs; it is kept for the first `next_frame`.
        match g.read(g.open_timeout)? {
            true => Ok(g),
            false => Err(Error::Source(format!(
                "gst:{pipeline}: ended before its first frame"
            ))),
        }
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads the next frame into `buf`: `Ok(true)` for a frame, `Ok(false)` for a clean end.
    fn read(&mut self, timeout: Duration) -> Result<bool> {
        if let Some(f) = &self.finished {
            return match f {
                None => Ok(false),
                Some(e) => Err(Error::Source(e.clone())),
            };
        }
        let fill = self.reader.fill(&mut self.buf, Some(timeout));
        let err = match fill {
            Ok(Fill::Full) => return Ok(true),
            Ok(Fill::Stopped) => {
                self.stop_child();
                self.finished = Some(None);
                return Ok(false);
            }
            Ok(Fill::End) => match self.exit_status() {
                Some(s) if s.success() => {
                    self.finished = Some(None);
                    return Ok(false);
                }
                Some(s) => format!("exited with {}", describe_status(s)),
                None => "closed its output".to_string(),
            },
            Ok(Fill::Truncated(n)) => format!(
                "ended inside a frame ({n} of {} bytes; {})",
                self.buf.len(),
                self.exit_status()
                    .map(describe_status)
                    .unwrap_or_else(|| "still running".into())
            ),
            Ok(Fill::Stalled(t)) => {
                self.stop_child();
                format!("no frame for {:.1} s; killed", t.as_secs_f64())
            }
            Err(e) => {
                self.stop_child();
                format!("reading its output: {e}")
            }
        };
        self.stop_child();
        self.settle_stderr();
        let tail = self.tail.text();
        let msg = format!(
            "gst:{}: {err}{}",
            self.pipeline,
            if tail.is_empty() {
                String::new()
            } else {
                format!(": {tail}")
            }
        );
        self.finished = Some(Some(msg.clone()));
        Err(Error::Source(msg))
    }

    /// The child's exit status once its output closed (it is exiting: waits up to 2 s, then kills).
    fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        let until = Instant::now() + Duration::from_secs(2);
        loop {
            match self.child.try_wait() {
                Ok(Some(s)) => {
                    self.reaped = true;
                    return Some(s);
                }
                Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(10)),
                _ => {
                    self.stop_child();
                    return None;
                }
            }
        }
    }

    /// Kills the child's process group (the launcher and anything it started, which would otherwise
    /// keep the pipes open) and reaps the child; nothing once it is reaped.
    fn stop_child(&mut self) {
        use nix::sys::signal::{killpg, Signal};
        if self.reaped {
            return;
        }
        // The group id is the child's pid (`process_group(0)`), reserved until the child is reaped
        // below, so the signal cannot reach another process.
        let _ = killpg(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            Signal::SIGKILL,
        );
        let _ = self.child.wait();
        self.reaped = true;
    }

    /// Lets the stderr thread take the child's last lines (its pipe closes with the child), waiting
    /// at most half a second: a grandchild still holding the pipe must not block the caller.
    fn settle_stderr(&mut self) {
        let until = Instant::now() + Duration::from_millis(500);
        while self.stderr.as_ref().is_some_and(|h| !h.is_finished()) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        if let Some(h) = self.stderr.take_if(|h| h.is_finished()) {
            let _ = h.join();
        }
    }
}

/// `exit status 1`, `signal 9 (SIGKILL)`, ...
fn describe_status(s: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => s.to_string(),
    }
}

impl FrameSource for GstPipeline {
    fn describe(&self) -> String {
        format!(
            "gst:{} ({}x{} {}, pid {})",
            self.pipeline,
            self.width,
            self.height,
            caps_format(self.layout),
            self.child.id()
        )
    }

    fn accept_layouts(&mut self, accepted: LayoutSet) {
        self.accepted = accepted;
    }

    fn next_frame(&mut self) -> Result<Option<Frame<'_>>> {
        // Frame 0 was read by `open`.
        if self.next_id > 0 && !self.read(self.stall_timeout)? {
            return Ok(None);
        }
        let id = self.next_id;
        self.next_id += 1;
        let (w, h) = (self.width, self.height);
        let tight = self.layout.bytes_per_pixel() * w as usize;
        let layout = if self.accepted.contains(self.layout) {
            self.layout
        } else {
            Layout::Rgb
        };
        let pixels = match (self.layout, layout) {
            // Taken as it comes: the buffer itself when its rows are tight.
            (_, l) if l == self.layout && self.stride == tight => &self.buf,
            (Layout::Rgb | Layout::Bgr, _) => {
                self.rgb.resize(3 * w as usize * h as usize, 0);
                // Without the swap this is the tight copy (padding dropped) of RGB or of BGR that
                // the consumer takes as it is.
                let swap = self.layout == Layout::Bgr && layout == Layout::Rgb;
                rgb24_to_rgb(&self.buf, w, h, self.stride, swap, &mut self.rgb)?;
                &self.rgb
            }
            (Layout::Rgbx | Layout::Bgrx, _) => {
                // 4-byte rows are never padded, so only the conversion to RGB is left.
                self.rgb.resize(3 * w as usize * h as usize, 0);
                let bgr = self.layout == Layout::Bgrx;
                rgbx_to_rgb(&self.buf, w, h, self.stride, bgr, &mut self.rgb)?;
                &self.rgb
            }
            (Layout::Yuyv, _) => {
                // 2·W bytes with W even (checked at open): never padded, so only the conversion
                // to RGB is left.
                self.rgb.resize(3 * w as usize * h as usize, 0);
                yuyv_to_rgb(&self.buf, w, h, self.stride, &mut self.rgb)?;
                &self.rgb
            }
        };
        Ok(Some(Frame {
            id,
            timestamp_ns: monotonic_ns(),
            width: w,
            height: h,
            layout,
            pixels,
        }))
    }
}

impl Drop for GstPipeline {
    fn drop(&mut self) {
        self.stop_child();
        self.settle_stderr();
    }
}

/// The `gst:` pipeline of `csi:N[:WxH[@fps]]`: Jetson CSI camera `N` through the ISP
/// (`nvarguscamerasrc`), scaled and converted to BGRx in hardware (`nvvidconv`); the frames are
/// `WxH` (default: the options' size) at `fps` (default: the options' rate). The sensor mode is
/// Argus's choice for that rate.
pub fn csi_pipeline(rest: &str, opts: &SourceOptions) -> Result<String> {
    let bad = || {
        Error::Source(format!(
            "bad source 'csi:{rest}': expected csi:N[:WxH[@fps]], e.g. csi:0 or csi:1:1280x720@30"
        ))
    };
    let (sensor, params) = match rest.split_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (rest, None),
    };
    let sensor: u32 = sensor.parse().map_err(|_| bad())?;
    let (mut w, mut h, mut fps) = (opts.width, opts.height, opts.fps.max(1));
    if let Some(p) = params {
        let (size, rate) = parse_size_rate(p).ok_or_else(bad)?;
        (w, h) = size;
        if let Some(f) = rate {
            fps = Some(f).filter(|f| *f > 0).ok_or_else(bad)?;
        }
    }
    RawFormat::Rgb24.frame_bytes(w, h)?;
    Ok(format!(
        "{w}x{h}:nvarguscamerasrc sensor-id={sensor} ! video/x-raw(memory:NVMM),framerate={fps}/1 ! nvvidconv ! video/x-raw,width={w},height={h},format=BGRx"
    ))
}

/// The layout a `csi:` pipeline (from [`csi_pipeline`]) is read in: `nvvidconv`'s BGRx, passed
/// through untouched, when its rows are surely `4·W` bytes (`W` a multiple of 64, so a row is a
/// multiple of 256 bytes: every common sensor mode); otherwise RGB, which `videoconvert` writes from
/// the frame whatever the row pitch `nvvidconv` chose (a pass-through would hand its padding on).
pub fn csi_layout(spec: &str, opts: &SourceOptions) -> Result<Layout> {
    let (w, _, _) = GstPipeline::parse_spec(spec, opts)?;
    Ok(if w % 64 == 0 {
        Layout::Bgrx
    } else {
        Layout::Rgb
    })
}

/// `gst:[WxH:]PIPELINE`, re-launched with back-off after failures when `opts.reconnect`.
pub fn open_gst(rest: &str, opts: &SourceOptions) -> Result<Box<dyn FrameSource>> {
    open_gst_as(rest, Layout::Rgb, opts)
}

/// As [`open_gst`], asking the pipeline for frames of `layout` (`csi:` asks for BGRx, what
/// `nvvidconv` writes, so that the GPU's preprocessing kernel reads them without a CPU conversion).
pub fn open_gst_as(
    rest: &str,
    layout: Layout,
    opts: &SourceOptions,
) -> Result<Box<dyn FrameSource>> {
    let (w, h, pipeline) = GstPipeline::parse_spec(rest, opts)?;
    let first = GstPipeline::open_as(&pipeline, w, h, layout, opts)?;
    if !opts.reconnect {
        return Ok(Box::new(first));
    }
    let o = opts.clone();
    let opener = move || GstPipeline::open_as(&pipeline, w, h, layout, &o);
    Ok(Box::new(Reconnecting::new(
        first,
        opener,
        opts.backoff.clone(),
    )))
}
