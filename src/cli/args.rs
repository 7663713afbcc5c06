//! Flag groups several commands share, written once and flattened into each command's arguments
//! (`#[command(flatten)]`), so a flag means the same and has the same default everywhere.

use std::path::PathBuf;

/// The model: a checkpoint and its configuration.
#[derive(clap::Args, Debug, Clone, Default, PartialEq)]
pub struct ModelArgs {
    /// Checkpoint (.safetensors or PyTorch .pth, format detected from the content). Live commands
    /// default to the bundled model.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Model configuration: an official .yaml, a fixture config.json, `swin-t` or `swin-b`
    /// (default: the config.json next to the checkpoint, else the official configuration the
    /// checkpoint's tensors match).
    #[arg(long)]
    pub config: Option<String>,
}

/// Where the engines come from and run, and the input geometry they are exported for (the live
/// commands: `run`, `ros2`).
#[derive(clap::Args, Debug, Clone, PartialEq)]
pub struct EngineArgs {
    /// Inference backend: `auto` (per engine, the faster one measured: today ONNX Runtime with our
    /// kernels as custom operators for all four, except INT8 engines on a CPU with AMX, whose frame
    /// and temporal engines run on tract, or with AVX-512 VNNI and no AMX, all four on tract; tract
    /// for all when ONNX Runtime's library does not load;
    /// one log line names each engine's backend), `ort`, `cpu`
    /// (tract, pure Rust), a per-engine mix (`text=ort,frame=ort,temporal=cpu,head=cpu`; engines
    /// left out take `auto`), or `tensorrt` (plans from `--engines`, binary built with the `tensorrt`
    /// feature).
    #[arg(long, default_value = "auto")]
    pub backend: String,
    /// Prebuilt engines (`referdino export` / `referdino build` output with its manifest.json)
    /// instead of exporting from `--weights` at start-up. Their geometry fixes the input size.
    /// Repeat it for cameras of other aspect ratios, one directory per input size (at most 4,
    /// exported from the same weights with the same --window and --max-text): each source runs on
    /// the directory whose geometry equals its resized frames; a source matching none is refused.
    #[arg(long, conflicts_with_all = ["weights", "config"])]
    pub engines: Vec<PathBuf>,
    /// INT8 engines: Q/DQ pairs on the products from this scale table (`referdino calibrate --out
    /// TABLE`: same checkpoint, input size and export form), FP32 elsewhere, run as integer products
    /// by ONNX Runtime and by tract on CPUs with AMX or AVX-512 VNNI (about 2.1-2.3x the FP32 speed
    /// there, attention products included) or the Arm dot product (Orin; its speed not measured yet); elsewhere tract evaluates
    /// the Q/DQ pairs in float. For the engines exported at start-up; an `--engines` directory is
    /// INT8 when exported so (`referdino export --precision int8`).
    #[arg(long, value_name = "TABLE", conflicts_with = "engines")]
    pub int8: Option<PathBuf>,
    /// TensorRT plugin library (libreferdino_plugins.so); searched in the usual places if absent.
    #[arg(long)]
    pub plugins: Option<PathBuf>,
    /// Worker threads of the CPU backend (default: every available core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Temporal window W in frames [default: 36; with --engines, the directory's, which a value
    /// given must equal].
    #[arg(long)]
    pub window: Option<usize>,
    /// Longest prompt in tokens the engines take, special tokens included [default: 32; with
    /// --engines, the directory's, which a value given must equal].
    #[arg(long)]
    pub max_text: Option<usize>,
    /// Shorter side of the model input (360 as in the official evaluation).
    #[arg(long, default_value_t = crate::config::DEFAULT_SHORT_SIDE)]
    pub short_side: u32,
}
