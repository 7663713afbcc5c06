//! ONNX Runtime backend (cargo feature `ort`): runs standard-ONNX engines through the `ort` crate with the
//! ONNX Runtime library loaded at run time.
//!
//! **Library.** Nothing is linked at build time. The shared library is found, in order, at
//! `ORT_DYLIB_PATH`, then in the `onnxruntime` Python wheel (`pip install onnxruntime`:
//! `onnxruntime/capi/libonnxruntime.so.*`), located without importing it. A missing or unloadable
//! library is an error ([`OrtBackend::new`]); callers that can fall back to the tract CPU backend use
//! [`ort_available`].
//!
//! **Graphs.** Both exports load: the native one, whose `referdino`-domain ops (MSDeformAttn,
//! QueryPrune) run as ONNX Runtime custom operators on our CPU kernels (`ort_ops.rs`), and the
//! decomposed one (`export --decompose-custom-ops`, standard ONNX only). The native export is the
//! faster: the decomposed deformable attention goes through `GridSample`.
//!
//! **INT8.** An engine with `DequantizeLinear` nodes (`export --precision int8`: Q/DQ pairs on the inputs
//! of its products, FP32 elsewhere) loads with ONNX Runtime's `MatMulAddFusion` off. That level-1 fusion
//! would turn each `DequantizeLinear → MatMul → Add(bias)` into a float `Gemm` before the level-2
//! quantization passes see it, leaving the product in FP32 behind a dequantize; without it they become
//! integer products (`MatMulIntegerToFloat`, `QLinearMatMul`, `QGemm`: VNNI / AMX on x86; Arm's
//! dot-product kernels are not measured here). benches/README.md, "INT8 on the CPU", has the measurement.
//!
//! **Threads.** Each session runs on its own intra-op pool of [`OrtBackend::threads`] threads (one
//! inter-op thread, sequential execution), so a thread budget means the same as on the CPU backend.
//! The pool's threads spin only while a run lasts (`session.force_spinning_stop`), so they leave the
//! cores to whatever runs next (another engine, possibly on tract, or the host path).
//!
//! **Allocation.** Every binding is an ONNX Runtime tensor allocated once at load time and bound once
//! to the session (`IoBinding`); a run copies the caller's inputs into them, runs the bound session and
//! copies the outputs back to the caller's buffers. ONNX Runtime still allocates its intermediate
//! tensors from its own arena (reused from run to run after the first) and the `ort` crate builds a
//! small output map per run (`tests/backend_ort.rs` counts what reaches the Rust allocator).

use crate::backend::{check_bindings, Backend, Engine, TensorSpec, View, ViewMut};
use crate::error::{Error, Result};
use crate::tensor::DType;
use ort::environment::Environment;
use ort::memory::Allocator;
use ort::session::builder::GraphOptimizationLevel;
use ort::session::{IoBinding, Session};
use ort::value::{DynTensor, TensorElementType, ValueType};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// Environment variable naming the ONNX Runtime shared library.
pub const DYLIB_ENV: &str = "ORT_DYLIB_PATH";

/// The ONNX Runtime library this process loaded, and its environment (one per process: the library
/// cannot be unloaded or swapped once loaded).
struct Loaded {
    path: PathBuf,
    env: Environment,
}

static LOADED: OnceLock<Loaded> = OnceLock::new();
static LOADING: Mutex<()> = Mutex::new(());

/// Where the ONNX Runtime library is expected: `ORT_DYLIB_PATH` when set, else the `onnxruntime`
/// Python wheel's `capi/libonnxruntime.so.*` (found through `python3` without importing the package).
/// The path is not checked for existence.
pub fn library_path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(DYLIB_ENV).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    wheel_library().ok_or_else(|| {
        Error::Backend(format!(
            "ONNX Runtime library not found: set {DYLIB_ENV} to libonnxruntime.so, or `pip install onnxruntime`"
        ))
    })
}

fn wheel_library() -> Option<PathBuf> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import importlib.util,os;s=importlib.util.find_spec('onnxruntime');print(os.path.dirname(s.origin) if s and s.origin else '')",
        ])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let dir = String::from_utf8(out.stdout).ok()?;
    let capi = Path::new(dir.trim()).join("capi");
    let mut libs: Vec<PathBuf> = std::fs::read_dir(&capi)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libonnxruntime.so") || n == "libonnxruntime.dylib")
        })
        .collect();
    // The versioned file is the real library; `libonnxruntime.so` may be a link to it.
    libs.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    libs.into_iter().next()
}

/// Loads the library at `path` (once per process) and returns the process environment.
fn load(path: &Path) -> Result<&'static Loaded> {
    if let Some(l) = LOADED.get() {
        if l.path != path {
            log::debug!(
                "ONNX Runtime already loaded from {}; not loading {}",
                l.path.display(),
                path.display()
            );
        }
        return Ok(l);
    }
    let _guard = LOADING.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(l) = LOADED.get() {
        return Ok(l);
    }
    if !path.is_file() {
        return Err(Error::Backend(format!(
            "ONNX Runtime library {} does not exist (set {DYLIB_ENV} to libonnxruntime.so, or `pip install onnxruntime`)",
            path.display()
        )));
    }
    let env = ort::init_from(path)
        .map_err(|e| {
            Error::Backend(format!(
                "cannot load ONNX Runtime from {}: {e}",
                path.display()
            ))
        })?
        .with_name("referdino")
        .with_telemetry(false)
        .build()
        .map_err(|e| Error::Backend(format!("ONNX Runtime environment: {e}")))?;
    log::debug!("ONNX Runtime loaded from {}", path.display());
    Ok(LOADED.get_or_init(|| Loaded {
        path: path.to_path_buf(),
        env,
    }))
}

/// Whether the ONNX Runtime library can be found and loaded (loads it on first call). Logs why not at
/// debug level.
pub fn ort_available() -> bool {
    match library_path().and_then(|p| load(&p)) {
        Ok(_) => true,
        Err(e) => {
            log::debug!("{e}");
            false
        }
    }
}

/// The ONNX Runtime backend.
#[derive(Clone)]
pub struct OrtBackend {
    env: &'static Environment,
    library: PathBuf,
    threads: usize,
    optimized: Option<PathBuf>,
}

impl std::fmt::Debug for OrtBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrtBackend")
            .field("library", &self.library)
            .field("threads", &self.threads)
            .finish_non_exhaustive()
    }
}

impl OrtBackend {
    /// Loads the library found by [`library_path`]; engines run on `threads` intra-op threads (0 = every
    /// available core).
    pub fn new(threads: usize) -> Result<Self> {
        Self::from_library(&library_path()?, threads)
    }

    /// Loads the library at `path` (the first library loaded stays for the life of the process).
    pub fn from_library(path: &Path, threads: usize) -> Result<Self> {
        let l = load(path)?;
        let threads = if threads == 0 {
            crate::backend::cpu::available_threads()
        } else {
            threads
        };
        Ok(OrtBackend {
            env: &l.env,
            library: l.path.clone(),
            threads,
            optimized: None,
        })
    }

    /// Writes the graph ONNX Runtime runs, after its optimisations, to `dir/<engine>.onnx` for every
    /// engine this backend loads (as [`OPTIMIZED_ENV`] does for every backend): to check which ops the
    /// optimiser chose.
    pub fn optimized_models(mut self, dir: &Path) -> Self {
        self.optimized = Some(dir.to_path_buf());
        self
    }

    /// Intra-op threads of each engine.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The library file in use.
    pub fn library(&self) -> &Path {
        &self.library
    }

    /// Loads an engine from ONNX bytes held in memory (`name` is used in errors and logs).
    pub fn load_bytes(&self, name: &str, onnx: &[u8]) -> Result<Box<dyn Engine>> {
        let session = self
            .builder(name, is_quantized(onnx))?
            .commit_from_memory(onnx)
            .map_err(|e| load_error(name, e))?;
        Ok(Box::new(OrtEngine::new(name, session)?))
    }

    fn builder(
        &self,
        name: &str,
        quantized: bool,
    ) -> Result<ort::session::builder::SessionBuilder> {
        let err =
            |e: ort::Error| Error::Backend(format!("engine {name}: ONNX Runtime options: {e}"));
        let b = Session::builder(self.env).map_err(err)?;
        let b = b
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(|e| err(e.into()))?
            .with_intra_threads(self.threads)
            .map_err(|e| err(e.into()))?
            .with_inter_threads(1)
            .map_err(|e| err(e.into()))?
            .with_parallel_execution(false)
            .map_err(|e| err(e.into()))?
            // The intra-op workers spin between the nodes of a run (fast hand-offs) but stop when the
            // run returns: otherwise they keep spinning on cores that the next engine needs, which
            // in a mixed set is a tract engine on its own pool (benches/README.md, "Backend per
            // engine").
            .with_config_entry("session.force_spinning_stop", "1")
            .map_err(|e| err(e.into()))?;
        // Workers that never spin (they sleep between a run's nodes) for measurements on machines
        // whose cores are shared: see SPIN_ENV.
        let b = match std::env::var_os(SPIN_ENV) {
            Some(v) if v == "0" => b.with_intra_op_spinning(false).map_err(|e| err(e.into()))?,
            _ => b,
        };
        let b = b
            // A domain per session: ONNX Runtime's domain handle is not shareable across threads,
            // and the backend must stay `Send + Sync`.
            .with_operators(super::ort_ops::domain(self.threads).map_err(err)?)
            .map_err(|e| err(e.into()))?;
        let b = if quantized {
            log::info!(
                "engine {name}: INT8 Q/DQ graph, ONNX Runtime's MatMul+Add fusion off so its products run in integers"
            );
            b.with_disabled_optimizers(QUANTIZED_DISABLED_OPTIMIZERS)
                .map_err(|e| err(e.into()))?
        } else {
            b
        };
        // The graph as ONNX Runtime runs it, after its optimisations, for checking which ops the
        // optimiser chose (tests, performance work).
        let dir = self
            .optimized
            .clone()
            .or_else(|| std::env::var_os(OPTIMIZED_ENV).map(PathBuf::from));
        let b = match dir {
            Some(dir) => b
                .with_optimized_model_path(Path::new(&dir).join(format!("{name}.onnx")))
                .map_err(|e| err(e.into()))?,
            None => b,
        };
        // Per-node timing for performance work: ONNX Runtime writes a Chrome-trace JSON per engine
        // (`PREFIX/<engine>_<time>.json`) when the engine is dropped.
        match std::env::var_os(PROFILE_ENV) {
            Some(dir) => {
                let prefix = Path::new(&dir).join(name);
                log::info!(
                    "engine {name}: ONNX Runtime profile to {}_*.json",
                    prefix.display()
                );
                b.with_profiling(prefix).map_err(|e| err(e.into()))
            }
            None => Ok(b),
        }
    }
}

fn load_error(name: &str, e: impl std::fmt::Display) -> Error {
    Error::Backend(format!("engine {name}: ONNX Runtime cannot load it: {e}"))
}

impl Backend for OrtBackend {
    fn name(&self) -> &'static str {
        "ort"
    }

    fn load(&self, path: &Path) -> Result<Box<dyn Engine>> {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("engine")
            .to_string();
        if !path.is_file() {
            return Err(Error::Backend(format!(
                "engine file {} does not exist",
                path.display()
            )));
        }
        let session = self
            .builder(&name, file_is_quantized(path)?)?
            .commit_from_file(path)
            .map_err(|e| load_error(&name, e))?;
        Ok(Box::new(OrtEngine::new(&name, session)?))
    }
}

fn dtype_of(name: &str, t: TensorElementType) -> Result<DType> {
    Ok(match t {
        TensorElementType::Float32 => DType::F32,
        TensorElementType::Float16 => DType::F16,
        TensorElementType::Bfloat16 => DType::BF16,
        TensorElementType::Int64 => DType::I64,
        TensorElementType::Int32 => DType::I32,
        TensorElementType::Uint8 => DType::U8,
        TensorElementType::Bool => DType::Bool,
        other => {
            return Err(Error::Backend(format!(
                "binding {name}: element type {other:?} is not supported"
            )))
        }
    })
}

fn element_of(d: DType) -> TensorElementType {
    match d {
        DType::F32 => TensorElementType::Float32,
        DType::F16 => TensorElementType::Float16,
        DType::BF16 => TensorElementType::Bfloat16,
        DType::I64 => TensorElementType::Int64,
        DType::I32 => TensorElementType::Int32,
        DType::U8 => TensorElementType::Uint8,
        DType::Bool => TensorElementType::Bool,
    }
}

fn spec_of(engine: &str, name: &str, t: &ValueType) -> Result<TensorSpec> {
    let (Some(ty), Some(shape)) = (t.tensor_type(), t.tensor_shape()) else {
        return Err(Error::Backend(format!(
            "engine {engine}: binding {name} is not a tensor"
        )));
    };
    let mut dims = Vec::with_capacity(shape.len());
    for &d in shape.iter() {
        if d < 0 {
            return Err(Error::Backend(format!(
                "engine {engine}: binding {name} has a dynamic shape {shape:?}; engines must be static"
            )));
        }
        dims.push(d as usize);
    }
    Ok(TensorSpec {
        name: name.to_string(),
        dtype: dtype_of(name, ty)?,
        shape: dims,
    })
}

/// One binding: an ONNX Runtime tensor on the CPU allocator, and where its data lives.
struct Slot {
    tensor: DynTensor,
    bytes: usize,
}

impl Slot {
    fn new(engine: &str, s: &TensorSpec) -> Result<Self> {
        let tensor = DynTensor::new(&Allocator::default(), element_of(s.dtype), s.shape.clone())
            .map_err(|e| Error::Backend(format!("engine {engine}: tensor {}: {e}", s.name)))?;
        Ok(Slot {
            tensor,
            bytes: s.bytes(),
        })
    }
}

/// A view's bytes (host views only).
fn view_bytes<'a>(v: &View<'a>) -> Option<&'a [u8]> {
    Some(match *v {
        View::F32(x) => bytemuck::cast_slice(x),
        View::F16(x) => bytemuck::cast_slice(x),
        View::I64(x) => bytemuck::cast_slice(x),
        View::U8(x) => x,
        // SAFETY: `bool` is one byte with the values 0 and 1, so its slice reads as the same number of
        // initialised bytes for the slice's lifetime.
        View::Bool(x) => unsafe { std::slice::from_raw_parts(x.as_ptr().cast::<u8>(), x.len()) },
        View::Device(_) => return None,
    })
}

/// Copies `src` (ONNX Runtime's output bytes) into a host output view. Bool outputs are written as 0/1.
fn write_out(dst: &mut ViewMut<'_>, src: &[u8]) -> bool {
    match dst {
        ViewMut::F32(x) => bytemuck::cast_slice_mut(x).copy_from_slice(src),
        ViewMut::F16(x) => bytemuck::cast_slice_mut(x).copy_from_slice(src),
        ViewMut::I64(x) => bytemuck::cast_slice_mut(x).copy_from_slice(src),
        ViewMut::U8(x) => x.copy_from_slice(src),
        ViewMut::Bool(x) => {
            for (d, &s) in x.iter_mut().zip(src) {
                *d = s != 0;
            }
        }
        ViewMut::Device(_) => return false,
    }
    true
}

/// Environment variable naming a folder: every ONNX Runtime engine loaded while it is set writes the graph
/// ONNX Runtime runs, after its optimisations, to `<folder>/<engine>.onnx` (for checks, not production).
pub const OPTIMIZED_ENV: &str = "REFERDINO_ORT_OPTIMIZED";

/// The ONNX Runtime optimisers turned off for INT8 Q/DQ graphs (see the module documentation).
pub const QUANTIZED_DISABLED_OPTIMIZERS: &str = "MatMulAddFusion";

/// Whether a serialized ONNX model holds `DequantizeLinear` nodes. The op type is stored as plain bytes in
/// the protobuf, so a byte search answers without decoding hundreds of megabytes of weights; a node or
/// tensor *named* so would only turn one fusion off, never change a result.
pub fn is_quantized(onnx: &[u8]) -> bool {
    memchr::memmem::find(onnx, b"DequantizeLinear").is_some()
}

/// [`is_quantized`] for an ONNX file, read through a memory map.
fn file_is_quantized(path: &Path) -> Result<bool> {
    let f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the map is read-only and dropped before this returns; a file truncated meanwhile by
    // another process would fault (SIGBUS) as any reader of a shrinking mapped file would, and engine
    // files are written once by `export` / `build` before they are loaded.
    let map = unsafe { memmap2::Mmap::map(&f) }.map_err(|e| Error::io(path, e))?;
    Ok(is_quantized(&map))
}

/// Environment variable naming a folder: every ONNX Runtime engine loaded while it is set records
/// per-node timings there (written when the engine is dropped). For profiling, never for production.
pub const PROFILE_ENV: &str = "REFERDINO_ORT_PROFILE";

/// Environment variable: `0` makes the intra-op workers of every ONNX Runtime engine loaded while it is
/// set sleep between the nodes of a run instead of spinning (`session.intra_op.allow_spinning`). On a
/// machine whose cores other processes share, spinning workers lose their core at random and every
/// node waits for them; benches/README.md ("Backend per engine") has the measurements. Unset, or any
/// other value: ONNX Runtime's default (spin while a run lasts).
pub const SPIN_ENV: &str = "REFERDINO_ORT_SPIN";

/// An engine loaded into ONNX Runtime, with its bindings allocated and bound once.
pub struct OrtEngine {
    name: String,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    in_slots: Vec<Slot>,
    out_slots: Vec<Slot>,
    binding: IoBinding,
    session: Session,
}

// SAFETY: the engine owns its session, binding and tensors exclusively and only touches them through
// `&mut self`; ONNX Runtime sessions, bindings and values are not tied to the thread that created them
// (the `ort` crate marks `Session` and `Value` `Send` already; `IoBinding` is a plain handle).
unsafe impl Send for OrtEngine {}

impl Drop for OrtEngine {
    fn drop(&mut self) {
        if std::env::var_os(PROFILE_ENV).is_some() {
            match self.session.end_profiling() {
                Ok(f) => log::info!("engine {}: ONNX Runtime profile written to {f}", self.name),
                Err(e) => log::warn!(
                    "engine {}: ONNX Runtime profile not written: {e}",
                    self.name
                ),
            }
        }
    }
}

impl OrtEngine {
    fn new(name: &str, session: Session) -> Result<Self> {
        let inputs = session
            .inputs()
            .iter()
            .map(|o| spec_of(name, o.name(), o.dtype()))
            .collect::<Result<Vec<_>>>()?;
        let outputs = session
            .outputs()
            .iter()
            .map(|o| spec_of(name, o.name(), o.dtype()))
            .collect::<Result<Vec<_>>>()?;
        let err = |e: ort::Error| Error::Backend(format!("engine {name}: binding: {e}"));
        let mut binding = session.create_binding().map_err(err)?;
        let in_slots = inputs
            .iter()
            .map(|s| Slot::new(name, s))
            .collect::<Result<Vec<_>>>()?;
        let mut out_slots = outputs
            .iter()
            .map(|s| Slot::new(name, s))
            .collect::<Result<Vec<_>>>()?;
        for (s, slot) in inputs.iter().zip(&in_slots) {
            binding.bind_input(&s.name, &slot.tensor).map_err(err)?;
        }
        for (s, slot) in outputs.iter().zip(&mut out_slots) {
            binding
                .bind_output(&s.name, &mut slot.tensor)
                .map_err(err)?;
        }
        Ok(OrtEngine {
            name: name.to_string(),
            inputs,
            outputs,
            in_slots,
            out_slots,
            binding,
            session,
        })
    }
}

impl Engine for OrtEngine {
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
        for (slot, v) in self.in_slots.iter_mut().zip(inputs) {
            let src = view_bytes(v).ok_or_else(|| {
                Error::Backend(format!(
                    "engine {}: the ONNX Runtime backend takes host memory only",
                    self.name
                ))
            })?;
            if src.len() != slot.bytes {
                return Err(Error::Backend(format!(
                    "engine {}: input of {} bytes for a {}-byte binding",
                    self.name,
                    src.len(),
                    slot.bytes
                )));
            }
            let dst = slot.tensor.data_ptr_mut().cast::<u8>();
            if slot.bytes > 0 {
                // SAFETY: the tensor was allocated on the CPU allocator with exactly `slot.bytes` bytes
                // (its spec's shape and type) and is only written here, between runs; `src` has the same
                // length and is caller memory, so the ranges do not overlap.
                unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst, src.len()) };
            }
        }
        self.session
            .run_binding(&self.binding)
            .map_err(|e| Error::Backend(format!("engine {}: ONNX Runtime run: {e}", self.name)))?;
        for (slot, v) in self.out_slots.iter().zip(outputs.iter_mut()) {
            let ptr = slot.tensor.data_ptr().cast::<u8>();
            let src: &[u8] = if slot.bytes == 0 {
                &[]
            } else {
                // SAFETY: the bound output tensor holds `slot.bytes` bytes on the CPU allocator, written by
                // the run that just returned; nothing writes it while this shared view lives.
                unsafe { std::slice::from_raw_parts(ptr, slot.bytes) }
            };
            if !write_out(v, src) {
                return Err(Error::Backend(format!(
                    "engine {}: the ONNX Runtime backend takes host memory only",
                    self.name
                )));
            }
        }
        Ok(())
    }
}
