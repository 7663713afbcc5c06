//! `referdino bench`: full-size export and CPU latency of the four engines with random weights.
//!
//! Builds seeded random weights for a configuration (`swin-t`, `swin-b` or a config file), exports the
//! four engines, loads them on the CPU backend and times each on realistic inputs: a real tokenized
//! prompt, an image (the bundled clip's first frame resized to the model size, or `--image`), and each
//! engine fed with the outputs of the one before it. Reports ONNX sizes and node counts, export and load
//! times, peak RSS, median/min/p90 latency per engine, the per-frame total, the GMAC per stage from
//! [`crate::onnx::cost`] next to the model's reference figures (docs/model.md). A human table goes to stdout, the same figures as JSON with
//! `--json`.
//!
//! **Backends side by side.** `--backend all` (the default) times tract on the native export and, when
//! its library loads, ONNX Runtime on the native export (our kernels as custom operators) and on the
//! decomposed export (standard ONNX only: what any ONNX Runtime user gets from our files) in the same
//! process, alternating run by run (A B C A B C) so that drift on a shared machine hits all alike.
//!
//! **Ratios only from this machine.** `--official FILE.json` reads what the official-code harness
//! (`bench_official.py`) wrote on this machine; the file is refused when its CPU model differs from this
//! machine's, so a ratio never compares figures from two machines.

use crate::backend::cpu::{available_threads, CpuBackend, CpuEngine, OpTime};
use crate::backend::kind::{BackendKind, EnginePlan, HostKind, AUTO_PLAN};
use crate::backend::{Engine, TensorSpec, View, ViewMut};
use crate::config::ModelConfig;
use crate::graph::engines::{names, ExportOptions, Geometry};
use crate::graph::export::export_engines;
use crate::onnx::cost::{cost_report_with_params, StageRule, SPEC_8_2_SWIN_T_360X640};
use crate::pipeline::session::{view, view_mut};
use crate::tensor::{read_safetensors, Data, Tensor};
use crate::text::Tokenizer;
use crate::weights::random::random_weights;
use anyhow::{bail, Context};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

const FIXTURE_INPUTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/referdino-tiny/inputs.safetensors"
);

/// The engines in run order.
const ENGINES: [&str; 4] = [names::TEXT, names::FRAME, names::TEMPORAL, names::HEAD];

/// Arguments of `referdino bench`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Model configuration: `swin-t`, `swin-b`, an official .yaml or a fixture config.json.
    #[arg(long, default_value = "swin-t")]
    pub config: String,
    /// Model input height.
    #[arg(long, default_value_t = crate::config::DEFAULT_SHORT_SIDE as usize)]
    pub height: usize,
    /// Model input width.
    #[arg(long, default_value_t = 640)]
    pub width: usize,
    /// Max text length in tokens (special tokens included).
    #[arg(long, default_value_t = crate::config::DEFAULT_MAX_TEXT)]
    pub max_text: usize,
    /// Temporal window in frames (the text engine's time is amortised over it).
    #[arg(long, default_value_t = crate::config::DEFAULT_WINDOW)]
    pub window: usize,
    /// Threads per engine, both backends (0 = every available core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Timed runs per engine.
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
    /// Untimed runs per engine before timing.
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Engines to time, comma-separated (all four are always exported).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "text,frame,temporal,head"
    )]
    pub engines: Vec<String>,
    /// Also write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Keep the ONNX files in this directory (default: a temporary directory, removed afterwards).
    #[arg(long)]
    pub onnx_dir: Option<PathBuf>,
    /// Referring expression fed to the text engine.
    #[arg(long, default_value = "the red ball rolling to the left")]
    pub prompt: String,
    /// Image to feed the frame engine (resized to the model size); default: the bundled clip's first
    /// frame, or a synthetic pattern when the source tree is not at hand.
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Seed of the random weights.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Run tract's matrix products on one thread (custom-op kernels keep every thread): the CPU
    /// backend as it was before multi-threaded MatMul, for before/after comparisons.
    #[arg(long)]
    pub single_thread_matmul: bool,
    /// Run softmaxes with tract's own operator instead of ours (the CPU backend before its own
    /// softmax kernel), for before/after comparisons.
    #[arg(long)]
    pub tract_softmax: bool,
    /// Run layer normalisations as tract's decomposition instead of our kernel, for before/after
    /// comparisons.
    #[arg(long)]
    pub tract_layer_norm: bool,
    /// After timing, run each engine once more with per-op timing and report the slowest op types
    /// (tract backend).
    #[arg(long)]
    pub profile: bool,
    /// With `--profile`, group the timings by op type, input shape and op parameters (which nodes of
    /// a type are slow) and list the 40 slowest groups.
    #[arg(long, requires = "profile")]
    pub profile_shapes: bool,
    /// Backends to time: `cpu` (tract, native export), `ort` (ONNX Runtime on the native export with our
    /// kernels as custom operators, and on the decomposed export), `auto` (each engine on the backend
    /// `--backend auto` gives it), a per-engine mix (`text=ort,frame=ort,temporal=cpu,head=cpu`), or
    /// `all` (tract, both ONNX Runtime variants and `auto`, alternating run by run; ONNX Runtime and
    /// `auto` only when its library loads). With `--objects`/`--streams`, `all` times tract and `auto`.
    #[arg(long, default_value = "all")]
    pub backend: String,
    /// JSON written on this machine by the official-code harness (`bench_official.py --json`): prints
    /// official vs ours; refused when its CPU model is not this machine's.
    #[arg(long)]
    pub official: Option<PathBuf>,
    /// Objects per stream to time, comma-separated (e.g. `1,2,4`): times the live path over several
    /// objects and streams instead of the engines one by one (see `--streams`).
    #[arg(long, value_delimiter = ',')]
    pub objects: Vec<usize>,
    /// Streams to time, comma-separated (e.g. `1,2,4`), with `--objects`.
    #[arg(long, value_delimiter = ',')]
    pub streams: Vec<usize>,
    /// Objects per cross-modal engine run, with `--objects`/`--streams`.
    #[arg(long, default_value_t = 1)]
    pub cross_batch: usize,
    /// Frames of several streams per image engine run, with `--objects`/`--streams`.
    #[arg(long, default_value_t = 1)]
    pub image_batch: usize,
    /// With `--objects`/`--streams`: also time the whole frame engine run once per object (no
    /// shared image part), one stream.
    #[arg(long)]
    pub unsplit: bool,
}

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
    fn of(runs_ms: Vec<f64>) -> Self {
        let mut s = runs_ms.clone();
        s.sort_by(f64::total_cmp);
        let n = s.len().max(1);
        let median_ms = super::bench_multi::median_ms(&s);
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
    /// This machine's CPU model, as the official-code harness writes it.
    pub cpu_model: String,
    /// GMAC per stage, all engines.
    pub gmac: Vec<GmacRow>,
    /// Sum of the GMAC column.
    pub gmac_total: f64,
    /// The official code's figures from `--official` (same machine), with our ratios.
    pub official: Option<OfficialCompare>,
    /// Process peak RSS at the end, MiB.
    pub peak_rss_mib: f64,
}

/// `VmHWM` (peak resident set) of this process in MiB, 0 where /proc is missing.
pub fn peak_rss_mib() -> f64 {
    proc_status_kib("VmHWM:") as f64 / 1024.0
}

fn proc_status_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The 1/5/15-minute load average, zeros where /proc is missing.
pub fn load_average() -> [f64; 3] {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = s.split_whitespace().map(|v| v.parse().unwrap_or(0.0));
    [
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
    ]
}

fn resolve_config(spec: &str) -> anyhow::Result<ModelConfig> {
    Ok(match spec {
        "swin-t" | "swin_t" => ModelConfig::swin_t(),
        "swin-b" | "swin_b" => ModelConfig::swin_b(),
        p => ModelConfig::from_file(Path::new(p))
            .with_context(|| format!("--config {p}: not swin-t, swin-b or a readable config"))?,
    })
}

/// The image as a normalised `[3,H,W]` buffer, and a description of where it came from.
fn load_image(path: Option<&Path>, h: usize, w: usize) -> anyhow::Result<(Vec<f32>, String)> {
    let (rgb, what) = match path {
        Some(p) => (
            image::open(p)
                .with_context(|| format!("--image {}", p.display()))?
                .to_rgb8(),
            p.display().to_string(),
        ),
        None => match bundled_frame()? {
            Some(img) => (img, "bundled clip, frame 0 (resized)".to_string()),
            None => (
                image::RgbImage::from_fn(w as u32, h as u32, |x, y| {
                    image::Rgb([(x * 255 / w as u32) as u8, (y * 255 / h as u32) as u8, 96])
                }),
                "synthetic gradient".to_string(),
            ),
        },
    };
    // The runtime's preprocessing (PIL-compatible bilinear), to exactly the engine's input size.
    let mut pre =
        crate::camera::Preprocessor::try_to_size(rgb.width(), rgb.height(), w as u32, h as u32)?;
    let mut out = vec![0f32; 3 * h * w];
    pre.run(rgb.as_raw(), &mut out)?;
    Ok((out, what))
}

fn bundled_frame() -> anyhow::Result<Option<image::RgbImage>> {
    let p = Path::new(FIXTURE_INPUTS);
    if !p.exists() {
        return Ok(None);
    }
    let (t, _) = read_safetensors(p)?;
    let Some(clip) = t.get("frames_uint8") else {
        return Ok(None);
    };
    let s = clip.shape();
    let Data::U8(px) = clip.data() else {
        return Ok(None);
    };
    if s.len() != 4 || s[3] != 3 {
        return Ok(None);
    }
    let n = s[1] * s[2] * 3;
    Ok(image::RgbImage::from_raw(
        s[2] as u32,
        s[1] as u32,
        px[..n].to_vec(),
    ))
}

/// Deterministic filler for an input no upstream engine produced.
fn synthetic(spec: &TensorSpec) -> Tensor {
    let n = spec.numel();
    let mut t = Tensor::zeros(&spec.shape, spec.dtype);
    match t.data_mut() {
        Data::F32(v) => {
            let mut rng = crate::weights::random::SplitMix::new(n as u64);
            v.iter_mut().for_each(|x| *x = rng.uniform(-1.0, 1.0));
        }
        Data::Bool(v) => v.iter_mut().for_each(|x| *x = true),
        _ => {}
    }
    t
}

/// Repeats `src` `times` times (same element type).
fn tile(src: &Tensor, shape: &[usize], times: usize) -> anyhow::Result<Tensor> {
    let data = match src.data() {
        Data::F32(v) => Data::F32(v.repeat(times)),
        Data::Bool(v) => Data::Bool(v.repeat(times)),
        Data::I64(v) => Data::I64(v.repeat(times)),
        _ => bail!("cannot tile a {:?} tensor", src.dtype()),
    };
    Ok(Tensor::new(shape.to_vec(), data)?)
}

/// The value for one engine input, from the values produced so far (prompt, image, upstream outputs).
fn input_value(
    spec: &TensorSpec,
    pool: &HashMap<String, Tensor>,
    d: usize,
) -> anyhow::Result<Option<Tensor>> {
    let fits = |t: &Tensor| t.numel() == spec.numel() && t.dtype() == spec.dtype;
    if let Some(t) = pool.get(&spec.name).filter(|t| fits(t)) {
        return Ok(Some(t.clone().reshape(&spec.shape)?));
    }
    let win = spec.shape.first().copied().unwrap_or(1);
    Ok(match spec.name.as_str() {
        // Temporal window: the frame's objects repeated over the window.
        names::OBJECTS => match pool.get(names::OBJECTS) {
            Some(o) if o.numel() * win == spec.numel() => Some(tile(o, &spec.shape, win)?),
            _ => None,
        },
        // Per-frame sentence feature = the enhanced [CLS] token.
        names::SENTENCE => match pool.get(names::MEMORY_TEXT) {
            Some(m) if m.numel() >= d && d * win == spec.numel() => {
                let cls = Tensor::from_f32(&[1, d], m.f32s()?[..d].to_vec())?;
                Some(tile(&cls, &spec.shape, win)?)
            }
            _ => None,
        },
        names::FRAME_MASK => Some(Tensor::new(
            spec.shape.clone(),
            Data::Bool(vec![true; spec.numel()]),
        )?),
        // Head input: the temporal output's first frame, else the frame's objects.
        names::OBJECTS_T => pool
            .get(names::OBJECTS_T)
            .or_else(|| pool.get(names::OBJECTS))
            .filter(|t| t.numel() >= spec.numel())
            .map(|t| {
                Tensor::from_f32(&spec.shape, t.f32s()?[..spec.numel()].to_vec())
                    .map_err(anyhow::Error::from)
            })
            .transpose()?,
        _ => None,
    })
}

/// Prompt-derived inputs padded to `lm` (pads masked; a pad attends only to itself).
fn prompt_inputs(
    prompt: &str,
    lm: usize,
) -> anyhow::Result<(HashMap<String, Tensor>, usize, String)> {
    let tok = Tokenizer::bundled()?;
    let c = tok.encode_prompt(prompt, lm)?;
    let l = c.len;
    let mut ids = vec![0i64; lm];
    let mut tt = vec![0i64; lm];
    let mut pos = vec![0i64; lm];
    ids[..l].copy_from_slice(&c.input_ids);
    tt[..l].copy_from_slice(&c.token_type_ids);
    pos[..l].copy_from_slice(&c.position_ids);
    let mask: Vec<bool> = (0..lm).map(|i| i < l).collect();
    let mut sam = vec![false; lm * lm];
    for i in 0..lm {
        for j in 0..lm {
            sam[i * lm + j] = if i < l && j < l {
                c.self_attention_mask[i * l + j]
            } else {
                i == j
            };
        }
    }
    let mut m = HashMap::new();
    m.insert(
        names::INPUT_IDS.to_string(),
        Tensor::from_i64(&[1, lm], ids)?,
    );
    m.insert(
        names::TOKEN_TYPE_IDS.to_string(),
        Tensor::from_i64(&[1, lm], tt)?,
    );
    m.insert(
        names::POSITION_IDS.to_string(),
        Tensor::from_i64(&[1, lm], pos)?,
    );
    m.insert(
        names::TEXT_TOKEN_MASK.to_string(),
        Tensor::new(vec![1, lm], Data::Bool(mask))?,
    );
    m.insert(
        names::TEXT_SELF_ATTENTION_MASK.to_string(),
        Tensor::new(vec![1, lm, lm], Data::Bool(sam))?,
    );
    Ok((m, l, c.caption))
}

/// This machine's CPU as the official-code harness stamps it: model name, family and model numbers and
/// the widest vector extension (two machines sold under one name can differ 2.5× in speed).
pub fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| -> String {
        info.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == name).then(|| v.trim().to_string())
            })
            .unwrap_or_else(|| "?".into())
    };
    let flags = field("flags");
    let flags: Vec<&str> = flags.split_whitespace().collect();
    let vec = if flags.contains(&"avx512f") {
        "avx512f"
    } else if flags.contains(&"avx2") {
        "avx2"
    } else {
        "sse"
    };
    format!(
        "{} (family {}, model {}, {vec})",
        field("model name"),
        field("cpu family"),
        field("model")
    )
}

/// Reads the official-code harness JSON (a list of cases, or one case) and matches its `swint` case run
/// with `threads` threads to our backends. Errors when the file was written on another CPU model or
/// holds no such case.
pub fn official_compare(
    path: &Path,
    threads: usize,
    backends: &[BackendBench],
) -> anyhow::Result<OfficialCompare> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let v: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    let cases: Vec<&serde_json::Value> = match &v {
        serde_json::Value::Array(a) => a.iter().collect(),
        o => vec![o],
    };
    let ours = cpu_model();
    let swint: Vec<&serde_json::Value> = cases
        .iter()
        .copied()
        .filter(|c| c["case"] == "swint")
        .collect();
    if swint.is_empty() {
        bail!(
            "{}: no `swint` case (run bench_official.py --cases swint)",
            path.display()
        );
    }
    for c in &swint {
        let theirs = c["environment"]["cpu_model"].as_str().unwrap_or("(none)");
        if theirs != ours {
            bail!(
                "{} was measured on another CPU ({theirs}); this machine is {ours}: a ratio needs both \
                 sides measured on the same machine, so re-run bench_official.py here",
                path.display()
            );
        }
    }
    let Some(case) = swint
        .iter()
        .find(|c| c["threads"].as_u64() == Some(threads as u64))
    else {
        bail!(
            "{}: no `swint` case with {threads} threads (it has {:?}); run bench_official.py --threads {threads}",
            path.display(),
            swint.iter().map(|c| c["threads"].as_u64()).collect::<Vec<_>>()
        );
    };
    let runs = case["runs"].as_array().cloned().unwrap_or_default();
    let clips: Vec<(usize, f64)> = runs
        .iter()
        .filter_map(|r| {
            Some((
                r["T"].as_u64()? as usize,
                r["per_frame_s"]["median"].as_f64()? * 1e3,
            ))
        })
        .collect();
    let one = runs.iter().find(|r| r["T"].as_u64() == Some(1));
    let stage = |keys: &[&str]| -> Option<f64> {
        let st = &one?["stages_median_s"];
        let mut sum = 0.0;
        for k in keys {
            sum += st[*k].as_f64()?;
        }
        Some(sum * 1e3)
    };
    let single = one
        .and_then(|r| r["total_s"]["median"].as_f64())
        .map(|x| x * 1e3);
    let text_ms = stage(&["bert", "feat_map"]);
    let frame_ms = stage(&["backbone", "input_proj", "transformer", "pixel_decoder_fpn"]);
    let peak_rss_mib = runs
        .iter()
        .filter_map(|r| {
            let m = &r["memory"];
            m["peak_rss_during_warmup_and_runs_mib"]
                .as_f64()
                .or_else(|| m["peak_rss_process_mib"].as_f64())
        })
        .reduce(f64::max);
    let med = |b: &BackendBench, n: &str| {
        b.engines
            .iter()
            .find(|e| e.name == n)
            .map(|e| e.latency.median_ms)
    };
    let ratios = backends
        .iter()
        .map(|b| OfficialRatio {
            backend: format!("{} {}", b.backend, b.export),
            single_frame_clip: single
                .zip(b.per_frame.as_ref())
                .map(|(o, pf)| o / pf.single_frame_clip_ms),
            text: text_ms.zip(med(b, names::TEXT)).map(|(o, x)| o / x),
            frame: frame_ms.zip(med(b, names::FRAME)).map(|(o, x)| o / x),
        })
        .collect();
    Ok(OfficialCompare {
        file: path.display().to_string(),
        cpu_model: ours,
        torch: case["environment"]["torch"]
            .as_str()
            .unwrap_or("?")
            .to_string(),
        threads,
        clips,
        single_frame_clip_ms: single,
        text_ms,
        frame_ms,
        peak_rss_mib,
        ratios,
    })
}

/// `VmRSS` (current resident set) of this process in MiB.
fn rss_mib() -> f64 {
    proc_status_kib("VmRSS:") as f64 / 1024.0
}

/// A loaded engine: tract's concrete type (for `--profile`) or any other backend's.
enum Loaded {
    Cpu(Box<CpuEngine>),
    Other(Box<dyn Engine>),
}

impl Loaded {
    fn engine(&mut self) -> &mut dyn Engine {
        match self {
            Loaded::Cpu(e) => e.as_mut(),
            Loaded::Other(e) => e.as_mut(),
        }
    }
}

/// One engine of one backend with its input and output buffers.
struct Slot {
    name: String,
    backend: HostKind,
    engine: Loaded,
    ins: Vec<Tensor>,
    outs: Vec<Tensor>,
    load_seconds: f64,
    rss_after_load: f64,
    synthetic_inputs: Vec<String>,
    runs: Vec<f64>,
    profile: Option<Vec<OpTime>>,
}

impl Slot {
    fn run(&mut self) -> anyhow::Result<f64> {
        let views: Vec<View<'_>> = self.ins.iter().map(view).collect();
        let mut outv: Vec<ViewMut<'_>> = self.outs.iter_mut().map(view_mut).collect();
        let t0 = Instant::now();
        self.engine.engine().run(&views, &mut outv)?;
        Ok(t0.elapsed().as_secs_f64() * 1e3)
    }
}

/// One backend's four engines, ready to time.
struct Prepared {
    backend: String,
    threads: usize,
    export: String,
    plan: EnginePlan,
    slots: Vec<Slot>,
    rss_added_mib: f64,
}

/// Removes the temporary export directory however the benchmark ends.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The per-frame total from the timed engines (frame, temporal, head and text all needed).
fn per_frame_of(engines: &[EngineBench], window: usize) -> Option<PerFrame> {
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

/// Per engine timed on both pure backends (native export), the faster one and by how much.
fn fastest_per_engine(backends: &[BackendBench]) -> Vec<FastestEngine> {
    let pure = |name: &str| {
        backends
            .iter()
            .find(|b| b.backend == name && b.export == "native")
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
                auto_agrees: AUTO_PLAN.of(n) == Some(kind),
            })
        })
        .collect()
}

/// The flags both benchmarks (engines one by one, and `--objects`/`--streams`) size memory and
/// work by, checked before anything is built.
fn check_sizes(a: &BenchArgs, cfg: &crate::config::ModelConfig) -> anyhow::Result<()> {
    use crate::limits::{check_input_size, check_range, MAX_THREADS, MAX_WINDOW, MIN_MAX_TEXT};
    check_range("--max-text", a.max_text, MIN_MAX_TEXT, cfg.max_text_len)?;
    check_input_size("--height/--width", a.height, a.width)?;
    check_range("--window", a.window, 1, MAX_WINDOW)?;
    check_range("--threads", a.threads, 0, MAX_THREADS)?;
    if a.iters == 0 {
        bail!("--iters must be at least 1");
    }
    Ok(())
}

/// Runs the benchmark and returns the report (also printed; written as JSON with `--json`).
pub fn bench(a: &BenchArgs) -> anyhow::Result<BenchReport> {
    let load_start = load_average();
    let cfg = resolve_config(&a.config)?;
    check_sizes(a, &cfg)?;
    for e in &a.engines {
        if !ENGINES.contains(&e.as_str()) {
            bail!("--engines: unknown engine {e:?}; choose from {ENGINES:?}");
        }
    }
    let geo = Geometry {
        height: a.height,
        width: a.width,
        max_text: a.max_text,
        window: a.window,
    };
    // The pure backends to time, and the per-engine choice (`auto` or a mix) with its label.
    let (pure_cpu, pure_ort, choice) = match a.backend.to_ascii_lowercase().as_str() {
        "cpu" | "tract" => (true, false, None),
        "ort" | "onnxruntime" => (false, true, None),
        "all" => {
            let ort = crate::backend::ort_available();
            // Without ONNX Runtime, `auto` is tract on every engine: nothing more to time.
            let auto = ort.then(|| ("auto".to_string(), AUTO_PLAN));
            (true, ort, auto)
        }
        other => match BackendKind::parse(other) {
            Ok(k @ (BackendKind::Auto | BackendKind::Mix(_))) => {
                let (plan, why) = k.plan()?;
                if let Some(why) = why {
                    log::info!("bench: ONNX Runtime unavailable ({why}); auto runs tract");
                }
                (false, false, Some((k.to_string(), plan)))
            }
            Ok(k) => bail!("--backend {k}: bench times the host backends; choose cpu, ort, auto, all or a per-engine mix"),
            Err(e) => bail!("--backend: {e}; bench also takes `all`"),
        },
    };
    if a.backend.eq_ignore_ascii_case("all") && !pure_ort {
        log::info!("bench: ONNX Runtime not available (ORT_DYLIB_PATH or `pip install onnxruntime`); timing tract only");
    }
    let want_cpu = pure_cpu || choice.as_ref().is_some_and(|c| c.1.uses(HostKind::Cpu));
    let want_ort = pure_ort || choice.as_ref().is_some_and(|c| c.1.uses(HostKind::Ort));
    let cpu = if want_cpu {
        let mut b = CpuBackend::with_threads(a.threads)?;
        if a.single_thread_matmul {
            b = b.single_thread_matmul();
        }
        if a.tract_softmax {
            b = b.tract_softmax();
        }
        if a.tract_layer_norm {
            b = b.tract_layer_norm();
        }
        Some(b)
    } else {
        None
    };
    let ort = if want_ort {
        Some(BackendKind::Ort.host_backend(Some(a.threads))?)
    } else {
        None
    };
    let threads = cpu
        .as_ref()
        .map(|b| b.threads())
        .or_else(|| ort.as_ref().map(|b| b.threads()))
        .unwrap_or(1);
    log::info!(
        "bench {} {}x{} Lm {} window {}: {} threads, load average {:?}",
        a.config,
        geo.height,
        geo.width,
        geo.max_text,
        geo.window,
        threads,
        load_start
    );

    // Weights and export.
    let t0 = Instant::now();
    let w = random_weights(&cfg, a.seed)?;
    let weights_seconds = t0.elapsed().as_secs_f64();
    let sizes: HashMap<String, usize> = w.iter().map(|(k, v)| (k.clone(), v.numel())).collect();
    let mparams = sizes.values().sum::<usize>() as f64 / 1e6;
    let (dir, _cleanup) = match &a.onnx_dir {
        Some(d) => (d.clone(), None),
        None => {
            let d = std::env::temp_dir().join(format!("referdino-bench-{}", std::process::id()));
            (d.clone(), Some(RemoveOnDrop(d)))
        }
    };
    let t0 = Instant::now();
    let manifest = export_engines(&w, &cfg, &geo, &ExportOptions::default(), &dir)
        .context("exporting the engines")?;
    let export_seconds = t0.elapsed().as_secs_f64();
    let decomposed_dir = dir.join("decomposed");
    if pure_ort {
        let opts = ExportOptions {
            decompose_custom_ops: true,
            ..Default::default()
        };
        export_engines(&w, &cfg, &geo, &opts, &decomposed_dir)
            .context("exporting the decomposed engines")?;
    }
    drop(w);
    let exported: Vec<ExportedEngine> = manifest
        .engines
        .iter()
        .map(|e| ExportedEngine {
            name: e.name.clone(),
            bytes: e.bytes,
            nodes: e.nodes,
        })
        .collect();

    // GMAC per stage over the files just written.
    let rules = StageRule::spec_rows();
    let mut stage_sum: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for e in &manifest.engines {
        let p = dir.join(&e.file);
        let bytes = std::fs::read(&p).with_context(|| p.display().to_string())?;
        let model = <tract_onnx::pb::ModelProto as prost::Message>::decode(bytes.as_slice())
            .with_context(|| format!("decoding {}", p.display()))?;
        drop(bytes);
        let r = cost_report_with_params(&model, &rules, 1, &sizes)?;
        for s in &r.stages {
            let v = stage_sum.entry(s.name.clone()).or_default();
            v.0 += s.counts.macs as f64 / 1e9;
            v.1 += s.counts.params as f64 / 1e6;
        }
    }
    let comparable =
        matches!(a.config.as_str(), "swin-t" | "swin_t") && geo.height == 360 && geo.width == 640;
    let mut gmac = Vec::new();
    let mut order: Vec<String> = rules.iter().map(|r| r.stage.clone()).collect();
    order.extend(
        stage_sum
            .keys()
            .filter(|k| !order.contains(k))
            .cloned()
            .collect::<Vec<_>>(),
    );
    for stage in order {
        let Some(&(g, p)) = stage_sum.get(&stage) else {
            continue;
        };
        let spec = SPEC_8_2_SWIN_T_360X640
            .iter()
            .find(|r| r.0 == stage)
            .filter(|_| comparable);
        gmac.push(GmacRow {
            stage,
            gmac: g,
            mparams: p,
            spec_gmac: spec.map(|r| r.1),
            spec_mparams: spec.map(|r| r.2),
        });
    }
    let gmac_total = gmac.iter().map(|r| r.gmac).sum();

    // Each backend loads its four engines (a session holds all four) and runs them once in order, so
    // that every engine gets its upstream engine's outputs; then the selected engines are timed,
    // alternating the backends run by run.
    let (prompt_pool, prompt_tokens, caption) = prompt_inputs(&a.prompt, geo.max_text)?;
    let (img, image_src) = load_image(a.image.as_deref(), geo.height, geo.width)?;
    let image = Tensor::from_f32(&[1, 3, geo.height, geo.width], img)?;
    let mut prepared: Vec<Prepared> = Vec::new();
    // (label, export, files, backend of each engine)
    let mut targets: Vec<(String, &str, &Path, EnginePlan)> = Vec::new();
    if pure_cpu {
        let plan = EnginePlan::uniform(HostKind::Cpu);
        targets.push(("cpu".into(), "native", dir.as_path(), plan));
    }
    if pure_ort {
        // Our kernels as custom operators, and the standard-ONNX yardstick.
        let plan = EnginePlan::uniform(HostKind::Ort);
        targets.push(("ort".into(), "native", dir.as_path(), plan));
        targets.push(("ort".into(), "decomposed", decomposed_dir.as_path(), plan));
    }
    if let Some((label, plan)) = &choice {
        // Each engine on its own backend, run in sequence as a session runs them.
        targets.push((label.clone(), "native", dir.as_path(), *plan));
    }
    for (kind, export, edir, plan) in targets {
        let rss0 = rss_mib();
        let mut pool = prompt_pool.clone();
        pool.insert(names::IMAGE.to_string(), image.clone());
        let mut slots = Vec::new();
        for name in ENGINES {
            let p = edir.join(format!("{name}.onnx"));
            let t0 = Instant::now();
            let on = plan.of(name).unwrap_or(HostKind::Cpu);
            let mut engine = match (on, &cpu, &ort) {
                (HostKind::Ort, _, Some(b)) => Loaded::Other(b.load(&p)?),
                (HostKind::Cpu, Some(c), _) => Loaded::Cpu(Box::new(c.load_cpu(&p)?)),
                _ => bail!("no {} backend to load {name} on", on.name()),
            };
            let load_seconds = t0.elapsed().as_secs_f64();
            log::info!("{kind} ({export}): loaded {name} in {load_seconds:.1} s");
            let e = engine.engine();
            let mut synthetic_inputs = Vec::new();
            let mut ins = Vec::with_capacity(e.inputs().len());
            for s in e.inputs() {
                match input_value(s, &pool, cfg.hidden_dim)? {
                    Some(t) => ins.push(t),
                    None => {
                        synthetic_inputs.push(s.name.clone());
                        ins.push(synthetic(s));
                    }
                }
            }
            let outs: Vec<Tensor> = e
                .outputs()
                .iter()
                .map(|s| Tensor::zeros(&s.shape, s.dtype))
                .collect();
            let out_names: Vec<String> = e.outputs().iter().map(|s| s.name.clone()).collect();
            let mut slot = Slot {
                name: name.to_string(),
                backend: on,
                engine,
                ins,
                outs,
                load_seconds,
                rss_after_load: peak_rss_mib(),
                synthetic_inputs,
                runs: Vec::new(),
                profile: None,
            };
            // An untimed engine still runs once so the next one gets realistic inputs.
            let timed = a.engines.iter().any(|x| x == name);
            let warm = if timed { a.warmup.max(1) } else { 1 };
            for _ in 0..warm {
                slot.run()?;
            }
            for (n, t) in out_names.into_iter().zip(&slot.outs) {
                pool.insert(n, t.clone());
            }
            slots.push(slot);
        }
        prepared.push(Prepared {
            backend: kind,
            threads,
            export: export.to_string(),
            plan,
            slots,
            rss_added_mib: rss_mib() - rss0,
        });
    }
    for i in 0..a.iters {
        for p in prepared.iter_mut() {
            for slot in p.slots.iter_mut() {
                if !a.engines.iter().any(|x| x == &slot.name) {
                    continue;
                }
                let ms = slot.run()?;
                log::info!(
                    "{} ({}) {} run {}/{}: {ms:.1} ms",
                    p.backend,
                    p.export,
                    slot.name,
                    i + 1,
                    a.iters
                );
                slot.runs.push(ms);
            }
        }
    }
    if a.profile {
        for p in prepared.iter_mut() {
            for slot in p.slots.iter_mut() {
                if !a.engines.iter().any(|x| x == &slot.name) {
                    continue;
                }
                if let Loaded::Cpu(e) = &mut slot.engine {
                    let views: Vec<View<'_>> = slot.ins.iter().map(view).collect();
                    let mut outv: Vec<ViewMut<'_>> = slot.outs.iter_mut().map(view_mut).collect();
                    slot.profile = Some(e.profile(&views, &mut outv, a.profile_shapes)?);
                }
            }
        }
    }
    let backends: Vec<BackendBench> = prepared
        .into_iter()
        .map(|p| {
            let engines: Vec<EngineBench> = p
                .slots
                .into_iter()
                .filter(|s| a.engines.iter().any(|x| x == &s.name))
                .map(|s| EngineBench {
                    name: s.name,
                    backend: s.backend.name().to_string(),
                    load_seconds: s.load_seconds,
                    peak_rss_mib_after_load: s.rss_after_load,
                    latency: Latency::of(s.runs),
                    synthetic_inputs: s.synthetic_inputs,
                    profile: s.profile,
                })
                .collect();
            let per_frame = per_frame_of(&engines, geo.window);
            BackendBench {
                backend: p.backend,
                threads: p.threads,
                export: p.export,
                plan: p.plan.to_string(),
                engines,
                per_frame,
                rss_added_mib: p.rss_added_mib,
            }
        })
        .collect();
    let fastest = fastest_per_engine(&backends);
    let official = match &a.official {
        Some(f) => Some(official_compare(f, threads, &backends)?),
        None => None,
    };
    let (engines, per_frame) = backends
        .first()
        .map(|b| (b.engines.clone(), b.per_frame.clone()))
        .unwrap_or_default();
    let report = BenchReport {
        config: a.config.clone(),
        backbone: cfg.backbone.clone(),
        geometry: geo,
        threads,
        single_thread_matmul: a.single_thread_matmul,
        tract_softmax: a.tract_softmax,
        tract_layer_norm: a.tract_layer_norm,
        available_cores: available_threads(),
        // The engines run at least once before timing (the next engine's inputs come from it).
        warmup: a.warmup.max(1),
        iters: a.iters,
        prompt: caption,
        prompt_tokens,
        image: image_src,
        load_average_start: load_start,
        load_average_end: load_average(),
        weights_seconds,
        mparams,
        export_seconds,
        exported,
        engines,
        per_frame,
        backends,
        fastest,
        cpu_model: cpu_model(),
        gmac,
        gmac_total,
        official,
        peak_rss_mib: peak_rss_mib(),
    };
    Ok(report)
}

/// The human-readable report.
pub fn render(r: &BenchReport) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let g = &r.geometry;
    let _ = writeln!(
        s,
        "referdino bench: {} ({}), {}x{}, max text {}, window {}; {} threads of {} cores; {} warm-up + {} timed runs",
        r.config, r.backbone, g.height, g.width, g.max_text, g.window, r.threads, r.available_cores, r.warmup, r.iters
    );
    if r.single_thread_matmul {
        let _ = writeln!(s, "(tract MatMul on one thread: --single-thread-matmul)");
    }
    if r.tract_softmax {
        let _ = writeln!(s, "(tract's own Softmax: --tract-softmax)");
    }
    if r.tract_layer_norm {
        let _ = writeln!(s, "(tract's own LayerNormalization: --tract-layer-norm)");
    }
    let _ = writeln!(
        s,
        "prompt {:?} ({} tokens); image: {}",
        r.prompt, r.prompt_tokens, r.image
    );
    let la = |l: &[f64; 3]| format!("{:.2} {:.2} {:.2}", l[0], l[1], l[2]);
    let _ = writeln!(
        s,
        "load average: start {}, end {}",
        la(&r.load_average_start),
        la(&r.load_average_end)
    );
    let _ = writeln!(
        s,
        "random weights: {:.1} M elements (aliases included) in {:.1} s; export of 4 engines: {:.1} s\n",
        r.mparams, r.weights_seconds, r.export_seconds
    );
    let _ = writeln!(
        s,
        "{:<9} {:>10} {:>7} {:>8} {:>10} {:>10} {:>10} {:>10}",
        "engine", "ONNX MiB", "nodes", "load s", "RSS MiB", "median ms", "min ms", "p90 ms"
    );
    for e in &r.exported {
        let t = r.engines.iter().find(|b| b.name == e.name);
        let f = |v: Option<f64>, p: usize| v.map_or("-".to_string(), |x| format!("{x:.p$}"));
        let _ = writeln!(
            s,
            "{:<9} {:>10.1} {:>7} {:>8} {:>10} {:>10} {:>10} {:>10}",
            e.name,
            e.bytes as f64 / 1048576.0,
            e.nodes,
            f(t.map(|t| t.load_seconds), 1),
            f(t.map(|t| t.peak_rss_mib_after_load), 0),
            f(t.map(|t| t.latency.median_ms), 1),
            f(t.map(|t| t.latency.min_ms), 1),
            f(t.map(|t| t.latency.p90_ms), 1),
        );
    }
    for e in &r.engines {
        if !e.synthetic_inputs.is_empty() {
            let _ = writeln!(s, "  ({}: synthetic {:?})", e.name, e.synthetic_inputs);
        }
    }
    if let Some(pf) = &r.per_frame {
        let _ = writeln!(
            s,
            "\nper frame: frame {:.1} + temporal {:.1} + head {:.1} + text {:.1}/{} = {:.1} ms; one-frame clip (text once) {:.1} ms",
            pf.frame_ms,
            pf.temporal_ms,
            pf.head_ms,
            pf.text_ms,
            pf.text_amortised_over,
            pf.total_ms,
            pf.single_frame_clip_ms
        );
    }
    if r.backends.len() > 1 {
        let _ = writeln!(
            s,
            "\nside by side (same process, runs alternating {}):",
            r.backends
                .iter()
                .map(|b| format!("{} ({})", b.backend, b.export))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let mut head = format!("{:<22}", "median ms");
        for b in &r.backends {
            head += &format!(" {:>16}", format!("{} ({})", b.backend, b.export));
        }
        let short = |b: &BackendBench| match b.export.as_str() {
            "native" => b.backend.clone(),
            _ => format!("{}-dec", b.backend),
        };
        let first = short(&r.backends[0]);
        for b in &r.backends[1..] {
            head += &format!(" {:>12}", format!("{first}/{}", short(b)));
        }
        let _ = writeln!(s, "{head}");
        let mut row = |label: &str, get: &dyn Fn(&BackendBench) -> Option<f64>, ratio: bool| {
            let vals: Vec<Option<f64>> = r.backends.iter().map(get).collect();
            let mut line = format!("{label:<22}");
            for v in &vals {
                line += &format!(" {:>16}", v.map_or("-".into(), |x| format!("{x:.1}")));
            }
            if ratio {
                for v in &vals[1..] {
                    let q = vals[0]
                        .zip(*v)
                        .filter(|(_, y)| *y > 0.0)
                        .map(|(x, y)| x / y);
                    line += &format!(" {:>12}", q.map_or("-".into(), |x| format!("{x:.2}x")));
                }
            }
            let _ = writeln!(s, "{line}");
        };
        for name in ENGINES {
            row(
                name,
                &|b: &BackendBench| {
                    b.engines
                        .iter()
                        .find(|e| e.name == name)
                        .map(|e| e.latency.median_ms)
                },
                true,
            );
        }
        row(
            "per frame",
            &|b: &BackendBench| b.per_frame.as_ref().map(|p| p.total_ms),
            true,
        );
        row(
            "one-frame clip",
            &|b: &BackendBench| b.per_frame.as_ref().map(|p| p.single_frame_clip_ms),
            true,
        );
        row(
            "RSS added (MiB)",
            &|b: &BackendBench| Some(b.rss_added_mib),
            false,
        );
        for b in &r.backends {
            if b.backend != "cpu" && b.backend != "ort" {
                let _ = writeln!(s, "{} runs {}", b.backend, b.plan);
            }
        }
    } else if let Some(b) = r.backends.first() {
        let _ = writeln!(
            s,
            "backend {} ({} export: {}), {} threads; RSS added by its engines {:.0} MiB",
            b.backend, b.export, b.plan, b.threads, b.rss_added_mib
        );
    }
    if !r.fastest.is_empty() {
        let list: Vec<String> = r
            .fastest
            .iter()
            .map(|f| format!("{} {} {:.2}x", f.engine, f.backend, f.speedup))
            .collect();
        let differ: Vec<&str> = r
            .fastest
            .iter()
            .filter(|f| !f.auto_agrees)
            .map(|f| f.engine.as_str())
            .collect();
        let verdict = if differ.is_empty() {
            "auto's rule agrees".to_string()
        } else {
            format!(
                "auto's rule differs on {} (override with --backend ENGINE=BACKEND,...)",
                differ.join(", ")
            )
        };
        let _ = writeln!(
            s,
            "faster per engine here (native export): {}; {verdict}",
            list.join(", ")
        );
    }
    if let Some(o) = &r.official {
        let f = |v: Option<f64>, unit: &str| v.map_or("-".to_string(), |x| format!("{x:.0}{unit}"));
        let _ = writeln!(
            s,
            "\nofficial ReferDINO infer (PyTorch {}, {} threads, {}; same CPU: {}):",
            o.torch, o.threads, o.file, o.cpu_model
        );
        let _ = writeln!(
            s,
            "  one-frame clip {}, text stages {}, frame stages {}, peak RSS {}",
            f(o.single_frame_clip_ms, " ms"),
            f(o.text_ms, " ms"),
            f(o.frame_ms, " ms"),
            f(o.peak_rss_mib, " MiB")
        );
        for (t, ms) in &o.clips {
            let _ = writeln!(s, "  {t}-frame clip: {ms:.0} ms per frame");
        }
        let x = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.2}x"));
        for q in &o.ratios {
            let _ = writeln!(
                s,
                "  official / ours ({}): one-frame clip {}, text {}, frame {}",
                q.backend,
                x(q.single_frame_clip),
                x(q.text),
                x(q.frame)
            );
        }
    }
    let _ = writeln!(s, "peak RSS {:.0} MiB\n", r.peak_rss_mib);
    let _ = writeln!(
        s,
        "{:<40} {:>9} {:>10} {:>7} {:>9} {:>8}",
        "stage (all engines, one frame)", "GMAC", "spec GMAC", "ratio", "M params", "spec M"
    );
    let f = |v: Option<f64>, p: usize| v.map_or("-".to_string(), |x| format!("{x:.p$}"));
    for row in &r.gmac {
        let ratio = row.spec_gmac.filter(|&x| x > 0.0).map(|x| row.gmac / x);
        let _ = writeln!(
            s,
            "{:<40} {:>9.3} {:>10} {:>7} {:>9.3} {:>8}",
            row.stage,
            row.gmac,
            f(row.spec_gmac, 2),
            f(ratio, 3),
            row.mparams,
            f(row.spec_mparams, 2)
        );
    }
    let _ = writeln!(s, "{:<40} {:>9.3}", "total", r.gmac_total);
    if r.gmac.iter().any(|x| x.spec_gmac.is_some()) && g.max_text != 11 {
        let _ = writeln!(
            s,
            "(docs/model.md's compute budget is at L = 11 text tokens; text-dependent rows scale with --max-text {})",
            g.max_text
        );
    }
    if g.window > 1 {
        let _ = writeln!(
            s,
            "(the temporal row is the temporal engine over its whole {}-frame window, which the streaming runtime runs per frame; the spec counts one frame's share)",
            g.window
        );
    }
    for e in &r.engines {
        if let Some(p) = &e.profile {
            let total: f64 = p.iter().map(|o| o.seconds).sum();
            let _ = writeln!(s, "\nprofile {} ({:.1} ms in ops):", e.name, total * 1e3);
            let rows = if p.iter().any(|o| o.op.contains('[')) {
                40
            } else {
                12
            };
            for o in p.iter().take(rows) {
                let _ = writeln!(
                    s,
                    "  {:<28} {:>5} nodes {:>9.1} ms {:>5.1} %",
                    o.op,
                    o.count,
                    o.seconds * 1e3,
                    100.0 * o.seconds / total.max(1e-12)
                );
            }
        }
    }
    s
}

/// CLI entry.
pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    if !a.objects.is_empty() || !a.streams.is_empty() {
        let load0 = load_average();
        let cfg = resolve_config(&a.config)?;
        check_sizes(&a, &cfg)?;
        super::bench_multi::check_grid(&a.objects, &a.streams, a.cross_batch, a.image_batch)?;
        let (image, what) = load_image(a.image.as_deref(), a.height, a.width)?;
        log::info!("bench: image {what}");
        // `all`: tract, and the default (`auto`) beside it when ONNX Runtime loads.
        let backends = match a.backend.to_ascii_lowercase().as_str() {
            "all" if crate::backend::ort_available() => vec!["cpu".to_string(), "auto".to_string()],
            "all" => vec!["cpu".to_string()],
            _ => vec![a.backend.clone()],
        };
        let p = super::bench_multi::MultiParams {
            config_name: a.config.clone(),
            cfg,
            geo: Geometry {
                height: a.height,
                width: a.width,
                max_text: a.max_text,
                window: a.window,
            },
            seed: a.seed,
            threads: a.threads,
            backends,
            iters: a.iters,
            warmup: a.warmup,
            objects: a.objects.clone(),
            streams: a.streams.clone(),
            cross_batch: a.cross_batch,
            image_batch: a.image_batch,
            unsplit: a.unsplit,
            image,
        };
        let mut r = super::bench_multi::bench_multi(&p, load0)?;
        r.load[1] = load_average();
        print!("{}", super::bench_multi::render_multi(&r));
        if let Some(p) = &a.json {
            let j = serde_json::to_string_pretty(&r)?;
            std::fs::write(p, j).with_context(|| p.display().to_string())?;
            println!("wrote {}", p.display());
        }
        return Ok(());
    }
    let r = bench(&a)?;
    print!("{}", render(&r));
    if let Some(p) = &a.json {
        let j = serde_json::to_string_pretty(&r)?;
        std::fs::write(p, j).with_context(|| p.display().to_string())?;
        println!("wrote {}", p.display());
    }
    Ok(())
}
