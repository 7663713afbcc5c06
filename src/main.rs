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
    /// The main job on the bundled clip and checkpoint: prompt → masks → overlays.
    Demo(referdino::cli::demo::DemoArgs),
    /// The live runtime: a camera, folder, video file or synthetic source → masks every frame
    /// (mask ring, overlays), prompt and mode commands as JSON lines on stdin or a Unix socket.
    Run(referdino::cli::run::RunArgs),
    /// Tokenize a prompt as the model will see it (ids, sub-sentence mask, position ids).
    Tokenize(referdino::cli::tokenize::TokenizeArgs),
    /// Inventory of a checkpoint (.safetensors or .pth): modules, parameters, LoRA, matching config.
    Inspect(referdino::cli::inspect::InspectArgs),
    /// Write the four ONNX engines (text, frame, temporal, head) and a manifest for one geometry.
    Export(referdino::cli::export::ExportArgs),
    /// Run the full network on a fixture directory and compare every stage with the official outputs.
    Parity(referdino::cli::parity::ParityArgs),
    /// Score predictions (J, F, J&F) or run the model over a benchmark and score it.
    Eval(referdino::cli::eval::EvalArgs),
    /// Build TensorRT engines for a board profile (engines/profiles/*.toml).
    Build(referdino::cli::build::BuildArgs),
    /// Calibrate INT8 scales from a recipe (calib/*.toml).
    Calibrate(referdino::cli::calibrate::CalibrateArgs),
    /// Export + CPU latency of the four engines with random weights, GMAC per stage, official figures.
    Bench(referdino::cli::bench::BenchArgs),
    /// Write seeded synthetic referring-video clips (Ref-YouTube-VOS layout) for training and eval.
    Synth(referdino::cli::synth::SynthArgs),
    /// What this machine and build can run: GPU, NVRTC, TensorRT, ONNX Runtime, engines, cameras,
    /// GStreamer, the mask ring's shared memory; and which path `run` takes here.
    Doctor(referdino::cli::doctor::DoctorArgs),
    /// ROS 2 node: camera topic (or any source) + prompt topic/service → mask, detections, status.
    #[cfg(feature = "ros2")]
    Ros2(referdino::cli::ros2::Ros2Args),
}

fn main() {
    // Started as the H.264 decoder process (`--decode isolated`): decode, then exit.
    #[cfg(feature = "video")]
    referdino::camera::isolated::run_worker_if_requested();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .target(env_logger::Target::Stderr)
        .init();
    let cli = Cli::parse();
    let result: anyhow::Result<()> = match cli.command {
        Command::Demo(a) => referdino::cli::demo::run(a),
        Command::Run(a) => referdino::cli::run::run(a),
        Command::Tokenize(a) => referdino::cli::tokenize::run(a).map_err(Into::into),
        Command::Inspect(a) => referdino::cli::inspect::run(a).map_err(Into::into),
        Command::Parity(a) => referdino::cli::parity::run(a),
        Command::Export(a) => referdino::cli::export::run(a),
        Command::Eval(args) => referdino::cli::eval::run(args),
        Command::Build(a) => referdino::cli::build::run(a).map_err(Into::into),
        Command::Calibrate(a) => referdino::cli::calibrate::run(a).map_err(Into::into),
        Command::Bench(a) => referdino::cli::bench::run(a),
        Command::Synth(a) => referdino::cli::synth::run(a),
        Command::Doctor(a) => referdino::cli::doctor::run(a),
        #[cfg(feature = "ros2")]
        Command::Ros2(a) => referdino::cli::ros2::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
