//! safetensors checkpoints, including the `aliases` / `key_order` metadata our fixtures use for
//! tensors the official state dict repeats under several names.

use super::RawCheckpoint;
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};
use safetensors::{Dtype, SafeTensors};

/// Reads a safetensors file already in memory.
pub fn read(bytes: &[u8]) -> Result<RawCheckpoint> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| Error::Checkpoint(format!("invalid safetensors file: {e}")))?;
    let (_, meta) = SafeTensors::read_metadata(bytes)
        .map_err(|e| Error::Checkpoint(format!("invalid safetensors header: {e}")))?;
    let mut out = RawCheckpoint {
        note: "safetensors".into(),
        ..Default::default()
    };
    let md = meta.metadata().clone().unwrap_or_default();
    if let Some(a) = md.get("aliases") {
        let map: std::collections::BTreeMap<String, String> =
            serde_json::from_str(a).map_err(|e| {
                Error::Checkpoint(format!(
                    "metadata `aliases` is not a JSON object of strings: {e}"
                ))
            })?;
        out.aliases = map.into_iter().collect();
    }
    if let Some(k) = md.get("key_order") {
        let order: Vec<String> = serde_json::from_str(k).map_err(|e| {
            Error::Checkpoint(format!(
                "metadata `key_order` is not a JSON list of strings: {e}"
            ))
        })?;
        out.key_order = Some(order);
    }
    // File (offset) order: the writer's order, usually the state-dict order.
    for name in meta.offset_keys() {
        let view = st
            .tensor(&name)
            .map_err(|e| Error::Checkpoint(format!("{name}: {e}")))?;
        let (dt, label) = match view.dtype() {
            Dtype::F32 => (Some(DType::F32), "float32"),
            Dtype::F16 => (Some(DType::F16), "float16"),
            Dtype::BF16 => (Some(DType::BF16), "bfloat16"),
            Dtype::I64 => (Some(DType::I64), "int64"),
            Dtype::I32 => (Some(DType::I32), "int32"),
            Dtype::U8 => (Some(DType::U8), "uint8"),
            Dtype::BOOL => (Some(DType::Bool), "bool"),
            Dtype::F64 => (None, "float64"),
            other => {
                return Err(Error::Checkpoint(format!(
                    "{name}: dtype {other:?} is not supported (float32/16, bfloat16, float64, int64/32, uint8, bool)"
                )))
            }
        };
        let t = match dt {
            Some(dt) => Tensor::from_le_bytes(view.shape(), dt, view.data()),
            None => Tensor::from_f32(
                view.shape(),
                view.data()
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                    .collect(),
            ),
        }
        .map_err(|e| Error::Checkpoint(format!("{name}: {e}")))?;
        out.source_dtypes.insert(name.clone(), label.to_string());
        out.tensors.push((name, t));
    }
    Ok(out)
}
