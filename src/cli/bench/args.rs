//! The flags of `referdino bench`, and the checks both benchmarks (engines one by one, and
//! `--objects`/`--streams`) run on them before anything is built.

use crate::config::ModelConfig;
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};

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
    /// Also time the INT8 engines (native export, Q/DQ from this scale table, FP32 elsewhere) on each
    /// backend timed (tract: products on our integer kernel where the CPU has AMX, AVX-512 VNNI or
    /// the Arm dot product;
    /// ONNX Runtime), beside the FP32 ones: calibrate the same random weights first (`cargo run --example
    /// random_checkpoint -- swin-t CKPT SEED`, then `referdino calibrate --weights CKPT --out TABLE` at
    /// this geometry; benches/README.md, "INT8 on the CPU").
    #[arg(long, value_name = "TABLE", conflicts_with = "int8_self")]
    pub int8: Option<PathBuf>,
    /// `--int8` with a table calibrated first on the bench's own image and prompt (percentile 99.99, a
    /// few seconds at Swin-T): one command for timing; scales from one frame say nothing of accuracy.
    #[arg(long)]
    pub int8_self: bool,
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
    /// Run matrix products by a weight and convolutions with tract's own kernels instead of ours
    /// (which run on x86-64 with AVX2 + FMA only), for before/after comparisons.
    #[arg(long)]
    pub tract_matmul: bool,
    /// Run broadcasting f32 additions with tract's own operator instead of ours, for before/after
    /// comparisons.
    #[arg(long)]
    pub tract_add: bool,
    /// Run sines, cosines and exact GELUs with tract's own element-wise operators instead of ours,
    /// for before/after comparisons.
    #[arg(long)]
    pub tract_unary: bool,
    /// Give every intermediate tensor fresh memory, as tract does, instead of reusing the large
    /// buffers our ops free (the CPU backend's buffer pool), for before/after comparisons.
    #[arg(long)]
    pub no_pool: bool,
    /// Keep every transpose (`MoveAxis`) as tract's copy instead of folding it into our products
    /// or running our tiled transpose, every product read through slices whole (Swin's qkv), and
    /// slices and concatenations as tract's copies, for before/after comparisons.
    #[arg(long)]
    pub tract_transpose: bool,
    /// Keep tract's own evaluation order instead of running a multiply-read tensor's in-place
    /// reader after its other readers (which spares that reader a copy), for before/after
    /// comparisons.
    #[arg(long)]
    pub tract_order: bool,
    /// With `--int8`/`--int8-self`: tract computes the INT8 engines' Q/DQ pairs in float instead of
    /// running their products on our integer kernel (AMX, AVX-512 VNNI or the Arm dot product), for
    /// before/after comparisons.
    #[arg(long)]
    pub float_int8: bool,
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

pub(super) fn resolve_config(spec: &str) -> anyhow::Result<ModelConfig> {
    Ok(match spec {
        "swin-t" | "swin_t" => ModelConfig::swin_t(),
        "swin-b" | "swin_b" => ModelConfig::swin_b(),
        p => ModelConfig::from_file(Path::new(p))
            .with_context(|| format!("--config {p}: not swin-t, swin-b or a readable config"))?,
    })
}

/// The flags both benchmarks (engines one by one, and `--objects`/`--streams`) size memory and
/// work by, checked before anything is built.
pub(super) fn check_sizes(a: &BenchArgs, cfg: &crate::config::ModelConfig) -> anyhow::Result<()> {
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
