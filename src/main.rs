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
enum Command {}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .target(env_logger::Target::Stderr)
        .init();
    let cli = Cli::parse();
    let result: anyhow::Result<()> = match cli.command {};
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
