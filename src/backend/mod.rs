//! Inference backends behind one trait.
//!
//! An [`Engine`] is one compiled network (text, frame, temporal or head engine) with named, static-shaped
//! inputs and outputs. It runs on **caller-owned** buffers so the per-frame path allocates nothing: the
//! caller (the pipeline) owns one buffer per binding for the life of the session and hands views of them to
//! [`Engine::run`]. Buffers are host memory on the CPU backend; the TensorRT backend also accepts device
//! memory ([`View::Device`]), which is how intermediate tensors stay on the GPU between engines.

pub mod cpu;
pub mod kind;
#[cfg(feature = "ort")]
pub mod ort;
#[cfg(feature = "ort")]
mod ort_ops;
#[cfg(feature = "tensorrt")]
pub mod tensorrt;
// The plugin-library search lives with the TensorRT backend but needs no TensorRT.
#[path = "tensorrt/plugin_search.rs"]
pub mod plugin_search;

use crate::error::Result;
use crate::tensor::DType;
use half::f16;
use std::path::Path;

pub use crate::tensor::TensorSpec;

/// A span of CUDA memory (device, mapped or managed) that an engine's GPU work reads or writes: a
/// pointer and its size in bytes. The GPU reads and writes it with no check a host slice would get, so
/// only `unsafe` code can make one ([`DeviceSpan::new`]); safe code passes spans along.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceSpan {
    ptr: u64,
    bytes: usize,
}

impl DeviceSpan {
    /// The span of `bytes` bytes at CUDA address `ptr`.
    ///
    /// # Safety
    /// Whenever an engine runs with a view of this span, `ptr` must be the start of at least `bytes`
    /// bytes of CUDA memory valid in the engine's CUDA context, live until that engine's work on it
    /// has completed (after `run` returns; for `enqueue`, once its stream has passed the work), and
    /// not used by anything else meanwhile when the view is an output.
    pub unsafe fn new(ptr: u64, bytes: usize) -> Self {
        Self { ptr, bytes }
    }

    /// The CUDA address.
    pub fn ptr(&self) -> u64 {
        self.ptr
    }

    /// Size in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// A read-only view of an input buffer.
#[derive(Debug, Clone, Copy)]
pub enum View<'a> {
    /// Host f32.
    F32(&'a [f32]),
    /// Host f16.
    F16(&'a [f16]),
    /// Host i64.
    I64(&'a [i64]),
    /// Host u8.
    U8(&'a [u8]),
    /// Host bool.
    Bool(&'a [bool]),
    /// Device memory (a CUDA allocation, which only `unsafe` code can name: see [`DeviceSpan`]);
    /// TensorRT backend only.
    Device(DeviceSpan),
}

/// A writable view of an output buffer.
#[derive(Debug)]
pub enum ViewMut<'a> {
    /// Host f32.
    F32(&'a mut [f32]),
    /// Host f16.
    F16(&'a mut [f16]),
    /// Host i64.
    I64(&'a mut [i64]),
    /// Host u8.
    U8(&'a mut [u8]),
    /// Host bool.
    Bool(&'a mut [bool]),
    /// Device memory (a CUDA allocation, which only `unsafe` code can name: see [`DeviceSpan`]);
    /// TensorRT backend only.
    Device(DeviceSpan),
}

impl View<'_> {
    /// Element type of a host view (`None` for device memory).
    pub fn dtype(&self) -> Option<DType> {
        Some(match self {
            View::F32(_) => DType::F32,
            View::F16(_) => DType::F16,
            View::I64(_) => DType::I64,
            View::U8(_) => DType::U8,
            View::Bool(_) => DType::Bool,
            View::Device(_) => return None,
        })
    }
    /// Number of elements of a host view, or bytes of a device view.
    pub fn len(&self) -> usize {
        match self {
            View::F32(v) => v.len(),
            View::F16(v) => v.len(),
            View::I64(v) => v.len(),
            View::U8(v) => v.len(),
            View::Bool(v) => v.len(),
            View::Device(d) => d.bytes(),
        }
    }
    /// True when the view holds no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ViewMut<'_> {
    /// The same buffer, borrowed again for a shorter lifetime.
    pub fn reborrow(&mut self) -> ViewMut<'_> {
        match self {
            ViewMut::F32(v) => ViewMut::F32(v),
            ViewMut::F16(v) => ViewMut::F16(v),
            ViewMut::I64(v) => ViewMut::I64(v),
            ViewMut::U8(v) => ViewMut::U8(v),
            ViewMut::Bool(v) => ViewMut::Bool(v),
            ViewMut::Device(d) => ViewMut::Device(*d),
        }
    }

    /// Element type of a host view (`None` for device memory).
    pub fn dtype(&self) -> Option<DType> {
        Some(match self {
            ViewMut::F32(_) => DType::F32,
            ViewMut::F16(_) => DType::F16,
            ViewMut::I64(_) => DType::I64,
            ViewMut::U8(_) => DType::U8,
            ViewMut::Bool(_) => DType::Bool,
            ViewMut::Device(_) => return None,
        })
    }
    /// Number of elements of a host view, or bytes of a device view.
    pub fn len(&self) -> usize {
        match self {
            ViewMut::F32(v) => v.len(),
            ViewMut::F16(v) => v.len(),
            ViewMut::I64(v) => v.len(),
            ViewMut::U8(v) => v.len(),
            ViewMut::Bool(v) => v.len(),
            ViewMut::Device(d) => d.bytes(),
        }
    }
    /// True when the view holds no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One loaded, runnable network.
pub trait Engine: Send {
    /// Engine name (`text`, `frame`, `temporal`, `head`, or a test name).
    fn name(&self) -> &str;
    /// Input bindings, in the order [`Engine::run`] expects them.
    fn inputs(&self) -> &[TensorSpec];
    /// Output bindings, in the order [`Engine::run`] fills them.
    fn outputs(&self) -> &[TensorSpec];
    /// Runs once. `inputs` and `outputs` follow the order of [`Engine::inputs`] / [`Engine::outputs`];
    /// their lengths and types must match the specs exactly, or an error is returned and nothing runs.
    fn run(&mut self, inputs: &[View<'_>], outputs: &mut [ViewMut<'_>]) -> Result<()>;

    /// Enqueues one run on the engine's CUDA stream ([`Engine::cuda_stream`]) and returns without
    /// waiting for it: the device-resident path orders its own copies and kernels on that stream. Device
    /// backends require every view to be device memory. Host backends run synchronously (the default).
    fn enqueue(&mut self, inputs: &[View<'_>], outputs: &mut [ViewMut<'_>]) -> Result<()> {
        self.run(inputs, outputs)
    }

    /// The CUDA stream (`CUstream` as an integer) the engine runs on, for callers that order their own
    /// work with it; `None` on host backends.
    fn cuda_stream(&self) -> Option<usize> {
        None
    }

    /// Runs once with only the leading outputs bound: `outputs` covers the first `outputs.len()`
    /// bindings of [`Engine::outputs`] (the contract outputs), and every further output (a tap: a
    /// parity or calibration tensor) is lent to `tap`, with its index in [`Engine::outputs`], once per
    /// run. The first error `tap` returns ends the run with that error.
    ///
    /// This is for callers that must not hold all of a run's taps at once (calibration statistics):
    /// the CPU backend hands each tap over as soon as the graph has computed it and keeps it no longer
    /// than the graph itself needs it. This default runs [`Engine::run`] into temporary host buffers
    /// and lends them in index order (same values, but all taps held until the run ends).
    fn run_taps(
        &mut self,
        inputs: &[View<'_>],
        outputs: &mut [ViewMut<'_>],
        tap: &mut TapFn<'_>,
    ) -> Result<()> {
        let n = outputs.len();
        let mut taps: Vec<crate::tensor::Tensor> = self.outputs()[n.min(self.outputs().len())..]
            .iter()
            .map(|s| crate::tensor::Tensor::zeros(&s.shape, s.dtype))
            .collect();
        {
            let mut all: Vec<ViewMut<'_>> = Vec::with_capacity(n + taps.len());
            all.extend(outputs.iter_mut().map(|o| o.reborrow()));
            all.extend(taps.iter_mut().map(host_view_mut));
            self.run(inputs, &mut all)?;
        }
        for (i, t) in taps.iter().enumerate() {
            tap(n + i, host_view(t))?;
        }
        Ok(())
    }
}

/// Receives the taps of [`Engine::run_taps`]: the output's index in [`Engine::outputs`] and its
/// values, lent for the duration of the call.
pub type TapFn<'a> = dyn FnMut(usize, View<'_>) -> Result<()> + Send + 'a;

/// A host tensor as a read-only view.
pub fn host_view(t: &crate::tensor::Tensor) -> View<'_> {
    use crate::tensor::Data;
    match t.data() {
        Data::F32(v) => View::F32(v),
        Data::F16(v) => View::F16(v),
        Data::I64(v) => View::I64(v),
        Data::U8(v) => View::U8(v),
        Data::Bool(v) => View::Bool(v),
        Data::BF16(_) | Data::I32(_) => View::U8(&[]),
    }
}

/// A host tensor as a writable view.
pub fn host_view_mut(t: &mut crate::tensor::Tensor) -> ViewMut<'_> {
    use crate::tensor::Data;
    match t.data_mut() {
        Data::F32(v) => ViewMut::F32(v),
        Data::F16(v) => ViewMut::F16(v),
        Data::I64(v) => ViewMut::I64(v),
        Data::U8(v) => ViewMut::U8(v),
        Data::Bool(v) => ViewMut::Bool(v),
        Data::BF16(_) | Data::I32(_) => ViewMut::U8(&mut []),
    }
}

/// A way of turning engine files into runnable [`Engine`]s.
pub trait Backend {
    /// Backend name for logs and reports (`cpu`, `ort`, `tensorrt`).
    fn name(&self) -> &'static str;
    /// Loads one engine file (ONNX for the CPU backend, a serialized plan for TensorRT).
    fn load(&self, path: &Path) -> Result<Box<dyn Engine>>;
}

/// Whether the ONNX Runtime backend can run here: built with feature `ort` and its library loads
/// (found by `ORT_DYLIB_PATH` or in the `onnxruntime` Python wheel).
pub fn ort_available() -> bool {
    #[cfg(feature = "ort")]
    {
        ort::ort_available()
    }
    #[cfg(not(feature = "ort"))]
    {
        false
    }
}

/// A host backend (tract or ONNX Runtime) chosen at run time, for callers that load ONNX files or bytes.
#[derive(Clone, Debug)]
pub enum HostBackend {
    /// tract.
    Cpu(cpu::CpuBackend),
    /// ONNX Runtime.
    #[cfg(feature = "ort")]
    Ort(ort::OrtBackend),
}

impl HostBackend {
    /// Backend name (`cpu` or `ort`).
    pub fn name(&self) -> &'static str {
        match self {
            HostBackend::Cpu(b) => b.name(),
            #[cfg(feature = "ort")]
            HostBackend::Ort(b) => b.name(),
        }
    }
    /// Threads each engine runs on.
    pub fn threads(&self) -> usize {
        match self {
            HostBackend::Cpu(b) => b.threads(),
            #[cfg(feature = "ort")]
            HostBackend::Ort(b) => b.threads(),
        }
    }
    /// The same backend for loading engines while others run (a background export): tract's
    /// [`cpu::CpuBackend::loading_beside_runs`]; ONNX Runtime sessions load beside runs already.
    pub fn loading_beside_runs(self) -> Self {
        match self {
            HostBackend::Cpu(b) => HostBackend::Cpu(b.loading_beside_runs()),
            #[cfg(feature = "ort")]
            other @ HostBackend::Ort(_) => other,
        }
    }
    /// Loads an engine from ONNX bytes held in memory.
    pub fn load_bytes(&self, name: &str, onnx: &[u8]) -> Result<Box<dyn Engine>> {
        match self {
            HostBackend::Cpu(b) => b.load_bytes(name, onnx),
            #[cfg(feature = "ort")]
            HostBackend::Ort(b) => b.load_bytes(name, onnx),
        }
    }
    /// Loads an engine file.
    pub fn load(&self, path: &Path) -> Result<Box<dyn Engine>> {
        match self {
            HostBackend::Cpu(b) => b.load(path),
            #[cfg(feature = "ort")]
            HostBackend::Ort(b) => b.load(path),
        }
    }
}

/// Checks views against specs before a run; shared by every backend so errors read the same.
pub fn check_bindings(
    engine: &str,
    in_specs: &[TensorSpec],
    inputs: &[View<'_>],
    out_specs: &[TensorSpec],
    outputs: &[ViewMut<'_>],
) -> Result<()> {
    use crate::error::Error;
    if inputs.len() != in_specs.len() || outputs.len() != out_specs.len() {
        return Err(Error::Backend(format!(
            "engine {engine}: expected {} inputs and {} outputs, got {} and {}",
            in_specs.len(),
            out_specs.len(),
            inputs.len(),
            outputs.len()
        )));
    }
    for (s, v) in in_specs.iter().zip(inputs) {
        match v.dtype() {
            Some(dt) if dt != s.dtype || v.len() != s.numel() => {
                return Err(Error::Backend(format!(
                    "engine {engine}: input {} wants {:?} {:?} ({} elements), got {:?} with {} elements",
                    s.name,
                    s.dtype,
                    s.shape,
                    s.numel(),
                    dt,
                    v.len()
                )))
            }
            None if v.len() < s.bytes() => {
                return Err(Error::Backend(format!(
                    "engine {engine}: input {} needs {} bytes of device memory, got {}",
                    s.name,
                    s.bytes(),
                    v.len()
                )))
            }
            _ => {}
        }
    }
    for (s, v) in out_specs.iter().zip(outputs) {
        match v.dtype() {
            Some(dt) if dt != s.dtype || v.len() != s.numel() => {
                return Err(Error::Backend(format!(
                    "engine {engine}: output {} wants {:?} {:?} ({} elements), got {:?} with {} elements",
                    s.name,
                    s.dtype,
                    s.shape,
                    s.numel(),
                    dt,
                    v.len()
                )))
            }
            None if v.len() < s.bytes() => {
                return Err(Error::Backend(format!(
                    "engine {engine}: output {} needs {} bytes of device memory, got {}",
                    s.name,
                    s.bytes(),
                    v.len()
                )))
            }
            _ => {}
        }
    }
    Ok(())
}
