//! Building plans from ONNX with the TensorRT builder API (nvonnxparser, strongly typed network,
//! workspace limit, timing cache reused across builds; GPU only, see `engines::profile::NO_DLA`).

use super::{cuda_context, ffi, library_version_exact};
use crate::backend::TensorSpec;
use crate::engines::plan_info::PlanInfo;
use crate::engines::profile::{BatchRange, EngineProfile};
use crate::engines::report::{trt_data_type_name, EngineReport};
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_void};
use std::path::Path;
use std::time::Instant;

/// Builder progress event: `(phase, step, nb_steps)`; step −1 = phase start with `nb_steps` steps,
/// −2 = phase end.
pub type ProgressFn<'a> = dyn FnMut(&str, i32, i32) + 'a;

/// The shim's progress callback: forwards to the Rust closure behind `user`.
///
/// # Safety
///
/// `user` is null or the `*mut &mut ProgressFn` that `build_engine` put in the build options, valid
/// and not otherwise used for the call; `phase` is null or a NUL-terminated string valid for the call.
unsafe extern "C" fn progress_trampoline(
    user: *mut c_void,
    phase: *const c_char,
    step: i32,
    nb: i32,
) {
    if user.is_null() || phase.is_null() {
        return;
    }
    // SAFETY: per this function's contract `user` points to the live `&mut ProgressFn` set up by
    // `build_engine`, which is not used elsewhere while TensorRT builds.
    let f = unsafe { &mut *(user as *mut &mut ProgressFn<'_>) };
    // SAFETY: `phase` is non-null and NUL-terminated, valid for the call (contract above).
    let phase = unsafe { CStr::from_ptr(phase) }.to_string_lossy();
    // A panic must not unwind into C++.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&phase, step, nb)));
}

fn cpath(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().to_string_lossy().as_bytes())
        .map_err(|_| Error::Backend(format!("path {} contains NUL", p.display())))
}

fn file_size(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

/// Size of an ONNX model including its external-data files (`*.onnx.data` / `*.data` next to it).
pub fn onnx_size(onnx: &Path) -> u64 {
    let mut total = file_size(onnx);
    for ext in ["onnx.data", "data"] {
        let side = onnx.with_extension(ext);
        if side != onnx {
            total += file_size(&side);
        }
    }
    total
}

/// Builds one engine of `profile` from `onnx` into `plan`, writes the plan's sidecar (with the I/O
/// `expected` of it, if given) and the engine inspector's layer JSON, and returns its report line.
/// The plugin library must already be loaded (see [`super::load_plugin_library`]).
/// `batch` gives the optimization profile of an engine with a dynamic batch axis (the object engines);
/// `None` builds a static engine, and a dynamic input is then an error.
pub fn build_engine(
    profile: &EngineProfile,
    name: &str,
    onnx: &Path,
    plan: &Path,
    expected: Option<(&[TensorSpec], &[TensorSpec])>,
    batch: Option<BatchRange>,
    progress: &mut ProgressFn<'_>,
) -> Result<EngineReport> {
    if !ffi::SHIM_BUILT {
        let mut e = ffi::ErrBuf::new();
        let (p, n) = e.raw();
        // SAFETY: without the shim this is the Rust fallback, which ignores the options and writes
        // at most `n` bytes (NUL included) into `e`'s buffer, live for the call.
        unsafe { ffi::rd_trt_build(std::ptr::null_mut(), p, n) };
        return Err(Error::Backend(e.message()));
    }
    if !onnx.exists() {
        return Err(Error::Backend(format!(
            "engine {}: ONNX {} not found",
            name,
            onnx.display()
        )));
    }
    // Recorded in the sidecar: loading compares it with the manifest, so plans left from before a
    // re-export are refused (engines::checksum).
    let (_, onnx_crc32) = crate::engines::checksum::file_crc32(onnx)?;
    super::install_log_sink();
    let ctx = cuda_context(0)?;
    ctx.bind_to_thread()
        .map_err(|e| Error::Gpu(format!("cannot bind CUDA context: {e}")))?;
    if let Some(dir) = profile
        .timing_cache
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let layer_info = plan.with_extension("layers.json");
    let (c_onnx, c_plan, c_cache, c_layers) = (
        cpath(onnx)?,
        cpath(plan)?,
        cpath(&profile.timing_cache)?,
        cpath(&layer_info)?,
    );
    let mut cb: &mut ProgressFn<'_> = progress;
    let mut opts = ffi::rd_trt_build_options {
        onnx_path: c_onnx.as_ptr(),
        plan_path: c_plan.as_ptr(),
        timing_cache_path: c_cache.as_ptr(),
        layer_info_path: c_layers.as_ptr(),
        workspace_bytes: profile.workspace_bytes(),
        optimization_level: profile.optimization_level.map(|l| l as i32).unwrap_or(-1),
        progress: Some(progress_trampoline),
        progress_user: &mut cb as *mut &mut ProgressFn<'_> as *mut c_void,
        batch_min: batch.map_or(0, |b| b.min as i32),
        batch_opt: batch.map_or(0, |b| b.opt as i32),
        batch_max: batch.map_or(0, |b| b.max as i32),
        layer_counts: [0; 16],
        plan_bytes: 0,
    };
    let t0 = Instant::now();
    let mut err = ffi::ErrBuf::new();
    let (p, n) = err.raw();
    // SAFETY: every path in `opts` is a NUL-terminated `CString` alive until after the call;
    // `progress_user` points to `cb`, a local that outlives the call and that `progress_trampoline`
    // (the callback given with it) is the only user of meanwhile; `opts` and `err` are exclusively
    // borrowed locals, and the shim writes at most `n` bytes into `err`.
    if unsafe { ffi::rd_trt_build(&mut opts, p, n) } != 0 {
        return Err(Error::Backend(format!(
            "engine {}: {}",
            name,
            err.message()
        )));
    }
    let build_secs = t0.elapsed().as_secs_f64();
    let mut layers = BTreeMap::new();
    for (t, &c) in opts.layer_counts.iter().enumerate() {
        if c > 0 {
            layers.insert(trt_data_type_name(t), c as usize);
        }
    }
    let (cc_major, cc_minor) = ctx
        .compute_capability()
        .map_err(|e| Error::Gpu(format!("cannot query compute capability: {e}")))?;
    let (inputs, outputs) = expected
        .map(|(i, o)| (i.to_vec(), o.to_vec()))
        .unwrap_or_default();
    PlanInfo {
        engine: name.to_string(),
        profile: profile.name.clone(),
        tensorrt: library_version_exact(),
        device: ctx.name().unwrap_or_else(|_| "unknown GPU".into()),
        compute_capability: (cc_major, cc_minor),
        inputs,
        outputs,
        onnx_crc32: Some(onnx_crc32),
    }
    .save_for(plan)?;
    Ok(EngineReport {
        name: name.to_string(),
        onnx_bytes: onnx_size(onnx),
        plan_bytes: opts.plan_bytes,
        build_secs,
        layers,
    })
}

/// GPU description for build reports (`Orin (sm_87)`), or why there is none.
pub fn device_description() -> String {
    match cuda_context(0) {
        Ok(ctx) => {
            let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
            match ctx.compute_capability() {
                Ok((a, b)) => format!("{name} (sm_{a}{b})"),
                Err(_) => name,
            }
        }
        Err(e) => e.to_string(),
    }
}
