//! Batched matrix product of two activations, `y[…, m, n] = a[…, m, k] · b[…, k, n]` with numpy
//! broadcasting of the leading axes: what the CPU backend runs for an ONNX `MatMul` whose operands
//! are both computed (attention scores and their product with the values) on x86-64 with AVX2 + FMA.
//!
//! Each distinct `b` matrix is packed once into [`mod@super::linear`]'s panel layout (the caller's
//! scratch), then every batch item is one [`super::linear::linear_panels`] call reading its `a`
//! in place; batch items are spread over the pool, and a large item spreads its own tiles. Tract packs
//! both operands of every item instead (benches/README.md, "Linear layers, convolutions and broadcast
//! Add"). Numerics are [`mod@super::linear`]'s.

use super::linear::{linear_panels, pack_into, Epilogue, Panels};
use crate::error::{Error, Result};
use rayon::prelude::*;

/// The shapes of one batched product (each operand of rank ≥ 2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MatMulShapes {
    /// Broadcast leading axes of the output.
    pub batch: Vec<usize>,
    /// Rows of each `a` matrix / output matrix.
    pub m: usize,
    /// Length of each sum.
    pub k: usize,
    /// Columns of each `b` matrix / output matrix.
    pub n: usize,
    /// `a`'s leading axes, right-aligned to `batch` (1 where absent).
    a_batch: Vec<usize>,
    /// `b`'s leading axes, right-aligned to `batch`.
    b_batch: Vec<usize>,
}

impl MatMulShapes {
    /// The product of `a` (shape `a`) and `b` (shape `b`), or why they do not multiply.
    pub fn new(a: &[usize], b: &[usize]) -> Result<Self> {
        let bad = || Error::Shape(format!("matmul: {a:?} · {b:?} do not multiply"));
        if a.len() < 2 || b.len() < 2 || a[a.len() - 1] != b[b.len() - 2] {
            return Err(bad());
        }
        let rank = a.len().max(b.len()) - 2;
        let pad = |s: &[usize]| {
            let lead = &s[..s.len() - 2];
            let mut v = vec![1usize; rank - lead.len()];
            v.extend_from_slice(lead);
            v
        };
        let (a_batch, b_batch) = (pad(a), pad(b));
        let mut batch = Vec::with_capacity(rank);
        for (&x, &y) in a_batch.iter().zip(&b_batch) {
            batch.push(match (x, y) {
                (x, y) if x == y => x,
                (1, y) => y,
                (x, 1) => x,
                _ => return Err(bad()),
            });
        }
        let s = MatMulShapes {
            batch,
            m: a[a.len() - 2],
            k: a[a.len() - 1],
            n: b[b.len() - 1],
            a_batch,
            b_batch,
        };
        let items = s.batch.iter().try_fold(1usize, |p, &d| p.checked_mul(d));
        let fits = items.is_some_and(|i| {
            [(s.m, s.k), (s.k, s.n), (s.m, s.n)]
                .iter()
                .all(|&(x, y)| x.checked_mul(y).and_then(|p| p.checked_mul(i)).is_some())
                && Panels::len(s.k, s.n)
                    .and_then(|p| p.checked_mul(i))
                    .is_some()
        });
        if !fits {
            return Err(bad());
        }
        Ok(s)
    }

    /// Batch items of the output.
    pub fn items(&self) -> usize {
        self.batch.iter().product()
    }

    /// f32 of scratch [`matmul`] needs: every distinct `b` matrix in the panel layout.
    pub fn scratch_len(&self) -> usize {
        self.b_batch.iter().product::<usize>() * Panels::len(self.k, self.n).unwrap_or(0)
    }

    /// Offsets (in matrices) of `a` and `b` for output item `t`.
    fn operands(&self, t: usize) -> (usize, usize) {
        let (mut rem, mut ai, mut bi, mut sa, mut sb) = (t, 0, 0, 1, 1);
        for ax in (0..self.batch.len()).rev() {
            let i = rem % self.batch[ax];
            rem /= self.batch[ax];
            if self.a_batch[ax] != 1 {
                ai += i * sa;
            }
            if self.b_batch[ax] != 1 {
                bi += i * sb;
            }
            sa *= self.a_batch[ax];
            sb *= self.b_batch[ax];
        }
        (ai, bi)
    }
}

/// `y = a · b` for [`MatMulShapes`] `s`, all row-major; `scratch` at least
/// [`MatMulShapes::scratch_len`] f32. Threads: the rayon pool the caller runs in.
pub fn matmul(
    a: &[f32],
    b: &[f32],
    s: &MatMulShapes,
    scratch: &mut [f32],
    y: &mut [f32],
) -> Result<()> {
    let (m, k, n) = (s.m, s.k, s.n);
    let a_items: usize = s.a_batch.iter().product();
    let b_items: usize = s.b_batch.iter().product();
    super::check_len("matmul", "a", a.len(), a_items * m * k)?;
    super::check_len("matmul", "b", b.len(), b_items * k * n)?;
    super::check_len("matmul", "output", y.len(), s.items() * m * n)?;
    let need = s.scratch_len();
    if scratch.len() < need {
        return Err(Error::shape_mismatch(
            "matmul: scratch (elements)",
            need,
            scratch.len(),
        ));
    }
    if m * n == 0 {
        return Ok(());
    }
    let plen = Panels::len(k, n).unwrap_or(0);
    let packed = &mut scratch[..need];
    if plen > 0 {
        packed
            .par_chunks_mut(plen)
            .zip(b.par_chunks((k * n).max(1)))
            .for_each(|(dst, src)| pack_into(src, k, n, dst));
    }
    let packed = &*packed;
    y.par_chunks_mut(m * n)
        .enumerate()
        .try_for_each(|(t, out)| {
            let (ai, bi) = s.operands(t);
            let panels = Panels::new(&packed[bi * plen..(bi + 1) * plen], k, n)?;
            linear_panels(
                &a[ai * m * k..(ai + 1) * m * k],
                m,
                panels,
                Epilogue::default(),
                out,
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_values as values;

    #[test]
    fn matches_the_definition_with_broadcast_batches() {
        let cases: &[(&[usize], &[usize])] = &[
            // Swin window attention: scores, then scores · values.
            (&[12, 3, 49, 32], &[12, 3, 32, 49]),
            (&[12, 3, 49, 49], &[12, 3, 49, 32]),
            // The fusion's image-to-text product: batch 1, k = 44.
            (&[1, 300, 44], &[1, 44, 37]),
            // Broadcast on either side, ranks differ, plain 2-D, k = 0.
            (&[2, 1, 5, 7], &[3, 7, 4]),
            (&[5, 7], &[2, 3, 7, 20]),
            (&[9, 300], &[300, 17]),
            (&[2, 3, 0], &[2, 0, 5]),
        ];
        for &(ash, bsh) in cases {
            let s = MatMulShapes::new(ash, bsh).unwrap();
            let a = values(ash.iter().product(), 1);
            let b = values(bsh.iter().product(), 2);
            let mut scratch = vec![f32::NAN; s.scratch_len()];
            let mut y = vec![f32::NAN; s.items() * s.m * s.n];
            matmul(&a, &b, &s, &mut scratch, &mut y).unwrap();
            for t in 0..s.items() {
                let (ai, bi) = s.operands(t);
                for i in 0..s.m {
                    for j in 0..s.n {
                        let (mut sum, mut mag) = (0.0f64, 0.0f64);
                        for kk in 0..s.k {
                            let p = a[(ai * s.m + i) * s.k + kk] as f64
                                * b[(bi * s.k + kk) * s.n + j] as f64;
                            sum += p;
                            mag += p.abs();
                        }
                        let got = y[(t * s.m + i) * s.n + j] as f64;
                        let tol = (s.k as f64 + 2.0) * 2f64.powi(-23) * mag + 1e-30;
                        assert!(
                            (got - sum).abs() <= tol,
                            "{ash:?}·{bsh:?} item {t} ({i}, {j}): {got} against {sum}"
                        );
                    }
                }
            }
        }
        // The broadcast index map itself, checked on a case with both sides broadcast.
        let s = MatMulShapes::new(&[2, 1, 5, 7], &[3, 7, 4]).unwrap();
        assert_eq!(s.batch, vec![2, 3]);
        let map: Vec<(usize, usize)> = (0..6).map(|t| s.operands(t)).collect();
        assert_eq!(map, vec![(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]);
    }

    #[test]
    fn bad_shapes_are_errors() {
        assert!(MatMulShapes::new(&[3, 4], &[5, 6]).is_err());
        assert!(MatMulShapes::new(&[4], &[4, 6]).is_err());
        assert!(MatMulShapes::new(&[2, 3, 4], &[3, 4, 6]).is_err());
        assert!(MatMulShapes::new(&[usize::MAX, 2, 3], &[3, 4]).is_err());
        let s = MatMulShapes::new(&[2, 3], &[3, 4]).unwrap();
        let mut scratch = vec![0.0f32; s.scratch_len()];
        let mut y = vec![0.0f32; 8];
        assert!(matmul(&[0.0; 5], &[0.0; 12], &s, &mut scratch, &mut y).is_err());
        assert!(matmul(&[0.0; 6], &[0.0; 11], &s, &mut scratch, &mut y).is_err());
        assert!(matmul(&[0.0; 6], &[0.0; 12], &s, &mut scratch[..3], &mut y).is_err());
        assert!(matmul(&[0.0; 6], &[0.0; 12], &s, &mut scratch, &mut y[..7]).is_err());
    }
}
