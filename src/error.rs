//! The crate-wide error type.
//!
//! Every fallible public function returns [`Result`]. Errors carry enough context (file, tensor name,
//! field name, expected vs found) that a user can act on them without a debugger.

use std::path::PathBuf;

/// Errors produced by referdino.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error with the path it concerns. The OS error is part of the message, not a
    /// separate source: an error chain printed with `{:#}` would otherwise say it twice.
    #[error("{path}: {cause}")]
    Io {
        /// File or device the operation touched.
        path: PathBuf,
        /// Underlying error.
        cause: std::io::Error,
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
    /// One frame of a source cannot be used (a truncated buffer, an undecodable JPEG); the source
    /// itself goes on, and the next frame may be fine.
    #[error("frame: {0}")]
    Frame(String),
    /// A runtime command was malformed or could not be applied.
    #[error("command: {0}")]
    Command(String),
    /// Evaluation data is missing or inconsistent.
    #[error("eval: {0}")]
    Eval(String),
    /// A GPU (CUDA) operation failed or no GPU is present.
    #[error("gpu: {0}")]
    Gpu(String),
    /// A tensor or buffer has the wrong number of elements or the wrong shape.
    #[error("shape: {what}: expected {expected}, found {found}")]
    ShapeMismatch {
        /// What was checked (tensor, binding, buffer), with its owner.
        what: String,
        /// The shape or size required, as text (`[1, 3, 360, 640]`, `921600 bytes`).
        expected: String,
        /// The shape or size given.
        found: String,
    },
    /// A tensor the model needs is absent from a checkpoint or weight map.
    #[error("checkpoint: {origin}: no tensor {name:?}{hint}")]
    MissingTensor {
        /// The checkpoint file or weight map it was looked up in.
        origin: String,
        /// The tensor's key as the model asked for it.
        name: String,
        /// Extra advice (may be empty), starting with a space.
        hint: String,
    },
    /// Input from outside the runtime (a clip, a frame, a prompt) that cannot be used as given.
    #[error("bad input: {origin}: {reason}")]
    BadInput {
        /// Where the input came from (source, command, file, argument).
        origin: String,
        /// What is wrong with it and, where possible, what to do.
        reason: String,
    },
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
            cause: source,
        }
    }

    /// A [`Error::ShapeMismatch`] from anything printable with `{:?}` (shapes, sizes).
    pub fn shape_mismatch(
        what: impl Into<String>,
        expected: impl std::fmt::Debug,
        found: impl std::fmt::Debug,
    ) -> Self {
        Error::ShapeMismatch {
            what: what.into(),
            expected: format!("{expected:?}"),
            found: format!("{found:?}"),
        }
    }

    /// A [`Error::BadInput`].
    pub fn bad_input(origin: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::BadInput {
            origin: origin.into(),
            reason: reason.into(),
        }
    }
}
