//! `referdino doctor`: what this machine and this build can run, before a deployment finds out the hard
//! way. Each check reports `ok`, `missing` (an optional part is absent: the runtime falls back),
//! `warn` (present but degraded: a camera this user may not open) or `error` (present but broken:
//! NVRTC cannot compile our kernels, plans built for another TensorRT or GPU); the last line says
//! which path `referdino run` takes here. Exit status 1 when any check is an error.
//!
//! Nothing here can take the process down: every library is probed for presence before it is
//! called (cudarc panics on a missing driver), commands that may be absent are run with a time limit.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;

use crate::engines::checksum::{check_plan_source, verify_file};
use crate::engines::plan_info::TrtVersion;

/// Arguments of `referdino doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Also check an engine directory (ONNX export or TensorRT plans) against this machine.
    #[arg(long)]
    pub engines: Option<PathBuf>,
    /// The TensorRT plugin library to check (default: where `run` looks for it).
    #[arg(long)]
    pub plugins: Option<PathBuf>,
    /// Also open a source (any `run --source` word; repeatable) and read frames from it for up to
    /// 3 s: its size and frame rate, or why it cannot be read.
    #[arg(long)]
    pub source: Vec<String>,
    /// Skip compiling the CUDA kernels with NVRTC on the GPU (a few seconds).
    #[arg(long)]
    pub no_compile: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Present and working.
    Ok,
    /// An optional part is absent; the runtime does without it.
    Missing,
    /// Present but degraded.
    Warn,
    /// Present but broken.
    Error,
}

/// One check: what was looked at, the outcome, and what was found (or what to do).
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Short name (`cuda-driver`, `tensorrt`, ...).
    pub name: &'static str,
    /// Outcome.
    pub status: Status,
    /// What was found, or why not and what to do.
    pub detail: String,
}

/// Every check and the path `run` takes here.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Checks in the order run.
    pub checks: Vec<Check>,
    /// The inference path `referdino run` takes on this machine with this build.
    pub path: String,
}

impl Report {
    fn push(&mut self, name: &'static str, status: Status, detail: impl Into<String>) {
        self.checks.push(Check {
            name,
            status,
            detail: detail.into(),
        });
    }

    /// The check named `name`.
    pub fn get(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    /// Whether any check is an error.
    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.status == Status::Error)
    }

    /// The human-readable table.
    pub fn text(&self) -> String {
        let mut s = String::new();
        for c in &self.checks {
            let mark = match c.status {
                Status::Ok => "ok     ",
                Status::Missing => "missing",
                Status::Warn => "warn   ",
                Status::Error => "ERROR  ",
            };
            s.push_str(&format!("{mark} {:<14} {}\n", c.name, c.detail));
        }
        s.push_str(&format!("run takes: {}\n", self.path));
        s
    }
}

/// Runs the subcommand.
pub fn run(args: DoctorArgs) -> anyhow::Result<()> {
    let report = diagnose(&args);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.text());
    }
    if report.failed() {
        std::process::exit(1);
    }
    Ok(())
}

/// What the GPU probe found (feature `cuda`).
#[derive(Default)]
struct Gpu {
    /// Compute capability of device 0.
    cc: Option<(i32, i32)>,
}

/// Runs every check.
pub fn diagnose(args: &DoctorArgs) -> Report {
    let mut r = Report {
        checks: Vec::new(),
        path: String::new(),
    };
    build(&mut r);
    platform(&mut r);
    let gpu = cuda(&mut r, !args.no_compile);
    let trt = tensorrt(&mut r, args.plugins.as_deref());
    let ort = onnxruntime(&mut r);
    if let Some(dir) = &args.engines {
        engines(&mut r, dir, trt, gpu.cc);
    }
    cameras(&mut r);
    gstreamer(&mut r);
    for spec in &args.source {
        source(&mut r, spec);
    }
    shared_memory(&mut r);
    r.path = run_path(&r.checks, trt.is_some() && gpu.cc.is_some(), ort);
    r
}

/// Checks the device-resident path needs to pass (beyond a GPU and TensorRT being there).
const DEVICE_PATH_CHECKS: [&str; 3] = ["cuda-driver", "nvrtc", "tensorrt"];

/// The path `run` takes, from what the checks found: the device-resident path only when a GPU and
/// TensorRT are there and none of the checks it needs (driver, NVRTC compiling our kernels,
/// TensorRT with our plugin library) failed; otherwise the host path, naming what keeps the device
/// path out.
fn run_path(checks: &[Check], gpu_and_trt: bool, ort: bool) -> String {
    let broken: Vec<&str> = checks
        .iter()
        .filter(|c| DEVICE_PATH_CHECKS.contains(&c.name) && c.status == Status::Error)
        .map(|c| c.name)
        .collect();
    if gpu_and_trt && broken.is_empty() {
        return "the device-resident path with TensorRT plans (--backend tensorrt --engines DIR)"
            .into();
    }
    let host = if ort {
        "the host path on the CPU, ONNX Runtime with our kernels (--backend auto)"
    } else {
        "the host path on the CPU, tract (ONNX Runtime not found)"
    };
    if gpu_and_trt {
        format!(
            "{host}; the device-resident path needs {} fixed (ERROR above)",
            broken.join(", ")
        )
    } else {
        host.into()
    }
}

fn build(r: &mut Report) {
    let features = [
        ("tensorrt", cfg!(feature = "tensorrt")),
        ("cuda", cfg!(feature = "cuda")),
        ("ort", cfg!(feature = "ort")),
        ("video", cfg!(feature = "video")),
        ("camera-v4l", cfg!(feature = "camera-v4l")),
        ("ros2", cfg!(feature = "ros2")),
    ];
    let on: Vec<&str> = features.iter().filter(|f| f.1).map(|f| f.0).collect();
    let off: Vec<&str> = features.iter().filter(|f| !f.1).map(|f| f.0).collect();
    r.push(
        "build",
        Status::Ok,
        format!(
            "referdino {} with [{}], without [{}]",
            env!("CARGO_PKG_VERSION"),
            on.join(", "),
            off.join(", ")
        ),
    );
}

fn first_line(path: &str) -> Option<String> {
    let s = std::fs::read(path).ok()?;
    let s = String::from_utf8_lossy(&s);
    let l = s
        .trim_matches(char::from(0))
        .lines()
        .next()?
        .trim()
        .to_string();
    (!l.is_empty()).then_some(l)
}

fn platform(r: &mut Report) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let model = first_line("/proc/device-tree/model");
    let l4t = first_line("/etc/nv_tegra_release");
    // Which kernels the CPU backend's products run on this CPU (ours only with AVX2 + FMA).
    let products = if crate::ops::linear::avx2_fma() {
        format!(
            "CPU backend products on its {} kernel",
            crate::ops::linear::kernel().name()
        )
    } else {
        "CPU backend products on tract's kernels (no AVX2 + FMA)".to_string()
    };
    let int8 = std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| int8_instructions(&s))
        .unwrap_or_default();
    // Whether the CPU backend runs INT8 products itself (else tract evaluates the Q/DQ in float).
    let int8 = match crate::ops::qlinear::fast_kernel() {
        Some(k) => format!(
            "{int8}; CPU backend int8 products on its {} kernel",
            k.name()
        ),
        None => format!(
            "{int8}; CPU backend int8 products in float (no AMX / AVX-512 VNNI / Arm dot product)"
        ),
    };
    let mut detail = format!("{cpu}, {cores} cores, {products}, {int8}");
    if let Some(m) = &model {
        detail = format!("{m}; {detail}");
    }
    if let Some(l) = &l4t {
        detail.push_str(&format!("; {l}"));
    }
    if l4t.is_some() {
        if let Some(mode) = run_for("nvpmodel", &["-q"], Duration::from_secs(5)) {
            if let Some(l) = mode.lines().find(|l| l.contains("Power Mode")) {
                detail.push_str(&format!("; {}", l.trim()));
            }
        }
    }
    r.push("platform", Status::Ok, detail);
}

/// What ONNX Runtime's integer products (`--int8`) can use on this CPU, from `/proc/cpuinfo`'s flags (x86:
/// `flags`; Arm: `Features`): AMX and VNNI on x86, the dot-product instructions on Arm (Orin's Cortex-A78AE
/// has them). Without them the products still run in integers, with less gain over FP32.
fn int8_instructions(cpuinfo: &str) -> String {
    let flags: std::collections::BTreeSet<&str> = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags") || l.starts_with("Features"))
        .flat_map(|l| l.split(':').nth(1).unwrap_or("").split_whitespace())
        .collect();
    let names: Vec<&str> = [
        ("amx_int8", "AMX"),
        ("avx512_vnni", "AVX-512 VNNI"),
        ("avx_vnni", "AVX-VNNI"),
        ("asimddp", "dot product"),
        ("i8mm", "int8 matrix multiply"),
    ]
    .iter()
    .filter(|(f, _)| flags.contains(f))
    .map(|(_, n)| *n)
    .collect();
    if names.is_empty() {
        "int8 products (--int8) without dot-product instructions".to_string()
    } else {
        format!("int8 products (--int8) on {}", names.join(", "))
    }
}

/// Runs `cmd args` with a time limit; its stdout when it exits with status 0.
fn run_for(cmd: &str, args: &[&str], limit: Duration) -> Option<String> {
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let t0 = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(s)) => {
                let mut out = String::new();
                if let Some(mut o) = child.stdout.take() {
                    use std::io::Read;
                    let _ = o.read_to_string(&mut out);
                }
                return s.success().then_some(out);
            }
            Ok(None) if t0.elapsed() < limit => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn cuda(r: &mut Report, _compile: bool) -> Gpu {
    r.push(
        "cuda",
        Status::Missing,
        "built without the device path (cargo build --features tensorrt)",
    );
    Gpu::default()
}

#[cfg(feature = "cuda")]
fn cuda(r: &mut Report, compile: bool) -> Gpu {
    use cudarc::driver::{result as drv, sys};
    use referdino_plugins::kernels::{driver_available, include_paths, nvrtc_version};
    let mut gpu = Gpu::default();
    if !driver_available() {
        r.push(
            "cuda-driver",
            Status::Missing,
            "libcuda.so is not present: no NVIDIA driver on this machine",
        );
    } else {
        let mut v = 0;
        // SAFETY: the library is present (checked above); writes one int.
        let version = unsafe { sys::cuDriverGetVersion(&mut v) }
            .result()
            .map(|_| format!("{}.{}", v / 1000, v % 1000 / 10))
            .unwrap_or_else(|_| "?".into());
        match drv::init().and_then(|_| drv::device::get_count()) {
            Ok(0) | Err(_) => r.push(
                "cuda-driver",
                Status::Missing,
                format!("driver {version}, but no usable GPU"),
            ),
            Ok(n) => {
                let mut gpus = Vec::new();
                for i in 0..n {
                    gpus.push(describe_gpu(i, &mut gpu));
                }
                r.push(
                    "cuda-driver",
                    Status::Ok,
                    format!("driver {version}; {}", gpus.join("; ")),
                );
            }
        }
    }
    match nvrtc_version() {
        Err(_) => r.push(
            "nvrtc",
            Status::Missing,
            "libnvrtc.so is not present (the device path compiles its kernels with it)",
        ),
        Ok((major, minor)) => {
            let fp16 = include_paths()
                .into_iter()
                .find(|p| Path::new(p).join("cuda_fp16.h").is_file());
            let headers = match &fp16 {
                Some(p) => format!("cuda_fp16.h in {p}"),
                None => "cuda_fp16.h not found (set REFERDINO_CUDA_INCLUDE)".into(),
            };
            if gpu.cc.is_some() && compile {
                match compile_kernels() {
                    Ok(what) => r.push(
                        "nvrtc",
                        Status::Ok,
                        format!("NVRTC {major}.{minor}, {headers}; {what}"),
                    ),
                    Err(e) => r.push(
                        "nvrtc",
                        Status::Error,
                        format!(
                            "NVRTC {major}.{minor}, {headers}; our kernels do not compile: {e}"
                        ),
                    ),
                }
            } else {
                r.push(
                    "nvrtc",
                    if fp16.is_some() {
                        Status::Ok
                    } else {
                        Status::Warn
                    },
                    format!("NVRTC {major}.{minor}, {headers}"),
                );
            }
        }
    }
    gpu
}

#[cfg(feature = "cuda")]
fn describe_gpu(i: i32, gpu: &mut Gpu) -> String {
    use cudarc::driver::{result as drv, sys::CUdevice_attribute as A};
    let Ok(dev) = drv::device::get(i) else {
        return format!("GPU {i}: not usable");
    };
    let attr = |a| {
        // SAFETY: `dev` is a valid device handle from `get`; `a` is a valid attribute.
        unsafe { drv::device::get_attribute(dev, a) }.unwrap_or(-1)
    };
    // SAFETY: `dev` is a valid device handle from `get`.
    let mem = unsafe { drv::device::total_mem(dev) }.unwrap_or(0);
    let name = drv::device::get_name(dev).unwrap_or_else(|_| "?".into());
    let cc = (
        attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR),
        attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR),
    );
    if i == 0 {
        gpu.cc = Some(cc);
    }
    let mut s = format!(
        "GPU {i}: {name}, sm_{}{}, {:.1} GiB",
        cc.0,
        cc.1,
        mem as f64 / (1u64 << 30) as f64
    );
    if attr(A::CU_DEVICE_ATTRIBUTE_INTEGRATED) == 1 {
        s.push_str(", integrated (shared memory: masks written in place)");
    }
    if attr(A::CU_DEVICE_ATTRIBUTE_HOST_REGISTER_SUPPORTED) != 1 {
        s.push_str(", cannot register host memory (the ring: use --host-path)");
    }
    s
}

/// Compiles and loads our kernels in device 0's primary context.
#[cfg(feature = "cuda")]
fn compile_kernels() -> Result<String, String> {
    let t0 = Instant::now();
    let ctx = cudarc::driver::CudaContext::new(0).map_err(|e| e.to_string())?;
    ctx.bind_to_thread().map_err(|e| e.to_string())?;
    let k =
        referdino_plugins::kernels::Kernels::for_current_context().map_err(|e| e.to_string())?;
    Ok(format!(
        "kernels compiled and loaded for {} in {:.1} s",
        k.arch(),
        t0.elapsed().as_secs_f64()
    ))
}

/// The TensorRT check; the exact library version when it loads.
#[cfg(feature = "tensorrt")]
fn tensorrt(r: &mut Report, plugins: Option<&Path>) -> Option<TrtVersion> {
    use crate::backend::tensorrt::{header_version_exact, library_version, library_version_exact};
    if library_version() == 0 {
        r.push(
            "tensorrt",
            Status::Missing,
            "built without the TensorRT shim (no TensorRT headers at build time)",
        );
        return None;
    }
    let lib = library_version_exact();
    let plugin = plugins
        .map(Path::to_path_buf)
        .or_else(crate::backend::plugin_search::find_plugin_library);
    match plugin {
        Some(p) if p.is_file() => r.push(
            "tensorrt",
            Status::Ok,
            format!(
                "TensorRT {lib} (built against {}); plugin library {}",
                header_version_exact(),
                p.display()
            ),
        ),
        _ => r.push(
            "tensorrt",
            Status::Error,
            format!(
                "TensorRT {lib}, but the plugin library libreferdino_plugins.so is not found (cargo build --release -p referdino-plugins, or --plugins PATH)"
            ),
        ),
    }
    Some(lib)
}

#[cfg(not(feature = "tensorrt"))]
fn tensorrt(r: &mut Report, _plugins: Option<&Path>) -> Option<TrtVersion> {
    r.push(
        "tensorrt",
        Status::Missing,
        "built without TensorRT (cargo build --features tensorrt on the board)",
    );
    None
}

#[cfg(feature = "ort")]
fn onnxruntime(r: &mut Report) -> bool {
    match crate::backend::ort::library_path() {
        Err(e) => {
            r.push("onnxruntime", Status::Missing, e.to_string());
            false
        }
        Ok(p) if !crate::backend::ort::ort_available() => {
            r.push(
                "onnxruntime",
                Status::Error,
                format!("{} does not load (see RUST_LOG=debug)", p.display()),
            );
            false
        }
        Ok(p) => {
            r.push("onnxruntime", Status::Ok, p.display().to_string());
            true
        }
    }
}

#[cfg(not(feature = "ort"))]
fn onnxruntime(r: &mut Report) -> bool {
    r.push(
        "onnxruntime",
        Status::Missing,
        "built without ONNX Runtime (feature ort)",
    );
    false
}

fn engines(r: &mut Report, dir: &Path, trt: Option<TrtVersion>, cc: Option<(i32, i32)>) {
    use crate::engines::plan_info::PlanInfo;
    use crate::graph::export::Manifest;
    let m = match Manifest::read(dir) {
        Ok(m) => m,
        Err(e) => return r.push("engines", Status::Error, e.to_string()),
    };
    let g = m.geometry;
    let mut detail = format!(
        "{}: {} {}x{}, text ≤ {}, window {}",
        dir.display(),
        m.backbone,
        g.width,
        g.height,
        g.max_text,
        g.window
    );
    let objects = crate::pipeline::engine_dir::has_object_plans(dir);
    let plans: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .chain(
            std::fs::read_dir(dir.join(crate::pipeline::engine_dir::OBJECTS_SUBDIR))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path()),
        )
        .filter(|p| p.extension().is_some_and(|e| e == "plan"))
        .collect();
    let listed_in = dir.join("manifest.json");
    if plans.is_empty() {
        let present: Vec<_> = m
            .engines
            .iter()
            .filter(|e| dir.join(&e.file).is_file())
            .collect();
        // Each present file must be the one the manifest lists (size and CRC-32).
        let bad: Vec<String> = present
            .iter()
            .filter_map(|e| {
                verify_file(&dir.join(&e.file), e.bytes, e.crc32.as_deref(), &listed_in)
                    .err()
                    .map(|err| err.to_string())
            })
            .collect();
        let status = if present.len() == m.engines.len() && bad.is_empty() {
            Status::Ok
        } else {
            Status::Error
        };
        detail.push_str(&format!(
            "; {} of {} ONNX engines present (the host path)",
            present.len(),
            m.engines.len()
        ));
        for b in &bad {
            detail.push_str(&format!("; {b}"));
        }
        return r.push("engines", status, detail);
    }
    let mut bad = Vec::new();
    for p in &plans {
        match PlanInfo::load_for(p) {
            Ok(Some(info)) => {
                if let (Some(v), Some(cc)) = (trt, cc) {
                    if let Err(e) = info.check_compatible(v, cc) {
                        bad.push(e.to_string());
                    }
                }
                // A whole-frame plan built from an ONNX file other than the one listed now.
                let listed = p
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .filter(|_| p.parent() == Some(dir))
                    .and_then(|stem| m.engines.iter().find(|e| e.name == stem))
                    .and_then(|e| e.crc32.as_deref());
                if let Err(e) = check_plan_source(p, info.onnx_crc32.as_deref(), listed) {
                    bad.push(e.to_string());
                }
            }
            Ok(None) => bad.push(format!("{}: no sidecar (.plan.json)", p.display())),
            Err(e) => bad.push(e.to_string()),
        }
    }
    detail.push_str(&format!(
        "; {} plan(s){}",
        plans.len(),
        if objects { ", with the object set" } else { "" }
    ));
    if trt.is_none() || cc.is_none() {
        detail.push_str("; plans cannot run here (no TensorRT or GPU)");
        return r.push("engines", Status::Warn, detail);
    }
    if bad.is_empty() {
        r.push("engines", Status::Ok, detail);
    } else {
        detail.push_str(&format!("; {}", bad.join("; ")));
        r.push("engines", Status::Error, detail);
    }
}

fn cameras(r: &mut Report) {
    let mut nodes: Vec<(u32, PathBuf)> = std::fs::read_dir("/dev")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_prefix("video")?
                .parse::<u32>()
                .ok()
                .map(|k| (k, e.path()))
        })
        .collect();
    nodes.sort();
    if nodes.is_empty() {
        let how = if cfg!(feature = "camera-v4l") {
            ""
        } else {
            " (and this build has no V4L2 capture: feature camera-v4l)"
        };
        return r.push(
            "cameras",
            Status::Missing,
            format!("no /dev/video* node{how}; gst:, raw:, files and ROS 2 topics still work"),
        );
    }
    let mut denied = false;
    let list: Vec<String> = nodes
        .iter()
        .map(|(k, p)| {
            let name = first_line(&format!("/sys/class/video4linux/video{k}/name"))
                .unwrap_or_else(|| "?".into());
            let open = std::fs::OpenOptions::new().read(true).write(true).open(p);
            match open {
                Ok(_) => format!("{} ({name}{}{})", p.display(), modes(p), stable_names(p)),
                Err(e) => {
                    denied = true;
                    format!("{} ({name}): {e}", p.display())
                }
            }
        })
        .collect();
    let mut detail = list.join(", ");
    if !cfg!(feature = "camera-v4l") {
        detail.push_str("; this build cannot capture from them (feature camera-v4l)");
    }
    if denied {
        detail.push_str("; add this user to group video (board/README.md)");
    }
    let status = if denied || !cfg!(feature = "camera-v4l") {
        Status::Warn
    } else {
        Status::Ok
    };
    r.push("cameras", status, detail);
}

/// The names udev gives `node` that survive re-plugging (`/dev/referdino/by-path/…` from our rule,
/// `/dev/v4l/by-id/…`, `/dev/v4l/by-path/…`): `; stable names: …`, or nothing. A `--source` with one of
/// them finds the same camera after a reboot or a re-plug, where `/dev/videoN` may change.
fn stable_names(node: &Path) -> String {
    stable_names_in(
        node,
        &[
            "/dev/referdino/by-path",
            "/dev/v4l/by-id",
            "/dev/v4l/by-path",
        ],
    )
}

/// [`stable_names`] over the links in `dirs`.
fn stable_names_in(node: &Path, dirs: &[&str]) -> String {
    let Ok(target) = std::fs::canonicalize(node) else {
        return String::new();
    };
    let mut names: Vec<String> = dirs
        .iter()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|l| std::fs::canonicalize(l).is_ok_and(|t| t == target))
        .map(|l| l.display().to_string())
        .collect();
    names.sort();
    if names.is_empty() {
        String::new()
    } else {
        format!("; stable names: {}", names.join(", "))
    }
}

/// What a V4L2 node offers that we can capture (feature `camera-v4l`): `; YUYV 640x480 @ 30 fps, …`,
/// at most 6 modes; nodes without a capture format (metadata nodes) say so.
#[cfg(feature = "camera-v4l")]
fn modes(node: &Path) -> String {
    use crate::camera::convert::PixelFormat;
    match crate::camera::v4l2::offered_modes(&node.to_string_lossy()) {
        Ok(m) => {
            let usable: Vec<String> = m
                .iter()
                .filter(|o| PixelFormat::from_fourcc(o.fourcc).is_some())
                .map(|o| o.to_string())
                .collect();
            match usable.len() {
                0 if m.is_empty() => "; no capture formats (not a camera node)".into(),
                0 => "; no format referdino converts (YUYV, MJPG, RGB3, BGR3)".into(),
                n if n > 6 => format!("; {}, … ({n} modes)", usable[..6].join(", ")),
                _ => format!("; {}", usable.join(", ")),
            }
        }
        Err(e) => format!("; {e}"),
    }
}

#[cfg(not(feature = "camera-v4l"))]
fn modes(_node: &Path) -> String {
    String::new()
}

fn gstreamer(r: &mut Report) {
    #[cfg(unix)]
    let launch = crate::camera::pipe::PipeOptions::default().gst_launch;
    #[cfg(not(unix))]
    let launch = PathBuf::from("gst-launch-1.0");
    let limit = Duration::from_secs(10);
    let Some(v) = run_for(&launch.to_string_lossy(), &["--version"], limit) else {
        return r.push(
            "gstreamer",
            Status::Missing,
            format!(
                "{} not found: gst: sources need it (apt install gstreamer1.0-tools gstreamer1.0-plugins-base)",
                launch.display()
            ),
        );
    };
    let version = v.lines().next().unwrap_or("").trim().to_string();
    let has = |e: &str| run_for("gst-inspect-1.0", &["--exists", e], limit).is_some();
    let missing: Vec<&str> = ["videoconvert", "videoscale", "fdsink"]
        .into_iter()
        .filter(|e| !has(e))
        .collect();
    let argus = ["nvarguscamerasrc", "nvvidconv"]
        .into_iter()
        .filter(|e| has(e))
        .collect::<Vec<_>>();
    let mut detail = version;
    if !argus.is_empty() {
        detail.push_str(&format!(
            "; Jetson elements: {} (CSI cameras through gst:)",
            argus.join(", ")
        ));
    }
    if missing.is_empty() {
        r.push("gstreamer", Status::Ok, detail);
    } else {
        detail.push_str(&format!(
            "; missing the elements gst: appends: {} (gstreamer1.0-plugins-base)",
            missing.join(", ")
        ));
        r.push("gstreamer", Status::Error, detail);
    }
}

/// Opens `spec` (no re-opening: a failure is reported, not retried) and reads frames for up to 3 s or
/// 30 frames.
fn source(r: &mut Report, spec: &str) {
    let opts = crate::camera::SourceOptions {
        reconnect: false,
        // As `run` paces it: the synthetic pattern at its rate, files as fast as they decode.
        realtime: crate::camera::is_synthetic(spec),
        ..Default::default()
    };
    let t0 = Instant::now();
    let mut src = match crate::camera::open_source(spec, &opts) {
        Ok(s) => s,
        Err(e) => return r.push("source", Status::Error, format!("{spec}: {e}")),
    };
    let opened = t0.elapsed();
    let (mut frames, mut size, mut first, mut last) = (0u32, (0, 0), None, None);
    let mut end = None;
    while frames < 30 && t0.elapsed() < Duration::from_secs(3) {
        match src.next_frame() {
            Ok(Some(f)) => {
                frames += 1;
                size = (f.width, f.height);
                let now = Instant::now();
                first.get_or_insert(now);
                last = Some(now);
            }
            Ok(None) => {
                end = Some("ended".to_string());
                break;
            }
            Err(e) => {
                end = Some(e.to_string());
                break;
            }
        }
    }
    let rate = match (first, last) {
        (Some(a), Some(b)) if frames > 1 && b > a => {
            format!(
                ", {:.1} frames/s delivered",
                (frames - 1) as f64 / (b - a).as_secs_f64()
            )
        }
        _ => String::new(),
    };
    let mut detail = format!(
        "{spec}: {}; opened in {:.2} s, {frames} frame(s) of {}x{}{rate}",
        src.describe(),
        opened.as_secs_f64(),
        size.0,
        size.1
    );
    if let Some(e) = &end {
        detail.push_str(&format!(" then {e}"));
    }
    let status = if frames == 0 {
        Status::Error
    } else {
        Status::Ok
    };
    r.push("source", status, detail);
}

fn shared_memory(r: &mut Report) {
    let dir = Path::new("/dev/shm");
    if !dir.is_dir() {
        return r.push(
            "mask-ring",
            Status::Warn,
            "/dev/shm is absent: give --ring a path on a tmpfs",
        );
    }
    let probe = dir.join(format!("referdino-doctor-{}", std::process::id()));
    match std::fs::write(&probe, b"x") {
        Ok(()) => {
            let _ = std::fs::remove_file(&probe);
            r.push(
                "mask-ring",
                Status::Ok,
                "/dev/shm is writable (rings named without a path live there)",
            );
        }
        Err(e) => r.push(
            "mask-ring",
            Status::Error,
            format!("/dev/shm is not writable: {e}"),
        ),
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    /// Links that resolve to the node are its stable names; others are not.
    #[test]
    fn the_device_path_is_named_only_when_its_checks_pass() {
        let check = |name, status| Check {
            name,
            status,
            detail: String::new(),
        };
        let good = [
            check("cuda-driver", Status::Ok),
            check("nvrtc", Status::Ok),
            check("tensorrt", Status::Ok),
            check("cameras", Status::Error),
        ];
        assert!(run_path(&good, true, true).starts_with("the device-resident path"));
        assert!(run_path(&good, false, true).contains("ONNX Runtime"));
        assert!(run_path(&good, false, false).contains("tract"));
        // The plugin library missing, or our kernels not compiling: the host path, saying why.
        for broken in ["tensorrt", "nvrtc"] {
            let checks: Vec<Check> = good
                .iter()
                .map(|c| {
                    let st = if c.name == broken {
                        Status::Error
                    } else {
                        c.status
                    };
                    check(c.name, st)
                })
                .collect();
            let p = run_path(&checks, true, true);
            assert!(p.starts_with("the host path") && p.contains(broken), "{p}");
        }
    }

    #[test]
    fn stable_names_are_the_links_to_the_node() {
        let d = tempfile::tempdir().unwrap();
        let (node, other) = (d.path().join("video3"), d.path().join("video4"));
        std::fs::write(&node, b"").unwrap();
        std::fs::write(&other, b"").unwrap();
        let by_id = d.path().join("by-id");
        std::fs::create_dir(&by_id).unwrap();
        std::os::unix::fs::symlink(&node, by_id.join("usb-cam-video-index0")).unwrap();
        std::os::unix::fs::symlink(&other, by_id.join("usb-other-video-index0")).unwrap();
        let dirs = [by_id.to_str().unwrap(), "/no/such/dir"];
        let got = stable_names_in(&node, &dirs);
        assert!(got.ends_with("/by-id/usb-cam-video-index0"), "{got}");
        assert!(!got.contains("other"), "{got}");
        assert_eq!(stable_names_in(&d.path().join("video9"), &dirs), "");
    }

    #[test]
    fn int8_instructions_name_what_cpuinfo_lists() {
        use super::int8_instructions;
        let x86 =
            "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni amx_int8 amx_tile\n";
        assert_eq!(
            int8_instructions(x86),
            "int8 products (--int8) on AMX, AVX-512 VNNI"
        );
        let orin = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\n";
        assert_eq!(
            int8_instructions(orin),
            "int8 products (--int8) on dot product"
        );
        assert_eq!(
            int8_instructions("flags\t: fpu sse2 avx2 fma\n"),
            "int8 products (--int8) without dot-product instructions"
        );
    }
}
