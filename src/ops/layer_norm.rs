//! Layer normalisation over the trailing elements of each row, in place: what the CPU backend runs
//! for ONNX `LayerNormalization` instead of tract's decomposition of it.
//!
//! Why our own: tract expands each normalisation into a sum, a subtraction, a squared sum, a
//! reciprocal square root and the affine step, six passes over memory, each on one thread; the
//! Swin-T frame engine holds 99 of them (benches/README.md, "LayerNorm"). Here a row is read three
//! times (mean, variance of the centred values, then the normalised and affine output written in
//! place) and rows are spread over the caller's rayon pool.
//!
//! Maths as ONNX states it with `stash_type` f32: `mean = Σx / n`, `var = Σ(x − mean)² / n`,
//! `y = (x − mean) / sqrt(var + ε) · scale + bias`. Sums run in 8 lanes combined in a fixed order, so
//! results do not depend on the instruction set or the thread count.

use super::lane_sum;
use crate::error::{Error, Result};
use rayon::prelude::*;

/// Elements below which a call stays on the calling thread.
const MIN_PARALLEL: usize = 32 * 1024;

/// Normalises each `width`-element row of `data` in place; `scale` and `bias` hold `width` values
/// (a missing bias is 0). Threads: the rayon pool the caller runs in.
pub fn layer_norm_in_place(
    data: &mut [f32],
    width: usize,
    scale: &[f32],
    bias: Option<&[f32]>,
    epsilon: f32,
) -> Result<()> {
    if width == 0 {
        return if data.is_empty() {
            Ok(())
        } else {
            Err(Error::Shape(format!(
                "layer norm: rows of 0 elements in {} elements",
                data.len()
            )))
        };
    }
    if !data.len().is_multiple_of(width) {
        return Err(Error::Shape(format!(
            "layer norm: {} elements are not rows of {width}",
            data.len()
        )));
    }
    super::check_len("layer norm", "scale", scale.len(), width)?;
    if let Some(b) = bias {
        super::check_len("layer norm", "bias", b.len(), width)?;
    }
    let per_task = (MIN_PARALLEL / width).max(1) * width;
    if data.len() <= per_task || rayon::current_num_threads() < 2 {
        rows(data, width, scale, bias, epsilon);
    } else {
        data.par_chunks_mut(per_task)
            .for_each(|chunk| rows(chunk, width, scale, bias, epsilon));
    }
    Ok(())
}

/// Dispatches to the widest instruction set available at run time.
fn rows(data: &mut [f32], width: usize, scale: &[f32], bias: Option<&[f32]>, eps: f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            unsafe { rows_avx2(data, width, scale, bias, eps) };
            return;
        }
    }
    rows_generic(data, width, scale, bias, eps);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn rows_avx2(data: &mut [f32], width: usize, scale: &[f32], bias: Option<&[f32]>, eps: f32) {
    rows_generic(data, width, scale, bias, eps);
}

#[inline(always)]
fn rows_generic(data: &mut [f32], width: usize, scale: &[f32], bias: Option<&[f32]>, eps: f32) {
    let n = width as f32;
    for x in data.chunks_exact_mut(width) {
        let mean = lane_sum(x, |v| v) / n;
        let var = lane_sum(x, |v| (v - mean) * (v - mean)) / n;
        let inv = 1.0 / (var + eps).sqrt();
        match bias {
            Some(b) => {
                for ((v, &s), &b) in x.iter_mut().zip(scale).zip(b) {
                    *v = (*v - mean) * inv * s + b;
                }
            }
            None => {
                for (v, &s) in x.iter_mut().zip(scale) {
                    *v = (*v - mean) * inv * s;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(
        x: &[f32],
        width: usize,
        scale: &[f32],
        bias: Option<&[f32]>,
        eps: f32,
    ) -> Vec<f64> {
        let mut out = Vec::with_capacity(x.len());
        for r in x.chunks(width) {
            let n = width as f64;
            let mean = r.iter().map(|&v| v as f64).sum::<f64>() / n;
            let var = r.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
            for (j, &v) in r.iter().enumerate() {
                let b = bias.map_or(0.0, |b| b[j] as f64);
                out.push((v as f64 - mean) / (var + eps as f64).sqrt() * scale[j] as f64 + b);
            }
        }
        out
    }

    fn values(len: usize, seed: u32, offset: f32) -> Vec<f32> {
        (0..len)
            .map(|i| {
                let h = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8;
                offset + (h % 2000) as f32 / 250.0 - 4.0
            })
            .collect()
    }

    #[test]
    fn matches_the_definition_for_the_model_widths() {
        // Swin-T's stage widths, the transformer's 256, a width under one lane group, one with a
        // tail; an offset row mean (activations after a residual add are not centred).
        for (k, &(rows, width)) in [
            (300, 96),
            (64, 192),
            (33, 384),
            (7, 768),
            (900, 256),
            (5, 3),
            (9, 13),
        ]
        .iter()
        .enumerate()
        {
            let x = values(rows * width, k as u32, 20.0);
            let scale = values(width, 99 + k as u32, 1.0);
            let bias = values(width, 7 + k as u32, 0.0);
            for b in [Some(&bias[..]), None] {
                let want = reference(&x, width, &scale, b, 1e-5);
                let mut got = x.clone();
                layer_norm_in_place(&mut got, width, &scale, b, 1e-5).unwrap();
                for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (g as f64 - w).abs() <= 2e-5 * (1.0 + w.abs()),
                        "width {width} element {i}: {g} against {w}"
                    );
                }
            }
        }
    }

    #[test]
    fn results_do_not_depend_on_threads_or_instruction_set() {
        let x = values(512 * 256, 3, 1.0);
        let scale = values(256, 4, 1.0);
        let bias = values(256, 5, 0.0);
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut y = x.clone();
            pool.install(|| layer_norm_in_place(&mut y, 256, &scale, Some(&bias), 1e-5))
                .unwrap();
            y
        };
        let one = run(1);
        assert_eq!(one, run(3));
        let mut generic = x.clone();
        rows_generic(&mut generic, 256, &scale, Some(&bias), 1e-5);
        assert_eq!(one, generic);
    }

    #[test]
    fn bad_lengths_are_refused() {
        let mut x = vec![0.0; 10];
        assert!(layer_norm_in_place(&mut x, 4, &[1.0; 4], None, 1e-5).is_err());
        assert!(layer_norm_in_place(&mut x, 5, &[1.0; 4], None, 1e-5).is_err());
        assert!(layer_norm_in_place(&mut x, 5, &[1.0; 5], Some(&[0.0; 4]), 1e-5).is_err());
        assert!(layer_norm_in_place(&mut x, 0, &[], None, 1e-5).is_err());
        layer_norm_in_place(&mut [], 0, &[], None, 1e-5).unwrap();
    }
}
