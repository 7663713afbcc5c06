//! `referdino build`: ONNX engines → TensorRT plans for one profile, with a build report and the
//! equivalent `trtexec` lines.

use crate::engines::profile::{EngineKind, EngineProfile};
use crate::engines::trtexec;
use crate::error::{Error, Result};
use crate::quant::{Precision, ScaleTable};
use std::path::{Path, PathBuf};

/// Arguments of `referdino build`.
#[derive(Debug, Clone, clap::Args)]
pub struct BuildArgs {
    /// Checkpoint to export (.pth or .safetensors). Needs the ONNX exporter; see --onnx.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Engine profile (engines/profiles/<board>-<backbone>-<precision>.toml).
    #[arg(long)]
    pub profile: PathBuf,
    /// Output directory for plans, sidecars, layer info and the build report.
    #[arg(long)]
    pub out: PathBuf,
    /// Directory of already exported engines (text.onnx, frame.onnx, temporal.onnx, head.onnx).
    #[arg(long)]
    pub onnx: Option<PathBuf>,
    /// Plugin library (libreferdino_plugins.so); searched in target/release, next to the binary and
    /// /usr/local/lib/referdino when absent.
    #[arg(long)]
    pub plugins: Option<PathBuf>,
    /// Only print (and write OUT/trtexec.sh) the equivalent trtexec commands.
    #[arg(long)]
    pub dry_run: bool,
}

/// Where the plugin library is looked for when `--plugins` is not given.
pub fn plugin_candidates() -> Vec<PathBuf> {
    let mut v = vec![PathBuf::from("target/release/libreferdino_plugins.so")];
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        v.push(dir.join("libreferdino_plugins.so"));
    }
    v.push(PathBuf::from(
        "/usr/local/lib/referdino/libreferdino_plugins.so",
    ));
    v
}

fn plugin_path(explicit: &Option<PathBuf>) -> PathBuf {
    explicit.clone().unwrap_or_else(|| {
        let c = plugin_candidates();
        c.iter()
            .find(|p| p.exists())
            .cloned()
            .unwrap_or_else(|| c[0].clone())
    })
}

/// Runs `referdino build`.
pub fn run(args: BuildArgs) -> Result<()> {
    let profile = EngineProfile::load(&args.profile)?;
    if profile.precision == Precision::Int8 {
        // The Q/DQ scales are baked into the ONNX at export; check the table is there and valid now so a
        // long build does not start from a bad table.
        if let Some(s) = &profile.scales {
            if args.onnx.is_none() || s.exists() {
                ScaleTable::load(s).map_err(|e| {
                    Error::Config(format!(
                        "profile {} needs scale table {}: {e} (run `referdino calibrate`)",
                        profile.name,
                        s.display()
                    ))
                })?;
            }
        }
    }
    let onnx_dir = match (&args.onnx, &args.weights) {
        (Some(d), _) => d.clone(),
        (None, Some(w)) if !args.dry_run => {
            return Err(Error::Config(format!(
            "exporting ONNX from {} is not available in this build yet (referdino::graph has no \
                 export_engines); export the engines first and pass --onnx DIR",
            w.display()
        )))
        }
        (None, Some(_)) => args.out.clone(),
        (None, None) => {
            return Err(Error::Config(
                "give --onnx DIR (exported engines) or --weights CHECKPOINT".into(),
            ))
        }
    };
    std::fs::create_dir_all(&args.out).map_err(|e| Error::io(&args.out, e))?;
    let plugins = plugin_path(&args.plugins);
    let script = trtexec::script(&profile, &onnx_dir, &args.out, &plugins);
    let script_path = args.out.join("trtexec.sh");
    std::fs::write(&script_path, format!("#!/bin/sh\nset -e\n{script}"))
        .map_err(|e| Error::io(&script_path, e))?;
    println!("{script}");
    if args.dry_run {
        return Ok(());
    }
    let missing = missing_onnx(&profile, &onnx_dir);
    if !missing.is_empty() {
        let names: Vec<String> = missing.iter().map(|k| k.onnx_file()).collect();
        return Err(Error::Config(format!(
            "profile {} needs {} in {}, not found",
            profile.name,
            names.join(", "),
            onnx_dir.display()
        )));
    }
    build_all(&profile, &onnx_dir, &args.out, &plugins)
}

#[cfg(feature = "tensorrt")]
fn build_all(profile: &EngineProfile, onnx_dir: &Path, out: &Path, plugins: &Path) -> Result<()> {
    use crate::backend::tensorrt::{build, library_version, load_plugin_library};
    use crate::engines::plan_info::version_string;
    use crate::engines::report::BuildReport;
    use indicatif::{ProgressBar, ProgressStyle};

    load_plugin_library(plugins)?;
    let bar = ProgressBar::new(profile.engines.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .map_err(|e| Error::Other(format!("progress bar: {e}")))?
            .progress_chars("=> "),
    );
    let mut report = BuildReport {
        profile: profile.name.clone(),
        tensorrt: version_string(library_version()),
        device: build::device_description(),
        engines: Vec::new(),
    };
    for &kind in &profile.engines {
        let name = kind.as_str();
        bar.set_message(format!("{name}: starting"));
        let mut on_progress = |phase: &str, step: i32, nb: i32| match step {
            -1 => bar.set_message(format!("{name}: {phase} (0/{nb})")),
            -2 => {}
            s => bar.set_message(format!("{name}: {phase} ({})", s + 1)),
        };
        let r = build::build_engine(
            profile,
            kind,
            &onnx_dir.join(kind.onnx_file()),
            &out.join(kind.plan_file()),
            None,
            &mut on_progress,
        )?;
        bar.inc(1);
        report.engines.push(r);
    }
    bar.finish_with_message("done");
    let path = out.join("build-report.json");
    std::fs::write(&path, report.to_json()? + "\n").map_err(|e| Error::io(&path, e))?;
    println!("{report}");
    Ok(())
}

#[cfg(not(feature = "tensorrt"))]
fn build_all(_profile: &EngineProfile, _onnx: &Path, _out: &Path, _plugins: &Path) -> Result<()> {
    Err(Error::Backend(
        "this referdino was built without the `tensorrt` feature: rebuild on the Jetson with \
         `cargo build --release --features tensorrt`, or run the trtexec commands printed above"
            .into(),
    ))
}

/// Engines of a profile whose ONNX is missing from `dir` (for a friendlier error before building).
pub fn missing_onnx(profile: &EngineProfile, dir: &Path) -> Vec<EngineKind> {
    profile
        .engines
        .iter()
        .copied()
        .filter(|k| !dir.join(k.onnx_file()).exists())
        .collect()
}
