//! Nearest-neighbour resizing of the last two axes of a row-major f32 tensor: what the CPU backend
//! runs for the FPN's ONNX `Resize` (`nearest`, `asymmetric`, `floor`; `[1, C, h, w]` up to the next
//! level's size, 12×20 → 23×40 → 45×80 → 90×160 at 360×640), which tract resamples one axis at a
//! time through an interpolation plan on one thread (≈ 6 ms of the Swin-T frame engine for 3.5 MB
//! of output).
//!
//! Indices follow the ONNX definition: output coordinate `x` reads input `floor(x / scale)` with
//! `scale = len_out / len_in` in f32 (clamped to the last input index), computed once per axis by
//! [`nearest_indices`]; a run only gathers, output rows spread over the rayon pool.

use crate::error::{Error, Result};
use rayon::prelude::*;

/// Output elements below which a call stays on the calling thread.
const MIN_PARALLEL: usize = 32 * 1024;

/// The input index each of `len_out` output positions reads along an axis of `len_in`
/// (`asymmetric` coordinates, `floor` rounding, as ONNX `Resize` defines them).
pub fn nearest_indices(len_in: usize, len_out: usize) -> Vec<usize> {
    if len_in == 0 {
        return Vec::new();
    }
    let scale = len_out as f32 / len_in as f32;
    (0..len_out)
        .map(|x| {
            let src = (x as f32 / scale).floor();
            // `as usize` saturates a negative or NaN value to 0.
            (src as usize).min(len_in - 1)
        })
        .collect()
}

/// Writes `x` (`planes` planes of `h × w`) resized to `rows.len() × cols.len()` per plane into
/// `out`: output `(p, i, j)` = input `(p, rows[i], cols[j])`. Threads: the rayon pool the caller
/// runs in.
pub fn resize_nearest_2d(
    x: &[f32],
    planes: usize,
    h: usize,
    w: usize,
    rows: &[usize],
    cols: &[usize],
    out: &mut [f32],
) -> Result<()> {
    let overflow = || Error::Shape(format!("resize: {planes} planes of {h}×{w} overflow"));
    let n_in = planes
        .checked_mul(h)
        .and_then(|v| v.checked_mul(w))
        .ok_or_else(overflow)?;
    let (oh, ow) = (rows.len(), cols.len());
    let n_out = planes
        .checked_mul(oh)
        .and_then(|v| v.checked_mul(ow))
        .ok_or_else(overflow)?;
    super::check_len("resize", "input", x.len(), n_in)?;
    super::check_len("resize", "output", out.len(), n_out)?;
    if rows.iter().any(|&r| r >= h) || cols.iter().any(|&c| c >= w) {
        return Err(Error::Shape(format!(
            "resize: an index table reads outside the {h}×{w} input"
        )));
    }
    if out.is_empty() {
        return Ok(());
    }
    // One task: `rows_per_task` output rows, each a gather from one input row.
    let rows_per_task = (MIN_PARALLEL / ow).max(1);
    let body = |(t, chunk): (usize, &mut [f32])| {
        let first = t * rows_per_task;
        for (l, line) in chunk.chunks_exact_mut(ow).enumerate() {
            let r = first + l;
            let (p, i) = (r / oh, r % oh);
            let src = &x[(p * h + rows[i]) * w..][..w];
            for (o, &c) in line.iter_mut().zip(cols) {
                *o = src[c];
            }
        }
    };
    if n_out <= MIN_PARALLEL || rayon::current_num_threads() < 2 {
        out.chunks_mut(rows_per_task * ow)
            .enumerate()
            .for_each(body);
    } else {
        out.par_chunks_mut(rows_per_task * ow)
            .enumerate()
            .for_each(body);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_are_the_floor_of_the_scaled_coordinate() {
        // Integer scales replicate pixels.
        assert_eq!(nearest_indices(3, 6), [0, 0, 1, 1, 2, 2]);
        assert_eq!(nearest_indices(2, 6), [0, 0, 0, 1, 1, 1]);
        // The FPN's odd sizes: 12 → 23 (scale 23/12), 23 → 45.
        let want = |i: usize, o: usize| -> Vec<usize> {
            (0..o)
                .map(|x| ((x as f64 * i as f64 / o as f64).floor() as usize).min(i - 1))
                .collect()
        };
        for (i, o) in [(12, 23), (23, 45), (20, 40), (45, 90), (7, 3), (5, 5)] {
            assert_eq!(nearest_indices(i, o), want(i, o), "{i} → {o}");
        }
        assert!(nearest_indices(0, 4).is_empty());
    }

    #[test]
    fn matches_the_definition_on_one_and_several_threads() {
        let (planes, h, w) = (70, 12, 20);
        let x: Vec<f32> = (0..planes * h * w).map(|i| i as f32 * 0.5 - 3.0).collect();
        let (rows, cols) = (nearest_indices(h, 23), nearest_indices(w, 40));
        let mut want = Vec::new();
        for p in 0..planes {
            for &r in &rows {
                want.extend(cols.iter().map(|&c| x[(p * h + r) * w + c]));
            }
        }
        for threads in [1, 3] {
            let mut out = vec![f32::NAN; want.len()];
            crate::ops::on_threads(threads, || {
                resize_nearest_2d(&x, planes, h, w, &rows, &cols, &mut out)
            })
            .unwrap();
            assert_eq!(out, want, "{threads} threads");
        }
    }

    #[test]
    fn bad_lengths_and_indices_are_errors() {
        let x = vec![0.0; 2 * 3 * 4];
        let mut out = vec![0.0; 2 * 6 * 8];
        let (rows, cols) = (nearest_indices(3, 6), nearest_indices(4, 8));
        assert!(resize_nearest_2d(&x[1..], 2, 3, 4, &rows, &cols, &mut out).is_err());
        assert!(resize_nearest_2d(&x, 2, 3, 4, &rows, &cols, &mut out[1..]).is_err());
        assert!(resize_nearest_2d(&x, 2, 3, 4, &[0, 3], &cols, &mut out[..16]).is_err());
        assert!(resize_nearest_2d(&x, 2, 3, 4, &rows, &cols, &mut out).is_ok());
    }
}
