//! Which backend runs the engines, chosen by name (`--backend`), and the host backend it stands for.

use crate::backend::cpu::CpuBackend;
use crate::backend::HostBackend;
use crate::error::{Error, Result};

/// Which backend runs the engines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    /// tract on the CPU, ONNX files (native or decomposed custom ops).
    Cpu,
    /// ONNX Runtime on the CPU (feature `ort`, library loaded at run time): native exports (our
    /// custom ops as ONNX Runtime custom operators) or decomposed ones.
    Ort,
    /// TensorRT plans (feature `tensorrt`).
    TensorRt,
    /// ONNX Runtime when its library loads, else tract.
    Auto,
}

impl BackendKind {
    /// Parses `cpu` / `ort` (alias `onnxruntime`) / `tensorrt` (alias `trt`) / `auto`.
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" | "tract" => Ok(BackendKind::Cpu),
            "ort" | "onnxruntime" => Ok(BackendKind::Ort),
            "tensorrt" | "trt" => Ok(BackendKind::TensorRt),
            "auto" => Ok(BackendKind::Auto),
            other => Err(Error::Config(format!(
                "unknown backend `{other}`: expected `cpu`, `ort`, `tensorrt` or `auto`"
            ))),
        }
    }

    /// The name `parse` reads back.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Cpu => "cpu",
            BackendKind::Ort => "ort",
            BackendKind::TensorRt => "tensorrt",
            BackendKind::Auto => "auto",
        }
    }

    /// The host backend for `cpu`, `ort` or `auto`, its engines on `threads` threads (`None` or 0: every
    /// available core). `ort` fails with the reason when ONNX Runtime is missing; `auto` falls back to
    /// tract. Logs one line saying which backend runs.
    pub fn host_backend(self, threads: Option<usize>) -> Result<HostBackend> {
        let threads = threads.unwrap_or(0);
        let cpu = |why: &str| -> Result<HostBackend> {
            let b = CpuBackend::with_threads(threads)?;
            log::info!("backend: cpu (tract), {} threads{why}", b.threads());
            Ok(HostBackend::Cpu(b))
        };
        match self {
            BackendKind::Cpu => cpu(""),
            BackendKind::TensorRt => Err(Error::Config(
                "the TensorRT backend runs prebuilt plans (an engine directory), not host engines".into(),
            )),
            #[cfg(feature = "ort")]
            BackendKind::Ort | BackendKind::Auto => {
                match crate::backend::ort::OrtBackend::new(threads) {
                    Ok(b) => {
                        log::info!(
                            "backend: ort (ONNX Runtime {}), {} threads",
                            b.library().display(),
                            b.threads()
                        );
                        Ok(HostBackend::Ort(b))
                    }
                    Err(e) if self == BackendKind::Auto => cpu(&format!("; ONNX Runtime unavailable: {e}")),
                    Err(e) => Err(e),
                }
            }
            #[cfg(not(feature = "ort"))]
            BackendKind::Ort => Err(Error::Config(
                "this binary was built without ONNX Runtime support (cargo feature `ort`); use `--backend cpu`"
                    .into(),
            )),
            #[cfg(not(feature = "ort"))]
            BackendKind::Auto => cpu(" (built without ONNX Runtime)"),
        }
    }
}
