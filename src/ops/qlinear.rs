//! INT8 linear layer: what the CPU backend runs for the products of a host INT8 engine
//! (`export --precision int8`, `--int8`), `y = Σₖ (x_q − 128) · W_q · (s_x · s_w[c]) + b[c]`,
//! instead of tract's float evaluation of the `DequantizeLinear → MatMul` pattern.
//!
//! The operands are those of the graph's QuantizeLinear / DequantizeLinear pairs
//! (`crate::onnx::precision::insert_qdq` with `activation_u8`): the activation `x_q` uint8 with
//! zero point [`ZERO_POINT`] and one scale `s_x`, the weight `W_q` `[k, n]` int8 with zero point 0
//! and one scale per output column `s_w[c]`. [`quantize_u8`] is ONNX `QuantizeLinear` of the
//! activation, [`QPackedWeights::quantize`] that of the weight (`round_half_to_even(v / s)`,
//! saturated), so the integers are the ones ONNX Runtime multiplies for the same graph.
//!
//! Numerics: the sum over `k` is exact (32-bit integers; [`QPackedWeights::pack`] refuses a `k`
//! for which it could overflow), then converted to f32 once, multiplied by the f32 product
//! `s_x · s_w[c]` and the bias added: the same bits on every kernel and thread count. Against the
//! float evaluation of the same graph (dequantized operands, f32 sum) the difference is the f32
//! rounding of that sum.
//!
//! Kernels: on x86-64 Linux with AMX-INT8 ([`QKernel::Amx`], Sapphire Rapids and later) blocks of
//! 32 rows × 32 columns in four accumulator tiles, 64 `k` per step: two input tiles (16 rows × 64
//! bytes of `x_q`, read in place) and two weight tiles (16 groups of a panel, the layout below is
//! the one `tdpbusd` reads), through inline assembly (stable Rust has no AMX intrinsics), then the
//! VNNI kernel's epilogue. On x86-64 with AVX-512 VNNI ([`QKernel::Vnni512`]) a tile of up to 12 rows × 32
//! columns accumulates in 24 registers of 16 32-bit sums, each `vpdpbusd` multiplying 4
//! neighbouring `k` of a row (u8, broadcast) by the same 4 `k` of 16 columns (i8) and adding the
//! 4 products: 64 multiply-adds an instruction against the f32 kernel's 16. The unsigned × signed
//! instruction sums `x_q · W_q`; the `128 · Σₖ W_q[·, c]` of the zero point is subtracted once per
//! output from a per-column sum made at packing. On aarch64 with the Armv8.2 dot product
//! ([`QKernel::Dotprod`], Jetson Orin's Cortex-A78AE) 4 × 16 tiles of `sdot` on the same layout,
//! signed × signed on `x_q − 128` (module `dotprod`). Elsewhere [`QKernel::Portable`] (the
//! reference of the tests; slower than the float products, so the CPU backend keeps the float
//! evaluation there: [`fast_kernel`]).
//!
//! Layout: the weight is stored in pairs of 16-column panels, `n` padded to a multiple of 32 with
//! zero columns and `k` to a multiple of 64 with zero rows (`padded_groups`); in a pair, group `g`
//! (rows `4g..4g + 4`) is 128 bytes: columns 0–15 then 16–31, each column's 4 rows together.

use super::linear::Epilogue;

#[cfg(target_arch = "aarch64")]
mod dotprod;
use crate::error::{Error, Result};
use rayon::prelude::*;

/// Zero point of the quantized activations (uint8; the int8 grid shifted by 128).
pub const ZERO_POINT: u8 = 128;
/// Columns of one panel pair (one output tile's width).
pub(super) const PAIR: usize = 32;
/// Rows of `k` one `vpdpbusd` lane sums.
pub(super) const GROUP: usize = 4;
/// Rows of the tallest output tile (VNNI).
pub const MR: usize = 12;
/// Bytes of `k` one AMX tile row holds (16 groups): the panels' `k` is padded to a multiple of it.
const KB: usize = 64;
/// Rows of one task.
pub(super) const MC: usize = 96;
/// Columns of one task (a multiple of [`PAIR`]).
pub(super) const NC: usize = 256;
/// Multiply-adds below which a call stays on the calling thread.
pub(super) const MIN_PARALLEL_MACS: usize = 1 << 21;
/// Elements below which [`quantize_u8`] stays on the calling thread.
const MIN_PARALLEL_QUANTIZE: usize = 1 << 16;

/// The micro-kernel of the integer products.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QKernel {
    /// Plain Rust, any target.
    Portable,
    /// x86-64 AVX-512F + BW + VNNI: 12 × 32 tiles of `vpdpbusd`.
    Vnni512,
    /// x86-64 AMX-INT8 (Linux): 32 × 32 blocks of four `tdpbusd` tiles, the VNNI epilogue.
    Amx,
    /// aarch64 NEON with the Armv8.2 dot product (`sdot`; Cortex-A76/A78, Jetson Orin's CPU):
    /// 4 × 16 tiles in 16 registers of 4 32-bit sums.
    Dotprod,
}

impl QKernel {
    /// Every kernel, the portable one first.
    pub const ALL: [QKernel; 4] = [
        QKernel::Portable,
        QKernel::Vnni512,
        QKernel::Amx,
        QKernel::Dotprod,
    ];

    /// The fastest kernel this CPU runs.
    pub fn detected() -> QKernel {
        if QKernel::Amx.available() {
            QKernel::Amx
        } else if QKernel::Vnni512.available() {
            QKernel::Vnni512
        } else if QKernel::Dotprod.available() {
            QKernel::Dotprod
        } else {
            QKernel::Portable
        }
    }

    /// Whether this CPU has the instructions of this kernel.
    pub fn available(self) -> bool {
        match self {
            QKernel::Portable => true,
            QKernel::Vnni512 => {
                #[cfg(target_arch = "x86_64")]
                {
                    std::is_x86_feature_detected!("avx512f")
                        && std::is_x86_feature_detected!("avx512bw")
                        && std::is_x86_feature_detected!("avx512vnni")
                }
                #[cfg(not(target_arch = "x86_64"))]
                {
                    false
                }
            }
            QKernel::Amx => {
                #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
                {
                    amx_ready()
                }
                #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
                {
                    false
                }
            }
            QKernel::Dotprod => {
                #[cfg(target_arch = "aarch64")]
                {
                    std::arch::is_aarch64_feature_detected!("dotprod")
                }
                #[cfg(not(target_arch = "aarch64"))]
                {
                    false
                }
            }
        }
    }

    /// Its name (logs, benchmarks).
    pub fn name(self) -> &'static str {
        match self {
            QKernel::Portable => "portable",
            QKernel::Vnni512 => "avx512-vnni",
            QKernel::Amx => "amx",
            QKernel::Dotprod => "neon-dotprod",
        }
    }
}

/// Environment variable naming the integer kernel instead of the detected one (`amx`,
/// `avx512-vnni`, `neon-dotprod`, `portable`: e.g. VNNI on an AMX machine, to measure one against the other, or
/// where a virtual machine mishandles the tile state). `portable` turns the integer path off
/// ([`fast_kernel`]). A kernel this CPU lacks, or an unknown name, is reported once and the
/// detected kernel used.
pub const QKERNEL_ENV: &str = "REFERDINO_CPU_INT8_KERNEL";

impl QKernel {
    /// The kernel of this process: [`QKERNEL_ENV`]'s if it names one this CPU runs, else the
    /// detected one.
    pub fn process() -> QKernel {
        static CHOSEN: std::sync::OnceLock<QKernel> = std::sync::OnceLock::new();
        *CHOSEN.get_or_init(|| {
            let detected = QKernel::detected();
            let Ok(name) = std::env::var(QKERNEL_ENV) else {
                return detected;
            };
            let all = QKernel::ALL;
            match all.into_iter().find(|k| k.name() == name.trim()) {
                Some(k) if k.available() => k,
                Some(k) => {
                    log::warn!(
                        "{QKERNEL_ENV}={name}: this CPU lacks the {} kernel's instructions; using {}",
                        k.name(),
                        detected.name()
                    );
                    detected
                }
                None => {
                    log::warn!(
                        "{QKERNEL_ENV}={name}: not an integer kernel (amx, avx512-vnni, \
                         neon-dotprod, portable); using {}",
                        detected.name()
                    );
                    detected
                }
            }
        })
    }
}

/// The integer kernel worth running on this CPU instead of the float products, if any: the CPU
/// backend runs a host INT8 engine's products on it, and keeps tract's float evaluation of the
/// quantized graph where there is none (the portable kernel is slower than the f32 products).
pub fn fast_kernel() -> Option<QKernel> {
    Some(QKernel::process()).filter(|&k| k != QKernel::Portable)
}

/// A constant int8 `[k, n]` weight matrix with its per-column scales, packed for [`qlinear`].
#[derive(Clone, PartialEq)]
pub struct QPackedWeights {
    k: usize,
    n: usize,
    /// `⌈n / 32⌉` pairs of [`padded_groups`] groups of 128 bytes (module docs).
    panels: Vec<i8>,
    /// `128 · Σₖ W_q[kk, c]` per column, zero-padded to a multiple of 32.
    zero_sums: Vec<i32>,
    /// `s_w[c]`, zero-padded to a multiple of 32.
    scales: Vec<f32>,
}

impl std::fmt::Debug for QPackedWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QPackedWeights[{}, {}]", self.k, self.n)
    }
}

/// Groups of 4 rows of `k` per panel: `k` padded with zero rows to a multiple of [`KB`], so that an
/// AMX tile of 16 groups never reads past a panel.
pub(super) fn padded_groups(k: usize) -> usize {
    k.div_ceil(KB) * (KB / GROUP)
}

/// Where weight element (row `kk`, column `c`) lies in the panels of a matrix of `groups` padded
/// groups (module docs, "Layout").
#[inline(always)]
pub(super) fn panel_index(groups: usize, kk: usize, c: usize) -> usize {
    (((c / PAIR) * groups + kk / GROUP) * PAIR + c % PAIR) * GROUP + kk % GROUP
}

/// ONNX `QuantizeLinear` of one value to int8, zero point 0: `round_half_to_even(v / s)`, saturated.
fn quantize_i8(v: f32, s: f32) -> i8 {
    (v / s).round_ties_even().clamp(-128.0, 127.0) as i8
}

impl QPackedWeights {
    /// Packs the row-major int8 `[k, n]` matrix `w` with its `n` column scales (finite, > 0).
    pub fn pack(w: &[i8], k: usize, n: usize, scales: &[f32]) -> Result<Self> {
        let len = k
            .checked_mul(n)
            .ok_or_else(|| Error::Shape(format!("qlinear: weight {k} x {n} overflows")))?;
        super::check_len("qlinear", "weight", w.len(), len)?;
        super::check_len("qlinear", "weight scales", scales.len(), n)?;
        // |Σ x_q · W_q| ≤ k · 255 · 128 must fit an i32 (the VNNI sums are not saturating).
        if k > i32::MAX as usize / (255 * 128) {
            return Err(Error::Shape(format!(
                "qlinear: k = {k} is too long for exact 32-bit sums"
            )));
        }
        if let Some(s) = scales.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(Error::Shape(format!(
                "qlinear: weight scale {s} is not finite and > 0"
            )));
        }
        let pairs = n.div_ceil(PAIR);
        let groups = padded_groups(k);
        let mut panels = vec![0i8; pairs * groups * PAIR * GROUP];
        let mut zero_sums = vec![0i32; pairs * PAIR];
        for (kk, row) in w.chunks_exact(n.max(1)).enumerate().take(k) {
            for (c, &v) in row.iter().enumerate() {
                panels[panel_index(groups, kk, c)] = v;
                zero_sums[c] += i32::from(ZERO_POINT) * i32::from(v);
            }
        }
        let mut padded = scales.to_vec();
        padded.resize(pairs * PAIR, 0.0);
        Ok(QPackedWeights {
            k,
            n,
            panels,
            zero_sums,
            scales: padded,
        })
    }

    /// Quantizes the row-major f32 `[k, n]` matrix `w` per column with `scales` (ONNX
    /// `QuantizeLinear`, int8, zero point 0, axis 1) and packs it.
    pub fn quantize(w: &[f32], k: usize, n: usize, scales: &[f32]) -> Result<Self> {
        // The scales index the columns here; `pack` checks everything else.
        super::check_len("qlinear", "weight scales", scales.len(), n)?;
        let q: Vec<i8> = w
            .iter()
            .enumerate()
            .map(|(i, &v)| quantize_i8(v, scales[i % n.max(1)]))
            .collect();
        Self::pack(&q, k, n, scales)
    }

    /// Rows of the matrix (the length of each sum).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Columns of the matrix (output features).
    pub fn n(&self) -> usize {
        self.n
    }

    /// The int8 `[k, n]` matrix back in row-major order.
    pub fn unpack(&self) -> Vec<i8> {
        let groups = padded_groups(self.k);
        let mut w = vec![0i8; self.k * self.n];
        for kk in 0..self.k {
            for c in 0..self.n {
                w[kk * self.n + c] = self.panels[panel_index(groups, kk, c)];
            }
        }
        w
    }

    /// The column scales.
    pub fn scales(&self) -> &[f32] {
        &self.scales[..self.n]
    }
}

/// ONNX `QuantizeLinear` of `x` to uint8 with zero point [`ZERO_POINT`]:
/// `clamp(round_half_to_even(x / scale) + 128, 0, 255)` (NaN → 0). Threads: the rayon pool the
/// caller runs in.
pub fn quantize_u8(x: &[f32], scale: f32, out: &mut [u8]) -> Result<()> {
    super::check_len("quantize", "output", out.len(), x.len())?;
    if !(scale.is_finite() && scale > 0.0) {
        return Err(Error::Shape(format!(
            "quantize: scale {scale} is not finite and > 0"
        )));
    }
    let run = |(x, out): (&[f32], &mut [u8])| quantize_serial(x, scale, out);
    if x.len() < MIN_PARALLEL_QUANTIZE || rayon::current_num_threads() < 2 {
        run((x, out));
    } else {
        let chunk = x.len().div_ceil(4 * rayon::current_num_threads()).max(4096);
        x.par_chunks(chunk)
            .zip(out.par_chunks_mut(chunk))
            .for_each(run);
    }
    Ok(())
}

/// [`quantize_u8`] on the calling thread (`scale` checked; `out` as long as `x`).
pub(super) fn quantize_serial(x: &[f32], scale: f32, out: &mut [u8]) {
    debug_assert_eq!(x.len(), out.len());
    #[cfg(target_arch = "x86_64")]
    if QKernel::Vnni512.available() {
        // SAFETY: AVX-512F and BW are present (`QKernel::Vnni512` needs them); the slices have
        // the same length (the callers').
        unsafe { quantize_avx512(x, scale, out) };
        return;
    }
    quantize_portable(x, scale, out);
}

/// ONNX `QuantizeLinear` to uint8 (zero point 128) then `DequantizeLinear` back, in place:
/// `(clamp(round_half_to_even(x / scale) + 128, 0, 255) − 128) · scale` (NaN → −128 · scale), the
/// value a product of two dequantized activations reads. Threads: the rayon pool the caller runs in.
pub fn fake_quantize_u8(x: &mut [f32], scale: f32) -> Result<()> {
    if !(scale.is_finite() && scale > 0.0) {
        return Err(Error::Shape(format!(
            "fake quantize: scale {scale} is not finite and > 0"
        )));
    }
    let vnni = QKernel::Vnni512.available();
    let run = |x: &mut [f32]| {
        #[cfg(target_arch = "x86_64")]
        if vnni {
            // SAFETY: AVX-512F is present (`QKernel::Vnni512` needs it).
            unsafe { fake_quantize_avx512(x, scale) };
            return;
        }
        let _ = vnni;
        fake_quantize_portable(x, scale);
    };
    if x.len() < MIN_PARALLEL_QUANTIZE || rayon::current_num_threads() < 2 {
        run(x);
    } else {
        let chunk = x.len().div_ceil(4 * rayon::current_num_threads()).max(4096);
        x.par_chunks_mut(chunk).for_each(run);
    }
    Ok(())
}

fn fake_quantize_portable(x: &mut [f32], scale: f32) {
    for v in x {
        *v = (f32::from(grid(*v, scale)) - f32::from(ZERO_POINT)) * scale;
    }
}

/// One value on the uint8 grid: `clamp(round_half_to_even(v / scale) + 128, 0, 255)` (NaN → 0).
#[inline(always)]
pub(super) fn grid(v: f32, scale: f32) -> u8 {
    ((v / scale).round_ties_even() + f32::from(ZERO_POINT)).clamp(0.0, 255.0) as u8
}

/// [`grid`] of 16 values, as f32 (max(NaN, 0) is 0, the second operand: NaN → 0 as there).
///
/// # Safety
/// AVX-512F is present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn grid16(
    v: std::arch::x86_64::__m512,
    scale: std::arch::x86_64::__m512,
) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let r = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_div_ps(v, scale),
    );
    let c = _mm512_add_ps(r, _mm512_set1_ps(f32::from(ZERO_POINT)));
    _mm512_min_ps(_mm512_max_ps(c, _mm512_setzero_ps()), _mm512_set1_ps(255.0))
}

/// # Safety
/// AVX-512F is present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fake_quantize_avx512(x: &mut [f32], scale: f32) {
    use std::arch::x86_64::*;
    let body = x.len() / 16 * 16;
    let s = _mm512_set1_ps(scale);
    let zp = _mm512_set1_ps(f32::from(ZERO_POINT));
    for i in (0..body).step_by(16) {
        // SAFETY: i + 16 ≤ body ≤ x.len().
        unsafe {
            let p = x.as_mut_ptr().add(i);
            let c = grid16(_mm512_loadu_ps(p), s);
            _mm512_storeu_ps(p, _mm512_mul_ps(_mm512_sub_ps(c, zp), s));
        }
    }
    fake_quantize_portable(&mut x[body..], scale);
}

fn quantize_portable(x: &[f32], scale: f32, out: &mut [u8]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o = grid(v, scale);
    }
}

/// # Safety
/// AVX-512F and BW are present; `out.len() == x.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn quantize_avx512(x: &[f32], scale: f32, out: &mut [u8]) {
    use std::arch::x86_64::*;
    let body = x.len() / 16 * 16;
    let s = _mm512_set1_ps(scale);
    for i in (0..body).step_by(16) {
        // SAFETY: i + 16 ≤ body ≤ x.len() = out.len().
        unsafe {
            let c = grid16(_mm512_loadu_ps(x.as_ptr().add(i)), s);
            let b = _mm512_cvtusepi32_epi8(_mm512_cvtps_epi32(c));
            _mm_storeu_si128(out.as_mut_ptr().add(i) as *mut __m128i, b);
        }
    }
    quantize_portable(&x[body..], scale, &mut out[body..]);
}

/// `y[m, n] = (x_q[m, k] − 128) · W_q · (x_scale · s_w)`, then the epilogue's bias, ReLU and exact
/// GELU (in that order, as [`crate::ops::linear::linear`]; a per-row bias is not supported), `x_q`
/// and `y` row-major, on the [`QKernel::process`] kernel. Threads: the rayon pool the caller runs
/// in (blocks of rows and columns; never a sum).
pub fn qlinear(
    xq: &[u8],
    m: usize,
    w: &QPackedWeights,
    x_scale: f32,
    ep: Epilogue<'_>,
    y: &mut [f32],
) -> Result<()> {
    qlinear_on(QKernel::process(), xq, m, w, x_scale, ep, y)
}

/// [`qlinear`] on `kernel` (an error if this CPU lacks it).
pub fn qlinear_on(
    kernel: QKernel,
    xq: &[u8],
    m: usize,
    w: &QPackedWeights,
    x_scale: f32,
    ep: Epilogue<'_>,
    y: &mut [f32],
) -> Result<()> {
    products(kernel, xq, m, w, x_scale, ep, Output::F32(y))
}

/// [`qlinear`] followed by [`quantize_u8`] of its output at `y_scale`, each task quantizing its
/// block while it is in cache: the same bytes as the two calls, without the f32 output ever in
/// memory (an MLP's hidden layer is 4× wider than its input).
#[allow(clippy::too_many_arguments)] // qlinear's operands and the output's scale
pub fn qlinear_quantized(
    xq: &[u8],
    m: usize,
    w: &QPackedWeights,
    x_scale: f32,
    ep: Epilogue<'_>,
    y_scale: f32,
    yq: &mut [u8],
) -> Result<()> {
    qlinear_quantized_on(QKernel::process(), xq, m, w, x_scale, ep, y_scale, yq)
}

/// [`qlinear_quantized`] on `kernel` (an error if this CPU lacks it).
#[allow(clippy::too_many_arguments)] // as qlinear_quantized, and the kernel
pub fn qlinear_quantized_on(
    kernel: QKernel,
    xq: &[u8],
    m: usize,
    w: &QPackedWeights,
    x_scale: f32,
    ep: Epilogue<'_>,
    y_scale: f32,
    yq: &mut [u8],
) -> Result<()> {
    if !(y_scale.is_finite() && y_scale > 0.0) {
        return Err(Error::Shape(format!(
            "qlinear: output scale {y_scale} is not finite and > 0"
        )));
    }
    let out = Output::U8 {
        y: yq,
        scale: y_scale,
    };
    products(kernel, xq, m, w, x_scale, ep, out)
}

/// Where a product's results go.
enum Output<'a> {
    /// f32, row-major.
    F32(&'a mut [f32]),
    /// [`quantize_u8`] at `scale` of each value, row-major.
    U8 { y: &'a mut [u8], scale: f32 },
}

impl Output<'_> {
    fn len(&self) -> usize {
        match self {
            Output::F32(y) => y.len(),
            Output::U8 { y, .. } => y.len(),
        }
    }
}

/// The output of a quantizing call that its tasks share, each writing only its own block.
#[derive(Clone, Copy)]
struct BytePtr(*mut u8);
// SAFETY: the tasks of one call write disjoint elements (`for_each_block`), so sharing the pointer
// is sound.
unsafe impl Send for BytePtr {}
// SAFETY: as above.
unsafe impl Sync for BytePtr {}

impl BytePtr {
    /// The address of byte `i`.
    ///
    /// # Safety
    /// `i` lies in the output this addresses.
    #[inline(always)]
    unsafe fn at(self, i: usize) -> *mut u8 {
        // SAFETY: the caller's contract.
        unsafe { self.0.add(i) }
    }
}

/// Where a task's f32 results go: element (r, c) of the call's `m × n` output at
/// `ptr + (r − r0)·ld + (c − c0)`: the output itself (`r0 = c0 = 0`, `ld = n`) or the task's
/// scratch block (its first row and column, `ld` its width) when the call quantizes its output.
#[derive(Clone, Copy)]
pub(super) struct Dst {
    pub(super) ptr: *mut f32,
    pub(super) ld: usize,
    pub(super) r0: usize,
    pub(super) c0: usize,
}

// SAFETY: the tasks of one call write disjoint elements of the output (`for_each_block`), and a
// scratch block is its task's own, so sharing the pointer is sound.
unsafe impl Send for Dst {}
// SAFETY: as above.
unsafe impl Sync for Dst {}

impl Dst {
    /// The address of element (r, c).
    ///
    /// # Safety
    /// (r, c) lies in the region this addresses (`r ≥ r0`, `c ≥ c0`).
    #[inline(always)]
    unsafe fn at(self, r: usize, c: usize) -> *mut f32 {
        // SAFETY: the caller's contract.
        unsafe { self.ptr.add((r - self.r0) * self.ld + (c - self.c0)) }
    }
}

std::thread_local! {
    /// A quantizing task's f32 block (at most [`MC`] × [`NC`]), reused by every call on the thread.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// ReLU then exact GELU, as the epilogue asks, on values the kernel has just written.
fn activation(ep: &Epilogue<'_>, v: &mut [f32]) {
    // Separate simple loops: each vectorises (the GELU dispatched: this is compiled for the
    // baseline instruction set).
    if ep.relu {
        v.iter_mut()
            .for_each(|v| *v = if *v < 0.0 { 0.0 } else { *v });
    }
    if ep.gelu {
        crate::ops::unary::apply_serial(crate::ops::unary::Unary::GeluExact, v);
    }
}

/// The checks and the parallel loop of [`qlinear_on`] and [`qlinear_quantized_on`].
fn products(
    kernel: QKernel,
    xq: &[u8],
    m: usize,
    w: &QPackedWeights,
    x_scale: f32,
    ep: Epilogue<'_>,
    out: Output<'_>,
) -> Result<()> {
    let bias = ep.bias;
    if ep.row_bias.is_some() {
        return Err(Error::Shape("qlinear: no per-row bias".into()));
    }
    if !kernel.available() {
        return Err(Error::Config(format!(
            "the {} kernel needs instructions this CPU lacks",
            kernel.name()
        )));
    }
    let (k, n) = (w.k, w.n);
    let xlen = m
        .checked_mul(k)
        .ok_or_else(|| Error::Shape(format!("qlinear: input {m} x {k} overflows")))?;
    super::check_len("qlinear", "input", xq.len(), xlen)?;
    let ylen = m
        .checked_mul(n)
        .ok_or_else(|| Error::Shape(format!("qlinear: output {m} x {n} overflows")))?;
    super::check_len("qlinear", "output", out.len(), ylen)?;
    if let Some(b) = bias {
        super::check_len("qlinear", "bias", b.len(), n)?;
    }
    if !(x_scale.is_finite() && x_scale > 0.0) {
        return Err(Error::Shape(format!(
            "qlinear: input scale {x_scale} is not finite and > 0"
        )));
    }
    if ylen == 0 {
        return Ok(());
    }
    let args = Operands {
        xq,
        w: w.view(),
        x_scale,
        bias,
    };
    let serial = m.saturating_mul(k).saturating_mul(n) < MIN_PARALLEL_MACS;
    let activate = ep.relu || ep.gelu;
    // Column blocks down to one panel pair (one tile's width) when rows are few.
    match out {
        Output::F32(y) => {
            let dst = Dst {
                ptr: y.as_mut_ptr(),
                ld: n,
                r0: 0,
                c0: 0,
            };
            super::for_each_block(m, n, MC, NC, PAIR, serial, |rows, cols| {
                // SAFETY: each block writes only its rows × columns of `y` (ylen elements,
                // checked above); distinct blocks are disjoint, and `y` outlives the (joined)
                // loop; `kernel` is available (checked above).
                unsafe { block(&args, dst, rows.clone(), cols.clone(), kernel) };
                if activate {
                    for r in rows {
                        // SAFETY: row r, columns `cols` of `y` are this task's and were just
                        // written.
                        let row = unsafe {
                            std::slice::from_raw_parts_mut(dst.at(r, cols.start), cols.len())
                        };
                        activation(&ep, row);
                    }
                }
            });
        }
        Output::U8 { y, scale } => {
            let yq = BytePtr(y.as_mut_ptr());
            super::for_each_block(m, n, MC, NC, PAIR, serial, |rows, cols| {
                SCRATCH.with(|buf| {
                    let mut buf = buf.borrow_mut();
                    let (h, width) = (rows.len(), cols.len());
                    if buf.len() < h * width {
                        // Once per thread: every block fits MC × NC.
                        buf.resize((MC * NC).max(h * width), 0.0);
                    }
                    let dst = Dst {
                        ptr: buf.as_mut_ptr(),
                        ld: width,
                        r0: rows.start,
                        c0: cols.start,
                    };
                    // SAFETY: the block's rows × columns map onto the first h · width elements of
                    // this thread's scratch (resized above); `kernel` is available (checked above).
                    unsafe { block(&args, dst, rows.clone(), cols.clone(), kernel) };
                    let block_values = &mut buf[..h * width];
                    if activate {
                        activation(&ep, block_values);
                    }
                    for (i, r) in rows.enumerate() {
                        // SAFETY: row r, columns `cols` of the output (ylen bytes, checked above)
                        // are this task's; the output outlives the (joined) loop.
                        let dst_row = unsafe {
                            std::slice::from_raw_parts_mut(yq.at(r * n + cols.start), width)
                        };
                        quantize_serial(&block_values[i * width..][..width], scale, dst_row);
                    }
                });
            });
        }
    }
    Ok(())
}

/// A packed int8 right operand as the kernels read it: a [`QPackedWeights`]' buffers, or those
/// [`super::qmatmul`] packs per call into its scratch (the same layout).
#[derive(Clone, Copy)]
pub(super) struct QPanels<'a> {
    pub(super) k: usize,
    /// `⌈n / 32⌉` pairs of [`padded_groups`] groups of 128 bytes.
    pub(super) panels: &'a [i8],
    /// `128 · Σₖ W_q[kk, c]` per column, zero-padded to a multiple of 32 (read by the x86 kernels;
    /// the Arm one flips `x_q` to signed instead).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(super) zero_sums: &'a [i32],
    /// The column scales, zero-padded to a multiple of 32.
    pub(super) scales: &'a [f32],
}

impl QPackedWeights {
    fn view(&self) -> QPanels<'_> {
        QPanels {
            k: self.k,
            panels: &self.panels,
            zero_sums: &self.zero_sums,
            scales: &self.scales,
        }
    }
}

/// One call's operands.
pub(super) struct Operands<'a> {
    pub(super) xq: &'a [u8],
    pub(super) w: QPanels<'a>,
    pub(super) x_scale: f32,
    pub(super) bias: Option<&'a [f32]>,
}

/// One task: rows × columns of `y` (`cols.start` a multiple of 32).
///
/// # Safety
/// `out` points at the call's `m × n` writable f32; `rows` and `cols` lie inside it and no other
/// thread touches that block during the call; `kernel` is available on this CPU.
pub(super) unsafe fn block(
    a: &Operands<'_>,
    out: Dst,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    kernel: QKernel,
) {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller's contract; AVX-512F, BW and VNNI are present (`kernel`).
        QKernel::Vnni512 => unsafe { block_vnni(a, out, rows, cols) },
        #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
        // SAFETY: the caller's contract; AMX is usable in this process (`kernel`).
        QKernel::Amx => unsafe { block_amx(a, out, rows, cols) },
        #[cfg(target_arch = "aarch64")]
        // SAFETY: the caller's contract; the CPU has the dot product (`kernel`).
        QKernel::Dotprod => unsafe { dotprod::block(a, out, rows, cols) },
        // SAFETY: the caller's contract.
        _ => unsafe { block_portable(a, out, rows, cols) },
    }
}

/// The output tiles of one task, row-major: `rows` in runs of up to `mr` rows, `cols` in steps of
/// `step` columns; `tile(r, h, c, width)` for rows `r..r + h`, columns `c..c + width`.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[inline(always)]
fn for_each_tile(
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
    mr: usize,
    step: usize,
    mut tile: impl FnMut(usize, usize, usize, usize),
) {
    let mut r = rows.start;
    while r < rows.end {
        let h = mr.min(rows.end - r);
        let mut c = cols.start;
        while c < cols.end {
            tile(r, h, c, step.min(cols.end - c));
            c += step;
        }
        r += h;
    }
}

/// # Safety
/// As [`block`].
unsafe fn block_portable(
    a: &Operands<'_>,
    out: Dst,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
) {
    let k = a.w.k;
    let groups = padded_groups(k);
    for r in rows {
        let x = &a.xq[r * k..r * k + k];
        for c in cols.clone() {
            let mut acc = 0i32;
            for (kk, &xv) in x.iter().enumerate() {
                let wv = a.w.panels[panel_index(groups, kk, c)];
                acc += (i32::from(xv) - i32::from(ZERO_POINT)) * i32::from(wv);
            }
            let mut v = acc as f32 * (a.x_scale * a.w.scales[c]);
            if let Some(b) = a.bias {
                v += b[c];
            }
            // SAFETY: (r, c) lies in the task's block of `y` (the caller's contract).
            unsafe { *out.at(r, c) = v };
        }
    }
}

/// # Safety
/// As [`block`], with AVX-512F, BW and VNNI present.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn block_vnni(
    a: &Operands<'_>,
    out: Dst,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
) {
    for_each_tile(rows, cols, MR, PAIR, |r, h, c, width| {
        // SAFETY: rows r..r + h and columns c..c + width lie in the task's block (the caller's
        // contract); the pair c / 32 exists (c < n).
        unsafe {
            match h {
                12 => tile_vnni::<12>(a, out, r, c, width),
                11 => tile_vnni::<11>(a, out, r, c, width),
                10 => tile_vnni::<10>(a, out, r, c, width),
                9 => tile_vnni::<9>(a, out, r, c, width),
                8 => tile_vnni::<8>(a, out, r, c, width),
                7 => tile_vnni::<7>(a, out, r, c, width),
                6 => tile_vnni::<6>(a, out, r, c, width),
                5 => tile_vnni::<5>(a, out, r, c, width),
                4 => tile_vnni::<4>(a, out, r, c, width),
                3 => tile_vnni::<3>(a, out, r, c, width),
                2 => tile_vnni::<2>(a, out, r, c, width),
                _ => tile_vnni::<1>(a, out, r, c, width),
            }
        }
    });
}

/// Rows `r0..r0 + R` × columns `c0..c0 + width` of `y` (one panel pair, `c0` a multiple of 32).
///
/// # Safety
/// As [`block_vnni`]; the rows and columns lie in the task's block.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
unsafe fn tile_vnni<const R: usize>(
    a: &Operands<'_>,
    out: Dst,
    r0: usize,
    c0: usize,
    width: usize,
) {
    use std::arch::x86_64::*;
    let k = a.w.k;
    let groups = padded_groups(k);
    let full = k / GROUP;
    let pair = a.w.panels[panel_index(groups, 0, c0)..].as_ptr();
    let x = a.xq[r0 * k..].as_ptr();
    let mut acc = [[_mm512_setzero_si512(); 2]; R];
    for g in 0..full {
        // SAFETY: group g < ⌈k / 4⌉ of this pair is 128 bytes inside `panels`; row i's bytes
        // 4g..4g + 4 lie inside its k bytes of `xq` (4g + 4 ≤ k).
        unsafe {
            let w0 = _mm512_loadu_si512(pair.add(g * PAIR * GROUP) as *const _);
            let w1 = _mm512_loadu_si512(pair.add(g * PAIR * GROUP + 64) as *const _);
            for (i, acc) in acc.iter_mut().enumerate() {
                let xv = (x.add(i * k + g * GROUP) as *const i32).read_unaligned();
                let xb = _mm512_set1_epi32(xv);
                acc[0] = _mm512_dpbusd_epi32(acc[0], xb, w0);
                acc[1] = _mm512_dpbusd_epi32(acc[1], xb, w1);
            }
        }
    }
    if !k.is_multiple_of(GROUP) {
        // The last k % 4 rows: the missing bytes read as 0 (their weights are 0 anyway).
        // SAFETY: as above, reading only the row's remaining k − 4·full bytes.
        unsafe {
            let w0 = _mm512_loadu_si512(pair.add(full * PAIR * GROUP) as *const _);
            let w1 = _mm512_loadu_si512(pair.add(full * PAIR * GROUP + 64) as *const _);
            for (i, acc) in acc.iter_mut().enumerate() {
                let mut b = [0u8; 4];
                std::ptr::copy_nonoverlapping(x.add(i * k + full * GROUP), b.as_mut_ptr(), k % 4);
                let xb = _mm512_set1_epi32(i32::from_le_bytes(b));
                acc[0] = _mm512_dpbusd_epi32(acc[0], xb, w0);
                acc[1] = _mm512_dpbusd_epi32(acc[1], xb, w1);
            }
        }
    }
    // Constant indices into `acc` only: an index the compiler cannot resolve would keep the
    // accumulators in memory, stored back after every `vpdpbusd` of the loop above.
    // SAFETY: c0 < n (checked above); the tile's rows are in the task's block.
    unsafe {
        let cols = Columns16::at(a, c0, width);
        for (i, acc) in acc.iter().enumerate() {
            cols.finish(acc[0], out.at(r0 + i, c0));
        }
    }
    if width > 16 {
        // SAFETY: as above, c0 + 16 < n.
        unsafe {
            let cols = Columns16::at(a, c0 + 16, width - 16);
            for (i, acc) in acc.iter().enumerate() {
                cols.finish(acc[1], out.at(r0 + i, c0 + 16));
            }
        }
    }
}

/// The epilogue of 16 output columns `c..c + 16` (the first `valid` of them stored): zero-point
/// sums, combined scales and bias, loaded once per tile.
#[cfg(target_arch = "x86_64")]
struct Columns16 {
    zero_sums: std::arch::x86_64::__m512i,
    scale: std::arch::x86_64::__m512,
    bias: Option<std::arch::x86_64::__m512>,
    mask: std::arch::x86_64::__mmask16,
}

#[cfg(target_arch = "x86_64")]
impl Columns16 {
    /// # Safety
    /// AVX-512F is present; `c` < n is the first of 16 columns of one panel (a multiple of 16).
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn at(a: &Operands<'_>, c: usize, valid: usize) -> Self {
        use std::arch::x86_64::*;
        let valid = valid.min(16);
        let mask: __mmask16 = if valid == 16 {
            0xffff
        } else {
            (1u16 << valid) - 1
        };
        // SAFETY: `zero_sums` and `scales` hold every panel's 16 (padded) columns; the bias is
        // read only at the `valid` columns (masked), inside its n.
        unsafe {
            Columns16 {
                zero_sums: _mm512_loadu_si512(a.w.zero_sums.as_ptr().add(c) as *const _),
                scale: _mm512_mul_ps(
                    _mm512_set1_ps(a.x_scale),
                    _mm512_loadu_ps(a.w.scales.as_ptr().add(c)),
                ),
                bias: a
                    .bias
                    .map(|b| _mm512_maskz_loadu_ps(mask, b.as_ptr().add(c))),
                mask,
            }
        }
    }

    /// Stores `(acc − zero sums) · scale (+ bias)` at `dst`'s valid columns: the portable path's
    /// operations, lane by lane.
    ///
    /// # Safety
    /// AVX-512F is present; `dst` addresses this row's `valid` writable columns.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn finish(&self, acc: std::arch::x86_64::__m512i, dst: *mut f32) {
        use std::arch::x86_64::*;
        let s = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc, self.zero_sums));
        let mut v = _mm512_mul_ps(s, self.scale);
        if let Some(b) = self.bias {
            v = _mm512_add_ps(v, b);
        }
        // SAFETY: the caller's contract (masked to the valid columns).
        unsafe { _mm512_mask_storeu_ps(dst, self.mask, v) };
    }
}

/// Whether this process can run AMX int8 tiles: the CPU lists AMX-TILE and AMX-INT8 (CPUID leaf 7,
/// EDX bits 24 and 25) with AVX-512F/BW (the epilogue), and Linux grants the process the tile data
/// state (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`, which fails where the kernel or
/// the hypervisor does not save that state). Asked once per process.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn amx_ready() -> bool {
    static READY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *READY.get_or_init(|| {
        let listed = std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && {
                // Leaf 7 exists on every CPU with AVX-512 (checked first).
                let l7 = std::arch::x86_64::__cpuid_count(7, 0);
                l7.edx & (1 << 24) != 0 && l7.edx & (1 << 25) != 0
            };
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: arch_prctl with this request only changes the process's permitted xsave features.
        listed
            && unsafe {
                libc::syscall(
                    libc::SYS_arch_prctl,
                    ARCH_REQ_XCOMP_PERM,
                    XFEATURE_XTILEDATA,
                )
            } == 0
    })
}

/// AMX palette 1 tile configuration (`ldtilecfg`'s 64-byte operand).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

/// A 32 × 32 block of i32 sums, as the four accumulator tiles store it (rows of 128 bytes).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[repr(C, align(64))]
struct Sums([i32; 32 * PAIR]);

std::thread_local! {
    /// A task's last rows of `x_q` copied with zero padding where a tile would read past the end
    /// of the input (32 rows × `k` rounded up to 64).
    static AMX_ROWS: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// One task on AMX: blocks of 32 rows × 32 columns, each 64 `k` at a time as two input tiles (16
/// rows × 64 bytes of `x_q`, read in place with the row stride `k`), two weight tiles (16 groups of
/// one panel, the pair's group stride 128 bytes) and four `tdpbusd` into four accumulator tiles;
/// then the VNNI kernel's epilogue from the stored sums.
///
/// # Safety
/// As [`block`], with [`amx_ready`] true on this process.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn block_amx(
    a: &Operands<'_>,
    out: Dst,
    rows: std::ops::Range<usize>,
    cols: std::ops::Range<usize>,
) {
    use std::arch::asm;
    use std::arch::x86_64::*;
    let k = a.w.k;
    let groups = padded_groups(k);
    let kp = groups * GROUP;
    let mut cfg = TileConfig {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        colsb: [0; 16],
        rows: [0; 16],
    };
    for t in 0..8 {
        cfg.colsb[t] = 64;
        cfg.rows[t] = 16;
    }
    let mut sums = Sums([0; 32 * PAIR]);
    let sp = sums.0.as_mut_ptr();
    // SAFETY: AMX is usable (the caller's contract); the configuration is a valid palette 1
    // layout of eight 16 × 64-byte tiles.
    unsafe { asm!("ldtilecfg [{}]", in(reg) &cfg, options(nostack, readonly, preserves_flags)) };
    AMX_ROWS.with(|buf| {
        let mut buf = buf.borrow_mut();
        let mut r = rows.start;
        while r < rows.end {
            let h = 32.min(rows.end - r);
            // The two input tiles read rows r..r + 32, kp bytes from each row's start: in place
            // when that stays inside x_q (bytes past a row's k meet zero weight rows), else from
            // a zero-padded copy of the rows that exist.
            let (xa, lda) = if (r + 31) * k + kp <= a.xq.len() {
                (a.xq[r * k..].as_ptr(), k)
            } else {
                buf.clear();
                buf.resize(32 * kp, 0);
                let exist = (a.xq.len() / k.max(1)).saturating_sub(r).min(32);
                for i in 0..exist {
                    buf[i * kp..i * kp + k].copy_from_slice(&a.xq[(r + i) * k..(r + i + 1) * k]);
                }
                (buf.as_ptr(), kp)
            };
            let mut c0 = cols.start;
            while c0 < cols.end {
                let width = PAIR.min(cols.end - c0);
                let pair = a.w.panels[panel_index(groups, 0, c0)..].as_ptr();
                // SAFETY: the input tiles read 16 rows of 64 bytes at stride `lda` from rows
                // r..r + 32 (inside x_q or the padded copy, above); the weight tiles 16 rows of
                // 64 bytes at stride 128 inside this pair's `groups` groups (kp / 64 blocks of 16);
                // the stores write the 4 KiB of `sums`.
                unsafe {
                    asm!(
                        "tilezero tmm0",
                        "tilezero tmm1",
                        "tilezero tmm2",
                        "tilezero tmm3",
                        options(nomem, nostack, preserves_flags)
                    );
                    for kb in 0..kp / KB {
                        let b0 = pair.add(kb * (KB / GROUP) * PAIR * GROUP);
                        asm!(
                            "tileloadd tmm4, [{x0} + {lda}*1]",
                            "tileloadd tmm5, [{x1} + {lda}*1]",
                            "tileloadd tmm6, [{b0} + {ldb}*1]",
                            "tileloadd tmm7, [{b1} + {ldb}*1]",
                            "tdpbusd tmm0, tmm4, tmm6",
                            "tdpbusd tmm1, tmm4, tmm7",
                            "tdpbusd tmm2, tmm5, tmm6",
                            "tdpbusd tmm3, tmm5, tmm7",
                            x0 = in(reg) xa.add(kb * KB),
                            x1 = in(reg) xa.add(16 * lda + kb * KB),
                            lda = in(reg) lda,
                            b0 = in(reg) b0,
                            b1 = in(reg) b0.add(64),
                            ldb = in(reg) PAIR * GROUP,
                            options(nostack, readonly, preserves_flags)
                        );
                    }
                    asm!(
                        "tilestored [{c0} + {ld}*1], tmm0",
                        "tilestored [{c1} + {ld}*1], tmm1",
                        "tilestored [{c2} + {ld}*1], tmm2",
                        "tilestored [{c3} + {ld}*1], tmm3",
                        c0 = in(reg) sp,
                        c1 = in(reg) sp.add(16),
                        c2 = in(reg) sp.add(16 * PAIR),
                        c3 = in(reg) sp.add(16 * PAIR + 16),
                        ld = in(reg) PAIR * 4,
                        options(nostack, preserves_flags)
                    );
                }
                for (half, c) in [c0, c0 + 16].into_iter().enumerate() {
                    if c >= c0 + width {
                        break;
                    }
                    // SAFETY: c < n; rows r..r + h are the task's; `sums` holds 32 rows of 32.
                    unsafe {
                        let cols16 = Columns16::at(a, c, c0 + width - c);
                        for i in 0..h {
                            let acc = _mm512_load_si512(sp.add(i * PAIR + 16 * half) as *const _);
                            cols16.finish(acc, out.at(r + i, c));
                        }
                    }
                }
                c0 += PAIR;
            }
            r += h;
        }
    });
    // SAFETY: releases this thread's tile state (configured above).
    unsafe { asm!("tilerelease", options(nomem, nostack, preserves_flags)) };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_bias(b: &[f32]) -> Epilogue<'_> {
        Epilogue {
            bias: Some(b),
            ..Epilogue::default()
        }
    }

    fn ints(len: usize, seed: usize, lo: i32, hi: i32) -> Vec<i32> {
        (0..len)
            .map(|i| {
                let h = (i * 7919 + seed * 104_729 + (i * i) % 13) % 100_003;
                lo + (h as i32) % (hi - lo + 1)
            })
            .collect()
    }

    /// The exact result from the integers (the reference).
    #[allow(clippy::too_many_arguments)] // the operands of one product, spelled out
    fn reference(
        xq: &[u8],
        m: usize,
        wq: &[i8],
        k: usize,
        n: usize,
        sx: f32,
        sw: &[f32],
        bias: Option<&[f32]>,
    ) -> Vec<f32> {
        let mut y = vec![0.0f32; m * n];
        for r in 0..m {
            for c in 0..n {
                let acc: i64 = (0..k)
                    .map(|kk| (i64::from(xq[r * k + kk]) - 128) * i64::from(wq[kk * n + c]))
                    .sum();
                let mut v = acc as f32 * (sx * sw[c]);
                if let Some(b) = bias {
                    v += b[c];
                }
                y[r * n + c] = v;
            }
        }
        y
    }

    #[test]
    fn every_kernel_gives_the_exact_sums_bit_for_bit() {
        // Odd shapes: partial tiles in rows and columns, k not a multiple of 4, several tasks.
        for &(m, k, n) in &[
            (1, 1, 1),
            (13, 7, 33),
            (25, 64, 17),
            (200, 300, 70),
            (97, 1028, 40),
        ] {
            let xq: Vec<u8> = ints(m * k, 1, 0, 255).iter().map(|&v| v as u8).collect();
            let wq: Vec<i8> = ints(k * n, 2, -128, 127).iter().map(|&v| v as i8).collect();
            let sw: Vec<f32> = (0..n).map(|c| 0.01 + c as f32 * 1e-3).collect();
            let bias: Vec<f32> = (0..n).map(|c| c as f32 * 0.5 - 3.0).collect();
            let w = QPackedWeights::pack(&wq, k, n, &sw).unwrap();
            assert_eq!(w.unpack(), wq);
            let want = reference(&xq, m, &wq, k, n, 0.037, &sw, Some(&bias));
            for kernel in QKernel::ALL {
                if !kernel.available() {
                    eprintln!("skipping {}: not on this CPU", kernel.name());
                    continue;
                }
                for threads in [1, 3] {
                    let mut y = vec![f32::NAN; m * n];
                    crate::ops::on_threads(threads, || {
                        qlinear_on(kernel, &xq, m, &w, 0.037, with_bias(&bias), &mut y)
                    })
                    .unwrap();
                    assert!(
                        y.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "{} {m}x{k}x{n} threads {threads}",
                        kernel.name()
                    );
                }
            }
            let mut y = vec![0.0f32; m * n];
            qlinear(&xq, m, &w, 0.037, Epilogue::default(), &mut y).unwrap();
            let want = reference(&xq, m, &wq, k, n, 0.037, &sw, None);
            assert_eq!(y, want);
            // ReLU then GELU after the bias, as the f32 linear layer's epilogue.
            let ep = Epilogue {
                relu: true,
                gelu: true,
                ..with_bias(&bias)
            };
            crate::ops::on_threads(2, || qlinear(&xq, m, &w, 0.037, ep, &mut y)).unwrap();
            let want = reference(&xq, m, &wq, k, n, 0.037, &sw, Some(&bias));
            for (g, w) in y.iter().zip(&want) {
                let r = crate::ops::unary::gelu_exact(if *w < 0.0 { 0.0 } else { *w });
                assert_eq!(g.to_bits(), r.to_bits());
            }
        }
    }

    #[test]
    fn quantized_outputs_are_the_quantized_products_byte_for_byte() {
        // Several row and column blocks (m > MC, n > NC), partial tiles, every epilogue; scales
        // that saturate some values at both ends and keep the rest on the grid.
        // (m, k, n, the output scale as a fraction of the largest |value|)
        for &(m, k, n, frac) in &[
            (13, 7, 33, 1.0 / 300.0),
            (130, 96, 300, 1.0 / 200.0),
            (7, 40, 5, 2.0),
        ] {
            let xq: Vec<u8> = ints(m * k, 3, 0, 255).iter().map(|&v| v as u8).collect();
            let wq: Vec<i8> = ints(k * n, 4, -128, 127).iter().map(|&v| v as i8).collect();
            let sw: Vec<f32> = (0..n).map(|c| 0.002 + c as f32 * 1e-5).collect();
            let bias: Vec<f32> = (0..n).map(|c| c as f32 * 0.01 - 1.0).collect();
            let w = QPackedWeights::pack(&wq, k, n, &sw).unwrap();
            let sums = reference(&xq, m, &wq, k, n, 0.03, &sw, Some(&bias));
            let y_scale = sums.iter().fold(0f32, |a, v| a.max(v.abs())) * frac;
            for (relu, gelu) in [(false, false), (true, false), (false, true)] {
                let want: Vec<u8> = sums
                    .iter()
                    .map(|&v| {
                        let v = if relu && v < 0.0 { 0.0 } else { v };
                        let v = if gelu {
                            crate::ops::unary::gelu_exact(v)
                        } else {
                            v
                        };
                        grid(v, y_scale)
                    })
                    .collect();
                if !relu && !gelu && frac < 1.0 {
                    assert!(
                        want.contains(&0) && want.contains(&255),
                        "saturates both ends"
                    );
                }
                let ep = Epilogue {
                    relu,
                    gelu,
                    ..with_bias(&bias)
                };
                for kernel in QKernel::ALL.into_iter().filter(|k| k.available()) {
                    for threads in [1, 3] {
                        let mut yq = vec![7u8; m * n];
                        crate::ops::on_threads(threads, || {
                            qlinear_quantized_on(kernel, &xq, m, &w, 0.03, ep, y_scale, &mut yq)
                        })
                        .unwrap();
                        let bad = yq.iter().zip(&want).position(|(a, b)| a != b);
                        assert_eq!(
                            bad,
                            None,
                            "{} {m}x{k}x{n} relu {relu} gelu {gelu} threads {threads}",
                            kernel.name()
                        );
                    }
                }
            }
        }
        // Bad output scales and lengths are errors.
        let w = QPackedWeights::pack(&[1i8; 8], 4, 2, &[0.1, 0.1]).unwrap();
        let (xq, mut yq) = ([128u8; 4], [0u8; 2]);
        for bad in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            let ep = Epilogue::default();
            assert!(qlinear_quantized(&xq, 1, &w, 0.1, ep, bad, &mut yq).is_err());
        }
        let mut short = [0u8; 1];
        let ep = Epilogue::default();
        assert!(qlinear_quantized(&xq, 1, &w, 0.1, ep, 0.1, &mut short).is_err());
    }

    #[test]
    fn quantizing_follows_onnx_quantize_linear() {
        // Ties to even, saturation, NaN to the zero of the clamp, as ONNX QuantizeLinear (uint8,
        // zero point 128) and the int8 weight form.
        let s = 0.5f32;
        let x = [
            0.25f32,
            0.75,
            -0.25,
            -0.75,
            1.25,
            200.0,
            -200.0,
            f32::NAN,
            63.5,
            -64.0,
        ];
        let want = [128u8, 130, 128, 126, 130, 255, 0, 0, 255, 0];
        let mut out = [7u8; 10];
        quantize_u8(&x, s, &mut out).unwrap();
        assert_eq!(out, want);
        // The vector path (whole 16-lane blocks) gives the portable path's bytes.
        let long: Vec<f32> = (0..4099).map(|i| (i as f32 - 2049.0) * 0.0371).collect();
        let mut a = vec![0u8; long.len()];
        let mut b = vec![0u8; long.len()];
        crate::ops::on_threads(3, || quantize_u8(&long, 0.3, &mut a)).unwrap();
        quantize_portable(&long, 0.3, &mut b);
        assert_eq!(a, b);
        // Quantize then dequantize in one pass: the dequantized bytes.
        let mut f = long.clone();
        crate::ops::on_threads(3, || fake_quantize_u8(&mut f, 0.3)).unwrap();
        let deq: Vec<f32> = b.iter().map(|&q| (f32::from(q) - 128.0) * 0.3).collect();
        assert!(f.iter().zip(&deq).all(|(x, y)| x.to_bits() == y.to_bits()));
        let mut f = x;
        fake_quantize_u8(&mut f, s).unwrap();
        let deq: Vec<f32> = want.iter().map(|&q| (f32::from(q) - 128.0) * s).collect();
        assert_eq!(f.to_vec(), deq);
        assert!(fake_quantize_u8(&mut f, f32::NAN).is_err());
        assert_eq!(quantize_i8(0.5 * 3.0, 1.0), 2);
        assert_eq!(quantize_i8(-1000.0, 1.0), -128);
        assert_eq!(quantize_i8(2.5, 1.0), 2);
        let w = QPackedWeights::quantize(&[1.0, -2.0, 0.26, 0.74], 2, 2, &[0.5, 1.0]).unwrap();
        assert_eq!(w.unpack(), vec![2, -2, 1, 1]);
    }

    #[test]
    fn bad_operands_are_errors() {
        let w = QPackedWeights::pack(&[1, 2, 3, 4, 5, 6], 2, 3, &[1.0; 3]).unwrap();
        let mut y = [0.0f32; 3];
        let none = Epilogue::default();
        assert!(qlinear(&[1, 2, 3], 1, &w, 1.0, none, &mut y).is_err());
        assert!(qlinear(&[1, 2], 1, &w, 1.0, with_bias(&[0.0; 2]), &mut y).is_err());
        assert!(qlinear(&[1, 2], 1, &w, 0.0, none, &mut y).is_err());
        let rows = Epilogue {
            row_bias: Some(&[0.0]),
            ..none
        };
        assert!(qlinear(&[1, 2], 1, &w, 1.0, rows, &mut y).is_err());
        assert!(QPackedWeights::pack(&[1, 2], 1, 2, &[1.0, f32::NAN]).is_err());
        assert!(QPackedWeights::pack(&[1, 2], 1, 2, &[1.0]).is_err());
        assert!(quantize_u8(&[1.0], 0.0, &mut [0]).is_err());
        assert!(quantize_u8(&[1.0], 1.0, &mut []).is_err());
    }
}
