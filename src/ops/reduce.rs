//! Sum, maximum and minimum of a row-major f32 tensor over one axis: what the CPU backend runs for
//! tract's `Reduce` nodes of that kind, which tract evaluates one output element at a time through
//! `ndarray` slices on one thread where the axis is not the last (the decoder's attention summed
//! over its heads, `[1, 8, 900, 900]` → `[1, 1, 900, 900]`, ≈ 2.5 ms of the Swin-T frame engine) or
//! builds a view per output element where it is (the text-image fusion's maximum over the caption,
//! `[1, 4820, 11]`, ≈ 2 ms).
//!
//! Numerics: a sum is `0 + x₀ + x₁ + …` in increasing order along the axis (what tract computes off
//! the last axis; no reassociation, so every thread count gives the same bits); a maximum / minimum
//! keeps the first element and replaces it by any later one strictly greater / smaller, which is
//! exact for all non-NaN inputs.

use crate::error::{Error, Result};
use rayon::prelude::*;

/// Elements read below which a call stays on the calling thread.
const MIN_PARALLEL: usize = 64 * 1024;

/// What a reduction computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reduction {
    /// The sum.
    Sum,
    /// The maximum.
    Max,
    /// The minimum.
    Min,
}

impl Reduction {
    /// The reduction's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Reduction::Sum => "Sum",
            Reduction::Max => "Max",
            Reduction::Min => "Min",
        }
    }

    /// The value a fold starts from before `first`, the axis's first element.
    #[inline(always)]
    fn start(self, first: f32) -> f32 {
        match self {
            Reduction::Sum => 0.0 + first,
            Reduction::Max | Reduction::Min => first,
        }
    }

    #[inline(always)]
    fn fold(self, acc: f32, x: f32) -> f32 {
        match self {
            Reduction::Sum => acc + x,
            Reduction::Max => {
                if x > acc {
                    x
                } else {
                    acc
                }
            }
            Reduction::Min => {
                if x < acc {
                    x
                } else {
                    acc
                }
            }
        }
    }
}

/// Reduces `x` (shape `shape`) over `axis` into `out` (the shape with that axis 1), which must not
/// be empty along it. Threads: the rayon pool the caller runs in.
pub fn reduce_axis(
    r: Reduction,
    x: &[f32],
    shape: &[usize],
    axis: usize,
    out: &mut [f32],
) -> Result<()> {
    if axis >= shape.len() || shape[axis] == 0 {
        return Err(Error::Shape(format!(
            "reduce: axis {axis} of {shape:?} (an empty or missing axis has no {})",
            r.name()
        )));
    }
    let n = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| Error::Shape(format!("reduce: {shape:?} overflows")))?;
    let len = shape[axis];
    super::check_len("reduce", "input", x.len(), n)?;
    super::check_len("reduce", "output", out.len(), n / len)?;
    let inner: usize = shape[axis + 1..].iter().product();
    if out.is_empty() {
        return Ok(());
    }
    if inner == 1 {
        // The last axis: one contiguous run per output element.
        let per_task = (MIN_PARALLEL / len).max(1);
        let body = |(t, chunk): (usize, &mut [f32])| {
            for (l, y) in chunk.iter_mut().enumerate() {
                let run = &x[(t * per_task + l) * len..][..len];
                *y = run[1..].iter().fold(r.start(run[0]), |a, &v| r.fold(a, v));
            }
        };
        if n <= MIN_PARALLEL || rayon::current_num_threads() < 2 {
            out.chunks_mut(per_task).enumerate().for_each(body);
        } else {
            out.par_chunks_mut(per_task).enumerate().for_each(body);
        }
        return Ok(());
    }
    // An inner axis: for each outer index, fold `len` rows of `inner` elements into one, in order;
    // tasks take stretches of a row.
    let chunk = (MIN_PARALLEL / len).clamp(1, inner);
    let body = |o: usize, c: usize, y: &mut [f32]| {
        let (base, w) = (o * len * inner + c * chunk, y.len());
        for (a, &v) in y.iter_mut().zip(&x[base..]) {
            *a = r.start(v);
        }
        for j in 1..len {
            for (a, &v) in y.iter_mut().zip(&x[base + j * inner..][..w]) {
                *a = r.fold(*a, v);
            }
        }
    };
    if n <= MIN_PARALLEL || rayon::current_num_threads() < 2 {
        for (o, row) in out.chunks_mut(inner).enumerate() {
            for (c, y) in row.chunks_mut(chunk).enumerate() {
                body(o, c, y);
            }
        }
    } else {
        out.par_chunks_mut(inner).enumerate().for_each(|(o, row)| {
            row.par_chunks_mut(chunk)
                .enumerate()
                .for_each(|(c, y)| body(o, c, y))
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition: each output element folds its run along `axis` in order.
    fn reference(r: Reduction, x: &[f32], shape: &[usize], axis: usize) -> Vec<f32> {
        let len = shape[axis];
        let inner: usize = shape[axis + 1..].iter().product();
        let outer: usize = shape[..axis].iter().product();
        let mut out = Vec::new();
        for o in 0..outer {
            for i in 0..inner {
                let at = |j: usize| x[(o * len + j) * inner + i];
                let first = if r == Reduction::Sum {
                    0.0 + at(0)
                } else {
                    at(0)
                };
                out.push((1..len).fold(first, |a, j| r.fold(a, at(j))));
            }
        }
        out
    }

    #[test]
    fn matches_the_definition_on_every_axis_and_thread_count() {
        let cases: &[(&[usize], usize)] = &[
            // The decoder's heads, the fusion's caption, a leading axis, an axis of one.
            (&[1, 8, 300, 90], 1),
            (&[1, 4820, 11], 2),
            (&[7, 3, 5000], 0),
            (&[4, 1, 6], 1),
            (&[3, 40_000], 1),
            (&[2, 9, 70_001], 1),
        ];
        for &(shape, axis) in cases {
            let n: usize = shape.iter().product();
            // Negative zeros too: a sum starts from +0.
            let x: Vec<f32> = (0..n)
                .map(|i| match i % 101 {
                    0 => -0.0,
                    _ => ((i * 7919) % 1013) as f32 * 0.37 - 180.0,
                })
                .collect();
            for r in [Reduction::Sum, Reduction::Max, Reduction::Min] {
                let want = reference(r, &x, shape, axis);
                for threads in [1, 3] {
                    let mut out = vec![f32::NAN; want.len()];
                    crate::ops::on_threads(threads, || reduce_axis(r, &x, shape, axis, &mut out))
                        .unwrap();
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&out), bits(&want), "{r:?} {shape:?} {axis} {threads}");
                }
            }
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let mut out = vec![0.0f32; 3];
        assert!(reduce_axis(Reduction::Sum, &[0.0; 6], &[3, 2], 1, &mut out).is_ok());
        assert!(reduce_axis(Reduction::Sum, &[0.0; 6], &[3, 2], 2, &mut out).is_err());
        assert!(reduce_axis(Reduction::Max, &[], &[3, 0], 1, &mut out).is_err());
        assert!(reduce_axis(Reduction::Min, &[0.0; 5], &[3, 2], 1, &mut out).is_err());
        assert!(reduce_axis(Reduction::Sum, &[0.0; 6], &[3, 2], 1, &mut out[..2]).is_err());
    }
}
