//! The crate-wide error type.
//!
//! Every fallible public function returns [`Result`]. Errors carry enough context (file, tensor name,
//! field name, expected vs found) that a user can act on them without a debugger.

use std::path::PathBuf;

/// Errors produced by referdino.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error with the path it concerns.
    #[error("{path}: {source}")]
    Io {
        /// File or device the operation touched.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A configuration file or value is invalid.
    #[error("config: {0}")]
    Config(String),
    /// A checkpoint could not be read or does not match the model.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// Text input (prompt or tokenizer) problem.
    #[error("text: {0}")]
    Text(String),
    /// A tensor had the wrong shape or dtype.
    #[error("shape: {0}")]
    Shape(String),
    /// Graph construction or ONNX export failed.
    #[error("graph: {0}")]
    Graph(String),
    /// An inference backend failed (load or run).
    #[error("backend: {0}")]
    Backend(String),
    /// A frame source (camera, file, folder) failed.
    #[error("source: {0}")]
    Source(String),
    /// A runtime command was malformed or could not be applied.
    #[error("command: {0}")]
    Command(String),
    /// Evaluation data is missing or inconsistent.
    #[error("eval: {0}")]
    Eval(String),
    /// A GPU (CUDA) operation failed or no GPU is present.
    #[error("gpu: {0}")]
    Gpu(String),
    /// Anything else, with a message.
    #[error("{0}")]
    Other(String),
}

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
