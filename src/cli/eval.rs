//! `referdino eval`: score existing predictions (`--pred DIR --gt DIR`) or run the model over a
//! benchmark (`--dataset KIND --root DIR`) and score it.

use std::path::PathBuf;

use anyhow::{bail, Context};

use crate::limits::{check_range, MAX_SHORT_SIDE, MAX_THREADS, MAX_WINDOW, MIN_SHORT_SIDE};

use crate::eval::davis_protocol::{evaluate_ref_davis, evaluate_unsupervised};
use crate::eval::{
    dirs::score_dirs, run_dataset, shift_predictor, Dataset, DatasetKind, RunOptions,
    VideoPredictor,
};

/// Temporal processing mode of the model run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Whole video at once.
    Offline,
    /// Frame by frame and causal, as the live runtime: window of the last `--window` frames,
    /// running-mean selection.
    Streaming,
}

/// Stand-in predictors for checking a dataset, its layout and the scoring without a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FakePredictor {
    /// Answers with the ground truth (every score must be 1).
    GroundTruth,
    /// Answers with the ground truth shifted one pixel right.
    Shifted,
}

/// Arguments of `referdino eval`.
#[derive(Debug, Clone, clap::Args)]
pub struct EvalArgs {
    /// Benchmark layout to run over.
    #[arg(long, value_enum, requires = "root", conflicts_with_all = ["pred", "gt"])]
    pub dataset: Option<DatasetKind>,
    /// Benchmark root folder.
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// Split to run (MeViS: valid_u has ground truth).
    #[arg(long, default_value = "valid")]
    pub split: String,
    /// Model checkpoint (.pth or .safetensors); its engines are exported at start-up.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Model configuration for --weights (official .yaml, fixture config.json, or `swin-t` /
    /// `swin-b`); default: the official configuration the checkpoint matches, else a config.json
    /// next to it.
    #[arg(long, requires = "weights")]
    pub config: Option<String>,
    /// Inference backend: `auto` (per engine, ONNX Runtime or tract as measured faster; tract when
    /// ONNX Runtime's library does not load), `ort` (ONNX Runtime), `cpu` (tract) or a per-engine mix
    /// (`text=ort,frame=ort,temporal=cpu,head=cpu`).
    #[arg(long, default_value = "auto")]
    pub backend: String,
    /// Threads per engine (default: every available core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Run INT8 engines: Q/DQ pairs from this scale table (`referdino calibrate --out TABLE`, same
    /// checkpoint, frame size and export form), FP32 elsewhere, integer products (ONNX Runtime; tract
    /// with AMX, AVX-512 VNNI or the Arm dot product).
    #[arg(long, value_name = "TABLE", requires = "weights")]
    pub int8: Option<PathBuf>,
    /// Offline (whole clip, as the official evaluation) or streaming (frame by frame and causal, as
    /// the live runtime: temporal window of the last `--window` frames, running-mean selection).
    #[arg(long, value_enum, default_value = "offline")]
    pub mode: Mode,
    /// Window length in frames for `--mode streaming` (offline mode always uses the whole clip).
    #[arg(long)]
    pub window: Option<usize>,
    /// Frames are resized so that their shorter side has this many pixels before the model sees them
    /// (360 in the official evaluation; a model trained at another scale, such as the synthetic one
    /// of `tools/train/`, is scored at its training scale).
    #[arg(long, default_value_t = crate::config::DEFAULT_SHORT_SIDE)]
    pub short_side: u32,
    /// Stop after this many expressions.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Folder of predicted masks: one folder per sequence, one PNG per frame.
    #[arg(long)]
    pub pred: Option<PathBuf>,
    /// Folder of ground-truth masks, same layout as `--pred`. For agreement between two of our own
    /// runs (offline vs streaming, FP32 vs INT8), pass the reference run's masks here.
    #[arg(long, requires = "pred")]
    pub gt: Option<PathBuf>,
    /// Score `--pred` with the official Ref-DAVIS17 protocol against this DAVIS folder
    /// (ImageSets/2017, Annotations_unsupervised/480p): `--pred` holds anno_0..anno_3, or is one
    /// annotator's folder of sequences.
    #[arg(long, requires = "pred", conflicts_with = "gt")]
    pub davis_root: Option<PathBuf>,
    /// DAVIS subset for `--davis-root`.
    #[arg(long, default_value = "val")]
    pub davis_subset: String,
    /// Output folder (report.json, report.csv, predicted masks).
    #[arg(long)]
    pub out: PathBuf,
    /// Replace the model by a stand-in (checks data and scoring without weights).
    #[arg(long, value_enum, hide = true)]
    pub fake_predictor: Option<FakePredictor>,
    /// Hide the progress bar.
    #[arg(long)]
    pub quiet: bool,
}

/// Runs the command.
pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    run_with(args, None)
}

/// Runs the command with a caller-supplied predictor for `--dataset` runs (the inference session).
pub fn run_with(args: EvalArgs, predictor: Option<&mut dyn VideoPredictor>) -> anyhow::Result<()> {
    if let (Some(pred), Some(davis)) = (&args.pred, &args.davis_root) {
        // Scored before the output folder is made: wrong inputs leave nothing behind.
        let (json, g) = if pred.join("anno_0").is_dir() {
            let r = evaluate_ref_davis(davis, pred, &args.davis_subset)?;
            (serde_json::to_string_pretty(&r)?, r.average)
        } else {
            let r = evaluate_unsupervised(davis, pred, &args.davis_subset)?;
            (serde_json::to_string_pretty(&r)?, r.global)
        };
        std::fs::create_dir_all(&args.out)?;
        let path = args.out.join("davis_report.json");
        std::fs::write(&path, json)?;
        println!(
            "DAVIS protocol: J&F {:.4}  J {:.4} (recall {:.4}, decay {:.4})  F {:.4} (recall {:.4}, decay {:.4})",
            g.JF_mean, g.J_mean, g.J_recall, g.J_decay, g.F_mean, g.F_recall, g.F_decay
        );
        println!("report: {}", path.display());
        return Ok(());
    }
    if args.pred.is_some() != args.gt.is_some() {
        bail!("--pred needs --gt (or --davis-root), and --gt needs --pred");
    }
    if let (Some(pred), Some(gt)) = (&args.pred, &args.gt) {
        let report = score_dirs(pred, gt)
            .with_context(|| format!("scoring {} against {}", pred.display(), gt.display()))?;
        report.write(&args.out)?;
        println!("{}", report.headline());
        println!("report: {}", args.out.join("report.json").display());
        return Ok(());
    }
    let (Some(kind), Some(root)) = (args.dataset, &args.root) else {
        bail!("give either --pred DIR --gt DIR, or --dataset KIND --root DIR");
    };
    if args.mode == Mode::Streaming && args.window.is_none() {
        bail!("--mode streaming needs --window W");
    }
    if let Some(w) = args.window {
        check_range("--window", w, 1, MAX_WINDOW)?;
    }
    if args.limit == Some(0) {
        bail!("--limit must be at least 1 (an evaluation of nothing has no score)");
    }
    if let Some(t) = args.threads {
        check_range("--threads", t, 1, MAX_THREADS)?;
    }
    check_range(
        "--short-side",
        args.short_side,
        MIN_SHORT_SIDE,
        MAX_SHORT_SIDE,
    )?;
    let ds = Dataset::open(kind, root, &args.split)?;
    let opts = RunOptions {
        out: args.out.clone(),
        limit: args.limit,
        progress: !args.quiet,
    };
    let mut fake;
    let mut model;
    let mut stream_model;
    let predictor: &mut dyn VideoPredictor = match (args.fake_predictor, predictor) {
        (Some(f), _) => {
            let (dx, dy) = match f {
                FakePredictor::GroundTruth => (0, 0),
                FakePredictor::Shifted => (1, 0),
            };
            fake = shift_predictor(&ds, dx, dy)?;
            &mut fake
        }
        (None, Some(p)) => p,
        (None, None) => {
            let Some(w) = &args.weights else {
                bail!("--dataset runs need --weights W");
            };
            let backend = crate::pipeline::engine_dir::BackendKind::parse(&args.backend)?;
            if backend == crate::pipeline::engine_dir::BackendKind::TensorRt {
                bail!("--backend tensorrt: evaluation runs on the host backends (cpu, ort, auto)");
            }
            let ck = crate::weights::Checkpoint::load(w)?;
            let cfg = crate::cli::export::resolve_config(args.config.as_deref(), &ck)?;
            let int8 = args
                .int8
                .as_deref()
                .map(crate::quant::engines::HostInt8::load)
                .transpose()?;
            let sel = if kind == DatasetKind::Mevis {
                crate::pipeline::post::Selection::Multi { threshold: 0.2 }
            } else {
                crate::pipeline::post::Selection::Single
            };
            match (args.mode, args.window) {
                (Mode::Streaming, Some(w)) => {
                    stream_model =
                        crate::pipeline::predictor::StreamPredictor::new(ck, cfg, sel, w)?
                            .with_backend(backend, args.threads)
                            .with_short_side(args.short_side)
                            .with_int8(int8);
                    &mut stream_model
                }
                _ => {
                    model = crate::pipeline::predictor::SessionPredictor::new(ck, cfg, sel)?
                        .with_backend(backend, args.threads)
                        .with_short_side(args.short_side)
                        .with_int8(int8);
                    &mut model
                }
            }
        }
    };
    let out = run_dataset(&ds, predictor, &opts)?;
    println!(
        "{} expressions; predictions in {}",
        out.expressions,
        out.predictions.display()
    );
    if let Some(r) = &out.report {
        println!("{}", r.headline());
        println!("report: {}", args.out.join("report.json").display());
    }
    Ok(())
}
