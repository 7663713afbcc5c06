//! Runs an ONNX model with plain tract-onnx (no custom ops registered).
//!
//! This is the *independent* path: graphs exported with `decompose_custom_ops` contain only standard
//! ONNX ops, so this runner checks our graph without our own kernels. It allocates per call and is meant
//! for tests, parity and export checks, not for the per-frame path (that is `backend::cpu`).

use crate::error::{Error, Result};
use crate::tensor::{DType, Data, Tensor};
use tract_onnx::prelude::*;

fn to_tract(t: &Tensor) -> Result<tract_onnx::prelude::Tensor> {
    let shape = t.shape();
    let r = match t.data() {
        Data::F32(v) => {
            tract_ndarray::ArrayD::from_shape_vec(shape, v.clone()).map(|a| a.into_tensor())
        }
        Data::I64(v) => {
            tract_ndarray::ArrayD::from_shape_vec(shape, v.clone()).map(|a| a.into_tensor())
        }
        Data::I32(v) => {
            tract_ndarray::ArrayD::from_shape_vec(shape, v.clone()).map(|a| a.into_tensor())
        }
        Data::U8(v) => {
            tract_ndarray::ArrayD::from_shape_vec(shape, v.clone()).map(|a| a.into_tensor())
        }
        Data::Bool(v) => {
            tract_ndarray::ArrayD::from_shape_vec(shape, v.clone()).map(|a| a.into_tensor())
        }
        _ => {
            return Err(Error::Backend(format!(
                "unsupported input dtype {:?}",
                t.dtype()
            )))
        }
    };
    r.map_err(|e| Error::Backend(format!("input shape: {e}")))
}

fn from_tract(t: &tract_onnx::prelude::Tensor) -> Result<Tensor> {
    let shape = t.shape().to_vec();
    let dt = t.datum_type();
    let err = |e: TractError| Error::Backend(format!("output: {e}"));
    let view = t.try_as_plain_ram().map_err(err)?;
    let data = if dt == f32::datum_type() {
        Data::F32(view.as_slice::<f32>().map_err(err)?.to_vec())
    } else if dt == i64::datum_type() {
        Data::I64(view.as_slice::<i64>().map_err(err)?.to_vec())
    } else if dt == i32::datum_type() {
        Data::I32(view.as_slice::<i32>().map_err(err)?.to_vec())
    } else if dt == bool::datum_type() {
        Data::Bool(view.as_slice::<bool>().map_err(err)?.to_vec())
    } else if dt == u8::datum_type() {
        Data::U8(view.as_slice::<u8>().map_err(err)?.to_vec())
    } else {
        return Err(Error::Backend(format!("unsupported output dtype {dt:?}")));
    };
    Tensor::new(shape, data)
}

/// Runs `onnx` once on `inputs` (in graph input order) and returns every output in graph order.
pub fn run_plain(onnx: &[u8], inputs: &[Tensor]) -> Result<Vec<Tensor>> {
    let ins: TVec<TValue> = inputs
        .iter()
        .map(|t| to_tract(t).map(|x| x.into()))
        .collect::<Result<_>>()?;
    let mut model = tract_onnx::onnx()
        .model_for_read(&mut &onnx[..])
        .map_err(|e| Error::Backend(format!("tract could not load the model: {e:?}")))?;
    // The inputs' own shapes fix any symbolic dims (a dynamic batch axis) before optimisation.
    for (i, t) in ins.iter().enumerate() {
        let fact = t.datum_type().fact(t.shape());
        model = model
            .with_input_fact(i, fact.into())
            .map_err(|e| Error::Backend(format!("input {i}: {e:?}")))?;
    }
    let model = model
        .into_optimized()
        .and_then(|m| m.into_runnable())
        .map_err(|e| Error::Backend(format!("tract could not load the model: {e:?}")))?;
    let outs = model
        .run(ins)
        .map_err(|e| Error::Backend(format!("tract run failed: {e:?}")))?;
    outs.iter().map(|t| from_tract(t)).collect()
}

/// Shorthand for a dtype check in tests.
pub fn expect_dtype(t: &Tensor, dt: DType) -> Result<()> {
    if t.dtype() == dt {
        Ok(())
    } else {
        Err(Error::Shape(format!(
            "expected {dt:?}, got {:?}",
            t.dtype()
        )))
    }
}
