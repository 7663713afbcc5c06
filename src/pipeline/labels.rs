//! Mask logits → label mask for the streaming path: bilinear upsampling (align_corners = false) and
//! thresholding at logit > 0, written straight into a label bitmap (0 = background, `k` = track `k`).
//!
//! Same arithmetic in the same order as [`post::Upsampler`](crate::pipeline::post::Upsampler)
//! (`h0·(w0·a + w1·b) + h1·(w0·c + w1·d)`), so the masks are identical, but separable: the horizontal
//! pass runs once per *source* row into a cache, and the vertical blend + threshold is a contiguous sweep
//! per output row. At 90×160 → 360×640 that is 4× fewer gathers and no `f32` output image.

use crate::error::{Error, Result};
use crate::pipeline::post::Axis;

/// One axis of the bilinear tables: output `d` blends inputs `i0[d]` and `i1[d]` with weights `l0[d]`,
/// `l1[d]` (`l0·a + l1·b`, in that order).
#[derive(Debug, Clone, Copy)]
pub struct AxisView<'a> {
    /// Lower input index per output index.
    pub i0: &'a [u32],
    /// Upper input index per output index.
    pub i1: &'a [u32],
    /// Weight of `i0`.
    pub l0: &'a [f32],
    /// Weight of `i1`.
    pub l1: &'a [f32],
}

/// Upsamples `in_h × in_w` logit maps to `out_h × out_w` label masks with buffers allocated once.
#[derive(Clone, Debug)]
pub struct LabelUpsampler {
    in_h: usize,
    in_w: usize,
    out_h: usize,
    out_w: usize,
    ys: Axis,
    xs: Axis,
    /// Horizontally interpolated source rows, `in_h × out_w`.
    rows: Vec<f32>,
}

impl LabelUpsampler {
    /// Tables and the row cache for `in_h×in_w → out_h×out_w`.
    pub fn new(in_h: usize, in_w: usize, out_h: usize, out_w: usize) -> Result<Self> {
        if in_h == 0 || in_w == 0 || out_h == 0 || out_w == 0 {
            return Err(Error::Shape("label upsampler: empty size".into()));
        }
        Ok(LabelUpsampler {
            in_h,
            in_w,
            out_h,
            out_w,
            ys: Axis::new(in_h, out_h),
            xs: Axis::new(in_w, out_w),
            rows: vec![0.0; in_h * out_w],
        })
    }

    /// The vertical and horizontal interpolation tables, for a GPU implementation of the same arithmetic.
    pub fn axes(&self) -> (AxisView<'_>, AxisView<'_>) {
        (axis_view(&self.ys), axis_view(&self.xs))
    }

    /// Input `(h, w)` and output `(h, w)`.
    pub fn sizes(&self) -> ((usize, usize), (usize, usize)) {
        ((self.in_h, self.in_w), (self.out_h, self.out_w))
    }

    /// Writes `label` into every pixel of `mask` (`out_h × out_w`) that is still 0 and whose
    /// upsampled logit is > 0 (the first track written wins where masks overlap).
    pub fn label(&mut self, logits: &[f32], mask: &mut [u8], label: u8) -> Result<()> {
        self.rows_for(logits, mask.len())?;
        let ow = self.out_w;
        for (y, m) in mask.chunks_exact_mut(ow).enumerate() {
            let (r0, r1) = (self.ys.i0[y] as usize * ow, self.ys.i1[y] as usize * ow);
            let (h0, h1) = (self.ys.l0[y], self.ys.l1[y]);
            let (a, b) = (&self.rows[r0..r0 + ow], &self.rows[r1..r1 + ow]);
            for ((m, &va), &vb) in m.iter_mut().zip(a).zip(b) {
                let on = h0 * va + h1 * vb > 0.0;
                *m = if on && *m == 0 { label } else { *m };
            }
        }
        Ok(())
    }

    /// Like [`LabelUpsampler::label`] for tracks of several objects: a pixel whose upsampled logit
    /// is > 0 takes `label` when `score` is higher than the score of the label it holds
    /// (`owner`, one score per pixel, `-inf` for background), so overlaps go to the higher score
    /// whatever the order the tracks are written in (the earlier one on a tie).
    pub fn label_scored(
        &mut self,
        logits: &[f32],
        mask: &mut [u8],
        owner: &mut [f32],
        label: u8,
        score: f32,
    ) -> Result<()> {
        if owner.len() != mask.len() {
            return Err(Error::Shape(format!(
                "label upsampler: {} owner scores for {} mask bytes",
                owner.len(),
                mask.len()
            )));
        }
        self.rows_for(logits, mask.len())?;
        let ow = self.out_w;
        for (y, (m, o)) in mask
            .chunks_exact_mut(ow)
            .zip(owner.chunks_exact_mut(ow))
            .enumerate()
        {
            let (r0, r1) = (self.ys.i0[y] as usize * ow, self.ys.i1[y] as usize * ow);
            let (h0, h1) = (self.ys.l0[y], self.ys.l1[y]);
            let (a, b) = (&self.rows[r0..r0 + ow], &self.rows[r1..r1 + ow]);
            for (((m, o), &va), &vb) in m.iter_mut().zip(o.iter_mut()).zip(a).zip(b) {
                if h0 * va + h1 * vb > 0.0 && score > *o {
                    *m = label;
                    *o = score;
                }
            }
        }
        Ok(())
    }

    /// Checks sizes and fills the row cache with the horizontally interpolated source rows.
    fn rows_for(&mut self, logits: &[f32], mask_len: usize) -> Result<()> {
        let (iw, ow) = (self.in_w, self.out_w);
        if logits.len() != self.in_h * iw || mask_len != self.out_h * ow {
            return Err(Error::Shape(format!(
                "label upsampler: {} logits / {} mask bytes for {}x{} → {}x{}",
                logits.len(),
                mask_len,
                self.in_h,
                iw,
                self.out_h,
                ow
            )));
        }
        let xs = &self.xs;
        for (src, dst) in logits.chunks_exact(iw).zip(self.rows.chunks_exact_mut(ow)) {
            for (x, o) in dst.iter_mut().enumerate() {
                let (c0, c1) = (xs.i0[x] as usize, xs.i1[x] as usize);
                *o = xs.l0[x] * src[c0] + xs.l1[x] * src[c1];
            }
        }
        Ok(())
    }
}

fn axis_view(a: &Axis) -> AxisView<'_> {
    AxisView {
        i0: &a.i0,
        i1: &a.i1,
        l0: &a.l0,
        l1: &a.l1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::post::Upsampler;

    #[test]
    fn identical_to_the_offline_upsampler() {
        let mut state = 12345u32;
        let mut rnd = move || {
            state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (state >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        };
        for (ih, iw, oh, ow) in [(18, 30, 70, 118), (5, 7, 5, 7), (9, 16, 4, 5), (1, 3, 2, 9)] {
            let logits: Vec<f32> = (0..ih * iw).map(|_| rnd()).collect();
            let up = Upsampler::new(ih, iw, oh, ow).unwrap();
            let mut want = vec![0u8; oh * ow];
            let mut scratch = vec![0f32; oh * ow];
            up.run_mask(&logits, &mut scratch, &mut want, false)
                .unwrap();
            let mut lu = LabelUpsampler::new(ih, iw, oh, ow).unwrap();
            let mut got = vec![0u8; oh * ow];
            lu.label(&logits, &mut got, 1).unwrap();
            assert_eq!(got, want, "{ih}x{iw} → {oh}x{ow}");
            // A second track only fills pixels the first left empty.
            let other: Vec<f32> = logits.iter().map(|v| -v).collect();
            lu.label(&other, &mut got, 2).unwrap();
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(*g, if *w == 1 { 1 } else { *g });
            }
            assert!(lu.label(&logits[1..], &mut got, 1).is_err());
            // By score: a later, higher-scored track takes the overlap; a lower one does not.
            let mut scored = vec![0u8; oh * ow];
            let mut owner = vec![f32::NEG_INFINITY; oh * ow];
            lu.label_scored(&logits, &mut scored, &mut owner, 1, 0.3)
                .unwrap();
            assert_eq!(scored, want);
            let all_on = vec![1.0f32; ih * iw];
            lu.label_scored(&all_on, &mut scored, &mut owner, 2, 0.2)
                .unwrap();
            for (s, w) in scored.iter().zip(&want) {
                assert_eq!(*s, if *w == 1 { 1 } else { 2 });
            }
            lu.label_scored(&all_on, &mut scored, &mut owner, 3, 0.9)
                .unwrap();
            assert!(scored.iter().all(|&s| s == 3));
        }
    }
}
