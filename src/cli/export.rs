//! `referdino export`: write the four ONNX engines and their manifest for one geometry.

use crate::graph::engines::{ExportOptions, Geometry};
use crate::graph::export::export_engines;
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
}

pub use crate::pipeline::live::engines::resolve_config;

/// CLI entry.
pub fn run(a: ExportArgs) -> anyhow::Result<()> {
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
    if a.max_text < 3 || a.max_text > cfg.max_text_len {
        bail!("--max-text must be between 3 and {}", cfg.max_text_len);
    }
    let opts = ExportOptions {
        taps: a.taps,
        decompose_custom_ops: a.decompose_custom_ops,
    };
    let t0 = std::time::Instant::now();
    let m = export_engines(&ck, &cfg, &geo, &opts, &a.out)?;
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
        "exported {} engines ({} custom ops) in {:.1} s; manifest {}",
        m.engines.len(),
        m.custom_ops,
        t0.elapsed().as_secs_f64(),
        a.out.join("manifest.json").display()
    );
    if a.objects {
        if a.taps {
            bail!("--objects cannot be combined with --taps (the object engines carry no parity taps)");
        }
        let t0 = std::time::Instant::now();
        let p = crate::graph::engines::NetParams::new(&cfg, &geo)?;
        let es = crate::graph::object_engines::build_object_engines(&ck, &p, &geo, &opts)?;
        let dir = a.out.join(crate::pipeline::engine_dir::OBJECTS_SUBDIR);
        let om = crate::graph::object_engines::write_object_engines(&es, &geo, &dir)?;
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
