//! `extern "C"` surface for the C++ shim (feature `tensorrt`); declarations in `shim/rdp_ffi.h`.
//!
//! Every function catches panics (a panic must never unwind into TensorRT) and reports errors through a
//! thread-local message the shim forwards to TensorRT's logger. Also exports the entry points TensorRT's
//! dynamic plugin loading looks up (`getCreators`, `setLoggerFinder`) and `referdino_plugins_register`;
//! each of them installs [`TRT_LOGGER`], which sends the library's `log` records to TensorRT's logger
//! (see [`crate::plugin::logging`]).
//!
//! # Safety
//!
//! The callers are the shim (`shim/`) and TensorRT. Common contract of the `unsafe` functions below:
//! a plugin handle `p` is null or a pointer returned by [`rdp_plugin_create`] / [`rdp_plugin_clone`]
//! and not yet passed to [`rdp_plugin_destroy`], not used by another thread during the call; every
//! (pointer, count) pair is null, or a count ≤ 0, or points to `count` initialised elements valid
//! (and, for outputs, writable and not aliased) for the call; an out-pointer is null or writable.
//! Null handles and null arrays are reported as errors or treated as empty, never dereferenced.

use std::cell::RefCell;
use std::ffi::{c_char, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::plugin::logging::{self, ForwardLogger};
use crate::plugin::types::{Field, ShapeRecipe, TensorDesc};
use crate::plugin::{FieldIn, Op, Plugin, PLUGIN_NAMESPACE, PLUGIN_VERSION};

extern "C" {
    fn rdp_shim_get_creators(nb_creators: *mut i32) -> *mut c_void;
    fn rdp_shim_set_logger_finder(finder: *mut c_void);
    fn rdp_shim_register(registry: *mut c_void) -> i32;
    fn rdp_shim_log(severity: i32, msg: *const c_char);
}

/// Hands one message to the shim, which passes it to TensorRT's logger (`ILoggerFinder::findLogger()`)
/// or, without one, prints errors and warnings to stderr.
fn shim_log(severity: i32, msg: &CStr) {
    // SAFETY: `msg` is a NUL-terminated string that outlives the call; the shim only reads it (TensorRT's
    // `ILogger::log` copies what it keeps) and never unwinds (`noexcept`).
    unsafe { rdp_shim_log(severity, msg.as_ptr()) }
}

/// The library's `log` logger: every record goes to TensorRT's logger through the shim.
static TRT_LOGGER: ForwardLogger = ForwardLogger::new(shim_log);

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_error(msg: impl std::fmt::Display) {
    let s = msg.to_string().replace('\0', " ");
    // The shim reports the message at error severity (`reportError`), naming the failing call; here it
    // only goes to the verbose log so that it is not reported twice.
    log::debug!("{s}");
    LAST_ERROR.with(|e| *e.borrow_mut() = CString::new(s).unwrap_or_default());
}

/// Runs `f`, mapping `Err` and panics to `on_err` after recording the message.
fn guard<T>(on_err: T, f: impl FnOnce() -> crate::Result<T>) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            set_error(e);
            on_err
        }
        Err(_) => {
            set_error("internal panic in referdino-plugins (bug)");
            on_err
        }
    }
}

/// `n` elements at `p` as a slice (empty when `p` is null or `n <= 0`).
///
/// # Safety
///
/// Unless null, `p` points to `n` initialised `T`s valid for reads for `'a` and not written meanwhile.
unsafe fn slice<'a, T>(p: *const T, n: i32) -> &'a [T] {
    if p.is_null() || n <= 0 {
        &[]
    } else {
        // SAFETY: `p` is non-null and `n > 0`; the caller guarantees `n` readable `T`s for `'a`.
        unsafe { std::slice::from_raw_parts(p, n as usize) }
    }
}

/// `n` elements at `p` as a mutable slice (empty when `p` is null or `n <= 0`).
///
/// # Safety
///
/// Unless null, `p` points to `n` initialised `T`s valid for reads and writes for `'a`, and nothing else
/// accesses them meanwhile.
unsafe fn slice_mut<'a, T>(p: *mut T, n: i32) -> &'a mut [T] {
    if p.is_null() || n <= 0 {
        &mut []
    } else {
        // SAFETY: `p` is non-null and `n > 0`; the caller guarantees `n` exclusively usable `T`s.
        unsafe { std::slice::from_raw_parts_mut(p, n as usize) }
    }
}

/// The plugin behind a handle, or an error for a null handle.
///
/// # Safety
///
/// `p` is null or a live handle (module contract) not mutated for `'a`.
unsafe fn plugin<'a>(p: *const Plugin) -> crate::Result<&'a Plugin> {
    // SAFETY: `p` is null (mapped to an error) or a live, properly aligned `Plugin` (contract above).
    unsafe { p.as_ref() }.ok_or_else(|| crate::error::invalid("null plugin handle"))
}

/// The plugin behind a handle, mutably, or an error for a null handle.
///
/// # Safety
///
/// `p` is null or a live handle (module contract) not otherwise accessed for `'a`.
unsafe fn plugin_mut<'a>(p: *mut Plugin) -> crate::Result<&'a mut Plugin> {
    // SAFETY: `p` is null (mapped to an error) or a live `Plugin` nothing else accesses (contract above).
    unsafe { p.as_mut() }.ok_or_else(|| crate::error::invalid("null plugin handle"))
}

#[no_mangle]
pub extern "C" fn rdp_op_count() -> i32 {
    Op::ALL.len() as i32
}

#[no_mangle]
pub extern "C" fn rdp_op_name(op: i32) -> *const c_char {
    Op::from_index(op).map_or(c"".as_ptr(), |o| o.name().as_ptr())
}

#[no_mangle]
pub extern "C" fn rdp_plugin_version() -> *const c_char {
    PLUGIN_VERSION.as_ptr()
}

#[no_mangle]
pub extern "C" fn rdp_plugin_namespace() -> *const c_char {
    PLUGIN_NAMESPACE.as_ptr()
}

/// Attribute schema of op `op`: stores its address in `*fields` (when non-null), returns its length.
///
/// # Safety
///
/// `fields` is null or writable.
#[no_mangle]
pub unsafe extern "C" fn rdp_op_fields(op: i32, fields: *mut *const Field) -> i32 {
    let schema = Op::from_index(op).map_or(&[][..], Op::attribute_schema);
    if !fields.is_null() {
        *fields = schema.as_ptr();
    }
    schema.len() as i32
}

/// Bytes of one PluginField element (0 for types we never read).
fn field_elem_bytes(t: i32) -> usize {
    match t {
        0 | 4 => 2,      // kFLOAT16, kINT16
        1 | 5 => 4,      // kFLOAT32, kINT32
        2 | 10 => 8,     // kFLOAT64, kINT64
        3 | 6 | 11 => 1, // kINT8, kCHAR, kFP8
        _ => 0,
    }
}

/// Creates a plugin of op `op` from TensorRT's `PluginField`s (`runtime != 0`: also loads the kernels).
///
/// # Safety
///
/// `fields`/`nb_fields` follow the module contract; each field's `name` is null or NUL-terminated and
/// its `data` is null or holds `length` elements of its `field_type`.
#[no_mangle]
pub unsafe extern "C" fn rdp_plugin_create(
    op: i32,
    fields: *const Field,
    nb_fields: i32,
    runtime: i32,
) -> *mut Plugin {
    guard(std::ptr::null_mut(), || {
        let op = Op::from_index(op)
            .ok_or_else(|| crate::error::invalid(format!("unknown op index {op}")))?;
        let raw = slice(fields, nb_fields);
        let mut parsed = Vec::with_capacity(raw.len());
        for f in raw {
            let name = if f.name.is_null() {
                ""
            } else {
                CStr::from_ptr(f.name).to_str().unwrap_or("")
            };
            let n = field_elem_bytes(f.field_type) * usize::try_from(f.length).unwrap_or(0);
            let data = if f.data.is_null() {
                &[][..]
            } else {
                std::slice::from_raw_parts(f.data.cast::<u8>(), n)
            };
            parsed.push(FieldIn {
                name,
                field_type: f.field_type,
                length: f.length,
                data,
            });
        }
        #[allow(unused_mut)]
        let mut p = Plugin::create(op, &parsed)?;
        if runtime != 0 {
            // Runtime phase: compile and load the kernels now, not in the first enqueue. Failure here is
            // not fatal (a later attachToContext/enqueue retries and reports).
            if let Err(e) = p.prepare() {
                log::warn!(
                    "{}: kernels not loaded at creation: {e}",
                    op.name().to_string_lossy()
                );
            }
        }
        Ok(Box::into_raw(Box::new(p)))
    })
}

/// A copy of plugin `p` (null on error).
///
/// # Safety
///
/// `p` follows the module contract.
#[no_mangle]
pub unsafe extern "C" fn rdp_plugin_clone(p: *const Plugin) -> *mut Plugin {
    guard(std::ptr::null_mut(), || {
        Ok(Box::into_raw(Box::new(plugin(p)?.clone())))
    })
}

/// Frees plugin `p`.
///
/// # Safety
///
/// `p` is null or a live handle, never used again after this call.
#[no_mangle]
pub unsafe extern "C" fn rdp_plugin_destroy(p: *mut Plugin) {
    if !p.is_null() {
        let _ = catch_unwind(AssertUnwindSafe(|| drop(Box::from_raw(p))));
    }
}

/// Index of `p`'s op in `Op::ALL` (-1 on error).
///
/// # Safety
///
/// `p` follows the module contract.
#[no_mangle]
pub unsafe extern "C" fn rdp_plugin_op(p: *const Plugin) -> i32 {
    guard(-1, || {
        let op = plugin(p)?.op();
        Ok(Op::ALL.iter().position(|&o| o == op).unwrap_or(0) as i32)
    })
}

/// Number of outputs of `p`'s op (0 on error).
///
/// # Safety
///
/// `p` follows the module contract.
#[no_mangle]
pub unsafe extern "C" fn rdp_plugin_nb_outputs(p: *const Plugin) -> i32 {
    guard(0, || Ok(plugin(p)?.op().nb_outputs() as i32))
}

/// Output types from input types (0 on success).
///
/// # Safety
///
/// `p` and both arrays follow the module contract.
#[no_mangle]
pub unsafe extern "C" fn rdp_plugin_output_types(
    p: *const Plugin,
    in_types: *const i32,
    nb_in: i32,
    out_types: *mut i32,
    nb_out: i32,
) -> i32 {
    guard(-1, || {
        plugin(p)?.output_types(slice(in_types, nb_in), slice_mut(out_types, nb_out))?;
        Ok(0)
    })
}

/// Output shape recipes from input ranks (0 on success).
///
/// # Safety
///
/// `p` and both arrays follow the module contract.
#[no_mangle]
pub unsafe extern "C" fn rdp_plugin_output_shapes(
    p: *const Plugin,
    in_ranks: *const i32,
    nb_in: i32,
    out: *mut ShapeRecipe,
    nb_out: i32,
) -> i32 {
    guard(-1, || {
        plugin(p)?.output_shapes(slice(in_ranks, nb_in), slice_mut(out, nb_out))?;
        Ok(0)
    })
}

/// Whether the type/format combination at `pos` is supported (1) or not (0).
///
/// # Safety
///
/// `p` follows the module contract; `descs` holds `nb_in + nb_out` descriptors.
#[no_mangle]
pub unsafe extern "C" fn rdp_plugin_supports(
    p: *const Plugin,
    pos: i32,
    descs: *const TensorDesc,
    nb_in: i32,
    nb_out: i32,
) -> i32 {
    guard(0, || {
        let all = slice(descs, nb_in.saturating_add(nb_out));
        let ok = usize::try_from(pos)
            .is_ok_and(|pos| plugin(p).is_ok_and(|pl| pl.supports(pos, all, nb_in as usize)));
        Ok(i32::from(ok))
    })
}

/// Checks the build-time descriptors (0 on success).
///
/// # Safety
///
/// `p` and both arrays follow the module contract.
#[no_mangle]
pub unsafe extern "C" fn rdp_plugin_configure(
    p: *const Plugin,
    ins: *const TensorDesc,
    nb_in: i32,
    outs: *const TensorDesc,
    nb_out: i32,
) -> i32 {
    guard(-1, || {
        plugin(p)?.configure(slice(ins, nb_in), slice(outs, nb_out))?;
        Ok(0)
    })
}

/// Workspace bytes for these descriptors (0 on error).
///
/// # Safety
///
/// `p` and both arrays follow the module contract.
#[no_mangle]
pub unsafe extern "C" fn rdp_plugin_workspace(
    p: *const Plugin,
    ins: *const TensorDesc,
    nb_in: i32,
    outs: *const TensorDesc,
    nb_out: i32,
) -> usize {
    guard(0, || {
        Ok(plugin(p)?.workspace_size(slice(ins, nb_in), slice(outs, nb_out)))
    })
}

/// Compiles and loads the kernels for the current CUDA context (0 on success).
///
/// # Safety
///
/// `p` follows the module contract (exclusive use).
#[no_mangle]
pub unsafe extern "C" fn rdp_plugin_prepare(p: *mut Plugin) -> i32 {
    guard(-1, || {
        plugin_mut(p)?.prepare()?;
        Ok(0)
    })
}

/// Attributes to serialize: stores their address in `*fields` (when non-null), returns their count.
///
/// # Safety
///
/// `p` follows the module contract; `fields` is null or writable. The stored pointer is valid while
/// `p` lives.
#[no_mangle]
pub unsafe extern "C" fn rdp_plugin_fields(p: *const Plugin, fields: *mut *const Field) -> i32 {
    guard(0, || {
        let f = plugin(p)?.fields_to_serialize();
        if !fields.is_null() {
            *fields = f.as_ptr();
        }
        Ok(f.len() as i32)
    })
}

/// Launches `p`'s kernel on `stream` (0 on success).
///
/// # Safety
///
/// `p` and the arrays follow the module contract (exclusive use of `p`); `inputs`/`outputs` hold
/// `nb_in`/`nb_out` device pointers of the current CUDA context sized as `ins`/`outs` describe,
/// `workspace` is null or holds the bytes `rdp_plugin_workspace` asked for (unused by anything else until
/// the stream has run the kernels), and `stream` is a stream of that context, as TensorRT guarantees.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn rdp_plugin_enqueue(
    p: *mut Plugin,
    ins: *const TensorDesc,
    nb_in: i32,
    outs: *const TensorDesc,
    nb_out: i32,
    inputs: *const *const c_void,
    outputs: *const *mut c_void,
    workspace: *mut c_void,
    stream: *mut c_void,
) -> i32 {
    guard(-1, || {
        plugin_mut(p)?.enqueue(
            slice(ins, nb_in),
            slice(outs, nb_out),
            slice(inputs, nb_in),
            slice(outputs, nb_out),
            workspace,
            stream.cast(),
        )?;
        Ok(0)
    })
}

#[no_mangle]
pub extern "C" fn rdp_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// TensorRT dynamic plugin loading (`IPluginRegistry::loadLibrary`, `trtexec --dynamicPlugins`):
/// `IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)`. Exported from Rust because a
/// cdylib only exports Rust-defined symbols.
///
/// # Safety
///
/// `nb_creators` is null (answered with null) or writable.
#[no_mangle]
#[allow(non_snake_case)]
pub unsafe extern "C" fn getCreators(nb_creators: *mut i32) -> *mut c_void {
    logging::install(&TRT_LOGGER);
    if nb_creators.is_null() {
        return std::ptr::null_mut();
    }
    rdp_shim_get_creators(nb_creators)
}

/// TensorRT hands its logger finder to a loaded plugin library: `void setLoggerFinder(ILoggerFinder*)`.
/// From then on the library's `log` records (and the shim's errors) go to the logger it finds.
///
/// # Safety
///
/// `finder` is null or an `nvinfer1::ILoggerFinder*` that outlives the library's use of it.
#[no_mangle]
#[allow(non_snake_case)]
pub unsafe extern "C" fn setLoggerFinder(finder: *mut c_void) {
    rdp_shim_set_logger_finder(finder);
    logging::install(&TRT_LOGGER);
}

/// Registers both creators in an `nvinfer1::IPluginRegistry*` (for hosts that link the library instead of
/// calling `loadLibrary`). Returns 0 on success.
///
/// # Safety
///
/// `registry` is null (reported as an error by the shim) or a live `nvinfer1::IPluginRegistry*`.
#[no_mangle]
pub unsafe extern "C" fn referdino_plugins_register(registry: *mut c_void) -> i32 {
    logging::install(&TRT_LOGGER);
    rdp_shim_register(registry)
}
