//! Error type of the plugin crate: every failure is a value, never a panic.

/// Errors from kernel compilation, launches and plugin logic.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The CUDA driver library (libcuda) could not be loaded: no NVIDIA driver on this machine.
    #[error("CUDA driver library (libcuda.so) not found: no NVIDIA driver on this machine")]
    NoDriver,
    /// NVRTC could not be loaded (looked for as libnvrtc.so, then libnvrtc.so.12, .11, ...).
    #[error(
        "NVRTC library not found (looked for libnvrtc.so, libnvrtc.so.12, .11 ...): add CUDA's lib directory to LD_LIBRARY_PATH; with CUDA 13, whose library is libnvrtc.so.13, that directory must also hold the unversioned libnvrtc.so link (the toolkit's dev package has it; plugins/gpu-kit/run.sh makes one)"
    )]
    NoNvrtc,
    /// NVRTC rejected a kernel source.
    #[error("NVRTC failed to compile {source_name} for {arch}: {log}")]
    Compile {
        /// Kernel source file name.
        source_name: String,
        /// Target architecture (`sm_87`, ...).
        arch: String,
        /// NVRTC's log.
        log: String,
    },
    /// A CUDA driver call failed.
    #[error("CUDA driver error in {what}: {detail}")]
    Cuda {
        /// The call or step that failed.
        what: &'static str,
        /// The driver's message.
        detail: String,
    },
    /// Shapes, types or attributes that violate an op contract.
    #[error("invalid input: {0}")]
    InvalidInput(String),
}

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Shorthand for [`Error::InvalidInput`].
pub(crate) fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidInput(msg.into())
}
