//! The sidecar written next to every plan (`frame.plan.json`): which TensorRT and GPU built it and the
//! I/O it must have. Checked before TensorRT sees the plan, so an engine from another TensorRT version
//! or GPU, or an engine whose tensors do not match what the pipeline expects, gets a clear error instead
//! of TensorRT's.

use crate::error::{Error, Result};
use crate::tensor::TensorSpec;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// TensorRT version as `major*10000 + minor*100 + patch` → `"major.minor.patch"`.
pub fn version_string(v: i32) -> String {
    format!("{}.{}.{}", v / 10000, (v / 100) % 100, v % 100)
}

/// What built a plan, and its I/O.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanInfo {
    /// Engine name (`frame`, ...).
    pub engine: String,
    /// Profile that built it.
    pub profile: String,
    /// TensorRT library version that built it (`major*10000 + minor*100 + patch`).
    pub tensorrt: i32,
    /// GPU name.
    pub device: String,
    /// GPU compute capability (major, minor); plans are specific to it.
    pub compute_capability: (i32, i32),
    /// DLA core the plan targets, if any.
    pub dla_core: Option<u32>,
    /// Inputs the engine must have.
    pub inputs: Vec<TensorSpec>,
    /// Outputs the engine must have.
    pub outputs: Vec<TensorSpec>,
}

impl PlanInfo {
    /// Sidecar path of a plan (`frame.plan` → `frame.plan.json`).
    pub fn path_for(plan: &Path) -> PathBuf {
        let mut s = plan.as_os_str().to_owned();
        s.push(".json");
        PathBuf::from(s)
    }

    /// Reads the sidecar of `plan`, if there is one.
    pub fn load_for(plan: &Path) -> Result<Option<Self>> {
        let p = Self::path_for(plan);
        if !p.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Error::Config(format!("{}: {e}", p.display())))
    }

    /// Writes the sidecar of `plan`.
    pub fn save_for(&self, plan: &Path) -> Result<()> {
        let p = Self::path_for(plan);
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| Error::Other(format!("plan info: {e}")))?;
        std::fs::write(&p, text + "\n").map_err(|e| Error::io(&p, e))
    }

    /// Fails unless the running TensorRT (same major.minor) and GPU (same compute capability) can load
    /// this plan. TensorRT plans are not portable across either.
    pub fn check_compatible(&self, tensorrt: i32, compute_capability: (i32, i32)) -> Result<()> {
        let same_trt = self.tensorrt / 100 == tensorrt / 100;
        if !same_trt || self.compute_capability != compute_capability {
            return Err(Error::Backend(format!(
                "engine {} was built with TensorRT {} for {} (sm_{}{}); this machine has TensorRT {} on \
                 sm_{}{}. Plans are specific to the TensorRT version and GPU: rebuild with \
                 `referdino build --profile engines/profiles/<board>.toml` on this board",
                self.engine,
                version_string(self.tensorrt),
                self.device,
                self.compute_capability.0,
                self.compute_capability.1,
                version_string(tensorrt),
                compute_capability.0,
                compute_capability.1
            )));
        }
        Ok(())
    }
}

/// Compares the I/O an engine has with the I/O expected of it, naming every missing, unexpected or
/// mismatched tensor.
pub fn check_specs(
    engine: &str,
    expected_in: &[TensorSpec],
    expected_out: &[TensorSpec],
    actual_in: &[TensorSpec],
    actual_out: &[TensorSpec],
) -> Result<()> {
    let mut problems = Vec::new();
    for (kind, exp, act) in [
        ("input", expected_in, actual_in),
        ("output", expected_out, actual_out),
    ] {
        for e in exp {
            match act.iter().find(|a| a.name == e.name) {
                None => problems.push(format!("missing {kind} {}", e.name)),
                Some(a) if a.dtype != e.dtype || a.shape != e.shape => problems.push(format!(
                    "{kind} {} is {:?} {:?}, expected {:?} {:?}",
                    e.name, a.dtype, a.shape, e.dtype, e.shape
                )),
                _ => {}
            }
        }
        for a in act {
            if !exp.iter().any(|e| e.name == a.name) {
                problems.push(format!("unexpected {kind} {}", a.name));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Backend(format!(
            "engine {engine} does not match its expected bindings: {} (was it built from another \
             export or profile?)",
            problems.join("; ")
        )))
    }
}
