//! The engines' bindings in device memory: the layout checks the device path relies on, the buffers
//! allocated per binding, and the enqueue of an engine on them (or, under the host emulation, its run
//! on host views of the same buffers).

use crate::backend::{Engine, TensorSpec, View, ViewMut};
use crate::error::{Error, Result};
use crate::pipeline::gpu::{DeviceBuffer, Stream};
use crate::tensor::DType;

pub(super) fn want(spec: &TensorSpec, dtype: DType, numel: usize, what: &str) -> Result<()> {
    if spec.dtype != dtype || spec.numel() != numel {
        return Err(Error::Backend(format!(
            "{what}: the device path needs {dtype:?} with {numel} elements, the engine has {:?} {:?}",
            spec.dtype, spec.shape
        )));
    }
    Ok(())
}

/// Device buffers for `specs`, but a 1-byte placeholder at the positions in `elsewhere` (bindings
/// whose views point at another engine's buffers).
pub(super) fn buffers_but(
    specs: &[TensorSpec],
    engine: &str,
    elsewhere: &[usize],
    stream: Stream,
) -> Result<Vec<DeviceBuffer>> {
    specs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let bytes = if elsewhere.contains(&i) { 1 } else { s.bytes() };
            DeviceBuffer::new(bytes, &format!("{engine}.{}", s.name), stream)
        })
        .collect()
}

fn unemulated(d: DType) -> Error {
    Error::Gpu(format!(
        "the host emulation has no host view of {d:?} bindings"
    ))
}

/// Runs `engine` on the session's bindings: enqueued on the CUDA stream, or under the host emulation
/// run at once on host views of the same buffers (made for the call, so no view outlives it).
pub(super) fn enqueue(
    engine: &mut dyn Engine,
    inputs: &[View<'static>],
    outputs: &mut [ViewMut<'static>],
    stream: Stream,
) -> Result<()> {
    if !stream.is_host() {
        return engine.enqueue(inputs, outputs);
    }
    let addr = |v: &View<'_>| match v {
        View::Device(d) => Ok((d.ptr(), d.bytes())),
        _ => Err(Error::Gpu("a device binding holds a host view".into())),
    };
    let addr_mut = |v: &ViewMut<'_>| match v {
        ViewMut::Device(d) => Ok((d.ptr(), d.bytes())),
        _ => Err(Error::Gpu("a device binding holds a host view".into())),
    };
    let mut ins = Vec::with_capacity(inputs.len());
    for (v, spec) in inputs.iter().zip(engine.inputs()) {
        let (ptr, bytes) = addr(v)?;
        let n = spec.numel();
        if bytes < spec.bytes() {
            return Err(Error::Shape(format!("{}: {bytes} bytes bound", spec.name)));
        }
        let p = ptr as usize;
        // SAFETY: under the emulation every binding is a live, 8-byte aligned host allocation of the
        // session of at least `spec.bytes()` bytes (checked above); these views live for this call
        // only, during which the session touches no buffer, and one call's inputs and outputs are
        // distinct allocations. Bool buffers only ever hold 0 or 1 (uploaded from bools, or zeroed).
        ins.push(unsafe {
            match spec.dtype {
                DType::F32 => View::F32(std::slice::from_raw_parts(p as *const f32, n)),
                DType::F16 => View::F16(std::slice::from_raw_parts(p as *const half::f16, n)),
                DType::I64 => View::I64(std::slice::from_raw_parts(p as *const i64, n)),
                DType::U8 => View::U8(std::slice::from_raw_parts(p as *const u8, n)),
                DType::Bool => View::Bool(std::slice::from_raw_parts(p as *const bool, n)),
                other => return Err(unemulated(other)),
            }
        });
    }
    let mut outs = Vec::with_capacity(outputs.len());
    for (v, spec) in outputs.iter().zip(engine.outputs()) {
        let (ptr, bytes) = addr_mut(v)?;
        let n = spec.numel();
        if bytes < spec.bytes() {
            return Err(Error::Shape(format!("{}: {bytes} bytes bound", spec.name)));
        }
        let p = ptr as usize;
        // SAFETY: as for the inputs; each output is its own allocation, borrowed once.
        outs.push(unsafe {
            match spec.dtype {
                DType::F32 => ViewMut::F32(std::slice::from_raw_parts_mut(p as *mut f32, n)),
                DType::F16 => ViewMut::F16(std::slice::from_raw_parts_mut(p as *mut half::f16, n)),
                DType::I64 => ViewMut::I64(std::slice::from_raw_parts_mut(p as *mut i64, n)),
                DType::U8 => ViewMut::U8(std::slice::from_raw_parts_mut(p as *mut u8, n)),
                DType::Bool => ViewMut::Bool(std::slice::from_raw_parts_mut(p as *mut bool, n)),
                other => return Err(unemulated(other)),
            }
        });
    }
    engine.run(&ins, &mut outs)
}

pub(super) fn dim(spec: &TensorSpec, i: usize) -> usize {
    spec.shape.get(i).copied().unwrap_or(0)
}
