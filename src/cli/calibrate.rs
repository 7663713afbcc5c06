//! `referdino calibrate`: run the FP32 engines on the CPU backend over a calibration set, gather
//! per-tensor activation statistics of every tensor that gets an INT8 Q/DQ pair, and write the scale
//! table; with `--report`, also measure FP16 and INT8 agreement with FP32 on the same frames.

use crate::calibration::agreement::AgreementReport;
use crate::calibration::frames::{
    calibration_models, recipe_clips, run_agreement, CalibrationEngines, CALIBRATION_CLIP_FRAMES,
};
use crate::config::ModelConfig;
use crate::engines::EngineProfile;
use crate::error::{Error, Result};
use crate::graph::engines::{ExportOptions, Geometry};
use crate::quant::collect::{sqnr_db, Collector};
use crate::quant::engines::custom_ops_label;
use crate::quant::recipe::{spaced_indices, FrameSource, Recipe};
use crate::quant::ScaleTable;
use crate::weights::Checkpoint;
use std::path::{Path, PathBuf};

/// Arguments of `referdino calibrate`.
#[derive(Debug, Clone, clap::Args)]
pub struct CalibrateArgs {
    /// `--weights`: the FP32 checkpoint run on the CPU backend over the calibration set; `--config`.
    #[command(flatten)]
    pub model: super::args::ModelArgs,
    /// Calibration recipe (`calib/<name>.toml`).
    #[arg(long)]
    pub recipe: PathBuf,
    /// Engine profile whose geometry (size, text length, window) to calibrate at; default: the
    /// recipe's `[geometry]`.
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// Calibrate the decomposed export (standard ONNX only, for runtimes without our plugins); the
    /// table then fits `referdino build --decompose-custom-ops`.
    #[arg(long)]
    pub decompose_custom_ops: bool,
    /// Write the scale table here instead of the recipe's `output`.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Use this existing scale table instead of calibrating (with --report: agreement only).
    #[arg(long)]
    pub scales: Option<PathBuf>,
    /// Also run FP32, FP16 and INT8 (Q/DQ from the table) over the recipe's frames and write their
    /// agreement (mask IoU, J&F, score and box deltas, best track) as JSON to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Number of worst tensors (lowest SQNR) to list in the summary.
    #[arg(long, default_value_t = 8)]
    pub show: usize,
}

fn geometry(args: &CalibrateArgs, recipe: &Recipe) -> Result<Geometry> {
    if let Some(p) = &args.profile {
        let prof = EngineProfile::load(p)?;
        return Ok(Geometry {
            height: prof.height,
            width: prof.width,
            max_text: prof.max_text,
            window: prof.window,
        });
    }
    recipe.geometry.ok_or_else(|| {
        Error::Config(format!(
            "recipe {}: give the export geometry with --profile engines/profiles/<name>.toml or a \
             [geometry] section (height, width, max_text, window): tensor names depend on it",
            recipe.name
        ))
    })
}

fn load_model(args: &CalibrateArgs, runs: usize) -> Result<(Checkpoint, ModelConfig)> {
    let w = args.model.weights.as_ref().ok_or_else(|| {
        Error::Config(format!(
            "calibrating needs the FP32 checkpoint: pass --weights CKPT (the model then runs on the \
             CPU backend over the recipe's {runs} frame×prompt runs)"
        ))
    })?;
    let ck = Checkpoint::load(w)?;
    let cfg = crate::cli::export::resolve_config(args.model.config.as_deref(), &ck)
        .map_err(|e| Error::Config(format!("{e:#}")))?;
    ck.validate(&cfg)?;
    Ok((ck, cfg))
}

/// Runs `referdino calibrate`.
pub fn run(args: CalibrateArgs) -> Result<()> {
    let recipe = Recipe::load(&args.recipe)?;
    if recipe.activations.is_some() {
        return Err(Error::Config(format!(
            "{}: [activations] dumps are not used any more: their names are the PyTorch modules', \
             not the engine tensors that get Q/DQ pairs. Remove the section and pass --weights CKPT",
            args.recipe.display()
        )));
    }
    let root = Path::new(".");
    // Check every frame source up front (listed, not decoded): a recipe that points at nothing
    // fails before any work.
    let mut runs = 0usize;
    for s in &recipe.samples {
        let n = FrameSource::parse(&s.frames, root)?.count()?;
        runs += spaced_indices(n, s.max_frames).len() * s.prompts.len();
    }
    let (ck, cfg) = load_model(&args, runs)?;
    let mut ck = Some(ck);
    let geo = geometry(&args, &recipe)?;
    let opts = ExportOptions {
        taps: false,
        decompose_custom_ops: args.decompose_custom_ops,
    };
    let clips = recipe_clips(&recipe, root, &geo, &cfg, CALIBRATION_CLIP_FRAMES)?;
    let t0 = std::time::Instant::now();
    let (table, out) = match &args.scales {
        Some(p) => (ScaleTable::load(p)?, p.clone()),
        None => {
            let mut c = Collector::new(recipe.bins)?;
            let w = ck
                .take()
                .ok_or_else(|| Error::Other("checkpoint already released".into()))?;
            let models = calibration_models(&w, &cfg, &geo, &opts)?;
            // The models (then the engines) hold their own copy of the weights: the checkpoint's,
            // as large, goes now and is read again for --report.
            drop(w);
            let engines = CalibrationEngines::from_models(models, &cfg)?;
            let (stats, use_max) = engines.collect(&geo, &clips, &mut c)?;
            let n = stats.runs;
            let set = format!(
                "{}: {n} clip×prompt runs, {} frames",
                recipe.describe(),
                clips.iter().map(|c| c.frames.len()).sum::<usize>()
            );
            let mut table = c.scale_table_with(&recipe.model, recipe.method, &set, &use_max)?;
            table.custom_ops = Some(custom_ops_label(&opts).into());
            table.geometry = Some(geo);
            let out = args.out.clone().unwrap_or_else(|| recipe.output.clone());
            table.save(&out)?;
            print_summary(&table, &c, &args, &out)?;
            println!(
                "calibration took {:.1} s on the CPU backend",
                t0.elapsed().as_secs_f64()
            );
            (table, out)
        }
    };
    if let Some(report) = &args.report {
        // Agreement holds no taps: whole windows, as the offline session runs them.
        let clips = recipe_clips(&recipe, root, &geo, &cfg, geo.window)?;
        let ck = match ck {
            Some(ck) => ck,
            None => load_model(&args, runs)?.0,
        };
        let variants = run_agreement(&ck, &cfg, &geo, &table, &out, &clips)?;
        println!("agreement with FP32 on the calibration frames:");
        for v in &variants {
            println!("  {v}");
        }
        let rep = AgreementReport {
            weights: args
                .model
                .weights
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            scales: out.display().to_string(),
            geometry: format!(
                "{}x{}, text {}, window {}",
                geo.height, geo.width, geo.max_text, geo.window
            ),
            variants,
        };
        let json = serde_json::to_string_pretty(&rep).map_err(|e| Error::Other(e.to_string()))?;
        if let Some(d) = report.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
        }
        std::fs::write(report, json + "\n").map_err(|e| Error::io(report, e))?;
        println!("agreement report → {}", report.display());
    }
    Ok(())
}

fn print_summary(
    table: &ScaleTable,
    c: &Collector,
    args: &CalibrateArgs,
    out: &Path,
) -> Result<()> {
    println!(
        "calibrated {} tensors ({}, {}) → {}",
        table.tensors.len(),
        table.method.label(),
        table.calibration_set,
        out.display()
    );
    // Rank tensors by how much INT8 at the chosen scale would cost, using the histogram's bin centres
    // as a stand-in for the data (exact data is gone once binned).
    let mut rows = Vec::new();
    for (name, h) in c.histograms() {
        let scale = table.activation_scale(name)?;
        let w = h.bin_width();
        let mut centres = Vec::new();
        let mut weights = Vec::new();
        for (b, &n) in h.counts().iter().enumerate() {
            if n > 0 {
                centres.push((b as f32 + 0.5) * w);
                weights.push(n as f64);
            }
        }
        let db = weighted_sqnr(&centres, &weights, scale)?;
        rows.push((db, name.clone(), h.max_abs(), scale * 127.0));
    }
    rows.sort_by(|a, b| a.0.total_cmp(&b.0));
    println!(
        "{:>9}  {:>10}  {:>10}  tensor",
        "SQNR dB", "max |x|", "amax"
    );
    for (db, name, max, amax) in rows.iter().take(args.show) {
        println!("{db:>9.1}  {max:>10.4}  {amax:>10.4}  {name}");
    }
    Ok(())
}

fn weighted_sqnr(x: &[f32], w: &[f64], scale: f32) -> Result<f64> {
    // SQNR of one value, weighted by its count; sqnr_db works on unweighted values, so do it directly.
    let mut q = x.to_vec();
    crate::quant::fake_quant(&mut q, scale)?;
    let (mut sig, mut noise) = (0f64, 0f64);
    for ((&a, &b), &n) in x.iter().zip(&q).zip(w) {
        sig += n * (a as f64).powi(2);
        noise += n * ((a - b) as f64).powi(2);
    }
    if x.is_empty() {
        return sqnr_db(&[], scale);
    }
    Ok(if noise == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (sig / noise).log10()
    })
}
