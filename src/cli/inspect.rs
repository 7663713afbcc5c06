//! `referdino inspect`: what is in a checkpoint and which configuration it fits.

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::weights::inventory::Inventory;
use crate::weights::Checkpoint;
use clap::Args;
use std::path::PathBuf;

/// Arguments of `referdino inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Checkpoint: .safetensors or PyTorch .pth (format detected from the content).
    #[arg(long)]
    pub weights: PathBuf,
    /// Also compare with this config (.json fixture config or official .yaml); with it, a mismatch
    /// is an error listing every missing, unexpected and wrongly shaped tensor.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Print the inventory as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Runs the subcommand.
pub fn run(args: InspectArgs) -> Result<()> {
    let t0 = std::time::Instant::now();
    let ck = Checkpoint::load(&args.weights)?;
    log::info!(
        "loaded {} in {:.1} ms",
        args.weights.display(),
        t0.elapsed().as_secs_f64() * 1e3
    );
    let cfg = args
        .config
        .as_deref()
        .map(ModelConfig::from_file)
        .transpose()?;
    let inv = Inventory::of(&ck, cfg.as_ref());
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&inv).map_err(|e| Error::Other(e.to_string()))?
        );
    } else {
        print!("{}", inv.render());
    }
    if let Some(c) = &cfg {
        ck.validate(c)?;
    }
    Ok(())
}
