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
    // Counting in u32 lanes over chunks lets the compiler vectorise the loop.
    let mut inter = 0u64;
    let mut union = 0u64;
    for (p, g) in pred.chunks(4096).zip(gt.chunks(4096)) {
        let mut i = 0u32;
        let mut u = 0u32;
        for (&a, &b) in p.iter().zip(g) {
            let a = (a != 0) as u32;
            let b = (b != 0) as u32;
            i += a & b;
            u += a | b;
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
    bmap_pred: Vec<u8>,
    bmap_gt: Vec<u8>,
    /// Dilations, padded by `radius` on every side so stamping needs no bounds checks.
    dil_pred: Vec<u8>,
    dil_gt: Vec<u8>,
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
        let padded = (width + 2 * radius) * (height + 2 * radius);
        Ok(Self {
            width,
            height,
            radius,
            half_widths,
            bmap_pred: vec![0; width * height],
            bmap_gt: vec![0; width * height],
            dil_pred: vec![0; padded],
            dil_gt: vec![0; padded],
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
        let n_pred = seg2bmap(pred, w, h, &mut self.bmap_pred);
        let n_gt = seg2bmap(gt, w, h, &mut self.bmap_gt);
        let (precision, recall) = match (n_pred, n_gt) {
            (0, 0) => (1.0, 1.0),
            (0, _) => (1.0, 0.0),
            (_, 0) => (0.0, 1.0),
            _ => {
                dilate(
                    &self.bmap_gt,
                    w,
                    h,
                    self.radius,
                    &self.half_widths,
                    &mut self.dil_gt,
                );
                dilate(
                    &self.bmap_pred,
                    w,
                    h,
                    self.radius,
                    &self.half_widths,
                    &mut self.dil_pred,
                );
                let pred_match = count_matches(&self.bmap_pred, &self.dil_gt, w, h, self.radius);
                let gt_match = count_matches(&self.bmap_gt, &self.dil_pred, w, h, self.radius);
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

/// Writes the one-pixel boundary map of `seg` into `out` (0/1) and returns its pixel count.
///
/// Same definition as the toolkit's `seg2bmap` at full resolution.
pub fn seg2bmap(seg: &[u8], width: usize, height: usize, out: &mut [u8]) -> usize {
    let (w, h) = (width, height);
    let mut count = 0usize;
    for y in 0..h {
        let row = &seg[y * w..(y + 1) * w];
        let orow = &mut out[y * w..(y + 1) * w];
        if y + 1 < h {
            let next = &seg[(y + 1) * w..(y + 2) * w];
            let mut c = 0u32;
            for x in 0..w - 1 {
                let s = row[x] != 0;
                let b =
                    (s != (row[x + 1] != 0)) | (s != (next[x] != 0)) | (s != (next[x + 1] != 0));
                orow[x] = b as u8;
                c += b as u32;
            }
            // Last column: south neighbour only.
            let b = (row[w - 1] != 0) != (next[w - 1] != 0);
            orow[w - 1] = b as u8;
            count += (c + b as u32) as usize;
        } else {
            // Last row: east neighbour only; the corner is never a boundary.
            let mut c = 0u32;
            for x in 0..w - 1 {
                let b = (row[x] != 0) != (row[x + 1] != 0);
                orow[x] = b as u8;
                c += b as u32;
            }
            orow[w - 1] = 0;
            count += c as usize;
        }
    }
    count
}

/// Dilates a boundary map by the disk into a buffer padded by `r` on every side.
///
/// Horizontal runs of boundary pixels are stamped as one span per disk row, so straight edges cost
/// little.
fn dilate(bmap: &[u8], w: usize, h: usize, r: usize, half_widths: &[usize], out: &mut [u8]) {
    let pw = w + 2 * r;
    out.fill(0);
    for y in 0..h {
        let row = &bmap[y * w..(y + 1) * w];
        let mut x = 0;
        while x < w {
            if row[x] == 0 {
                x += 1;
                continue;
            }
            let start = x;
            while x < w && row[x] != 0 {
                x += 1;
            }
            let end = x; // exclusive
            for dy in 0..=2 * r {
                let hw = half_widths[dy.abs_diff(r)];
                // Padded coordinates: row y + dy, columns start + r - hw .. end + r + hw.
                let base = (y + dy) * pw;
                out[base + start + r - hw..base + end + r + hw].fill(1);
            }
        }
    }
}

/// Counts boundary pixels of `bmap` that fall on the padded dilation `dil`.
fn count_matches(bmap: &[u8], dil: &[u8], w: usize, h: usize, r: usize) -> usize {
    let pw = w + 2 * r;
    let mut n = 0usize;
    for y in 0..h {
        let row = &bmap[y * w..(y + 1) * w];
        let drow = &dil[(y + r) * pw + r..(y + r) * pw + r + w];
        let mut c = 0u32;
        for (&b, &d) in row.iter().zip(drow) {
            c += (b & d) as u32;
        }
        n += c as usize;
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
