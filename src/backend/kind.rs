//! Which backend runs the engines, chosen by name (`--backend`), per engine when asked, and the host
//! backends it stands for.
//!
//! `--backend` takes one backend for all four engines (`cpu`, `ort`, `tensorrt`, `auto`) or a mix,
//! one `ENGINE=BACKEND` per engine separated by commas (`text=ort,frame=ort,temporal=cpu,head=cpu`;
//! engines left out take `auto`'s choice). The engines exchange host tensors whatever runs them, so a
//! mix costs no conversion between engines.
//!
//! **`auto`** is a fixed per-engine rule, [`AUTO_PLAN`]: ONNX Runtime (with our kernels as custom
//! operators) for every engine, measured with `referdino bench --backend all` on a quiet machine
//! (benches/README.md, "Backend per engine"); for INT8 engines on a CPU where tract's integer
//! products run on AMX, [`AUTO_PLAN_INT8_AMX`] (tract for the frame and temporal engines), on AVX-512
//! VNNI alone [`AUTO_PLAN_INT8_VNNI`] (tract for all four). When ONNX
//! Runtime's library does not load, tract runs every engine. Loading a set logs one line naming each
//! engine's backend.

use crate::backend::cpu::CpuBackend;
use crate::backend::{Engine, HostBackend};
use crate::error::{Error, Result};
use std::fmt;
use std::path::Path;

/// The four engines a mix names, in the order of [`EngineMix`] and [`EnginePlan`].
pub const ENGINES: [&str; 4] = ["text", "frame", "temporal", "head"];

/// A host backend for one engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HostKind {
    /// tract.
    Cpu,
    /// ONNX Runtime.
    Ort,
}

impl HostKind {
    /// `cpu` or `ort`.
    pub fn name(self) -> &'static str {
        match self {
            HostKind::Cpu => "cpu",
            HostKind::Ort => "ort",
        }
    }
}

/// What a mix asks for one engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineChoice {
    /// tract.
    Cpu,
    /// ONNX Runtime (an error when its library does not load).
    Ort,
    /// [`auto_plan`]'s backend for the engine when ONNX Runtime loads, else tract.
    Auto,
}

impl EngineChoice {
    fn parse(engine: &str, s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" | "tract" => Ok(EngineChoice::Cpu),
            "ort" | "onnxruntime" => Ok(EngineChoice::Ort),
            "auto" => Ok(EngineChoice::Auto),
            "tensorrt" | "trt" => Err(Error::Config(format!(
                "--backend {engine}=tensorrt: TensorRT runs all four engines from prebuilt plans and \
                 does not mix with the host backends; use `--backend tensorrt`"
            ))),
            "" => Err(Error::Config(format!(
                "--backend {engine}=: no backend named for the {engine} engine (expected `cpu`, `ort` or `auto`)"
            ))),
            other => Err(Error::Config(format!(
                "--backend {engine}={other}: unknown backend `{other}` for the {engine} engine \
                 (expected `cpu`, `ort` or `auto`)"
            ))),
        }
    }

    fn name(self) -> &'static str {
        match self {
            EngineChoice::Cpu => "cpu",
            EngineChoice::Ort => "ort",
            EngineChoice::Auto => "auto",
        }
    }
}

/// A per-engine mix as `--backend` names it: one choice per engine of [`ENGINES`], in that order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EngineMix(pub [EngineChoice; 4]);

impl EngineMix {
    /// Parses `ENGINE=BACKEND[,ENGINE=BACKEND...]` (engines of [`ENGINES`], backends `cpu`, `ort`,
    /// `auto`); engines left out take `auto`. An unknown engine or backend, an engine named twice or an
    /// item without `=` is an error naming it.
    pub fn parse(s: &str) -> Result<Self> {
        let mut picks: [Option<EngineChoice>; 4] = [None; 4];
        for item in s.split(',').map(str::trim) {
            let Some((engine, backend)) = item.split_once('=') else {
                return Err(Error::Config(format!(
                    "--backend `{s}`: `{item}` is not ENGINE=BACKEND (a mix names each engine, e.g. \
                     `text=ort,frame=ort,temporal=cpu,head=cpu`)"
                )));
            };
            let engine = engine.trim().to_ascii_lowercase();
            let Some(i) = ENGINES.iter().position(|e| *e == engine) else {
                return Err(Error::Config(format!(
                    "--backend `{s}`: unknown engine `{engine}` (expected `text`, `frame`, `temporal` or `head`)"
                )));
            };
            if picks[i].is_some() {
                return Err(Error::Config(format!(
                    "--backend `{s}`: the {engine} engine is named twice"
                )));
            }
            picks[i] = Some(EngineChoice::parse(&engine, backend.trim())?);
        }
        Ok(EngineMix(picks.map(|p| p.unwrap_or(EngineChoice::Auto))))
    }

    /// The choice for `engine` (`image` and `cross`, the halves of the split frame engine, follow
    /// `frame`); `None` for another name.
    pub fn of(&self, engine: &str) -> Option<EngineChoice> {
        engine_index(engine).map(|i| self.0[i])
    }
}

impl fmt::Display for EngineMix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (e, c)) in ENGINES.iter().zip(self.0).enumerate() {
            let sep = if i == 0 { "" } else { "," };
            write!(f, "{sep}{e}={}", c.name())?;
        }
        Ok(())
    }
}

/// Index in [`ENGINES`] of an engine name; `image` and `cross` (the split frame engine of the
/// multi-object runtime) count as `frame`.
pub fn engine_index(engine: &str) -> Option<usize> {
    match engine {
        "image" | "cross" => Some(1),
        e => ENGINES.iter().position(|x| *x == e),
    }
}

/// The backend that runs each engine, resolved (ONNX Runtime known to load wherever it appears).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnginePlan(pub [HostKind; 4]);

/// `auto`'s rule when ONNX Runtime loads: ONNX Runtime for every engine. Chosen when it ran each
/// engine 1.0–1.8× faster than tract (benches/README.md, "Backend per engine": Swin-T 360×640, 2
/// threads). Our own kernels have since closed that gap on x86-64 (session 26, AVX-512 Xeon: tract
/// takes 0.94–0.97× ONNX Runtime's time on the frame engine, 0.98–0.99× on the head, 1.04–1.07× on
/// the text engine): margins within the machine's drift, and on CPUs without our x86 products
/// (Jetson's Arm cores) tract runs its own, so the rule stays ONNX Runtime; a mix overrides it.
pub const AUTO_PLAN: EnginePlan =
    EnginePlan([HostKind::Ort, HostKind::Ort, HostKind::Ort, HostKind::Ort]);

/// `auto`'s rule for INT8 engines when ONNX Runtime loads and tract's integer products run on AMX
/// ([`crate::ops::qlinear::QKernel::Amx`]): tract for the frame and temporal engines, ONNX Runtime
/// for the text and head engines. Measured side by side (benches/README.md, session 30: Swin-T
/// 360×640, 2 threads, AVX-512 Xeon with AMX): frame 395.5 ms on tract vs 501.6 on ONNX Runtime,
/// temporal 16.1 vs 23.6, text 16.1 vs 11.7, head 23.2 vs 22.5 (before tract's attention products
/// ran in integers, session 31: `referdino bench --backend all --int8-self` on such a machine says
/// whether text and head have moved too). On Arm it is not measured, so there the rule stays
/// [`AUTO_PLAN`].
pub const AUTO_PLAN_INT8_AMX: EnginePlan =
    EnginePlan([HostKind::Ort, HostKind::Cpu, HostKind::Cpu, HostKind::Ort]);

/// `auto`'s rule for INT8 engines when ONNX Runtime loads and tract's integer products run on
/// AVX-512 VNNI without AMX ([`crate::ops::qlinear::QKernel::Vnni512`]): tract for every engine.
/// Measured side by side (benches/README.md, session 31: Swin-T 360×640, 2 threads, AMD EPYC
/// family 25 model 17): text 6.4 ms on tract vs 9.3 on ONNX Runtime, frame 461.9 vs 494.9,
/// temporal 18.8 vs 29.1, head 16.8 vs 18.5.
pub const AUTO_PLAN_INT8_VNNI: EnginePlan =
    EnginePlan([HostKind::Cpu, HostKind::Cpu, HostKind::Cpu, HostKind::Cpu]);

/// What the engines a backend choice loads are: their precision decides `auto`'s rule.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// FP32 engines.
    #[default]
    Fp32,
    /// Host INT8 engines (`--int8`, `export --precision int8`).
    Int8,
}

impl Precision {
    /// INT8 when `int8`, else FP32.
    pub fn int8_if(int8: bool) -> Self {
        if int8 {
            Precision::Int8
        } else {
            Precision::Fp32
        }
    }
}

/// `auto`'s per-engine rule for engines of `precision` on this CPU (ONNX Runtime loading).
pub fn auto_plan(precision: Precision) -> EnginePlan {
    use crate::ops::qlinear::QKernel;
    match (precision, QKernel::process()) {
        (Precision::Int8, QKernel::Amx) => AUTO_PLAN_INT8_AMX,
        (Precision::Int8, QKernel::Vnni512) => AUTO_PLAN_INT8_VNNI,
        _ => AUTO_PLAN,
    }
}

impl EnginePlan {
    /// Every engine on `kind`.
    pub fn uniform(kind: HostKind) -> Self {
        EnginePlan([kind; 4])
    }

    /// The backend of `engine` (`image` and `cross` follow `frame`); `None` for another name.
    pub fn of(&self, engine: &str) -> Option<HostKind> {
        engine_index(engine).map(|i| self.0[i])
    }

    /// Whether any engine runs on `kind`.
    pub fn uses(&self, kind: HostKind) -> bool {
        self.0.contains(&kind)
    }
}

impl fmt::Display for EnginePlan {
    /// `text=ort frame=ort temporal=cpu head=cpu`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (e, k)) in ENGINES.iter().zip(self.0).enumerate() {
            let sep = if i == 0 { "" } else { " " };
            write!(f, "{sep}{e}={}", k.name())?;
        }
        Ok(())
    }
}

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
    /// Per engine, [`auto_plan`]'s rule when ONNX Runtime's library loads, else tract for every
    /// engine.
    Auto,
    /// A backend per engine (`text=ort,frame=ort,temporal=cpu,head=cpu`).
    Mix(EngineMix),
}

impl fmt::Display for BackendKind {
    /// The name [`BackendKind::parse`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BackendKind::Mix(m) => write!(f, "{m}"),
            other => f.write_str(other.name()),
        }
    }
}

impl BackendKind {
    /// Parses `cpu` (alias `tract`) / `ort` (alias `onnxruntime`) / `tensorrt` (alias `trt`) / `auto`,
    /// or a per-engine mix (see [`EngineMix::parse`]).
    pub fn parse(s: &str) -> Result<Self> {
        if s.contains('=') {
            return Ok(BackendKind::Mix(EngineMix::parse(s)?));
        }
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" | "tract" => Ok(BackendKind::Cpu),
            "ort" | "onnxruntime" => Ok(BackendKind::Ort),
            "tensorrt" | "trt" => Ok(BackendKind::TensorRt),
            "auto" => Ok(BackendKind::Auto),
            other => Err(Error::Config(format!(
                "unknown backend `{other}`: expected `cpu`, `ort`, `tensorrt` or `auto`, or a \
                 per-engine mix such as `text=ort,frame=ort,temporal=cpu,head=cpu`"
            ))),
        }
    }

    /// The name `parse` reads back (`mix` for a mix; its full form is the [`fmt::Display`] one).
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Cpu => "cpu",
            BackendKind::Ort => "ort",
            BackendKind::TensorRt => "tensorrt",
            BackendKind::Auto => "auto",
            BackendKind::Mix(_) => "mix",
        }
    }

    /// The backend of each engine: ONNX Runtime's library is loaded when any engine may run on it.
    /// `ort` (or a mix naming `ort`) fails with the reason when the library does not load; `auto` (and
    /// `auto` engines of a mix) fall back to tract. Returns the plan and, when ONNX Runtime was wanted
    /// but is unavailable, why.
    pub fn plan(self) -> Result<(EnginePlan, Option<String>)> {
        self.plan_for(Precision::Fp32)
    }

    /// [`BackendKind::plan`] for engines of `precision` (`auto`'s rule depends on it: [`auto_plan`]).
    pub fn plan_for(self, precision: Precision) -> Result<(EnginePlan, Option<String>)> {
        let mix = match self {
            BackendKind::Cpu => return Ok((EnginePlan::uniform(HostKind::Cpu), None)),
            BackendKind::TensorRt => return Err(Error::Config(
                "the TensorRT backend runs prebuilt plans (an engine directory), not host engines"
                    .into(),
            )),
            BackendKind::Ort => EngineMix([EngineChoice::Ort; 4]),
            BackendKind::Auto => EngineMix([EngineChoice::Auto; 4]),
            BackendKind::Mix(m) => m,
        };
        let ort_err = match mix.0.iter().any(|c| *c != EngineChoice::Cpu) {
            true => ort_loads().err(),
            false => None,
        };
        if let Some(e) = ort_err {
            if let Some(i) = mix.0.iter().position(|c| *c == EngineChoice::Ort) {
                return Err(match self {
                    BackendKind::Mix(_) => Error::Backend(format!(
                        "--backend {self}: the {} engine asks for ONNX Runtime: {}",
                        ENGINES[i],
                        message(&e)
                    )),
                    _ => e,
                });
            }
            let plan = EnginePlan::uniform(HostKind::Cpu);
            return Ok((plan, Some(message(&e))));
        }
        let auto = auto_plan(precision);
        let mut plan = [HostKind::Cpu; 4];
        for (i, c) in mix.0.iter().enumerate() {
            plan[i] = match c {
                EngineChoice::Cpu => HostKind::Cpu,
                EngineChoice::Ort => HostKind::Ort,
                EngineChoice::Auto => auto.0[i],
            };
        }
        Ok((EnginePlan(plan), None))
    }

    /// The host backend of every engine for `cpu`, `ort`, `auto` or a mix, engines on `threads` threads
    /// (`None` or 0: every available core). Logs one line naming the backend of each engine.
    pub fn host_backends(self, threads: Option<usize>) -> Result<HostBackends> {
        self.host_backends_for(threads, Precision::Fp32)
    }

    /// [`BackendKind::host_backends`] for engines of `precision` (`auto`'s rule depends on it).
    pub fn host_backends_for(
        self,
        threads: Option<usize>,
        precision: Precision,
    ) -> Result<HostBackends> {
        let threads = threads.unwrap_or(0);
        let (plan, unavailable) = self.plan_for(precision)?;
        let cpu = match plan.uses(HostKind::Cpu) {
            true => Some(HostBackend::Cpu(CpuBackend::with_threads(threads)?)),
            false => None,
        };
        let ort = match plan.uses(HostKind::Ort) {
            true => Some(ort_backend(threads)?),
            false => None,
        };
        let b = HostBackends { plan, cpu, ort };
        let mut why = match self {
            BackendKind::Auto if auto_plan(precision) == AUTO_PLAN_INT8_AMX => {
                " (auto: per-engine rule for INT8 engines on AMX, benches/README.md)".to_string()
            }
            BackendKind::Auto if auto_plan(precision) == AUTO_PLAN_INT8_VNNI => {
                " (auto: per-engine rule for INT8 engines on AVX-512 VNNI, benches/README.md)"
                    .to_string()
            }
            BackendKind::Auto => " (auto: per-engine rule of benches/README.md)".to_string(),
            BackendKind::Mix(m) => format!(" (--backend {m})"),
            _ => String::new(),
        };
        if let Some(e) = unavailable {
            why += &format!("; ONNX Runtime unavailable: {e}");
        }
        if let Some(o) = &b.ort {
            why += &library(o);
        }
        log::info!("backend: {plan}, {} threads{why}", b.threads());
        Ok(b)
    }

    /// The one host backend for `cpu` or `ort`, its engines on `threads` threads (`None` or 0: every
    /// available core); `ort` fails with the reason when ONNX Runtime is missing. Logs one line saying
    /// which backend runs. `auto` and mixes choose per engine: use [`BackendKind::host_backends`].
    pub fn host_backend(self, threads: Option<usize>) -> Result<HostBackend> {
        let threads = threads.unwrap_or(0);
        match self {
            BackendKind::Cpu => {
                let b = CpuBackend::with_threads(threads)?;
                log::info!("backend: cpu (tract), {} threads", b.threads());
                Ok(HostBackend::Cpu(b))
            }
            BackendKind::Ort => {
                let b = ort_backend(threads)?;
                log::info!("backend: ort, {} threads{}", b.threads(), library(&b));
                Ok(b)
            }
            BackendKind::TensorRt => Err(Error::Config(
                "the TensorRT backend runs prebuilt plans (an engine directory), not host engines"
                    .into(),
            )),
            BackendKind::Auto | BackendKind::Mix(_) => Err(Error::Config(format!(
                "--backend {self} chooses a backend per engine; load the engines through \
                 BackendKind::host_backends"
            ))),
        }
    }
}

/// Ok when ONNX Runtime's library loads (loading it), else why not.
fn ort_loads() -> Result<()> {
    #[cfg(feature = "ort")]
    {
        let path = crate::backend::ort::library_path()?;
        crate::backend::ort::OrtBackend::from_library(&path, 1).map(|_| ())
    }
    #[cfg(not(feature = "ort"))]
    {
        Err(Error::Config(
            "this binary was built without ONNX Runtime support (cargo feature `ort`)".into(),
        ))
    }
}

/// `; ONNX Runtime PATH` for an ONNX Runtime backend, empty otherwise (for the load log line).
fn library(b: &HostBackend) -> String {
    match b {
        #[cfg(feature = "ort")]
        HostBackend::Ort(o) => format!("; ONNX Runtime {}", o.library().display()),
        HostBackend::Cpu(_) => String::new(),
    }
}

/// An error's message without its kind prefix.
fn message(e: &Error) -> String {
    match e {
        Error::Backend(m) | Error::Config(m) => m.clone(),
        other => other.to_string(),
    }
}

#[cfg(feature = "ort")]
fn ort_backend(threads: usize) -> Result<HostBackend> {
    Ok(HostBackend::Ort(crate::backend::ort::OrtBackend::new(
        threads,
    )?))
}

#[cfg(not(feature = "ort"))]
fn ort_backend(_threads: usize) -> Result<HostBackend> {
    Err(Error::Config(
        "this binary was built without ONNX Runtime support (cargo feature `ort`); use `--backend cpu`"
            .into(),
    ))
}

/// The host backend of each engine ([`BackendKind::host_backends`]): at most one tract backend and one
/// ONNX Runtime backend, shared by the engines the plan gives them.
#[derive(Clone, Debug)]
pub struct HostBackends {
    plan: EnginePlan,
    cpu: Option<HostBackend>,
    ort: Option<HostBackend>,
}

impl HostBackends {
    /// Every engine on `backend`.
    pub fn uniform(backend: HostBackend) -> Self {
        match backend {
            HostBackend::Cpu(_) => HostBackends {
                plan: EnginePlan::uniform(HostKind::Cpu),
                cpu: Some(backend),
                ort: None,
            },
            #[cfg(feature = "ort")]
            HostBackend::Ort(_) => HostBackends {
                plan: EnginePlan::uniform(HostKind::Ort),
                cpu: None,
                ort: Some(backend),
            },
        }
    }

    /// The backend of each engine.
    pub fn plan(&self) -> EnginePlan {
        self.plan
    }

    /// Logs, for INT8 engines, how the engines that tract runs compute their products: on our
    /// integer kernel where this CPU has one ([`crate::ops::qlinear::fast_kernel`]: AMX, AVX-512
    /// VNNI or the Arm dot product), otherwise as the Q/DQ pairs in float (the values of the
    /// integer products, slower than the FP32 engines), which ONNX Runtime runs as integer products.
    pub fn warn_int8_on_tract(&self) {
        let on_tract: Vec<&str> = ENGINES
            .iter()
            .copied()
            .filter(|e| self.plan.of(e) == Some(HostKind::Cpu))
            .collect();
        if on_tract.is_empty() {
            return;
        }
        let integer = match &self.cpu {
            Some(HostBackend::Cpu(b)) => b.integer_products(),
            _ => false,
        };
        if integer {
            log::info!(
                "INT8 engines on tract ({}): products by a weight on the {} integer kernel",
                on_tract.join(", "),
                crate::ops::qlinear::QKernel::process().name()
            );
        } else {
            log::warn!(
                "INT8 engines on tract ({}): this CPU has no integer kernel of ours (AMX, AVX-512 \
                 VNNI or the Arm dot product), so tract computes the Q/DQ pairs in float and these \
                 run slower than FP32; ONNX Runtime runs them as integer products (--backend ort, or install ONNX Runtime \
                 for auto)",
                on_tract.join(", ")
            );
        }
    }

    /// Threads each engine runs on (the same on both backends).
    pub fn threads(&self) -> usize {
        self.cpu
            .as_ref()
            .or(self.ort.as_ref())
            .map_or(1, HostBackend::threads)
    }

    /// The backend that runs `engine` (`text`, `frame`, `temporal`, `head`; `image` and `cross`, the
    /// split frame engine, follow `frame`).
    pub fn for_engine(&self, engine: &str) -> Result<&HostBackend> {
        let kind = self.plan.of(engine).ok_or_else(|| {
            Error::Config(format!(
                "engine `{engine}` is none of text, frame (image, cross), temporal and head: no backend chosen for it"
            ))
        })?;
        let b = match kind {
            HostKind::Cpu => self.cpu.as_ref(),
            HostKind::Ort => self.ort.as_ref(),
        };
        b.ok_or_else(|| {
            Error::Backend(format!(
                "engine {engine}: its backend ({}) was not loaded",
                kind.name()
            ))
        })
    }

    /// The same backends for loading engines while others run (a background export):
    /// [`HostBackend::loading_beside_runs`].
    pub fn loading_beside_runs(&self) -> Self {
        HostBackends {
            plan: self.plan,
            cpu: self.cpu.clone().map(HostBackend::loading_beside_runs),
            ort: self.ort.clone().map(HostBackend::loading_beside_runs),
        }
    }

    /// Loads engine `name` from ONNX bytes on its backend.
    pub fn load_bytes(&self, name: &str, onnx: &[u8]) -> Result<Box<dyn Engine>> {
        self.for_engine(name)?.load_bytes(name, onnx)
    }

    /// Loads the file of engine `name` on its backend.
    pub fn load(&self, name: &str, path: &Path) -> Result<Box<dyn Engine>> {
        self.for_engine(name)?.load(path)
    }
}
