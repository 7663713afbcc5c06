//! The `referdino` command line.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "referdino",
    version,
    about = "ReferDINO referring video object segmentation runtime"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build TensorRT engines for a board profile (engines/profiles/*.toml).
    Build(referdino::cli::build::BuildArgs),
    /// Calibrate INT8 scales from a recipe (calib/*.toml).
    Calibrate(referdino::cli::calibrate::CalibrateArgs),
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .target(env_logger::Target::Stderr)
        .init();
    let cli = Cli::parse();
    let result: anyhow::Result<()> = match cli.command {
        Command::Build(a) => referdino::cli::build::run(a).map_err(Into::into),
        Command::Calibrate(a) => referdino::cli::calibrate::run(a).map_err(Into::into),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
