//! Linear layer `y = x·W (+ b) (then max(·, 0))` with a constant weight matrix: what the CPU backend
//! runs for an ONNX `MatMul` whose right operand is a weight (and the bias `Add` / `Relu` after it)
//! instead of tract's matrix product.
//!
//! Why our own: tract packs *both* operands of every product before its kernel runs. The weights are
//! packed once at load, but the activations are packed again on every call, single file per panel
//! (`OptMatMulPack`: ≈ 130 ms of the Swin-T frame engine, of which each of the six `[4820, 2048]`
//! FFN hiddens costs ≈ 21 ms), and its kernel then reads long panels (`k` up to 2048) that do not
//! stay in cache (benches/README.md, "Linear layers, convolutions and broadcast Add"). Here only
//! the weights are packed (once, at load), the activations are read where they are, and `k` is cut
//! into blocks that keep one weight panel in L1 and one block of activation rows in L2, which is
//! how ONNX Runtime's GEMM works.
//!
//! Layout: the weight matrix `[k, n]` is stored as panels of [`NR`] = 16 columns (the last one
//! zero-padded), each panel `k` rows of 16 contiguous values. The micro-kernel ([`Kernel`]) is
//! chosen per call from what the CPU has: on AVX2 + FMA a tile of up to [`MR`] = 6 rows × 16
//! columns of `y` is accumulated in 12 8-lane registers (per `k`, two loads of the panel and one
//! broadcast of each row's `x` value); on AVX-512 a tile of up to [`MR_AVX512`] = 12 rows × 32
//! columns, two neighbouring panels at once, in 24 16-lane registers (per `k`, two loads and 12
//! broadcasts for 24 multiply-adds, so the multiply-add units and not the loads set the pace).
//!
//! Numerics: every output element is one sum over `k` in increasing order, in blocks of [`KC`]
//! (a block's partial sum is added to the previous blocks' total), then the bias, then the ReLU.
//! The AVX2 and AVX-512 paths do exactly this with one fused multiply-add per term and the same
//! adds after it, lane by lane, so they give the same bits; the portable path uses separate
//! multiplies and adds, so its bits differ (within the f32 rounding of a length-`k` dot product).
//! The thread count never changes a bit: threads split the output into blocks, never a sum.

mod kernel;
mod tile;

pub use kernel::{avx2_fma, kernel, with_kernel, Kernel, KERNEL_ENV};

use super::OutPtr;
use crate::error::{Error, Result};
#[cfg(target_arch = "x86_64")]
use tile::{Avx2, Avx512};
use tile::{Portable, Tile, TileArgs};

/// Columns of one weight panel and of one output tile (two 8-lane vectors).
pub const NR: usize = 16;
/// Rows of one output tile of the AVX2 and portable kernels.
pub const MR: usize = 6;
/// Rows of one output tile of the AVX-512 kernel (24 of its 32 registers accumulate).
pub const MR_AVX512: usize = 12;
/// Length of one block of the sum over `k` (one 16-column panel block is 16 KiB: L1).
pub const KC: usize = 256;
/// Rows of one task (a block of activation rows, `MC × KC` f32 = 96 KiB: L2).
const MC: usize = 96;
/// Columns of one task (its weight block, `KC × NC` f32 = 256 KiB: L2).
const NC: usize = 256;
/// Multiply-adds below which a call stays on the calling thread.
const MIN_PARALLEL_MACS: usize = 1 << 20;

/// A constant `[k, n]` weight matrix packed into 16-column panels.
#[derive(Clone, PartialEq)]
pub struct PackedWeights {
    k: usize,
    n: usize,
    panels: Vec<f32>,
}

impl std::fmt::Debug for PackedWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedWeights[{}, {}]", self.k, self.n)
    }
}

/// A `[k, n]` matrix in [`PackedWeights`]' panel layout, borrowed: a packed weight matrix
/// ([`PackedWeights::panels`]), or one the caller laid out itself (the convolution's patches).
#[derive(Clone, Copy, Debug)]
pub struct Panels<'a> {
    k: usize,
    n: usize,
    data: &'a [f32],
}

impl<'a> Panels<'a> {
    /// f32 a `[k, n]` matrix takes in the panel layout: `⌈n / 16⌉` panels of `k` rows of 16.
    pub fn len(k: usize, n: usize) -> Option<usize> {
        n.div_ceil(NR).checked_mul(k)?.checked_mul(NR)
    }

    /// A view of `data`, which holds a `[k, n]` matrix in the panel layout: element (row `kk`,
    /// column `c`) at `(c / 16) · k · 16 + kk · 16 + c % 16`, padding columns anything finite.
    pub fn new(data: &'a [f32], k: usize, n: usize) -> Result<Self> {
        let len = Self::len(k, n)
            .ok_or_else(|| Error::Shape(format!("linear: panels of {k} x {n} overflow")))?;
        super::check_len("linear", "panels", data.len(), len)?;
        Ok(Panels { k, n, data })
    }
}

impl PackedWeights {
    /// The panels, borrowed (for [`linear_panels`]).
    pub fn panels(&self) -> Panels<'_> {
        Panels {
            k: self.k,
            n: self.n,
            data: &self.panels,
        }
    }

    /// Packs a row-major `[k, n]` matrix.
    pub fn pack(w: &[f32], k: usize, n: usize) -> Result<Self> {
        let len = k
            .checked_mul(n)
            .ok_or_else(|| Error::Shape(format!("linear: weight {k} x {n} overflows")))?;
        super::check_len("linear", "weight", w.len(), len)?;
        let mut panels = vec![0.0f32; n.div_ceil(NR) * k * NR];
        pack_into(w, k, n, &mut panels);
        Ok(PackedWeights { k, n, panels })
    }

    /// Rows of the matrix (the length of each sum).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Columns of the matrix (output features).
    pub fn n(&self) -> usize {
        self.n
    }

    /// The `[k, n]` matrix back in row-major order.
    pub fn unpack(&self) -> Vec<f32> {
        let mut w = vec![0.0f32; self.k * self.n];
        for kk in 0..self.k {
            for c in 0..self.n {
                w[kk * self.n + c] = self.panels[(c / NR) * self.k * NR + kk * NR + c % NR];
            }
        }
        w
    }
}

/// Writes the row-major `[k, n]` matrix `w` into `out` in the panel layout (padding columns 0).
/// `w` holds `k · n` and `out` [`Panels::len`] f32 (checked by the callers).
pub(crate) fn pack_into(w: &[f32], k: usize, n: usize, out: &mut [f32]) {
    pack_strided_into(w, k, n, n, 1, out)
}

/// [`pack_into`] for a `[k, n]` matrix whose element `(kk, j)` lies at `w[kk · ks + j · ns]`
/// (`w` holds it: checked by the callers).
pub(crate) fn pack_strided_into(
    w: &[f32],
    k: usize,
    n: usize,
    ks: usize,
    ns: usize,
    out: &mut [f32],
) {
    for (p, panel) in out
        .chunks_exact_mut((k * NR).max(1))
        .enumerate()
        .take(n.div_ceil(NR))
    {
        let c0 = p * NR;
        let cols = NR.min(n - c0);
        for (kk, dst) in panel.chunks_exact_mut(NR).enumerate() {
            let row = &w[kk * ks..];
            if ns == 1 {
                dst[..cols].copy_from_slice(&row[c0..c0 + cols]);
            } else {
                for (j, d) in dst[..cols].iter_mut().enumerate() {
                    *d = row[(c0 + j) * ns];
                }
            }
            dst[cols..].fill(0.0);
        }
    }
}

/// What is applied to each output element after its sum.
#[derive(Clone, Copy, Debug, Default)]
pub struct Epilogue<'a> {
    /// Added per output column (`[n]`).
    pub bias: Option<&'a [f32]>,
    /// Added per output row (`[m]`), after `bias`.
    pub row_bias: Option<&'a [f32]>,
    /// `max(·, 0)` after the bias (NaN stays NaN, as ONNX `Relu`).
    pub relu: bool,
    /// Exact GELU ([`crate::ops::unary::gelu_exact`]) after the bias (and ReLU, if both are set),
    /// applied to each tile of outputs while it is still in L1: the same bits as the unfused
    /// product followed by [`crate::ops::unary::apply_in_place`].
    pub gelu: bool,
}

/// `y[m, n] = x[m, k] · W (+ bias) (ReLU)`, `x` and `y` row-major. Threads: the rayon pool the
/// caller runs in (split over blocks of rows and columns).
pub fn linear(
    x: &[f32],
    m: usize,
    w: &PackedWeights,
    epilogue: Epilogue<'_>,
    y: &mut [f32],
) -> Result<()> {
    linear_panels(x, m, w.panels(), epilogue, y)
}

/// [`linear`] with the right operand borrowed in the panel layout.
pub fn linear_panels(
    x: &[f32],
    m: usize,
    w: Panels<'_>,
    epilogue: Epilogue<'_>,
    y: &mut [f32],
) -> Result<()> {
    let xlen = m
        .checked_mul(w.k)
        .ok_or_else(|| Error::Shape(format!("linear: input {m} x {} overflows", w.k)))?;
    super::check_len("linear", "input", x.len(), xlen)?;
    linear_strided(x, m, Strides::rows(w.k), w, epilogue, y)
}

/// Where element `(i, kk)` of a left operand lies in its slice: `i · row + kk · k`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Strides {
    /// Step between rows.
    pub row: usize,
    /// Step along `k`.
    pub k: usize,
}

impl Strides {
    /// Contiguous rows of `k` elements.
    pub fn rows(k: usize) -> Self {
        Strides { row: k, k: 1 }
    }

    /// Elements a slice must hold for an `m × k` operand with these strides (`None` on overflow).
    pub fn span(&self, m: usize, k: usize) -> Option<usize> {
        if m == 0 || k == 0 {
            return Some(0);
        }
        (m - 1)
            .checked_mul(self.row)?
            .checked_add((k - 1).checked_mul(self.k)?)?
            .checked_add(1)
    }
}

/// [`linear_panels`] with the left operand read through `strides` (a transposed or sliced view:
/// no copy of it is made first). Rows with a `k` step of 1 are read in place; others are gathered
/// one block of rows × `k` at a time into a per-thread buffer of 96 × [`KC`] f32.
pub fn linear_strided(
    x: &[f32],
    m: usize,
    strides: Strides,
    w: Panels<'_>,
    epilogue: Epilogue<'_>,
    y: &mut [f32],
) -> Result<()> {
    let (k, n) = (w.k, w.n);
    let xlen = strides
        .span(m, k)
        .ok_or_else(|| Error::Shape(format!("linear: input {m} x {k} {strides:?} overflows")))?;
    if x.len() < xlen {
        return Err(Error::shape_mismatch(
            "linear: input (elements, at least)",
            xlen,
            x.len(),
        ));
    }
    let ylen = m
        .checked_mul(n)
        .ok_or_else(|| Error::Shape(format!("linear: output {m} x {n} overflows")))?;
    super::check_len("linear", "output", y.len(), ylen)?;
    if let Some(b) = epilogue.bias {
        super::check_len("linear", "bias", b.len(), n)?;
    }
    if let Some(b) = epilogue.row_bias {
        super::check_len("linear", "row bias", b.len(), m)?;
    }
    if ylen == 0 {
        return Ok(());
    }
    // Narrower column blocks when there are few row blocks, so that every thread gets work (down to
    // one tile's width; the k blocking, and so the bits, unchanged).
    let kernel = kernel();
    let out = OutPtr(y.as_mut_ptr());
    let serial = m.saturating_mul(k).saturating_mul(n) < MIN_PARALLEL_MACS;
    super::for_each_block(m, n, MC, NC, kernel.tile_columns(), serial, |rows, cols| {
        // SAFETY: each block writes only its rows × columns of `y` (ylen elements, checked above);
        // distinct blocks are disjoint, and `y` outlives the (joined) loop.
        unsafe { block(x, strides, w, epilogue, out, rows, cols, kernel) };
    });
    Ok(())
}

/// One task: rows × columns of `y`, every block of `k`, on `kernel`.
///
/// # Safety
/// `out` points at `m × n` writable f32 (the caller's `y`); `rows` and `cols` lie inside it and no
/// other thread touches that block during the call; `kernel` is available on this CPU.
#[allow(clippy::too_many_arguments)] // the operands, their layout, the output block and the path
unsafe fn block(
    x: &[f32],
    xs: Strides,
    w: Panels<'_>,
    ep: Epilogue<'_>,
    out: OutPtr,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    kernel: Kernel,
) {
    #[cfg(target_arch = "x86_64")]
    {
        match kernel {
            // SAFETY: AVX-512F, AVX2 and FMA are present (the caller's contract, `kernel`).
            Kernel::Avx512 => return unsafe { block_avx512(x, xs, w, ep, out, rows, cols) },
            // SAFETY: AVX2 and FMA are present (the caller's contract, `kernel`).
            Kernel::Avx2 => return unsafe { block_avx2(x, xs, w, ep, out, rows, cols) },
            Kernel::Portable => {}
        }
    }
    let _ = kernel;
    // SAFETY: the caller's contract.
    unsafe { block_generic::<Portable>(x, xs, w, ep, out, rows, cols) };
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn block_avx2(
    x: &[f32],
    xs: Strides,
    w: Panels<'_>,
    ep: Epilogue<'_>,
    out: OutPtr,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
) {
    // SAFETY: the caller's contract; AVX2 and FMA are enabled for this function.
    unsafe { block_generic::<Avx2>(x, xs, w, ep, out, rows, cols) };
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn block_avx512(
    x: &[f32],
    xs: Strides,
    w: Panels<'_>,
    ep: Epilogue<'_>,
    out: OutPtr,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
) {
    // SAFETY: the caller's contract; AVX-512F, AVX2 and FMA are enabled for this function.
    unsafe { block_generic::<Avx512>(x, xs, w, ep, out, rows, cols) };
}

/// One task on the tile `T`: its rows read in place, or gathered per block of `k` when their `k`
/// step is not 1.
///
/// # Safety
/// As [`block`].
#[inline(always)]
unsafe fn block_generic<T: Tile>(
    x: &[f32],
    xs: Strides,
    w: Panels<'_>,
    ep: Epilogue<'_>,
    out: OutPtr,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
) {
    if xs.k == 1 {
        // SAFETY: the caller's contract.
        unsafe { block_k_blocks::<T>(Left::Rows { x, ldx: xs.row }, w, ep, out, rows, cols) };
        return;
    }
    GATHERED.with(|g| {
        let mut g = g.borrow_mut();
        if g.len() < MC * KC {
            g.resize(MC * KC, 0.0);
        }
        let left = Left::Gather { x, xs, buf: &mut g };
        // SAFETY: the caller's contract.
        unsafe { block_k_blocks::<T>(left, w, ep, out, rows, cols) };
    });
}

std::thread_local! {
    /// A task's rows of a strided left operand, one block of `k` at a time ([`MC`] × [`KC`]).
    static GATHERED: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// How a task reads its rows of the left operand.
enum Left<'a> {
    /// In place: row `r` at `r · ldx`, `k` contiguous.
    Rows { x: &'a [f32], ldx: usize },
    /// Through `xs`, gathered per block of `k` into `buf` (rows of `kc`, the task's first row first).
    Gather {
        x: &'a [f32],
        xs: Strides,
        buf: &'a mut [f32],
    },
}

/// Copies rows `rows` × `k0 .. k0 + kc` of `x` (read through `xs`) into `buf` as rows of `kc`.
fn gather(
    x: &[f32],
    xs: Strides,
    rows: std::ops::Range<usize>,
    k0: usize,
    kc: usize,
    buf: &mut [f32],
) {
    let h = rows.len();
    if xs.row < xs.k {
        // Rows are the closer step (a transposed operand): walk them innermost.
        for kk in 0..kc {
            let src = &x[(k0 + kk) * xs.k..];
            for i in 0..h {
                buf[i * kc + kk] = src[(rows.start + i) * xs.row];
            }
        }
    } else {
        for i in 0..h {
            let src = &x[(rows.start + i) * xs.row..];
            for (kk, b) in buf[i * kc..(i + 1) * kc].iter_mut().enumerate() {
                *b = src[(k0 + kk) * xs.k];
            }
        }
    }
}

/// The loop nest of one task: blocks of `k`, then one or two 16-column panels, then tiles of rows
/// (the panel block stays in L1 while the tiles walk down the rows).
///
/// # Safety
/// As [`block`].
#[inline(always)]
unsafe fn block_k_blocks<T: Tile>(
    mut left: Left<'_>,
    w: Panels<'_>,
    ep: Epilogue<'_>,
    out: OutPtr,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
) {
    let (k, n) = (w.k, w.n);
    let mut k0 = 0;
    loop {
        let kc = KC.min(k - k0);
        let first = k0 == 0;
        let last = k0 + kc == k;
        // (operand, its row step, the block's first `k` in it, the row at its start)
        let (x, ldx, koff, base): (&[f32], usize, usize, usize) = match &mut left {
            Left::Rows { x, ldx } => (x, *ldx, k0, 0),
            Left::Gather { x, xs, buf } => {
                gather(x, *xs, rows.clone(), k0, kc, buf);
                (&**buf, kc, 0, rows.start)
            }
        };
        let mut c0 = cols.start;
        while c0 < cols.end {
            let width = (T::PANELS * NR).min(cols.end - c0);
            let at = (c0 / NR) * k * NR + k0 * NR;
            let panel = &w.data[at..][..kc * NR];
            // The next panel's rows of this block, where the tile covers two panels.
            let next: &[f32] = if width > NR {
                &w.data[at + k * NR..][..kc * NR]
            } else {
                &[]
            };
            let bias = ep.bias.map(|b| &b[c0..c0 + width]);
            let mut r = rows.start;
            while r < rows.end {
                let h = T::ROWS.min(rows.end - r);
                let tile = TileArgs {
                    x: &x[(r - base) * ldx + koff..],
                    ldx,
                    kc,
                    panel,
                    next,
                    // SAFETY: element (r, c0) lies inside `y` (r < m, c0 < n).
                    y: unsafe { out.0.add(r * n + c0) },
                    ldy: n,
                    width,
                    first,
                    last,
                    bias,
                    row_bias: ep.row_bias.map(|b| &b[r..r + h]),
                    relu: ep.relu,
                };
                // SAFETY: rows r..r+h and columns c0..c0+width of `y` belong to this task.
                unsafe { T::rows(h, &tile) };
                if last && ep.gelu {
                    for i in r..r + h {
                        // SAFETY: as for the tile: row i, columns c0..c0+width are this task's,
                        // and the tile has just written them (initialised).
                        let row =
                            unsafe { std::slice::from_raw_parts_mut(out.0.add(i * n + c0), width) };
                        row.iter_mut()
                            .for_each(|v| *v = crate::ops::unary::gelu_exact(*v));
                    }
                }
                r += h;
            }
            c0 += width;
        }
        k0 += kc;
        if last {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_values as values;

    /// `x·W + b`, ReLU, in f64, with the bound on an f32 sum's rounding error: k·2⁻²³·Σ|x·w|
    /// (the textbook bound for a length-k dot product, unit roundoff 2⁻²⁴, with room for the blocked
    /// order and the final adds) plus the bias's own rounding.
    fn reference(
        x: &[f32],
        w: &[f32],
        m: usize,
        k: usize,
        n: usize,
        ep: Epilogue<'_>,
    ) -> Vec<(f64, f64)> {
        let Epilogue {
            bias,
            row_bias,
            relu,
            gelu,
        } = ep;
        assert!(
            !gelu,
            "the reference has no GELU (tested against the unfused product)"
        );
        let mut out = Vec::with_capacity(m * n);
        for i in 0..m {
            for j in 0..n {
                let (mut s, mut mag) = (0.0f64, 0.0f64);
                for kk in 0..k {
                    let p = x[i * k + kk] as f64 * w[kk * n + j] as f64;
                    s += p;
                    mag += p.abs();
                }
                let b = bias.map_or(0.0, |b| b[j] as f64) + row_bias.map_or(0.0, |b| b[i] as f64);
                s += b;
                if relu && s < 0.0 {
                    s = 0.0;
                }
                let tol = (k as f64 + 2.0) * 2f64.powi(-23) * (mag + b.abs()) + 1e-30;
                out.push((s, tol));
            }
        }
        out
    }

    fn check(m: usize, k: usize, n: usize, bias: bool, row_bias: bool, relu: bool) {
        let x = values(m * k, 1);
        let w = values(k * n, 2);
        let b = values(n, 3);
        let rb = values(m, 4);
        let bias = bias.then_some(&b[..]);
        let row_bias = row_bias.then_some(&rb[..]);
        let pw = PackedWeights::pack(&w, k, n).unwrap();
        assert_eq!(pw.unpack(), w);
        let ep = Epilogue {
            bias,
            row_bias,
            relu,
            gelu: false,
        };
        let want = reference(&x, &w, m, k, n, ep);
        let mut y = vec![f32::NAN; m * n];
        linear(&x, m, &pw, ep, &mut y).unwrap();
        let mut runs = vec![("dispatched".to_string(), y)];
        for kernel in [Kernel::Portable, Kernel::Avx2, Kernel::Avx512] {
            let mut y = vec![f32::NAN; m * n];
            if with_kernel(kernel, || linear(&x, m, &pw, ep, &mut y).unwrap()).is_ok() {
                runs.push((kernel.name().to_string(), y));
            }
        }
        for (kernel, got) in &runs {
            for (idx, &(s, tol)) in want.iter().enumerate() {
                let got = got[idx];
                assert!(
                    (got as f64 - s).abs() <= tol,
                    "{m}x{k}x{n} bias {} row bias {} relu {relu}, {kernel}, element {idx}: {got} against {s} (±{tol:e})",
                    bias.is_some(),
                    row_bias.is_some()
                );
            }
        }
    }

    #[test]
    fn matches_the_definition_on_edge_and_model_shapes() {
        // Tiles of every height (1..6 rows; 1..12 on AVX-512), partial panels and pairs of panels,
        // several blocks of k (KC = 256), several tasks in both directions (MC = 96 rows, NC = 256
        // columns), k = 0, m = 0.
        for &(m, k, n) in &[
            (1, 1, 1),
            (7, 5, 3),
            (6, 16, 16),
            (13, 300, 37),
            (200, 257, 270),
            (11, 513, 33),
            (5, 0, 4),
            (0, 4, 4),
            (49, 32, 49),
            (23, 40, 31),
            (35, 20, 65),
        ] {
            for (bias, row_bias, relu) in [
                (false, false, false),
                (true, false, false),
                (true, false, true),
                (false, false, true),
                (false, true, false),
                (true, true, true),
            ] {
                check(m, k, n, bias, row_bias, relu);
            }
        }
    }

    #[test]
    fn a_strided_left_operand_gives_the_bits_of_its_contiguous_copy() {
        // Transposed (the head engine's `[256, 14400]` read as `[14400, 256]`), rows with a gap
        // (a slice), and both steps above 1; several blocks of k and tasks, partial tiles.
        for &(m, k, n) in &[(200, 300, 37), (13, 600, 40), (97, 7, 16)] {
            let x = values(m * k, 5);
            let w = PackedWeights::pack(&values(k * n, 6), k, n).unwrap();
            let b = values(n, 7);
            let ep = Epilogue {
                bias: Some(&b),
                row_bias: None,
                relu: true,
                gelu: false,
            };
            let mut want = vec![f32::NAN; m * n];
            linear(&x, m, &w, ep, &mut want).unwrap();
            for st in [
                Strides { row: 1, k: m },
                Strides { row: k + 5, k: 1 },
                Strides {
                    row: 2,
                    k: 2 * m + 1,
                },
            ] {
                let mut xs = vec![f32::NAN; st.span(m, k).unwrap()];
                for i in 0..m {
                    for kk in 0..k {
                        xs[i * st.row + kk * st.k] = x[i * k + kk];
                    }
                }
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(1)
                    .build()
                    .unwrap();
                let mut y = vec![f32::NAN; m * n];
                linear_strided(&xs, m, st, w.panels(), ep, &mut y).unwrap();
                let mut one = vec![f32::NAN; m * n];
                pool.install(|| linear_strided(&xs, m, st, w.panels(), ep, &mut one).unwrap());
                for (label, got) in [("pool", &y), ("one thread", &one)] {
                    let diff = got
                        .iter()
                        .zip(&want)
                        .position(|(a, b)| a.to_bits() != b.to_bits());
                    assert_eq!(diff, None, "{m}x{k}x{n} {st:?} {label}");
                }
                // One element short: an error, not a read past the end.
                let short = &xs[..xs.len() - 1];
                assert!(linear_strided(short, m, st, w.panels(), ep, &mut y).is_err());
            }
        }
    }

    #[test]
    fn the_avx512_kernel_gives_the_bits_of_the_avx2_kernel() {
        if !Kernel::Avx512.available() {
            eprintln!("skipped: this CPU has no AVX-512F (the AVX-512 kernel cannot run here)");
            return;
        }
        // Every tile height (1..12) and width (one panel, part of one, two, one and a part), one
        // and several blocks of k, every epilogue, contiguous and strided left operands, one and
        // several threads (column blocks narrowed to one tile).
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for &(m, k, n) in &[
            (1, 3, 1),
            (12, 7, 32),
            (11, 9, 17),
            (25, 300, 47),
            (100, 520, 270),
            (7, 16, 15),
            (97, 64, 33),
        ] {
            let x = values(m * k, 11);
            let w = PackedWeights::pack(&values(k * n, 12), k, n).unwrap();
            let b = values(n, 13);
            let rb = values(m, 14);
            let mut xt = vec![f32::NAN; m * k];
            for i in 0..m {
                for kk in 0..k {
                    xt[kk * m + i] = x[i * k + kk];
                }
            }
            for (bias, row_bias, relu) in [
                (false, false, false),
                (true, false, true),
                (true, true, false),
            ] {
                let ep = Epilogue {
                    bias: bias.then_some(&b[..]),
                    row_bias: row_bias.then_some(&rb[..]),
                    relu,
                    gelu: false,
                };
                for (xs, st) in [(&x, Strides::rows(k)), (&xt, Strides { row: 1, k: m })] {
                    let run = |kernel: Kernel, threads: bool| {
                        let mut y = vec![f32::NAN; m * n];
                        let mut call = || {
                            with_kernel(kernel, || {
                                linear_strided(xs, m, st, w.panels(), ep, &mut y).unwrap()
                            })
                            .unwrap()
                        };
                        if threads {
                            pool.install(call);
                        } else {
                            call();
                        }
                        y
                    };
                    let want = run(Kernel::Avx2, false);
                    for threads in [false, true] {
                        let got = run(Kernel::Avx512, threads);
                        let diff = got
                            .iter()
                            .zip(&want)
                            .position(|(a, b)| a.to_bits() != b.to_bits());
                        assert_eq!(
                            diff,
                            None,
                            "{m}x{k}x{n} {st:?} bias {bias} row bias {row_bias} relu {relu} threads {threads}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn kernels_are_chosen_by_name_and_refused_where_the_cpu_lacks_them() {
        for kernel in [Kernel::Portable, Kernel::Avx2, Kernel::Avx512] {
            assert_eq!(Kernel::from_name(kernel.name()), Some(kernel));
            let inside = with_kernel(kernel, super::kernel);
            assert_eq!(inside.is_ok(), kernel.available());
            if let Ok(k) = inside {
                assert_eq!(k, kernel);
            }
        }
        assert_eq!(Kernel::from_name(" AVX2 "), Some(Kernel::Avx2));
        assert_eq!(Kernel::from_name("neon"), None);
        assert!(Kernel::detected().available());
        // The override ends with the call, also when it unwinds.
        let before = kernel();
        let _ = std::panic::catch_unwind(|| {
            with_kernel(Kernel::Portable, || panic!("inside")).unwrap();
        });
        assert_eq!(kernel(), before);
    }

    #[test]
    fn matches_the_definition_at_an_encoder_ffn_shape() {
        // The encoder FFN's second product at a reduced token count: k = 2048 is 8 blocks.
        check(97, 2048, 256, true, false, false);
        check(97, 256, 2048, true, false, true);
    }

    #[test]
    fn relu_keeps_nan_and_zeroes_negatives() {
        let (m, k, n) = (3, 2, 17);
        let mut x = vec![1.0f32; m * k];
        x[0] = f32::NAN;
        x[2] = -1.0;
        x[3] = -1.0;
        let w = vec![1.0f32; k * n];
        let pw = PackedWeights::pack(&w, k, n).unwrap();
        let mut y = vec![0.0f32; m * n];
        linear(
            &x,
            m,
            &pw,
            Epilogue {
                relu: true,
                ..Epilogue::default()
            },
            &mut y,
        )
        .unwrap();
        assert!(y[..n].iter().all(|v| v.is_nan()), "{:?}", &y[..n]);
        assert!(y[n..2 * n].iter().all(|&v| v == 0.0), "{:?}", &y[n..2 * n]);
        assert!(y[2 * n..].iter().all(|&v| v == 2.0), "{:?}", &y[2 * n..]);
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() {
        let (m, k, n) = (301, 600, 530);
        let x = values(m * k, 4);
        let pw = PackedWeights::pack(&values(k * n, 5), k, n).unwrap();
        let b = values(n, 6);
        let ep = Epilogue {
            bias: Some(&b),
            row_bias: None,
            relu: true,
            gelu: false,
        };
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut y = vec![0.0f32; m * n];
            pool.install(|| linear(&x, m, &pw, ep, &mut y).unwrap());
            y
        };
        let one = run(1);
        for threads in [2, 3] {
            let y = run(threads);
            assert!(
                one.iter().zip(&y).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{threads} threads differ from 1"
            );
        }
    }

    #[test]
    fn wrong_lengths_are_errors() {
        let pw = PackedWeights::pack(&[1.0; 12], 3, 4).unwrap();
        let mut y = vec![0.0f32; 8];
        let ep = Epilogue::default();
        assert!(matches!(
            linear(&[0.0; 5], 2, &pw, ep, &mut y),
            Err(Error::Shape(_) | Error::ShapeMismatch { .. })
        ));
        assert!(matches!(
            linear(&[0.0; 6], 2, &pw, ep, &mut y[..7]),
            Err(Error::Shape(_) | Error::ShapeMismatch { .. })
        ));
        let short = Epilogue {
            bias: Some(&[0.0; 3]),
            ..Epilogue::default()
        };
        assert!(matches!(
            linear(&[0.0; 6], 2, &pw, short, &mut y),
            Err(Error::Shape(_) | Error::ShapeMismatch { .. })
        ));
        assert!(matches!(
            PackedWeights::pack(&[0.0; 11], 3, 4),
            Err(Error::Shape(_) | Error::ShapeMismatch { .. })
        ));
        assert!(matches!(
            PackedWeights::pack(&[], usize::MAX, 2),
            Err(Error::Shape(_) | Error::ShapeMismatch { .. })
        ));
    }

    #[test]
    fn the_gelu_epilogue_gives_the_bits_of_the_product_then_gelu() {
        // Swin's MLP shapes in small (k across blocks, partial panels, every tile height), every
        // kernel, one and three threads.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        for &(m, k, n) in &[
            (49, 96, 384),
            (13, 300, 37),
            (200, 257, 270),
            (1, 3, 1),
            (0, 4, 4),
        ] {
            let x = values(m * k, 5);
            let w = PackedWeights::pack(&values(k * n, 6), k, n).unwrap();
            let b = values(n, 7);
            let plain = Epilogue {
                bias: Some(&b),
                ..Epilogue::default()
            };
            let fused = Epilogue {
                gelu: true,
                ..plain
            };
            for kernel in [Kernel::Portable, Kernel::Avx2, Kernel::Avx512] {
                if !kernel.available() {
                    continue;
                }
                let mut want = vec![f32::NAN; m * n];
                with_kernel(kernel, || linear(&x, m, &w, plain, &mut want).unwrap()).unwrap();
                crate::ops::unary::apply_in_place(crate::ops::unary::Unary::GeluExact, &mut want);
                for threads in [1, 3] {
                    let mut got = vec![f32::NAN; m * n];
                    let mut run = || {
                        with_kernel(kernel, || linear(&x, m, &w, fused, &mut got).unwrap()).unwrap()
                    };
                    if threads == 1 {
                        run();
                    } else {
                        pool.install(run);
                    }
                    assert!(
                        got.iter()
                            .zip(&want)
                            .all(|(g, w)| g.to_bits() == w.to_bits()),
                        "{m}x{k}x{n} {} threads {threads}",
                        kernel.name()
                    );
                }
            }
        }
    }
}
