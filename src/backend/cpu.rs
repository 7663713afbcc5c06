//! CPU backend: runs our emitted ONNX engines with tract-onnx.
//!
//! The `referdino`-domain custom ops (`MSDeformAttn`, `QueryPrune`) are registered with tract so that
//! they execute the kernels in [`crate::ops`]. A quantized engine (host INT8 form) is rewritten before
//! parsing so that its products by a weight run on our integer kernel
//! ([`crate::onnx::int8_products`], [`crate::ops::qlinear`]) where the CPU has one
//! ([`CpuBackend::integer_products`]). Engines must have static shapes; the model is analysed,
//! typed and optimised (`into_optimized`) once at load time.
//!
//! **Threads.** One rayon pool of [`CpuBackend::threads`] workers (default: the machine's available
//! cores) serves both tract's matrix products (tract-linalg `multithread-mm`, passed as the plan's
//! executor) and our custom-op kernels (every run executes inside the pool, so their `par_iter`s use
//! it too): one thread budget for the whole engine. Splitting a product over threads partitions its
//! output tiles and never the reduction, so results do not depend on the thread count.
//!
//! **Allocation.** Each engine keeps its tract state (`SimpleState`) and one tract tensor per input
//! across runs: a run copies the caller's inputs into those tensors in place and copies the results out
//! to the caller's buffers. tract still allocates intermediate tensors during a run (its ops return
//! fresh tensors), so a run's allocation count is constant from run to run but not zero
//! (`tests/alloc/backend_cpu.rs` measures it); the large f32 buffers our ops free come back from a
//! per-session pool instead (`tract_ops::TensorPool`, [`CpuBackend::pool_bytes`]), which spares the
//! page faults of freshly mapped blocks on every run.
//!
//! **Taps.** [`Engine::run_taps`] (calibration statistics) runs a second plan of the same optimised graph,
//! built on first use for the contract outputs only: tract keeps every model output until a run ends,
//! so a plan for all outputs would hold all of a run's taps at once (≈ 2.5 GB for the Swin-T frame engine
//! at 360×640). Each tap is lent from a per-node hook right after its node has run and freed by tract
//! once its readers have run.

pub mod tract_ops;

use crate::backend::{check_bindings, Backend, Engine, TapFn, TensorSpec, View, ViewMut};
use crate::error::{Error, Result};
use crate::onnx::int8_products;
use crate::tensor::DType;
use prost::Message;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tract_linalg::multithread::Executor;
use tract_onnx::pb::ModelProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::plan::{eval as tract_eval, SimplePlan};
use tract_onnx::tract_core::runtime::RunOptions;
use tract_onnx::Onnx;

/// The tract-based CPU backend.
#[derive(Clone)]
pub struct CpuBackend {
    onnx: Onnx,
    threads: usize,
    pool: Arc<rayon::ThreadPool>,
    /// Hand the pool to tract's matrix products (false: they run on one thread, as before tract's
    /// `multithread-mm` was enabled; kept for before/after measurements).
    multithread_matmul: bool,
    /// Keep tract's own Softmax instead of [`crate::ops::softmax`] (for before/after measurements).
    tract_softmax: bool,
    /// Keep tract's own convolutions instead of [`crate::ops::conv`] (set with its `MatMul`,
    /// [`CpuBackend::tract_matmul`]).
    tract_matmul: bool,
    /// Keep tract's own broadcasting `Add` instead of [`crate::ops::broadcast`].
    tract_add: bool,
    /// Keep tract's own `Sin`, `Cos` and `GeluExact` instead of [`crate::ops::unary`].
    tract_unary: bool,
    /// Plan in tract's own evaluation order ([`CpuBackend::tract_order`]).
    tract_order: bool,
    /// Byte budget of each session's buffer pool, 0 for none ([`CpuBackend::pool_bytes`]).
    pool_bytes: usize,
    /// Keep every `MoveAxis` as tract's copy ([`CpuBackend::tract_transpose`]).
    tract_transpose: bool,
    /// Optimise loaded graphs on the loading thread, outside the pool and the run gate
    /// ([`CpuBackend::loading_beside_runs`]).
    beside_runs: bool,
    /// Evaluate a quantized engine's products in float, as tract does, instead of on the integer
    /// kernel ([`CpuBackend::float_int8`]).
    float_int8: bool,
}

impl std::fmt::Debug for CpuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuBackend")
            .field("threads", &self.threads)
            .finish_non_exhaustive()
    }
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

/// Number of cores this process may use (1 when the system cannot tell).
pub fn available_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// One engine run (or graph optimisation) at a time per process. A run executes inside a shared pool; while one of its workers
/// waits in a parallel MatMul it may steal another engine's whole run and re-enter tract on the same
/// thread, which panics on tract's thread-local scratch ("RefCell already borrowed"). The pool has as
/// many threads as cores, so concurrent runs would only contend for them anyway.
fn run_gate() -> std::sync::MutexGuard<'static, ()> {
    static GATE: Mutex<()> = Mutex::new(());
    GATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Environment variable: the byte budget, in MiB, of the buffer pool of every CPU-backend engine
/// created while it is set ([`CpuBackend::pool_bytes`]; `0` turns the pools off). Where several
/// cameras' engines share a machine's memory, each engine session holds its own pool (≈ 250 MiB
/// for a 360×640 Swin-T frame engine). Unset or invalid: 512 MiB (an invalid value is logged).
pub const POOL_MIB_ENV: &str = "REFERDINO_CPU_POOL_MIB";

/// The pool budget [`POOL_MIB_ENV`] asks for, or the default.
fn pool_bytes_from_env() -> usize {
    pool_bytes_from(std::env::var_os(POOL_MIB_ENV).as_deref())
}

/// The pool budget a value of [`POOL_MIB_ENV`] asks for (`None`: unset), or the default.
fn pool_bytes_from(v: Option<&std::ffi::OsStr>) -> usize {
    let Some(v) = v else {
        return tract_ops::DEFAULT_POOL_CAP;
    };
    match v.to_str().and_then(|v| v.trim().parse::<usize>().ok()) {
        Some(mib) => mib.saturating_mul(1 << 20),
        None => {
            log::warn!(
                "{POOL_MIB_ENV}={v:?} is not a number of MiB; the CPU buffer pools keep {} MiB",
                tract_ops::DEFAULT_POOL_CAP >> 20
            );
            tract_ops::DEFAULT_POOL_CAP
        }
    }
}

/// `plan` with a buffer pool of `bytes` installed in its sessions (none for 0).
fn with_pool(plan: Arc<TypedSimplePlan>, bytes: usize) -> Arc<TypedSimplePlan> {
    if bytes == 0 {
        return plan;
    }
    match Arc::try_unwrap(plan) {
        Ok(p) => Arc::new(p.with_turn_handler(tract_ops::InstallPool { cap: bytes })),
        // Shared already: run it without a pool rather than copy it.
        Err(shared) => shared,
    }
}

/// One pool per thread count for the whole process, so backends created in a loop (tests, sessions)
/// do not each spawn their own workers.
fn shared_pool(threads: usize) -> Result<Arc<rayon::ThreadPool>> {
    static POOLS: OnceLock<Mutex<HashMap<usize, Arc<rayon::ThreadPool>>>> = OnceLock::new();
    let mut pools = POOLS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(p) = pools.get(&threads) {
        return Ok(p.clone());
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("referdino-cpu-{i}"))
        .build()
        .map_err(|e| Error::Backend(format!("cannot start {threads} CPU worker threads: {e}")))?;
    let pool = Arc::new(pool);
    pools.insert(threads, pool.clone());
    Ok(pool)
}

impl CpuBackend {
    /// A backend with the standard ONNX ops plus our custom ops, using every available core.
    pub fn new() -> Self {
        let threads = available_threads();
        Self::with_threads(threads).unwrap_or_else(|e| {
            log::warn!("{e}; running the CPU backend on one thread");
            Self::with_threads(1).expect("a one-thread pool")
        })
    }

    /// A backend whose engines run on `threads` worker threads (matrix products and custom-op kernels
    /// alike); 0 means every available core.
    pub fn with_threads(threads: usize) -> Result<Self> {
        let threads = if threads == 0 {
            available_threads()
        } else {
            threads
        };
        let mut onnx = tract_onnx::onnx();
        tract_ops::register(&mut onnx.op_register);
        Ok(CpuBackend {
            onnx,
            threads,
            pool: shared_pool(threads)?,
            multithread_matmul: true,
            tract_softmax: false,
            tract_matmul: false,
            tract_add: false,
            tract_unary: false,
            tract_order: false,
            pool_bytes: pool_bytes_from_env(),
            tract_transpose: false,
            beside_runs: false,
            float_int8: false,
        })
    }

    /// Runs tract's matrix products on one thread while the custom-op kernels keep the whole pool
    /// (the behaviour before multi-threaded MatMul; for before/after benchmarks).
    pub fn single_thread_matmul(mut self) -> Self {
        self.multithread_matmul = false;
        self
    }

    /// Runs softmaxes with tract's own operator instead of ours (the behaviour before
    /// [`crate::ops::softmax`]; for before/after benchmarks).
    pub fn tract_softmax(mut self) -> Self {
        self.tract_softmax = true;
        self
    }

    /// Runs layer normalisations as tract's decomposition instead of our kernel (the behaviour
    /// before [`crate::ops::layer_norm`]; for before/after benchmarks).
    pub fn tract_layer_norm(mut self) -> Self {
        tract_ops::use_tract_layer_norm(&mut self.onnx.op_register);
        self
    }

    /// Runs matrix products by a weight and convolutions with tract's own kernels instead of ours
    /// (the behaviour before [`mod@crate::ops::linear`] and [`crate::ops::conv`]; for before/after
    /// benchmarks). Ours run only on x86-64 with AVX2 + FMA: elsewhere this changes nothing.
    pub fn tract_matmul(mut self) -> Self {
        tract_ops::use_tract_matmul(&mut self.onnx.op_register);
        self.tract_matmul = true;
        self
    }

    /// Runs the broadcasting f32 `Add`s with tract's own operator instead of ours (the behaviour
    /// before [`crate::ops::broadcast`]; for before/after benchmarks).
    pub fn tract_add(mut self) -> Self {
        self.tract_add = true;
        self
    }

    /// Runs sines, cosines and exact GELUs with tract's own element-wise operators instead of ours,
    /// and leaves the GELUs after linear layers unfolded (the behaviour before
    /// [`crate::ops::unary`]; for before/after benchmarks).
    pub fn tract_unary(mut self) -> Self {
        self.tract_unary = true;
        self
    }

    /// Keeps every `MoveAxis` (transpose) as tract's copy instead of folding it into the product
    /// that reads it (`tract_ops::fold_moves_into_products`) or running it as a tiled transpose
    /// (`tract_ops::TransposeOp`), every product that is only read through slices whole instead
    /// of split per slice (`tract_ops::split_sliced_products`), and every `Slice` and `Concat` as
    /// tract's copies (`tract_ops::ConcatRangesOp`): the behaviour before those, for before/after
    /// benchmarks.
    pub fn tract_transpose(mut self) -> Self {
        self.tract_transpose = true;
        self
    }

    /// Plans each engine in tract's own evaluation order, without running a multiply-read tensor's
    /// in-place reader after its other readers (`tract_ops::in_place_readers_last`): the behaviour
    /// before that, for before/after benchmarks.
    pub fn tract_order(mut self) -> Self {
        self.tract_order = true;
        self
    }

    /// Byte budget of each engine session's buffer pool (the large f32 tensors our ops free and
    /// reuse from run to run, see `tract_ops::TensorPool`; 512 MiB by default, or [`POOL_MIB_ENV`]);
    /// 0 turns the pool off, so that every intermediate is freshly allocated as tract does (for before/after
    /// benchmarks, and where memory is tighter than time).
    pub fn pool_bytes(mut self, bytes: usize) -> Self {
        self.pool_bytes = bytes;
        self
    }

    /// Loads engines while other engines of the process run (a camera's engines exported in the
    /// background), without stalling them: a graph is optimised on the loading thread, outside the
    /// pool and without waiting for the run gate that every run takes (optimising a Swin-T frame
    /// engine holds it for seconds). The loading thread is no worker of the pool, so no run's worker
    /// can steal the optimisation and re-enter tract on its own thread, which is what the gate
    /// prevents; and tract's constant folding runs on that one thread. The engines run as any other
    /// (in the pool, under the gate).
    pub fn loading_beside_runs(mut self) -> Self {
        self.beside_runs = true;
        self
    }

    /// Evaluates a host INT8 engine's quantize → dequantize → product chains in float, as tract
    /// does, instead of on the integer kernel ([`crate::onnx::int8_products`],
    /// [`mod@crate::ops::qlinear`]): the behaviour before it, for before/after benchmarks. Where
    /// the CPU has no fast integer kernel ([`crate::ops::qlinear::fast_kernel`]) that is what
    /// happens anyway.
    pub fn float_int8(mut self) -> Self {
        self.float_int8 = true;
        self
    }

    /// Whether this backend runs a host INT8 engine's products on the integer kernel.
    pub fn integer_products(&self) -> bool {
        !self.float_int8 && crate::ops::qlinear::fast_kernel().is_some()
    }

    /// Worker threads each engine of this backend runs on.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Loads an engine from ONNX bytes held in memory (`name` is used in errors and logs).
    /// Initializers stored as external data are not supported here; use [`Backend::load`].
    pub fn load_bytes(&self, name: &str, onnx: &[u8]) -> Result<Box<dyn Engine>> {
        Ok(Box::new(self.load_cpu_bytes(name, onnx)?))
    }

    /// [`CpuBackend::load_bytes`] returning the concrete engine (for [`CpuEngine::profile`]).
    pub fn load_cpu_bytes(&self, name: &str, onnx: &[u8]) -> Result<CpuEngine> {
        let proto = decode(name, onnx)?;
        self.build(name, &proto, None)
    }

    /// [`Backend::load`] returning the concrete engine (for [`CpuEngine::profile`]).
    pub fn load_cpu(&self, path: &Path) -> Result<CpuEngine> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("engine");
        let proto = decode(name, &bytes)?;
        drop(bytes);
        // External initializer data is resolved relative to the model file.
        let dir = path.parent().and_then(|d| d.to_str());
        self.build(name, &proto, dir)
    }

    /// Types, optimises and plans `proto`. tract evaluates constant subgraphs while it does, and
    /// some of its ops index without checks (a Gather with an out-of-range constant index) or
    /// assert that an allocation succeeded: a damaged or hostile engine file must come back as an
    /// error, not as a panic in whoever loads it.
    fn build(&self, name: &str, proto: &ModelProto, dir: Option<&str>) -> Result<CpuEngine> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.build_checked(name, proto, dir)
        }))
        .unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            Err(Error::Backend(format!(
                "engine {name}: loading it failed inside tract ({what}): the file is damaged or \
                 is not an engine this backend runs"
            )))
        })
    }

    fn build_checked(
        &self,
        name: &str,
        proto: &ModelProto,
        dir: Option<&str>,
    ) -> Result<CpuEngine> {
        let err =
            |stage: &str, e: TractError| Error::Backend(format!("engine {name}: {stage}: {e:#}"));
        let fused;
        let proto = if self.integer_products() && int8_products::is_quantized(proto) {
            let (m, f) = int8_products::fuse_int8_products(proto)?;
            log::debug!(
                "cpu engine {name}: {} int8 products ({} with their bias) and {} activation \
                 quantizations on the integer kernel, {} activation Q/DQ pairs in one pass",
                f.products,
                f.with_bias,
                f.quantizations,
                f.fake_quantizations
            );
            fused = m;
            &fused
        } else {
            proto
        };
        let parsed = self
            .onnx
            .parse(proto, dir)
            .map_err(|e| err("parsing ONNX", e))?;
        if !parsed.unresolved_inputs.is_empty() {
            return Err(Error::Backend(format!(
                "engine {name}: graph reads undefined tensors {:?}",
                parsed.unresolved_inputs
            )));
        }
        let model = parsed.model;
        let in_names: Vec<String> = model
            .input_outlets()
            .map_err(|e| err("inputs", e))?
            .iter()
            .map(|o| model.node(o.node).name.clone())
            .collect();
        let out_names: Vec<String> = model
            .output_outlets()
            .map_err(|e| err("outputs", e))?
            .iter()
            .map(|&o| {
                model
                    .outlet_label(o)
                    .map(str::to_string)
                    .unwrap_or_else(|| model.node(o.node).name.clone())
            })
            .collect();
        // Optimising runs tract's own kernels selection; keep it inside the pool as well. It also
        // evaluates constant subgraphs (MatMul among them), so it takes the run gate: a worker of a
        // concurrent run waiting in a parallel MatMul could otherwise steal this job and re-enter
        // tract's thread-local scratch (seen as "RefCell already borrowed" and an abort in tests
        // that build engines while others run).
        // Typed and decluttered first, so that the bias and ReLU after our linear layers can be
        // folded into them before tract's optimisation (which would otherwise fuse them into its own
        // kernels' epilogues, which ours replace).
        let our_conv = !self.tract_matmul && crate::ops::linear::avx2_fma();
        let fuse_gelu = !self.tract_unary;
        let optimise = || -> TractResult<TypedModel> {
            let mut typed = model.into_typed()?.into_decluttered()?;
            tract_ops::fuse_linear_epilogues(&mut typed, fuse_gelu)?;
            tract_ops::fuse_output_quantization(&mut typed)?;
            if our_conv {
                tract_ops::use_our_conv(&mut typed)?;
            }
            typed.into_optimized()
        };
        let mut typed = if self.beside_runs {
            // See `loading_beside_runs`.
            optimise()
        } else {
            let _gate = run_gate();
            self.pool.install(optimise)
        }
        .map_err(|e| err("typing/optimising the graph", e))?;
        if !self.tract_softmax {
            tract_ops::use_our_softmax(&mut typed).map_err(|e| err("replacing Softmax", e))?;
        }
        if !self.tract_add {
            tract_ops::use_our_broadcast_add(&mut typed).map_err(|e| err("replacing Add", e))?;
        }
        if !self.tract_unary {
            tract_ops::use_our_unary(&mut typed)
                .map_err(|e| err("replacing Sin, Cos and GeluExact", e))?;
        }
        tract_ops::use_our_pad(&mut typed).map_err(|e| err("replacing Pad", e))?;
        tract_ops::use_our_resize(&mut typed).map_err(|e| err("replacing Resize", e))?;
        tract_ops::use_our_reduce_and_gather(&mut typed)
            .map_err(|e| err("replacing Reduce and GatherElements", e))?;
        if !self.tract_transpose {
            // Before the moves are folded: an attention operand's fake quantize then no longer
            // stands between its transpose and the product.
            let crossed = tract_ops::fake_quantize_before_moves(&mut typed)
                .map_err(|e| err("moving fake quantizes above transposes", e))?;
            log::debug!("cpu engine {name}: {crossed} fake quantizes moved above transposes");
            // Before the moves are folded: it leaves the slices' readers as they are.
            let split = tract_ops::split_sliced_products(&mut typed)
                .map_err(|e| err("splitting sliced products", e))?;
            log::debug!("cpu engine {name}: {split} products split by their slices");
            let folded = tract_ops::fold_moves_into_products(&mut typed)
                .map_err(|e| err("folding transposes into products", e))?;
            let ours = tract_ops::use_our_transpose(&mut typed)
                .map_err(|e| err("replacing MoveAxis", e))?;
            log::debug!(
                "cpu engine {name}: {folded} MoveAxis folded into products, {ours} run as tiled transposes"
            );
            // After the split: it reads the slices of products.
            tract_ops::use_our_concat_and_slice(&mut typed)
                .map_err(|e| err("replacing Concat and Slice", e))?;
        }
        if let Some(kernel) = crate::ops::qlinear::fast_kernel() {
            // After the moves are folded into the products, which keep them; on a compacted graph,
            // where a node's readers are only the live ones.
            typed.compact().map_err(|e| err("compacting", e))?;
            let n = tract_ops::int8_attention_products(&mut typed, kernel)
                .map_err(|e| err("making attention products integer", e))?;
            log::debug!("cpu engine {name}: {n} products of two activations on integers");
        }
        // Drops the nodes the passes left unread, before anything is planned on the node list.
        typed.compact().map_err(|e| err("compacting", e))?;
        let specs =
            |outlets: &[OutletId], names: &[String], kind: &str| -> Result<Vec<TensorSpec>> {
                outlets
                    .iter()
                    .zip(names)
                    .map(|(&o, n)| {
                        let fact = typed.outlet_fact(o).map_err(|e| err(kind, e))?;
                        spec_of(name, kind, n, fact)
                    })
                    .collect()
            };
        let inputs = specs(
            typed.input_outlets().map_err(|e| err("inputs", e))?,
            &in_names,
            "input",
        )?;
        let outputs = specs(
            typed.output_outlets().map_err(|e| err("outputs", e))?,
            &out_names,
            "output",
        )?;
        // After the specs: callers still bind the declared shapes; the tensors below take the
        // folded ones (same elements, same order).
        tract_ops::fold_input_reshapes(&mut typed).map_err(|e| err("folding input reshapes", e))?;
        let held: Vec<Option<TVec<usize>>> = typed
            .input_outlets()
            .map_err(|e| err("inputs", e))?
            .iter()
            .map(|&o| {
                let fact = typed.outlet_fact(o).map_err(|e| err("inputs", e))?;
                Ok(fact.shape.as_concrete().map(TVec::from))
            })
            .collect::<Result<_>>()?;
        let executor = if self.threads > 1 && self.multithread_matmul {
            Executor::MultiThread(self.pool.clone())
        } else {
            Executor::SingleThread
        };
        let options = RunOptions {
            executor: Some(executor),
            ..Default::default()
        };
        let deps = if self.tract_order {
            Vec::new()
        } else {
            tract_ops::in_place_readers_last(&typed).map_err(|e| err("ordering", e))?
        };
        let typed = Arc::new(typed);
        let out_outlets = typed
            .output_outlets()
            .map_err(|e| err("outputs", e))?
            .to_vec();
        // The non-deprecated constructors take no extra dependencies.
        #[allow(deprecated)]
        let plan =
            SimplePlan::build_with_outputs_and_deps(typed.clone(), &out_outlets, &deps, &options)
                .map_err(|e| err("planning", e))?;
        let plan = with_pool(Arc::new(plan), self.pool_bytes);
        let state = plan.spawn().map_err(|e| err("creating the run state", e))?;
        let values = inputs
            .iter()
            .zip(&held)
            .map(|(s, held)| {
                let dt = match s.dtype {
                    DType::F32 => DatumType::F32,
                    DType::F16 => DatumType::F16,
                    DType::I64 => DatumType::I64,
                    DType::U8 => DatumType::U8,
                    DType::Bool => DatumType::Bool,
                    other => {
                        return Err(Error::Backend(format!(
                            "engine {name}: input {} has element type {other:?}",
                            s.name
                        )))
                    }
                };
                // An engine declares its inputs' shapes; a damaged one may declare terabytes.
                let bytes = s
                    .shape
                    .iter()
                    .try_fold(dt.size_of(), |n, &d| n.checked_mul(d))
                    .filter(|&n| n <= MAX_INPUT_BYTES);
                if bytes.is_none() {
                    return Err(Error::Backend(format!(
                        "engine {name}: input {} of shape {:?} is larger than {} GiB: not an \
                         engine of this model",
                        s.name,
                        s.shape,
                        MAX_INPUT_BYTES >> 30
                    )));
                }
                Tensor::zero_dt(dt, held.as_deref().unwrap_or(&s.shape))
                    .map(Arc::new)
                    .map_err(|e| err("allocating inputs", e))
            })
            .collect::<Result<Vec<_>>>()?;
        log::debug!(
            "cpu engine {name}: {} inputs, {} outputs, {} threads",
            inputs.len(),
            outputs.len(),
            self.threads
        );
        Ok(CpuEngine {
            name: name.to_string(),
            inputs,
            outputs,
            state,
            values,
            staged: TVec::with_capacity(0),
            pool: self.pool.clone(),
            model: typed,
            options,
            pool_bytes: self.pool_bytes,
            taps: None,
        })
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn load(&self, path: &Path) -> Result<Box<dyn Engine>> {
        Ok(Box::new(self.load_cpu(path)?))
    }
}

fn decode(name: &str, bytes: &[u8]) -> Result<ModelProto> {
    let proto = ModelProto::decode(bytes)
        .map_err(|e| Error::Backend(format!("engine {name}: not an ONNX model: {e}")))?;
    if proto.graph.is_none() {
        return Err(Error::Backend(format!(
            "engine {name}: ONNX model has no graph"
        )));
    }
    Ok(proto)
}

fn spec_of(engine: &str, kind: &str, name: &str, fact: &TypedFact) -> Result<TensorSpec> {
    let dtype = match fact.datum_type {
        DatumType::F32 => DType::F32,
        DatumType::F16 => DType::F16,
        DatumType::I64 => DType::I64,
        DatumType::U8 => DType::U8,
        DatumType::Bool => DType::Bool,
        dt => {
            return Err(Error::Backend(format!(
                "engine {engine}: {kind} {name} has element type {dt:?}; the CPU backend binds f32, f16, i64, u8 and bool"
            )))
        }
    };
    let shape = fact.shape.as_concrete().ok_or_else(|| {
        Error::Backend(format!(
            "engine {engine}: {kind} {name} has a dynamic shape {:?}; engines must have static shapes",
            fact.shape
        ))
    })?;
    Ok(TensorSpec {
        name: name.to_string(),
        dtype,
        shape: shape.to_vec(),
    })
}

/// Time spent in one kind of tract op during a profiled run.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct OpTime {
    /// tract op name (after optimisation: `OptMatMul`, `MSDeformAttn`, ...), followed by the input
    /// shape and the op's parameters when profiled by shape.
    pub op: String,
    /// Number of nodes of that op evaluated.
    pub count: usize,
    /// Total wall time.
    pub seconds: f64,
}

/// One loaded ONNX graph ready to run on the CPU.
pub struct CpuEngine {
    name: String,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    /// tract's per-run state, kept across runs (no re-creation per call).
    state: TypedSimpleState,
    /// One tensor per input, written in place each run and lent to tract.
    values: Vec<Arc<Tensor>>,
    /// Reused list of the values handed to tract.
    staged: TVec<TValue>,
    pool: Arc<rayon::ThreadPool>,
    /// The optimised graph (shared with `state`'s plan), for the plan of [`Engine::run_taps`].
    model: Arc<TypedModel>,
    /// How `state`'s plan was built (executor), reused for the tap plan.
    options: RunOptions,
    /// Byte budget of each session's buffer pool, reused for the tap plan.
    pool_bytes: usize,
    /// The plan [`Engine::run_taps`] runs, built on its first call.
    taps: Option<TapPlan>,
}

/// The plan of [`CpuEngine`]'s [`Engine::run_taps`]: the same optimised graph, planned for the contract
/// outputs only, so tract drops each tap as soon as the nodes that read it have run instead of keeping
/// every model output until the end of the run. The taps are lent from a per-node hook as their node
/// is evaluated.
struct TapPlan {
    /// Number of contract outputs (the leading outputs, bound by the caller).
    n_contract: usize,
    state: TypedSimpleState,
    /// Node id → (output slot, tap index in the engine's outputs) lent when that node has run.
    hooked: HashMap<usize, Vec<(usize, usize)>>,
    /// Taps the contract outputs do not depend on (or constants, which no node computes): extra plan
    /// outputs after the contract ones, lent once the run ends, in this order.
    after: Vec<usize>,
}

impl std::fmt::Debug for CpuEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuEngine")
            .field("name", &self.name)
            .field("inputs", &self.inputs)
            .field("outputs", &self.outputs)
            .finish_non_exhaustive()
    }
}

fn copy_in<T: Datum + Copy>(t: &mut Tensor, v: &[T]) -> TractResult<()> {
    let mut plain = t.try_as_plain_ram_mut()?;
    let dst = plain.as_slice_mut::<T>()?;
    if dst.len() != v.len() {
        anyhow::bail!("{} elements for a tensor of {}", v.len(), dst.len());
    }
    dst.copy_from_slice(v);
    Ok(())
}

/// Largest input tensor an engine may declare (the largest real one, the head engine's stride-4
/// features for a 4K frame, is about 0.5 GiB).
const MAX_INPUT_BYTES: usize = 4 << 30;

/// Turns a run's outcome on `state` into a result. Some tract ops panic on bad data (e.g. a Gather
/// index out of range: a token id outside the vocabulary); that becomes an error, and the run state,
/// which the panic may have left half-written, is replaced by a fresh one.
fn settle_state(
    name: &str,
    state: &mut TypedSimpleState,
    r: std::thread::Result<TractResult<TVec<TValue>>>,
) -> Result<TVec<TValue>> {
    let fail = |msg: String| Error::Backend(format!("engine {name}: {msg}"));
    match r {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            let _ = state.reset_turn();
            Err(fail(format!("{e:#}")))
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            let msg = format!("the graph failed on these inputs (an index out of range?): {what}");
            let plan = state.plan().clone();
            *state = plan
                .spawn()
                .map_err(|e| fail(format!("{msg}; recreating the run state: {e:#}")))?;
            Err(fail(msg))
        }
    }
}

/// Lends one computed tap (output `index`, spec `spec`) to `tap` without copying it.
fn lend(
    engine: &str,
    spec: &TensorSpec,
    index: usize,
    t: &Tensor,
    tap: &mut TapFn<'_>,
) -> Result<()> {
    let fail = |msg: String| Error::Backend(format!("engine {engine}: tap {}: {msg}", spec.name));
    if t.shape() != spec.shape.as_slice() {
        return Err(fail(format!(
            "came out with shape {:?}, expected {:?}",
            t.shape(),
            spec.shape
        )));
    }
    let plain = t.try_as_plain_ram().map_err(|e| fail(format!("{e:#}")))?;
    let view = match spec.dtype {
        DType::F32 => plain.as_slice::<f32>().map(View::F32),
        DType::F16 => plain.as_slice::<half::f16>().map(View::F16),
        DType::I64 => plain.as_slice::<i64>().map(View::I64),
        DType::U8 => plain.as_slice::<u8>().map(View::U8),
        DType::Bool => plain.as_slice::<bool>().map(View::Bool),
        other => return Err(fail(format!("element type {other:?}"))),
    }
    .map_err(|e| fail(format!("{e:#}")))?;
    tap(index, view)
}

impl CpuEngine {
    /// Plans the graph for its first `n` outputs, the rest being taps lent by [`Engine::run_taps`].
    fn tap_plan(&self, n: usize) -> Result<TapPlan> {
        let err = |e: TractError| self.backend_err(format!("planning for taps: {e:#}"));
        let outlets = self.model.output_outlets().map_err(err)?.to_vec();
        let contract = &outlets[..n];
        // The default constructors plan for every model output, which is exactly what this plan must
        // not do: tract keeps a model output until the run ends.
        #[allow(deprecated)]
        let plan = |outputs: &[OutletId]| {
            SimplePlan::build_with_outputs_and_deps(self.model.clone(), outputs, &[], &self.options)
        };
        let first = plan(contract).map_err(err)?;
        let computed: HashSet<usize> = first.order_without_consts().iter().copied().collect();
        let mut hooked: HashMap<usize, Vec<(usize, usize)>> = HashMap::new();
        let (mut after, mut extra) = (Vec::new(), contract.to_vec());
        for (i, o) in outlets.iter().enumerate().skip(n) {
            if computed.contains(&o.node) {
                hooked.entry(o.node).or_default().push((o.slot, i));
            } else {
                after.push(i);
                extra.push(*o);
            }
        }
        let plan = if after.is_empty() {
            first
        } else {
            plan(&extra).map_err(err)?
        };
        log::debug!(
            "cpu engine {}: tap plan for {n} outputs, {} taps lent as computed, {} at the end",
            self.name,
            hooked.values().map(Vec::len).sum::<usize>(),
            after.len()
        );
        let state = with_pool(Arc::new(plan), self.pool_bytes)
            .spawn()
            .map_err(err)?;
        Ok(TapPlan {
            n_contract: n,
            state,
            hooked,
            after,
        })
    }

    fn backend_err(&self, msg: impl std::fmt::Display) -> Error {
        Error::Backend(format!("engine {}: {msg}", self.name))
    }

    /// Copies the caller's inputs into the engine's input tensors and stages them for tract.
    fn stage_inputs(&mut self, inputs: &[View<'_>]) -> Result<()> {
        self.staged.clear();
        for (i, &view) in inputs.iter().enumerate().take(self.inputs.len()) {
            // tract drops its references at the end of every run, so the tensor is ours again and is
            // overwritten in place; should a reference linger, a fresh tensor replaces it.
            if Arc::get_mut(&mut self.values[i]).is_none() {
                let fresh = (*self.values[i]).clone();
                self.values[i] = Arc::new(fresh);
            }
            let t = Arc::get_mut(&mut self.values[i]).expect("unique after replacement");
            let r = match view {
                View::F32(v) => copy_in(t, v),
                View::F16(v) => copy_in(t, v),
                View::I64(v) => copy_in(t, v),
                View::U8(v) => copy_in(t, v),
                View::Bool(v) => copy_in(t, v),
                View::Device(_) => {
                    return Err(self.backend_err(format!(
                        "input {} is device memory; the CPU backend takes host buffers",
                        self.inputs[i].name
                    )))
                }
            };
            r.map_err(|e| self.backend_err(format!("input {}: {e:#}", self.inputs[i].name)))?;
            self.staged
                .push(TValue::from_const(Arc::clone(&self.values[i])));
        }
        Ok(())
    }

    fn check(&self, inputs: &[View<'_>], outputs: &[ViewMut<'_>]) -> Result<()> {
        check_bindings(&self.name, &self.inputs, inputs, &self.outputs, outputs)?;
        if let Some(i) = outputs.iter().position(|o| o.dtype().is_none()) {
            return Err(self.backend_err(format!(
                "output {} is device memory; the CPU backend takes host buffers",
                self.outputs[i].name
            )));
        }
        Ok(())
    }

    fn copy_out(&self, results: &[TValue], outputs: &mut [ViewMut<'_>]) -> Result<()> {
        if results.len() != outputs.len() {
            return Err(self.backend_err(format!(
                "graph produced {} outputs, expected {}",
                results.len(),
                outputs.len()
            )));
        }
        for ((spec, out), t) in self.outputs.iter().zip(outputs.iter_mut()).zip(results) {
            if t.shape() != spec.shape.as_slice() {
                return Err(self.backend_err(format!(
                    "output {} came out with shape {:?}, expected {:?}",
                    spec.name,
                    t.shape(),
                    spec.shape
                )));
            }
            let plain = t
                .try_as_plain_ram()
                .map_err(|e| self.backend_err(format!("output {}: {e:#}", spec.name)))?;
            let copied = match out {
                ViewMut::F32(o) => plain.as_slice::<f32>().map(|s| o.copy_from_slice(s)),
                ViewMut::F16(o) => plain.as_slice::<half::f16>().map(|s| o.copy_from_slice(s)),
                ViewMut::I64(o) => plain.as_slice::<i64>().map(|s| o.copy_from_slice(s)),
                ViewMut::U8(o) => plain.as_slice::<u8>().map(|s| o.copy_from_slice(s)),
                ViewMut::Bool(o) => plain.as_slice::<bool>().map(|s| o.copy_from_slice(s)),
                ViewMut::Device(_) => {
                    return Err(self.backend_err(format!(
                        "output {} is device memory; the CPU backend takes host buffers",
                        spec.name
                    )))
                }
            };
            copied.map_err(|e| self.backend_err(format!("output {}: {e:#}", spec.name)))?;
        }
        Ok(())
    }

    /// Turns a run's outcome into a result. Some tract ops panic on bad data (e.g. a Gather index out
    /// of range: a token id outside the vocabulary); that becomes an error, and the run state, which
    /// the panic may have left half-written, is replaced by a fresh one.
    fn settle(
        &mut self,
        r: std::thread::Result<TractResult<TVec<TValue>>>,
    ) -> Result<TVec<TValue>> {
        settle_state(&self.name, &mut self.state, r)
    }

    /// Worker threads this engine runs on.
    pub fn threads(&self) -> usize {
        self.pool.current_num_threads()
    }

    /// Hands a run's outputs, once copied to the caller, to the session's buffer pool: the node
    /// that computes a large output (the frame engine's `[1, 256, 90, 160]` features, 14.7 MB) then
    /// writes into the same memory every run instead of a freshly mapped block whose pages fault in
    /// again (the pool keeps only lengths its ops asked for).
    fn recycle_outputs(&self, results: TVec<TValue>) {
        if let Some(p) = self.state.turn_state.shared.get::<tract_ops::TensorPool>() {
            results.into_iter().for_each(|v| p.give(v));
        }
    }

    /// The counters of this engine's buffer pool and the bytes it holds now; `None` before the
    /// first run or when the pool is off ([`CpuBackend::pool_bytes`]).
    pub fn pool_stats(&self) -> Option<(tract_ops::PoolStats, usize)> {
        let p = self
            .state
            .turn_state
            .shared
            .get::<tract_ops::TensorPool>()?;
        Some((p.stats(), p.bytes()))
    }

    /// Runs once like [`Engine::run`] and also times every node, summed per tract op type (slowest
    /// first); with `by_shape`, per op type, its parameters and its first input's shape instead (which
    /// nodes of a type are the slow ones). Timing each node adds a little overhead; use it to find hot
    /// spots, not for latency.
    pub fn profile(
        &mut self,
        inputs: &[View<'_>],
        outputs: &mut [ViewMut<'_>],
        by_shape: bool,
    ) -> Result<Vec<OpTime>> {
        self.check(inputs, outputs)?;
        self.stage_inputs(inputs)?;
        let staged = std::mem::take(&mut self.staged);
        let mut times: HashMap<String, (usize, Duration)> = HashMap::new();
        let state = &mut self.state;
        let _gate = run_gate();
        let results = self.pool.install(|| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                state.run_plan_with_eval(staged, |ctx, st, node, ins| {
                    let op = node.op();
                    let key = if by_shape {
                        let shape = ins.first().map(|t| t.shape().to_vec()).unwrap_or_default();
                        let info = op.info().unwrap_or_default().join("; ");
                        format!("{} {shape:?} {info}", op.name())
                    } else {
                        op.name().to_string()
                    };
                    let t0 = Instant::now();
                    let r = tract_eval(ctx, st, node, ins);
                    let e = times.entry(key).or_default();
                    e.0 += 1;
                    e.1 += t0.elapsed();
                    r
                })
            }))
        });
        let results = self.settle(results)?;
        self.copy_out(&results, outputs)?;
        self.recycle_outputs(results);
        let mut v: Vec<OpTime> = times
            .into_iter()
            .map(|(op, (count, d))| OpTime {
                op,
                count,
                seconds: d.as_secs_f64(),
            })
            .collect();
        v.sort_by(|a, b| b.seconds.total_cmp(&a.seconds));
        Ok(v)
    }
}

impl Engine for CpuEngine {
    fn name(&self) -> &str {
        &self.name
    }
    fn inputs(&self) -> &[TensorSpec] {
        &self.inputs
    }
    fn outputs(&self) -> &[TensorSpec] {
        &self.outputs
    }

    /// Runs a plan for the contract outputs only (built on the first call): each tap is lent from a
    /// per-node hook right after its node has run, and tract frees it as soon as the nodes that read
    /// it have run, so a run never holds all of its taps. Values are those of [`Engine::run`] (same
    /// optimised graph, same kernels; only the evaluation order of independent nodes may differ).
    fn run_taps(
        &mut self,
        inputs: &[View<'_>],
        outputs: &mut [ViewMut<'_>],
        tap: &mut TapFn<'_>,
    ) -> Result<()> {
        let n = outputs.len();
        if n > self.outputs.len() {
            return Err(self.backend_err(format!(
                "{n} outputs bound, the engine has {}",
                self.outputs.len()
            )));
        }
        check_bindings(
            &self.name,
            &self.inputs,
            inputs,
            &self.outputs[..n],
            outputs,
        )?;
        if outputs.iter().any(|o| o.dtype().is_none()) {
            return Err(self.backend_err("device memory; the CPU backend takes host buffers"));
        }
        if self.taps.as_ref().map(|t| t.n_contract) != Some(n) {
            self.taps = None;
            self.taps = Some(self.tap_plan(n)?);
        }
        self.stage_inputs(inputs)?;
        let staged = std::mem::take(&mut self.staged);
        let Some(TapPlan {
            state,
            hooked,
            after,
            ..
        }) = self.taps.as_mut()
        else {
            return Err(self.backend_err("no tap plan"));
        };
        let (name, specs) = (self.name.as_str(), &self.outputs);
        let mut failed: Option<Error> = None;
        let _gate = run_gate();
        let results = self.pool.install(|| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                state.run_plan_with_eval(staged, |ctx, st, node, ins| {
                    let vs = tract_eval(ctx, st, node, ins)?;
                    if failed.is_none() {
                        for &(slot, i) in hooked.get(&node.id).into_iter().flatten() {
                            if let Err(e) = lend(name, &specs[i], i, &vs[slot], &mut *tap) {
                                failed = Some(e);
                                break;
                            }
                        }
                    }
                    TractResult::Ok(vs)
                })
            }))
        });
        let results = settle_state(name, state, results)?;
        if let Some(e) = failed {
            return Err(e);
        }
        for (k, &i) in after.iter().enumerate() {
            lend(name, &specs[i], i, &results[n + k], &mut *tap)?;
        }
        self.copy_out(&results[..n], outputs)
    }

    fn run(&mut self, inputs: &[View<'_>], outputs: &mut [ViewMut<'_>]) -> Result<()> {
        self.check(inputs, outputs)?;
        self.stage_inputs(inputs)?;
        // `run` consumes the list: hand it over. Up to 4 inputs it lives inline (TVec); an engine
        // with more (frame, head: 5) costs one small list allocation per run, as tract's API takes
        // the list by value.
        let staged = std::mem::take(&mut self.staged);
        let state = &mut self.state;
        let _gate = run_gate();
        let results = self.pool.install(|| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| state.run(staged)))
        });
        let results = self.settle(results)?;
        self.copy_out(&results, outputs)?;
        self.recycle_outputs(results);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::builder::{Graph, GraphOptions};
    use std::sync::mpsc;
    use std::time::Duration;

    /// A one-node graph: `y = relu(x + 1)` on `[1, 8]`.
    fn tiny() -> Vec<u8> {
        let mut g = Graph::new("tiny", GraphOptions::default());
        let x = g.input("x", DType::F32, &[1, 8]);
        let a = g.add_scalar(&x, 1.0).unwrap();
        let y = g.relu(&a).unwrap();
        g.output("y", &y).unwrap();
        g.to_bytes()
    }

    /// Loads `tiny` on `b` on a thread of its own; whether it finished within `wait`.
    fn loads_within(b: CpuBackend, wait: Duration) -> (bool, mpsc::Receiver<bool>) {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(b.load_bytes("tiny", &tiny()).is_ok());
        });
        match rx.recv_timeout(wait) {
            Ok(ok) => {
                assert!(ok, "the engine loads");
                (true, rx)
            }
            Err(_) => (false, rx),
        }
    }

    /// A background export loads its engines while a run holds the gate (a running stream's frame):
    /// with `loading_beside_runs` the load does not wait for it; a plain backend's load does, until
    /// the run ends.
    #[test]
    fn loading_beside_runs_does_not_wait_for_the_run_gate() {
        let b = CpuBackend::with_threads(2).unwrap();
        let gate = run_gate();
        let (done, _) = loads_within(b.clone().loading_beside_runs(), Duration::from_secs(60));
        assert!(done, "a load beside runs waited for the running engine");
        let (done, rx) = loads_within(b, Duration::from_millis(300));
        assert!(!done, "a plain load optimises under the run gate");
        drop(gate);
        assert!(
            rx.recv_timeout(Duration::from_secs(60)).unwrap(),
            "the plain load goes on once the run has ended"
        );
    }

    #[test]
    fn the_pool_budget_comes_from_the_environment_variable_in_mib() {
        let default = tract_ops::DEFAULT_POOL_CAP;
        assert_eq!(pool_bytes_from(None), default);
        assert_eq!(pool_bytes_from(Some(std::ffi::OsStr::new("0"))), 0);
        assert_eq!(
            pool_bytes_from(Some(std::ffi::OsStr::new(" 64 "))),
            64 << 20
        );
        for bad in ["", "-1", "1.5", "lots"] {
            assert_eq!(
                pool_bytes_from(Some(std::ffi::OsStr::new(bad))),
                default,
                "{bad:?}"
            );
        }
        let huge = usize::MAX.to_string();
        assert_eq!(
            pool_bytes_from(Some(std::ffi::OsStr::new(&huge))),
            usize::MAX
        );
    }
}
