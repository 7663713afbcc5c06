//! Raw bindings to the C++ shim (`shim/referdino_trt.h`).
//!
//! When `build.rs` found TensorRT it compiles the shim and sets `cfg(referdino_trt_shim)`; the `extern`
//! block below is then the real thing. Otherwise the same functions exist as Rust fallbacks that fail
//! with "built without the TensorRT shim", so the whole backend is still type-checked and its error path
//! is exercised on machines without TensorRT.

#![allow(non_camel_case_types)]

use std::os::raw::{c_char, c_void};

/// Opaque runtime handle.
#[repr(C)]
pub struct rd_trt_runtime {
    _p: [u8; 0],
}
/// Opaque engine handle.
#[repr(C)]
pub struct rd_trt_engine {
    _p: [u8; 0],
}

/// Log sink.
pub type rd_trt_log_fn = Option<unsafe extern "C" fn(severity: i32, msg: *const c_char)>;
/// Progress callback.
pub type rd_trt_progress_fn =
    Option<unsafe extern "C" fn(user: *mut c_void, phase: *const c_char, step: i32, nb_steps: i32)>;

/// Mirrors `rd_trt_build_options`.
#[repr(C)]
pub struct rd_trt_build_options {
    pub onnx_path: *const c_char,
    pub plan_path: *const c_char,
    pub timing_cache_path: *const c_char,
    pub layer_info_path: *const c_char,
    pub workspace_bytes: u64,
    pub optimization_level: i32,
    pub progress: rd_trt_progress_fn,
    pub progress_user: *mut c_void,
    pub batch_min: i32,
    pub batch_opt: i32,
    pub batch_max: i32,
    pub layer_counts: [i64; 16],
    pub plan_bytes: u64,
}

/// True when the real shim is linked in.
pub const SHIM_BUILT: bool = cfg!(referdino_trt_shim);

#[cfg(referdino_trt_shim)]
extern "C" {
    pub fn rd_trt_header_version() -> i32;
    pub fn rd_trt_library_version() -> i32;
    pub fn rd_trt_library_version_exact(out: *mut i32);
    pub fn rd_trt_header_version_exact(out: *mut i32);
    pub fn rd_trt_set_log_sink(sink: rd_trt_log_fn);
    pub fn rd_trt_load_plugins(path: *const c_char, err: *mut c_char, err_len: usize) -> i32;
    pub fn rd_trt_runtime_create(err: *mut c_char, err_len: usize) -> *mut rd_trt_runtime;
    pub fn rd_trt_runtime_destroy(rt: *mut rd_trt_runtime);
    pub fn rd_trt_engine_load(
        rt: *mut rd_trt_runtime,
        plan: *const c_void,
        plan_len: usize,
        err: *mut c_char,
        err_len: usize,
    ) -> *mut rd_trt_engine;
    pub fn rd_trt_engine_share(
        e: *const rd_trt_engine,
        err: *mut c_char,
        err_len: usize,
    ) -> *mut rd_trt_engine;
    pub fn rd_trt_engine_drop_context(e: *mut rd_trt_engine);
    pub fn rd_trt_engine_destroy(e: *mut rd_trt_engine);
    pub fn rd_trt_engine_num_io(e: *const rd_trt_engine) -> i32;
    pub fn rd_trt_engine_io(
        e: *const rd_trt_engine,
        index: i32,
        name: *mut *const c_char,
        is_input: *mut i32,
        dtype: *mut i32,
        nb_dims: *mut i32,
        dims: *mut i64,
    ) -> i32;
    pub fn rd_trt_engine_set_batch(
        e: *mut rd_trt_engine,
        batch: i32,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
    pub fn rd_trt_engine_set_address(
        e: *mut rd_trt_engine,
        name: *const c_char,
        device_ptr: u64,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
    pub fn rd_trt_engine_enqueue(
        e: *mut rd_trt_engine,
        stream: *mut c_void,
        err: *mut c_char,
        err_len: usize,
    ) -> i32;
    pub fn rd_trt_build(opts: *mut rd_trt_build_options, err: *mut c_char, err_len: usize) -> i32;
}

#[cfg(not(referdino_trt_shim))]
pub use fallback::*;

/// Stand-ins with the shim's signatures, used when TensorRT was not found at build time. Every one fails
/// the way the shim reports failure (non-zero / null with a message).
#[cfg(not(referdino_trt_shim))]
mod fallback {
    use super::*;

    /// Message every fallback returns.
    pub const NO_SHIM: &str = "built without the TensorRT shim: TensorRT headers/libraries were not found \
        when referdino was compiled (set TENSORRT_INCLUDE_DIR / TENSORRT_LIB_DIR / CUDA_INCLUDE_DIR and \
        rebuild with --features tensorrt on the Jetson)";

    /// Writes [`NO_SHIM`] into `err`, truncated to fit, NUL-terminated.
    ///
    /// # Safety
    ///
    /// `err` is null or valid for writes of `err_len` bytes.
    unsafe fn fail(err: *mut c_char, err_len: usize) {
        if err.is_null() || err_len == 0 {
            return;
        }
        let n = NO_SHIM.len().min(err_len - 1);
        // SAFETY: `n < err_len`, so both the `n` copied bytes and the NUL at `err + n` lie inside the
        // caller's buffer (contract above); `NO_SHIM` is a static string of at least `n` bytes and
        // cannot overlap a buffer the caller owns mutably.
        unsafe {
            std::ptr::copy_nonoverlapping(NO_SHIM.as_ptr() as *const c_char, err, n);
            *err.add(n) = 0;
        }
    }

    /// Returns the fallback's answer without touching memory.
    ///
    /// # Safety
    ///
    /// None: declared `unsafe` only to match the shim's signature.
    pub unsafe fn rd_trt_header_version() -> i32 {
        0
    }
    /// Returns the fallback's answer without touching memory.
    ///
    /// # Safety
    ///
    /// None: declared `unsafe` only to match the shim's signature.
    pub unsafe fn rd_trt_library_version() -> i32 {
        0
    }
    /// Returns the fallback's answer without touching memory.
    ///
    /// # Safety
    ///
    /// None: declared `unsafe` only to match the shim's signature.
    pub unsafe fn rd_trt_set_log_sink(_sink: rd_trt_log_fn) {}
    /// Writes an unknown version (all zeros, build −1) into `out`.
    ///
    /// # Safety
    ///
    /// `out` is valid for writes of 4 `i32`s.
    pub unsafe fn rd_trt_library_version_exact(out: *mut i32) {
        // SAFETY: `out` holds 4 writable `i32`s (contract above).
        unsafe { std::ptr::copy_nonoverlapping([0, 0, 0, -1].as_ptr(), out, 4) }
    }
    /// Writes an unknown version (all zeros, build −1) into `out`.
    ///
    /// # Safety
    ///
    /// `out` is valid for writes of 4 `i32`s.
    pub unsafe fn rd_trt_header_version_exact(out: *mut i32) {
        // SAFETY: `out` holds 4 writable `i32`s (contract above).
        unsafe { std::ptr::copy_nonoverlapping([0, 0, 0, -1].as_ptr(), out, 4) }
    }
    /// Fails with [`NO_SHIM`] in `err`.
    ///
    /// # Safety
    ///
    /// `err` is null or valid for writes of `err_len` bytes; the other arguments are not read.
    pub unsafe fn rd_trt_load_plugins(
        _path: *const c_char,
        err: *mut c_char,
        err_len: usize,
    ) -> i32 {
        // SAFETY: forwarded from this function's own contract on `err`/`err_len`.
        unsafe { fail(err, err_len) };
        1
    }
    /// Fails with [`NO_SHIM`] in `err`.
    ///
    /// # Safety
    ///
    /// `err` is null or valid for writes of `err_len` bytes; the other arguments are not read.
    pub unsafe fn rd_trt_runtime_create(err: *mut c_char, err_len: usize) -> *mut rd_trt_runtime {
        // SAFETY: forwarded from this function's own contract on `err`/`err_len`.
        unsafe { fail(err, err_len) };
        std::ptr::null_mut()
    }
    /// Returns the fallback's answer without touching memory.
    ///
    /// # Safety
    ///
    /// None: declared `unsafe` only to match the shim's signature.
    pub unsafe fn rd_trt_runtime_destroy(_rt: *mut rd_trt_runtime) {}
    /// Fails with [`NO_SHIM`] in `err`.
    ///
    /// # Safety
    ///
    /// `err` is null or valid for writes of `err_len` bytes; the other arguments are not read.
    pub unsafe fn rd_trt_engine_load(
        _rt: *mut rd_trt_runtime,
        _plan: *const c_void,
        _plan_len: usize,
        err: *mut c_char,
        err_len: usize,
    ) -> *mut rd_trt_engine {
        // SAFETY: forwarded from this function's own contract on `err`/`err_len`.
        unsafe { fail(err, err_len) };
        std::ptr::null_mut()
    }
    /// Returns the fallback's answer without touching memory.
    ///
    /// # Safety
    ///
    /// None: declared `unsafe` only to match the shim's signature.
    pub unsafe fn rd_trt_engine_destroy(_e: *mut rd_trt_engine) {}
    /// Returns the fallback's answer without touching memory.
    ///
    /// # Safety
    ///
    /// None: declared `unsafe` only to match the shim's signature.
    pub unsafe fn rd_trt_engine_drop_context(_e: *mut rd_trt_engine) {}
    /// Fails with [`NO_SHIM`] in `err`.
    ///
    /// # Safety
    ///
    /// `err` is null or valid for writes of `err_len` bytes; the other arguments are not read.
    pub unsafe fn rd_trt_engine_share(
        _e: *const rd_trt_engine,
        err: *mut c_char,
        err_len: usize,
    ) -> *mut rd_trt_engine {
        // SAFETY: forwarded from this function's own contract on `err`/`err_len`.
        unsafe { fail(err, err_len) };
        std::ptr::null_mut()
    }
    /// Returns the fallback's answer without touching memory.
    ///
    /// # Safety
    ///
    /// None: declared `unsafe` only to match the shim's signature.
    pub unsafe fn rd_trt_engine_num_io(_e: *const rd_trt_engine) -> i32 {
        0
    }
    /// Returns the fallback's answer without touching memory.
    ///
    /// # Safety
    ///
    /// None: declared `unsafe` only to match the shim's signature.
    pub unsafe fn rd_trt_engine_io(
        _e: *const rd_trt_engine,
        _index: i32,
        _name: *mut *const c_char,
        _is_input: *mut i32,
        _dtype: *mut i32,
        _nb_dims: *mut i32,
        _dims: *mut i64,
    ) -> i32 {
        1
    }
    /// Fails with [`NO_SHIM`] in `err`.
    ///
    /// # Safety
    ///
    /// `err` is null or valid for writes of `err_len` bytes; the other arguments are not read.
    pub unsafe fn rd_trt_engine_set_batch(
        _e: *mut rd_trt_engine,
        _batch: i32,
        err: *mut c_char,
        err_len: usize,
    ) -> i32 {
        // SAFETY: forwarded from this function's own contract on `err`/`err_len`.
        unsafe { fail(err, err_len) };
        1
    }
    /// Fails with [`NO_SHIM`] in `err`.
    ///
    /// # Safety
    ///
    /// `err` is null or valid for writes of `err_len` bytes; the other arguments are not read.
    pub unsafe fn rd_trt_engine_set_address(
        _e: *mut rd_trt_engine,
        _name: *const c_char,
        _ptr: u64,
        err: *mut c_char,
        err_len: usize,
    ) -> i32 {
        // SAFETY: forwarded from this function's own contract on `err`/`err_len`.
        unsafe { fail(err, err_len) };
        1
    }
    /// Fails with [`NO_SHIM`] in `err`.
    ///
    /// # Safety
    ///
    /// `err` is null or valid for writes of `err_len` bytes; the other arguments are not read.
    pub unsafe fn rd_trt_engine_enqueue(
        _e: *mut rd_trt_engine,
        _stream: *mut c_void,
        err: *mut c_char,
        err_len: usize,
    ) -> i32 {
        // SAFETY: forwarded from this function's own contract on `err`/`err_len`.
        unsafe { fail(err, err_len) };
        1
    }
    /// Fails with [`NO_SHIM`] in `err`.
    ///
    /// # Safety
    ///
    /// `err` is null or valid for writes of `err_len` bytes; the other arguments are not read.
    pub unsafe fn rd_trt_build(
        _opts: *mut rd_trt_build_options,
        err: *mut c_char,
        err_len: usize,
    ) -> i32 {
        // SAFETY: forwarded from this function's own contract on `err`/`err_len`.
        unsafe { fail(err, err_len) };
        1
    }
}

/// A fixed error buffer for shim calls (no allocation until an error is turned into a `String`).
pub struct ErrBuf(pub [c_char; 2048]);

impl ErrBuf {
    /// An empty buffer.
    pub fn new() -> Self {
        ErrBuf([0; 2048])
    }
    /// Pointer and capacity for the C side.
    pub fn raw(&mut self) -> (*mut c_char, usize) {
        (self.0.as_mut_ptr(), self.0.len())
    }
    /// The message written by the shim.
    pub fn message(&self) -> String {
        let bytes: Vec<u8> = self
            .0
            .iter()
            .take_while(|&&c| c != 0)
            // The byte itself whether `c_char` is i8 (x86-64) or u8 (aarch64).
            .map(|&c| c.to_ne_bytes()[0])
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl Default for ErrBuf {
    fn default() -> Self {
        Self::new()
    }
}
