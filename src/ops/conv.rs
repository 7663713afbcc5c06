//! 2-D convolution (NCHW, one group, constant kernel) as patch gathering + [`mod@super::linear`]: what
//! the CPU backend runs for ONNX `Conv` nodes of that kind instead of tract's direct convolution.
//!
//! Why our own: tract runs a convolution whose kernel is not 1×1 as `DirectSpatialConv`, a scalar
//! loop per output element; Swin's 4×4 / stride-4 patch embedding of a 360×640 frame and the 3×3
//! convolution from 16 to 256 channels at 90×160 took ≈ 28 and ≈ 31 ms of the frame engine there
//! (benches/README.md, "Linear layers, convolutions and broadcast Add"). Here the input patch of
//! every output pixel (`C_in · k_h · k_w` values, zeros where the window leaves the image) is
//! gathered straight into the panel layout of [`mod@super::linear`]'s right operand, 16 pixels per
//! panel, and one product of the OIHW kernel, read in place as a `[C_out, C_in · k_h · k_w]`
//! matrix, with those panels writes the output channel-major (NCHW) with the bias per row: no
//! transpose and no repacked kernel. Each output element is a dot product over `(c_in, dy, dx)` in
//! that order, so the numerics are [`mod@super::linear`]'s.

use super::linear::{linear_panels, Epilogue, Panels, NR};
use crate::error::{Error, Result};
use rayon::prelude::*;

/// The shape of one 2-D convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conv2dGeometry {
    /// Batch size.
    pub n: usize,
    /// Input channels.
    pub c_in: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels.
    pub c_out: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Strides (rows, columns).
    pub stride: [usize; 2],
    /// Dilations (rows, columns).
    pub dilation: [usize; 2],
    /// Zero padding before the first row and column.
    pub pad: [usize; 2],
    /// Output height.
    pub oh: usize,
    /// Output width.
    pub ow: usize,
}

impl Conv2dGeometry {
    /// Length of one gathered patch (`c_in · kh · kw`, the product's `k`).
    pub fn patch(&self) -> usize {
        self.c_in * self.kh * self.kw
    }

    /// f32 of scratch [`conv2d`] needs: one image's patches in the panel layout.
    pub fn scratch_len(&self) -> usize {
        self.oh
            .checked_mul(self.ow)
            .and_then(|p| Panels::len(self.patch(), p))
            .unwrap_or(usize::MAX)
    }

    fn check(&self) -> Result<()> {
        let m = |a: usize, b: usize| a.checked_mul(b);
        let pixels = m(self.oh, self.ow);
        let ok = [
            self.stride[0],
            self.stride[1],
            self.dilation[0],
            self.dilation[1],
        ]
        .iter()
        .all(|&s| s > 0)
            && m(self.n, self.c_in)
                .and_then(|v| m(v, self.h))
                .and_then(|v| m(v, self.w))
                .is_some()
            && pixels
                .and_then(|p| m(p, self.n))
                .and_then(|v| m(v, self.c_out))
                .is_some()
            && m(self.c_in, self.kh)
                .and_then(|v| m(v, self.kw))
                .and_then(|k| m(k, self.c_out))
                .is_some()
            && pixels.and_then(|p| Panels::len(self.patch(), p)).is_some();
        if !ok {
            return Err(Error::Shape(format!(
                "conv2d: inconsistent geometry {self:?}"
            )));
        }
        Ok(())
    }
}

/// `y = conv(x, kernel) + bias`, NCHW, `kernel` OIHW (`[c_out, c_in, kh, kw]`) as given, `scratch` at
/// least [`Conv2dGeometry::scratch_len`] f32. Threads: the rayon pool the caller runs in.
pub fn conv2d(
    x: &[f32],
    g: &Conv2dGeometry,
    kernel: &[f32],
    bias: Option<&[f32]>,
    scratch: &mut [f32],
    y: &mut [f32],
) -> Result<()> {
    g.check()?;
    let (k, pixels) = (g.patch(), g.oh * g.ow);
    super::check_len("conv2d", "input", x.len(), g.n * g.c_in * g.h * g.w)?;
    super::check_len("conv2d", "kernel", kernel.len(), g.c_out * k)?;
    super::check_len("conv2d", "output", y.len(), g.n * g.c_out * pixels)?;
    if let Some(b) = bias {
        super::check_len("conv2d", "bias", b.len(), g.c_out)?;
    }
    let need = g.scratch_len();
    if scratch.len() < need {
        return Err(Error::shape_mismatch(
            "conv2d: scratch (elements)",
            need,
            scratch.len(),
        ));
    }
    let patches = &mut scratch[..need];
    for (xi, yi) in x
        .chunks_exact((g.c_in * g.h * g.w).max(1))
        .zip(y.chunks_exact_mut((g.c_out * pixels).max(1)))
        .take(g.n)
    {
        if k > 0 {
            patches
                .par_chunks_mut(k * NR)
                .enumerate()
                .for_each(|(p, panel)| gather_panel(xi, g, p * NR, panel));
        }
        let ep = Epilogue {
            row_bias: bias,
            ..Epilogue::default()
        };
        linear_panels(kernel, g.c_out, Panels::new(patches, k, pixels)?, ep, yi)?;
    }
    Ok(())
}

/// The patches of output pixels `q0 .. q0 + 16` (row-major over the output) as one panel: row
/// `(c, dy, dx)` holds the 16 pixels' input values under that kernel tap (0 outside the image and
/// for pixels past the last).
fn gather_panel(x: &[f32], g: &Conv2dGeometry, q0: usize, panel: &mut [f32]) {
    let pixels = g.oh * g.ow;
    // Top-left corner of each pixel's window (may be "negative": wrapped, then out of range).
    let mut ys = [usize::MAX; NR];
    let mut xs = [usize::MAX; NR];
    for j in 0..NR.min(pixels - q0) {
        let (oy, ox) = ((q0 + j) / g.ow, (q0 + j) % g.ow);
        ys[j] = (oy * g.stride[0]).wrapping_sub(g.pad[0]);
        xs[j] = (ox * g.stride[1]).wrapping_sub(g.pad[1]);
    }
    let mut rows = panel.chunks_exact_mut(NR);
    for c in 0..g.c_in {
        let plane = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
        for dy in 0..g.kh {
            for dx in 0..g.kw {
                let row = rows.next().expect("panel holds c_in · kh · kw rows");
                for j in 0..NR {
                    let iy = ys[j].wrapping_add(dy * g.dilation[0]);
                    let ix = xs[j].wrapping_add(dx * g.dilation[1]);
                    // Outside the image (before it wraps to a huge index) reads the padding's 0.
                    row[j] = if iy < g.h && ix < g.w {
                        plane[iy * g.w + ix]
                    } else {
                        0.0
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_values as values;

    /// `[n, c_in, h, w]` input, `c_out` × `k` kernel, `[stride, dilation, pad]` per axis.
    fn geometry(
        input: [usize; 4],
        c_out: usize,
        k: [usize; 2],
        [stride, dilation, pad]: [[usize; 2]; 3],
    ) -> Conv2dGeometry {
        let [n, c_in, h, w] = input;
        let out = |i: usize, s: usize, d: usize, kk: usize, p: usize| {
            (i + 2 * p - d * (kk - 1) - 1) / s + 1
        };
        Conv2dGeometry {
            n,
            c_in,
            h,
            w,
            c_out,
            kh: k[0],
            kw: k[1],
            stride,
            dilation,
            pad,
            oh: out(h, stride[0], dilation[0], k[0], pad[0]),
            ow: out(w, stride[1], dilation[1], k[1], pad[1]),
        }
    }

    /// The definition in f64 with an f32 dot product's error bound (as `linear`'s tests).
    fn reference(x: &[f32], kern: &[f32], bias: &[f32], g: &Conv2dGeometry) -> Vec<(f64, f64)> {
        let mut out = Vec::new();
        for b in 0..g.n {
            for o in 0..g.c_out {
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        let (mut s, mut mag) = (bias[o] as f64, (bias[o] as f64).abs());
                        for c in 0..g.c_in {
                            for dy in 0..g.kh {
                                for dx in 0..g.kw {
                                    let iy = (oy * g.stride[0] + dy * g.dilation[0]) as isize
                                        - g.pad[0] as isize;
                                    let ix = (ox * g.stride[1] + dx * g.dilation[1]) as isize
                                        - g.pad[1] as isize;
                                    if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize
                                    {
                                        continue;
                                    }
                                    let xv = x
                                        [((b * g.c_in + c) * g.h + iy as usize) * g.w + ix as usize]
                                        as f64;
                                    let kv =
                                        kern[((o * g.c_in + c) * g.kh + dy) * g.kw + dx] as f64;
                                    s += xv * kv;
                                    mag += (xv * kv).abs();
                                }
                            }
                        }
                        let tol = (g.patch() as f64 + 2.0) * 2f64.powi(-23) * mag + 1e-30;
                        out.push((s, tol));
                    }
                }
            }
        }
        out
    }

    #[test]
    fn matches_the_definition_for_patch_embedding_padding_stride_and_dilation() {
        for g in [
            // Swin's patch embedding, reduced frame.
            geometry([1, 3, 24, 40], 96, [4, 4], [[4, 4], [1, 1], [0, 0]]),
            // 3×3, padding 1 (the mask branch's), two images.
            geometry([2, 16, 9, 16], 8, [3, 3], [[1, 1], [1, 1], [1, 1]]),
            // Strided, dilated, padded, non-square, an input edge the windows skip.
            geometry([1, 5, 11, 13], 7, [3, 2], [[2, 3], [2, 1], [2, 1]]),
            // 1×1.
            geometry([1, 33, 5, 6], 17, [1, 1], [[1, 1], [1, 1], [0, 0]]),
        ] {
            let x = values(g.n * g.c_in * g.h * g.w, 1);
            let kern = values(g.c_out * g.patch(), 2);
            let bias = values(g.c_out, 3);
            let mut scratch = vec![f32::NAN; g.scratch_len()];
            let mut y = vec![f32::NAN; g.n * g.c_out * g.oh * g.ow];
            conv2d(&x, &g, &kern, Some(&bias), &mut scratch, &mut y).unwrap();
            for (i, (&got, &(s, tol))) in y.iter().zip(&reference(&x, &kern, &bias, &g)).enumerate()
            {
                assert!(
                    (got as f64 - s).abs() <= tol,
                    "{g:?} element {i}: {got} against {s}"
                );
            }
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        let g = geometry([1, 2, 4, 4], 3, [3, 3], [[1, 1], [1, 1], [1, 1]]);
        let kern = values(54, 1);
        let mut s = vec![0.0f32; g.scratch_len()];
        let mut y = vec![0.0f32; 48];
        let x = values(32, 2);
        assert!(conv2d(&x[..31], &g, &kern, None, &mut s, &mut y).is_err());
        assert!(conv2d(&x, &g, &kern[..53], None, &mut s, &mut y).is_err());
        assert!(conv2d(&x, &g, &kern, None, &mut s[..10], &mut y).is_err());
        assert!(conv2d(&x, &g, &kern, None, &mut s, &mut y[..47]).is_err());
        assert!(conv2d(&x, &g, &kern, Some(&[0.0; 2]), &mut s, &mut y).is_err());
        let zero_stride = Conv2dGeometry {
            stride: [0, 1],
            ..g
        };
        assert!(conv2d(&x, &zero_stride, &kern, None, &mut s, &mut y).is_err());
        let huge = Conv2dGeometry {
            oh: usize::MAX / 2,
            ..g
        };
        assert!(conv2d(&x, &huge, &kern, None, &mut s, &mut y).is_err());
    }
}
