//! ONNX `GatherElements` of f32 data by i64 indices of the same shape off the gathered axis: what
//! the CPU backend runs where tract walks the output element by element through `ndarray` views
//! (the decoder's selection of its top-K queries' features, `[1, 4820, 256]` → `[1, 900, 256]`,
//! ≈ 1.6 ms of the Swin-T frame engine for 0.9 MB).
//!
//! Output `(o, j, i)` (`o` over the axes before `axis`, `j` along it, `i` over the axes after it)
//! is data `(o, idx, i)` with `idx = indices(o, j, i)`, a negative index counting from the end;
//! an index outside the axis is an error, not a panic. Rows of the output spread over the rayon
//! pool.

use crate::error::{Error, Result};
use rayon::prelude::*;

/// Output elements below which a call stays on the calling thread.
const MIN_PARALLEL: usize = 32 * 1024;

/// Gathers `data` (shape `data_shape`) along `axis` by `indices` (shape `idx_shape`, equal to
/// `data_shape` on every other axis) into `out` (`idx_shape`). Threads: the rayon pool the caller
/// runs in.
pub fn gather_elements(
    data: &[f32],
    data_shape: &[usize],
    indices: &[i64],
    idx_shape: &[usize],
    axis: usize,
    out: &mut [f32],
) -> Result<()> {
    let bad = || {
        Error::Shape(format!(
            "gather elements: data {data_shape:?} and indices {idx_shape:?} along axis {axis}"
        ))
    };
    if axis >= data_shape.len() || data_shape.len() != idx_shape.len() {
        return Err(bad());
    }
    if data_shape[..axis] != idx_shape[..axis] || data_shape[axis + 1..] != idx_shape[axis + 1..] {
        return Err(bad());
    }
    let count = |s: &[usize]| s.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let (n_data, n_idx) = (
        count(data_shape).ok_or_else(bad)?,
        count(idx_shape).ok_or_else(bad)?,
    );
    super::check_len("gather elements", "data", data.len(), n_data)?;
    super::check_len("gather elements", "indices", indices.len(), n_idx)?;
    super::check_len("gather elements", "output", out.len(), n_idx)?;
    let inner: usize = idx_shape[axis + 1..].iter().product();
    let (n, len) = (idx_shape[axis], data_shape[axis]);
    if out.is_empty() {
        return Ok(());
    }
    // One output row: `inner` elements at (o, j); its indices are the same stretch of `indices`.
    let row = |r: usize, y: &mut [f32]| -> Result<()> {
        let o = r / n;
        let base = o * len * inner;
        for (i, (y, &ix)) in y.iter_mut().zip(&indices[r * inner..][..inner]).enumerate() {
            let k = if ix < 0 { ix + len as i64 } else { ix };
            if !(0..len as i64).contains(&k) {
                return Err(Error::Shape(format!(
                    "gather elements: index {ix} outside an axis of {len}"
                )));
            }
            *y = data[base + k as usize * inner + i];
        }
        Ok(())
    };
    let rows_per_task = (MIN_PARALLEL / inner).max(1);
    let task = |(t, chunk): (usize, &mut [f32])| -> Result<()> {
        chunk
            .chunks_exact_mut(inner)
            .enumerate()
            .try_for_each(|(l, y)| row(t * rows_per_task + l, y))
    };
    if out.len() <= MIN_PARALLEL || rayon::current_num_threads() < 2 {
        out.chunks_mut(rows_per_task * inner)
            .enumerate()
            .try_for_each(task)
    } else {
        out.par_chunks_mut(rows_per_task * inner)
            .enumerate()
            .try_for_each(task)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, element by element.
    fn reference(data: &[f32], ds: &[usize], idx: &[i64], is: &[usize], axis: usize) -> Vec<f32> {
        let n: usize = is.iter().product();
        (0..n)
            .map(|e| {
                // Multi-index of output element `e`, with `axis` replaced by its index.
                let (mut rem, mut off, mut stride) = (e, 0usize, 1usize);
                for ax in (0..is.len()).rev() {
                    let mut c = rem % is[ax];
                    rem /= is[ax];
                    if ax == axis {
                        let k = idx[e];
                        c = if k < 0 {
                            (k + ds[ax] as i64) as usize
                        } else {
                            k as usize
                        };
                    }
                    off += c * stride;
                    stride *= ds[ax];
                }
                data[off]
            })
            .collect()
    }

    #[test]
    fn matches_the_definition_on_every_axis_and_thread_count() {
        // The decoder's top-K rows, a last-axis gather, a first-axis one, negative indices.
        let cases: &[(&[usize], &[usize], usize)] = &[
            (&[1, 300, 64], &[1, 90, 64], 1),
            (&[4, 5, 30], &[4, 5, 7], 2),
            (&[6, 3, 2], &[9, 3, 2], 0),
            (&[2, 2000, 40], &[2, 500, 40], 1),
        ];
        for &(ds, is, axis) in cases {
            let nd: usize = ds.iter().product();
            let ni: usize = is.iter().product();
            let data: Vec<f32> = (0..nd).map(|i| i as f32 * 0.5 - 3.0).collect();
            let len = ds[axis] as i64;
            let idx: Vec<i64> = (0..ni as i64)
                .map(|i| {
                    let k = (i * 7919) % len;
                    if i % 3 == 0 {
                        k - len
                    } else {
                        k
                    }
                })
                .collect();
            let want = reference(&data, ds, &idx, is, axis);
            for threads in [1, 3] {
                let mut out = vec![f32::NAN; ni];
                crate::ops::on_threads(threads, || {
                    gather_elements(&data, ds, &idx, is, axis, &mut out)
                })
                .unwrap();
                assert_eq!(out, want, "{ds:?} by {is:?} on {axis}, {threads} threads");
            }
        }
    }

    #[test]
    fn bad_shapes_and_indices_are_errors() {
        let data = vec![0.0f32; 12];
        let mut out = vec![0.0f32; 6];
        let ok = gather_elements(&data, &[3, 4], &[0, 1, 2, -1, -4, 3], &[3, 2], 1, &mut out);
        assert!(ok.is_ok());
        assert!(
            gather_elements(&data, &[3, 4], &[0, 1, 2, 4, 0, 0], &[3, 2], 1, &mut out).is_err()
        );
        assert!(
            gather_elements(&data, &[3, 4], &[0, 1, 2, -5, 0, 0], &[3, 2], 1, &mut out).is_err()
        );
        assert!(gather_elements(&data, &[3, 4], &[0; 6], &[2, 3], 1, &mut out).is_err());
        assert!(gather_elements(&data, &[3, 4], &[0; 6], &[3, 2], 2, &mut out).is_err());
        assert!(gather_elements(&data[1..], &[3, 4], &[0; 6], &[3, 2], 1, &mut out).is_err());
    }
}
