//! TensorRT backend (feature `tensorrt`): runs serialized plans with the same [`Backend`]/[`Engine`]
//! traits as the CPU backend.
//!
//! - Before TensorRT is touched, CUDA is checked (driver library present, device context created):
//!   cudarc panics without a driver, and a TensorRT runtime created without a GPU can come back
//!   non-null but unusable. Any error TensorRT logs while creating the runtime, deserializing a plan or
//!   creating its context fails the call (the shim records them).
//! - Our plugin library (`libreferdino_plugins.so`) is loaded into TensorRT's plugin registry before any
//!   plan is deserialized, once per process: the registry is process-wide and a second `loadLibrary` of
//!   the same library fails, so later backends reuse the first load and asking for another library is an
//!   error ([`crate::backend::plugin_search::load_plugins_once`]).
//! - Bindings are set by tensor name (`setTensorAddress`); device views ([`View::Device`]) are bound
//!   directly, so intermediate tensors stay on the GPU (and on Jetson a mask ring slot registered with
//!   CUDA can be the head engine's output). Host views go through one staging buffer per binding,
//!   allocated on first use and reused.
//! - All engines of a backend run with `enqueueV3` on one CUDA stream; optionally each engine captures a
//!   CUDA graph once its bindings are stable, and replays it while they stay the same.
//! - A plan's sidecar (`*.plan.json`, written by `referdino build`) is checked first, so a plan built for
//!   another TensorRT version (compared exactly: major.minor.patch.build) or GPU gets a clear error.

pub mod build;
pub mod ffi;

use crate::backend::plugin_search::{load_plugins_once, PluginLoad};
use crate::backend::{check_bindings, Backend, Engine, TensorSpec, View, ViewMut};
use crate::engines::plan_info::{check_specs, PlanInfo, TrtVersion};
use crate::error::{Error, Result};
use crate::tensor::DType;
use cudarc::driver::{result as cu, sys, CudaContext, CudaGraph, CudaStream};
use std::ffi::{CStr, CString};
use std::os::raw::c_char;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};

/// Options of the TensorRT backend.
#[derive(Debug, Clone)]
pub struct TrtOptions {
    /// CUDA device ordinal.
    pub device: usize,
    /// Plugin library to load before deserializing (our `libreferdino_plugins.so`). `None` loads
    /// nothing; plans that use our custom ops then fail to deserialize with TensorRT's message.
    pub plugin_library: Option<PathBuf>,
    /// Capture a CUDA graph per engine once its bindings are stable.
    pub cuda_graph: bool,
}

impl Default for TrtOptions {
    fn default() -> Self {
        Self {
            device: 0,
            plugin_library: None,
            cuda_graph: true,
        }
    }
}

/// The shim's log sink: forwards TensorRT's log lines to `log`.
///
/// # Safety
///
/// `msg` is null or points to a NUL-terminated string that stays valid for the duration of the call
/// (the shim passes TensorRT's message buffer).
unsafe extern "C" fn log_sink(severity: i32, msg: *const c_char) {
    if msg.is_null() {
        return;
    }
    // SAFETY: `msg` is non-null and, by this function's contract, a NUL-terminated string valid for
    // the call; the borrow ends before we return.
    let m = unsafe { CStr::from_ptr(msg) }.to_string_lossy();
    match severity {
        0 | 1 => log::error!(target: "tensorrt", "{m}"),
        2 => log::warn!(target: "tensorrt", "{m}"),
        3 => log::debug!(target: "tensorrt", "{m}"),
        _ => log::trace!(target: "tensorrt", "{m}"),
    }
}

fn install_log_sink() {
    static ONCE: Once = Once::new();
    // SAFETY: `log_sink` has the C signature the shim expects, is a plain function (valid for the
    // whole process) and upholds its contract for any (severity, NUL-terminated message) the shim
    // passes; `Once` makes this the single call the shim allows.
    ONCE.call_once(|| unsafe { ffi::rd_trt_set_log_sink(Some(log_sink)) });
}

/// Opens CUDA device `device`, failing cleanly (never panicking) when there is no driver or GPU.
pub fn cuda_context(device: usize) -> Result<Arc<CudaContext>> {
    // cudarc panics when libcuda cannot be loaded, so look for it first.
    // SAFETY: `is_culib_present` only tries to load the driver library and reports whether it could;
    // it calls no CUDA function and has no precondition.
    if !unsafe { sys::is_culib_present() } {
        return Err(Error::Gpu(
            "the CUDA driver library (libcuda.so) is not present: no NVIDIA driver on this machine"
                .into(),
        ));
    }
    CudaContext::new(device)
        .map_err(|e| Error::Gpu(format!("CUDA device {device} is not usable: {e}")))
}

/// TensorRT version of the loaded library, normalized to `major*10000 + minor*100 + patch` (no build
/// number: use [`library_version_exact`] to compare with a plan).
pub fn library_version() -> i32 {
    // SAFETY: takes no arguments and only reads TensorRT's version number (the fallback returns 0).
    unsafe { ffi::rd_trt_library_version() }
}

/// Exact version of the loaded TensorRT library (`getInferLib{Major,Minor,Patch,Build}Version()`), what
/// plans are built for and checked against.
pub fn library_version_exact() -> TrtVersion {
    let mut v = [0i32; 4];
    // SAFETY: `v` is a local array of the 4 `i32`s the shim writes, exclusively borrowed for the call.
    unsafe { ffi::rd_trt_library_version_exact(v.as_mut_ptr()) };
    TrtVersion::from_parts(v)
}

/// Exact TensorRT version of the headers the shim was compiled against (`NV_TENSORRT_*`).
pub fn header_version_exact() -> TrtVersion {
    let mut v = [0i32; 4];
    // SAFETY: `v` is a local array of the 4 `i32`s the shim writes, exclusively borrowed for the call.
    unsafe { ffi::rd_trt_header_version_exact(v.as_mut_ptr()) };
    TrtVersion::from_parts(v)
}

struct Runtime(*mut ffi::rd_trt_runtime);
// SAFETY: the pointer is an owned handle with no thread affinity: the shim takes its API mutex around
// every call that uses a runtime (plan deserialization), and TensorRT documents `IRuntime` as usable
// from any thread when calls are not concurrent, so moving it to another thread is sound.
unsafe impl Send for Runtime {}
// SAFETY: `&Runtime` only exposes the raw pointer to shim calls, which serialise on the shim's API
// mutex, so shared references on several threads never use the runtime concurrently.
unsafe impl Sync for Runtime {}
impl Drop for Runtime {
    fn drop(&mut self) {
        // SAFETY: `self.0` came non-null from `rd_trt_runtime_create` and is destroyed exactly once,
        // here; every engine deserialized from it holds an `Arc<Runtime>`, so none outlives it.
        unsafe { ffi::rd_trt_runtime_destroy(self.0) }
    }
}

/// The TensorRT backend: one CUDA context, one stream, one TensorRT runtime.
pub struct TensorRtBackend {
    // Drop order: runtime, then stream, then context.
    runtime: Arc<Runtime>,
    stream: Arc<CudaStream>,
    ctx: Arc<CudaContext>,
    opts: TrtOptions,
}

impl TensorRtBackend {
    /// Checks CUDA, loads the plugin library and creates the runtime, in that order.
    pub fn new(opts: TrtOptions) -> Result<Self> {
        if !ffi::SHIM_BUILT {
            let mut e = ffi::ErrBuf::new();
            let (p, n) = e.raw();
            // SAFETY: without the shim this is the Rust fallback, which ignores the path and writes
            // at most `n` bytes (NUL included) into `e`'s buffer, live for the call.
            unsafe { ffi::rd_trt_load_plugins(std::ptr::null(), p, n) };
            return Err(Error::Backend(e.message()));
        }
        install_log_sink();
        let ctx = cuda_context(opts.device)?;
        ctx.bind_to_thread()
            .map_err(|e| Error::Gpu(format!("cannot bind CUDA context: {e}")))?;
        let stream = ctx
            .new_stream()
            .map_err(|e| Error::Gpu(format!("cannot create a CUDA stream: {e}")))?;
        if let Some(lib) = &opts.plugin_library {
            load_plugin_library(lib)?;
        }
        let mut err = ffi::ErrBuf::new();
        let (p, n) = err.raw();
        // SAFETY: `p`/`n` describe `err`'s buffer, live and exclusively borrowed for the call; the shim
        // writes at most `n` bytes into it. The CUDA context is current on this thread.
        let rt = unsafe { ffi::rd_trt_runtime_create(p, n) };
        if rt.is_null() {
            return Err(Error::Backend(err.message()));
        }
        log::info!(
            "TensorRT {} (compiled against {}) on {}",
            library_version_exact(),
            header_version_exact(),
            ctx.name().unwrap_or_else(|_| "unknown GPU".into())
        );
        Ok(Self {
            ctx,
            stream,
            runtime: Arc::new(Runtime(rt)),
            opts,
        })
    }

    /// GPU compute capability.
    pub fn compute_capability(&self) -> Result<(i32, i32)> {
        self.ctx
            .compute_capability()
            .map_err(|e| Error::Gpu(format!("cannot query compute capability: {e}")))
    }

    /// Waits for all work on the backend's stream (needed before the host reads device outputs that a
    /// run wrote into unified memory without a host view).
    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(|e| Error::Gpu(format!("stream synchronize: {e}")))
    }

    /// Loads a plan and checks its I/O against `expected` (inputs, outputs); see [`check_specs`].
    pub fn load_checked(
        &self,
        path: &Path,
        expected_inputs: &[TensorSpec],
        expected_outputs: &[TensorSpec],
    ) -> Result<Box<dyn Engine>> {
        Ok(Box::new(self.load_checked_plan(
            path,
            expected_inputs,
            expected_outputs,
        )?))
    }

    /// [`TensorRtBackend::load_checked`] as the concrete engine (which [`TrtEngine::share_on`] can
    /// give to other streams).
    pub fn load_checked_plan(
        &self,
        path: &Path,
        expected_inputs: &[TensorSpec],
        expected_outputs: &[TensorSpec],
    ) -> Result<TrtEngine> {
        let e = self.load_engine(path, None)?;
        check_specs(
            &e.name,
            expected_inputs,
            expected_outputs,
            &e.inputs,
            &e.outputs,
        )?;
        Ok(e)
    }

    /// A backend on the same CUDA context and TensorRT runtime with a CUDA stream of its own: the
    /// backend of a second camera stream whose engines share this one's plans
    /// ([`TrtEngine::share_on`]).
    pub fn with_new_stream(&self) -> Result<Self> {
        self.ctx
            .bind_to_thread()
            .map_err(|e| Error::Gpu(format!("cannot bind CUDA context: {e}")))?;
        let stream = self
            .ctx
            .new_stream()
            .map_err(|e| Error::Gpu(format!("cannot create a CUDA stream: {e}")))?;
        Ok(Self {
            runtime: self.runtime.clone(),
            stream,
            ctx: self.ctx.clone(),
            opts: self.opts.clone(),
        })
    }

    /// Loads a plan built with a dynamic batch axis (an object engine, built with an optimization
    /// profile) and fixes its batch to `batch` for this engine's execution context: its bindings are
    /// then static at that batch, like every other engine's. `batch` outside the plan's profile is an
    /// error naming the range; a static plan ignores `batch`.
    pub fn load_batched(&self, path: &Path, batch: usize) -> Result<Box<dyn Engine>> {
        Ok(Box::new(self.load_engine(path, Some(batch))?))
    }

    /// [`TensorRtBackend::load_batched`] as the concrete engine (which [`TrtEngine::share_on`] can
    /// give to other streams).
    pub fn load_batched_plan(&self, path: &Path, batch: usize) -> Result<TrtEngine> {
        self.load_engine(path, Some(batch))
    }

    fn load_engine(&self, path: &Path, batch: Option<usize>) -> Result<TrtEngine> {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("engine")
            .to_string();
        let info = PlanInfo::load_for(path)?;
        if let Some(info) = &info {
            info.check_compatible(library_version_exact(), self.compute_capability()?)?;
        }
        let plan = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        self.ctx
            .bind_to_thread()
            .map_err(|e| Error::Gpu(format!("cannot bind CUDA context: {e}")))?;
        let mut err = ffi::ErrBuf::new();
        let (p, n) = err.raw();
        // SAFETY: `self.runtime.0` is a live runtime (owned by `self`); `plan` is a readable buffer of
        // `plan.len()` bytes that outlives the call (TensorRT copies what it keeps while
        // deserializing); `p`/`n` describe `err`'s buffer, live for the call.
        let raw = unsafe {
            ffi::rd_trt_engine_load(self.runtime.0, plan.as_ptr() as *const _, plan.len(), p, n)
        };
        if raw.is_null() {
            let msg = err.message();
            let hint = if msg.contains("version")
                || msg.contains("compatib")
                || msg.contains("magic")
            {
                " (the plan was built by another TensorRT version or for another GPU: rebuild it on this board)"
            } else if msg.to_ascii_lowercase().contains("plugin") {
                " (a plugin is missing: pass our plugin library, libreferdino_plugins.so)"
            } else {
                ""
            };
            return Err(Error::Backend(format!("{}: {msg}{hint}", path.display())));
        }
        self.engine_of(EngineHandle(raw), name, batch)
            .map_err(|e| Error::Backend(format!("{}: {e}", path.display())))
    }

    /// The engine around a freshly made `handle` (its execution context not yet used), on this
    /// backend's stream, its dynamic batch (if any) fixed to `batch`.
    fn engine_of(
        &self,
        handle: EngineHandle,
        name: String,
        batch: Option<usize>,
    ) -> Result<TrtEngine> {
        if let Some(b) = batch {
            let b = i32::try_from(b)
                .map_err(|_| Error::Config(format!("engine {name}: batch {b} is too large")))?;
            let mut err = ffi::ErrBuf::new();
            let (p, n) = err.raw();
            // SAFETY: `handle.0` is a live engine handle, exclusively owned here; `p`/`n` describe
            // `err`'s buffer, live for the call.
            if unsafe { ffi::rd_trt_engine_set_batch(handle.0, b, p, n) } != 0 {
                return Err(Error::Backend(err.message()));
            }
        }
        let (inputs, outputs) = read_io(&handle, &name)?;
        let in_names = names_of(&inputs)?;
        let out_names = names_of(&outputs)?;
        Ok(TrtEngine {
            name,
            staging_in: (0..inputs.len()).map(|_| None).collect(),
            staging_out: (0..outputs.len()).map(|_| None).collect(),
            bound_in: vec![0; inputs.len()],
            bound_out: vec![0; outputs.len()],
            inputs,
            outputs,
            in_names,
            out_names,
            handle,
            _runtime: self.runtime.clone(),
            ctx: self.ctx.clone(),
            stream: self.stream.clone(),
            use_graph: self.opts.cuda_graph,
            capture_failures: 0,
            graph: None,
            warm: false,
            batch,
        })
    }
}

/// Loads a plugin library into TensorRT's registry, once per process (see
/// [`load_plugins_once`]: the same library again is a no-op, another library an error), with a clear
/// error when the file is missing.
pub fn load_plugin_library(lib: &Path) -> Result<()> {
    if !lib.exists() {
        return Err(Error::Backend(format!(
            "plugin library {} not found (build it with `cargo build --release -p referdino-plugins \
             --features tensorrt` and pass its path)",
            lib.display()
        )));
    }
    let done = load_plugins_once(lib, |lib| {
        let c = CString::new(lib.as_os_str().to_string_lossy().as_bytes())
            .map_err(|_| Error::Backend(format!("plugin path {} contains NUL", lib.display())))?;
        let mut err = ffi::ErrBuf::new();
        let (p, n) = err.raw();
        // SAFETY: `c` is a NUL-terminated path that outlives the call (the shim hands it to
        // TensorRT's loadLibrary, which does not keep it); `p`/`n` describe `err`'s buffer, live for
        // the call.
        if unsafe { ffi::rd_trt_load_plugins(c.as_ptr(), p, n) } != 0 {
            return Err(Error::Backend(err.message()));
        }
        Ok(())
    })?;
    if done == PluginLoad::AlreadyLoaded {
        log::debug!(
            "plugin library {} already loaded in this process",
            lib.display()
        );
    }
    Ok(())
}

impl Backend for TensorRtBackend {
    fn name(&self) -> &'static str {
        "tensorrt"
    }
    fn load(&self, path: &Path) -> Result<Box<dyn Engine>> {
        let e = self.load_engine(path, None)?;
        // With a sidecar, the plan must also have the I/O recorded at build time.
        if let Some(info) = PlanInfo::load_for(path)? {
            if !info.inputs.is_empty() || !info.outputs.is_empty() {
                check_specs(&e.name, &info.inputs, &info.outputs, &e.inputs, &e.outputs)?;
            }
        }
        Ok(Box::new(e))
    }
}

struct EngineHandle(*mut ffi::rd_trt_engine);
impl Drop for EngineHandle {
    fn drop(&mut self) {
        // SAFETY: `self.0` is null (a handle given to a `TrtPlan`, which the shim ignores) or came
        // from `rd_trt_engine_load` or `rd_trt_engine_share` and is destroyed exactly once, here (the
        // shim frees the shared engine with its last handle); the `TrtEngine` or `TrtPlan` owning this
        // handle still holds its runtime (fields drop in order).
        unsafe { ffi::rd_trt_engine_destroy(self.0) }
    }
}

/// TensorRT `DataType` value → our element type.
pub fn dtype_from_trt(v: i32) -> Option<DType> {
    Some(match v {
        0 => DType::F32,
        1 => DType::F16,
        3 => DType::I32,
        4 => DType::Bool,
        5 => DType::U8,
        7 => DType::BF16,
        8 => DType::I64,
        _ => return None,
    })
}

fn read_io(h: &EngineHandle, engine: &str) -> Result<(Vec<TensorSpec>, Vec<TensorSpec>)> {
    // SAFETY: `h.0` is a live engine handle borrowed for the call.
    let n = unsafe { ffi::rd_trt_engine_num_io(h.0) };
    let (mut ins, mut outs) = (Vec::new(), Vec::new());
    for i in 0..n {
        let mut name: *const c_char = std::ptr::null();
        let (mut is_in, mut dt, mut nd) = (0i32, 0i32, 0i32);
        let mut dims = [0i64; 8];
        // SAFETY: `h.0` is a live engine, `i` is in `0..n`, every out-pointer is a distinct local
        // valid for writes, and `dims` holds the 8 values the shim requires.
        let rc = unsafe {
            ffi::rd_trt_engine_io(
                h.0,
                i,
                &mut name,
                &mut is_in,
                &mut dt,
                &mut nd,
                dims.as_mut_ptr(),
            )
        };
        if rc != 0 || name.is_null() {
            return Err(Error::Backend(format!(
                "engine {engine}: cannot read I/O tensor {i}"
            )));
        }
        // SAFETY: on success `name` is non-null (checked above) and points to the NUL-terminated
        // tensor name owned by the engine, which `h` keeps alive past this copy.
        let name = unsafe { CStr::from_ptr(name) }
            .to_string_lossy()
            .into_owned();
        let dtype = dtype_from_trt(dt).ok_or_else(|| {
            Error::Backend(format!(
                "engine {engine}: tensor {name} has TensorRT type {} which referdino cannot bind",
                crate::engines::report::trt_data_type_name(dt.max(0) as usize)
            ))
        })?;
        let mut shape = Vec::with_capacity(nd as usize);
        for &d in &dims[..nd.clamp(0, 8) as usize] {
            if d < 0 {
                return Err(Error::Backend(format!(
                    "engine {engine}: tensor {name} has a dynamic shape {:?}: an object engine with an \
                     optimization profile is loaded with its batch (`TensorRtBackend::load_batched`); \
                     other engines must be static (rebuild from a static export)",
                    &dims[..nd as usize]
                )));
            }
            shape.push(d as usize);
        }
        let spec = TensorSpec { name, dtype, shape };
        if is_in != 0 {
            ins.push(spec);
        } else {
            outs.push(spec);
        }
    }
    Ok((ins, outs))
}

fn names_of(specs: &[TensorSpec]) -> Result<Vec<CString>> {
    specs
        .iter()
        .map(|s| {
            CString::new(s.name.as_bytes())
                .map_err(|_| Error::Backend(format!("tensor name {:?} contains NUL", s.name)))
        })
        .collect()
}

/// A device allocation owned by an engine (host-view staging).
struct DeviceBuf {
    ptr: sys::CUdeviceptr,
    bytes: usize,
}
impl Drop for DeviceBuf {
    fn drop(&mut self) {
        // SAFETY: `self.ptr` came from `malloc_sync` and is freed exactly once, here. The owning
        // engine's `Drop` binds its context and synchronizes its stream before its fields (and so
        // this buffer) drop, so no queued copy or kernel still uses the memory.
        unsafe {
            let _ = cu::free_sync(self.ptr);
        }
    }
}

fn staging(slot: &mut Option<DeviceBuf>, bytes: usize) -> Result<sys::CUdeviceptr> {
    if let Some(b) = slot {
        if b.bytes >= bytes {
            return Ok(b.ptr);
        }
    }
    // SAFETY: allocation has no memory precondition; callers bind the engine's CUDA context to this
    // thread first (`run`), and the result is owned by the returned `DeviceBuf`.
    let ptr = unsafe { cu::malloc_sync(bytes.max(1)) }.map_err(|e| {
        Error::Gpu(format!(
            "cannot allocate {bytes} bytes of device memory: {e}"
        ))
    })?;
    *slot = Some(DeviceBuf { ptr, bytes });
    Ok(ptr)
}

fn host_bytes<'a>(v: &'a View<'_>) -> Option<&'a [u8]> {
    Some(match v {
        View::F32(s) => bytemuck::cast_slice(s),
        View::F16(s) => bytemuck::cast_slice(s),
        View::I64(s) => bytemuck::cast_slice(s),
        View::U8(s) => s,
        // bool is one byte holding 0 or 1, as TensorRT's kBOOL.
        // SAFETY: `bool` has size and alignment 1 and every `bool` is a valid `u8`, so the `s.len()`
        // bytes at `s.as_ptr()` are initialised `u8`s, borrowed for the same lifetime as `s`.
        View::Bool(s) => unsafe { std::slice::from_raw_parts(s.as_ptr() as *const u8, s.len()) },
        View::Device(_) => return None,
    })
}

fn host_bytes_mut<'a>(v: &'a mut ViewMut<'_>) -> Option<&'a mut [u8]> {
    Some(match v {
        ViewMut::F32(s) => bytemuck::cast_slice_mut(s),
        ViewMut::F16(s) => bytemuck::cast_slice_mut(s),
        ViewMut::I64(s) => bytemuck::cast_slice_mut(s),
        ViewMut::U8(s) => s,
        // TensorRT writes only 0/1 into kBOOL tensors, so the bytes stay valid bools.
        // SAFETY: `bool` has size and alignment 1, so the slice covers exactly `s`'s memory, borrowed
        // mutably for the same lifetime. The only writer through it is the device-to-host copy of a
        // kBOOL output, which stores 0 or 1 in every byte, so `s` holds valid `bool`s afterwards.
        ViewMut::Bool(s) => unsafe {
            std::slice::from_raw_parts_mut(s.as_mut_ptr() as *mut u8, s.len())
        },
        ViewMut::Device(_) => return None,
    })
}

/// Another execution context of the engine behind `handle` (of TensorRT runtime `runtime`) on
/// `backend`'s CUDA stream, its dynamic batch (if any) fixed to `batch`.
fn share(
    (handle, runtime): (&EngineHandle, &Arc<Runtime>),
    name: &str,
    batch: Option<usize>,
    backend: &TensorRtBackend,
) -> Result<TrtEngine> {
    if !Arc::ptr_eq(runtime, &backend.runtime) {
        return Err(Error::Backend(format!(
            "engine {name}: shared with a backend of another TensorRT runtime"
        )));
    }
    backend
        .ctx
        .bind_to_thread()
        .map_err(|e| Error::Gpu(format!("cannot bind CUDA context: {e}")))?;
    let mut err = ffi::ErrBuf::new();
    let (p, n) = err.raw();
    // SAFETY: `handle.0` is a live handle of an engine or plan (only read: the shim takes its API
    // mutex and creates a new context of the shared engine, never touching the handle's own
    // context); `p`/`n` describe `err`'s buffer.
    let raw = unsafe { ffi::rd_trt_engine_share(handle.0, p, n) };
    if raw.is_null() {
        return Err(Error::Backend(format!("engine {name}: {}", err.message())));
    }
    backend.engine_of(EngineHandle(raw), name.to_string(), batch)
}

/// A deserialized plan without an execution context ([`TrtEngine::into_plan`]): its weights in GPU
/// memory, once, from which [`TrtPlan::share_on`] makes an execution context for each stream that
/// runs it. It holds no activation memory of its own.
///
/// Field order is drop order: the handle goes before the runtime it was deserialized by.
pub struct TrtPlan {
    name: String,
    batch: Option<usize>,
    handle: EngineHandle,
    _runtime: Arc<Runtime>,
    ctx: Arc<CudaContext>,
}

impl Drop for TrtPlan {
    fn drop(&mut self) {
        // Freeing the engine (with its last handle) needs the context current on this thread.
        let _ = self.ctx.bind_to_thread();
    }
}

// SAFETY: the handle is owned by the plan and has no thread affinity (see `TrtEngine`'s `Send`); it
// holds no execution context, so nothing of it is bound to a stream or a thread.
unsafe impl Send for TrtPlan {}
// SAFETY: `&TrtPlan` only reaches the handle through `rd_trt_engine_share`, which reads the shared
// engine under the shim's API mutex, so plans shared between threads are never used concurrently.
unsafe impl Sync for TrtPlan {}

impl TrtPlan {
    /// An execution context of this plan on `backend`'s CUDA stream ([`TrtEngine::share_on`]): the
    /// engine a stream runs, with its own bindings, activations and CUDA graph, at the batch the
    /// plan was loaded at.
    pub fn share_on(&self, backend: &TensorRtBackend) -> Result<TrtEngine> {
        share(
            (&self.handle, &self._runtime),
            &self.name,
            self.batch,
            backend,
        )
    }

    /// The plan's name (its file stem).
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// One loaded plan with its execution context.
///
/// Field order is drop order: the graph and staging buffers go first, then the TensorRT engine, then
/// the runtime, stream and context they depend on.
pub struct TrtEngine {
    name: String,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    in_names: Vec<CString>,
    out_names: Vec<CString>,
    bound_in: Vec<u64>,
    bound_out: Vec<u64>,
    use_graph: bool,
    /// Graph captures that failed so far; graphs are given up after [`MAX_CAPTURE_FAILURES`].
    capture_failures: u32,
    /// The dynamic batch fixed at load (a shared context fixes the same).
    batch: Option<usize>,
    /// Enqueued at least once with the current bindings (TensorRT may allocate lazily on the first
    /// enqueue, which must not happen inside a graph capture).
    warm: bool,
    graph: Option<CudaGraph>,
    staging_in: Vec<Option<DeviceBuf>>,
    staging_out: Vec<Option<DeviceBuf>>,
    handle: EngineHandle,
    _runtime: Arc<Runtime>,
    stream: Arc<CudaStream>,
    ctx: Arc<CudaContext>,
}

impl Drop for TrtEngine {
    fn drop(&mut self) {
        // Device frees and TensorRT teardown need the context current on this thread.
        let _ = self.ctx.bind_to_thread();
        let _ = self.stream.synchronize();
    }
}

// SAFETY: the raw pointers inside (engine handle, staging buffers) are owned by the engine and have no
// thread affinity: an engine is driven by one thread at a time (`run` takes `&mut self`), `run` and
// `Drop` bind the engine's CUDA context to whichever thread they run on, and TensorRT execution
// contexts and CUDA graphs may move between threads when not used concurrently.
unsafe impl Send for TrtEngine {}

impl TrtEngine {
    /// Another execution context of this plan on `backend`'s CUDA stream, which must be on the same
    /// context and TensorRT runtime ([`TensorRtBackend::with_new_stream`]): the weights stay where
    /// they are (one copy in GPU memory for every stream), the new context has its own bindings,
    /// activations and CUDA graph. The two may run concurrently, each on its own stream.
    pub fn share_on(&self, backend: &TensorRtBackend) -> Result<TrtEngine> {
        share(
            (&self.handle, &self._runtime),
            &self.name,
            self.batch,
            backend,
        )
    }

    /// This engine as a [`TrtPlan`]: its execution context (and the activation memory TensorRT
    /// gave it) freed, the deserialized engine kept for [`TrtPlan::share_on`]. Loading checks a
    /// plan through a context (its I/O, its batch within the profile); a plan kept for streams that
    /// come later need not hold one meanwhile.
    pub fn into_plan(mut self) -> TrtPlan {
        // The context's graph and staging buffers go before the context.
        let _ = self.ctx.bind_to_thread();
        let _ = self.stream.synchronize();
        self.graph = None;
        self.staging_in.iter_mut().for_each(|b| *b = None);
        self.staging_out.iter_mut().for_each(|b| *b = None);
        // `self` keeps a null handle, which its drop ignores.
        let handle = std::mem::replace(&mut self.handle, EngineHandle(std::ptr::null_mut()));
        // SAFETY: `handle.0` is this engine's live handle, owned here and used by no other thread
        // (`self` is owned); its stream was synchronized above, so the context runs nothing. The shim
        // frees the context only, and `TrtPlan` then calls nothing on the handle that needs one.
        unsafe { ffi::rd_trt_engine_drop_context(handle.0) };
        TrtPlan {
            name: std::mem::take(&mut self.name),
            batch: self.batch,
            handle,
            _runtime: Arc::clone(&self._runtime),
            ctx: Arc::clone(&self.ctx),
        }
    }

    fn bind(&mut self, output: bool, i: usize, addr: u64) -> Result<()> {
        let (bound, names) = if output {
            (&mut self.bound_out, &self.out_names)
        } else {
            (&mut self.bound_in, &self.in_names)
        };
        if bound[i] == addr {
            return Ok(());
        }
        let mut err = ffi::ErrBuf::new();
        let (p, n) = err.raw();
        // SAFETY: the handle is live, `names[i]` is a NUL-terminated name that outlives the call, and
        // `p`/`n` describe `err`'s buffer. TensorRT only stores `addr`; the memory behind it is used
        // at enqueue time, when `run` has checked it against the engine's I/O (sizes and types).
        if unsafe { ffi::rd_trt_engine_set_address(self.handle.0, names[i].as_ptr(), addr, p, n) }
            != 0
        {
            return Err(Error::Backend(format!(
                "engine {}: {}",
                self.name,
                err.message()
            )));
        }
        bound[i] = addr;
        // New addresses invalidate a captured graph.
        self.graph = None;
        self.warm = false;
        Ok(())
    }

    fn enqueue_v3(&mut self) -> Result<()> {
        let mut err = ffi::ErrBuf::new();
        let (p, n) = err.raw();
        // SAFETY: the handle is live, the stream belongs to the context bound by `run`/`enqueue`, every
        // I/O address was set by `bind` in this call to memory that stays valid until the stream has
        // run the engine (`run` synchronizes; `enqueue`'s device buffers are owned by a session that
        // synchronizes before freeing them), and `p`/`n` describe `err`'s buffer.
        let rc = unsafe {
            ffi::rd_trt_engine_enqueue(self.handle.0, self.stream.cu_stream() as *mut _, p, n)
        };
        if rc != 0 {
            return Err(Error::Backend(format!(
                "engine {}: {}",
                self.name,
                err.message()
            )));
        }
        Ok(())
    }

    fn execute(&mut self) -> Result<()> {
        if !self.use_graph || !self.warm {
            self.enqueue_v3()?;
            self.warm = true;
            return Ok(());
        }
        if self.graph.is_none() {
            if let Err(e) = self
                .stream
                .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            {
                self.capture_failed(format!("begin graph capture: {e}"));
                return self.enqueue_v3();
            }
            let enq = self.enqueue_v3();
            let captured = self.stream.end_capture(sys::CUgraphInstantiate_flags(0));
            match (enq, captured) {
                (Ok(()), Ok(Some(g))) => self.graph = Some(g),
                (enq, cap) => {
                    self.capture_failed(match (&enq, &cap) {
                        (Err(e), _) => e.to_string(),
                        (_, Err(e)) => e.to_string(),
                        _ => "empty graph".to_string(),
                    });
                    // Nothing ran inside the failed capture: run the engine now, uncaptured.
                    return self.enqueue_v3();
                }
            }
        }
        if let Some(g) = &self.graph {
            g.launch()
                .map_err(|e| Error::Gpu(format!("engine {}: graph launch: {e}", self.name)))?;
        }
        Ok(())
    }
}

/// Failed CUDA graph captures after which an engine runs without graphs for good: one failure may
/// be transient (an error in that frame's enqueue), several mean the engine cannot be captured
/// (some plugins and layers cannot).
const MAX_CAPTURE_FAILURES: u32 = 3;

impl TrtEngine {
    /// Counts a failed capture; the next frame tries again until [`MAX_CAPTURE_FAILURES`].
    fn capture_failed(&mut self, why: String) {
        self.capture_failures += 1;
        if self.capture_failures >= MAX_CAPTURE_FAILURES {
            log::warn!(
                "engine {}: CUDA graph capture failed {} times ({why}), running without graphs",
                self.name,
                self.capture_failures
            );
            self.use_graph = false;
        } else {
            log::warn!(
                "engine {}: CUDA graph capture failed ({why}); trying again on a later frame",
                self.name
            );
        }
    }
}

impl Engine for TrtEngine {
    fn name(&self) -> &str {
        &self.name
    }
    fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }
    fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    fn run(&mut self, inputs: &[View<'_>], outputs: &mut [ViewMut<'_>]) -> Result<()> {
        check_bindings(&self.name, &self.inputs, inputs, &self.outputs, outputs)?;
        self.ctx
            .bind_to_thread()
            .map_err(|e| Error::Gpu(format!("cannot bind CUDA context: {e}")))?;
        let cu_stream = self.stream.cu_stream();
        for (i, v) in inputs.iter().enumerate() {
            let addr = match host_bytes(v) {
                None => match v {
                    View::Device(d) => d.ptr(),
                    _ => 0, // host views always have bytes; 0 would fail setTensorAddress loudly
                },
                Some(bytes) => {
                    let dst = staging(&mut self.staging_in[i], bytes.len())?;
                    // SAFETY: `dst` is a staging allocation of at least `bytes.len()` bytes on this
                    // engine's context, and `bytes` is a host slice borrowed for all of `run`. Host
                    // views are ordinary (pageable) memory, for which CUDA stages the source before
                    // the call returns, so an early error return cannot leave a read of `bytes` in
                    // flight; on success `run` synchronizes the stream before returning anyway.
                    unsafe { cu::memcpy_htod_async(dst, bytes, cu_stream) }.map_err(|e| {
                        Error::Gpu(format!(
                            "engine {}: copy of input {}: {e}",
                            self.name, self.inputs[i].name
                        ))
                    })?;
                    dst
                }
            };
            self.bind(false, i, addr)?;
        }
        for (i, v) in outputs.iter().enumerate() {
            let addr = match v {
                ViewMut::Device(d) => d.ptr(),
                _ => staging(&mut self.staging_out[i], self.outputs[i].bytes())?,
            };
            self.bind(true, i, addr)?;
        }
        self.execute()?;
        for (i, v) in outputs.iter_mut().enumerate() {
            if let Some(bytes) = host_bytes_mut(v) {
                let src = self.bound_out[i];
                // SAFETY: `src` is the device buffer bound to output `i`, holding at least the
                // output's `bytes()` (checked equal to `bytes.len()` by `check_bindings`); `bytes` is
                // exclusively borrowed for all of `run`. A copy into pageable host memory returns only
                // once complete, and `run` synchronizes the stream before returning in any case.
                unsafe { cu::memcpy_dtoh_async(bytes, src, cu_stream) }.map_err(|e| {
                    Error::Gpu(format!(
                        "engine {}: copy of output {}: {e}",
                        self.name, self.outputs[i].name
                    ))
                })?;
            }
        }
        // Host views must be complete when run returns; device outputs are also complete so that a
        // host reader of unified memory (the mask ring) never sees a half-written mask.
        self.stream
            .synchronize()
            .map_err(|e| Error::Gpu(format!("engine {}: {e}", self.name)))
    }

    fn enqueue(&mut self, inputs: &[View<'_>], outputs: &mut [ViewMut<'_>]) -> Result<()> {
        check_bindings(&self.name, &self.inputs, inputs, &self.outputs, outputs)?;
        // Only device memory: a host view would need a copy whose source must stay alive until the
        // stream reaches it, which this call cannot promise once it returns.
        if let Some(i) = inputs.iter().position(|v| !matches!(v, View::Device(_))) {
            return Err(Error::Backend(format!(
                "engine {}: enqueue needs device memory for every binding; input {} is host memory",
                self.name, self.inputs[i].name
            )));
        }
        if let Some(i) = outputs
            .iter()
            .position(|v| !matches!(v, ViewMut::Device(_)))
        {
            return Err(Error::Backend(format!(
                "engine {}: enqueue needs device memory for every binding; output {} is host memory",
                self.name, self.outputs[i].name
            )));
        }
        self.ctx
            .bind_to_thread()
            .map_err(|e| Error::Gpu(format!("cannot bind CUDA context: {e}")))?;
        for (i, v) in inputs.iter().enumerate() {
            if let View::Device(d) = v {
                self.bind(false, i, d.ptr())?;
            }
        }
        for (i, v) in outputs.iter().enumerate() {
            if let ViewMut::Device(d) = v {
                self.bind(true, i, d.ptr())?;
            }
        }
        // A stable set of addresses replays the captured CUDA graph (see `execute`).
        self.execute()
    }

    fn cuda_stream(&self) -> Option<usize> {
        Some(self.stream.cu_stream() as usize)
    }
}
