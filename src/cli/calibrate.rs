//! `referdino calibrate`: per-tensor activation statistics over a calibration set → INT8 scale table.

use crate::error::{Error, Result};
use crate::quant::collect::{collect_from_safetensors, sqnr_db, Collector};
use crate::quant::recipe::{spaced_indices, FrameSource, Recipe};
use crate::quant::ScaleTable;
use std::path::{Path, PathBuf};

/// Arguments of `referdino calibrate`.
#[derive(Debug, Clone, clap::Args)]
pub struct CalibrateArgs {
    /// FP32 checkpoint to run on the CPU backend over the calibration set.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Calibration recipe (calib/<name>.toml).
    #[arg(long)]
    pub recipe: PathBuf,
    /// Write the scale table here instead of the recipe's `output`.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Number of worst tensors (lowest SQNR) to list in the summary.
    #[arg(long, default_value_t = 8)]
    pub show: usize,
}

/// Runs `referdino calibrate`.
pub fn run(args: CalibrateArgs) -> Result<()> {
    let recipe = Recipe::load(&args.recipe)?;
    let root = Path::new(".");
    // Check every frame source up front: a recipe that points at nothing fails before any work.
    let mut frames = 0usize;
    for s in &recipe.samples {
        let src = FrameSource::parse(&s.frames, root)?;
        let imgs = src.load()?;
        frames += spaced_indices(imgs.len(), s.max_frames).len() * s.prompts.len();
    }
    let collector = if let Some(dump) = &recipe.activations {
        collect_from_safetensors(&root.join(&dump.file), &dump.include, recipe.bins)?
    } else {
        let w = args
            .weights
            .as_ref()
            .map(|w| w.display().to_string())
            .unwrap_or_else(|| "(no --weights)".into());
        return Err(Error::Config(format!(
            "calibrating from frames needs the FP32 network on the CPU backend, which this build does \
             not have yet (checkpoint {w}, {frames} frame×prompt runs in the recipe). Give the recipe an \
             [activations] dump instead"
        )));
    };
    let table = collector.scale_table(&recipe.model, recipe.method, &recipe.describe())?;
    let out = args.out.clone().unwrap_or_else(|| recipe.output.clone());
    table.save(&out)?;
    print_summary(&table, &collector, &args, &out)?;
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
