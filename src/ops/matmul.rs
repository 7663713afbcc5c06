//! Batched matrix product of two activations, `y[…, m, n] = a[…, m, k] · b[…, k, n]` with numpy
//! broadcasting of the leading axes: what the CPU backend runs for an ONNX `MatMul` whose operands
//! are both computed (attention scores and their product with the values) on x86-64 with AVX2 + FMA.
//!
//! Each distinct `b` matrix is packed once into [`mod@super::linear`]'s panel layout (the caller's
//! scratch), then every batch item is one [`super::linear::linear_strided`] call reading its `a`
//! in place; batch items are spread over the pool, and a large item spreads its own tiles. Tract packs
//! both operands of every item instead (benches/README.md, "Linear layers, convolutions and broadcast
//! Add"). Numerics are [`mod@super::linear`]'s.

use super::linear::{linear_strided, pack_strided_into, Epilogue, Panels, Strides, NR};

/// Panels of `b` packed per task (a task's share of `[256, n]`: 256 rows of 1 KiB).
const PACK_GROUP: usize = 16;
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

    /// `a` stored contiguously (row-major in its own shape).
    pub fn a_layout(&self) -> Layout {
        Layout::contiguous(&self.a_batch, self.m, self.k)
    }

    /// `b` stored contiguously (row-major in its own shape).
    pub fn b_layout(&self) -> Layout {
        Layout::contiguous(&self.b_batch, self.k, self.n)
    }

    /// That operands of `a_len` and `b_len` elements read through layouts `la` and `lb`, and an
    /// output of `y_len`, fit these shapes (`op` names the caller in the errors).
    pub(crate) fn check_operands(
        &self,
        op: &str,
        la: &Layout,
        a_len: usize,
        lb: &Layout,
        b_len: usize,
        y_len: usize,
    ) -> Result<()> {
        let (m, k, n) = (self.m, self.k, self.n);
        let rank = self.batch.len();
        if la.batch.len() != rank || lb.batch.len() != rank {
            return Err(Error::Shape(format!(
                "{op}: layouts of {} and {} leading axes for {rank}",
                la.batch.len(),
                lb.batch.len()
            )));
        }
        for (name, layout, lead, rows, cols, have) in [
            ("a", la, &self.a_batch, m, k, a_len),
            ("b", lb, &self.b_batch, k, n, b_len),
        ] {
            let need = layout
                .span(lead, rows, cols)
                .ok_or_else(|| Error::Shape(format!("{op}: {name} {layout:?} overflows")))?;
            if have < need {
                return Err(Error::shape_mismatch(
                    format!("{op}: operand (elements, at least)"),
                    need,
                    have,
                ));
            }
        }
        super::check_len(op, "output", y_len, self.items() * m * n)
    }

    /// Distinct `a` matrices (`a`'s own batch items).
    pub(crate) fn a_items(&self) -> usize {
        self.a_batch.iter().product()
    }

    /// Distinct `b` matrices.
    pub(crate) fn b_items(&self) -> usize {
        self.b_batch.iter().product()
    }

    /// `a`'s leading axes, right-aligned to [`MatMulShapes::batch`] (1 where absent).
    pub(crate) fn a_batch(&self) -> &[usize] {
        &self.a_batch
    }

    /// `b`'s leading axes, right-aligned to [`MatMulShapes::batch`].
    pub(crate) fn b_batch(&self) -> &[usize] {
        &self.b_batch
    }

    /// Offsets (in matrices) of `a` and `b` for output item `t`.
    pub(crate) fn operands(&self, t: usize) -> (usize, usize) {
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

/// Where an operand's elements lie in its slice: element `(batch index…, i, j)` at
/// `Σ index · batch stride + i · row + j · col`. A transposed or otherwise permuted view of a
/// row-major tensor has such a layout, so the product reads it without a copy first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Step of each of the operand's leading axes, right-aligned to [`MatMulShapes::batch`] (axes
    /// the operand lacks or broadcasts are never stepped).
    pub batch: Vec<usize>,
    /// Step between rows.
    pub row: usize,
    /// Step between columns.
    pub col: usize,
}

impl Layout {
    fn contiguous(lead: &[usize], rows: usize, cols: usize) -> Self {
        let mut batch = vec![0; lead.len()];
        let mut step = rows * cols;
        for (b, &d) in batch.iter_mut().zip(lead).rev() {
            *b = step;
            step *= d;
        }
        Layout {
            batch,
            row: cols,
            col: 1,
        }
    }

    /// Elements a slice must hold for an operand of leading axes `lead` and `rows × cols`
    /// matrices with this layout (`None` on overflow).
    pub(crate) fn span(&self, lead: &[usize], rows: usize, cols: usize) -> Option<usize> {
        if rows == 0 || cols == 0 || lead.contains(&0) {
            return Some(0);
        }
        let mut last = (rows - 1)
            .checked_mul(self.row)?
            .checked_add((cols - 1).checked_mul(self.col)?)?;
        for (&d, &st) in lead.iter().zip(&self.batch) {
            last = last.checked_add((d - 1).checked_mul(st)?)?;
        }
        last.checked_add(1)
    }

    /// `v` (contiguous, shape `lead ++ [rows, cols]`) written into a buffer through this layout,
    /// the gaps NaN (the products' tests: a product must never read them).
    #[cfg(test)]
    pub(crate) fn scatter(&self, v: &[f32], lead: &[usize], rows: usize, cols: usize) -> Vec<f32> {
        let mut out = vec![f32::NAN; self.span(lead, rows, cols).unwrap()];
        let items: usize = lead.iter().product();
        for t in 0..items {
            let off = self.offset(lead, t);
            for i in 0..rows {
                for j in 0..cols {
                    out[off + i * self.row + j * self.col] = v[(t * rows + i) * cols + j];
                }
            }
        }
        out
    }

    /// Offset of item `index` (a multi-index over `lead`, row-major).
    pub(crate) fn offset(&self, lead: &[usize], mut index: usize) -> usize {
        let mut off = 0;
        for (&d, &st) in lead.iter().zip(&self.batch).rev() {
            off += (index % d) * st;
            index /= d;
        }
        off
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
    let a_items: usize = s.a_batch.iter().product();
    let b_items: usize = s.b_batch.iter().product();
    super::check_len("matmul", "a", a.len(), a_items * s.m * s.k)?;
    super::check_len("matmul", "b", b.len(), b_items * s.k * s.n)?;
    matmul_strided(a, &s.a_layout(), b, &s.b_layout(), s, scratch, y)
}

/// [`matmul`] with each operand read through its [`Layout`] (a view: no copy is made of it, `b`
/// is packed per call anyway; `a`'s rows are read in place or gathered per block, see
/// [`super::linear::linear_strided`]).
pub fn matmul_strided(
    a: &[f32],
    la: &Layout,
    b: &[f32],
    lb: &Layout,
    s: &MatMulShapes,
    scratch: &mut [f32],
    y: &mut [f32],
) -> Result<()> {
    let (m, k, n) = (s.m, s.k, s.n);
    s.check_operands("matmul", la, a.len(), lb, b.len(), y.len())?;
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
        // Groups of panels per task, so that one large `b` (the head engine's `[256, 14400]`
        // mask features) is packed by every thread, not one.
        let group = PACK_GROUP * NR;
        packed
            .par_chunks_mut(plen)
            .enumerate()
            .for_each(|(bi, dst)| {
                let src = &b[lb.offset(&s.b_batch, bi)..];
                dst.par_chunks_mut(k * group)
                    .enumerate()
                    .for_each(|(g, dst)| {
                        let c0 = g * group;
                        let cols = group.min(n - c0);
                        pack_strided_into(&src[c0 * lb.col..], k, cols, lb.row, lb.col, dst)
                    });
            });
    }
    let packed = &*packed;
    let rows = Strides {
        row: la.row,
        k: la.col,
    };
    y.par_chunks_mut(m * n)
        .enumerate()
        .try_for_each(|(t, out)| {
            let (ai, bi) = s.operands(t);
            let panels = Panels::new(&packed[bi * plen..(bi + 1) * plen], k, n)?;
            let x = &a[la.offset(&s.a_batch, ai)..];
            linear_strided(x, m, rows, panels, Epilogue::default(), out)
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
    fn strided_operands_give_the_bits_of_their_contiguous_copies() {
        // Swin's scores: q read from `[12, 49, 3, 32]` (heads not yet moved in front of the
        // tokens), k transposed in place (`[12, 3, 49, 32]` read as `[12, 3, 32, 49]`); then a
        // broadcast case with a gap between rows and a transposed right operand.
        let a_moved = Layout {
            batch: vec![49 * 3 * 32, 32],
            row: 3 * 32,
            col: 1,
        };
        let b_transposed = Layout {
            batch: vec![3 * 49 * 32, 49 * 32],
            row: 1,
            col: 32,
        };
        let cases: Vec<(&[usize], &[usize], Layout, Layout)> = vec![
            (&[12, 3, 49, 32], &[12, 3, 32, 49], a_moved, b_transposed),
            (
                &[2, 1, 5, 7],
                &[3, 7, 4],
                Layout {
                    batch: vec![5 * 9, 0],
                    row: 9,
                    col: 1,
                },
                Layout {
                    batch: vec![0, 7 * 4],
                    row: 1,
                    col: 7,
                },
            ),
        ];
        for (ash, bsh, la, lb) in cases {
            let s = MatMulShapes::new(ash, bsh).unwrap();
            let a = values(ash.iter().product(), 8);
            let b = values(bsh.iter().product(), 9);
            let mut scratch = vec![f32::NAN; s.scratch_len()];
            let mut want = vec![f32::NAN; s.items() * s.m * s.n];
            matmul(&a, &b, &s, &mut scratch, &mut want).unwrap();
            let sa = la.scatter(&a, &s.a_batch, s.m, s.k);
            let sb = lb.scatter(&b, &s.b_batch, s.k, s.n);
            let mut y = vec![f32::NAN; want.len()];
            matmul_strided(&sa, &la, &sb, &lb, &s, &mut scratch, &mut y).unwrap();
            let diff = y
                .iter()
                .zip(&want)
                .position(|(p, q)| p.to_bits() != q.to_bits());
            assert_eq!(diff, None, "{ash:?}·{bsh:?}");
            // Short operands are errors.
            let short = &sb[..sb.len() - 1];
            assert!(matmul_strided(&sa, &la, short, &lb, &s, &mut scratch, &mut y).is_err());
            let short = &sa[..sa.len() - 1];
            assert!(matmul_strided(short, &la, &sb, &lb, &s, &mut scratch, &mut y).is_err());
        }
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
