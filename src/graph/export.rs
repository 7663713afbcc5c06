//! Writes the four engines as ONNX files with a JSON manifest.

use super::engines::{build_engines, ExportOptions, Geometry};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::tensor::TensorSpec;
use std::path::Path;

/// One engine file of an export.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct EngineEntry {
    /// Engine name (`text`, `frame`, `temporal`, `head`).
    pub name: String,
    /// File name inside the export directory.
    pub file: String,
    /// File size in bytes.
    pub bytes: u64,
    /// CRC-32 of the file (eight hex digits); absent in manifests written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crc32: Option<String>,
    /// Number of ONNX nodes.
    pub nodes: usize,
    /// Input bindings.
    pub inputs: Vec<TensorSpec>,
    /// Output bindings (contract outputs first, then parity taps if any).
    pub outputs: Vec<TensorSpec>,
}

/// The manifest written next to the engines (`manifest.json`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    /// Manifest format version.
    pub format: u32,
    /// Producer and version.
    pub producer: String,
    /// Backbone name of the configuration.
    pub backbone: String,
    /// Hidden size.
    pub hidden_dim: usize,
    /// Queries after pruning.
    pub queries: usize,
    /// Tracker momentum the pipeline must use with these engines.
    pub tracking_alpha: f32,
    /// Static sizes.
    pub geometry: Geometry,
    /// ONNX opset of the default domain.
    pub opset: i64,
    /// `native` (custom ops in domain `referdino`) or `decomposed` (standard ONNX only).
    pub custom_ops: String,
    /// Whether parity taps were emitted.
    pub taps: bool,
    /// Precision the engines were rewritten to (`fp32`, `fp16`, `int8`; `build` and `export
    /// --precision` write it), absent for plain FP32 exports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<String>,
    /// For INT8: where the graphs' FP32 parts stay FP32 (`host`, what `export --precision int8` writes for
    /// ONNX Runtime on a CPU) or turned FP16 (`fp16`, the TensorRT form `build` writes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rest: Option<String>,
    /// For INT8: the scale table the Q/DQ pairs came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scales: Option<String>,
    /// The engines.
    pub engines: Vec<EngineEntry>,
}

impl Manifest {
    /// Whether the engines hold INT8 Q/DQ pairs.
    pub fn is_int8(&self) -> bool {
        self.precision.as_deref() == Some("int8")
    }

    /// Reads `dir/manifest.json`.
    pub fn read(dir: &Path) -> Result<Self> {
        if dir.is_file() {
            return Err(Error::Config(format!(
                "{} is a file; an engine directory holds manifest.json and the engines (write one with `referdino export` or `referdino build`)",
                dir.display()
            )));
        }
        let p = dir.join("manifest.json");
        if dir.is_dir() && !p.exists() {
            return Err(Error::Config(format!(
                "{} is not an engine directory: it has no manifest.json (write one with `referdino export` or `referdino build`)",
                dir.display()
            )));
        }
        let s = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
        serde_json::from_str(&s).map_err(|e| Error::Config(format!("{}: {e}", p.display())))
    }
}

/// Builds and writes `text.onnx`, `frame.onnx`, `temporal.onnx`, `head.onnx` and `manifest.json`.
pub fn export_engines(
    w: &dyn crate::onnx::Weights,
    cfg: &ModelConfig,
    geo: &Geometry,
    opts: &ExportOptions,
    out_dir: &Path,
) -> Result<Manifest> {
    let graphs = build_engines(w, cfg, geo, opts)?;
    // Only now: a checkpoint refused while the graphs are built leaves no empty `out_dir` behind.
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let mut engines = Vec::with_capacity(graphs.len());
    let mut queries = 0;
    for g in graphs {
        let inputs = g.input_specs().to_vec();
        let outputs = g.output_specs();
        let nodes = g.node_count();
        let name = g.name().to_string();
        if name == super::engines::names::FRAME {
            queries = outputs[0].shape[1];
        }
        let file = format!("{name}.onnx");
        let path = out_dir.join(&file);
        let bytes = g.to_bytes();
        std::fs::write(&path, &bytes).map_err(|e| Error::io(&path, e))?;
        log::info!(
            "wrote {} ({} nodes, {:.1} MiB)",
            path.display(),
            nodes,
            bytes.len() as f64 / 1048576.0
        );
        engines.push(EngineEntry {
            name,
            file,
            bytes: bytes.len() as u64,
            crc32: Some(crate::engines::checksum::crc32_of(&bytes)),
            nodes,
            inputs,
            outputs,
        });
    }
    let m = Manifest {
        format: 1,
        producer: format!("referdino {}", env!("CARGO_PKG_VERSION")),
        backbone: cfg.backbone.clone(),
        hidden_dim: cfg.hidden_dim,
        queries,
        tracking_alpha: cfg.tracking_alpha,
        geometry: *geo,
        opset: crate::onnx::builder::OPSET,
        custom_ops: if opts.decompose_custom_ops {
            "decomposed"
        } else {
            "native"
        }
        .into(),
        taps: opts.taps,
        precision: None,
        rest: None,
        scales: None,
        engines,
    };
    let p = out_dir.join("manifest.json");
    let json = serde_json::to_string_pretty(&m).map_err(|e| Error::Other(e.to_string()))?;
    std::fs::write(&p, json).map_err(|e| Error::io(&p, e))?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What is not an engine directory says so, with the command that writes one.
    #[test]
    fn not_an_engine_directory_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = Manifest::read(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("no manifest.json") && e.contains("referdino export"),
            "{e}"
        );
        let file = dir.path().join("model.onnx");
        std::fs::write(&file, b"x").unwrap();
        let e = Manifest::read(&file).unwrap_err().to_string();
        assert!(e.contains("is a file"), "{e}");
    }
}
