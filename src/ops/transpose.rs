//! Batched 2-D transpose, `y[b, j, i] = x[b, i, j]`, of single values or of contiguous blocks:
//! what the CPU backend runs for a tract `MoveAxis` (every move of one axis is a transpose of two
//! groups of axes, with the axes after both as the block). tract copies element by element through
//! a generic strided walk: in an order that misses the cache on one side where the last axis moves
//! (a `[C, H·W] → [H·W, C]` feature transpose), and at ≈ 5 ns an element elsewhere (Swin's
//! `[windows, 49, 3, heads, 32]` head splits; benches/README.md, "Transposes").
//!
//! Single values: tiles of [`TILE`] × [`TILE`] keep both the rows read and the rows written in L1;
//! tiles are spread over the pool by bands of output rows. Blocks: one contiguous copy per block.
//! Bits are copied, never computed.

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

/// `y` (`batch × cols × rows × block`) = each `rows × cols` matrix of `block`-element blocks of
/// `x` (`batch × rows × cols × block`), transposed: `y[b, j, i, ..] = x[b, i, j, ..]`. With
/// `block` = 1 this is [`transpose`]. Threads: the rayon pool the caller runs in.
pub fn transpose_blocks(
    x: &[f32],
    batch: usize,
    rows: usize,
    cols: usize,
    block: usize,
    y: &mut [f32],
) -> Result<()> {
    if block == 1 {
        return transpose(x, batch, rows, cols, y);
    }
    let len = batch
        .checked_mul(rows)
        .and_then(|p| p.checked_mul(cols))
        .and_then(|p| p.checked_mul(block))
        .ok_or_else(|| {
            Error::Shape(format!(
                "transpose: {batch} x {rows} x {cols} x {block} overflows"
            ))
        })?;
    check_len("transpose", "input", x.len(), len)?;
    check_len("transpose", "output", y.len(), len)?;
    if len == 0 {
        return Ok(());
    }
    // One output row (all `rows` blocks of one `(b, j)`): contiguous writes, `rows` reads of one
    // block each, `cols · block` apart.
    let row = |(t, out): (usize, &mut [f32])| {
        let (b, j) = (t / cols, t % cols);
        let src = &x[b * rows * cols * block + j * block..];
        for (i, dst) in out.chunks_exact_mut(block).enumerate() {
            dst.copy_from_slice(&src[i * cols * block..][..block]);
        }
    };
    if len < MIN_PARALLEL || rayon::current_num_threads() < 2 {
        y.chunks_mut(rows * block).enumerate().for_each(row);
    } else {
        // At least MIN_PARALLEL / 4 elements per task.
        let per = (MIN_PARALLEL / 4).div_ceil(rows * block).max(1);
        y.par_chunks_mut(rows * block)
            .with_min_len(per)
            .enumerate()
            .for_each(row);
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
    fn transposes_blocks_of_every_matrix() {
        // Swin's head split (49 tokens × 3 q/k/v, blocks of 32), one row / one column, a batch
        // large enough for the threaded path, block 1 (the tiled path), empty.
        for &(b, r, c, k) in &[
            (299, 49, 3, 32),
            (2, 3, 49, 32),
            (1, 1, 7, 5),
            (4, 7, 1, 3),
            (3, 33, 65, 1),
            (64, 40, 30, 2),
            (0, 3, 3, 4),
        ] {
            let x = values(b * r * c * k, 12);
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(3)
                .build()
                .unwrap();
            let mut y = vec![f32::NAN; x.len()];
            pool.install(|| transpose_blocks(&x, b, r, c, k, &mut y))
                .unwrap();
            let mut one = vec![f32::NAN; x.len()];
            transpose_blocks(&x, b, r, c, k, &mut one).unwrap();
            for bi in 0..b {
                for i in 0..r {
                    for j in 0..c {
                        for e in 0..k {
                            let want = x[((bi * r + i) * c + j) * k + e].to_bits();
                            let at = ((bi * c + j) * r + i) * k + e;
                            assert_eq!(y[at].to_bits(), want, "{b}x{r}x{c}x{k} ({bi},{i},{j},{e})");
                            assert_eq!(one[at].to_bits(), want, "one thread");
                        }
                    }
                }
            }
        }
        let mut y = vec![0.0; 12];
        assert!(transpose_blocks(&[0.0; 11], 1, 2, 3, 2, &mut y).is_err());
        assert!(transpose_blocks(&[0.0; 12], 1, 2, 3, 2, &mut y[..11]).is_err());
        assert!(transpose_blocks(&[], usize::MAX, 2, 3, 2, &mut []).is_err());
    }

    #[test]
    fn wrong_lengths_are_errors() {
        let mut y = vec![0.0; 6];
        assert!(transpose(&[0.0; 5], 1, 2, 3, &mut y).is_err());
        assert!(transpose(&[0.0; 6], 1, 2, 3, &mut y[..5]).is_err());
        assert!(transpose(&[], usize::MAX, 2, 3, &mut []).is_err());
    }
}
