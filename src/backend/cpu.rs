//! CPU backend: runs our emitted ONNX engines with tract-onnx.
//!
//! The `referdino`-domain custom ops (`MSDeformAttn`, `QueryPrune`) are registered with tract so that
//! they execute the kernels in [`crate::ops`]. Engines must have static shapes; the model is analysed,
//! typed and optimised once at load time.
//!
//! Per run the inputs are copied into tract tensors and the results copied into the caller's
//! buffers; tract allocates its own intermediates, so this backend is a reference/portable path,
//! not an allocation-free one.

pub mod tract_ops;

use crate::backend::{check_bindings, Backend, Engine, TensorSpec, View, ViewMut};
use crate::error::{Error, Result};
use crate::tensor::DType;
use prost::Message;
use std::path::Path;
use std::sync::Arc;
use tract_onnx::pb::ModelProto;
use tract_onnx::prelude::*;
use tract_onnx::Onnx;

/// The tract-based CPU backend.
#[derive(Clone)]
pub struct CpuBackend {
    onnx: Onnx,
}

impl std::fmt::Debug for CpuBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CpuBackend").finish_non_exhaustive()
    }
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl CpuBackend {
    /// A backend with the standard ONNX ops plus our custom ops.
    pub fn new() -> Self {
        let mut onnx = tract_onnx::onnx();
        tract_ops::register(&mut onnx.op_register);
        CpuBackend { onnx }
    }

    /// Loads an engine from ONNX bytes held in memory (`name` is used in errors and logs).
    /// Initializers stored as external data are not supported here; use [`Backend::load`].
    pub fn load_bytes(&self, name: &str, onnx: &[u8]) -> Result<Box<dyn Engine>> {
        let proto = decode(name, onnx)?;
        self.build(name, &proto, None)
    }

    fn build(&self, name: &str, proto: &ModelProto, dir: Option<&str>) -> Result<Box<dyn Engine>> {
        let err =
            |stage: &str, e: TractError| Error::Backend(format!("engine {name}: {stage}: {e:#}"));
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
        let typed = model
            .into_optimized()
            .map_err(|e| err("typing/optimising the graph", e))?;
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
        let plan = typed.into_runnable().map_err(|e| err("planning", e))?;
        log::debug!(
            "cpu engine {name}: {} inputs, {} outputs",
            inputs.len(),
            outputs.len()
        );
        Ok(Box::new(CpuEngine {
            name: name.to_string(),
            inputs,
            outputs,
            plan,
        }))
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }

    fn load(&self, path: &Path) -> Result<Box<dyn Engine>> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("engine");
        let proto = decode(name, &bytes)?;
        // External initializer data is resolved relative to the model file.
        let dir = path.parent().and_then(|d| d.to_str());
        self.build(name, &proto, dir)
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

/// One loaded ONNX graph ready to run on the CPU.
struct CpuEngine {
    name: String,
    inputs: Vec<TensorSpec>,
    outputs: Vec<TensorSpec>,
    plan: Arc<TypedRunnableModel>,
}

impl CpuEngine {
    fn backend_err(&self, msg: impl std::fmt::Display) -> Error {
        Error::Backend(format!("engine {}: {msg}", self.name))
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

    fn run(&mut self, inputs: &[View<'_>], outputs: &mut [ViewMut<'_>]) -> Result<()> {
        check_bindings(&self.name, &self.inputs, inputs, &self.outputs, outputs)?;
        if let Some(i) = outputs.iter().position(|o| o.dtype().is_none()) {
            return Err(self.backend_err(format!(
                "output {} is device memory; the CPU backend takes host buffers",
                self.outputs[i].name
            )));
        }
        let mut values: TVec<TValue> = TVec::with_capacity(inputs.len());
        for (spec, view) in self.inputs.iter().zip(inputs) {
            let s = &spec.shape;
            let t = match *view {
                View::F32(v) => Tensor::from_shape(s, v),
                View::F16(v) => Tensor::from_shape(s, v),
                View::I64(v) => Tensor::from_shape(s, v),
                View::U8(v) => Tensor::from_shape(s, v),
                View::Bool(v) => Tensor::from_shape(s, v),
                View::Device { .. } => {
                    return Err(self.backend_err(format!(
                        "input {} is device memory; the CPU backend takes host buffers",
                        spec.name
                    )))
                }
            }
            .map_err(|e| self.backend_err(format!("input {}: {e:#}", spec.name)))?;
            values.push(t.into_tvalue());
        }
        let results = self
            .plan
            .run(values)
            .map_err(|e| self.backend_err(format!("{e:#}")))?;
        if results.len() != outputs.len() {
            return Err(self.backend_err(format!(
                "graph produced {} outputs, expected {}",
                results.len(),
                outputs.len()
            )));
        }
        for ((spec, out), t) in self.outputs.iter().zip(outputs.iter_mut()).zip(&results) {
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
                ViewMut::Device { .. } => {
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
}
