//! INT8 batched product of two activations: what the CPU backend runs for an INT8 engine's
//! attention products (`q · kᵀ`, `softmax · v`), whose operands the export quantizes to uint8
//! (zero point [`ZERO_POINT`], one scale each) and dequantizes right before a float `MatMul`.
//!
//! `y[…, m, n] = Σₖ (a_q[…, m, k] − 128) · (b_q[…, k, n] − 128) · (s_a · s_b)`, `a_q` and `b_q`
//! ONNX `QuantizeLinear` of the f32 operands (`round_half_to_even(v / s) + 128`, saturated; NaN →
//! 0, as [`super::qlinear::fake_quantize_u8`]), the sum exact in 32-bit integers: what ONNX
//! Runtime computes for the same Q/DQ graph (its integer product, then one multiplication by the
//! product of the scales). The float evaluation (dequantized operands, f32 sums) differs from it
//! by the f32 rounding of the sum.
//!
//! Each `b` matrix is quantized and packed into the integer kernels' panel layout
//! ([`mod@super::qlinear`], `b_q − 128` as the int8 "weight", its column sums for the zero point)
//! and each `a` matrix quantized into contiguous rows; then the product runs on
//! [`super::qlinear`]'s kernels ([`QKernel::process`]: AMX, AVX-512 VNNI, Arm dot product). The
//! operands are read through [`Layout`]s, so a transposed view (`kᵀ`) costs no copy. Threads: the
//! rayon pool the caller runs in. Many small items (Swin's 897 window products of 49 × 32 × 49) run
//! whole, a run of items per task, in per-thread buffers (allocated on a thread's first call, then
//! reused), so that quantizing, packing and multiplying one item stay in cache; few or large items
//! (the decoder's 8 heads of 900 × 32 × 900) have every distinct operand quantized and packed once,
//! in parallel, into the caller's scratch ([`scratch_len`]), then their blocks of rows and columns
//! spread over the pool.

use super::matmul::{Layout, MatMulShapes};
use super::qlinear::{
    block, grid, padded_groups, quantize_serial, Dst, Operands, QKernel, QPanels, GROUP, MC,
    MIN_PARALLEL_MACS, NC, PAIR, ZERO_POINT,
};
use crate::error::{Error, Result};
use rayon::prelude::*;

/// Elements quantized at a time into a stack buffer before they are scattered into panels.
const RUN: usize = 256;
/// Elements below which one quantizing task is not split further.
const MIN_QUANTIZE_TASK: usize = 1 << 14;

/// Where a call's packed operands lie in its scratch (f32 units first, then bytes).
struct ScratchPlan {
    /// Panel pairs of each `b` matrix (`⌈n / 32⌉`).
    pairs: usize,
    /// Bytes of one packed `b` matrix.
    panel_bytes: usize,
    /// f32 of the column scales, then i32 of the zero-point sums of each `b`.
    words: usize,
    /// Bytes of the packed `b` matrices, then of the quantized `a` matrices.
    bytes: usize,
}

impl ScratchPlan {
    fn of(s: &MatMulShapes) -> Option<Self> {
        let pairs = s.n.div_ceil(PAIR);
        let panel_bytes = pairs
            .checked_mul(padded_groups(s.k))?
            .checked_mul(PAIR * GROUP)?;
        let sums = pairs.checked_mul(PAIR)?;
        let words = sums.checked_add(s.b_items().checked_mul(sums)?)?;
        let bytes = s
            .b_items()
            .checked_mul(panel_bytes)?
            .checked_add(s.a_items().checked_mul(s.m.checked_mul(s.k)?)?)?;
        words.checked_add(bytes.div_ceil(4))?;
        Some(ScratchPlan {
            pairs,
            panel_bytes,
            words,
            bytes,
        })
    }

    fn len(&self) -> usize {
        self.words + self.bytes.div_ceil(4)
    }
}

/// f32 of scratch [`qmatmul_strided`] needs for shapes `s` (0 where they overflow, which the call
/// then reports).
pub fn scratch_len(s: &MatMulShapes) -> usize {
    ScratchPlan::of(s).map_or(0, |p| p.len())
}

/// A shared destination that the tasks of one call write at disjoint elements.
#[derive(Clone, Copy)]
struct Shared<T>(*mut T);
// SAFETY: every task of a call writes elements no other task writes (each function below says
// which), and the buffer outlives the joined parallel loop.
unsafe impl<T> Send for Shared<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for Shared<T> {}

impl<T> Shared<T> {
    /// The address of element `i`.
    ///
    /// # Safety
    /// `i` lies in the buffer.
    #[inline(always)]
    unsafe fn at(self, i: usize) -> *mut T {
        // SAFETY: the caller's contract.
        unsafe { self.0.add(i) }
    }
}

/// `y = a · b` of two f32 activations on the integer kernel `kernel`, each operand quantized to
/// uint8 (zero point 128) at its scale (`a_scale`, `b_scale`: finite, > 0) and read through its
/// layout (see [`super::matmul::matmul_strided`]); `scratch` at least [`scratch_len`] f32 (its
/// contents are overwritten). Module docs for the numerics.
#[allow(clippy::too_many_arguments)] // two operands, each with its layout and scale
pub fn qmatmul_strided(
    kernel: QKernel,
    a: &[f32],
    la: &Layout,
    a_scale: f32,
    b: &[f32],
    lb: &Layout,
    b_scale: f32,
    s: &MatMulShapes,
    scratch: &mut [f32],
    y: &mut [f32],
) -> Result<()> {
    let (m, k, n) = (s.m, s.k, s.n);
    if !kernel.available() {
        return Err(Error::Config(format!(
            "the {} kernel needs instructions this CPU lacks",
            kernel.name()
        )));
    }
    s.check_operands("qmatmul", la, a.len(), lb, b.len(), y.len())?;
    for (name, sc) in [("a", a_scale), ("b", b_scale)] {
        if !(sc.is_finite() && sc > 0.0) {
            return Err(Error::Shape(format!(
                "qmatmul: {name} scale {sc} is not finite and > 0"
            )));
        }
    }
    // |Σ (a_q − 128)(b_q − 128)| ≤ k · 128² and the kernels' u8 · i8 partial sums ≤ k · 255 · 128
    // must fit an i32 (their sums do not saturate).
    if k > i32::MAX as usize / (255 * 128) {
        return Err(Error::Shape(format!(
            "qmatmul: k = {k} is too long for exact 32-bit sums"
        )));
    }
    let plan =
        ScratchPlan::of(s).ok_or_else(|| Error::Shape(format!("qmatmul: {s:?} overflows")))?;
    if scratch.len() < plan.len() {
        return Err(Error::shape_mismatch(
            "qmatmul: scratch (elements)",
            plan.len(),
            scratch.len(),
        ));
    }
    if m * n == 0 {
        return Ok(());
    }
    if k == 0 {
        // Empty sums (and operands that may hold no element at all).
        y.fill(0.0);
        return Ok(());
    }
    let padded = plan.pairs * PAIR;
    let items = s.items();
    let threads = rayon::current_num_threads();
    let serial = m.saturating_mul(k).saturating_mul(n).saturating_mul(items) < MIN_PARALLEL_MACS
        || threads < 2;
    let item = Item {
        m,
        k,
        n,
        panel_bytes: plan.panel_bytes,
        padded,
    };
    let out = Shared(y.as_mut_ptr());
    if serial || (items >= ITEMS_PER_THREAD * threads && m * k + k * n <= MAX_ITEM_ELEMENTS) {
        // Many small items (Swin's windows): each task quantizes, packs and multiplies a run of
        // items in its thread's own buffers, in cache.
        let tasks = if serial {
            1
        } else {
            ITEMS_PER_THREAD * threads
        };
        let per_task = items.div_ceil(tasks);
        let task = |t: usize| {
            ITEM.with(|cell| {
                let mut buf = cell.borrow_mut();
                let ItemBuffers {
                    aq,
                    panels,
                    sums,
                    scales,
                } = &mut *buf;
                aq.resize(m * k, 0);
                panels.resize(plan.panel_bytes, 0);
                sums.resize(padded, 0);
                scales.clear();
                scales.resize(padded, b_scale);
                for t in t * per_task..((t + 1) * per_task).min(items) {
                    let (ai, bi) = s.operands(t);
                    let src_a = &a[la.offset(s.a_batch(), ai)..];
                    quantize_a_rows(src_a, la, m, k, a_scale, aq);
                    let src_b = &b[lb.offset(s.b_batch(), bi)..];
                    pack_b_item(src_b, lb, &item, b_scale, panels, sums);
                    let args = item.operands(aq, panels, sums, scales, a_scale);
                    // SAFETY: item t's m × n outputs lie in `y` (length checked above) and only
                    // this task writes them; `kernel` is available (checked above).
                    unsafe { block(&args, item.dst(out, t), 0..m, 0..n, kernel) };
                }
            })
        };
        if serial {
            (0..tasks).for_each(task);
        } else {
            (0..tasks).into_par_iter().for_each(task);
        }
        return Ok(());
    }
    // Few or large items: every distinct operand quantized (and `b` packed) once, in parallel,
    // into the caller's scratch; then the items' blocks in parallel.
    let (scales, rest) = scratch.split_at_mut(padded);
    let (sums, bytes) = rest.split_at_mut(plan.words - padded);
    scales.fill(b_scale);
    // SAFETY: i32 has f32's size and alignment and every bit pattern is a valid i32 (and f32), so
    // the same memory may be viewed as i32; `sums` is not used as f32 again.
    let sums: &mut [i32] =
        unsafe { std::slice::from_raw_parts_mut(sums.as_mut_ptr().cast::<i32>(), sums.len()) };
    // SAFETY: as above for bytes (alignment 1; any f32 bits are valid bytes and back).
    let bytes: &mut [u8] =
        unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<u8>(), bytes.len() * 4) };
    let (panels, aq) = bytes.split_at_mut(s.b_items() * plan.panel_bytes);
    let aq = &mut aq[..s.a_items() * m * k];
    let pair_bytes = plan.panel_bytes / plan.pairs;
    let pack = || {
        panels
            .par_chunks_mut(plan.panel_bytes)
            .zip(sums.par_chunks_mut(padded))
            .enumerate()
            .for_each(|(bi, (p, z))| {
                let src = &b[lb.offset(s.b_batch(), bi)..];
                p.par_chunks_mut(pair_bytes)
                    .zip(z.par_chunks_mut(PAIR))
                    .enumerate()
                    .for_each(|(pair, (p, z))| pack_pair(src, lb, &item, pair, b_scale, p, z));
            })
    };
    let quantize = || {
        aq.par_chunks_mut(m * k).enumerate().for_each(|(ai, dst)| {
            let src = &a[la.offset(s.a_batch(), ai)..];
            if la.col == 1 {
                // Runs of rows.
                let rows = (MIN_QUANTIZE_TASK / k).max(1);
                dst.par_chunks_mut(rows * k)
                    .enumerate()
                    .for_each(|(c, dst)| {
                        let src = &src[c * rows * la.row..];
                        quantize_a_rows(src, la, dst.len() / k, k, a_scale, dst)
                    });
            } else {
                quantize_a_rows(src, la, m, k, a_scale, dst);
            }
        })
    };
    rayon::join(pack, quantize);
    let (panels, sums, aq, scales) = (&*panels, &*sums, &*aq, &*scales);
    // Tasks: items × row blocks × column blocks, the columns narrowed (down to one pair) while
    // there are fewer than four per thread.
    let row_blocks = m.div_ceil(MC);
    let want = 4 * threads;
    let mut nc = NC;
    while nc > PAIR && items * row_blocks * n.div_ceil(nc) < want {
        nc /= 2;
    }
    let col_blocks = n.div_ceil(nc);
    let per_item = row_blocks * col_blocks;
    (0..items * per_item).into_par_iter().for_each(|t| {
        let (it, rest) = (t / per_item, t % per_item);
        let (rb, cb) = (rest / col_blocks, rest % col_blocks);
        let (ai, bi) = s.operands(it);
        // To the end of the quantized `a` matrices: the AMX kernel reads up to 32 rows from a
        // block's first one in place while they exist (rows past the item's m meet only outputs
        // it does not store), else from a zero-padded copy.
        let xq = &aq[ai * m * k..];
        let p = &panels[bi * plan.panel_bytes..][..plan.panel_bytes];
        let z = &sums[bi * padded..][..padded];
        let args = item.operands(xq, p, z, scales, a_scale);
        let rows = rb * MC..(rb * MC + MC).min(m);
        let cols = cb * nc..(cb * nc + nc).min(n);
        // SAFETY: this task alone writes rows × cols of item `it` (distinct tasks have distinct
        // (item, row block, column block)); `y` outlives the joined loop; `kernel` is available
        // (checked above); the operands are complete (written above, before the loop).
        unsafe { block(&args, item.dst(out, it), rows, cols, kernel) };
    });
    Ok(())
}

/// Runs of items per thread from which each task runs whole items ([`qmatmul_strided`]).
const ITEMS_PER_THREAD: usize = 8;
/// Elements of one item's two operands up to which a task runs it whole.
const MAX_ITEM_ELEMENTS: usize = 1 << 16;

/// One item's operands, packed: a task's own buffers on the many-small-items path.
struct ItemBuffers {
    aq: Vec<u8>,
    panels: Vec<u8>,
    sums: Vec<i32>,
    scales: Vec<f32>,
}

std::thread_local! {
    /// This thread's [`ItemBuffers`], reused by every call (sized by the largest item seen).
    static ITEM: std::cell::RefCell<ItemBuffers> = const {
        std::cell::RefCell::new(ItemBuffers {
            aq: Vec::new(),
            panels: Vec::new(),
            sums: Vec::new(),
            scales: Vec::new(),
        })
    };
}

/// The shapes of one item's product and of its packed `b`.
struct Item {
    m: usize,
    k: usize,
    n: usize,
    panel_bytes: usize,
    /// `n` rounded up to whole pairs.
    padded: usize,
}

impl Item {
    /// The kernels' operands: `xq` from the item's first row, `b` packed.
    fn operands<'a>(
        &self,
        xq: &'a [u8],
        panels: &'a [u8],
        sums: &'a [i32],
        scales: &'a [f32],
        a_scale: f32,
    ) -> Operands<'a> {
        // SAFETY: i8 and u8 have the same size and alignment, and every byte is a valid i8.
        let panels =
            unsafe { std::slice::from_raw_parts(panels.as_ptr().cast::<i8>(), panels.len()) };
        Operands {
            xq,
            w: QPanels {
                k: self.k,
                panels,
                zero_sums: sums,
                scales,
            },
            x_scale: a_scale,
            bias: None,
        }
    }

    /// Where item `t`'s output goes.
    fn dst(&self, out: Shared<f32>, t: usize) -> Dst {
        Dst {
            // SAFETY: callers pass t < items, so its m × n outputs lie in the output.
            ptr: unsafe { out.at(t * self.m * self.n) },
            ld: self.n,
            r0: 0,
            c0: 0,
        }
    }
}

/// Quantizes `rows` rows of an `a` matrix (`src` from its first one, read through `la`) into
/// row-major `dst` (`rows · k` bytes): one vector pass where the rows are contiguous, one per row
/// or per column where rows or columns are, element by element otherwise.
fn quantize_a_rows(src: &[f32], la: &Layout, rows: usize, k: usize, scale: f32, dst: &mut [u8]) {
    let dst = &mut dst[..rows * k];
    if la.col == 1 && la.row == k {
        quantize_serial(&src[..rows * k], scale, dst);
    } else if la.col == 1 {
        for (i, out) in dst.chunks_exact_mut(k).enumerate() {
            quantize_serial(&src[i * la.row..][..k], scale, out);
        }
    } else if la.row == 1 {
        // A transposed view: along the columns.
        let mut buf = [0u8; RUN];
        for j in 0..k {
            let col = &src[j * la.col..];
            let mut i0 = 0;
            while i0 < rows {
                let w = RUN.min(rows - i0);
                quantize_serial(&col[i0..i0 + w], scale, &mut buf[..w]);
                for (r, &q) in buf[..w].iter().enumerate() {
                    dst[(i0 + r) * k + j] = q;
                }
                i0 += w;
            }
        }
    } else {
        for (i, out) in dst.chunks_exact_mut(k).enumerate() {
            for (j, o) in out.iter_mut().enumerate() {
                *o = grid(src[i * la.row + j * la.col], scale);
            }
        }
    }
}

/// Quantizes and packs one `b` matrix (`src` from its first element, read through `lb`):
/// `panels` (`panel_bytes`) and `sums` (`padded`), pair by pair ([`pack_pair`]).
fn pack_b_item(
    src: &[f32],
    lb: &Layout,
    item: &Item,
    scale: f32,
    panels: &mut [u8],
    sums: &mut [i32],
) {
    let pairs = item.padded / PAIR;
    let pair_bytes = item.panel_bytes / pairs.max(1);
    for (pair, (p, z)) in panels[..item.panel_bytes]
        .chunks_exact_mut(pair_bytes)
        .zip(sums[..item.padded].chunks_exact_mut(PAIR))
        .enumerate()
    {
        pack_pair(src, lb, item, pair, scale, p, z);
    }
}

/// Quantizes columns `32 · pair ..` of a `b` matrix and packs them as the int8 "weight" `b_q − 128`
/// into one pair's panels (`out`: every group of 4 rows 128 bytes, column by column, the padding
/// rows and columns 0), and their zero-point sums `128 · Σₖ (b_q − 128)` into `sums` (32).
fn pack_pair(
    src: &[f32],
    lb: &Layout,
    item: &Item,
    pair: usize,
    scale: f32,
    out: &mut [u8],
    sums: &mut [i32],
) {
    let (k, n) = (item.k, item.n);
    let c0 = pair * PAIR;
    let width = PAIR.min(n - c0);
    out.fill(0);
    let mut col_sums = [0i32; PAIR];
    // q − 128 as an int8's bits is q ^ 0x80.
    let mut put = |kk: usize, j: usize, q: u8| {
        let v = q ^ ZERO_POINT;
        out[(kk / GROUP) * PAIR * GROUP + j * GROUP + kk % GROUP] = v;
        col_sums[j] += i32::from(v as i8);
    };
    if lb.row == 1 && lb.col != 1 {
        // A transposed view (kᵀ): each column's k values are contiguous.
        let mut buf = [0u8; RUN];
        for j in 0..width {
            let col = &src[(c0 + j) * lb.col..];
            let mut k0 = 0;
            while k0 < k {
                let w = RUN.min(k - k0);
                quantize_serial(&col[k0..k0 + w], scale, &mut buf[..w]);
                for (r, &q) in buf[..w].iter().enumerate() {
                    put(k0 + r, j, q);
                }
                k0 += w;
            }
        }
    } else if lb.col == 1 {
        let mut buf = [0u8; PAIR];
        for kk in 0..k {
            quantize_serial(&src[kk * lb.row + c0..][..width], scale, &mut buf[..width]);
            for (j, &q) in buf[..width].iter().enumerate() {
                put(kk, j, q);
            }
        }
    } else {
        for kk in 0..k {
            for j in 0..width {
                put(kk, j, grid(src[kk * lb.row + (c0 + j) * lb.col], scale));
            }
        }
    }
    for (z, &cs) in sums.iter_mut().zip(&col_sums) {
        *z = i32::from(ZERO_POINT) * cs;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_values as values;

    /// Exact reference: each operand quantized by [`grid`] element by element, the sums in i64,
    /// then one f32 conversion times `s_a · s_b` (ONNX Runtime's integer product to float).
    fn reference(a: &[f32], sa: f32, b: &[f32], sb: f32, s: &MatMulShapes) -> Vec<f32> {
        let (m, k, n) = (s.m, s.k, s.n);
        let mut y = vec![0f32; s.items() * m * n];
        for (t, out) in y.chunks_mut(m * n.max(1)).enumerate() {
            let (ai, bi) = s.operands(t);
            for i in 0..m {
                for j in 0..n {
                    let mut acc = 0i64;
                    for kk in 0..k {
                        let x = i64::from(grid(a[ai * m * k + i * k + kk], sa)) - 128;
                        let w = i64::from(grid(b[bi * k * n + kk * n + j], sb)) - 128;
                        acc += x * w;
                    }
                    out[i * n + j] = acc as i32 as f32 * (sa * sb);
                }
            }
        }
        y
    }

    /// A matrix view: transposed (columns contiguous) when `t`, else rows padded by 3.
    fn layout(lead: &[usize], rows: usize, cols: usize, t: bool) -> Layout {
        let (row, col, size) = if t {
            (1, rows, rows * cols)
        } else {
            (cols + 3, 1, rows * (cols + 3))
        };
        let mut batch = vec![0; lead.len()];
        let mut step = size;
        for (b, &d) in batch.iter_mut().zip(lead).rev() {
            *b = if d == 1 { 0 } else { step };
            step *= d;
        }
        Layout { batch, row, col }
    }

    #[test]
    fn integer_products_are_the_exact_sums_on_every_kernel_and_layout() {
        // Shapes: batches with broadcasting, a partial tile, m > MC and n > NC, k over one AMX
        // step and not a multiple of 4; Swin's window products; sums of one element.
        let cases: &[(&[usize], &[usize])] = &[
            (&[3, 13, 37], &[1, 37, 45]),
            (&[2, 1, 130, 70], &[1, 3, 70, 300]),
            (&[6, 49, 32], &[6, 32, 49]),
            (&[5, 1], &[5, 1, 2]),
        ];
        for &(sa_shape, sb_shape) in cases {
            let s = MatMulShapes::new(sa_shape, sb_shape).unwrap();
            let (m, k, n) = (s.m, s.k, s.n);
            let mut a = values(s.a_items() * m * k, 1);
            let mut b = values(s.b_items() * k * n, 2);
            // Saturation at both ends, an exact grid half-way point and NaN (→ 0, i.e. −128).
            a[0] = 1e4;
            b[0] = -1e4;
            if a.len() > 2 {
                a[1] = 2.5 * 0.01;
                a[2] = f32::NAN;
            }
            let (sa, sb) = (0.01, 0.013);
            let want = reference(&a, sa, &b, sb, &s);
            for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                let la = layout(s.a_batch(), m, k, ta);
                let lb = layout(s.b_batch(), k, n, tb);
                let av = la.scatter(&a, s.a_batch(), m, k);
                let bv = lb.scatter(&b, s.b_batch(), k, n);
                for kernel in QKernel::ALL.into_iter().filter(|k| k.available()) {
                    for threads in [1, 3] {
                        let mut scratch = vec![f32::NAN; scratch_len(&s)];
                        let mut y = vec![f32::NAN; want.len()];
                        crate::ops::on_threads(threads, || {
                            qmatmul_strided(
                                kernel,
                                &av,
                                &la,
                                sa,
                                &bv,
                                &lb,
                                sb,
                                &s,
                                &mut scratch,
                                &mut y,
                            )
                        })
                        .unwrap();
                        let bad = y
                            .iter()
                            .zip(&want)
                            .position(|(g, w)| g.to_bits() != w.to_bits());
                        assert_eq!(
                            bad,
                            None,
                            "{} {sa_shape:?}·{sb_shape:?} transposed {ta}/{tb}, {threads} threads",
                            kernel.name()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn the_float_product_of_the_dequantized_operands_agrees() {
        // The float path this replaces: fake-quantized operands, f32 sums.
        let s = MatMulShapes::new(&[4, 40, 64], &[4, 64, 50]).unwrap();
        let (a, b) = (values(4 * 40 * 64, 3), values(4 * 64 * 50, 4));
        let (sa, sb) = (0.02, 0.015);
        let (mut fa, mut fb) = (a.clone(), b.clone());
        crate::ops::qlinear::fake_quantize_u8(&mut fa, sa).unwrap();
        crate::ops::qlinear::fake_quantize_u8(&mut fb, sb).unwrap();
        let mut float = vec![0f32; 4 * 40 * 50];
        let mut fs = vec![0f32; s.scratch_len()];
        crate::ops::matmul::matmul(&fa, &fb, &s, &mut fs, &mut float).unwrap();
        let mut y = vec![0f32; float.len()];
        let mut scratch = vec![0f32; scratch_len(&s)];
        let kernel = QKernel::process();
        let (la, lb) = (s.a_layout(), s.b_layout());
        qmatmul_strided(kernel, &a, &la, sa, &b, &lb, sb, &s, &mut scratch, &mut y).unwrap();
        let scale = float.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = y
            .iter()
            .zip(&float)
            .fold(0f32, |m, (g, w)| m.max((g - w).abs()));
        // The f32 sum of 64 grid products rounds at ~1e-7 relative to the largest partial sums.
        assert!(worst <= 1e-5 * scale, "worst {worst} of {scale}");
        assert!(scale > 0.1, "values that matter");
    }

    #[test]
    fn bad_operands_are_errors() {
        let s = MatMulShapes::new(&[2, 3], &[3, 4]).unwrap();
        let (a, b) = ([0.5f32; 6], [0.25f32; 12]);
        let (la, lb) = (s.a_layout(), s.b_layout());
        let mut scratch = vec![0f32; scratch_len(&s)];
        let mut y = [0f32; 8];
        let k = QKernel::Portable;
        let call = |sa: f32, a: &[f32], scratch: &mut [f32], y: &mut [f32]| {
            qmatmul_strided(k, a, &la, sa, &b, &lb, 0.1, &s, scratch, y)
        };
        assert!(call(0.0, &a, &mut scratch, &mut y).is_err(), "zero scale");
        assert!(
            call(f32::NAN, &a, &mut scratch, &mut y).is_err(),
            "NaN scale"
        );
        assert!(call(0.1, &a[..5], &mut scratch, &mut y).is_err(), "short a");
        let short = scratch.len() - 1;
        assert!(
            call(0.1, &a, &mut scratch[..short], &mut y).is_err(),
            "short scratch"
        );
        assert!(
            call(0.1, &a, &mut scratch, &mut y[..7]).is_err(),
            "short output"
        );
        call(0.1, &a, &mut scratch, &mut y).unwrap();
        // 0.5 / 0.1 → 5, 0.25 / 0.1 = 2.5 → 2 (half to even): three terms of 10.
        assert!(y.iter().all(|&v| v == 30.0 * (0.1f32 * 0.1)), "{y:?}");
        let missing = QKernel::ALL.into_iter().find(|k| !k.available());
        if let Some(missing) = missing {
            let r = qmatmul_strided(
                missing,
                &a,
                &la,
                0.1,
                &b,
                &lb,
                0.1,
                &s,
                &mut scratch,
                &mut y,
            );
            assert!(r.is_err(), "{} is not on this CPU", missing.name());
        }
    }
}
