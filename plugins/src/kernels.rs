//! NVRTC compilation of the embedded kernels and their launches through the CUDA driver API (feature `cuda`).
//!
//! Loading strategy (used by tests, the bench and the TensorRT plugins alike): the `.cu` sources are compiled
//! at run time by NVRTC to a **cubin for the exact SM of the current device** (no PTX JIT, so an NVRTC/driver
//! PTX-version skew cannot bite), once per architecture per process; the cubin is loaded as a module once per
//! CUDA context and kept for the life of the process.
//!
//! cudarc panics when libcuda/libnvrtc are missing, so every entry point here checks
//! `is_culib_present()` first and returns [`Error::NoDriver`] / [`Error::NoNvrtc`] instead.

use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::sync::{Arc, Mutex, OnceLock};

use cudarc::driver::{result as drv, sys as dsys};
use cudarc::nvrtc::{result as rtc, sys as rsys};

use crate::dims::{LabelDims, LaunchGeometry, MsdaDims, PreDims, PruneDims};
use crate::error::{invalid, Error, Result};
use crate::sources::{KernelSource, IMAGE, MSDEFORM, PRUNE};
pub use crate::tracks::TrackTable;

/// Whether libnvrtc can be loaded (never panics).
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to dlopen the library.
    unsafe { rsys::is_culib_present() }
}

/// Whether libcuda (the driver) can be loaded (never panics).
pub fn driver_available() -> bool {
    // SAFETY: only tries to dlopen the library.
    unsafe { dsys::is_culib_present() }
}

/// NVRTC's (major, minor) version.
pub fn nvrtc_version() -> Result<(i32, i32)> {
    if !nvrtc_available() {
        return Err(Error::NoNvrtc);
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is present; the call writes two ints.
    let r = unsafe { rsys::nvrtcVersion(&mut major, &mut minor) };
    r.result().map_err(|e| Error::Compile {
        source_name: "-".into(),
        arch: "-".into(),
        log: format!("{e:?}"),
    })?;
    Ok((major, minor))
}

/// Include directories handed to NVRTC so that `cuda_fp16.h` resolves: `REFERDINO_CUDA_INCLUDE`
/// (`:`-separated), `$CUDA_HOME/include`, `$CUDA_PATH/include`, then `/usr/local/cuda/include` if present.
pub fn include_paths() -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    if let Ok(s) = std::env::var("REFERDINO_CUDA_INCLUDE") {
        v.extend(s.split(':').filter(|p| !p.is_empty()).map(str::to_owned));
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Ok(root) = std::env::var(var) {
            v.push(format!("{root}/include"));
        }
    }
    if std::path::Path::new("/usr/local/cuda/include/cuda_fp16.h").exists() {
        v.push("/usr/local/cuda/include".into());
    }
    v
}

/// Output of one NVRTC compilation.
#[derive(Debug, Clone)]
pub struct Compiled {
    /// PTX text (for inspection and `ptxas -v`).
    pub ptx: String,
    /// Device code for the requested `sm_XX`.
    pub cubin: Vec<u8>,
    /// NVRTC's log (warnings), possibly empty.
    pub log: String,
}

/// RAII for an `nvrtcProgram`.
struct Program(rsys::nvrtcProgram);
impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: created by create_program and destroyed once.
        let _ = unsafe { rtc::destroy_program(self.0) };
    }
}

fn c_chars_to_string(v: &[std::ffi::c_char]) -> String {
    let bytes: Vec<u8> = v
        .iter()
        .take_while(|&&c| c != 0)
        // The byte itself whether `c_char` is i8 (x86-64) or u8 (aarch64).
        .map(|&c| c.to_ne_bytes()[0])
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Compiles one kernel source for `arch` (`"sm_87"`, `"sm_90"`, ...) to PTX and cubin.
pub fn compile(source: &KernelSource, arch: &str, include_paths: &[String]) -> Result<Compiled> {
    if !nvrtc_available() {
        return Err(Error::NoNvrtc);
    }
    let fail = |log: String| Error::Compile {
        source_name: source.name.into(),
        arch: arch.into(),
        log,
    };
    let src = CString::new(source.src).map_err(|_| fail("source contains a NUL byte".into()))?;
    let name = CString::new(source.name).map_err(|_| fail("name contains a NUL byte".into()))?;
    let prog = Program(rtc::create_program(&src, Some(&name)).map_err(|e| fail(format!("{e:?}")))?);
    let mut opts = vec![
        format!("--gpu-architecture={arch}"),
        "--std=c++17".to_owned(),
        "--fmad=true".to_owned(),
    ];
    opts.extend(include_paths.iter().map(|p| format!("--include-path={p}")));
    // SAFETY: `prog` is a live program; the options are plain strings.
    let compiled = unsafe { rtc::compile_program(prog.0, &opts) };
    // SAFETY: as above.
    let log = unsafe { rtc::get_program_log(prog.0) }
        .map(|l| c_chars_to_string(&l))
        .unwrap_or_default();
    if let Err(e) = compiled {
        return Err(fail(format!("{e:?}\n{log}")));
    }
    // SAFETY: compiled successfully.
    let ptx = unsafe { rtc::get_ptx(prog.0) }.map_err(|e| fail(format!("nvrtcGetPTX: {e:?}")))?;
    let mut size = 0usize;
    // SAFETY: compiled for a real sm_XX, so a cubin exists; the buffer has the reported size.
    let cubin = unsafe {
        rsys::nvrtcGetCUBINSize(prog.0, &mut size)
            .result()
            .map_err(|e| fail(format!("nvrtcGetCUBINSize: {e:?}")))?;
        let mut buf = vec![0u8; size];
        rsys::nvrtcGetCUBIN(prog.0, buf.as_mut_ptr().cast())
            .result()
            .map_err(|e| fail(format!("nvrtcGetCUBIN: {e:?}")))?;
        buf
    };
    Ok(Compiled {
        ptx: c_chars_to_string(&ptx),
        cubin,
        log,
    })
}

fn cuda_err(what: &'static str) -> impl Fn(drv::DriverError) -> Error {
    move |e| Error::Cuda {
        what,
        detail: format!("{e:?}"),
    }
}

/// Value/output element type of MSDeformAttn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    /// `float`.
    F32,
    /// `__half` (accumulation stays in float).
    F16,
}

impl ValueType {
    /// Bytes per element.
    pub fn bytes(self) -> usize {
        match self {
            ValueType::F32 => 4,
            ValueType::F16 => 2,
        }
    }
}

/// Element type of `spatial_shapes` / `level_start_index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexType {
    /// int64 (the ONNX contract).
    I64,
    /// int32 (what some TensorRT versions hand to plugins).
    I32,
}

/// Which MSDeformAttn kernel to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsdaVariant {
    /// Block per query, taps resolved once in shared memory.
    Optimized,
    /// One thread per output element (baseline).
    Naive,
}

/// Device pointers of one MSDeformAttn call.
#[derive(Debug, Clone, Copy)]
pub struct MsdaPtrs {
    /// `[B,S,H,Dh]`.
    pub value: dsys::CUdeviceptr,
    /// `[L,2]`.
    pub spatial_shapes: dsys::CUdeviceptr,
    /// `[L]`.
    pub level_start_index: dsys::CUdeviceptr,
    /// `[B,Q,H,L,P,2]` f32.
    pub sampling_locations: dsys::CUdeviceptr,
    /// `[B,Q,H,L,P]` f32.
    pub attention_weights: dsys::CUdeviceptr,
    /// `[B,Q,H*Dh]`.
    pub out: dsys::CUdeviceptr,
}

/// Device pointers of one QueryPrune call.
#[derive(Debug, Clone, Copy)]
pub struct PrunePtrs {
    /// `[B,N,Lt]` f32.
    pub class_logits: dsys::CUdeviceptr,
    /// `[B,N,N]` f32.
    pub self_attn: dsys::CUdeviceptr,
    /// `[B,K]` int64.
    pub keep_idx: dsys::CUdeviceptr,
    /// `[B,N]` f32.
    pub gate: dsys::CUdeviceptr,
}

/// Device pointers of one preprocessing call (tables as built by the CPU `Preprocessor`).
#[derive(Debug, Clone, Copy)]
pub struct PrePtrs {
    /// The frame, `stride * in_h` bytes (device memory, or page-locked/mapped host memory's device alias).
    pub frame: dsys::CUdeviceptr,
    /// Horizontal taps: `[out_w]` u32 starts, `[out_w]` u32 lengths, `[out_w * hksize]` i32 weights.
    pub h_start: dsys::CUdeviceptr,
    /// See `h_start`.
    pub h_len: dsys::CUdeviceptr,
    /// See `h_start`.
    pub h_weights: dsys::CUdeviceptr,
    /// Vertical taps, as the horizontal ones over `out_h`.
    pub v_start: dsys::CUdeviceptr,
    /// See `v_start`.
    pub v_len: dsys::CUdeviceptr,
    /// See `v_start`.
    pub v_weights: dsys::CUdeviceptr,
    /// `[3][256]` f32: byte value -> normalised value per channel.
    pub lut: dsys::CUdeviceptr,
    /// Intermediate image, `in_h * out_w * 3` bytes.
    pub tmp: dsys::CUdeviceptr,
    /// Output `[3, out_h, out_w]` f32.
    pub out: dsys::CUdeviceptr,
}

/// Device pointers of one mask composition call (tables as built by the CPU `LabelUpsampler`).
#[derive(Debug, Clone, Copy)]
pub struct LabelPtrs {
    /// `[T, in_h, in_w]` f32 mask logits.
    pub logits: dsys::CUdeviceptr,
    /// Vertical table: `[out_h]` u32 `i0`, `i1` and f32 `l0`, `l1`.
    pub y_i0: dsys::CUdeviceptr,
    /// See `y_i0`.
    pub y_i1: dsys::CUdeviceptr,
    /// See `y_i0`.
    pub y_l0: dsys::CUdeviceptr,
    /// See `y_i0`.
    pub y_l1: dsys::CUdeviceptr,
    /// Horizontal table: `[out_w]` u32 `i0`, `i1` and f32 `l0`, `l1`.
    pub x_i0: dsys::CUdeviceptr,
    /// See `x_i0`.
    pub x_i1: dsys::CUdeviceptr,
    /// See `x_i0`.
    pub x_l0: dsys::CUdeviceptr,
    /// See `x_i0`.
    pub x_l1: dsys::CUdeviceptr,
    /// `[out_h, out_w]` u8 label mask; may be the device alias of mapped host memory (a ring slot): the
    /// kernel writes every byte once and reads none.
    pub mask: dsys::CUdeviceptr,
}

/// The kernels loaded into one CUDA context.
pub struct Kernels {
    arch: String,
    /// Indexed by `msda_index`.
    msda: [dsys::CUfunction; 8],
    prune: dsys::CUfunction,
    prune_stats: dsys::CUfunction,
    prune_select: dsys::CUfunction,
    pre_h: dsys::CUfunction,
    pre_v: dsys::CUfunction,
    labels: dsys::CUfunction,
}

// SAFETY: CUfunction handles are context-bound, not thread-bound; the driver API is thread safe.
unsafe impl Send for Kernels {}
// SAFETY: as above; launches do not mutate the handles.
unsafe impl Sync for Kernels {}

fn msda_index(variant: MsdaVariant, vt: ValueType, it: IndexType) -> usize {
    let v = match variant {
        MsdaVariant::Optimized => 0,
        MsdaVariant::Naive => 4,
    };
    let t = match vt {
        ValueType::F32 => 0,
        ValueType::F16 => 2,
    };
    let i = match it {
        IndexType::I64 => 0,
        IndexType::I32 => 1,
    };
    v + t + i
}

/// The compiled sources, in the order of [`SOURCES`].
type CompiledSet = Arc<Vec<Compiled>>;

/// Every source a context loads.
const SOURCES: [KernelSource; 3] = [MSDEFORM, PRUNE, IMAGE];
/// Loaded kernels keyed by CUcontext address.
type LoadedPerContext = Vec<(usize, Arc<Kernels>)>;

fn compiled_for(arch: &str) -> Result<CompiledSet> {
    static CACHE: OnceLock<Mutex<HashMap<String, CompiledSet>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(c) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(arch) {
        return Ok(c.clone());
    }
    let inc = include_paths();
    let t0 = std::time::Instant::now();
    let pair = Arc::new(
        SOURCES
            .iter()
            .map(|s| compile(s, arch, &inc))
            .collect::<Result<Vec<_>>>()?,
    );
    log::info!(
        "referdino-plugins: NVRTC compiled kernels for {arch} in {:.2?}",
        t0.elapsed()
    );
    cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(arch.to_owned(), pair.clone());
    Ok(pair)
}

impl Kernels {
    /// Kernels for the CUDA context current on this thread, compiled and loaded on first use.
    pub fn for_current_context() -> Result<Arc<Kernels>> {
        if !driver_available() {
            return Err(Error::NoDriver);
        }
        drv::init().map_err(cuda_err("cuInit"))?;
        let ctx = drv::ctx::get_current()
            .map_err(cuda_err("cuCtxGetCurrent"))?
            .ok_or_else(|| Error::Cuda {
                what: "cuCtxGetCurrent",
                detail: "no CUDA context is current".into(),
            })?;
        static LOADED: OnceLock<Mutex<LoadedPerContext>> = OnceLock::new();
        let loaded = LOADED.get_or_init(Default::default);
        let mut guard = loaded.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, k)) = guard.iter().find(|(c, _)| *c == ctx as usize) {
            return Ok(k.clone());
        }
        let mut dev: dsys::CUdevice = 0;
        // SAFETY: a context is current; writes one device handle.
        unsafe { dsys::cuCtxGetDevice(&mut dev) }
            .result()
            .map_err(cuda_err("cuCtxGetDevice"))?;
        // The cache is keyed by the context's address. A primary context that is torn down (its
        // last user released it) unloads our modules, and the next one may come back at the same
        // address: the cached handles would then be stale. So the entry holds a retain of the
        // primary context for the life of the process (as the CUDA runtime does). Contexts created
        // with cuCtxCreate must outlive their use of the kernels.
        let mut primary: dsys::CUcontext = std::ptr::null_mut();
        // SAFETY: valid device handle; writes one context handle.
        unsafe { dsys::cuDevicePrimaryCtxRetain(&mut primary, dev) }
            .result()
            .map_err(cuda_err("cuDevicePrimaryCtxRetain"))?;
        if primary != ctx {
            // SAFETY: releases the retain taken just above.
            let _ = unsafe { dsys::cuDevicePrimaryCtxRelease_v2(dev) };
        }
        let attr = |a| {
            // SAFETY: valid device handle and attribute.
            unsafe { drv::device::get_attribute(dev, a) }.map_err(cuda_err("cuDeviceGetAttribute"))
        };
        let major = attr(dsys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
        let minor = attr(dsys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
        let arch = format!("sm_{major}{minor}");
        let pair = compiled_for(&arch)?;
        let mut modules = Vec::with_capacity(pair.len());
        for c in pair.iter() {
            // SAFETY: the cubins are complete ELF images produced by NVRTC for this device's SM.
            modules.push(
                unsafe { drv::module::load_data(c.cubin.as_ptr().cast()) }
                    .map_err(cuda_err("cuModuleLoadData"))?,
            );
        }
        let (m_msda, m_prune, m_image) = (modules[0], modules[1], modules[2]);
        let get = |m, name: &str| {
            let c = CString::new(name).expect("static kernel names have no NUL");
            // SAFETY: the module was just loaded and is never unloaded.
            unsafe { drv::module::get_function(m, c) }.map_err(cuda_err("cuModuleGetFunction"))
        };
        let mut msda = [std::ptr::null_mut(); 8];
        for (slot, name) in msda.iter_mut().zip(MSDEFORM.entries) {
            *slot = get(m_msda, name)?;
        }
        let k = Arc::new(Kernels {
            arch,
            msda,
            prune: get(m_prune, PRUNE.entries[0])?,
            prune_stats: get(m_prune, PRUNE.entries[1])?,
            prune_select: get(m_prune, PRUNE.entries[2])?,
            pre_h: get(m_image, IMAGE.entries[0])?,
            pre_v: get(m_image, IMAGE.entries[1])?,
            labels: get(m_image, IMAGE.entries[2])?,
        });
        guard.push((ctx as usize, k.clone()));
        Ok(k)
    }

    /// The SM the kernels were compiled for (`sm_87`, ...).
    pub fn arch(&self) -> &str {
        &self.arch
    }

    unsafe fn launch(
        &self,
        f: dsys::CUfunction,
        g: LaunchGeometry,
        stream: dsys::CUstream,
        params: &mut [*mut c_void],
    ) -> Result<()> {
        self.launch_2d(f, g, 1, stream, params)
    }

    unsafe fn launch_2d(
        &self,
        f: dsys::CUfunction,
        g: LaunchGeometry,
        grid_y: u32,
        stream: dsys::CUstream,
        params: &mut [*mut c_void],
    ) -> Result<()> {
        drv::launch_kernel(
            f,
            (g.grid, grid_y, 1),
            (g.block, 1, 1),
            g.shared_bytes,
            stream,
            params,
        )
        .map_err(cuda_err("cuLaunchKernel"))
    }

    /// Enqueues MSDeformAttn on `stream`. Validates `dims` first. The optimized kernel takes the widest
    /// channel vector the head size and the buffers' alignment allow ([`MsdaDims::fwd_vec`]).
    ///
    /// # Safety
    /// The pointers must be device buffers of this context holding at least the elements `dims` implies, with
    /// the element types named by `vt`/`it`, and stay alive until the stream has run the kernel.
    pub unsafe fn launch_msda(
        &self,
        variant: MsdaVariant,
        vt: ValueType,
        it: IndexType,
        dims: &MsdaDims,
        p: &MsdaPtrs,
        stream: dsys::CUstream,
    ) -> Result<()> {
        let vec = dims.fwd_vec(vt.bytes(), &[p.value, p.out]);
        self.launch_msda_vec(variant, vt, it, dims, p, vec, stream)
    }

    /// As [`Kernels::launch_msda`] with the optimized kernel's channel vector chosen by the caller
    /// (benchmarks and tests compare the widths); the naive kernel ignores it.
    ///
    /// # Safety
    /// As [`Kernels::launch_msda`], and `p.value` and `p.out` aligned to `vec` elements.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn launch_msda_vec(
        &self,
        variant: MsdaVariant,
        vt: ValueType,
        it: IndexType,
        dims: &MsdaDims,
        p: &MsdaPtrs,
        vec: usize,
        stream: dsys::CUstream,
    ) -> Result<()> {
        dims.validate()?;
        let g = match variant {
            MsdaVariant::Optimized => {
                if dims.fwd_vec(vt.bytes(), &[p.value, p.out]) < vec {
                    return Err(invalid(format!(
                        "MSDeformAttn: value/output not aligned to {vec} elements"
                    )));
                }
                dims.fwd_launch(vec)?
            }
            MsdaVariant::Naive => dims.naive_launch(),
        };
        let mut vec = vec as i32;
        let (mut v, mut ss, mut ls, mut loc, mut aw, mut out) = (
            p.value,
            p.spatial_shapes,
            p.level_start_index,
            p.sampling_locations,
            p.attention_weights,
            p.out,
        );
        let mut ints = [
            dims.batch,
            dims.num_value,
            dims.heads,
            dims.head_dim,
            dims.num_query,
            dims.levels,
            dims.points,
        ]
        .map(|x| x as i32);
        let [b, s, h, dh, q, l, pt] = &mut ints;
        let mut params: [*mut c_void; 14] = [
            (&mut v as *mut u64).cast(),
            (&mut ss as *mut u64).cast(),
            (&mut ls as *mut u64).cast(),
            (&mut loc as *mut u64).cast(),
            (&mut aw as *mut u64).cast(),
            (&mut out as *mut u64).cast(),
            (b as *mut i32).cast(),
            (s as *mut i32).cast(),
            (h as *mut i32).cast(),
            (dh as *mut i32).cast(),
            (q as *mut i32).cast(),
            (l as *mut i32).cast(),
            (pt as *mut i32).cast(),
            (&mut vec as *mut i32).cast(),
        ];
        // The naive kernels have no `vec` parameter.
        let used = match variant {
            MsdaVariant::Optimized => 14,
            MsdaVariant::Naive => 13,
        };
        self.launch(
            self.msda[msda_index(variant, vt, it)],
            g,
            stream,
            &mut params[..used],
        )
    }

    /// Enqueues QueryPrune on `stream`. Validates `dims` first.
    ///
    /// # Safety
    /// As [`Kernels::launch_msda`], for the QueryPrune buffers.
    pub unsafe fn launch_prune(
        &self,
        dims: &PruneDims,
        p: &PrunePtrs,
        stream: dsys::CUstream,
    ) -> Result<()> {
        dims.validate()?;
        let (mut lg, mut at, mut ki, mut gt) = (p.class_logits, p.self_attn, p.keep_idx, p.gate);
        let (mut n, mut lt, mut k) = (dims.n as i32, dims.n_tokens as i32, dims.keep as i32);
        let mut params: [*mut c_void; 7] = [
            (&mut lg as *mut u64).cast(),
            (&mut at as *mut u64).cast(),
            (&mut ki as *mut u64).cast(),
            (&mut gt as *mut u64).cast(),
            (&mut n as *mut i32).cast(),
            (&mut lt as *mut i32).cast(),
            (&mut k as *mut i32).cast(),
        ];
        self.launch(self.prune, dims.launch(), stream, &mut params)
    }

    /// Enqueues QueryPrune as two kernels spread over the GPU (column sums and token maxima by 32-query
    /// blocks, then the gates and ranks by 32-query blocks) instead of one block per batch item:
    /// [`Kernels::launch_prune_stats`] then [`Kernels::launch_prune_select`]. `workspace` holds
    /// [`PruneDims::spread_workspace_bytes`]. Validates `dims` first.
    ///
    /// # Safety
    /// As [`Kernels::launch_prune`], and `workspace` is device memory of at least that size, not used
    /// by anything else until the stream has run both kernels.
    pub unsafe fn launch_prune_spread(
        &self,
        dims: &PruneDims,
        p: &PrunePtrs,
        workspace: dsys::CUdeviceptr,
        stream: dsys::CUstream,
    ) -> Result<()> {
        self.launch_prune_stats(dims, p, workspace, stream)?;
        self.launch_prune_select(dims, p, workspace, stream)
    }

    /// The first of the spread kernels alone (benchmarks time the two apart): per query the best token
    /// logit and the attention received, into `workspace`. Reads `class_logits` and `self_attn` of `p`.
    ///
    /// # Safety
    /// As [`Kernels::launch_prune_spread`].
    pub unsafe fn launch_prune_stats(
        &self,
        dims: &PruneDims,
        p: &PrunePtrs,
        workspace: dsys::CUdeviceptr,
        stream: dsys::CUstream,
    ) -> Result<()> {
        dims.validate()?;
        non_null(workspace, "QueryPrune workspace")?;
        let (mut lg, mut at, mut ws) = (p.class_logits, p.self_attn, workspace);
        let (mut n, mut lt) = (dims.n as i32, dims.n_tokens as i32);
        let mut params: [*mut c_void; 5] = [
            (&mut lg as *mut u64).cast(),
            (&mut at as *mut u64).cast(),
            (&mut ws as *mut u64).cast(),
            (&mut n as *mut i32).cast(),
            (&mut lt as *mut i32).cast(),
        ];
        let (g, gy) = dims.stats_launch();
        self.launch_2d(self.prune_stats, g, gy, stream, &mut params)
    }

    /// The second of the spread kernels alone: the gates and the kept queries from the statistics in
    /// `workspace` (written by [`Kernels::launch_prune_stats`]). Writes `keep_idx` and `gate` of `p`.
    ///
    /// # Safety
    /// As [`Kernels::launch_prune_spread`].
    pub unsafe fn launch_prune_select(
        &self,
        dims: &PruneDims,
        p: &PrunePtrs,
        workspace: dsys::CUdeviceptr,
        stream: dsys::CUstream,
    ) -> Result<()> {
        dims.validate()?;
        non_null(workspace, "QueryPrune workspace")?;
        let (mut ws, mut ki, mut gt) = (workspace, p.keep_idx, p.gate);
        let (mut n, mut k) = (dims.n as i32, dims.keep as i32);
        let mut params: [*mut c_void; 5] = [
            (&mut ws as *mut u64).cast(),
            (&mut ki as *mut u64).cast(),
            (&mut gt as *mut u64).cast(),
            (&mut n as *mut i32).cast(),
            (&mut k as *mut i32).cast(),
        ];
        let (g, gy) = dims.select_launch();
        self.launch_2d(self.prune_select, g, gy, stream, &mut params)
    }
}

impl Kernels {
    /// Enqueues the frame preprocessing (two kernels) on `stream`. Validates `dims` first.
    ///
    /// # Safety
    /// Every pointer must be device-accessible memory of this context holding what [`PrePtrs`] describes
    /// for `dims`, and stay alive until the stream has run both kernels.
    pub unsafe fn launch_preprocess(
        &self,
        dims: &PreDims,
        p: &PrePtrs,
        stream: dsys::CUstream,
    ) -> Result<()> {
        dims.validate()?;
        let (mut frame, mut hs, mut hl, mut hw, mut tmp) =
            (p.frame, p.h_start, p.h_len, p.h_weights, p.tmp);
        let mut ints = [
            dims.stride,
            dims.format as usize,
            dims.in_h,
            dims.hksize,
            dims.out_w,
        ]
        .map(|x| x as i32);
        let [stride, format, in_h, hk, out_w] = &mut ints;
        let mut params: [*mut c_void; 10] = [
            (&mut frame as *mut u64).cast(),
            (stride as *mut i32).cast(),
            (format as *mut i32).cast(),
            (in_h as *mut i32).cast(),
            (&mut hs as *mut u64).cast(),
            (&mut hl as *mut u64).cast(),
            (&mut hw as *mut u64).cast(),
            (hk as *mut i32).cast(),
            (out_w as *mut i32).cast(),
            (&mut tmp as *mut u64).cast(),
        ];
        self.launch(self.pre_h, dims.hpass_launch(), stream, &mut params)?;
        let (mut tmp, mut vs, mut vl, mut vw, mut lut, mut out) =
            (p.tmp, p.v_start, p.v_len, p.v_weights, p.lut, p.out);
        let mut ints = [dims.out_w, dims.out_h, dims.vksize].map(|x| x as i32);
        let [ow, oh, vk] = &mut ints;
        let mut params: [*mut c_void; 9] = [
            (&mut tmp as *mut u64).cast(),
            (ow as *mut i32).cast(),
            (oh as *mut i32).cast(),
            (&mut vs as *mut u64).cast(),
            (&mut vl as *mut u64).cast(),
            (&mut vw as *mut u64).cast(),
            (vk as *mut i32).cast(),
            (&mut lut as *mut u64).cast(),
            (&mut out as *mut u64).cast(),
        ];
        self.launch(self.pre_v, dims.vpass_launch(), stream, &mut params)
    }

    /// Enqueues the mask composition on `stream`: `tracks.len()` logit maps upsampled, thresholded and
    /// labelled into one mask, every byte written once. Validates `dims` first.
    ///
    /// # Safety
    /// Every pointer must be device-accessible memory of this context holding what [`LabelPtrs`] describes
    /// for `dims`, and stay alive until the stream has run the kernel.
    pub unsafe fn launch_mask_labels(
        &self,
        dims: &LabelDims,
        tracks: &TrackTable,
        p: &LabelPtrs,
        stream: dsys::CUstream,
    ) -> Result<()> {
        dims.validate()?;
        if tracks.max_map().is_some_and(|m| m >= dims.tracks) {
            return Err(invalid(format!(
                "mask labels: a track reads map {:?}, the logits hold {}",
                tracks.max_map(),
                dims.tracks
            )));
        }
        let mut ptrs = [
            p.logits, p.y_i0, p.y_i1, p.y_l0, p.y_l1, p.x_i0, p.x_i1, p.x_l0, p.x_l1, p.mask,
        ];
        let mut ints = [dims.in_h, dims.in_w, dims.out_h, dims.out_w].map(|x| x as i32);
        let mut table = *tracks;
        let [lg, yi0, yi1, yl0, yl1, xi0, xi1, xl0, xl1, mask] = &mut ptrs;
        let [ih, iw, oh, ow] = &mut ints;
        let mut params: [*mut c_void; 15] = [
            (lg as *mut u64).cast(),
            (ih as *mut i32).cast(),
            (iw as *mut i32).cast(),
            (yi0 as *mut u64).cast(),
            (yi1 as *mut u64).cast(),
            (yl0 as *mut u64).cast(),
            (yl1 as *mut u64).cast(),
            (xi0 as *mut u64).cast(),
            (xi1 as *mut u64).cast(),
            (xl0 as *mut u64).cast(),
            (xl1 as *mut u64).cast(),
            (oh as *mut i32).cast(),
            (ow as *mut i32).cast(),
            (&mut table as *mut TrackTable).cast(),
            (mask as *mut u64).cast(),
        ];
        self.launch(self.labels, dims.launch(), stream, &mut params)
    }
}

/// Rejects a null device pointer with a message naming the tensor.
pub fn non_null(ptr: dsys::CUdeviceptr, what: &str) -> Result<()> {
    if ptr == 0 {
        return Err(invalid(format!("{what}: null device pointer")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msda_entry_table_matches_source_order() {
        for (variant, vt, it, name) in [
            (
                MsdaVariant::Optimized,
                ValueType::F32,
                IndexType::I64,
                "msda_fwd_f32_i64",
            ),
            (
                MsdaVariant::Optimized,
                ValueType::F16,
                IndexType::I32,
                "msda_fwd_f16_i32",
            ),
            (
                MsdaVariant::Naive,
                ValueType::F32,
                IndexType::I32,
                "msda_naive_f32_i32",
            ),
            (
                MsdaVariant::Naive,
                ValueType::F16,
                IndexType::I64,
                "msda_naive_f16_i64",
            ),
        ] {
            assert_eq!(MSDEFORM.entries[msda_index(variant, vt, it)], name);
        }
    }

    #[test]
    fn no_driver_is_an_error_not_a_panic() {
        if driver_available() {
            eprintln!("skipped: a CUDA driver is present here");
            return;
        }
        assert!(matches!(
            Kernels::for_current_context(),
            Err(Error::NoDriver)
        ));
    }
}
