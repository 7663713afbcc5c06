//! Running the model for INT8: the FP32 calibration run over a recipe's frames that fills the
//! histograms of [`crate::quant`], and the FP32 / FP16 / INT8 agreement run. Apart from `quant` (the
//! precision maths and graph passes, which the runtime uses to make INT8 engines) because these run
//! sessions of [`crate::pipeline`].
//!
//! - [`frames`]: recipe frames as model input, the FP32 calibration run and the agreement run;
//! - [`agreement`]: FP32 vs reduced-precision agreement (mask IoU, score and box deltas).

pub mod agreement;
pub mod frames;

use crate::backend::cpu::CpuBackend;
use crate::error::{Error, Result};
use crate::graph::engines::names;
use crate::pipeline::session::EngineSet;
use prost::Message;
use tract_onnx::pb;

/// Loads four engine models (text, frame, temporal, head order) on the CPU backend.
pub fn cpu_engine_set(models: &[pb::ModelProto]) -> Result<EngineSet> {
    if models.len() != 4 {
        return Err(Error::Graph(format!(
            "expected 4 engine models, got {}",
            models.len()
        )));
    }
    let b = CpuBackend::new();
    let load = |i: usize, n: &str| b.load_bytes(n, &models[i].encode_to_vec());
    Ok(EngineSet {
        text: load(0, names::TEXT)?,
        frame: load(1, names::FRAME)?,
        temporal: load(2, names::TEMPORAL)?,
        head: load(3, names::HEAD)?,
    })
}
