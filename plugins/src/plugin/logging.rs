//! The plugin library's `log` output, forwarded to TensorRT's logger.
//!
//! Loaded by TensorRT (`IPluginRegistry::loadLibrary`, `trtexec --dynamicPlugins`), the library is a
//! cdylib with its own copy of the `log` crate and no logger: every `log::warn!` (for instance "kernels
//! not loaded at creation" when NVRTC is missing on a runtime-only image) went nowhere. TensorRT hands
//! the library an `ILoggerFinder` through the exported `setLoggerFinder`; the shim asks it for the
//! application's `ILogger` at each message (`findLogger()`), and [`ForwardLogger`] is the `log::Log` that
//! feeds it. Without a finder (a host that links the library and calls `referdino_plugins_register`)
//! the shim prints errors and warnings to stderr instead.
//!
//! Everything here is plain Rust; the sink (a shim function) is passed in, so the mapping is tested
//! without TensorRT.

use std::ffi::{CStr, CString};

/// TensorRT's `ILogger::Severity` values.
pub mod severity {
    /// `kINTERNAL_ERROR`.
    pub const INTERNAL_ERROR: i32 = 0;
    /// `kERROR`.
    pub const ERROR: i32 = 1;
    /// `kWARNING`.
    pub const WARNING: i32 = 2;
    /// `kINFO`.
    pub const INFO: i32 = 3;
    /// `kVERBOSE`.
    pub const VERBOSE: i32 = 4;
}

/// The TensorRT severity of a `log` level (debug and trace are both verbose).
pub fn trt_severity(level: log::Level) -> i32 {
    match level {
        log::Level::Error => severity::ERROR,
        log::Level::Warn => severity::WARNING,
        log::Level::Info => severity::INFO,
        log::Level::Debug | log::Level::Trace => severity::VERBOSE,
    }
}

/// The most detailed level the library forwards (TensorRT's logger filters by severity itself; trace
/// records are not produced at all).
pub const MAX_LEVEL: log::LevelFilter = log::LevelFilter::Debug;

/// Receives one message with its TensorRT severity.
pub type Sink = fn(severity: i32, msg: &CStr);

/// A `log::Log` that formats each record as `referdino-plugins: <target>: <message>` and hands it to a
/// [`Sink`] with its TensorRT severity.
pub struct ForwardLogger {
    sink: Sink,
}

impl ForwardLogger {
    /// A logger writing to `sink`.
    pub const fn new(sink: Sink) -> Self {
        ForwardLogger { sink }
    }

    /// The text sent for a record (NULs, which a C string cannot hold, become spaces).
    pub fn message(record: &log::Record<'_>) -> CString {
        let text = format!("referdino-plugins: {}: {}", record.target(), record.args());
        CString::new(text.replace('\0', " ")).unwrap_or_default()
    }
}

impl log::Log for ForwardLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= MAX_LEVEL
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            (self.sink)(trt_severity(record.level()), &Self::message(record));
        }
    }

    fn flush(&self) {}
}

/// Makes `logger` the `log` logger of this library, once; later calls (and a host that already set its
/// own logger, when the crate is linked as an rlib) leave the current one in place. Returns whether
/// `logger` is the logger now.
pub fn install(logger: &'static ForwardLogger) -> bool {
    static INSTALLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *INSTALLED.get_or_init(|| {
        let ok = log::set_logger(logger).is_ok();
        if ok {
            log::set_max_level(MAX_LEVEL);
        }
        ok
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use log::Log;
    use std::sync::Mutex;

    static SEEN: Mutex<Vec<(i32, String)>> = Mutex::new(Vec::new());

    fn record_sink(severity: i32, msg: &CStr) {
        SEEN.lock()
            .unwrap()
            .push((severity, msg.to_string_lossy().into_owned()));
    }

    #[test]
    fn records_reach_the_sink_with_tensorrt_severities() {
        let logger = ForwardLogger::new(record_sink);
        let emit = |level: log::Level, text: &str| {
            logger.log(
                &log::Record::builder()
                    .level(level)
                    .target("referdino_plugins::kernels")
                    .args(format_args!("{text}"))
                    .build(),
            )
        };
        emit(
            log::Level::Warn,
            "QueryPrune: kernels not loaded at creation: NVRTC not found",
        );
        emit(log::Level::Error, "bad\0attribute");
        emit(log::Level::Info, "compiled");
        emit(log::Level::Debug, "details");
        emit(log::Level::Trace, "dropped");
        let seen = SEEN.lock().unwrap().clone();
        assert_eq!(
            seen,
            vec![
                (
                    severity::WARNING,
                    "referdino-plugins: referdino_plugins::kernels: QueryPrune: kernels not loaded at \
                     creation: NVRTC not found"
                        .to_string()
                ),
                (
                    severity::ERROR,
                    "referdino-plugins: referdino_plugins::kernels: bad attribute".to_string()
                ),
                (
                    severity::INFO,
                    "referdino-plugins: referdino_plugins::kernels: compiled".to_string()
                ),
                (
                    severity::VERBOSE,
                    "referdino-plugins: referdino_plugins::kernels: details".to_string()
                ),
            ]
        );
        assert_eq!(trt_severity(log::Level::Trace), severity::VERBOSE);
    }
}
