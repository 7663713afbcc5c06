//! V4L2 camera capture (feature `camera-v4l`, crate `v4l` 0.14): mmap streaming, format negotiation
//! through [`super::negotiate::choose`], conversion of YUYV / MJPEG / RGB3 / BGR3 into RGB8.
//!
//! The device's buffers are memory-mapped; each dequeued buffer is converted straight into the source's
//! RGB8 buffer (no intermediate copy) and re-queued on the next call. A consumer that accepts the
//! camera's own layout ([`FrameSource::accept_layouts`]: YUYV or BGR3, and RGB3 always) gets the mapped
//! buffer itself when its rows are tight, else its rows copied without their padding.

use std::path::PathBuf;
use std::time::Duration;

use v4l::buffer::Type;
use v4l::format::FourCC;
use v4l::frameinterval::FrameIntervalEnum;
use v4l::framesize::FrameSizeEnum;
use v4l::io::mmap::Stream;
use v4l::io::traits::CaptureStream;
use v4l::video::capture::Parameters;
use v4l::video::Capture;
use v4l::Device;

use super::convert::{mjpeg_to_rgb, rgb24_to_rgb, yuyv_to_rgb};
use super::negotiate::{choose, stepwise_sizes, Offered, Wanted};
use super::{Frame, FrameSource, Layout, LayoutSet, PixelFormat, SourceOptions};
use crate::{Error, Result};

/// Number of mmap buffers requested from the driver.
const BUFFERS: u32 = 4;
/// A dequeue that takes longer than this is treated as a device failure.
const DEQUEUE_TIMEOUT: Duration = Duration::from_secs(2);

/// A V4L2 capture device.
pub struct V4l2Source {
    path: PathBuf,
    // Field order matters: the stream must be dropped before the device.
    stream: Stream<'static>,
    _dev: Device,
    format: PixelFormat,
    width: u32,
    height: u32,
    stride: usize,
    fps: f64,
    next_id: u64,
    buf: Vec<u8>,
    /// Bytes of one frame as RGB (checked at open).
    rgb_bytes: usize,
    /// Layouts the consumer takes as the camera delivers them.
    accepted: LayoutSet,
}

fn io_err(path: &std::path::Path, what: &str, e: std::io::Error) -> Error {
    if e.kind() == std::io::ErrorKind::NotFound {
        Error::Source(format!(
            "{}: no such camera device (is it plugged in? `ls /dev/video*`)",
            path.display()
        ))
    } else {
        Error::Source(format!("{}: {what}: {e}", path.display()))
    }
}

/// Lists every (format, size, rates) the device offers.
fn enumerate(dev: &Device, want: &Wanted) -> std::io::Result<Vec<Offered>> {
    let mut out = Vec::new();
    for desc in dev.enum_formats()? {
        let fourcc = desc.fourcc;
        let sizes = dev.enum_framesizes(fourcc).unwrap_or_default();
        let mut discrete = Vec::new();
        for s in sizes {
            match s.size {
                FrameSizeEnum::Discrete(d) => discrete.push((d.width, d.height)),
                FrameSizeEnum::Stepwise(sw) => {
                    // The requested size clamped and snapped to the steps, plus the largest.
                    match stepwise_sizes(
                        (want.width, want.height),
                        (sw.min_width, sw.max_width, sw.step_width),
                        (sw.min_height, sw.max_height, sw.step_height),
                    ) {
                        Some(sizes) => discrete.extend(sizes),
                        None => log::warn!(
                            "{}: skipping a stepwise size range the driver reports upside down ({}..{} x {}..{})",
                            String::from_utf8_lossy(&fourcc.repr),
                            sw.min_width,
                            sw.max_width,
                            sw.min_height,
                            sw.max_height
                        ),
                    }
                }
            }
        }
        if discrete.is_empty() {
            // Some drivers do not enumerate sizes; offer the current format's size.
            if let Ok(f) = dev.format() {
                discrete.push((f.width, f.height));
            }
        }
        for (w, h) in discrete {
            let mut fps = Vec::new();
            for iv in dev.enum_frameintervals(fourcc, w, h).unwrap_or_default() {
                match iv.interval {
                    FrameIntervalEnum::Discrete(f) if f.numerator > 0 => {
                        fps.push(f.denominator as f64 / f.numerator as f64)
                    }
                    FrameIntervalEnum::Stepwise(sw) => {
                        for f in [sw.min, sw.max] {
                            if f.numerator > 0 {
                                fps.push(f.denominator as f64 / f.numerator as f64);
                            }
                        }
                        if want.fps > 0.0 {
                            fps.push(want.fps);
                        }
                    }
                    _ => {}
                }
            }
            out.push(Offered {
                fourcc: fourcc.repr,
                width: w,
                height: h,
                fps,
            });
        }
    }
    Ok(out)
}

/// Every (format, size, rates) the device at `path` offers, for the default request (640×360 at 30
/// fps: stepwise sizes are offered at that size and at their largest); nothing is streamed.
pub fn offered_modes(path: &str) -> Result<Vec<Offered>> {
    let p = PathBuf::from(path);
    let dev = Device::with_path(&p).map_err(|e| io_err(&p, "open", e))?;
    let o = SourceOptions::default();
    let want = Wanted {
        width: o.width,
        height: o.height,
        fps: o.fps as f64,
    };
    enumerate(&dev, &want).map_err(|e| io_err(&p, "enumerate formats", e))
}

impl V4l2Source {
    /// Opens `path` (e.g. `/dev/video0`), negotiates the mode closest to `opts` and starts streaming.
    pub fn open(path: &str, opts: &SourceOptions) -> Result<Self> {
        let p = PathBuf::from(path);
        let dev = Device::with_path(&p).map_err(|e| io_err(&p, "open", e))?;
        let want = Wanted {
            width: opts.width,
            height: opts.height,
            fps: opts.fps as f64,
        };
        let offered = enumerate(&dev, &want).map_err(|e| io_err(&p, "enumerate formats", e))?;
        let choice =
            choose(&offered, &want).map_err(|e| Error::Source(format!("{}: {e}", p.display())))?;
        let mut fmt = dev.format().map_err(|e| io_err(&p, "get format", e))?;
        fmt.width = choice.width;
        fmt.height = choice.height;
        // The code the device offered (its `JPEG` is not asked for as `MJPG`).
        fmt.fourcc = FourCC::new(&choice.fourcc);
        let got = dev
            .set_format(&fmt)
            .map_err(|e| io_err(&p, "set format", e))?;
        let format = PixelFormat::from_fourcc(got.fourcc.repr).ok_or_else(|| {
            Error::Source(format!(
                "{}: asked for {}, the driver switched to unsupported {}",
                p.display(),
                String::from_utf8_lossy(&choice.fourcc),
                String::from_utf8_lossy(&got.fourcc.repr)
            ))
        })?;
        let mut fps = choice.fps;
        if choice.fps > 0.0 {
            match dev.set_params(&Parameters::with_fps(choice.fps.round() as u32)) {
                Ok(pr) if pr.interval.numerator > 0 => {
                    fps = pr.interval.denominator as f64 / pr.interval.numerator as f64
                }
                Ok(_) => {}
                Err(e) => log::warn!("{}: could not set {} fps: {e}", p.display(), choice.fps),
            }
        }
        // A driver's 0x0 (or unaddressable) size would pass every frame check and end in the
        // preprocessing.
        let rgb_bytes = Layout::Rgb
            .frame_bytes(got.width, got.height)
            .filter(|&n| n > 0)
            .ok_or_else(|| {
                Error::Source(format!(
                    "{}: the driver set an unusable frame size {}x{}",
                    p.display(),
                    got.width,
                    got.height
                ))
            })?;
        let min_stride = match format {
            PixelFormat::Yuyv => 2 * got.width as usize,
            PixelFormat::Rgb24 | PixelFormat::Bgr24 => 3 * got.width as usize,
            PixelFormat::Mjpeg => 0,
        };
        let stride = (got.stride as usize).max(min_stride);
        let mut stream = Stream::with_buffers(&dev, Type::VideoCapture, BUFFERS)
            .map_err(|e| io_err(&p, "mmap buffers", e))?;
        stream.set_timeout(DEQUEUE_TIMEOUT);
        log::info!(
            "{}: {} {}x{} @ {:.1} fps (asked {}x{} @ {})",
            p.display(),
            String::from_utf8_lossy(&got.fourcc.repr),
            got.width,
            got.height,
            fps,
            opts.width,
            opts.height,
            opts.fps
        );
        Ok(V4l2Source {
            path: p,
            stream,
            _dev: dev,
            format,
            width: got.width,
            height: got.height,
            stride,
            fps,
            next_id: 0,
            buf: vec![0; rgb_bytes],
            rgb_bytes,
            accepted: LayoutSet::RGB,
        })
    }
}

impl FrameSource for V4l2Source {
    fn describe(&self) -> String {
        format!(
            "V4L2 {} {} {}x{} @ {:.1} fps",
            self.path.display(),
            String::from_utf8_lossy(&self.format.fourcc()),
            self.width,
            self.height,
            self.fps
        )
    }

    fn accept_layouts(&mut self, accepted: LayoutSet) {
        self.accepted = accepted;
    }

    fn next_frame(&mut self) -> Result<Option<Frame<'_>>> {
        let (data, meta) = self
            .stream
            .next()
            .map_err(|e| io_err(&self.path, "capture", e))?;
        let id = self.next_id;
        self.next_id += 1;
        let data = usable_payload(meta.flags, meta.bytesused, data)
            .map_err(|why| Error::Frame(format!("{}: frame {id}: {why}", self.path.display())))?;
        let ts = meta.timestamp;
        // time_t and suseconds_t are i64 on the 64-bit targets we build for (aarch64 Jetson, x86_64);
        // saturating, so that a driver's wild timestamp cannot overflow.
        let timestamp_ns = ts
            .sec
            .saturating_mul(1_000_000_000)
            .saturating_add(ts.usec.saturating_mul(1000))
            .max(0) as u64;
        let (w, h) = (self.width, self.height);
        let native = match self.format {
            PixelFormat::Yuyv => Some(Layout::Yuyv),
            PixelFormat::Rgb24 => Some(Layout::Rgb),
            PixelFormat::Bgr24 => Some(Layout::Bgr),
            PixelFormat::Mjpeg => None,
        }
        .filter(|l| self.accepted.contains(*l));
        if let Some(layout) = native {
            // The consumer reads this layout itself: hand the driver's buffer over (tight rows) or
            // its rows without their padding.
            let row = w as usize * layout.bytes_per_pixel();
            let need = self.stride * (h as usize).saturating_sub(1) + row;
            if data.len() < need {
                // One short buffer (a USB hiccup): skip the frame, keep the device.
                return Err(Error::Frame(format!(
                    "{}: {} bytes in a {w}x{h} {} frame of stride {}, {need} expected",
                    self.path.display(),
                    data.len(),
                    layout.name(),
                    self.stride
                )));
            }
            let pixels = if self.stride == row {
                &data[..row * h as usize]
            } else {
                self.buf.resize(row * h as usize, 0);
                for (dst, src) in self.buf.chunks_exact_mut(row).zip(data.chunks(self.stride)) {
                    dst.copy_from_slice(&src[..row]);
                }
                &self.buf[..]
            };
            return Ok(Some(Frame {
                id,
                timestamp_ns,
                width: w,
                height: h,
                layout,
                pixels,
            }));
        }
        self.buf.resize(self.rgb_bytes, 0);
        match self.format {
            PixelFormat::Yuyv => yuyv_to_rgb(data, w, h, self.stride, &mut self.buf),
            PixelFormat::Rgb24 => rgb24_to_rgb(data, w, h, self.stride, false, &mut self.buf),
            PixelFormat::Bgr24 => rgb24_to_rgb(data, w, h, self.stride, true, &mut self.buf),
            PixelFormat::Mjpeg => mjpeg_to_rgb(data, w, h, &mut self.buf),
        }
        // A truncated JPEG or a short buffer spoils this frame only.
        .map_err(|e| Error::Frame(format!("{}: {e}", self.path.display())))?;
        Ok(Some(Frame::rgb(id, timestamp_ns, w, h, &self.buf)))
    }
}

/// The bytes of a dequeued buffer that hold its frame: the first `bytesused` of the mapping. An
/// error (the frame is skipped and counted, the device kept) for a buffer the driver marked
/// corrupt (`V4L2_BUF_FLAG_ERROR`: a USB transfer that lost packets) or that holds no bytes.
fn usable_payload(
    flags: v4l::buffer::Flags,
    bytesused: u32,
    data: &[u8],
) -> std::result::Result<&[u8], String> {
    if flags.contains(v4l::buffer::Flags::ERROR) {
        return Err("the driver marked the buffer corrupt (V4L2_BUF_FLAG_ERROR)".into());
    }
    let used = (bytesused as usize).min(data.len());
    if used == 0 {
        return Err("an empty buffer".into());
    }
    Ok(&data[..used])
}

#[cfg(test)]
mod tests {
    use super::*;
    use v4l::buffer::Flags;

    /// A buffer flagged corrupt is refused whatever it holds; an empty one too; otherwise the
    /// first `bytesused` bytes (never more than the mapping).
    #[test]
    fn corrupt_and_empty_buffers_are_refused() {
        let data = [1u8, 2, 3, 4];
        let done = Flags::MAPPED | Flags::DONE;
        assert_eq!(usable_payload(done, 3, &data), Ok(&data[..3]));
        assert_eq!(usable_payload(done, 99, &data), Ok(&data[..]));
        let e = usable_payload(done | Flags::ERROR, 4, &data).unwrap_err();
        assert!(e.contains("V4L2_BUF_FLAG_ERROR"), "{e}");
        assert!(usable_payload(done, 0, &data).is_err());
        assert!(usable_payload(done, 4, &[]).is_err());
    }

    #[test]
    fn missing_device_is_a_clear_error() {
        let e = V4l2Source::open("/dev/video-does-not-exist", &SourceOptions::default())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("no such camera device"), "{e}");
    }
}
