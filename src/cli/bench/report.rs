//! The report of `referdino bench` (serialised as JSON with `--json`): per engine, per backend and
//! per stage, and the figures derived from the timings (latency statistics, the per-frame total, the
//! faster backend per engine).

use crate::backend::cpu::OpTime;
use crate::backend::kind::{EnginePlan, HostKind};
use crate::graph::engines::{names, Geometry};
use serde::Serialize;

use super::ENGINES;

/// Latency statistics of one engine, milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Median.
    pub median_ms: f64,
    /// Fastest run.
    pub min_ms: f64,
    /// 90th percentile (nearest rank).
    pub p90_ms: f64,
    /// Mean.
    pub mean_ms: f64,
    /// Every timed run, in order.
    pub runs_ms: Vec<f64>,
}

impl Latency {
    pub(super) fn of(runs_ms: Vec<f64>) -> Self {
        let mut s = runs_ms.clone();
        s.sort_by(f64::total_cmp);
        let n = s.len().max(1);
        let median_ms = super::super::bench_multi::median_ms(&s);
        let p90_ms = s
            .get(((0.9 * n as f64).ceil() as usize).clamp(1, n) - 1)
            .copied()
            .unwrap_or(0.0);
        Latency {
            median_ms,
            min_ms: s.first().copied().unwrap_or(0.0),
            p90_ms,
            mean_ms: s.iter().sum::<f64>() / n as f64,
            runs_ms,
        }
    }
}

/// Export figures of one engine file.
#[derive(Debug, Clone, Serialize)]
pub struct ExportedEngine {
    /// Engine name.
    pub name: String,
    /// ONNX file size in bytes.
    pub bytes: u64,
    /// ONNX node count.
    pub nodes: usize,
}

/// Figures of one timed engine.
#[derive(Debug, Clone, Serialize)]
pub struct EngineBench {
    /// Engine name.
    pub name: String,
    /// Backend that ran it: `cpu` (tract) or `ort` (ONNX Runtime).
    pub backend: String,
    /// Parse + type + optimise + plan time on the CPU backend, seconds.
    pub load_seconds: f64,
    /// Process peak RSS (VmHWM) right after loading it, MiB.
    pub peak_rss_mib_after_load: f64,
    /// Latency over the timed runs.
    pub latency: Latency,
    /// Inputs that had no upstream value and were filled synthetically.
    pub synthetic_inputs: Vec<String>,
    /// Slowest op types of one profiled run (`--profile`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<Vec<OpTime>>,
}

/// One GMAC row: ours next to the budget in docs/model.md ("Compute budget").
#[derive(Debug, Clone, Serialize)]
pub struct GmacRow {
    /// Stage label (a row of docs/model.md's compute budget).
    pub stage: String,
    /// Our multiply-accumulates, GMAC (all engines of one frame, text included).
    pub gmac: f64,
    /// Our parameters by checkpoint key, millions.
    pub mparams: f64,
    /// Spec §8.2 GMAC (Swin-T 360×640, L = 11), when comparable.
    pub spec_gmac: Option<f64>,
    /// Spec §8.2 parameters, millions.
    pub spec_mparams: Option<f64>,
}

/// The per-frame total.
#[derive(Debug, Clone, Serialize)]
pub struct PerFrame {
    /// Frame engine median, ms.
    pub frame_ms: f64,
    /// Temporal engine median, ms (counted once per frame, as the streaming runtime runs it).
    pub temporal_ms: f64,
    /// Head engine median, ms.
    pub head_ms: f64,
    /// Text engine median, ms (once per prompt).
    pub text_ms: f64,
    /// Frames the text time is amortised over (the temporal window).
    pub text_amortised_over: usize,
    /// frame + temporal + head + text / window.
    pub total_ms: f64,
    /// A one-frame clip: text + frame + temporal + head, each once (how the official 1-frame figure
    /// was taken).
    pub single_frame_clip_ms: f64,
}

/// The official code's figures from a harness JSON of this machine, and our ratios.
#[derive(Debug, Clone, Serialize)]
pub struct OfficialCompare {
    /// The file read.
    pub file: String,
    /// CPU model stamped in the file (equal to this machine's, or the file is refused).
    pub cpu_model: String,
    /// PyTorch version of the official run.
    pub torch: String,
    /// Threads of the official run.
    pub threads: usize,
    /// Frames per official call of each timed clip, and its median ms per frame.
    pub clips: Vec<(usize, f64)>,
    /// Official one-frame clip (whole `infer` call), median ms, when a T = 1 run is in the file.
    pub single_frame_clip_ms: Option<f64>,
    /// Official text stages (BERT + feat_map), median ms of the one-frame clip.
    pub text_ms: Option<f64>,
    /// Official frame-engine stages (backbone + input projection + transformer + FPN), median ms of the
    /// one-frame clip.
    pub frame_ms: Option<f64>,
    /// Official peak RSS during its runs, MiB.
    pub peak_rss_mib: Option<f64>,
    /// Per backend: official / ours for the one-frame clip, the text and the frame stages (> 1: ours
    /// faster).
    pub ratios: Vec<OfficialRatio>,
}

/// official / ours for one of our backends.
#[derive(Debug, Clone, Serialize)]
pub struct OfficialRatio {
    /// Our backend and its export (`cpu native`, `ort native`, `ort decomposed`).
    pub backend: String,
    /// One-frame clip.
    pub single_frame_clip: Option<f64>,
    /// Text engine vs BERT + feat_map.
    pub text: Option<f64>,
    /// Frame engine vs backbone + input projection + transformer + FPN.
    pub frame: Option<f64>,
}

/// The timed engines of one backend.
#[derive(Debug, Clone, Serialize)]
pub struct BackendBench {
    /// `cpu` (tract), `ort` (ONNX Runtime), `auto` (each engine on the backend `--backend auto`
    /// gives it) or a per-engine mix as `--backend` named it.
    pub backend: String,
    /// Threads per engine.
    pub threads: usize,
    /// Export the engines came from: `native` (our custom ops) or `decomposed` (standard ONNX).
    pub export: String,
    /// Backend of each engine (`text=ort frame=ort temporal=cpu head=cpu`).
    pub plan: String,
    /// The timed engines, in run order.
    pub engines: Vec<EngineBench>,
    /// Per-frame total (only when frame, temporal and head were all timed).
    pub per_frame: Option<PerFrame>,
    /// Resident memory this backend added by loading its four engines and running them once, MiB
    /// (VmRSS after minus before; the process peak covers every backend of the run).
    pub rss_added_mib: f64,
}

/// The faster pure backend of one engine (native export), from a run that timed both.
#[derive(Debug, Clone, Serialize)]
pub struct FastestEngine {
    /// Engine name.
    pub engine: String,
    /// `cpu` (tract) or `ort` (ONNX Runtime): the lower median.
    pub backend: String,
    /// The other backend's median over this one's (≥ 1).
    pub speedup: f64,
    /// Whether `--backend auto` runs the engine on this backend (when ONNX Runtime loads).
    pub auto_agrees: bool,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// `--config` as given.
    pub config: String,
    /// Backbone of the configuration.
    pub backbone: String,
    /// Static sizes.
    pub geometry: Geometry,
    /// Threads per engine.
    pub threads: usize,
    /// Whether tract's matrix products ran on one thread (`--single-thread-matmul`).
    pub single_thread_matmul: bool,
    /// Whether softmaxes ran on tract's own operator (`--tract-softmax`).
    pub tract_softmax: bool,
    /// Whether layer normalisations ran as tract's decomposition (`--tract-layer-norm`).
    pub tract_layer_norm: bool,
    /// Whether matrix products by a weight ran on tract's own kernels (`--tract-matmul`).
    pub tract_matmul: bool,
    /// Whether broadcasting additions ran on tract's own operator (`--tract-add`).
    pub tract_add: bool,
    /// Whether sines, cosines and GELUs ran on tract's own operators (`--tract-unary`).
    pub tract_unary: bool,
    /// Whether the CPU backend ran without its buffer pool (`--no-pool`).
    pub no_pool: bool,
    /// Whether transposes ran as tract's own copies (`--tract-transpose`).
    pub tract_transpose: bool,
    /// Whether the CPU backend kept tract's evaluation order (`--tract-order`).
    pub tract_order: bool,
    /// Whether the profiles are grouped by op, input shape and parameters (`--profile-shapes`).
    pub profile_shapes: bool,
    /// Cores available to this process.
    pub available_cores: usize,
    /// Untimed runs per engine.
    pub warmup: usize,
    /// Timed runs per engine.
    pub iters: usize,
    /// Prompt and its token count.
    pub prompt: String,
    /// Real tokens of the prompt (≤ max text).
    pub prompt_tokens: usize,
    /// Where the image came from.
    pub image: String,
    /// Load average (1, 5, 15 min) at start.
    pub load_average_start: [f64; 3],
    /// Load average at the end.
    pub load_average_end: [f64; 3],
    /// Random weight generation, seconds.
    pub weights_seconds: f64,
    /// Elements of the random weights over all checkpoint keys (LoRA folded; aliased keys counted
    /// again), millions.
    pub mparams: f64,
    /// Build + serialise + write of the four engines, seconds.
    pub export_seconds: f64,
    /// The exported files.
    pub exported: Vec<ExportedEngine>,
    /// The timed engines of the first backend (`cpu` when it ran), in run order.
    pub engines: Vec<EngineBench>,
    /// Per-frame total of the first backend (only when frame, temporal and head were all timed).
    pub per_frame: Option<PerFrame>,
    /// Every backend timed, in the order they alternated.
    pub backends: Vec<BackendBench>,
    /// Per timed engine, the faster of tract and ONNX Runtime on the native export and whether
    /// `auto`'s rule picks it (empty unless both were timed).
    pub fastest: Vec<FastestEngine>,
    /// The same for the INT8 engines (`--int8`/`--int8-self`) against `auto`'s INT8 rule
    /// (`backend::kind::auto_plan`; empty unless both backends timed them).
    pub fastest_int8: Vec<FastestEngine>,
    /// This machine's CPU model, as the official-code harness writes it.
    pub cpu_model: String,
    /// The micro-kernel of the CPU backend's products (`ops::linear::Kernel`; `REFERDINO_CPU_KERNEL`
    /// picks another).
    pub cpu_kernel: String,
    /// GMAC per stage, all engines.
    pub gmac: Vec<GmacRow>,
    /// Sum of the GMAC column.
    pub gmac_total: f64,
    /// The official code's figures from `--official` (same machine), with our ratios.
    pub official: Option<OfficialCompare>,
    /// Process peak RSS at the end, MiB.
    pub peak_rss_mib: f64,
}

/// The per-frame total from the timed engines (frame, temporal, head and text all needed).
pub(super) fn per_frame_of(engines: &[EngineBench], window: usize) -> Option<PerFrame> {
    let med = |n: &str| {
        engines
            .iter()
            .find(|e| e.name == n)
            .map(|e| e.latency.median_ms)
    };
    let (f, t, h, x) = (
        med(names::FRAME)?,
        med(names::TEMPORAL)?,
        med(names::HEAD)?,
        med(names::TEXT)?,
    );
    Some(PerFrame {
        frame_ms: f,
        temporal_ms: t,
        head_ms: h,
        text_ms: x,
        text_amortised_over: window.max(1),
        total_ms: f + t + h + x / window.max(1) as f64,
        single_frame_clip_ms: f + t + h + x,
    })
}

/// Per engine timed on both pure backends with `export` (`native`, or `int8` for the INT8
/// engines), the faster one, by how much, and whether `rule` (`auto`'s plan for those engines)
/// picks it.
pub(super) fn fastest_per_engine(
    backends: &[BackendBench],
    export: &str,
    rule: EnginePlan,
) -> Vec<FastestEngine> {
    let pure = |name: &str| {
        backends
            .iter()
            .find(|b| b.backend == name && b.export == export)
    };
    let (Some(cpu), Some(ort)) = (pure("cpu"), pure("ort")) else {
        return Vec::new();
    };
    let med = |b: &BackendBench, n: &str| {
        b.engines
            .iter()
            .find(|e| e.name == n)
            .map(|e| e.latency.median_ms)
    };
    ENGINES
        .iter()
        .filter_map(|&n| {
            let (c, o) = (med(cpu, n)?, med(ort, n)?);
            let (kind, speedup) = if o < c {
                (HostKind::Ort, c / o.max(1e-9))
            } else {
                (HostKind::Cpu, o / c.max(1e-9))
            };
            Some(FastestEngine {
                engine: n.to_string(),
                backend: kind.name().to_string(),
                speedup,
                auto_agrees: rule.of(n) == Some(kind),
            })
        })
        .collect()
}
