//! Capture-format negotiation as a pure function over what a device offers, so it is testable without
//! a camera. The V4L2 source enumerates formats, frame sizes and intervals into [`Offered`] entries and
//! asks [`choose`] for the best one.

use std::fmt;

use super::PixelFormat;
use crate::{Error, Result};

/// One (format, size, frame rate) combination a device offers.
#[derive(Debug, Clone, PartialEq)]
pub struct Offered {
    /// FourCC code as reported by the device.
    pub fourcc: [u8; 4],
    /// Frame width.
    pub width: u32,
    /// Frame height.
    pub height: u32,
    /// Frame rates available at this size (frames per second); empty = unknown.
    pub fps: Vec<f64>,
}

impl fmt::Display for Offered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = String::from_utf8_lossy(&self.fourcc);
        write!(f, "{code} {}x{}", self.width, self.height)?;
        if !self.fps.is_empty() {
            let rates: Vec<String> = self.fps.iter().map(|r| format!("{r:.0}")).collect();
            write!(f, " @ {} fps", rates.join("/"))?;
        }
        Ok(())
    }
}

/// What the user asked for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Wanted {
    /// Requested width.
    pub width: u32,
    /// Requested height.
    pub height: u32,
    /// Requested frames per second.
    pub fps: f64,
}

/// The chosen capture mode.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Choice {
    /// Pixel format (one we can convert).
    pub format: PixelFormat,
    /// The FourCC code as the device offered it, to ask for (`JPEG` stays `JPEG`: some drivers
    /// refuse the `MJPG` spelling of the format).
    pub fourcc: [u8; 4],
    /// Frame width.
    pub width: u32,
    /// Frame height.
    pub height: u32,
    /// Frame rate to request (0 = leave the device default).
    pub fps: f64,
}

/// Preference among formats of equal size and rate: raw formats first (no decode, no allocation),
/// MJPEG last (a JPEG decode per frame).
fn format_rank(f: PixelFormat) -> u32 {
    match f {
        PixelFormat::Yuyv => 0,
        PixelFormat::Rgb24 => 1,
        PixelFormat::Bgr24 => 2,
        PixelFormat::Mjpeg => 3,
    }
}

/// Cost of a size: exact = 0; larger sizes cost their extra pixels, smaller sizes (which lose
/// resolution the model would use) four times as much.
fn size_cost(o: &Offered, w: &Wanted) -> f64 {
    let want = w.width as f64 * w.height as f64;
    let got = o.width as f64 * o.height as f64;
    let aspect = ((o.width as f64 / o.height.max(1) as f64)
        - (w.width as f64 / w.height.max(1) as f64))
        .abs();
    let area = if got >= want {
        (got - want) / want
    } else {
        4.0 * (want - got) / want
    };
    area + aspect
}

/// Cost of a rate: rates at or above the request are cheap (we drop frames anyway), rates below
/// cost ten times more.
fn fps_pick(o: &Offered, w: &Wanted) -> (f64, f64) {
    if o.fps.is_empty() {
        return (0.0, 0.0);
    }
    let mut best = (f64::INFINITY, 0.0);
    for &r in &o.fps {
        let c = if r >= w.fps {
            (r - w.fps) / w.fps.max(1.0)
        } else {
            10.0 * (w.fps - r) / w.fps.max(1.0)
        };
        if c < best.0 {
            best = (c, r);
        }
    }
    best
}

/// Picks the offered mode closest to `want` among the formats we can convert (YUYV, MJPEG, RGB3,
/// BGR3). Errors list everything the device offers when none is usable.
pub fn choose(offered: &[Offered], want: &Wanted) -> Result<Choice> {
    let mut best: Option<((f64, f64, u32), Choice)> = None;
    for o in offered {
        let Some(format) = PixelFormat::from_fourcc(o.fourcc) else {
            continue;
        };
        if o.width == 0 || o.height == 0 {
            continue;
        }
        let (fc, fps) = fps_pick(o, want);
        let key = (size_cost(o, want), fc, format_rank(format));
        let better = match &best {
            None => true,
            Some((k, _)) => key.partial_cmp(k) == Some(std::cmp::Ordering::Less),
        };
        if better {
            best = Some((
                key,
                Choice {
                    format,
                    fourcc: o.fourcc,
                    width: o.width,
                    height: o.height,
                    fps,
                },
            ));
        }
    }
    best.map(|(_, c)| c).ok_or_else(|| {
        let list: Vec<String> = offered.iter().map(|o| o.to_string()).collect();
        Error::Source(format!(
            "no supported pixel format (need YUYV, MJPG, RGB3 or BGR3); the device offers: {}",
            if list.is_empty() {
                "nothing".to_string()
            } else {
                list.join(", ")
            }
        ))
    })
}

/// The sizes to offer for a device's stepwise range (`min..=max` in `step`s, per axis): the wanted
/// size clamped into the range and snapped down to a step, and the largest size. `None` for a range
/// a driver reported upside down (a minimum above its maximum) or with a zero maximum, which is
/// skipped rather than trusted.
pub fn stepwise_sizes(
    want: (u32, u32),
    (min_w, max_w, step_w): (u32, u32, u32),
    (min_h, max_h, step_h): (u32, u32, u32),
) -> Option<[(u32, u32); 2]> {
    let snap = |v: u32, lo: u32, hi: u32, step: u32| {
        if lo > hi || hi == 0 {
            return None;
        }
        let v = v.clamp(lo, hi);
        Some(lo + (v - lo) / step.max(1) * step.max(1))
    };
    Some([
        (
            snap(want.0, min_w, max_w, step_w)?,
            snap(want.1, min_h, max_h, step_h)?,
        ),
        (max_w, max_h),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn o(code: &[u8; 4], w: u32, h: u32, fps: &[f64]) -> Offered {
        Offered {
            fourcc: *code,
            width: w,
            height: h,
            fps: fps.to_vec(),
        }
    }

    const WANT: Wanted = Wanted {
        width: 640,
        height: 360,
        fps: 30.0,
    };

    #[test]
    fn exact_match_wins_and_prefers_raw() {
        let offered = [
            o(b"MJPG", 640, 360, &[30.0, 15.0]),
            o(b"YUYV", 640, 360, &[30.0]),
            o(b"YUYV", 1280, 720, &[10.0]),
        ];
        let c = choose(&offered, &WANT).unwrap();
        assert_eq!(
            (c.format, c.width, c.height, c.fps),
            (PixelFormat::Yuyv, 640, 360, 30.0)
        );
    }

    #[test]
    fn fps_then_size_trade_offs() {
        // YUYV only reaches 5 fps at 640x360; MJPEG does 30: the rate decides.
        let offered = [
            o(b"YUYV", 640, 360, &[5.0]),
            o(b"MJPG", 640, 360, &[30.0, 60.0]),
        ];
        let c = choose(&offered, &WANT).unwrap();
        assert_eq!((c.format, c.fps), (PixelFormat::Mjpeg, 30.0));
        // No exact size: the nearest size at or above the request wins (a 4:3 640x480 beats both a
        // quarter-size and a 4x-size 16:9 mode); a larger size beats a smaller one.
        let offered = [
            o(b"YUYV", 320, 180, &[30.0]),
            o(b"YUYV", 640, 480, &[30.0]),
            o(b"YUYV", 1280, 720, &[30.0]),
        ];
        let c = choose(&offered, &WANT).unwrap();
        assert_eq!((c.width, c.height), (640, 480));
        let offered = [o(b"YUYV", 320, 180, &[30.0]), o(b"YUYV", 960, 540, &[30.0])];
        let c = choose(&offered, &WANT).unwrap();
        assert_eq!((c.width, c.height), (960, 540));
        // The rate closest above the request is chosen.
        let offered = [o(b"YUYV", 640, 360, &[60.0, 25.0, 30.0, 15.0])];
        assert_eq!(choose(&offered, &WANT).unwrap().fps, 30.0);
        let offered = [o(b"YUYV", 640, 360, &[60.0, 15.0])];
        assert_eq!(choose(&offered, &WANT).unwrap().fps, 60.0);
        let offered = [o(b"RGB3", 640, 360, &[])];
        let c = choose(&offered, &WANT).unwrap();
        assert_eq!((c.format, c.fps), (PixelFormat::Rgb24, 0.0));
    }

    /// A device's `JPEG` is asked for as `JPEG` (the format it offered), not as `MJPG`.
    #[test]
    fn the_offered_fourcc_is_kept() {
        let c = choose(&[o(b"JPEG", 640, 360, &[30.0])], &WANT).unwrap();
        assert_eq!((c.format, c.fourcc), (PixelFormat::Mjpeg, *b"JPEG"));
        let c = choose(&[o(b"MJPG", 640, 360, &[30.0])], &WANT).unwrap();
        assert_eq!(c.fourcc, *b"MJPG");
    }

    /// Stepwise ranges: the wanted size snapped into them, and their largest; a range upside down
    /// (minimum above maximum: `clamp` panicked on it) or empty is skipped.
    #[test]
    fn stepwise_ranges_are_snapped_and_bad_ones_skipped() {
        assert_eq!(
            stepwise_sizes((640, 360), (16, 1920, 16), (16, 1080, 8)),
            Some([(640, 360), (1920, 1080)])
        );
        // Clamped into the range, snapped down to a step from the minimum; a zero step is 1.
        assert_eq!(
            stepwise_sizes((650, 100), (100, 1000, 100), (200, 400, 0)),
            Some([(600, 200), (1000, 400)])
        );
        assert_eq!(
            stepwise_sizes((640, 360), (1920, 16, 16), (16, 1080, 8)),
            None
        );
        assert_eq!(
            stepwise_sizes((640, 360), (16, 1920, 16), (1080, 16, 8)),
            None
        );
        assert_eq!(stepwise_sizes((640, 360), (0, 0, 1), (0, 0, 1)), None);
    }

    #[test]
    fn unsupported_formats_list_what_is_offered() {
        let offered = [
            o(b"NV12", 640, 360, &[30.0]),
            o(b"H264", 1920, 1080, &[30.0]),
        ];
        let e = choose(&offered, &WANT).unwrap_err().to_string();
        assert!(
            e.contains("NV12 640x360 @ 30 fps") && e.contains("H264 1920x1080"),
            "{e}"
        );
        let e = choose(&[], &WANT).unwrap_err().to_string();
        assert!(e.contains("offers: nothing"), "{e}");
    }
}
