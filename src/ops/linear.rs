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

use crate::error::{Error, Result};
use rayon::prelude::*;

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
    let row_blocks = m.div_ceil(MC);
    // Narrower column blocks when there are few row blocks, so that every thread gets work (the k
    // blocking is unchanged, and so are the bits;
    // down to one tile's width).
    let kernel = kernel();
    let min_nc = kernel.tile_columns();
    let want = 4 * rayon::current_num_threads();
    let mut nc = NC;
    while nc > min_nc && row_blocks * n.div_ceil(nc) < want {
        nc /= 2;
    }
    let col_blocks = n.div_ceil(nc);
    let out = OutPtr(y.as_mut_ptr());
    let task = |t: usize| {
        let (rb, cb) = (t / col_blocks, t % col_blocks);
        let rows = rb * MC..(rb * MC + MC).min(m);
        let cols = cb * nc..(cb * nc + nc).min(n);
        // SAFETY: task `t` writes only rows `rows` × columns `cols` of `y` (ylen elements, checked
        // above); the (row block, column block) pairs of distinct tasks are distinct, so no two tasks
        // write the same element, and `y` outlives the (joined) parallel loop.
        unsafe { block(x, strides, w, epilogue, out, rows, cols, kernel) };
    };
    let tasks = row_blocks * col_blocks;
    if tasks == 1
        || m.saturating_mul(k).saturating_mul(n) < MIN_PARALLEL_MACS
        || rayon::current_num_threads() < 2
    {
        (0..tasks).for_each(task);
    } else {
        (0..tasks).into_par_iter().for_each(task);
    }
    Ok(())
}

/// The output pointer shared by the tasks of one call.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: the tasks write disjoint elements (see `linear`), so sharing the pointer is sound.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

/// The micro-kernel of the products: what runs the tiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// Plain Rust, any target: separate multiplies and adds.
    Portable,
    /// x86-64 AVX2 + FMA: 6 × 16 tiles.
    Avx2,
    /// x86-64 AVX-512F (with AVX2 + FMA): 12 × 32 tiles, the bits of [`Kernel::Avx2`].
    Avx512,
}

impl Kernel {
    /// The fastest kernel this CPU runs.
    pub fn detected() -> Kernel {
        if Kernel::Avx512.available() {
            Kernel::Avx512
        } else if Kernel::Avx2.available() {
            Kernel::Avx2
        } else {
            Kernel::Portable
        }
    }

    /// Whether this CPU has the instructions of this kernel.
    pub fn available(self) -> bool {
        match self {
            Kernel::Portable => true,
            Kernel::Avx2 => avx2_fma(),
            Kernel::Avx512 => {
                #[cfg(target_arch = "x86_64")]
                {
                    avx2_fma() && std::is_x86_feature_detected!("avx512f")
                }
                #[cfg(not(target_arch = "x86_64"))]
                {
                    false
                }
            }
        }
    }

    /// Its name, as [`KERNEL_ENV`] takes it.
    pub fn name(self) -> &'static str {
        match self {
            Kernel::Portable => "portable",
            Kernel::Avx2 => "avx2",
            Kernel::Avx512 => "avx512",
        }
    }

    /// The kernel named `name` (`portable`, `avx2`, `avx512`).
    pub fn from_name(name: &str) -> Option<Kernel> {
        [Kernel::Portable, Kernel::Avx2, Kernel::Avx512]
            .into_iter()
            .find(|k| k.name() == name.trim().to_ascii_lowercase())
    }

    /// Columns of one tile: the narrowest column block worth a task.
    fn tile_columns(self) -> usize {
        match self {
            Kernel::Avx512 => 2 * NR,
            _ => NR,
        }
    }
}

/// Environment variable naming the kernel the products use instead of the detected one (e.g.
/// `avx2` on an AVX-512 machine, to measure one against the other). A kernel this CPU lacks, or an
/// unknown name, is reported once and the detected kernel used.
pub const KERNEL_ENV: &str = "REFERDINO_CPU_KERNEL";

/// The kernel of this process: [`KERNEL_ENV`]'s if it names one this CPU runs, else the detected.
fn process_kernel() -> Kernel {
    static CHOSEN: std::sync::OnceLock<Kernel> = std::sync::OnceLock::new();
    *CHOSEN.get_or_init(|| {
        let detected = Kernel::detected();
        let Ok(name) = std::env::var(KERNEL_ENV) else {
            return detected;
        };
        match Kernel::from_name(&name) {
            Some(k) if k.available() => k,
            Some(k) => {
                log::warn!(
                    "{KERNEL_ENV}={name}: this CPU lacks the {} kernel's instructions; using {}",
                    k.name(),
                    detected.name()
                );
                detected
            }
            None => {
                log::warn!(
                    "{KERNEL_ENV}={name}: not a kernel (portable, avx2, avx512); using {}",
                    detected.name()
                );
                detected
            }
        }
    })
}

std::thread_local! {
    /// A kernel for the calls made from this thread instead of the process's ([`with_kernel`]).
    static OVERRIDE: std::cell::Cell<Option<Kernel>> = const { std::cell::Cell::new(None) };
}

/// The kernel a product called from this thread runs now.
pub fn kernel() -> Kernel {
    OVERRIDE.with(|k| k.get()).unwrap_or_else(process_kernel)
}

/// Runs `f` with the products called from this thread on `kernel` (tests and benchmarks compare
/// kernels in one process; the choice is made when a product is called, so its tasks on other
/// threads follow it). A kernel this CPU lacks is an error and `f` does not run.
pub fn with_kernel<R>(kernel: Kernel, f: impl FnOnce() -> R) -> Result<R> {
    if !kernel.available() {
        return Err(Error::Config(format!(
            "the {} kernel needs instructions this CPU lacks",
            kernel.name()
        )));
    }
    let before = OVERRIDE.with(|k| k.replace(Some(kernel)));
    // Restored on unwind as well, so a failed test leaves no override behind.
    struct Restore(Option<Kernel>);
    impl Drop for Restore {
        fn drop(&mut self) {
            OVERRIDE.with(|k| k.set(self.0));
        }
    }
    let _restore = Restore(before);
    Ok(f())
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

/// Whether this CPU runs the AVX2 + FMA kernel (otherwise the portable one runs).
pub fn avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
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

/// One output tile's operands.
struct TileArgs<'a> {
    /// Row 0 of the tile's `x` rows at the block's first `k` (row `i` at `i · ldx`).
    x: &'a [f32],
    ldx: usize,
    /// Length of this block of `k`.
    kc: usize,
    /// The panel's rows of this block (`kc × 16`).
    panel: &'a [f32],
    /// The next panel's rows of this block where the tile covers two panels (`width` > 16, only
    /// for kernels with [`Tile::PANELS`] = 2), else empty.
    next: &'a [f32],
    /// Element (0, 0) of the tile in `y` (row `i` at `i · ldy`).
    y: *mut f32,
    ldy: usize,
    /// Valid columns (≤ 16 per panel; the panel's padding columns are computed and dropped).
    width: usize,
    /// First block of `k`: the tile starts from 0 instead of `y`'s partial sum.
    first: bool,
    /// Last block of `k`: the bias and ReLU are applied.
    last: bool,
    bias: Option<&'a [f32]>,
    /// The tile's rows' entries of the per-row bias.
    row_bias: Option<&'a [f32]>,
    relu: bool,
}

/// A micro-kernel for tiles of `R` rows × 16 columns per panel.
trait Tile {
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
struct Portable;

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
struct Avx2;

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
struct Avx512;

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
        } = ep;
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
}
