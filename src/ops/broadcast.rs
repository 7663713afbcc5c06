//! `a += b` with numpy broadcasting of `b` into `a`'s shape, in place: what the CPU backend runs
//! for the f32 `Add` nodes that tract leaves on its generic broadcasting path.
//!
//! Why our own: after its optimisation tract still runs Swin's window-attention `Add`s (the
//! relative position bias `[1, H, 49, 49]` and the shift mask over `[windows, H, 49, 49]` scores)
//! as an element-by-element walk with index arithmetic: ≈ 50 ms for 30 nodes of the Swin-T frame
//! engine (benches/README.md, "Linear layers, convolutions and broadcast Add"). Here the trailing
//! axes on which `b` is not broadcast (or on which it is) form one contiguous run, and the leading
//! axes are walked once per run with `b`'s offset kept incrementally; each element is one f32 add,
//! so the results are the textbook sum's.

use crate::error::{Error, Result};
use rayon::prelude::*;

/// Elements below which a call stays on the calling thread.
const MIN_PARALLEL: usize = 64 * 1024;

/// Adds `b` (shape `b_shape`, each axis equal to `shape`'s or 1, same rank) into `a` (row-major,
/// shape `shape`). Threads: the rayon pool the caller runs in.
pub fn add_broadcast_in_place(
    a: &mut [f32],
    shape: &[usize],
    b: &[f32],
    b_shape: &[usize],
) -> Result<()> {
    if shape.len() != b_shape.len() || shape.iter().zip(b_shape).any(|(&d, &e)| e != d && e != 1) {
        return Err(Error::Shape(format!(
            "broadcast add: {b_shape:?} does not broadcast to {shape:?}"
        )));
    }
    let total = shape
        .iter()
        .try_fold(1usize, |p, &d| p.checked_mul(d))
        .ok_or_else(|| Error::Shape(format!("broadcast add: {shape:?} overflows")))?;
    super::check_len("broadcast add", "a", a.len(), total)?;
    super::check_len("broadcast add", "b", b.len(), b_shape.iter().product())?;
    if total == 0 {
        return Ok(());
    }
    // The trailing run: the axes from the end on which b is either all equal to a or all
    // broadcast (size-1 axes of a count for both).
    let r = shape.len();
    let mut split = r;
    let mut equal = None;
    while split > 0 {
        let (d, e) = (shape[split - 1], b_shape[split - 1]);
        let kind = if d == 1 { None } else { Some(e == d) };
        match (equal, kind) {
            (_, None) => {}
            (None, Some(k)) => equal = Some(k),
            (Some(q), Some(k)) if q == k => {}
            _ => break,
        }
        split -= 1;
    }
    let run: usize = shape[split..].iter().product();
    let equal = equal.unwrap_or(true);
    // b's element strides on the leading axes (0 where broadcast).
    let mut b_strides = [0usize; 8];
    if split > b_strides.len() {
        return Err(Error::Shape(format!(
            "broadcast add: rank {r} with {split} leading axes (at most 8)"
        )));
    }
    let mut s = if equal { run } else { 1 };
    for i in (0..split).rev() {
        b_strides[i] = if b_shape[i] == 1 { 0 } else { s };
        s *= b_shape[i];
    }
    let lead = &shape[..split];
    let strides = &b_strides[..split];
    let per_task = (MIN_PARALLEL / run).max(1);
    let blocks = total / run;
    let body = |(t, chunk): (usize, &mut [f32])| {
        let first = t * per_task;
        // Multi-index of block `first` and b's offset there.
        let mut idx = [0usize; 8];
        let mut rem = first;
        for i in (0..split).rev() {
            idx[i] = rem % lead[i];
            rem /= lead[i];
        }
        let mut off: usize = (0..split).map(|i| idx[i] * strides[i]).sum();
        for block in chunk.chunks_exact_mut(run) {
            if equal {
                for (x, &y) in block.iter_mut().zip(&b[off..off + run]) {
                    *x += y;
                }
            } else {
                let y = b[off];
                for x in block.iter_mut() {
                    *x += y;
                }
            }
            // Next multi-index (odometer), keeping b's offset.
            for i in (0..split).rev() {
                idx[i] += 1;
                off += strides[i];
                if idx[i] < lead[i] {
                    break;
                }
                off -= strides[i] * lead[i];
                idx[i] = 0;
            }
        }
    };
    if total <= MIN_PARALLEL || blocks == 1 || rayon::current_num_threads() < 2 {
        a.chunks_mut(per_task * run).enumerate().for_each(body);
    } else {
        a.par_chunks_mut(per_task * run).enumerate().for_each(body);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition: every element of `a` plus `b` at the broadcast index.
    fn reference(a: &[f32], shape: &[usize], b: &[f32], b_shape: &[usize]) -> Vec<f32> {
        let mut out = a.to_vec();
        for (i, v) in out.iter_mut().enumerate() {
            let (mut rem, mut off, mut stride) = (i, 0, 1);
            for ax in (0..shape.len()).rev() {
                let ix = rem % shape[ax];
                rem /= shape[ax];
                if b_shape[ax] != 1 {
                    off += ix * stride;
                }
                stride *= b_shape[ax];
            }
            *v += b[off];
        }
        out
    }

    #[test]
    fn matches_the_definition_on_every_broadcast_pattern() {
        let cases: &[(&[usize], &[usize])] = &[
            // Swin: relative position bias over the windows, then the shift mask over the heads.
            (&[30, 3, 49, 49], &[1, 3, 49, 49]),
            (&[2, 15, 3, 49, 49], &[1, 15, 1, 49, 49]),
            // Per-row and per-column, scalar, equal shapes, size-1 axes of a, rank 1.
            (&[7, 300], &[7, 1]),
            (&[7, 300], &[1, 300]),
            (&[4, 5, 6], &[1, 1, 1]),
            (&[4, 5, 6], &[4, 5, 6]),
            (&[3, 1, 5, 1, 2], &[1, 1, 5, 1, 1]),
            (&[1, 9], &[1, 9]),
            (&[100_000], &[1]),
            (&[2, 70_000], &[2, 1]),
            (&[0, 4], &[1, 4]),
        ];
        for &(shape, b_shape) in cases {
            let n: usize = shape.iter().product();
            let a: Vec<f32> = (0..n).map(|i| (i % 113) as f32 * 0.5 - 20.0).collect();
            let bn: usize = b_shape.iter().product();
            let b: Vec<f32> = (0..bn).map(|i| (i % 71) as f32 * 0.25 - 3.0).collect();
            let want = reference(&a, shape, &b, b_shape);
            let mut got = a.clone();
            add_broadcast_in_place(&mut got, shape, &b, b_shape).unwrap();
            assert!(
                got.iter()
                    .zip(&want)
                    .all(|(x, y)| x.to_bits() == y.to_bits()),
                "{shape:?} + {b_shape:?}"
            );
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let mut a = vec![0.0f32; 12];
        assert!(add_broadcast_in_place(&mut a, &[3, 4], &[0.0; 2], &[1, 2]).is_err());
        assert!(add_broadcast_in_place(&mut a, &[3, 4], &[0.0; 4], &[4]).is_err());
        assert!(add_broadcast_in_place(&mut a, &[3, 4], &[0.0; 3], &[1, 4]).is_err());
        assert!(add_broadcast_in_place(&mut a[..11], &[3, 4], &[0.0; 4], &[1, 4]).is_err());
        // Ten axes alternating broadcast and not: nine leading axes, more than the walk keeps.
        let shape = [2usize; 10];
        let b_shape = [1usize, 2, 1, 2, 1, 2, 1, 2, 1, 2];
        let mut a = vec![0.0f32; 1024];
        assert!(add_broadcast_in_place(&mut a, &shape, &[0.0; 32], &b_shape).is_err());
    }
}
