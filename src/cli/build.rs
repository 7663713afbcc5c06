//! `referdino build`: checkpoint → four ONNX engines at the profile's geometry and precision (FP16:
//! strongly typed casts; INT8: explicit Q/DQ from the profile's scale table, FP16 elsewhere) → TensorRT
//! plans, with a build report and the equivalent `trtexec` lines. Without the `tensorrt` feature the
//! ONNX export still happens and the `trtexec` lines are printed for use on the board.

use crate::engines::profile::{Backbone, EngineKind, EngineProfile};
use crate::engines::trtexec;
use crate::error::{Error, Result};
use crate::graph::engines::{ExportOptions, Geometry};
use crate::quant::engines::export_with_precision;
use crate::quant::{Precision, ScaleTable};
use crate::weights::Checkpoint;
use std::path::{Path, PathBuf};

/// Arguments of `referdino build`.
#[derive(Debug, Clone, clap::Args)]
pub struct BuildArgs {
    /// `--weights`: the checkpoint whose engines are exported at the profile's geometry and
    /// precision into --out, then built; `--config`.
    #[command(flatten)]
    pub model: super::args::ModelArgs,
    /// Export the custom ops as standard ONNX (GridSample, TopK, ...) for runtimes without our plugins
    /// (ONNX Runtime); an INT8 table must then be calibrated with the same flag.
    #[arg(long)]
    pub decompose_custom_ops: bool,
    /// Engine profile (`engines/profiles/<board>-<backbone>-<precision>.toml`).
    #[arg(long)]
    pub profile: PathBuf,
    /// Output directory for plans, sidecars, layer info and the build report.
    #[arg(long)]
    pub out: PathBuf,
    /// Directory of already exported engines (text.onnx, frame.onnx, temporal.onnx, head.onnx), instead
    /// of --weights.
    #[arg(long)]
    pub onnx: Option<PathBuf>,
    /// Plugin library (libreferdino_plugins.so); searched in target/release, next to the binary and
    /// /usr/local/lib/referdino when absent.
    #[arg(long)]
    pub plugins: Option<PathBuf>,
    /// Only print (and write OUT/trtexec.sh) the equivalent trtexec commands (with --onnx, the export's
    /// manifests are still copied into OUT, where `referdino run --engines` reads them).
    #[arg(long)]
    pub dry_run: bool,
}

pub use crate::backend::plugin_search::plugin_candidates;

fn plugin_path(explicit: &Option<PathBuf>) -> PathBuf {
    explicit.clone().unwrap_or_else(|| {
        let c = plugin_candidates();
        c.iter()
            .find(|p| p.exists())
            .cloned()
            .unwrap_or_else(|| c[0].clone())
    })
}

/// The scale table of an INT8 profile, loaded and validated, or an error naming `referdino calibrate`.
fn int8_table(profile: &EngineProfile) -> Result<Option<(ScaleTable, PathBuf)>> {
    if profile.precision != Precision::Int8 {
        return Ok(None);
    }
    let s = profile.scales.as_ref().ok_or_else(|| {
        Error::Config(format!(
            "profile {} is int8 but names no `scales` table (run `referdino calibrate`)",
            profile.name
        ))
    })?;
    let t = ScaleTable::load(s).map_err(|e| {
        Error::Config(format!(
            "profile {} needs scale table {}: {e} (run `referdino calibrate --weights CKPT --recipe \
             calib/<name>.toml --profile {}.toml`)",
            profile.name,
            s.display(),
            profile.name
        ))
    })?;
    Ok(Some((t, s.clone())))
}

/// Geometry of a profile.
pub fn profile_geometry(p: &EngineProfile) -> Geometry {
    Geometry {
        height: p.height,
        width: p.width,
        max_text: p.max_text,
        window: p.window,
    }
}

/// Exports the four engines for `profile` from a checkpoint into `out` (ONNX + manifest).
pub fn export_for_profile(
    args: &BuildArgs,
    profile: &EngineProfile,
    weights: &Path,
    table: Option<&(ScaleTable, PathBuf)>,
) -> Result<()> {
    let ck = Checkpoint::load(weights)?;
    let cfg = crate::cli::export::resolve_config(args.model.config.as_deref(), &ck)
        .map_err(|e| Error::Config(format!("{e:#}")))?;
    ck.validate(&cfg)?;
    let want = match profile.backbone {
        Backbone::SwinT => "swin_t",
        Backbone::SwinB => "swin_b",
    };
    if !cfg.backbone.to_ascii_lowercase().starts_with(want) {
        return Err(Error::Config(format!(
            "profile {} is for {} but the checkpoint's configuration has backbone {}",
            profile.name,
            profile.backbone.as_str(),
            cfg.backbone
        )));
    }
    let geo = profile_geometry(profile);
    if geo.max_text > cfg.max_text_len {
        return Err(Error::Config(format!(
            "profile {}: max_text {} exceeds the model's max_text_len {}",
            profile.name, geo.max_text, cfg.max_text_len
        )));
    }
    let opts = ExportOptions {
        taps: false,
        decompose_custom_ops: args.decompose_custom_ops,
    };
    let t0 = std::time::Instant::now();
    let (m, applied) = export_with_precision(
        &ck,
        &cfg,
        &geo,
        &opts,
        profile.precision,
        table.map(|(t, p)| (t, p.as_path())),
        true,
        &args.out,
    )?;
    for (e, a) in m.engines.iter().zip(&applied) {
        println!(
            "{:<9} {:>6} nodes {:>9.1} MiB  {} ({}: {} casts, {} f32 nodes, {} weight + {} activation Q/DQ pairs)",
            e.name,
            e.nodes,
            e.bytes as f64 / 1048576.0,
            args.out.join(&e.file).display(),
            profile.precision,
            a.casts,
            a.f32_nodes,
            a.weight_pairs,
            a.activation_pairs
        );
    }
    println!(
        "exported {} {} engines ({} custom ops) in {:.1} s; manifest {}",
        m.engines.len(),
        profile.precision,
        m.custom_ops,
        t0.elapsed().as_secs_f64(),
        args.out.join("manifest.json").display()
    );
    if let Some(range) = profile.objects {
        let t0 = std::time::Instant::now();
        let dir = args.out.join(OBJECTS_DIR);
        let om = crate::quant::engines::export_objects_with_precision(
            &ck,
            &cfg,
            &geo,
            &opts,
            profile.precision,
            table.map(|(t, _)| t),
            true,
            &m,
            &dir,
        )?;
        println!(
            "exported the object engines ({}; {} with a symbolic `{}` axis for objects {}..={}, opt {}) \
             in {:.1} s into {}",
            om.files.join(", "),
            om.batched.len(),
            om.axis,
            range.min,
            range.max,
            range.opt,
            t0.elapsed().as_secs_f64(),
            dir.display()
        );
    }
    Ok(())
}

/// The `trtexec` lines of the object set exported in `src` (its inputs read from each ONNX), or a
/// comment saying it is not exported yet (a dry run from --weights).
fn object_lines(
    profile: &EngineProfile,
    range: crate::engines::profile::BatchRange,
    src: &Path,
    dst: &Path,
    plugins: &Path,
) -> Result<String> {
    use crate::graph::object_engines::{ObjectManifest, OBJECTS_MANIFEST};
    use prost::Message;
    use tract_onnx::pb::tensor_shape_proto::dimension::Value as D;
    if !src.join(OBJECTS_MANIFEST).is_file() {
        return Ok(format!(
            "# object engines: not exported yet ({} missing)\n",
            src.join(OBJECTS_MANIFEST).display()
        ));
    }
    let m = ObjectManifest::read(src)?;
    let mut s = format!(
        "# object engines: one optimization profile, objects {}..={} (opt {})\n",
        range.min, range.max, range.opt
    );
    for file in &m.files {
        let path = src.join(file);
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let model = tract_onnx::pb::ModelProto::decode(bytes.as_slice())
            .map_err(|e| Error::Graph(format!("{}: {e}", path.display())))?;
        let inputs: Vec<trtexec::DynamicInput> = model
            .graph
            .iter()
            .flat_map(|g| &g.input)
            .map(|v| {
                let dims = match v.r#type.as_ref().and_then(|t| t.value.as_ref()) {
                    Some(tract_onnx::pb::type_proto::Value::TensorType(t)) => t
                        .shape
                        .iter()
                        .flat_map(|sh| &sh.dim)
                        .map(|d| match d.value {
                            Some(D::DimValue(x)) if x >= 0 => Some(x as usize),
                            _ => None,
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                (v.name.clone(), dims)
            })
            .collect();
        let stem = file.trim_end_matches(".onnx");
        s.push_str(&trtexec::object_build_line(
            profile, stem, src, dst, plugins, &inputs, range,
        ));
        s.push('\n');
    }
    Ok(s)
}

/// With `--onnx DIR --out OTHER`, copies the export's `manifest.json` (and the object set's
/// `objects.json`) next to where the plans go: `referdino run --engines OTHER` reads the plans' bindings
/// and sources from them. Nothing to do when both are the same directory or the export has none.
fn copy_manifests(onnx_dir: &Path, out: &Path, objects: bool) -> Result<()> {
    let same = match (onnx_dir.canonicalize(), out.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => onnx_dir == out,
    };
    if same {
        return Ok(());
    }
    let mut pairs = vec![(onnx_dir.join("manifest.json"), out.join("manifest.json"))];
    if objects {
        let m = crate::graph::object_engines::OBJECTS_MANIFEST;
        pairs.push((
            onnx_dir.join(OBJECTS_DIR).join(m),
            out.join(OBJECTS_DIR).join(m),
        ));
    }
    for (src, dst) in pairs {
        if !src.is_file() {
            log::warn!(
                "{} not found: `referdino run --engines {}` will need it beside the plans",
                src.display(),
                out.display()
            );
            continue;
        }
        if let Some(d) = dst.parent() {
            std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
        }
        std::fs::copy(&src, &dst).map_err(|e| Error::io(&dst, e))?;
    }
    Ok(())
}

/// Subdirectory of an export / engine directory holding the object engine set.
pub const OBJECTS_DIR: &str = "objects";

/// Runs `referdino build`.
pub fn run(args: BuildArgs) -> Result<()> {
    let profile = EngineProfile::load(&args.profile)?;
    // The Q/DQ scales are baked into the ONNX at export; check the table is there and valid now so a
    // long export or build does not start from a bad table. With --onnx the ONNX already holds them.
    let table = if args.onnx.is_none() {
        int8_table(&profile)?
    } else {
        None
    };
    let onnx_dir =
        match (&args.onnx, &args.model.weights) {
            (Some(d), _) => d.clone(),
            (None, Some(w)) => {
                // A dry run does not read the checkpoint; still refuse a path that is not one so
                // the script it writes cannot point at nothing.
                match std::fs::metadata(w) {
                    Ok(m) if m.is_file() => {}
                    Ok(_) => {
                        return Err(Error::Config(format!(
                        "--weights {}: not a file (a checkpoint is one .pth or .safetensors file)",
                        w.display()
                    )))
                    }
                    Err(e) => return Err(Error::io(w, e)),
                }
                if !args.dry_run {
                    export_for_profile(&args, &profile, w, table.as_ref())?;
                }
                args.out.clone()
            }
            (None, None) => return Err(Error::Config(
                "give --weights CHECKPOINT (export then build) or --onnx DIR (exported engines)"
                    .into(),
            )),
        };
    std::fs::create_dir_all(&args.out).map_err(|e| Error::io(&args.out, e))?;
    copy_manifests(&onnx_dir, &args.out, profile.objects.is_some())?;
    let plugins = plugin_path(&args.plugins);
    let mut script = trtexec::script(&profile, &onnx_dir, &args.out, &plugins);
    if let Some(range) = profile.objects {
        script.push_str(&object_lines(
            &profile,
            range,
            &onnx_dir.join(OBJECTS_DIR),
            &args.out.join(OBJECTS_DIR),
            &plugins,
        )?);
    }
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
    match build_all(&profile, &onnx_dir, &args.out, &plugins) {
        // The export is the deliverable of a build without TensorRT: say what to do next, succeed.
        Err(Error::Backend(msg)) if !cfg!(feature = "tensorrt") && args.model.weights.is_some() => {
            println!(
                "ONNX engines written to {}; TensorRT plans not built: {msg}",
                args.out.display()
            );
            Ok(())
        }
        r => r,
    }
}

#[cfg(feature = "tensorrt")]
fn build_all(profile: &EngineProfile, onnx_dir: &Path, out: &Path, plugins: &Path) -> Result<()> {
    use crate::backend::tensorrt::{build, library_version_exact, load_plugin_library};
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
        tensorrt: library_version_exact().to_string(),
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
            name,
            &onnx_dir.join(kind.onnx_file()),
            &out.join(kind.plan_file()),
            None,
            None,
            &mut on_progress,
        )?;
        bar.inc(1);
        report.engines.push(r);
    }
    // The object set: `image` static, the others with one optimization profile over the range.
    if let Some(range) = profile.objects {
        let src = onnx_dir.join(OBJECTS_DIR);
        let m = crate::graph::object_engines::ObjectManifest::read(&src)?;
        let dst = out.join(OBJECTS_DIR);
        std::fs::create_dir_all(&dst).map_err(|e| Error::io(&dst, e))?;
        for file in &m.files {
            let stem = file.trim_end_matches(".onnx");
            let name = format!("{OBJECTS_DIR}/{stem}");
            bar.set_message(format!("{name}: starting"));
            let mut on_progress = |phase: &str, step: i32, nb: i32| match step {
                -1 => bar.set_message(format!("{name}: {phase} (0/{nb})")),
                -2 => {}
                s => bar.set_message(format!("{name}: {phase} ({})", s + 1)),
            };
            let batch = m.batched.contains(file).then_some(range);
            let r = build::build_engine(
                profile,
                &name,
                &src.join(file),
                &dst.join(format!("{stem}.plan")),
                None,
                batch,
                &mut on_progress,
            )?;
            report.engines.push(r);
        }
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
