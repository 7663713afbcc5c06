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
    /// Score predictions (J, F, J&F) or run the model over a benchmark and score it.
    Eval(referdino::cli::eval::EvalArgs),
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .target(env_logger::Target::Stderr)
        .init();
    let cli = Cli::parse();
    let result: anyhow::Result<()> = match cli.command {
        Command::Eval(args) => referdino::cli::eval::run(args),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
