//! `referdino bench`: full-size export and CPU latency of the four engines with random weights.
//!
//! Builds seeded random weights for a configuration (`swin-t`, `swin-b` or a config file), exports the
//! four engines, loads them on the CPU backend and times each on realistic inputs: a real tokenized
//! prompt, an image (the bundled clip's first frame resized to the model size, or `--image`), and each
//! engine fed with the outputs of the one before it. Reports ONNX sizes and node counts, export and load
//! times, peak RSS, median/min/p90 latency per engine, the per-frame total, the GMAC per stage from
//! [`crate::graph::cost`] next to spec §8.2, and the official PyTorch CPU figures of `BASELINE.md` with
//! the speed-up (official / ours). A human table goes to stdout, the same figures as JSON with `--json`.

use crate::backend::cpu::{available_threads, CpuBackend, CpuEngine, OpTime};
use crate::backend::{Engine, TensorSpec, View, ViewMut};
use crate::config::ModelConfig;
use crate::graph::cost::{cost_report_with_params, StageRule, SPEC_8_2_SWIN_T_360X640};
use crate::graph::engines::{names, ExportOptions, Geometry};
use crate::graph::export::export_engines;
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
    #[arg(long, default_value_t = 360)]
    pub height: usize,
    /// Model input width.
    #[arg(long, default_value_t = 640)]
    pub width: usize,
    /// Max text length in tokens (special tokens included).
    #[arg(long, default_value_t = 32)]
    pub max_text: usize,
    /// Temporal window in frames (the text engine's time is amortised over it).
    #[arg(long, default_value_t = 36)]
    pub window: usize,
    /// Worker threads of the CPU backend (0 = every available core).
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
    /// After timing, run each engine once more with per-op timing and report the slowest op types.
    #[arg(long)]
    pub profile: bool,
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
        let median_ms = if s.is_empty() {
            0.0
        } else if n % 2 == 1 {
            s[n / 2]
        } else {
            (s[n / 2 - 1] + s[n / 2]) / 2.0
        };
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

/// One GMAC row: ours next to spec §8.2.
#[derive(Debug, Clone, Serialize)]
pub struct GmacRow {
    /// Stage label (spec §8.2 row).
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

/// Official PyTorch CPU figures (`BASELINE.md`) matched to this run, and our speed-up.
#[derive(Debug, Clone, Serialize)]
pub struct BaselineCompare {
    /// Where the figures come from.
    pub source: String,
    /// Official threads.
    pub threads: usize,
    /// Official ms per frame, 1-frame clip.
    pub official_single_frame_ms: f64,
    /// official / ours (single-frame clip); > 1 means we are faster.
    pub speedup_single_frame: f64,
    /// Official ms per frame over a 6-frame clip, where measured (2 threads).
    pub official_per_frame_6_ms: Option<f64>,
    /// official 6-frame per-frame / our amortised per-frame total.
    pub speedup_per_frame: Option<f64>,
    /// Per engine: (engine, official ms of the matching stages, official / ours), where the official
    /// breakdown covers it (2 threads).
    pub engines: Vec<(String, f64, f64)>,
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
    /// Worker threads of the CPU backend.
    pub threads: usize,
    /// Whether tract's matrix products ran on one thread (`--single-thread-matmul`).
    pub single_thread_matmul: bool,
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
    /// The timed engines, in run order.
    pub engines: Vec<EngineBench>,
    /// Per-frame total (only when frame, temporal and head were all timed).
    pub per_frame: Option<PerFrame>,
    /// GMAC per stage, all engines.
    pub gmac: Vec<GmacRow>,
    /// Sum of the GMAC column.
    pub gmac_total: f64,
    /// Official figures (Swin-T at 360×640 with 1 or 2 threads only).
    pub baseline: Option<BaselineCompare>,
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
        crate::camera::Preprocessor::to_size(rgb.width(), rgb.height(), w as u32, h as u32);
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

/// Official figures of `/work/shared/BASELINE.md` (PyTorch 2.x CPU, Swin-T, 360×640, random weights,
/// 2-core AVX2 machine, median of 5 after 1 warm-up).
mod official {
    /// ms per frame, 1-frame clip, 2 threads.
    pub const SWIN_T_2T_1F: f64 = 5557.0;
    /// ms per frame, 6-frame clip, 2 threads.
    pub const SWIN_T_2T_6F: f64 = 5805.0;
    /// ms per frame, 1-frame clip, 1 thread.
    pub const SWIN_T_1T_1F: f64 = 10002.0;
    /// 2 threads: BERT (once per prompt).
    pub const BERT_2T: f64 = 130.0;
    /// 2 threads: Swin 980 + encoder 3780 + decoder and query selection 410 (the frame engine's work
    /// but the FPN, which the official breakdown lumps with the mask decoder).
    pub const FRAME_2T: f64 = 980.0 + 3780.0 + 410.0;
}

fn baseline(
    cfg_name: &str,
    geo: &Geometry,
    threads: usize,
    pf: &PerFrame,
) -> Option<BaselineCompare> {
    let swin_t = matches!(cfg_name, "swin-t" | "swin_t");
    if !swin_t || geo.height != 360 || geo.width != 640 || !(threads == 1 || threads == 2) {
        return None;
    }
    let single = if threads == 2 {
        official::SWIN_T_2T_1F
    } else {
        official::SWIN_T_1T_1F
    };
    let (six, engines) = if threads == 2 {
        (
            Some(official::SWIN_T_2T_6F),
            vec![
                (
                    names::TEXT.to_string(),
                    official::BERT_2T,
                    official::BERT_2T / pf.text_ms,
                ),
                (
                    names::FRAME.to_string(),
                    official::FRAME_2T,
                    official::FRAME_2T / pf.frame_ms,
                ),
            ],
        )
    } else {
        (None, vec![])
    };
    Some(BaselineCompare {
        source: "BASELINE.md: official ReferDINO infer, PyTorch CPU fp32, Swin-T 360x640, 10-token caption"
            .into(),
        threads,
        official_single_frame_ms: single,
        speedup_single_frame: single / pf.single_frame_clip_ms,
        official_per_frame_6_ms: six,
        speedup_per_frame: six.map(|o| o / pf.total_ms),
        engines,
    })
}

/// Removes the temporary export directory however the benchmark ends.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the benchmark and returns the report (also printed; written as JSON with `--json`).
pub fn bench(a: &BenchArgs) -> anyhow::Result<BenchReport> {
    let load_start = load_average();
    let cfg = resolve_config(&a.config)?;
    if a.max_text < 3 || a.max_text > cfg.max_text_len {
        bail!("--max-text must be between 3 and {}", cfg.max_text_len);
    }
    if a.iters == 0 {
        bail!("--iters must be at least 1");
    }
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
    let mut backend = CpuBackend::with_threads(a.threads)?;
    if a.single_thread_matmul {
        backend = backend.single_thread_matmul();
    }
    let threads = backend.threads();
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
    let w = random_weights(&cfg, a.seed);
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

    // Load every engine (a session holds all four), then time the selected ones in run order.
    let mut loaded: Vec<(String, CpuEngine, f64, f64)> = Vec::new();
    for name in ENGINES {
        let p = dir.join(format!("{name}.onnx"));
        let t0 = Instant::now();
        let e = backend.load_cpu(&p)?;
        loaded.push((
            name.to_string(),
            e,
            t0.elapsed().as_secs_f64(),
            peak_rss_mib(),
        ));
        log::info!(
            "loaded {name} in {:.1} s",
            loaded.last().map_or(0.0, |l| l.2)
        );
    }

    let (mut pool, prompt_tokens, caption) = prompt_inputs(&a.prompt, geo.max_text)?;
    let (img, image_src) = load_image(a.image.as_deref(), geo.height, geo.width)?;
    pool.insert(
        names::IMAGE.to_string(),
        Tensor::from_f32(&[1, 3, geo.height, geo.width], img)?,
    );
    let mut engines = Vec::new();
    for (name, mut e, load_seconds, rss) in loaded {
        let inputs_spec = e.inputs().to_vec();
        let mut synthetic_inputs = Vec::new();
        let mut ins = Vec::with_capacity(inputs_spec.len());
        for s in &inputs_spec {
            match input_value(s, &pool, cfg.hidden_dim)? {
                Some(t) => ins.push(t),
                None => {
                    synthetic_inputs.push(s.name.clone());
                    ins.push(synthetic(s));
                }
            }
        }
        let mut outs: Vec<Tensor> = e
            .outputs()
            .iter()
            .map(|s| Tensor::zeros(&s.shape, s.dtype))
            .collect();
        let timed = a.engines.iter().any(|x| x == &name);
        let mut runs = Vec::new();
        {
            let views: Vec<View<'_>> = ins.iter().map(view).collect();
            let mut outv: Vec<ViewMut<'_>> = outs.iter_mut().map(view_mut).collect();
            // An untimed engine still runs once so the next one gets realistic inputs.
            let warm = if timed { a.warmup.max(1) } else { 1 };
            for _ in 0..warm {
                e.run(&views, &mut outv)?;
            }
            if timed {
                for i in 0..a.iters {
                    let t0 = Instant::now();
                    e.run(&views, &mut outv)?;
                    let ms = t0.elapsed().as_secs_f64() * 1e3;
                    log::info!("{name} run {}/{}: {ms:.1} ms", i + 1, a.iters);
                    runs.push(ms);
                }
            }
        }
        let profile = if timed && a.profile {
            let views: Vec<View<'_>> = ins.iter().map(view).collect();
            let mut outv: Vec<ViewMut<'_>> = outs.iter_mut().map(view_mut).collect();
            Some(e.profile(&views, &mut outv)?)
        } else {
            None
        };
        for (s, t) in e.outputs().iter().zip(outs) {
            pool.insert(s.name.clone(), t);
        }
        if timed {
            engines.push(EngineBench {
                name,
                load_seconds,
                peak_rss_mib_after_load: rss,
                latency: Latency::of(runs),
                synthetic_inputs,
                profile,
            });
        }
    }
    let med = |n: &str| {
        engines
            .iter()
            .find(|e| e.name == n)
            .map(|e| e.latency.median_ms)
    };
    let per_frame = match (
        med(names::FRAME),
        med(names::TEMPORAL),
        med(names::HEAD),
        med(names::TEXT),
    ) {
        (Some(f), Some(t), Some(h), Some(x)) => Some(PerFrame {
            frame_ms: f,
            temporal_ms: t,
            head_ms: h,
            text_ms: x,
            text_amortised_over: geo.window.max(1),
            total_ms: f + t + h + x / geo.window.max(1) as f64,
            single_frame_clip_ms: f + t + h + x,
        }),
        _ => None,
    };
    let baseline = per_frame
        .as_ref()
        .and_then(|pf| baseline(&a.config, &geo, threads, pf));
    let report = BenchReport {
        config: a.config.clone(),
        backbone: cfg.backbone.clone(),
        geometry: geo,
        threads,
        single_thread_matmul: a.single_thread_matmul,
        available_cores: available_threads(),
        warmup: a.warmup,
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
        gmac,
        gmac_total,
        baseline,
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
    if let Some(b) = &r.baseline {
        let _ = writeln!(
            s,
            "official ({}, {} threads): one-frame clip {:.0} ms -> {:.2}x ours",
            b.source, b.threads, b.official_single_frame_ms, b.speedup_single_frame
        );
        if let (Some(o), Some(x)) = (b.official_per_frame_6_ms, b.speedup_per_frame) {
            let _ = writeln!(
                s,
                "official per frame over 6 frames {o:.0} ms vs our amortised per frame -> {x:.2}x"
            );
        }
        for (e, o, x) in &b.engines {
            let _ = writeln!(s, "  {e:<8} official {o:>7.0} ms -> {x:.2}x");
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
            "(spec §8.2 is at L = 11 text tokens; text-dependent rows scale with --max-text {})",
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
            for o in p.iter().take(12) {
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
    let r = bench(&a)?;
    print!("{}", render(&r));
    if let Some(p) = &a.json {
        let j = serde_json::to_string_pretty(&r)?;
        std::fs::write(p, j).with_context(|| p.display().to_string())?;
        println!("wrote {}", p.display());
    }
    Ok(())
}
