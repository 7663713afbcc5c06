//! Batched 2-D transpose, `y[b, j, i] = x[b, i, j]`: what the CPU backend runs for a tract
//! `MoveAxis` that moves an axis to or from the last position (a `[C, H·W] → [H·W, C]` feature
//! transpose, the last two axes of attention heads swapped), where tract copies element by element
//! in an order that misses the cache on one side (benches/README.md, "Transposes").
//!
//! Tiles of [`TILE`] × [`TILE`] keep both the rows read and the rows written in L1; tiles are
//! spread over the pool by bands of output rows. Bits are copied, never computed.

use super::check_len;
use crate::error::{Error, Result};
use rayon::prelude::*;

/// Side of one tile (32 × 32 f32 = 4 KiB read and 4 KiB written).
pub const TILE: usize = 32;

/// Elements below which a call stays on the calling thread.
const MIN_PARALLEL: usize = 1 << 16;

/// `y` (`batch × cols × rows`) = each `rows × cols` matrix of `x` (`batch × rows × cols`),
/// transposed. Threads: the rayon pool the caller runs in.
pub fn transpose(x: &[f32], batch: usize, rows: usize, cols: usize, y: &mut [f32]) -> Result<()> {
    let len = batch
        .checked_mul(rows)
        .and_then(|p| p.checked_mul(cols))
        .ok_or_else(|| Error::Shape(format!("transpose: {batch} x {rows} x {cols} overflows")))?;
    check_len("transpose", "input", x.len(), len)?;
    check_len("transpose", "output", y.len(), len)?;
    if len == 0 {
        return Ok(());
    }
    // One band: TILE output rows (= input columns) of one matrix.
    let bands_per = cols.div_ceil(TILE);
    let band = |(t, out): (usize, &mut [f32])| {
        let (b, c0) = (t / bands_per, (t % bands_per) * TILE);
        let src = &x[b * rows * cols..(b + 1) * rows * cols];
        let h = out.len() / rows; // output rows in this band
        for r0 in (0..rows).step_by(TILE) {
            let r1 = (r0 + TILE).min(rows);
            for c in 0..h {
                let dst = &mut out[c * rows + r0..c * rows + r1];
                for (r, d) in (r0..r1).zip(dst) {
                    *d = src[r * cols + c0 + c];
                }
            }
        }
    };
    // Bands never straddle two matrices: chunk each matrix's output separately.
    let chunks = y
        .chunks_mut(cols * rows)
        .flat_map(|m| m.chunks_mut(TILE * rows));
    if len < MIN_PARALLEL || rayon::current_num_threads() < 2 {
        chunks.enumerate().for_each(band);
    } else {
        chunks.enumerate().par_bridge().for_each(band);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_values as values;

    #[test]
    fn transposes_every_matrix_of_the_batch() {
        // Partial tiles on both sides, one row / one column, a batch, the head engine's shape.
        for &(b, r, c) in &[
            (1, 1, 1),
            (1, 1, 40),
            (1, 40, 1),
            (3, 33, 65),
            (2, 64, 32),
            (1, 256, 14400),
            (0, 5, 5),
        ] {
            let x = values(b * r * c, 11);
            let mut y = vec![f32::NAN; x.len()];
            transpose(&x, b, r, c, &mut y).unwrap();
            for bi in 0..b {
                for i in 0..r {
                    for j in 0..c {
                        let (got, want) = (y[(bi * c + j) * r + i], x[(bi * r + i) * c + j]);
                        assert_eq!(got.to_bits(), want.to_bits(), "{b}x{r}x{c} ({bi},{i},{j})");
                    }
                }
            }
        }
    }

    #[test]
    fn wrong_lengths_are_errors() {
        let mut y = vec![0.0; 6];
        assert!(transpose(&[0.0; 5], 1, 2, 3, &mut y).is_err());
        assert!(transpose(&[0.0; 6], 1, 2, 3, &mut y[..5]).is_err());
        assert!(transpose(&[], usize::MAX, 2, 3, &mut []).is_err());
    }
}
