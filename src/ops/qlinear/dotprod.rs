//! The integer products on aarch64 NEON with the Armv8.2 dot product ([`super::QKernel::Dotprod`]):
//! the CPU of Jetson Orin (Cortex-A78AE) and other Armv8.2+ cores.
//!
//! `sdot v.4s, w.16b, x.4b[l]` adds to each of 4 column sums the products of 4 neighbouring `k`
//! of one row of `x` (lane `l` of a 16-byte load: 4 groups) and the same 4 `k` of the column: the
//! packed layout's groups (module docs of [`super`]) are exactly its `w` operand, 4 columns per
//! 16 bytes. The instruction is signed × signed, so the rows are read as `x_q − 128` (the byte
//! with its top bit flipped): the sum is the exact `Σₖ (x_q − 128) · W_q` without the zero-point
//! correction the unsigned × signed x86 kernels need. A tile is 4 rows × 16 columns (one panel of
//! a pair) in 16 accumulators, plus 4 weight and 4 input registers. Stable Rust has no dot-product
//! intrinsics yet, hence one instruction of inline assembly per `sdot`.

use super::{padded_groups, panel_index, Dst, Operands, GROUP, PAIR};
use std::arch::aarch64::*;

/// Rows of the tallest tile.
const ROWS: usize = 4;
/// Columns of a tile: one 16-column panel of a pair.
const COLS: usize = 16;
/// `k` of one 16-byte load of a row (four groups, one per `sdot` lane).
const KSTEP: usize = 16;

/// `acc += dot(w's 4 columns, lane L of x)` in each 32-bit lane.
macro_rules! sdot {
    ($acc:expr, $w:expr, $x:expr, $lane:tt) => {
        // SAFETY: a register-only instruction of the dot-product extension, which the enclosing
        // function enables (`target_feature`); it reads and writes nothing but its operands.
        unsafe {
            std::arch::asm!(
                concat!("sdot {acc:v}.4s, {w:v}.16b, {x:v}.4b[", stringify!($lane), "]"),
                acc = inout(vreg) $acc,
                w = in(vreg) $w,
                x = in(vreg) $x,
                options(pure, nomem, nostack, preserves_flags)
            )
        }
    };
}

/// One task: rows × columns of `y` (`cols.start` a multiple of 32), in tiles of up to 4 × 16.
///
/// # Safety
/// As [`super::block`], with the dot product present on this CPU.
#[target_feature(enable = "neon,dotprod")]
pub(super) unsafe fn block(
    a: &Operands<'_>,
    out: Dst,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
) {
    super::for_each_tile(rows, cols, ROWS, COLS, |r, h, c, width| {
        // SAFETY: rows r..r + h and columns c..c + width lie in the task's block (the caller's
        // contract); c is a multiple of 16 below n, so its panel exists.
        unsafe {
            match h {
                4 => tile::<4>(a, out, r, c, width),
                3 => tile::<3>(a, out, r, c, width),
                2 => tile::<2>(a, out, r, c, width),
                _ => tile::<1>(a, out, r, c, width),
            }
        }
    });
}

/// The 16 columns × 4 `k` of one group of a panel (64 bytes at `p`).
///
/// # Safety
/// `p` addresses 64 readable bytes.
#[inline(always)]
unsafe fn group(p: *const i8) -> [int8x16_t; 4] {
    // SAFETY: the caller's contract (NEON is part of the aarch64 base instruction set).
    unsafe {
        [
            vld1q_s8(p),
            vld1q_s8(p.add(16)),
            vld1q_s8(p.add(32)),
            vld1q_s8(p.add(48)),
        ]
    }
}

/// Rows `r0..r0 + R` × columns `c0..c0 + width` of `y` (`c0` a multiple of 16, `width` ≤ 16).
///
/// # Safety
/// As [`block`]; the rows and columns lie in the task's block.
#[target_feature(enable = "neon,dotprod")]
#[inline]
unsafe fn tile<const R: usize>(a: &Operands<'_>, out: Dst, r0: usize, c0: usize, width: usize) {
    let k = a.w.k;
    let groups = padded_groups(k);
    // Group g of this panel: 64 bytes at g · 128 (the pair's group stride), 4 columns per 16.
    let panel = a.w.panels[panel_index(groups, 0, c0)..].as_ptr();
    let x = a.xq[r0 * k..].as_ptr();
    let flip = vdupq_n_u8(0x80);
    let mut acc = [[vdupq_n_s32(0); 4]; R];
    // Four groups (16 k) per step: rows loaded once, their 4-byte lanes against 4 weight loads each.
    let steps = k.div_ceil(KSTEP);
    let full = k / KSTEP;
    let mut tail = [[0x80u8; KSTEP]; R];
    for s in 0..steps {
        let mut xv = [vdupq_n_s8(0); R];
        for (i, xv) in xv.iter_mut().enumerate() {
            let bytes = if s < full {
                // SAFETY: bytes s·16..s·16 + 16 of row r0 + i lie in its k bytes of `xq`.
                unsafe { vld1q_u8(x.add(i * k + s * KSTEP)) }
            } else {
                // The last k % 16 bytes, padded with 0x80 (0 once flipped; the padded weights are 0).
                let rest = k - s * KSTEP;
                // SAFETY: as above, only the row's remaining `rest` bytes are read.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        x.add(i * k + s * KSTEP),
                        tail[i].as_mut_ptr(),
                        rest,
                    );
                    vld1q_u8(tail[i].as_ptr())
                }
            };
            *xv = vreinterpretq_s8_u8(veorq_u8(bytes, flip));
        }
        // Group 4s + l against lane l of every row.
        macro_rules! lane {
            ($l:literal) => {
                // SAFETY: groups 4s..4s + 4 < padded_groups(k) (k padded to a multiple of 64 = 16
                // groups), 64 bytes each inside this panel of `panels`.
                let w = unsafe { group(panel.add((s * 4 + $l) * PAIR * GROUP)) };
                for (acc, xv) in acc.iter_mut().zip(&xv) {
                    for (acc, w) in acc.iter_mut().zip(&w) {
                        sdot!(*acc, *w, *xv, $l);
                    }
                }
            };
        }
        lane!(0);
        lane!(1);
        lane!(2);
        lane!(3);
    }
    // Epilogue, the portable path's operations lane by lane: sum → f32, × (s_x · s_w[c]), + bias.
    let mut bias = [0.0f32; COLS];
    if let Some(b) = a.bias {
        bias[..width].copy_from_slice(&b[c0..c0 + width]);
    }
    let sx = vdupq_n_f32(a.x_scale);
    for (i, acc) in acc.iter().enumerate() {
        let mut row = [0.0f32; COLS];
        for (j, acc) in acc.iter().enumerate() {
            // SAFETY: `scales` is padded to whole pairs, so columns c0 + 4j..c0 + 4j + 4 exist.
            let scale = vmulq_f32(sx, unsafe {
                vld1q_f32(a.w.scales.as_ptr().add(c0 + 4 * j))
            });
            let mut v = vmulq_f32(vcvtq_f32_s32(*acc), scale);
            if a.bias.is_some() {
                // SAFETY: 4j + 4 ≤ 16 floats of `bias`.
                v = vaddq_f32(v, unsafe { vld1q_f32(bias.as_ptr().add(4 * j)) });
            }
            // SAFETY: 4j + 4 ≤ 16 floats of `row`.
            unsafe { vst1q_f32(row.as_mut_ptr().add(4 * j), v) };
        }
        // SAFETY: row r0 + i, columns c0..c0 + width of `y` are this task's (the caller's contract).
        unsafe {
            std::ptr::copy_nonoverlapping(row.as_ptr(), out.at(r0 + i, c0), width);
        }
    }
}
