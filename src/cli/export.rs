//! `referdino export`: write the four ONNX engines and their manifest for one geometry.

use crate::graph::engines::{ExportOptions, Geometry};
use crate::graph::export::export_engines;
use crate::limits::{check_input_size, check_range, MAX_WINDOW, MIN_MAX_TEXT};
use crate::onnx::precision::Precision;
use crate::quant::engines::{export_objects_with_precision, export_with_precision};
use crate::quant::ScaleTable;
use crate::text::MAX_TEXT_LEN;
use crate::weights::Checkpoint;
use anyhow::{bail, Context};
use std::path::PathBuf;

/// Arguments of `referdino export`.
#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// Checkpoint (.pth or .safetensors).
    #[arg(long)]
    pub weights: PathBuf,
    /// Model configuration (official .yaml, fixture config.json, or `swin-t` / `swin-b`); default: the
    /// official configuration the checkpoint matches.
    #[arg(long)]
    pub config: Option<String>,
    /// Model input height (frames are resized so their shorter side is 360 by default).
    #[arg(long, default_value_t = crate::config::DEFAULT_SHORT_SIDE as usize)]
    pub height: usize,
    /// Model input width.
    #[arg(long, default_value_t = 640)]
    pub width: usize,
    /// Max text length in tokens (special tokens included).
    #[arg(long, default_value_t = crate::config::DEFAULT_MAX_TEXT)]
    pub max_text: usize,
    /// Temporal window in frames.
    #[arg(long, default_value_t = crate::config::DEFAULT_WINDOW)]
    pub window: usize,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Emit the custom ops as standard ONNX (GridSample, TopK, ...) for runtimes without our plugins.
    #[arg(long)]
    pub decompose_custom_ops: bool,
    /// Add every intermediate stage as an extra output (parity debugging).
    #[arg(long)]
    pub taps: bool,
    /// Also write the object engine set into OUT/objects/: `image` (once per frame) and `cross`,
    /// `temporal`, `head` with a symbolic leading object axis (`run --engines OUT --cross-batch B`
    /// loads them at B objects per run; engines/README.md).
    #[arg(long)]
    pub objects: bool,
    /// `fp32` (default) or `int8`: Q/DQ pairs on the inputs of the products from a scale table
    /// (`--scales`, written by `referdino calibrate` for this export form and geometry), FP32 elsewhere,
    /// the form ONNX Runtime runs in integers on a CPU (`run --engines OUT --backend ort`). TensorRT's
    /// FP16 and INT8 engines come from `referdino build`.
    #[arg(long, default_value = "fp32")]
    pub precision: String,
    /// Scale table for `--precision int8` (`referdino calibrate --out TABLE`).
    #[arg(long)]
    pub scales: Option<PathBuf>,
}

pub use crate::pipeline::live::engines::resolve_config;

/// Refuses flag values outside their ranges ([`crate::limits`]) before the checkpoint is read or
/// `--out` is created, so a bad value leaves nothing behind.
pub fn check_flags(a: &ExportArgs) -> anyhow::Result<()> {
    check_input_size("--height/--width", a.height, a.width)?;
    check_range("--window", a.window, 1, MAX_WINDOW)?;
    check_range("--max-text", a.max_text, MIN_MAX_TEXT, MAX_TEXT_LEN)?;
    if a.objects && a.taps {
        bail!("--objects cannot be combined with --taps (the object engines carry no parity taps)");
    }
    match (precision(a)?, &a.scales) {
        (Precision::Int8, None) => bail!(
            "--precision int8 needs --scales TABLE (write one with `referdino calibrate --out TABLE` \
             for this checkpoint, geometry and export form)"
        ),
        (Precision::Int8, Some(_)) if a.taps => {
            bail!("--precision int8 cannot be combined with --taps (parity taps are FP32 stages)")
        }
        (Precision::Fp32, Some(_)) => bail!("--scales is only for --precision int8"),
        _ => {}
    }
    Ok(())
}

/// `--precision`: FP32 or INT8 (the host form); FP16 is a TensorRT precision.
fn precision(a: &ExportArgs) -> anyhow::Result<Precision> {
    match a.precision.parse::<Precision>() {
        Ok(p @ (Precision::Fp32 | Precision::Int8)) => Ok(p),
        Ok(Precision::Fp16) => bail!(
            "--precision fp16: FP16 engines are for TensorRT (`referdino build` with an fp16 profile); \
             the CPU backends run fp32 or int8"
        ),
        Err(e) => bail!("--precision: {e}"),
    }
}

/// CLI entry.
pub fn run(a: ExportArgs) -> anyhow::Result<()> {
    check_flags(&a)?;
    let ck = Checkpoint::load(&a.weights)?;
    let cfg = resolve_config(a.config.as_deref(), &ck)?;
    ck.validate(&cfg)
        .context("checkpoint does not fit the configuration")?;
    let geo = Geometry {
        height: a.height,
        width: a.width,
        max_text: a.max_text,
        window: a.window,
    };
    // The model-dependent limits; still before `export_engines` creates `--out`.
    check_range("--max-text", a.max_text, MIN_MAX_TEXT, cfg.max_text_len)?;
    crate::graph::engines::check_enough_tokens(&cfg, a.height, a.width, "--height/--width")?;
    let opts = ExportOptions {
        taps: a.taps,
        decompose_custom_ops: a.decompose_custom_ops,
    };
    let precision = precision(&a)?;
    let table = match &a.scales {
        Some(p) => Some((ScaleTable::load(p)?, p.clone())),
        None => None,
    };
    let t0 = std::time::Instant::now();
    let m = match precision {
        Precision::Fp32 => export_engines(&ck, &cfg, &geo, &opts, &a.out)?,
        _ => {
            let (m, applied) = export_with_precision(
                &ck,
                &cfg,
                &geo,
                &opts,
                precision,
                table.as_ref().map(|(t, p)| (t, p.as_path())),
                false,
                &a.out,
            )?;
            for ap in &applied {
                log::info!(
                    "{}: {} weight + {} activation Q/DQ pairs",
                    ap.engine,
                    ap.weight_pairs,
                    ap.activation_pairs
                );
            }
            m
        }
    };
    for e in &m.engines {
        println!(
            "{:<9} {:>6} nodes {:>9.1} MiB  {}",
            e.name,
            e.nodes,
            e.bytes as f64 / 1048576.0,
            a.out.join(&e.file).display()
        );
    }
    println!(
        "exported {} {precision} engines ({} custom ops) in {:.1} s; manifest {}",
        m.engines.len(),
        m.custom_ops,
        t0.elapsed().as_secs_f64(),
        a.out.join("manifest.json").display()
    );
    if a.objects {
        let t0 = std::time::Instant::now();
        let dir = a.out.join(crate::pipeline::engine_dir::OBJECTS_SUBDIR);
        let om = export_objects_with_precision(
            &ck,
            &cfg,
            &geo,
            &opts,
            precision,
            table.as_ref().map(|(t, _)| t),
            false,
            &m,
            &dir,
        )?;
        println!(
            "exported the object engines ({}; `{}` axis on {}) in {:.1} s into {}",
            om.files.join(", "),
            om.axis,
            om.batched.join(", "),
            t0.elapsed().as_secs_f64(),
            dir.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Only {
        #[command(flatten)]
        args: ExportArgs,
    }

    fn args(extra: &[&str]) -> ExportArgs {
        let base = ["export", "--weights", "w.safetensors", "--out", "out"];
        Only::parse_from(base.iter().chain(extra)).args
    }

    #[test]
    fn out_of_range_geometry_is_refused_by_name() {
        assert!(check_flags(&args(&[])).is_ok());
        for (extra, want) in [
            (
                &["--height", "100000", "--width", "100000"][..],
                "--height/--width 100000x100000",
            ),
            (&["--height", "0"][..], "--height/--width 0x640"),
            (
                &["--height", "1", "--width", "1"][..],
                "--height/--width 1x1",
            ),
            (
                &["--window", "0"][..],
                "--window 0: must be between 1 and 1024",
            ),
            (
                &["--max-text", "2"][..],
                "--max-text 2: must be between 3 and 256",
            ),
            (
                &["--precision", "int8"][..],
                "--precision int8 needs --scales",
            ),
            (
                &["--precision", "fp16"][..],
                "--precision fp16: FP16 engines are for TensorRT",
            ),
            (&["--precision", "bf16"][..], "--precision: "),
            (
                &["--scales", "t.json"][..],
                "--scales is only for --precision int8",
            ),
            (
                &["--precision", "int8", "--scales", "t.json", "--taps"][..],
                "--precision int8 cannot be combined with --taps",
            ),
        ] {
            let e = check_flags(&args(extra)).unwrap_err().to_string();
            assert!(e.starts_with(want), "{extra:?}: {e}");
        }
    }
}
