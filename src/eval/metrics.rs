//! Per-frame region similarity J and boundary accuracy F, as the DAVIS 2017 toolkit defines them.
//!
//! * J is the Jaccard index of the two binary masks; an empty union counts as a perfect 1.
//! * F is the F-measure of boundary precision and recall. Boundaries are one pixel wide and lie
//!   half a pixel towards the origin from the true edge (pixel `(y, x)` is on the boundary when it
//!   differs from its east, south or south-east neighbour; the last row compares east only, the last
//!   column south only, and the bottom-right pixel never is). A boundary pixel matches when the other
//!   boundary has a pixel within the tolerance disk of radius `ceil(0.008 * diagonal)` pixels
//!   (offsets with `dx² + dy² <= r²`). Empty-boundary conventions: both empty gives F = 1, exactly
//!   one empty gives F = 0.
//!
//! Masks are `width * height` bytes, row-major; any non-zero byte is foreground.

use crate::{Error, Result};

/// The DAVIS boundary tolerance as a fraction of the image diagonal.
pub const BOUND_TH: f64 = 0.008;

/// J and F of one frame.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FrameScore {
    /// Region similarity (IoU).
    #[serde(rename = "J")]
    pub j: f64,
    /// Boundary F-measure.
    #[serde(rename = "F")]
    pub f: f64,
}

/// Tolerance radius in pixels for an image of this size (`ceil(bound_th * diagonal)`).
pub fn boundary_radius(width: usize, height: usize) -> usize {
    let diag = ((width * width + height * height) as f64).sqrt();
    (BOUND_TH * diag).ceil() as usize
}

/// Region similarity J of a predicted and a ground-truth mask.
///
/// Returns an error when the lengths differ.
pub fn jaccard(pred: &[u8], gt: &[u8]) -> Result<f64> {
    if pred.len() != gt.len() {
        return Err(Error::Eval(format!(
            "mask sizes differ: prediction has {} pixels, ground truth {}",
            pred.len(),
            gt.len()
        )));
    }
    // Byte-wide counters over chunks of at most 255 pixels cannot overflow and let the compiler
    // vectorise the loop 16 (SSE2/NEON) or 32 (AVX2) pixels wide.
    let mut inter = 0u64;
    let mut union = 0u64;
    for (p, g) in pred.chunks(255).zip(gt.chunks(255)) {
        let mut i = 0u8;
        let mut u = 0u8;
        for (&a, &b) in p.iter().zip(g) {
            let a = (a != 0) as u8;
            let b = (b != 0) as u8;
            i = i.wrapping_add(a & b);
            u = u.wrapping_add(a | b);
        }
        inter += i as u64;
        union += u as u64;
    }
    Ok(if union == 0 {
        1.0
    } else {
        inter as f64 / union as f64
    })
}

/// Reusable buffers for scoring frames of one size; allocation happens only in [`FrameScorer::new`].
#[derive(Debug, Clone)]
pub struct FrameScorer {
    width: usize,
    height: usize,
    radius: usize,
    /// Half-width of the disk at each row offset `dy = 0..=radius`.
    half_widths: Vec<usize>,
    /// Boundary pixels as horizontal runs, so only boundary pixels are touched after extraction.
    runs_pred: Vec<Run>,
    runs_gt: Vec<Run>,
    /// Per-row foreground extents of the mask being scanned.
    extents: Vec<Option<(usize, usize)>>,
    /// Boundaries as bit planes padded by `radius` on every side (so disk queries need no bounds
    /// checks). Only the padded rows in `dirty_*` may be non-zero (cleared before the next use).
    bits_pred: Vec<u64>,
    bits_gt: Vec<u64>,
    dirty_pred: (usize, usize),
    dirty_gt: (usize, usize),
    /// u64 words per padded bit-plane row.
    words_per_row: usize,
    /// Masks with void pixels cleared (void-aware scoring only).
    masked_pred: Vec<u8>,
    masked_gt: Vec<u8>,
}

impl FrameScorer {
    /// Scorer for `width x height` masks with the DAVIS tolerance radius.
    pub fn new(width: usize, height: usize) -> Result<Self> {
        Self::with_radius(width, height, boundary_radius(width, height))
    }

    /// Scorer with an explicit tolerance radius in pixels (the toolkit's `bound_th >= 1` case).
    pub fn with_radius(width: usize, height: usize, radius: usize) -> Result<Self> {
        if width == 0 || height == 0 {
            return Err(Error::Eval(format!("empty mask size {width}x{height}")));
        }
        let half_widths = (0..=radius)
            .map(|dy| {
                let r2 = (radius * radius - dy * dy) as f64;
                let mut hw = r2.sqrt() as usize;
                // Guard the float square root at perfect squares.
                while (hw + 1) * (hw + 1) + dy * dy <= radius * radius {
                    hw += 1;
                }
                while hw * hw + dy * dy > radius * radius {
                    hw -= 1;
                }
                hw
            })
            .collect();
        let words_per_row = (width + 2 * radius).div_ceil(64) + 1;
        let plane = words_per_row * (height + 2 * radius);
        Ok(Self {
            width,
            height,
            radius,
            half_widths,
            runs_pred: Vec::with_capacity(4 * (width + height)),
            runs_gt: Vec::with_capacity(4 * (width + height)),
            extents: Vec::with_capacity(height),
            bits_pred: vec![0; plane],
            bits_gt: vec![0; plane],
            dirty_pred: (0, 0),
            dirty_gt: (0, 0),
            words_per_row,
            masked_pred: vec![0; width * height],
            masked_gt: vec![0; width * height],
        })
    }

    /// Mask width this scorer was made for.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Mask height this scorer was made for.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Tolerance radius in pixels.
    pub fn radius(&self) -> usize {
        self.radius
    }

    fn check(&self, what: &str, m: &[u8]) -> Result<()> {
        if m.len() != self.width * self.height {
            return Err(Error::Eval(format!(
                "{what} mask has {} pixels, expected {}x{} = {}",
                m.len(),
                self.width,
                self.height,
                self.width * self.height
            )));
        }
        Ok(())
    }

    /// J and F of one frame.
    pub fn score(&mut self, pred: &[u8], gt: &[u8]) -> Result<FrameScore> {
        self.check("predicted", pred)?;
        self.check("ground-truth", gt)?;
        let j = jaccard(pred, gt)?;
        let f = self.boundary_f(pred, gt)?;
        Ok(FrameScore { j, f })
    }

    /// J and F of one frame ignoring `void` pixels (non-zero = void), as the toolkit does with
    /// DAVIS label 255: they count in neither intersection nor union, and are cleared from both
    /// masks before boundaries are extracted.
    pub fn score_with_void(&mut self, pred: &[u8], gt: &[u8], void: &[u8]) -> Result<FrameScore> {
        self.check("predicted", pred)?;
        self.check("ground-truth", gt)?;
        self.check("void", void)?;
        let (mut inter, mut union) = (0u64, 0u64);
        for (((p, g), v), (mp, mg)) in pred
            .iter()
            .zip(gt)
            .zip(void)
            .zip(self.masked_pred.iter_mut().zip(self.masked_gt.iter_mut()))
        {
            let keep = (*v == 0) as u8;
            let a = (*p != 0) as u8 & keep;
            let b = (*g != 0) as u8 & keep;
            *mp = a;
            *mg = b;
            inter += (a & b) as u64;
            union += (a | b) as u64;
        }
        let j = if union == 0 {
            1.0
        } else {
            inter as f64 / union as f64
        };
        let mp = std::mem::take(&mut self.masked_pred);
        let mg = std::mem::take(&mut self.masked_gt);
        let f = self.boundary_f(&mp, &mg);
        self.masked_pred = mp;
        self.masked_gt = mg;
        Ok(FrameScore { j, f: f? })
    }

    /// Boundary F-measure of one frame.
    pub fn boundary_f(&mut self, pred: &[u8], gt: &[u8]) -> Result<f64> {
        self.check("predicted", pred)?;
        self.check("ground-truth", gt)?;
        let (w, h) = (self.width, self.height);
        let n_pred = boundary_runs(pred, w, h, &mut self.runs_pred, &mut self.extents);
        let n_gt = boundary_runs(gt, w, h, &mut self.runs_gt, &mut self.extents);
        let (precision, recall) = match (n_pred, n_gt) {
            (0, 0) => (1.0, 1.0),
            (0, _) => (1.0, 0.0),
            (_, 0) => (0.0, 1.0),
            _ => {
                let (r, wpr) = (self.radius, self.words_per_row);
                let hw = &self.half_widths;
                plot(&self.runs_gt, r, wpr, &mut self.bits_gt, &mut self.dirty_gt);
                plot(
                    &self.runs_pred,
                    r,
                    wpr,
                    &mut self.bits_pred,
                    &mut self.dirty_pred,
                );
                let pred_match = count_matches(&self.runs_pred, &self.bits_gt, r, wpr, hw);
                let gt_match = count_matches(&self.runs_gt, &self.bits_pred, r, wpr, hw);
                (
                    pred_match as f64 / n_pred as f64,
                    gt_match as f64 / n_gt as f64,
                )
            }
        };
        Ok(if precision + recall == 0.0 {
            0.0
        } else {
            2.0 * precision * recall / (precision + recall)
        })
    }
}

/// A horizontal run of boundary pixels: row `y`, columns `x0..x1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Run {
    y: u32,
    x0: u32,
    x1: u32,
}

const LO7: u64 = 0x7F7F_7F7F_7F7F_7F7F;
const HI: u64 = 0x8080_8080_8080_8080;

/// Bit 7 of each byte set where that byte of `v` is non-zero.
#[inline(always)]
fn nonzero(v: u64) -> u64 {
    (((v & LO7) + LO7) | v) & HI
}

/// Appends pixel `x` of row `y` to the runs (extending the last run when adjacent).
#[inline(always)]
fn push_pixel(runs: &mut Vec<Run>, y: u32, x: u32) {
    if let Some(last) = runs.last_mut() {
        if last.y == y && last.x1 == x {
            last.x1 = x + 1;
            return;
        }
    }
    runs.push(Run {
        y,
        x0: x,
        x1: x + 1,
    });
}

/// Appends the set bytes of a boundary word (bit 7 per byte) at columns `x..x + 8`.
#[inline(always)]
fn push_word(runs: &mut Vec<Run>, y: u32, x: u32, mut b: u64) {
    while b != 0 {
        let i = b.trailing_zeros() / 8;
        push_pixel(runs, y, x + i);
        b &= b - 1;
    }
}

/// First and last non-zero byte of a row, scanning 8 bytes at a time.
fn extent(row: &[u8]) -> Option<(usize, usize)> {
    let word = |c: &[u8]| u64::from_le_bytes(c.try_into().expect("8 bytes"));
    let n8 = row.len() / 8 * 8;
    let mut first = None;
    for (i, c) in row[..n8].chunks_exact(8).enumerate() {
        let v = word(c);
        if v != 0 {
            first = Some(i * 8 + (v.trailing_zeros() / 8) as usize);
            break;
        }
    }
    let first = match first {
        Some(f) => f,
        None => n8 + row[n8..].iter().position(|&v| v != 0)?,
    };
    if let Some(l) = row[n8..].iter().rposition(|&v| v != 0) {
        return Some((first, n8 + l));
    }
    for (i, c) in row[..n8].rchunks_exact(8).enumerate() {
        let v = word(c);
        if v != 0 {
            return Some((first, n8 - 8 * i - 1 - (v.leading_zeros() / 8) as usize));
        }
    }
    Some((first, first))
}

/// Extracts the boundary of `seg` as runs and returns its pixel count.
///
/// Pixel `(y, x)` is a boundary pixel when its foreground state differs from its east, south or
/// south-east neighbour; the last row compares east only; the last column south only; the
/// bottom-right pixel never is (the toolkit's `seg2bmap`). Only the columns between the first and
/// last foreground pixel of each row pair are examined, 8 at a time.
fn boundary_runs(
    seg: &[u8],
    w: usize,
    h: usize,
    runs: &mut Vec<Run>,
    extents: &mut Vec<Option<(usize, usize)>>,
) -> usize {
    runs.clear();
    extents.clear();
    extents.extend(seg.chunks_exact(w).map(extent));
    for y in 0..h {
        let last_row = y + 1 == h;
        let (lo, hi) = match (extents[y], if last_row { None } else { extents[y + 1] }) {
            (None, None) => continue,
            (Some(a), None) | (None, Some(a)) => a,
            (Some(a), Some(b)) => (a.0.min(b.0), a.1.max(b.1)),
        };
        let row = &seg[y * w..(y + 1) * w];
        let next = if last_row {
            row
        } else {
            &seg[(y + 1) * w..(y + 2) * w]
        };
        let yy = y as u32;
        // Candidates lie in lo - 1 ..= hi; the general rule covers columns up to w - 2.
        if w >= 2 && lo.saturating_sub(1) <= (w - 2).min(hi) {
            let (x0, x1) = (lo.saturating_sub(1), (w - 2).min(hi) + 1); // x1 exclusive, <= w - 1
            let len = x1 - x0;
            let n8 = len / 8 * 8;
            let (ra, rb) = (&row[x0..x0 + n8], &row[x0 + 1..x0 + 1 + n8]);
            let (na, nb) = (&next[x0..x0 + n8], &next[x0 + 1..x0 + 1 + n8]);
            let words = ra
                .chunks_exact(8)
                .zip(rb.chunks_exact(8))
                .zip(na.chunks_exact(8).zip(nb.chunks_exact(8)));
            for (i, ((a0, a1), (b0, b1))) in words.enumerate() {
                let word = |c: &[u8]| u64::from_le_bytes(c.try_into().expect("8 bytes"));
                let (r0, r1) = (word(a0), word(a1));
                let s = nonzero(r0);
                let e = nonzero(r1);
                let b = if last_row {
                    s ^ e
                } else {
                    (s ^ e) | (s ^ nonzero(word(b0))) | (s ^ nonzero(word(b1)))
                };
                if b != 0 {
                    push_word(runs, yy, (x0 + i * 8) as u32, b);
                }
            }
            for x in x0 + n8..x1 {
                let s = row[x] != 0;
                let b = if last_row {
                    s != (row[x + 1] != 0)
                } else {
                    (s != (row[x + 1] != 0)) | (s != (next[x] != 0)) | (s != (next[x + 1] != 0))
                };
                if b {
                    push_pixel(runs, yy, x as u32);
                }
            }
        }
        if !last_row && (row[w - 1] != 0) != (next[w - 1] != 0) {
            push_pixel(runs, yy, (w - 1) as u32);
        }
    }
    runs.iter().map(|r| (r.x1 - r.x0) as usize).sum()
}

/// Writes the one-pixel boundary map of `seg` into `out` (0/1) and returns its pixel count.
///
/// Same definition as the toolkit's `seg2bmap` at full resolution.
pub fn seg2bmap(seg: &[u8], width: usize, height: usize, out: &mut [u8]) -> usize {
    let (mut runs, mut ext) = (Vec::new(), Vec::new());
    let n = boundary_runs(seg, width, height, &mut runs, &mut ext);
    out[..width * height].fill(0);
    for r in runs {
        let base = r.y as usize * width;
        out[base + r.x0 as usize..base + r.x1 as usize].fill(1);
    }
    n
}

/// Plots boundary runs into a padded bit plane (bit `x + r` of row `y + r`), clearing the rows the
/// previous call left set.
fn plot(runs: &[Run], r: usize, wpr: usize, bits: &mut [u64], dirty: &mut (usize, usize)) {
    bits[dirty.0 * wpr..dirty.1 * wpr].fill(0);
    let (mut lo, mut hi) = (usize::MAX, 0usize);
    for run in runs {
        let row = (run.y as usize + r) * wpr;
        for x in run.x0 as usize + r..run.x1 as usize + r {
            bits[row + x / 64] |= 1u64 << (x % 64);
        }
        lo = lo.min(run.y as usize + r);
        hi = hi.max(run.y as usize + r + 1);
    }
    *dirty = if lo == usize::MAX { (0, 0) } else { (lo, hi) };
}

/// Whether any bit `a..=b` of a padded bit-plane row is set.
#[inline(always)]
fn any_bit(row: &[u64], a: usize, b: usize) -> bool {
    let (wa, wb) = (a / 64, b / 64);
    let lo_mask = !0u64 << (a % 64);
    let hi_mask = !0u64 >> (63 - b % 64);
    if wa == wb {
        return row[wa] & lo_mask & hi_mask != 0;
    }
    if row[wa] & lo_mask != 0 || row[wb] & hi_mask != 0 {
        return true;
    }
    row[wa + 1..wb].iter().any(|&w| w != 0)
}

/// Counts the boundary pixels in `runs` that have a set bit of `bits` within the disk: for each
/// row offset `dy` (nearest first) the disk row is one span query on the bit plane.
fn count_matches(runs: &[Run], bits: &[u64], r: usize, wpr: usize, half_widths: &[usize]) -> usize {
    let mut n = 0usize;
    for run in runs {
        let y = run.y as usize;
        for x in run.x0 as usize..run.x1 as usize {
            let px = x + r;
            let hit = (0..=2 * r).any(|k| {
                // k = 0, 1, 2, ... visits dy = 0, -1, +1, -2, +2, ...
                let d = k.div_ceil(2);
                let py = if k % 2 == 1 { y + r - d } else { y + r + d };
                let hw = half_widths[d];
                any_bit(&bits[py * wpr..(py + 1) * wpr], px - hw, px + hw)
            });
            n += hit as usize;
        }
    }
    n
}

/// J and F of one frame pair, allocating its own buffers (use [`FrameScorer`] in loops).
pub fn score_frame(pred: &[u8], gt: &[u8], width: usize, height: usize) -> Result<FrameScore> {
    FrameScorer::new(width, height)?.score(pred, gt)
}

/// Scores every frame of a sequence in parallel (one scorer per worker thread).
///
/// `pred` and `gt` hold one mask per frame, all `width * height`.
pub fn score_sequence(
    pred: &[Vec<u8>],
    gt: &[Vec<u8>],
    width: usize,
    height: usize,
) -> Result<Vec<FrameScore>> {
    use rayon::prelude::*;
    if pred.len() != gt.len() {
        return Err(Error::Eval(format!(
            "sequence lengths differ: {} predicted frames, {} ground-truth frames",
            pred.len(),
            gt.len()
        )));
    }
    let proto = FrameScorer::new(width, height)?;
    pred.par_iter()
        .zip(gt.par_iter())
        .map_init(|| proto.clone(), |s, (p, g)| s.score(p, g))
        .collect()
}
