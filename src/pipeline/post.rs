//! Host post-processing: track selection and mask upsampling/thresholding (docs/model.md: Selection, upsampling, thresholding).
//!
//! Everything here works on caller-owned buffers with tables computed once per geometry, so the
//! per-frame path allocates nothing.

use crate::error::{Error, Result};

/// Which tracks are reported.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase", tag = "mode")]
pub enum Selection {
    /// The single track with the highest mean score (Ref-YouTube-VOS / Ref-DAVIS protocol).
    #[default]
    Single,
    /// Every track whose mean score exceeds `threshold`, or the best one if none does (MeViS protocol).
    Multi {
        /// Mean-score threshold (0.2 in the official MeViS evaluation).
        threshold: f32,
    },
}

/// Logistic sigmoid.
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// Official selection over a whole video: `scores[q] = mean_t sigmoid(logits[t][q])`, then argmax (first
/// index on ties) or every track above the threshold. `logits` is `[T, Q]` row-major. Writes the mean scores
/// into `scores` and the chosen track indices into `chosen` (cleared first), best first.
pub fn select_tracks(
    logits: &[f32],
    frames: usize,
    queries: usize,
    sel: Selection,
    scores: &mut [f32],
    chosen: &mut Vec<usize>,
) -> Result<()> {
    if logits.len() != frames * queries || scores.len() != queries || frames == 0 || queries == 0 {
        return Err(Error::Shape(format!(
            "select_tracks: {} logits for {frames}×{queries}, {} score slots",
            logits.len(),
            scores.len()
        )));
    }
    for (q, s) in scores.iter_mut().enumerate() {
        let mut acc = 0f32;
        for t in 0..frames {
            acc += sigmoid(logits[t * queries + q]);
        }
        *s = acc / frames as f32;
    }
    choose(scores, sel, chosen);
    Ok(())
}

/// Index of the largest value (first on ties; NaN never wins).
pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] || v[best].is_nan() {
            best = i;
        }
    }
    best
}

/// One axis of a bilinear resize with align_corners = false: source indices and weights per output.
#[derive(Clone, Debug)]
pub(crate) struct Axis {
    pub(crate) i0: Vec<u32>,
    pub(crate) i1: Vec<u32>,
    pub(crate) l0: Vec<f32>,
    pub(crate) l1: Vec<f32>,
}

impl Axis {
    pub(crate) fn new(input: usize, output: usize) -> Self {
        // PyTorch: scale = in/out, src = scale·(dst + ½) − ½ clamped at 0.
        let scale = input as f32 / output as f32;
        let mut a = Axis {
            i0: Vec::with_capacity(output),
            i1: Vec::with_capacity(output),
            l0: Vec::with_capacity(output),
            l1: Vec::with_capacity(output),
        };
        for d in 0..output {
            let src = (scale * (d as f32 + 0.5) - 0.5).max(0.0);
            let i0 = (src as usize).min(input - 1);
            let i1 = if i0 + 1 < input { i0 + 1 } else { i0 };
            let l1 = src - i0 as f32;
            a.i0.push(i0 as u32);
            a.i1.push(i1 as u32);
            a.l0.push(1.0 - l1);
            a.l1.push(l1);
        }
        a
    }
}

/// Bilinear upsampling (align_corners = false) of one `h×w` logit map to `out_h×out_w`, with tables built
/// once for the geometry.
#[derive(Clone, Debug)]
pub struct Upsampler {
    in_h: usize,
    in_w: usize,
    out_h: usize,
    out_w: usize,
    ys: Axis,
    xs: Axis,
}

impl Upsampler {
    /// Tables for `in_h×in_w → out_h×out_w`.
    pub fn new(in_h: usize, in_w: usize, out_h: usize, out_w: usize) -> Result<Self> {
        if in_h == 0 || in_w == 0 || out_h == 0 || out_w == 0 {
            return Err(Error::Shape("upsampler: empty size".into()));
        }
        Ok(Upsampler {
            in_h,
            in_w,
            out_h,
            out_w,
            ys: Axis::new(in_h, out_h),
            xs: Axis::new(in_w, out_w),
        })
    }

    /// Output size (h, w).
    pub fn out_size(&self) -> (usize, usize) {
        (self.out_h, self.out_w)
    }

    /// Upsamples `src [in_h·in_w]` into `dst [out_h·out_w]`.
    pub fn run(&self, src: &[f32], dst: &mut [f32]) -> Result<()> {
        if src.len() != self.in_h * self.in_w || dst.len() != self.out_h * self.out_w {
            return Err(Error::Shape(format!(
                "upsample: {} → {} elements for {}×{} → {}×{}",
                src.len(),
                dst.len(),
                self.in_h,
                self.in_w,
                self.out_h,
                self.out_w
            )));
        }
        for (y, row) in dst.chunks_exact_mut(self.out_w).enumerate() {
            let (r0, r1) = (
                self.ys.i0[y] as usize * self.in_w,
                self.ys.i1[y] as usize * self.in_w,
            );
            let (h0, h1) = (self.ys.l0[y], self.ys.l1[y]);
            for (x, o) in row.iter_mut().enumerate() {
                let (c0, c1) = (self.xs.i0[x] as usize, self.xs.i1[x] as usize);
                let (w0, w1) = (self.xs.l0[x], self.xs.l1[x]);
                *o = h0 * (w0 * src[r0 + c0] + w1 * src[r0 + c1])
                    + h1 * (w0 * src[r1 + c0] + w1 * src[r1 + c1]);
            }
        }
        Ok(())
    }

    /// Upsamples and thresholds at logit > 0 (sigmoid > 0.5) into a 0/1 byte mask, OR-ing into `mask` when
    /// `union` is true (multi-object mode).
    pub fn run_mask(
        &self,
        src: &[f32],
        scratch: &mut [f32],
        mask: &mut [u8],
        union: bool,
    ) -> Result<()> {
        self.run(src, scratch)?;
        if mask.len() != scratch.len() {
            return Err(Error::Shape("mask buffer size".into()));
        }
        for (m, &l) in mask.iter_mut().zip(scratch.iter()) {
            let v = (l > 0.0) as u8;
            *m = if union { *m | v } else { v };
        }
        Ok(())
    }
}

/// A box of four values out of a buffer slice (an error, not a panic, when it is not four long).
pub(crate) fn box4(v: &[f32]) -> crate::error::Result<&[f32; 4]> {
    v.try_into()
        .map_err(|_| crate::error::Error::Shape(format!("a box of {} values", v.len())))
}

/// The track entry of query `query` of object `object`: its running score, and its box (`cx, cy, w,
/// h` normalised, the head's output) as `x0, y0, x1, y1` in pixels of a mask of `out_size` (h, w).
pub(crate) fn track_entry(
    query: usize,
    object: u16,
    score: f32,
    cxcywh: &[f32; 4],
    out_size: (usize, usize),
) -> crate::output::ring::TrackEntry {
    let (oh, ow) = (out_size.0 as f32, out_size.1 as f32);
    let [cx, cy, bw, bh] = [
        cxcywh[0] * ow,
        cxcywh[1] * oh,
        cxcywh[2] * ow,
        cxcywh[3] * oh,
    ];
    crate::output::ring::TrackEntry {
        id: query as u32,
        object,
        score,
        bbox: [cx - bw / 2.0, cy - bh / 2.0, cx + bw / 2.0, cy + bh / 2.0],
    }
}

/// The official choice rule on given scores: the argmax (first on ties), or every track whose score
/// exceeds the threshold sorted best first (index breaks ties), or the argmax when none does.
/// `chosen` must have capacity for `scores.len()` entries to stay allocation-free.
pub fn choose(scores: &[f32], sel: Selection, chosen: &mut Vec<usize>) {
    chosen.clear();
    if scores.is_empty() {
        return;
    }
    let best = argmax(scores);
    match sel {
        Selection::Single => chosen.push(best),
        Selection::Multi { threshold } => {
            chosen.extend((0..scores.len()).filter(|&q| scores[q] > threshold));
            // Unstable sort allocates nothing; the index tie-break makes the order total anyway.
            chosen.sort_unstable_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
            if chosen.is_empty() {
                chosen.push(best);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_size_is_a_copy() {
        let u = Upsampler::new(2, 3, 2, 3).unwrap();
        let src = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let mut dst = [0.0; 6];
        u.run(&src, &mut dst).unwrap();
        assert_eq!(src, dst);
    }

    #[test]
    fn doubling_matches_hand_computed_values() {
        // 1×2 → 1×4: src x = (d+½)/2 − ½ → −0.25(→0), 0.25, 0.75, 1.25(→ i0=1 clamped)
        let u = Upsampler::new(1, 2, 1, 4).unwrap();
        let mut dst = [0.0; 4];
        u.run(&[0.0, 4.0], &mut dst).unwrap();
        assert_eq!(dst, [0.0, 1.0, 3.0, 4.0]);
    }

    #[test]
    fn selection_single_and_multi() {
        // 2 frames × 3 queries; mean sigmoid: q0 ≈ 0.5, q1 high, q2 low.
        let logits = [0.0, 3.0, -3.0, 0.0, 2.0, -4.0];
        let mut s = [0.0; 3];
        let mut c = Vec::new();
        select_tracks(&logits, 2, 3, Selection::Single, &mut s, &mut c).unwrap();
        assert_eq!(c, vec![1]);
        assert!((s[0] - 0.5).abs() < 1e-6);
        select_tracks(
            &logits,
            2,
            3,
            Selection::Multi { threshold: 0.2 },
            &mut s,
            &mut c,
        )
        .unwrap();
        assert_eq!(c, vec![1, 0]);
        select_tracks(
            &logits,
            2,
            3,
            Selection::Multi { threshold: 0.99 },
            &mut s,
            &mut c,
        )
        .unwrap();
        assert_eq!(c, vec![1], "falls back to the best track");
        assert!(select_tracks(&logits, 3, 3, Selection::Single, &mut s, &mut c).is_err());
    }
}
