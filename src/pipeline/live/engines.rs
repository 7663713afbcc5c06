//! Engine loading for a live run: exported at start-up from a checkpoint on the CPU backend, or
//! loaded from a directory of prebuilt engines (ONNX on the CPU backend, TensorRT plans on a board).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};

use super::config::RuntimeConfig;
use crate::config::ModelConfig;
use crate::graph::engines::{ExportOptions, Geometry};
use crate::graph::export::Manifest;
use crate::pipeline::engine_dir::{
    has_object_onnx, has_object_plans, load_engine_dir_threads, load_object_onnx,
    load_object_plans, BackendKind,
};
use crate::pipeline::multi::MultiEngineSet;
use crate::pipeline::stream::StreamConfig;
use crate::weights::Checkpoint;

/// The bundled tiny checkpoint (random weights from the official code) used without weights, in
/// this source tree (an installed binary finds it with [`bundled_model`]).
pub const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/referdino-tiny");

/// Where a bundled model directory (`referdino-tiny`, `referdino-synth`) is found: under
/// `$REFERDINO_DATA`, then `../share/referdino/` beside the executable (where `board/setup-orin.sh`
/// installs them), then this source tree's `tests/fixtures/` (a `cargo run` checkout). Without any,
/// an error names the places looked at.
pub fn bundled_model(name: &str) -> anyhow::Result<PathBuf> {
    let mut places = Vec::new();
    if let Some(d) = std::env::var_os("REFERDINO_DATA") {
        places.push(PathBuf::from(d).join(name));
    }
    if let Some(bin) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        places.push(bin.join("../share/referdino").join(name));
    }
    places.push(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    );
    first_dir(name, &places)
}

/// The first of `places` that is a directory, or the error naming them all.
fn first_dir(name: &str, places: &[PathBuf]) -> anyhow::Result<PathBuf> {
    if let Some(p) = places.iter().find(|p| p.is_dir()) {
        return Ok(p.clone());
    }
    let looked: Vec<String> = places.iter().map(|p| p.display().to_string()).collect();
    bail!(
        "the bundled model {name} is not found (looked in {}): pass --weights, set REFERDINO_DATA \
         to a folder holding {name}, or install it beside the binary",
        looked.join(", ")
    )
}

/// Resolves a model configuration: a file, a built-in name (`swin-t`, `swin-b`), or (`None`) the
/// official configuration the checkpoint matches, else a `config.json` next to it.
pub fn resolve_config(spec: Option<&str>, ck: &Checkpoint) -> anyhow::Result<ModelConfig> {
    match spec {
        Some("swin-t") | Some("swin_t") => Ok(ModelConfig::swin_t()),
        Some("swin-b") | Some("swin_b") => Ok(ModelConfig::swin_b()),
        Some(p) => Ok(ModelConfig::from_file(Path::new(p))?),
        None => {
            // Keep the closest official configuration (fewest differences) for the error.
            let mut closest: Option<(usize, ModelConfig, crate::weights::Mismatch)> = None;
            for cfg in [ModelConfig::swin_t(), ModelConfig::swin_b()] {
                let m = ck.check(&cfg)?;
                if m.is_ok() {
                    return Ok(cfg);
                }
                let n = m.missing.len() + m.unexpected.len() + m.wrong_shape.len();
                if closest.as_ref().is_none_or(|(best, _, _)| n < *best) {
                    closest = Some((n, cfg, m));
                }
            }
            if let Some(dir) = ck.path().parent() {
                let p = dir.join("config.json");
                if p.is_file() {
                    // The user did not name this file: say where the configuration came from.
                    log::info!(
                        "no official configuration matches {}; using {}",
                        ck.path().display(),
                        p.display()
                    );
                    return ModelConfig::from_file(&p).with_context(|| {
                        format!(
                            "{} matches neither official configuration, so {} (next to it) was \
                             used; pass --config to choose another",
                            ck.path().display(),
                            p.display()
                        )
                    });
                }
            }
            match closest {
                Some((_, cfg, m)) => bail!(
                    "{} matches neither official configuration; pass --config. Closest is {}:\n{}",
                    ck.path().display(),
                    cfg.label(),
                    m.describe(10)
                ),
                None => {
                    bail!("the checkpoint matches neither official configuration; pass --config")
                }
            }
        }
    }
}

/// Loads the checkpoint and configuration (the bundled tiny ones without `weights`).
pub fn load_model(
    weights: Option<&Path>,
    config: Option<&str>,
) -> anyhow::Result<(Checkpoint, ModelConfig)> {
    let (ck, cfg) = match weights {
        None => {
            let dir = bundled_model("referdino-tiny")?;
            let ck = Checkpoint::load(&dir.join("weights.safetensors"))?;
            let cfg = match config {
                Some(c) => resolve_config(Some(c), &ck)?,
                None => ModelConfig::from_file(&dir.join("config.json"))?,
            };
            (ck, cfg)
        }
        Some(w) => {
            let ck = Checkpoint::load(w)?;
            let cfg = resolve_config(config, &ck)?;
            (ck, cfg)
        }
    };
    ck.validate(&cfg)
        .context("checkpoint does not fit the configuration")?;
    Ok((ck, cfg))
}

/// The engines of a run.
pub enum RunEngines {
    /// Shared by every stream, run on the host path: the frame engine split into image (once per
    /// frame) and cross (batched over objects) when exported at start-up or when the directory
    /// holds the object set; otherwise a directory's text/frame/temporal/head (the frame engine
    /// runs once per object).
    Host(MultiEngineSet),
    /// One engine set per stream for the device-resident path: TensorRT engines (the plans' weights
    /// shared, an execution context and CUDA stream each), or (`emulated`) host engines run by the
    /// device session's host emulation (tests of the runtime's device lanes without a GPU).
    #[cfg(feature = "cuda")]
    Device {
        /// One set per stream.
        sets: Vec<MultiEngineSet>,
        /// Run under the host emulation (`pipeline::gpu::Stream::host`).
        emulated: bool,
    },
}

impl From<MultiEngineSet> for RunEngines {
    fn from(e: MultiEngineSet) -> Self {
        RunEngines::Host(e)
    }
}

/// Why TensorRT plans of `dir` run on the host path, or `None` when the device-resident path takes
/// them (feature `tensorrt`; the whole-frame set, or the object set when `objects`).
fn host_path_reason(c: &RuntimeConfig, objects: bool) -> Option<&'static str> {
    if !cfg!(feature = "tensorrt") {
        Some("this binary was built without the device path")
    } else if c.host_path {
        Some("--host-path")
    } else if c.cross_batch > 1 && !objects {
        Some("--cross-batch needs the object engine set (a profile with `objects`)")
    } else {
        None
    }
}

/// Engines ready for a run, with the geometry they take and the stream settings they imply.
pub struct LoadedEngines {
    /// The engines.
    pub engines: RunEngines,
    /// Input geometry of the engines.
    pub geometry: Geometry,
    /// Stream settings from the model (tracking momentum, text length).
    pub stream: StreamConfig,
}

/// Checks the backend choice against the configuration.
pub fn backend_kind(c: &RuntimeConfig) -> anyhow::Result<BackendKind> {
    let backend = BackendKind::parse(&c.backend)?;
    if backend == BackendKind::TensorRt && c.engines.is_none() {
        bail!("--backend tensorrt runs prebuilt plans: pass --engines DIR (written by `referdino build`)");
    }
    Ok(backend)
}

/// The model input (width, height) that frames of `frame` (width, height) resize to at shorter side
/// `short_side`, refused by the input limits ([`crate::limits::check_input_size`]: at most 3840x2160
/// pixels and 4:1) before anything is sized by it: a folder whose first image is 1x11930466 would
/// otherwise ask for a preprocessor of a 360x4294967760 input.
pub fn model_input(short_side: u32, (fw, fh): (u32, u32)) -> anyhow::Result<(u32, u32)> {
    let short = short_side.max(1);
    let flags = format!("--short-side {short}: {fw}x{fh} frames resize to");
    let Some((iw, ih)) = crate::camera::convert::resized_size_wide(fw, fh, short) else {
        bail!("{fw}x{fh} frames have no pixels");
    };
    let side = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
    crate::limits::check_input_size(&flags, side(ih), side(iw))?;
    // Within the limits, both sides fit in a u32.
    Ok((
        u32::try_from(iw).context("model input width")?,
        u32::try_from(ih).context("model input height")?,
    ))
}

/// Loads the engines `c` names for frames of `frame` (width, height) preprocessed to `input`
/// (width, height): the engine directory's (whose geometry must match) or an export of the weights
/// at that size.
pub fn load_engines(
    c: &RuntimeConfig,
    backend: BackendKind,
    frame: (u32, u32),
    input: (u32, u32),
    streams: usize,
) -> anyhow::Result<LoadedEngines> {
    let ((fw, fh), (iw, ih)) = (frame, input);
    crate::limits::check_input_size(
        &format!("--short-side {}: {fw}x{fh} frames resize to", c.short_side),
        ih as usize,
        iw as usize,
    )?;
    let t_build = Instant::now();
    let loaded = match &c.engines {
        // Engine directories (ONNX or plans) hold the image engine at batch 1: batching several
        // streams' frames needs it exported at start-up at that batch.
        Some(dir) if c.image_batch > 1 => bail!(
            "--image-batch {} needs the image engine exported at start-up at that batch (--weights/--config \
             without --engines); {} holds it at batch 1",
            c.image_batch,
            dir.display()
        ),
        Some(dir) => {
            // With the object set (export --objects, or build with a profile's `objects`): image
            // once per frame, the rest batched over `--cross-batch` objects per run.
            let batch = c.cross_batch.max(1);
            let trt = backend == BackendKind::TensorRt;
            let objects = if trt {
                has_object_plans(dir)
            } else {
                has_object_onnx(dir)
            };
            // Flags an engine directory would silently override are refused, as --image-batch is.
            if c.cross_batch > 1 && !objects {
                bail!(
                    "--cross-batch {} batches objects through the object engine set, which {} does \
                     not hold (export it with `referdino export --objects`, or build a profile with \
                     `objects`); without it each object runs the whole frame engine",
                    c.cross_batch,
                    dir.display()
                );
            }
            if c.host_path && !trt {
                bail!("--host-path chooses how TensorRT plans run: it needs --backend tensorrt");
            }
            let reason = host_path_reason(c, objects);
            if trt {
                // Said once at start-up, so that latency figures are read for the path they measure.
                match reason {
                    Some(why) => log::info!(
                        "TensorRT plans on the host path ({why}): engine bindings and masks go through host memory every frame"
                    ),
                    None => log::info!(
                        "TensorRT plans on the device-resident path: one CUDA stream per stream, up to {} object(s) each, {}",
                        c.max_objects,
                        if objects {
                            format!("the object set ({batch} object(s) per cross-modal run)")
                        } else {
                            "the whole frame plan once per object".to_string()
                        }
                    ),
                }
            }
            let (engines, m): (RunEngines, Manifest) = if trt && reason.is_none() {
                load_device_sets(dir, c.plugins.as_deref(), objects.then_some(batch), streams)?
            } else if objects {
                log::info!(
                    "{}: the object engine set, {batch} object(s) per cross-modal run",
                    dir.display()
                );
                let (e, m) = if trt {
                    load_object_plans(dir, c.plugins.as_deref(), batch)?
                } else {
                    load_object_onnx(dir, backend, c.threads, batch)?
                };
                (e.into(), m)
            } else {
                let (e, m) =
                    load_engine_dir_threads(dir, backend, c.plugins.as_deref(), c.threads)?;
                (MultiEngineSet::from(e).into(), m)
            };
            let g = m.geometry;
            // The directory's window and text length are the engines' own; a setting other than
            // the default that disagrees would be ignored, so it is refused.
            for (flag, asked, default, has) in [
                ("--window", c.window, crate::config::DEFAULT_WINDOW, g.window),
                ("--max-text", c.max_text, crate::config::DEFAULT_MAX_TEXT, g.max_text),
            ] {
                if asked != default && asked != has {
                    bail!(
                        "{flag} {asked}: the engines in {} were exported with {has}; drop {flag} \
                         (an engine directory fixes it) or export the engines again",
                        dir.display()
                    );
                }
            }
            if (g.width, g.height) != (iw as usize, ih as usize) {
                bail!(
                    "the engines in {} take {}x{} images, but {fw}x{fh} frames resize to {iw}x{ih} \
                     (shorter side {}); build engines for this geometry or change --short-side",
                    dir.display(),
                    g.width,
                    g.height,
                    c.short_side
                );
            }
            let stream = StreamConfig {
                tracking_alpha: m.tracking_alpha,
                ..StreamConfig::default()
            };
            LoadedEngines {
                engines,
                geometry: g,
                stream,
            }
        }
        None => {
            let (ck, cfg) = load_model(c.weights.as_deref(), c.config.as_deref())?;
            // The model-dependent limits, checked before the (allocating) export.
            crate::limits::check_range(
                "--max-text",
                c.max_text,
                crate::limits::MIN_MAX_TEXT,
                cfg.max_text_len,
            )?;
            crate::graph::engines::check_enough_tokens(
                &cfg,
                ih as usize,
                iw as usize,
                &format!(
                    "--short-side {} ({fw}x{fh} frames resize to {iw}x{ih})",
                    c.short_side
                ),
            )?;
            let geometry = Geometry {
                height: ih as usize,
                width: iw as usize,
                max_text: c.max_text,
                window: c.window,
            };
            let engines = MultiEngineSet::build(
                backend,
                c.threads,
                &ck,
                &cfg,
                &geometry,
                &ExportOptions::default(),
                c.cross_batch.max(1),
                c.image_batch.max(1),
            )?;
            LoadedEngines {
                engines: engines.into(),
                geometry,
                stream: StreamConfig::for_model(&cfg),
            }
        }
    };
    log::info!(
        "{} engines for {iw}x{ih}, text ≤ {} tokens, window {} ready in {:.1} s",
        c.backend,
        loaded.geometry.max_text,
        loaded.geometry.window,
        t_build.elapsed().as_secs_f64()
    );
    Ok(loaded)
}

/// The TensorRT plans of `dir` (the object set at `objects` per run, else the whole-frame set) for
/// `streams` streams: one copy of the weights, one execution context and CUDA stream per stream.
#[cfg(feature = "tensorrt")]
fn load_device_sets(
    dir: &Path,
    plugins: Option<&Path>,
    objects: Option<usize>,
    streams: usize,
) -> anyhow::Result<(RunEngines, Manifest)> {
    let (sets, m) = crate::pipeline::engine_dir::load_plan_sets(dir, plugins, objects, streams)?;
    Ok((
        RunEngines::Device {
            sets,
            emulated: false,
        },
        m,
    ))
}

/// Without the `tensorrt` feature, [`host_path_reason`] never picks the device path.
#[cfg(not(feature = "tensorrt"))]
fn load_device_sets(
    _dir: &Path,
    _plugins: Option<&Path>,
    _objects: Option<usize>,
    _streams: usize,
) -> anyhow::Result<(RunEngines, Manifest)> {
    bail!("this binary was built without the device path (feature tensorrt)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_models_are_looked_for_in_order_and_missing_ones_named() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a/m"), d.path().join("b/m"));
        std::fs::create_dir_all(&b).unwrap();
        assert_eq!(first_dir("m", &[a.clone(), b.clone()]).unwrap(), b);
        std::fs::create_dir_all(&a).unwrap();
        assert_eq!(first_dir("m", &[a.clone(), b.clone()]).unwrap(), a);
        let e = first_dir("m", &[d.path().join("x/m")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("x/m") && e.contains("REFERDINO_DATA"), "{e}");
        // This checkout holds both bundled models.
        assert!(bundled_model("referdino-tiny")
            .unwrap()
            .join("config.json")
            .is_file());
        assert!(bundled_model("referdino-synth")
            .unwrap()
            .join("checkpoint.pth")
            .is_file());
    }

    #[test]
    fn an_image_batch_over_an_engine_directory_is_refused_not_ignored() {
        let mut c = RuntimeConfig::new("synthetic");
        c.engines = Some("engines-dir".into());
        c.image_batch = 2;
        for backend in [BackendKind::Cpu, BackendKind::TensorRt] {
            let e = load_engines(&c, backend, (640, 360), (640, 360), 2)
                .err()
                .unwrap()
                .to_string();
            assert!(
                e.contains("--image-batch 2 needs the image engine exported at start-up"),
                "{e}"
            );
        }
    }

    /// A 4000x10 camera at shorter side 360 would be a 144000x360 input (tens of GB of activations),
    /// and at shorter side 32 a 12800x32 one: refused by name before anything is exported; real
    /// cameras pass.
    #[test]
    fn a_huge_or_very_wide_model_input_is_refused() {
        let input = |w, h, s| crate::camera::convert::resized_size(w, h, s).unwrap();
        let check = |(w, h): (u32, u32), s: u32| {
            let (iw, ih) = input(w, h, s);
            crate::limits::check_input_size(&format!("{w}x{h} at {s}:"), ih as usize, iw as usize)
        };
        let e = check((4000, 10), 360).unwrap_err().to_string();
        assert!(
            e.contains("360x144000") && e.contains("more than the limit"),
            "{e}"
        );
        let e = check((4000, 10), 32).unwrap_err().to_string();
        assert!(e.contains("wider than 4:1"), "{e}");
        for (w, h, s) in [
            (1280, 720, 360),
            (3840, 1080, 360),
            (1920, 1080, 1080),
            (640, 480, 360),
        ] {
            check((w, h), s).unwrap();
        }
        let mut c = RuntimeConfig::new("synthetic");
        c.short_side = 360;
        let e = load_engines(&c, BackendKind::Cpu, (4000, 10), input(4000, 10, 360), 1)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("--short-side 360: 4000x10 frames resize to"),
            "{e}"
        );
    }

    /// Frames whose resized size overflows a `u32` (1x11930466 at 360 once wrapped to a valid
    /// looking 360x464) or is far over the limits are refused by their true size; real cameras pass.
    #[test]
    fn model_input_is_checked_unwrapped() {
        for (w, h, size) in [
            (1, 11_930_466, "4294967760x360"),
            (1, 67_108_864, "24159191040x360"),
            (16, 1_000_000, "22500000x360"),
        ] {
            let e = model_input(360, (w, h)).unwrap_err().to_string();
            assert!(
                e.contains(&format!("{w}x{h} frames resize to {size} (height x width)")),
                "{e}"
            );
        }
        assert!(model_input(360, (0, 0)).is_err());
        assert_eq!(model_input(360, (1280, 720)).unwrap(), (640, 360));
    }

    #[test]
    fn tensorrt_plans_take_the_device_path_unless_the_run_needs_the_host() {
        let mut c = RuntimeConfig::new("synthetic");
        let device = |c: &RuntimeConfig, objects: bool| host_path_reason(c, objects);
        if cfg!(feature = "tensorrt") {
            assert_eq!(device(&c, false), None);
        } else {
            assert!(device(&c, false)
                .unwrap()
                .contains("without the device path"));
            return;
        }
        // The object set, several objects and finalize run on the device path too.
        assert_eq!(device(&c, true), None);
        c.finalize = true;
        assert_eq!(device(&c, false), None);
        c.cross_batch = 2;
        assert_eq!(device(&c, true), None);
        assert!(device(&c, false).unwrap().contains("object engine set"));
        c.cross_batch = 1;
        c.host_path = true;
        assert_eq!(device(&c, false), Some("--host-path"));
    }
}
