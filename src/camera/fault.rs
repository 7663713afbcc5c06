//! Fault injection: a source that wraps a real one and fails on a schedule, so the reliability tests
//! exercise the same re-open, resize and shutdown paths a failing camera does.
//!
//! Spec: `faulty:PLAN:INNER`, where `INNER` is any source spec (`synthetic:118x70@20`, a folder, a
//! video, `/dev/video0`) and `PLAN` a comma-separated list of `KIND@N[=ARG]` events, each fired
//! when the wrapper has delivered `N` frames in all (counted across re-opens):
//!
//! | event | what the source does | what a real device does that it stands for |
//! |---|---|---|
//! | `eio@N` | `next_frame` fails with `EIO` | a USB transfer error |
//! | `enodev@N[=K]` | fails with `ENODEV`, then the next `K` re-opens fail too (default 1) | the camera unplugged and plugged back in |
//! | `stall@N=DUR` | blocks for `DUR` (`1500ms`, `3s`), then fails with `ETIMEDOUT` | a device that stops delivering until the driver's dequeue timeout |
//! | `resize@N=WxH` | delivers `W×H` frames from then on (nearest-neighbour from the inner frames) | a camera renegotiated to another resolution |
//! | `format@N` | fails with "unsupported pixel format" | a camera renegotiated to a format we cannot convert |
//! | `eof@N` | reports end of stream | a device or pipe that closes |
//!
//! The wrapped source is always re-opened by [`super::reconnect::Reconnecting`] with end of stream
//! counted as a failure, so every event above is followed by a re-open; the plan's progress is
//! shared across re-opens, so each event fires once.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::convert::resize_nearest;
use super::LayoutSet;
use super::{Frame, FrameSource};
use crate::{Error, Result};

// Linux errno values (the same on every Linux architecture we build for).
const EIO: i32 = 5;
const ENODEV: i32 = 19;
const ETIMEDOUT: i32 = 110;

/// One scheduled fault.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// `next_frame` fails with this OS error (`EIO`, `ENODEV`); the next `failed_opens` re-opens
    /// fail with `ENODEV` too.
    Os {
        /// The errno.
        errno: i32,
        /// Re-opens that fail after it.
        failed_opens: u32,
    },
    /// Blocks this long, then fails with `ETIMEDOUT`.
    Stall(Duration),
    /// Frames of this size from now on.
    Resize(u32, u32),
    /// Fails as a pixel format we cannot convert would.
    Format,
    /// End of stream.
    Eof,
}

/// Faults and the frame counts at which they fire, in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultPlan {
    /// `(frames delivered before it, fault)`, sorted by frame count.
    pub events: Vec<(u64, Fault)>,
}

impl FaultPlan {
    /// Parses `KIND@N[=ARG],…` (see the module docs).
    pub fn parse(plan: &str) -> Result<Self> {
        let bad = |item: &str, why: &str| {
            Error::Source(format!(
                "bad fault `{item}` in `{plan}`: {why} (expected eio@N, enodev@N[=K], stall@N=DUR, resize@N=WxH, format@N or eof@N)"
            ))
        };
        let mut events = Vec::new();
        for item in plan.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (kind, rest) = item.split_once('@').ok_or_else(|| bad(item, "no @N"))?;
            let (n, arg) = match rest.split_once('=') {
                Some((n, a)) => (n, Some(a)),
                None => (rest, None),
            };
            let n: u64 = n.parse().map_err(|_| bad(item, "N is not a frame count"))?;
            let fault = match (kind, arg) {
                ("eio", None) => Fault::Os {
                    errno: EIO,
                    failed_opens: 0,
                },
                ("enodev", k) => Fault::Os {
                    errno: ENODEV,
                    failed_opens: match k {
                        Some(k) => k.parse().map_err(|_| bad(item, "K is not a count"))?,
                        None => 1,
                    },
                },
                ("stall", Some(d)) => {
                    Fault::Stall(parse_duration(d).ok_or_else(|| bad(item, "bad duration"))?)
                }
                ("resize", Some(s)) => {
                    let (w, h) = s.split_once('x').ok_or_else(|| bad(item, "expected WxH"))?;
                    let (w, h) = (w.parse::<u32>(), h.parse::<u32>());
                    match (w, h) {
                        (Ok(w), Ok(h)) if w > 0 && h > 0 && (w as u64 * h as u64) <= 1 << 26 => {
                            Fault::Resize(w, h)
                        }
                        _ => return Err(bad(item, "expected WxH, each above 0")),
                    }
                }
                ("format", None) => Fault::Format,
                ("eof", None) => Fault::Eof,
                _ => return Err(bad(item, "unknown kind or argument")),
            };
            events.push((n, fault));
        }
        if events.is_empty() {
            return Err(Error::Source(format!("empty fault plan `{plan}`")));
        }
        events.sort_by_key(|e| e.0);
        Ok(FaultPlan { events })
    }
}

/// `1500ms`, `3s`, `0.5s`.
fn parse_duration(s: &str) -> Option<Duration> {
    if let Some(ms) = s.strip_suffix("ms") {
        return ms.parse::<u64>().ok().map(Duration::from_millis);
    }
    let secs: f64 = s.strip_suffix('s')?.parse().ok()?;
    (secs.is_finite() && (0.0..=3600.0).contains(&secs)).then(|| Duration::from_secs_f64(secs))
}

/// Progress through a plan, shared by every re-opened instance of a faulty source.
#[derive(Debug, Default)]
pub struct FaultState {
    /// Frames delivered so far (all instances).
    pub delivered: AtomicU64,
    /// Index of the next event.
    next: AtomicUsize,
    /// Re-opens still to fail.
    failing_opens: AtomicU64,
    /// Current forced frame size (`w << 32 | h`; 0 = the inner source's own).
    size: AtomicU64,
    /// Faults fired so far.
    pub fired: AtomicU64,
}

impl FaultState {
    /// Called by the opener: fails while an `enodev` event's failed re-opens last.
    pub fn check_open(&self) -> Result<()> {
        let left = self.failing_opens.load(Ordering::SeqCst);
        if left > 0 {
            self.failing_opens.store(left - 1, Ordering::SeqCst);
            return Err(os_error(ENODEV, "re-opening the device"));
        }
        Ok(())
    }
}

fn os_error(errno: i32, what: &str) -> Error {
    Error::Source(format!(
        "{what}: {} (injected fault)",
        std::io::Error::from_raw_os_error(errno)
    ))
}

/// A source that fires a [`FaultPlan`]'s events while passing the inner source's frames through.
pub struct FaultySource {
    inner: Box<dyn FrameSource>,
    plan: Arc<FaultPlan>,
    state: Arc<FaultState>,
    resized: Vec<u8>,
}

impl FaultySource {
    /// Wraps `inner`; `state` carries the plan's progress across re-opens.
    pub fn new(inner: Box<dyn FrameSource>, plan: Arc<FaultPlan>, state: Arc<FaultState>) -> Self {
        FaultySource {
            inner,
            plan,
            state,
            resized: Vec::new(),
        }
    }

    /// Fires the event due now, if any.
    fn fire(&mut self) -> Fired {
        let i = self.state.next.load(Ordering::SeqCst);
        let Some((at, fault)) = self.plan.events.get(i) else {
            return Fired::Nothing;
        };
        if self.state.delivered.load(Ordering::SeqCst) < *at {
            return Fired::Nothing;
        }
        self.state.next.store(i + 1, Ordering::SeqCst);
        self.state.fired.fetch_add(1, Ordering::SeqCst);
        log::warn!("injecting fault {fault:?} after {at} frames");
        match fault {
            Fault::Os {
                errno,
                failed_opens,
            } => {
                self.state
                    .failing_opens
                    .store(*failed_opens as u64, Ordering::SeqCst);
                Fired::Fail(os_error(*errno, "reading a frame"))
            }
            Fault::Stall(d) => {
                std::thread::sleep(*d);
                Fired::Fail(os_error(ETIMEDOUT, "waiting for a frame"))
            }
            Fault::Resize(w, h) => {
                self.state
                    .size
                    .store((*w as u64) << 32 | *h as u64, Ordering::SeqCst);
                Fired::Nothing
            }
            Fault::Format => Fired::Fail(Error::Source(
                "the device switched to pixel format `H264`, which cannot be converted (injected fault)"
                    .into(),
            )),
            Fault::Eof => Fired::End,
        }
    }
}

/// What firing the plan did to this `next_frame` call.
enum Fired {
    /// Nothing (or a lasting change such as a resize): deliver a frame.
    Nothing,
    /// Fail with this error.
    Fail(Error),
    /// Report end of stream.
    End,
}

impl FrameSource for FaultySource {
    fn describe(&self) -> String {
        format!("{} with injected faults", self.inner.describe())
    }

    fn accept_layouts(&mut self, accepted: LayoutSet) {
        self.inner.accept_layouts(accepted);
    }

    fn next_frame(&mut self) -> Result<Option<Frame<'_>>> {
        match self.fire() {
            Fired::Nothing => {}
            Fired::Fail(e) => return Err(e),
            Fired::End => return Ok(None),
        }
        let size = self.state.size.load(Ordering::SeqCst);
        let Some(f) = self.inner.next_frame()? else {
            return Ok(None);
        };
        self.state.delivered.fetch_add(1, Ordering::SeqCst);
        if size == 0 {
            return Ok(Some(f));
        }
        let (w, h) = ((size >> 32) as u32, size as u32);
        resize_nearest(&f, w, h, &mut self.resized)?;
        Ok(Some(Frame::rgb(f.id, f.timestamp_ns, w, h, &self.resized)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_parse_and_bad_ones_say_why() {
        let p = FaultPlan::parse("stall@9=1500ms,eio@3,enodev@5=2,resize@7=64x48,format@8,eof@10")
            .unwrap();
        assert_eq!(p.events.len(), 6);
        assert_eq!(p.events[0].0, 3);
        assert_eq!(
            p.events[1].1,
            Fault::Os {
                errno: ENODEV,
                failed_opens: 2
            }
        );
        assert_eq!(p.events[2].1, Fault::Resize(64, 48));
        assert_eq!(p.events[4].1, Fault::Stall(Duration::from_millis(1500)));
        for bad in [
            "",
            "eio",
            "eio@x",
            "boom@3",
            "stall@3",
            "resize@3=0x4",
            "stall@1=-2s",
        ] {
            assert!(FaultPlan::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn nearest_resize_picks_source_pixels() {
        let rgb: Vec<u8> = (0..4 * 2 * 3).map(|v| v as u8).collect();
        let f = Frame::rgb(0, 0, 4, 2, &rgb);
        let mut out = Vec::new();
        resize_nearest(&f, 2, 1, &mut out).unwrap();
        // (0,0) and (2,0) of the source.
        assert_eq!(out, vec![0, 1, 2, 6, 7, 8]);
        // BGR comes out as RGB.
        let bgr = Frame {
            layout: crate::camera::Layout::Bgr,
            ..f
        };
        resize_nearest(&bgr, 2, 1, &mut out).unwrap();
        assert_eq!(out, vec![2, 1, 0, 8, 7, 6]);
        // A short frame is an error, not a panic.
        let short = Frame {
            pixels: &rgb[..5],
            ..f
        };
        assert!(resize_nearest(&short, 2, 1, &mut out).is_err());
        // So is a frame without pixels, and `out` is left as it was.
        let empty = Frame::rgb(0, 0, 0, 0, &[]);
        let e = resize_nearest(&empty, 2, 1, &mut out).unwrap_err();
        assert!(e.to_string().contains("no pixels"), "{e}");
        assert_eq!(out, vec![2, 1, 0, 8, 7, 6]);
    }
}
