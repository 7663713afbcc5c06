//! Softmax along one axis of a row-major f32 tensor, in place: what the CPU backend runs for every
//! f32 `Softmax` node instead of tract's own operator.
//!
//! Why our own: tract vectorises a softmax only when its axis is the last one and the row length is
//! a multiple of 4. Swin's window attention has rows of 49, the text-side fusion attention rows of
//! the caption length (11 for a 10-token prompt) and the image-side one a softmax over the 4820 image
//! tokens, which is not the last axis; those take tract's per-row or per-element paths, which cost
//! ≈ 13 % of the Swin-T frame engine (benches/README.md, "Softmax"). Here every case is one pass of
//! lane-wise maximum, exponential and sum, then one scale, vectorised whatever the row length or
//! axis.
//!
//! The exponential is a range reduction `x = k·ln 2 + r`, `|r| ≤ ln 2 / 2`, and a degree-6
//! polynomial for `e^r` (least-squares fit at 2000 Chebyshev nodes of that interval, relative error
//! 1.9e-9 before rounding), scaled by `2^k` through the exponent bits: within 2 ulp of the exactly
//! rounded `exp` on the range a softmax uses (`x − max ≤ 0`; below −87.3 the result is 0). No fused
//! multiply-add is used, so results are the same bit for bit on every instruction set, and a row is
//! always reduced in the same order (8 lanes, then the lanes in a fixed tree), so they do not depend
//! on the thread count either. NaN propagates as in the textbook definition (a row holding NaN or
//! +∞, or only −∞, becomes NaN).

use super::{fold_lanes, lane_sum, LANES};
use crate::error::{Error, Result};
use rayon::prelude::*;

/// Columns of a strided block handled together (the per-column maxima and sums live on the stack).
const TILE: usize = 64;

/// Elements below which a call stays on the calling thread (a task costs more than it saves).
const MIN_PARALLEL: usize = 32 * 1024;

/// Applies softmax in place to `data`, a row-major tensor viewed as `[outer, n, inner]`, along the
/// middle axis (`inner = 1`: the last axis). Threads: the rayon pool the caller runs in.
pub fn softmax_in_place(data: &mut [f32], outer: usize, n: usize, inner: usize) -> Result<()> {
    let block = n
        .checked_mul(inner)
        .ok_or_else(|| Error::Shape(format!("softmax: {n} x {inner} elements overflow")))?;
    let total = block
        .checked_mul(outer)
        .ok_or_else(|| Error::Shape(format!("softmax: {outer} x {block} elements overflow")))?;
    super::check_len("softmax", "data", data.len(), total)?;
    if total == 0 {
        return Ok(());
    }
    let per_task = (MIN_PARALLEL / block).max(1) * block;
    if total <= per_task || rayon::current_num_threads() < 2 {
        blocks(data, n, inner);
    } else {
        data.par_chunks_mut(per_task)
            .for_each(|chunk| blocks(chunk, n, inner));
    }
    Ok(())
}

/// Dispatches whole blocks to the widest instruction set available at run time.
fn blocks(data: &mut [f32], n: usize, inner: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            unsafe { blocks_avx2(data, n, inner) };
            return;
        }
    }
    blocks_generic(data, n, inner);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn blocks_avx2(data: &mut [f32], n: usize, inner: usize) {
    blocks_generic(data, n, inner);
}

#[inline(always)]
fn blocks_generic(data: &mut [f32], n: usize, inner: usize) {
    for b in data.chunks_exact_mut(n * inner) {
        if inner == 1 {
            row(b);
        } else {
            let mut j0 = 0;
            while j0 < inner {
                let w = TILE.min(inner - j0);
                columns(b, inner, j0, w);
                j0 += w;
            }
        }
    }
}

/// Softmax of one contiguous row.
#[inline(always)]
fn row(x: &mut [f32]) {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut it = x.chunks_exact(LANES);
    for c in &mut it {
        for j in 0..LANES {
            lanes[j] = max_nan(lanes[j], c[j]);
        }
    }
    let mut max = fold_lanes(lanes, max_nan);
    for &v in it.remainder() {
        max = max_nan(max, v);
    }
    for v in x.iter_mut() {
        *v = exp_nonpositive(*v - max);
    }
    let scale = 1.0 / lane_sum(x, |v| v);
    for v in x.iter_mut() {
        *v *= scale;
    }
}

/// Softmax down the columns `j0 .. j0 + w` of a `[n, inner]` block (a softmax axis that is not
/// the last one): every pass goes row by row over `w` adjacent columns.
#[inline(always)]
fn columns(b: &mut [f32], inner: usize, j0: usize, w: usize) {
    let mut max = [f32::NEG_INFINITY; TILE];
    let mut sum = [0.0f32; TILE];
    let (max, sum) = (&mut max[..w], &mut sum[..w]);
    for r in b.chunks_exact(inner) {
        let r = &r[j0..j0 + w];
        for j in 0..w {
            max[j] = max_nan(max[j], r[j]);
        }
    }
    for r in b.chunks_exact_mut(inner) {
        let r = &mut r[j0..j0 + w];
        for j in 0..w {
            r[j] = exp_nonpositive(r[j] - max[j]);
            sum[j] += r[j];
        }
    }
    for s in sum.iter_mut() {
        *s = 1.0 / *s;
    }
    for r in b.chunks_exact_mut(inner) {
        let r = &mut r[j0..j0 + w];
        for j in 0..w {
            r[j] *= sum[j];
        }
    }
}

/// The larger of two values, NaN if either is NaN (so a NaN in a row reaches every output).
#[inline(always)]
fn max_nan(a: f32, b: f32) -> f32 {
    if a > b || a.is_nan() {
        a
    } else {
        b
    }
}

/// `e^x` for `x ≤ 0` (the module documentation says how and how accurate); 0 below −87.3, NaN for
/// NaN. Positive arguments are clamped to 0 (a softmax never passes one).
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    exp_nonpositive_split(x, 0.0)
}

/// `e^(x + tail)` for `x ≤ 0` and a `tail` far below `x`'s ulp, added after the range reduction
/// (where it is not rounded away): for an argument known more precisely than one f32 holds, such as
/// `−a²` in [`super::unary`]'s GELU. [`exp_nonpositive`] is this with a tail of 0, same bits.
#[inline(always)]
pub fn exp_nonpositive_split(x: f32, tail: f32) -> f32 {
    // ln 2 split so that k·LN2_HI is exact for |k| < 2^11: its 12 leading bits, then the rest.
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    // 1.5·2^23: adding it rounds to an integer (nearest, ties to even) held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    // Below this e^x is under f32's smallest normal number: the result is flushed to 0.
    const LOWEST: f32 = -87.3;
    const C: [f32; 5] = [
        0.499_999_9,
        0.166_664_21,
        0.041_668_36,
        0.008_374_771,
        0.001_382_942,
    ];
    // NaN stays NaN through `clamp`.
    let xc = x.clamp(LOWEST, 0.0);
    let t = xc * LOG2_E + ROUND;
    let k = t - ROUND;
    let r = ((xc - k * LN2_HI) - k * LN2_LO) + tail;
    let p = C[4];
    let p = p * r + C[3];
    let p = p * r + C[2];
    let p = p * r + C[1];
    let p = p * r + C[0];
    let p = (p * r) * r + r + 1.0;
    // k is in [-126, 0]: 2^k is a normal number built from its exponent field. The integer k sits in
    // t's low mantissa bits (t = 1.5·2^23 + k), so its bits minus ROUND's bits are k itself.
    let ki = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let scale = f32::from_bits(((ki + 127) as u32) << 23);
    if x < LOWEST {
        0.0
    } else {
        p * scale
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(x: &[f32], outer: usize, n: usize, inner: usize) -> Vec<f64> {
        let mut out = vec![0.0f64; x.len()];
        for o in 0..outer {
            for j in 0..inner {
                let at = |i: usize| o * n * inner + i * inner + j;
                let max = (0..n).map(|i| x[at(i)] as f64).fold(f64::MIN, f64::max);
                let sum: f64 = (0..n).map(|i| (x[at(i)] as f64 - max).exp()).sum();
                for i in 0..n {
                    out[at(i)] = (x[at(i)] as f64 - max).exp() / sum;
                }
            }
        }
        out
    }

    fn random(len: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale
            })
            .collect()
    }

    #[test]
    fn exp_is_within_two_ulp_of_the_rounded_exponential() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x <= 0.0 {
            let want = (x as f64).exp();
            let got = exp_nonpositive(x) as f64;
            let ulp = (want as f32).abs() as f64 * f32::EPSILON as f64;
            worst = worst.max((got - want).abs() / ulp);
            x += 0.000_731;
        }
        assert!(worst <= 2.0, "worst error {worst} ulp");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert_eq!(exp_nonpositive(-100.0), 0.0);
        assert_eq!(exp_nonpositive(f32::NEG_INFINITY), 0.0);
        assert!(exp_nonpositive(f32::NAN).is_nan());
    }

    #[test]
    fn matches_the_definition_on_every_axis_and_row_length() {
        // (outer, n, inner): Swin windows (49), caption rows (11), the image-token axis of the fusion
        // (not the last one), rows shorter than a lane group, a block wider than a column tile.
        for (k, &(outer, n, inner)) in [
            (300, 49, 1),
            (1000, 11, 1),
            (1, 4820, 44),
            (3, 5, 7),
            (2, 1, 3),
            (4, 3, 130),
            (1, 8, 1),
            (7, 300, 1),
        ]
        .iter()
        .enumerate()
        {
            let x = random(outer * n * inner, k as u64 + 1, 12.0);
            let want = reference(&x, outer, n, inner);
            let mut got = x.clone();
            softmax_in_place(&mut got, outer, n, inner).unwrap();
            for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                // The sums run in f32: over 4820 terms their rounding reaches a few 1e-6.
                assert!(
                    (g as f64 - w).abs() <= 1e-5 * w + 1e-12,
                    "shape ({outer},{n},{inner}) element {i}: {g} against {w}"
                );
            }
        }
    }

    #[test]
    fn masked_entries_get_zero_and_nan_spreads_like_the_definition() {
        let mut x = vec![1.0, f32::NEG_INFINITY, 3.0, -1e30];
        softmax_in_place(&mut x, 1, 4, 1).unwrap();
        assert_eq!(x[1], 0.0);
        assert_eq!(x[3], 0.0);
        assert!((x[0] + x[2] - 1.0).abs() < 1e-6);
        let mut all_masked = vec![f32::NEG_INFINITY; 9];
        softmax_in_place(&mut all_masked, 1, 9, 1).unwrap();
        assert!(all_masked.iter().all(|v| v.is_nan()));
        let mut with_nan = vec![0.5, f32::NAN, 0.25, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        softmax_in_place(&mut with_nan, 1, 3, 3).unwrap();
        // Column 1 holds the NaN (rows of 3 columns): only its softmax is NaN.
        assert!(with_nan[1].is_nan() && with_nan[4].is_nan() && with_nan[7].is_nan());
        assert!(with_nan
            .iter()
            .enumerate()
            .all(|(i, v)| i % 3 == 1 || v.is_finite()));
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let x = random(64 * 49 * 9, 7, 8.0);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut y = x.clone();
            pool.install(|| softmax_in_place(&mut y, 64 * 9, 49, 1))
                .unwrap();
            y
        };
        let one = run(1);
        assert_eq!(one, run(3));
        // The scalar path (no AVX2) computes the same lanes in the same order.
        let mut scalar = x.clone();
        blocks_generic(&mut scalar, 49, 1);
        assert_eq!(one, scalar);
    }

    #[test]
    fn wrong_lengths_are_refused() {
        let mut x = vec![0.0; 10];
        assert!(softmax_in_place(&mut x, 2, 3, 2).is_err());
        assert!(softmax_in_place(&mut x, usize::MAX, 2, 2).is_err());
        softmax_in_place(&mut [], 0, 5, 1).unwrap();
    }
}
