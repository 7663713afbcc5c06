//! referdino's CUDA kernels (`plugins/kernels/*.cu`), compiled as C++ and run on the CPU, for tests on
//! machines without a GPU (CI among them).
//!
//! The kernel sources are compiled unchanged, with `csrc/cuda_emu.h` standing in for the CUDA language:
//! each launch runs its blocks one after another and the threads of a block as fibers on the calling
//! thread, switched at `__syncthreads` and at warp shuffles (`csrc/runtime.cpp`). That executes the
//! kernels' own index arithmetic, launch geometry (taken from `referdino_plugins::dims`, as the CUDA
//! launcher does), reductions, barriers and shared-memory use, so a kernel change is tested here before a
//! GPU ever sees it; [`with_schedule`] runs launches in other orders (blocks, warps drifting apart,
//! lanes) so that a race whose outcome matters shows as a changed output. It says nothing about the
//! GPU's float rounding of `expf` and friends, its memory model or speed: the GPU tests
//! (`plugins/tests/gpu_kernels.rs`, run by the GPU check kit) stay the judge of those.
//!
//! Unix only (fibers through `ucontext`, guard pages through `mmap`); elsewhere the crate is empty.
#![cfg(unix)]

use std::ffi::{c_char, c_void, CStr};
use std::fmt;

use half::f16;
use referdino_plugins::dims::{LabelDims, LaunchGeometry, MsdaDims, PreDims, PruneDims};
use referdino_plugins::tracks::TrackTable;

mod ffi {
    use std::ffi::{c_char, c_void};

    extern "C" {
        pub fn rde_launch(
            grid_x: u32,
            grid_y: u32,
            block_x: u32,
            shared_bytes: usize,
            body: extern "C" fn(*mut c_void),
            arg: *mut c_void,
            schedule: u32,
            seed: u64,
            err: *mut c_char,
            err_len: usize,
        ) -> i32;

        pub fn rde_guarded_alloc(
            bytes: usize,
            region: *mut *mut c_void,
            region_len: *mut usize,
        ) -> *mut c_void;
        pub fn rde_guarded_free(region: *mut c_void, region_len: usize);
        pub fn rde_float_to_half(f: f32) -> u16;
        pub fn rde_selftest_shuffle_after_exit(out: *mut f32);
        pub fn rde_selftest_diverged_shuffles(out: *mut f32);
        pub fn rde_selftest_lonely_barrier(out: *mut f32);
        pub fn rde_selftest_warp_sum(out: *mut f32);
        pub fn rde_selftest_unsynced_shared(out: *mut f32);
        pub fn rde_selftest_synced_shared(out: *mut f32);
        pub fn rde_half_to_float(bits: u16) -> f32;

        pub fn query_prune_f32(
            logits: *const f32,
            attn: *const f32,
            keep_idx: *mut i64,
            gate: *mut f32,
            n: i32,
            n_tokens: i32,
            keep: i32,
        );
        pub fn query_prune_stats_f32(
            logits: *const f32,
            attn: *const f32,
            stats: *mut f32,
            n: i32,
            n_tokens: i32,
        );
        pub fn query_prune_select_f32(
            stats: *const f32,
            keep_idx: *mut i64,
            gate: *mut f32,
            n: i32,
            keep: i32,
        );
    }
}

/// The optimized MSDeformAttn entry points: value/output element `T`, shape index `I`, then
/// `batch, num_value, heads, head_dim, num_query, levels, points, vec`.
pub type MsdaFwdFn<T, I> = unsafe extern "C" fn(
    *const T,
    *const I,
    *const I,
    *const f32,
    *const f32,
    *mut T,
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
);
/// The naive MSDeformAttn entry points: as [`MsdaFwdFn`] without `vec`.
pub type MsdaNaiveFn<T, I> = unsafe extern "C" fn(
    *const T,
    *const I,
    *const I,
    *const f32,
    *const f32,
    *mut T,
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
);

macro_rules! msda_entries {
    ($($name:ident: $t:ty, $i:ty $(, $vec:ident)?;)*) => {
        mod msda_ffi {
            use half::f16;
            extern "C" {
                $(pub fn $name(
                    value: *const $t,
                    shapes: *const $i,
                    starts: *const $i,
                    loc: *const f32,
                    attn: *const f32,
                    out: *mut $t,
                    batch: i32,
                    num_value: i32,
                    heads: i32,
                    head_dim: i32,
                    num_query: i32,
                    levels: i32,
                    points: i32,
                    $($vec: i32,)?
                );)*
            }
        }
    };
}

msda_entries! {
    msda_fwd_f32_i64: f32, i64, vec;
    msda_fwd_f32_i32: f32, i32, vec;
    msda_fwd_f16_i64: f16, i64, vec;
    msda_fwd_f16_i32: f16, i32, vec;
    msda_naive_f32_i64: f32, i64;
    msda_naive_f32_i32: f32, i32;
    msda_naive_f16_i64: f16, i64;
    msda_naive_f16_i32: f16, i32;
}

/// Why an emulated launch did not run or did not finish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmuError(pub String);

impl fmt::Display for EmuError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EmuError {}

/// Result of an emulated launch.
pub type Result<T> = std::result::Result<T, EmuError>;

/// The order in which a launch runs its blocks and, between two synchronisation points
/// (`__syncthreads`, warp shuffles), the threads of a block. A race-free kernel gives the same bits
/// under every schedule; one whose threads or blocks communicate without a barrier reads a value
/// written before or after its read depending on the order, so its output changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Schedule {
    /// Ascending block and thread indices (the default).
    #[default]
    Forward,
    /// Descending.
    Reverse,
    /// A permutation drawn from the seed, anew for every block and every round of threads.
    Shuffled(u64),
}

impl Schedule {
    fn code(self) -> (u32, u64) {
        match self {
            Schedule::Forward => (0, 0),
            Schedule::Reverse => (1, 0),
            Schedule::Shuffled(seed) => (2, seed),
        }
    }
}

thread_local! {
    static SCHEDULE: std::cell::Cell<Schedule> = const { std::cell::Cell::new(Schedule::Forward) };
}

/// Runs `f` with every launch it makes on this thread under `schedule` (restored afterwards, also on
/// a panic).
pub fn with_schedule<R>(schedule: Schedule, f: impl FnOnce() -> R) -> R {
    struct Restore(Schedule);
    impl Drop for Restore {
        fn drop(&mut self) {
            SCHEDULE.with(|s| s.set(self.0));
        }
    }
    let _restore = Restore(SCHEDULE.with(|s| s.replace(schedule)));
    f()
}

extern "C" fn call_body(arg: *mut c_void) {
    // SAFETY: `arg` is the `&&dyn Fn()` that `launch` passed to `rde_launch`, alive for the whole call
    // (rde_launch returns only after the last fiber has). Fibers call it re-entrantly on one OS thread,
    // which `Fn` (shared borrows only) allows.
    let body = unsafe { &*(arg as *const &dyn Fn()) };
    body();
}

/// Runs `body` as the kernel of a launch of `geometry` x `grid_y` blocks: `body` calls the kernel's
/// entry point, which reads `threadIdx`/`blockIdx` from the emulation.
///
/// `body` must not panic: it runs on a fiber stack entered from C++, where an unwind aborts the process.
pub fn launch(geometry: LaunchGeometry, grid_y: u32, body: &dyn Fn()) -> Result<()> {
    thread_local! {
        static IN_LAUNCH: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    // A launch from inside a kernel body would take the runtime's lock twice on one thread.
    if IN_LAUNCH.with(|f| f.replace(true)) {
        return Err(EmuError("a launch from inside an emulated kernel".into()));
    }
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            IN_LAUNCH.with(|f| f.set(false));
        }
    }
    let _reset = Reset;
    let mut err = [0 as c_char; 512];
    let arg: *const &dyn Fn() = &body;
    let (schedule, seed) = SCHEDULE.with(|s| s.get()).code();
    // SAFETY: `call_body` gets back exactly `arg`; `err` is writable for its length and rde_launch
    // NUL-terminates what it writes there.
    let rc = unsafe {
        ffi::rde_launch(
            geometry.grid,
            grid_y,
            geometry.block,
            geometry.shared_bytes as usize,
            call_body,
            arg as *mut c_void,
            schedule,
            seed,
            err.as_mut_ptr(),
            err.len(),
        )
    };
    if rc == 0 {
        return Ok(());
    }
    // SAFETY: rde_launch wrote a NUL-terminated message into `err` when it returned non-zero.
    let msg = unsafe { CStr::from_ptr(err.as_ptr()) };
    Err(EmuError(msg.to_string_lossy().into_owned()))
}

/// The emulation's `__float2half_rn` (bits of the binary16 result), to check against a reference.
pub fn float_to_half(f: f32) -> u16 {
    // SAFETY: a pure function of its argument.
    unsafe { ffi::rde_float_to_half(f) }
}

/// The emulation's `__half2float`.
pub fn half_to_float(bits: u16) -> f32 {
    // SAFETY: a pure function of its argument.
    unsafe { ffi::rde_half_to_float(bits) }
}

/// A copy of a buffer whose last byte sits just before an inaccessible page: a kernel reading or
/// writing past the elements its sizes imply faults at once, and the emulation names the block and
/// thread instead of reading a neighbour's heap bytes. (Below the start there is an inaccessible page
/// too, but only after the rest of the first page: an underrun faults only for whole-page buffers.)
/// Every wrapper below hands the kernels such copies.
struct Guarded {
    region: *mut c_void,
    region_len: usize,
    data: *mut u8,
    bytes: usize,
}

impl Guarded {
    /// A guarded copy of `src`.
    fn of<T: Copy>(src: &[T]) -> Result<Guarded> {
        let bytes = std::mem::size_of_val(src);
        let (mut region, mut region_len) = (std::ptr::null_mut(), 0usize);
        // SAFETY: the out-pointers are valid locals; a null return is handled.
        let data = unsafe { ffi::rde_guarded_alloc(bytes, &mut region, &mut region_len) };
        if data.is_null() {
            return Err(EmuError(format!(
                "guarded buffer of {bytes} bytes: mmap failed"
            )));
        }
        let data = data.cast::<u8>();
        // SAFETY: `data` has room for `bytes` (rde_guarded_alloc's contract), `src` is `bytes` long, the
        // two do not overlap (fresh mapping).
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr().cast::<u8>(), data, bytes) };
        Ok(Guarded {
            region,
            region_len,
            data,
            bytes,
        })
    }

    /// A guarded copy of the first `n` elements of `src`: what the kernel may touch of it. An error
    /// naming `what` when `src` is shorter.
    fn first<T: Copy>(what: &str, src: &[T], n: usize) -> Result<Guarded> {
        if src.len() < n {
            return Err(EmuError(format!(
                "{what}: {} elements, need {n}",
                src.len()
            )));
        }
        Self::of(&src[..n])
    }

    fn ptr<T>(&self) -> *mut T {
        self.data.cast()
    }

    /// Copies the buffer back into the start of `dst` (the slice it was made from by [`Guarded::first`]).
    fn copy_to<T: Copy>(&self, dst: &mut [T]) {
        assert!(
            std::mem::size_of_val(dst) >= self.bytes,
            "guarded copy-back length"
        );
        // SAFETY: `dst` holds at least `bytes` bytes (checked), the copy `bytes`; they do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(self.data, dst.as_mut_ptr().cast::<u8>(), self.bytes)
        };
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        // SAFETY: `region`/`region_len` are the mapping rde_guarded_alloc made; nothing uses it after.
        unsafe { ffi::rde_guarded_free(self.region, self.region_len) }
    }
}

/// Kernels that break CUDA's rules on purpose (`csrc/selftest.cpp`), to check that the emulation
/// reports them: `Err` with its message, or the output of the one correct kernel.
pub mod selftest {
    use super::{ffi, launch, LaunchGeometry, Result};

    /// Which rule-breaking kernel to run.
    #[derive(Debug, Clone, Copy)]
    pub enum Case {
        /// A full-mask shuffle after half the warp returned.
        ShuffleAfterExit,
        /// Odd lanes shuffle once more than even ones.
        DivergedShuffles,
        /// One thread waits at a barrier the others never reach.
        LonelyBarrier,
        /// A correct warp sum over 2 blocks of 64 threads (no error; every output 496).
        WarpSum,
        /// Each thread reads the shared-memory slot another warp writes, with no barrier between:
        /// no error, but the output depends on the [`Schedule`](super::Schedule).
        UnsyncedShared,
        /// The same with the barrier: output `block * 64 + (thread ^ 32)` under every schedule.
        SyncedShared,
    }

    /// Runs `case` with 2 blocks of 64 threads; returns the 128 outputs.
    pub fn run(case: Case) -> Result<Vec<f32>> {
        let mut out = vec![0f32; 128];
        let o = out.as_mut_ptr();
        let f = match case {
            Case::ShuffleAfterExit => ffi::rde_selftest_shuffle_after_exit,
            Case::DivergedShuffles => ffi::rde_selftest_diverged_shuffles,
            Case::LonelyBarrier => ffi::rde_selftest_lonely_barrier,
            Case::WarpSum => ffi::rde_selftest_warp_sum,
            Case::UnsyncedShared => ffi::rde_selftest_unsynced_shared,
            Case::SyncedShared => ffi::rde_selftest_synced_shared,
        };
        let g = LaunchGeometry {
            grid: 2,
            block: 64,
            shared_bytes: 0,
        };
        launch(g, 1, &|| {
            // SAFETY: `out` holds the 128 floats that 2 blocks of 64 threads index.
            unsafe { f(o) }
        })?;
        Ok(out)
    }
}

fn valid(r: referdino_plugins::Result<()>) -> Result<()> {
    r.map_err(|e| EmuError(e.to_string()))
}

/// Which QueryPrune kernels to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PruneKernel {
    /// `query_prune_f32`: one block per batch item.
    OneBlock,
    /// `query_prune_stats_f32` then `query_prune_select_f32`, spread over blocks (the plugin's choice).
    Spread,
}

/// QueryPrune as the CUDA launcher runs it: `keep_idx` `[B,K]` and `gate` `[B,N]` from `logits`
/// `[B,N,Lt]` and `attn` `[B,N,N]`.
pub fn query_prune(
    kernel: PruneKernel,
    d: &PruneDims,
    logits: &[f32],
    attn: &[f32],
    keep_idx: &mut [i64],
    gate: &mut [f32],
) -> Result<()> {
    valid(d.validate())?;
    let g_lg = Guarded::first("class_logits", logits, d.batch * d.n * d.n_tokens)?;
    let g_at = Guarded::first("self_attn", attn, d.batch * d.n * d.n)?;
    let g_ki = Guarded::first("keep_idx", keep_idx, d.batch * d.keep)?;
    let g_gt = Guarded::first("gate", gate, d.batch * d.n)?;
    let (lg, at, ki, gt) = (
        g_lg.ptr::<f32>() as *const f32,
        g_at.ptr::<f32>() as *const f32,
        g_ki.ptr::<i64>(),
        g_gt.ptr::<f32>(),
    );
    let (n, lt, k) = (d.n as i32, d.n_tokens as i32, d.keep as i32);
    let r = match kernel {
        PruneKernel::OneBlock => launch(d.launch(), 1, &|| {
            // SAFETY: the guarded copies hold what `d` implies and outlive the launch.
            unsafe { ffi::query_prune_f32(lg, at, ki, gt, n, lt, k) }
        }),
        PruneKernel::Spread => {
            // Garbage, not zeros, as device memory would be: a statistic the stats kernel did not
            // write shows.
            let g_ws = Guarded::of(&vec![0xA5u8; d.spread_workspace_bytes()])?;
            let ws = g_ws.ptr::<f32>();
            let (g, gy) = d.stats_launch();
            launch(g, gy, &|| {
                // SAFETY: as above; `ws` holds the workspace the launcher allocates.
                unsafe { ffi::query_prune_stats_f32(lg, at, ws, n, lt) }
            })
            .and_then(|()| {
                let (g, gy) = d.select_launch();
                launch(g, gy, &|| {
                    // SAFETY: as above.
                    unsafe { ffi::query_prune_select_f32(ws, ki, gt, n, k) }
                })
            })
        }
    };
    g_ki.copy_to(keep_idx);
    g_gt.copy_to(gate);
    r
}

/// Which MSDeformAttn kernel to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsdaKernel {
    /// `msda_fwd_*` (the plugin's choice): one block per query, this many consecutive channels per
    /// thread (1, 2 or 4).
    Optimized(usize),
    /// `msda_naive_*`: one thread per output element.
    Naive,
}

/// Element types of `value` and the output.
pub trait MsdaValue: Copy {
    /// Bytes per element.
    const BYTES: usize;
    /// The optimized and naive entry points for this element type and int64 shapes.
    fn entries_i64() -> (MsdaFwdFn<Self, i64>, MsdaNaiveFn<Self, i64>);
    /// As `entries_i64`, with int32 shapes.
    fn entries_i32() -> (MsdaFwdFn<Self, i32>, MsdaNaiveFn<Self, i32>);
}

macro_rules! msda_value {
    ($t:ty, $bytes:expr, $fwd64:ident, $naive64:ident, $fwd32:ident, $naive32:ident) => {
        impl MsdaValue for $t {
            const BYTES: usize = $bytes;
            fn entries_i64() -> (MsdaFwdFn<Self, i64>, MsdaNaiveFn<Self, i64>) {
                (msda_ffi::$fwd64, msda_ffi::$naive64)
            }
            fn entries_i32() -> (MsdaFwdFn<Self, i32>, MsdaNaiveFn<Self, i32>) {
                (msda_ffi::$fwd32, msda_ffi::$naive32)
            }
        }
    };
}

msda_value!(
    f32,
    4,
    msda_fwd_f32_i64,
    msda_naive_f32_i64,
    msda_fwd_f32_i32,
    msda_naive_f32_i32
);
msda_value!(
    f16,
    2,
    msda_fwd_f16_i64,
    msda_naive_f16_i64,
    msda_fwd_f16_i32,
    msda_naive_f16_i32
);

/// Shape index types (`spatial_shapes`, `level_start_index`).
pub trait MsdaIndex: Copy {
    /// The entry points for value type `T` with this index type.
    fn entries<T: MsdaValue>() -> (MsdaFwdFn<T, Self>, MsdaNaiveFn<T, Self>);
}

impl MsdaIndex for i64 {
    fn entries<T: MsdaValue>() -> (MsdaFwdFn<T, i64>, MsdaNaiveFn<T, i64>) {
        T::entries_i64()
    }
}

impl MsdaIndex for i32 {
    fn entries<T: MsdaValue>() -> (MsdaFwdFn<T, i32>, MsdaNaiveFn<T, i32>) {
        T::entries_i32()
    }
}

/// MSDeformAttn as the CUDA launcher runs it (`Kernels::launch_msda_vec`): `out` `[B,Q,H*Dh]`.
#[allow(clippy::too_many_arguments)]
pub fn ms_deform_attn<T: MsdaValue, I: MsdaIndex>(
    kernel: MsdaKernel,
    d: &MsdaDims,
    value: &[T],
    shapes: &[I],
    starts: &[I],
    loc: &[f32],
    weights: &[f32],
    out: &mut [T],
) -> Result<()> {
    valid(d.validate())?;
    let g_v = Guarded::first("value", value, d.value_len())?;
    let g_ss = Guarded::first("spatial_shapes", shapes, 2 * d.levels)?;
    let g_ls = Guarded::first("level_start_index", starts, d.levels)?;
    let g_lc = Guarded::first("sampling_locations", loc, d.locations_len())?;
    let g_aw = Guarded::first("attention_weights", weights, d.weights_len())?;
    let g_o = Guarded::first("out", out, d.out_len())?;
    let (v, ss, ls, lc, aw, o) = (
        g_v.ptr::<T>() as *const T,
        g_ss.ptr::<I>() as *const I,
        g_ls.ptr::<I>() as *const I,
        g_lc.ptr::<f32>() as *const f32,
        g_aw.ptr::<f32>() as *const f32,
        g_o.ptr::<T>(),
    );
    let [b, s, h, dh, q, l, p] = [
        d.batch,
        d.num_value,
        d.heads,
        d.head_dim,
        d.num_query,
        d.levels,
        d.points,
    ]
    .map(|x| x as i32);
    let (fwd, naive) = I::entries::<T>();
    let r = match kernel {
        MsdaKernel::Optimized(vec) => {
            if d.fwd_vec(T::BYTES, &[v as u64, o as u64]) < vec {
                return Err(EmuError(format!(
                    "value/output not aligned to {vec} elements"
                )));
            }
            let g = d.fwd_launch(vec).map_err(|e| EmuError(e.to_string()))?;
            let vec = vec as i32;
            launch(g, 1, &|| {
                // SAFETY: the guarded copies hold what `d` implies, aligned to `vec` elements (checked
                // above), and outlive the launch; corners outside the maps are the kernel's to skip.
                unsafe { fwd(v, ss, ls, lc, aw, o, b, s, h, dh, q, l, p, vec) }
            })
        }
        MsdaKernel::Naive => launch(d.naive_launch(), 1, &|| {
            // SAFETY: as above.
            unsafe { naive(v, ss, ls, lc, aw, o, b, s, h, dh, q, l, p) }
        }),
    };
    g_o.copy_to(out);
    r
}

mod image_ffi {
    use referdino_plugins::tracks::TrackTable;

    extern "C" {
        pub fn pre_hpass(
            src: *const u8,
            stride: i32,
            format: i32,
            in_h: i32,
            start: *const u32,
            len: *const u32,
            weights: *const i32,
            ksize: i32,
            out_w: i32,
            tmp: *mut u8,
        );
        pub fn pre_vpass_norm(
            tmp: *const u8,
            out_w: i32,
            out_h: i32,
            start: *const u32,
            len: *const u32,
            weights: *const i32,
            ksize: i32,
            lut: *const f32,
            out: *mut f32,
        );
        pub fn mask_labels(
            logits: *const f32,
            in_h: i32,
            in_w: i32,
            yi0: *const u32,
            yi1: *const u32,
            yl0: *const f32,
            yl1: *const f32,
            xi0: *const u32,
            xi1: *const u32,
            xl0: *const f32,
            xl1: *const f32,
            out_h: i32,
            out_w: i32,
            tracks: TrackTable,
            mask: *mut u8,
        );
    }
}

/// One axis of resampling taps as the CPU preprocessor builds them: per output index a first input
/// index, a tap count and `ksize` fixed-point weights.
#[derive(Debug, Clone, Copy)]
pub struct Taps<'a> {
    /// First input index per output index.
    pub start: &'a [u32],
    /// Taps per output index.
    pub len: &'a [u32],
    /// `ksize` weights per output index.
    pub weights: &'a [i32],
}

/// The frame preprocessing as the CUDA launcher runs it (`Kernels::launch_preprocess`): `frame`
/// (`stride * in_h` bytes of `d.format`) to `out` `[3, out_h, out_w]` through the intermediate `tmp`.
pub fn preprocess(
    d: &PreDims,
    frame: &[u8],
    h: Taps<'_>,
    v: Taps<'_>,
    lut: &[f32],
    out: &mut [f32],
) -> Result<()> {
    valid(d.validate())?;
    let g_src = Guarded::first("frame", frame, d.frame_bytes())?;
    let g_lut = Guarded::first("lut", lut, 3 * 256)?;
    let g_out = Guarded::first("out", out, d.out_len())?;
    let guard = |what: &str, t: Taps<'_>, n: usize, k: usize| -> Result<[Guarded; 3]> {
        Ok([
            Guarded::first(what, t.start, n)?,
            Guarded::first(what, t.len, n)?,
            Guarded::first(what, t.weights, n * k)?,
        ])
    };
    let gh = guard("horizontal taps", h, d.out_w, d.hksize)?;
    let gv = guard("vertical taps", v, d.out_h, d.vksize)?;
    let g_tmp = Guarded::of(&vec![0u8; d.tmp_bytes()])?;
    let tp = g_tmp.ptr::<u8>();
    let [stride, format, in_h, hk, out_w, out_h, vk] = [
        d.stride,
        d.format as usize,
        d.in_h,
        d.hksize,
        d.out_w,
        d.out_h,
        d.vksize,
    ]
    .map(|x| x as i32);
    let (src, lt, o) = (
        g_src.ptr::<u8>() as *const u8,
        g_lut.ptr::<f32>() as *const f32,
        g_out.ptr::<f32>(),
    );
    let r = launch(d.hpass_launch(), 1, &|| {
        // SAFETY: the guarded copies hold what `d` implies and outlive the launch.
        unsafe {
            image_ffi::pre_hpass(
                src,
                stride,
                format,
                in_h,
                gh[0].ptr(),
                gh[1].ptr(),
                gh[2].ptr(),
                hk,
                out_w,
                tp,
            )
        }
    })
    .and_then(|()| {
        launch(d.vpass_launch(), 1, &|| {
            // SAFETY: as above.
            unsafe {
                image_ffi::pre_vpass_norm(
                    tp,
                    out_w,
                    out_h,
                    gv[0].ptr(),
                    gv[1].ptr(),
                    gv[2].ptr(),
                    vk,
                    lt,
                    o,
                )
            }
        })
    });
    g_out.copy_to(out);
    r
}

/// One axis of the bilinear mask upsampling tables (`LabelUpsampler::axes`).
#[derive(Debug, Clone, Copy)]
pub struct Axis<'a> {
    /// Lower source index per output index.
    pub i0: &'a [u32],
    /// Upper source index per output index.
    pub i1: &'a [u32],
    /// Weight of `i0`.
    pub l0: &'a [f32],
    /// Weight of `i1`.
    pub l1: &'a [f32],
}

/// The mask composition as the CUDA launcher runs it (`Kernels::launch_mask_labels`): the tracks' logit
/// maps (of `logits` `[d.tracks, in_h, in_w]`) upsampled, thresholded and labelled into `mask`.
pub fn mask_labels(
    d: &LabelDims,
    tracks: &TrackTable,
    logits: &[f32],
    y: Axis<'_>,
    x: Axis<'_>,
    mask: &mut [u8],
) -> Result<()> {
    valid(d.validate())?;
    if tracks.max_map().is_some_and(|m| m >= d.tracks) {
        return Err(EmuError(format!(
            "a track reads map {:?}, the logits hold {}",
            tracks.max_map(),
            d.tracks
        )));
    }
    let [in_h, in_w, out_h, out_w] = [d.in_h, d.in_w, d.out_h, d.out_w].map(|v| v as i32);
    let g_lg = Guarded::first("logits", logits, d.tracks * d.in_h * d.in_w)?;
    let g_m = Guarded::first("mask", mask, d.out_h * d.out_w)?;
    let axis = |what: &str, a: Axis<'_>, n: usize| -> Result<[Guarded; 4]> {
        Ok([
            Guarded::first(what, a.i0, n)?,
            Guarded::first(what, a.i1, n)?,
            Guarded::first(what, a.l0, n)?,
            Guarded::first(what, a.l1, n)?,
        ])
    };
    let (gy, gx) = (axis("rows", y, d.out_h)?, axis("columns", x, d.out_w)?);
    let (lg, m, table) = (g_lg.ptr::<f32>() as *const f32, g_m.ptr::<u8>(), *tracks);
    let r = launch(d.launch(), 1, &|| {
        // SAFETY: the guarded copies hold what `d` implies and outlive the launch; every map a track
        // reads is inside `logits` (checked above).
        unsafe {
            image_ffi::mask_labels(
                lg,
                in_h,
                in_w,
                gy[0].ptr(),
                gy[1].ptr(),
                gy[2].ptr(),
                gy[3].ptr(),
                gx[0].ptr(),
                gx[1].ptr(),
                gx[2].ptr(),
                gx[3].ptr(),
                out_h,
                out_w,
                table,
                m,
            )
        }
    });
    g_m.copy_to(mask);
    r
}
