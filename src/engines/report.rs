//! The build report: per engine, layers per precision, ONNX and plan sizes, build time.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// TensorRT `DataType` names by enum value (stable across TensorRT 10.x and 11.x).
pub const TRT_DATA_TYPES: [&str; 12] = [
    "fp32", "fp16", "int8", "int32", "bool", "uint8", "fp8", "bf16", "int64", "int4", "fp4", "e8m0",
];

/// Name of a TensorRT `DataType` value (`"type<N>"` for values newer than this table).
pub fn trt_data_type_name(v: usize) -> String {
    TRT_DATA_TYPES
        .get(v)
        .map(|s| s.to_string())
        .unwrap_or_else(|| format!("type{v}"))
}

/// One built engine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineReport {
    /// Engine name (`frame`, ...).
    pub name: String,
    /// Size of the input ONNX (including external weights), bytes.
    pub onnx_bytes: u64,
    /// Size of the serialized plan, bytes.
    pub plan_bytes: u64,
    /// Wall-clock build time, seconds.
    pub build_secs: f64,
    /// Network layers by output precision (`fp32`, `fp16`, `int8`, ...).
    pub layers: BTreeMap<String, usize>,
}

impl EngineReport {
    /// Total layer count.
    pub fn total_layers(&self) -> usize {
        self.layers.values().sum()
    }
}

/// A whole `referdino build`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildReport {
    /// Profile name.
    pub profile: String,
    /// TensorRT version that built the plans (e.g. `10.3.0`).
    pub tensorrt: String,
    /// GPU name and compute capability.
    pub device: String,
    /// One entry per engine, in build order.
    pub engines: Vec<EngineReport>,
}

/// Formats a byte count as B / KiB / MiB / GiB with one decimal.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl BuildReport {
    /// Total build time, seconds.
    pub fn total_secs(&self) -> f64 {
        self.engines.iter().map(|e| e.build_secs).sum()
    }
    /// Total plan size, bytes.
    pub fn total_plan_bytes(&self) -> u64 {
        self.engines.iter().map(|e| e.plan_bytes).sum()
    }

    /// JSON form (written next to the plans as `build-report.json`).
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self)
            .map_err(|e| Error::Other(format!("build report: cannot serialize: {e}")))
    }
}

impl std::fmt::Display for BuildReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Precision columns: every precision that occurs, fp32/fp16/int8 first.
        let mut cols: Vec<String> = ["fp32", "fp16", "int8"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for e in &self.engines {
            for k in e.layers.keys() {
                if !cols.contains(k) {
                    cols.push(k.clone());
                }
            }
        }
        writeln!(
            f,
            "build report: profile {}, TensorRT {}, {}",
            self.profile, self.tensorrt, self.device
        )?;
        write!(f, "{:<10} {:>7}", "engine", "layers")?;
        for c in &cols {
            write!(f, " {c:>6}")?;
        }
        writeln!(f, " {:>10} {:>10} {:>9}", "onnx", "plan", "build")?;
        for e in &self.engines {
            write!(f, "{:<10} {:>7}", e.name, e.total_layers())?;
            for c in &cols {
                write!(f, " {:>6}", e.layers.get(c).copied().unwrap_or(0))?;
            }
            writeln!(
                f,
                " {:>10} {:>10} {:>8.1}s",
                human_bytes(e.onnx_bytes),
                human_bytes(e.plan_bytes),
                e.build_secs,
            )?;
        }
        write!(
            f,
            "total: {} of plans in {:.1}s",
            human_bytes(self.total_plan_bytes()),
            self.total_secs()
        )
    }
}
