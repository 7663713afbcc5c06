//! A deterministic synthetic source for tests and demos: a gradient background with a bright square
//! moving along a diagonal. Frame `n` is a pure function of `(n, width, height)`.

use std::time::Instant;

use super::{Frame, FrameSource};
use crate::{Error, Result};

/// The synthetic pattern source.
#[derive(Debug)]
pub struct Synthetic {
    width: u32,
    height: u32,
    fps: u32,
    max_frames: u64,
    realtime: bool,
    next: u64,
    start: Instant,
    buf: Vec<u8>,
}

impl Synthetic {
    /// A `width × height` source at `fps` (timestamps advance by `1/fps`); `max_frames` = 0 is endless;
    /// `realtime` sleeps to deliver frames at `fps`.
    pub fn new(width: u32, height: u32, fps: u32, max_frames: u64, realtime: bool) -> Result<Self> {
        if width == 0 || height == 0 || width > 8192 || height > 8192 {
            return Err(Error::Source(format!(
                "synthetic source size {width}x{height} must be within 1..=8192"
            )));
        }
        if fps == 0 {
            return Err(Error::Source("synthetic source fps must be > 0".into()));
        }
        Ok(Synthetic {
            width,
            height,
            fps,
            max_frames,
            realtime,
            next: 0,
            start: Instant::now(),
            buf: vec![0; width as usize * height as usize * 3],
        })
    }

    /// Writes frame `n` into `out` (tight RGB8); used by tests to recompute expected frames.
    pub fn render(n: u64, width: u32, height: u32, out: &mut [u8]) {
        let (w, h) = (width as usize, height as usize);
        let side = (w.min(h) / 4).max(1);
        let span_x = w.saturating_sub(side).max(1);
        let span_y = h.saturating_sub(side).max(1);
        let ox = (n as usize * 3) % span_x;
        let oy = (n as usize * 2) % span_y;
        for y in 0..h {
            let row = &mut out[y * w * 3..(y + 1) * w * 3];
            for x in 0..w {
                let inside = x >= ox && x < ox + side && y >= oy && y < oy + side;
                let px = &mut row[x * 3..x * 3 + 3];
                if inside {
                    px.copy_from_slice(&[250, 240, 40]);
                } else {
                    px[0] = (x * 255 / w.max(1)) as u8;
                    px[1] = (y * 255 / h.max(1)) as u8;
                    px[2] = (n % 256) as u8;
                }
            }
        }
    }
}

impl FrameSource for Synthetic {
    fn describe(&self) -> String {
        format!(
            "synthetic {}x{} @ {} fps",
            self.width, self.height, self.fps
        )
    }

    fn next_frame(&mut self) -> Result<Option<Frame<'_>>> {
        if self.max_frames != 0 && self.next >= self.max_frames {
            return Ok(None);
        }
        let n = self.next;
        if self.realtime {
            super::pace(self.start, n, self.fps);
        }
        Self::render(n, self.width, self.height, &mut self.buf);
        self.next += 1;
        Ok(Some(Frame {
            id: n,
            timestamp_ns: n * 1_000_000_000 / self.fps as u64,
            width: self.width,
            height: self.height,
            layout: crate::camera::Layout::Rgb,
            pixels: &self.buf,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_finite() {
        let mut s = Synthetic::new(20, 10, 25, 3, false).unwrap();
        let mut expect = vec![0u8; 600];
        for n in 0..3 {
            let f = s.next_frame().unwrap().unwrap();
            assert_eq!(f.id, n);
            assert_eq!(f.timestamp_ns, n * 40_000_000);
            Synthetic::render(n, 20, 10, &mut expect);
            assert_eq!(f.pixels, &expect[..]);
        }
        assert!(s.next_frame().unwrap().is_none());
        assert!(Synthetic::new(0, 10, 25, 0, false).is_err());
        assert!(Synthetic::new(10, 10, 0, 0, false).is_err());
    }
}
