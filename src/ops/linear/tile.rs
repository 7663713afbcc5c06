//! The micro-kernels: one output tile of up to `R` rows × 16 columns per panel, over one block of
//! `k` (portable, AVX2 + FMA, AVX-512F), and the tile's epilogue.

#[cfg(target_arch = "x86_64")]
use super::MR_AVX512;
use super::{MR, NR};

/// One output tile's operands.
pub(super) struct TileArgs<'a> {
    /// Row 0 of the tile's `x` rows at the block's first `k` (row `i` at `i · ldx`).
    pub(super) x: &'a [f32],
    pub(super) ldx: usize,
    /// Length of this block of `k`.
    pub(super) kc: usize,
    /// The panel's rows of this block (`kc × 16`).
    pub(super) panel: &'a [f32],
    /// The next panel's rows of this block where the tile covers two panels (`width` > 16, only
    /// for kernels with [`Tile::PANELS`] = 2), else empty. Only the x86-64 AVX-512 kernel reads it.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(super) next: &'a [f32],
    /// Element (0, 0) of the tile in `y` (row `i` at `i · ldy`).
    pub(super) y: *mut f32,
    pub(super) ldy: usize,
    /// Valid columns (≤ 16 per panel; the panel's padding columns are computed and dropped).
    pub(super) width: usize,
    /// First block of `k`: the tile starts from 0 instead of `y`'s partial sum.
    pub(super) first: bool,
    /// Last block of `k`: the bias and ReLU are applied.
    pub(super) last: bool,
    pub(super) bias: Option<&'a [f32]>,
    /// The tile's rows' entries of the per-row bias.
    pub(super) row_bias: Option<&'a [f32]>,
    pub(super) relu: bool,
}

/// A micro-kernel for tiles of `R` rows × 16 columns per panel.
pub(super) trait Tile {
    /// Rows of the tallest tile.
    const ROWS: usize = MR;
    /// Panels one tile covers.
    const PANELS: usize = 1;

    /// # Safety
    /// `a.y` addresses `R` rows of `a.width` writable elements, owned by the calling task; `a.x`
    /// holds `(R − 1) · ldx + kc` elements; the instruction set of the implementation is present.
    unsafe fn tile<const R: usize>(a: &TileArgs<'_>);

    /// [`Tile::tile`] for `h` ≤ [`Tile::ROWS`] rows.
    ///
    /// # Safety
    /// As [`Tile::tile`] with `R` = `h`.
    #[inline(always)]
    unsafe fn rows(h: usize, a: &TileArgs<'_>) {
        // SAFETY: the caller's contract.
        unsafe {
            match h {
                6 => Self::tile::<6>(a),
                5 => Self::tile::<5>(a),
                4 => Self::tile::<4>(a),
                3 => Self::tile::<3>(a),
                2 => Self::tile::<2>(a),
                _ => Self::tile::<1>(a),
            }
        }
    }
}

/// Plain Rust (any target): separate multiply and add.
pub(super) struct Portable;

impl Tile for Portable {
    #[inline(always)]
    unsafe fn tile<const R: usize>(a: &TileArgs<'_>) {
        let mut acc = [[0.0f32; NR]; R];
        for kk in 0..a.kc {
            let b = &a.panel[kk * NR..kk * NR + NR];
            for (i, row) in acc.iter_mut().enumerate() {
                let v = a.x[i * a.ldx + kk];
                for j in 0..NR {
                    row[j] += v * b[j];
                }
            }
        }
        for (i, row) in acc.iter_mut().enumerate() {
            // SAFETY: row i of the tile is inside `y` and owned by this task (the trait's contract).
            let dst = unsafe { std::slice::from_raw_parts_mut(a.y.add(i * a.ldy), a.width) };
            finish(row, dst, a, i);
        }
    }
}

/// The end of the tile's row `i`: add the previous blocks' sum, then the biases and ReLU on the
/// last block; store.
#[inline(always)]
fn finish(row: &mut [f32; NR], dst: &mut [f32], a: &TileArgs<'_>, i: usize) {
    for j in 0..a.width {
        let mut v = row[j];
        if !a.first {
            v += dst[j];
        }
        if a.last {
            if let Some(b) = a.bias {
                v += b[j];
            }
            if let Some(b) = a.row_bias {
                v += b[i];
            }
            if a.relu {
                v = relu(v);
            }
        }
        dst[j] = v;
    }
}

/// `max(v, 0)` with NaN kept (as ONNX `Relu`; `f32::max` would drop it).
#[inline(always)]
fn relu(v: f32) -> f32 {
    if v < 0.0 {
        0.0
    } else {
        v
    }
}

/// AVX2 + FMA: 2 × `R` accumulators of 8 lanes.
#[cfg(target_arch = "x86_64")]
pub(super) struct Avx2;

#[cfg(target_arch = "x86_64")]
impl Tile for Avx2 {
    #[inline(always)]
    unsafe fn tile<const R: usize>(a: &TileArgs<'_>) {
        // SAFETY: the trait's contract, which includes AVX2 and FMA being present.
        unsafe { tile_avx2::<R>(a) }
    }
}

/// [`Avx2`]'s tile, compiled with the features its intrinsics need (so that they inline).
///
/// # Safety
/// As [`Tile::tile`], on a CPU with AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn tile_avx2<const R: usize>(a: &TileArgs<'_>) {
    use std::arch::x86_64::*;
    // SAFETY: (whole body) the loads read `panel[kk·16 .. kk·16 + 16]` (kk < kc, panel holds
    // kc·16) and `x[i·ldx + kk]` (i < R, kk < kc: inside the length the contract states); the
    // stores write R rows of `width` columns of `y`, all the contract gives this tile; AVX2 and
    // FMA are present (the contract).
    unsafe {
        let mut lo = [_mm256_setzero_ps(); R];
        let mut hi = [_mm256_setzero_ps(); R];
        let xp = a.x.as_ptr();
        let bp = a.panel.as_ptr();
        for kk in 0..a.kc {
            let b0 = _mm256_loadu_ps(bp.add(kk * NR));
            let b1 = _mm256_loadu_ps(bp.add(kk * NR + 8));
            for i in 0..R {
                let v = _mm256_broadcast_ss(&*xp.add(i * a.ldx + kk));
                lo[i] = _mm256_fmadd_ps(v, b0, lo[i]);
                hi[i] = _mm256_fmadd_ps(v, b1, hi[i]);
            }
        }
        if a.width == NR {
            let zero = _mm256_setzero_ps();
            let (b0, b1) = match a.bias {
                Some(b) if a.last => (
                    _mm256_loadu_ps(b.as_ptr()),
                    _mm256_loadu_ps(b.as_ptr().add(8)),
                ),
                _ => (zero, zero),
            };
            let add_bias = a.last && a.bias.is_some();
            for i in 0..R {
                let y = a.y.add(i * a.ldy);
                let (mut l, mut h) = (lo[i], hi[i]);
                if !a.first {
                    l = _mm256_add_ps(l, _mm256_loadu_ps(y));
                    h = _mm256_add_ps(h, _mm256_loadu_ps(y.add(8)));
                }
                if add_bias {
                    l = _mm256_add_ps(l, b0);
                    h = _mm256_add_ps(h, b1);
                }
                if let (true, Some(rb)) = (a.last, a.row_bias) {
                    let v = _mm256_set1_ps(rb[i]);
                    l = _mm256_add_ps(l, v);
                    h = _mm256_add_ps(h, v);
                }
                if a.last && a.relu {
                    // maxps returns its second operand when either is NaN: NaN is kept.
                    l = _mm256_max_ps(zero, l);
                    h = _mm256_max_ps(zero, h);
                }
                _mm256_storeu_ps(y, l);
                _mm256_storeu_ps(y.add(8), h);
            }
        } else {
            let mut row = [0.0f32; NR];
            for i in 0..R {
                _mm256_storeu_ps(row.as_mut_ptr(), lo[i]);
                _mm256_storeu_ps(row.as_mut_ptr().add(8), hi[i]);
                let dst = std::slice::from_raw_parts_mut(a.y.add(i * a.ldy), a.width);
                finish(&mut row, dst, a, i);
            }
        }
    }
}

/// AVX-512F: `R` × 2 accumulators of 16 lanes over two neighbouring panels (one where the tile's
/// columns end inside its first panel); the edges are masked loads and stores.
#[cfg(target_arch = "x86_64")]
pub(super) struct Avx512;

#[cfg(target_arch = "x86_64")]
impl Tile for Avx512 {
    const ROWS: usize = MR_AVX512;
    const PANELS: usize = 2;

    #[inline(always)]
    unsafe fn tile<const R: usize>(a: &TileArgs<'_>) {
        // SAFETY: the trait's contract, which includes AVX-512F being present.
        unsafe {
            if a.next.is_empty() {
                tile_avx512::<R, 1>(a)
            } else {
                tile_avx512::<R, 2>(a)
            }
        }
    }

    #[inline(always)]
    unsafe fn rows(h: usize, a: &TileArgs<'_>) {
        // SAFETY: the caller's contract.
        unsafe {
            match h {
                12 => Self::tile::<12>(a),
                11 => Self::tile::<11>(a),
                10 => Self::tile::<10>(a),
                9 => Self::tile::<9>(a),
                8 => Self::tile::<8>(a),
                7 => Self::tile::<7>(a),
                6 => Self::tile::<6>(a),
                5 => Self::tile::<5>(a),
                4 => Self::tile::<4>(a),
                3 => Self::tile::<3>(a),
                2 => Self::tile::<2>(a),
                _ => Self::tile::<1>(a),
            }
        }
    }
}

/// [`Avx512`]'s tile over `P` panels, compiled with the features its intrinsics need.
///
/// # Safety
/// As [`Tile::tile`], on a CPU with AVX-512F; `P` = 2 only where `a.next` holds the second panel's
/// block (`a.width` > 16).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn tile_avx512<const R: usize, const P: usize>(a: &TileArgs<'_>) {
    use std::arch::x86_64::*;
    // SAFETY: (whole body) the loads read `panel[kk·16 .. kk·16 + 16]` and, for P = 2, the same of
    // `next` (kk < kc; each holds kc·16) and `x[i·ldx + kk]` (i < R, kk < kc: inside the length the
    // contract states); the masked loads and stores touch only the first `width` columns of R rows
    // of `y` (and of the bias, which holds `width`), all the contract gives this tile (masked-off
    // lanes are not accessed); AVX-512F is present (the contract).
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); P]; R];
        let xp = a.x.as_ptr();
        let bp = [a.panel.as_ptr(), a.next.as_ptr()];
        for kk in 0..a.kc {
            let mut b = [_mm512_setzero_ps(); P];
            for (p, b) in b.iter_mut().enumerate() {
                *b = _mm512_loadu_ps(bp[p].add(kk * NR));
            }
            for (i, acc) in acc.iter_mut().enumerate() {
                let v = _mm512_set1_ps(*xp.add(i * a.ldx + kk));
                for (acc, b) in acc.iter_mut().zip(&b) {
                    *acc = _mm512_fmadd_ps(v, *b, *acc);
                }
            }
        }
        // Out of the registers once: the edge loop below indexes by a run-time panel and row, which
        // would otherwise keep the accumulators in memory, written back on every `k`.
        let mut sums = [[[0.0f32; NR]; P]; R];
        for (sum, acc) in sums.iter_mut().zip(&acc) {
            for (s, a) in sum.iter_mut().zip(acc) {
                _mm512_storeu_ps(s.as_mut_ptr(), *a);
            }
        }
        // The same operations in the same order as the AVX2 tile and `finish`, lane by lane.
        let zero = _mm512_setzero_ps();
        for p in 0..P {
            let cols = (a.width - p * NR).min(NR);
            let mask: __mmask16 = if cols == NR {
                0xffff
            } else {
                (1u16 << cols) - 1
            };
            let bias = match a.bias {
                Some(b) if a.last => Some(_mm512_maskz_loadu_ps(mask, b.as_ptr().add(p * NR))),
                _ => None,
            };
            for (i, sum) in sums.iter().enumerate() {
                let y = a.y.add(i * a.ldy + p * NR);
                let mut v = _mm512_loadu_ps(sum[p].as_ptr());
                if !a.first {
                    v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, y));
                }
                if let Some(b) = bias {
                    v = _mm512_add_ps(v, b);
                }
                if let (true, Some(rb)) = (a.last, a.row_bias) {
                    v = _mm512_add_ps(v, _mm512_set1_ps(rb[i]));
                }
                if a.last && a.relu {
                    // maxps returns its second operand when either is NaN: NaN is kept.
                    v = _mm512_max_ps(zero, v);
                }
                _mm512_mask_storeu_ps(y, mask, v);
            }
        }
    }
}
