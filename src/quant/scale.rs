//! Scale tables: tensor name → symmetric INT8 quantization parameters.
//!
//! Everything is symmetric INT8 with zero point 0, which is what TensorRT's explicit quantization accepts
//! for activations and weights: activations get one scale per tensor, weights one scale per output
//! channel. `scale = amax / 127`. The table is JSON (serde) so it can be read by people and by tools.

use super::calibrate::CalibMethod;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Format version written into every table; bump when the layout changes.
pub const SCALE_TABLE_VERSION: u32 = 1;

/// Quantization parameters of one tensor. The zero point is always 0 (symmetric INT8).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum TensorScale {
    /// One scale for the whole tensor (activations).
    PerTensor {
        /// Dequantized value of one INT8 step (`amax / 127`).
        scale: f32,
        /// Clipping threshold the scale came from.
        amax: f32,
    },
    /// One scale per slice along `axis` (weights: the output-channel axis).
    PerChannel {
        /// Axis the scales run along (ONNX `axis` attribute of QuantizeLinear).
        axis: usize,
        /// One scale per channel.
        scales: Vec<f32>,
    },
}

impl TensorScale {
    /// Per-tensor parameters from a clipping threshold. A zero or non-finite amax (a tensor that was
    /// always zero) gets scale 1, which quantizes zeros exactly and keeps the Q/DQ pair valid (TensorRT
    /// rejects zero scales).
    pub fn from_amax(amax: f32) -> Self {
        TensorScale::PerTensor {
            scale: scale_from_amax(amax),
            amax,
        }
    }

    /// Checks that every scale is finite and > 0.
    pub fn validate(&self, name: &str) -> Result<()> {
        let bad = |s: f32| !(s.is_finite() && s > 0.0);
        match self {
            TensorScale::PerTensor { scale, .. } if bad(*scale) => Err(Error::Config(format!(
                "scale table: tensor {name} has invalid scale {scale}"
            ))),
            TensorScale::PerChannel { scales, .. } if scales.is_empty() => Err(Error::Config(
                format!("scale table: tensor {name} has no per-channel scales"),
            )),
            TensorScale::PerChannel { scales, .. } => match scales.iter().position(|&s| bad(s)) {
                Some(i) => Err(Error::Config(format!(
                    "scale table: tensor {name} channel {i} has invalid scale {}",
                    scales[i]
                ))),
                None => Ok(()),
            },
            _ => Ok(()),
        }
    }
}
pub use crate::onnx::precision::{per_channel_scales, scale_from_amax, QMAX};

/// A calibration result: quantization parameters for named tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScaleTable {
    /// Format version ([`SCALE_TABLE_VERSION`]).
    pub version: u32,
    /// Model the table was calibrated for (free text, e.g. `swin-t`).
    pub model: String,
    /// Method used for activations.
    pub method: CalibMethod,
    /// Calibration set description (recipe name, number of frames and prompts).
    pub calibration_set: String,
    /// Export form the tensor names belong to (`native` or `decomposed`); absent in hand-made tables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_ops: Option<String>,
    /// Geometry the engines were exported at when calibrating (names depend on it); absent in
    /// hand-made tables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub geometry: Option<crate::graph::engines::Geometry>,
    /// Tensor name → parameters, sorted by name so files diff cleanly.
    pub tensors: BTreeMap<String, TensorScale>,
}

impl ScaleTable {
    /// An empty table.
    pub fn new(
        model: impl Into<String>,
        method: CalibMethod,
        calibration_set: impl Into<String>,
    ) -> Self {
        Self {
            version: SCALE_TABLE_VERSION,
            model: model.into(),
            method,
            calibration_set: calibration_set.into(),
            custom_ops: None,
            geometry: None,
            tensors: BTreeMap::new(),
        }
    }

    /// Parameters of one tensor, if calibrated.
    pub fn get(&self, name: &str) -> Option<&TensorScale> {
        self.tensors.get(name)
    }

    /// Per-tensor scale of an activation; an error names the tensor when it is missing or per-channel.
    pub fn activation_scale(&self, name: &str) -> Result<f32> {
        match self.tensors.get(name) {
            Some(TensorScale::PerTensor { scale, .. }) => Ok(*scale),
            Some(TensorScale::PerChannel { .. }) => Err(Error::Config(format!(
                "scale table: activation {name} has per-channel scales; activations must be per-tensor"
            ))),
            None => Err(Error::Config(format!(
                "scale table has no entry for tensor {name} (calibrate with a recipe that reaches it)"
            ))),
        }
    }

    /// Checks the version and every scale.
    pub fn validate(&self) -> Result<()> {
        if self.version != SCALE_TABLE_VERSION {
            return Err(Error::Config(format!(
                "scale table version {} is not supported (expected {SCALE_TABLE_VERSION})",
                self.version
            )));
        }
        for (name, s) in &self.tensors {
            s.validate(name)?;
        }
        Ok(())
    }

    /// Serializes to pretty JSON.
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self)
            .map_err(|e| Error::Other(format!("scale table: cannot serialize: {e}")))
    }

    /// Parses and validates JSON.
    pub fn from_json(text: &str) -> Result<Self> {
        let t: ScaleTable =
            serde_json::from_str(text).map_err(|e| Error::Config(format!("scale table: {e}")))?;
        t.validate()?;
        Ok(t)
    }

    /// Writes the table as JSON, after the checks [`ScaleTable::load`] makes: a table written is
    /// a table that loads.
    pub fn save(&self, path: &Path) -> Result<()> {
        self.validate()?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        std::fs::write(path, self.to_json()? + "\n").map_err(|e| Error::io(path, e))
    }

    /// Reads and validates a JSON table.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&text).map_err(|e| {
            let why = match e {
                Error::Config(m) => m,
                other => other.to_string(),
            };
            Error::Config(format!("{}: {why}", path.display()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_channel_scales_along_each_axis() {
        // shape [2, 3]: rows are channels on axis 0, columns on axis 1.
        let w = [1.0, -2.0, 0.5, 0.0, 0.0, -3.0];
        let s0 = per_channel_scales(&w, &[2, 3], 0).unwrap();
        assert_eq!(s0, vec![2.0 / 127.0, 3.0 / 127.0]);
        let s1 = per_channel_scales(&w, &[2, 3], 1).unwrap();
        assert_eq!(s1, vec![1.0 / 127.0, 2.0 / 127.0, 3.0 / 127.0]);
        assert!(per_channel_scales(&w, &[2, 3], 2).is_err());
        assert!(per_channel_scales(&w, &[4, 3], 0).is_err());
    }

    #[test]
    fn zero_amax_gives_unit_scale() {
        assert_eq!(scale_from_amax(0.0), 1.0);
        assert_eq!(scale_from_amax(f32::NAN), 1.0);
        // A tiny but nonzero amax: amax / 127 would be 0 (or subnormal), which no table accepts.
        assert_eq!(scale_from_amax(1e-43), 1.0);
        assert_eq!(scale_from_amax(1e-37), 1.0);
        assert!(scale_from_amax(1e-30) > 0.0 && scale_from_amax(1e-30) < 1e-31);
        assert_eq!(scale_from_amax(12.7), 0.1);
    }
}
