//! Loads a directory of prebuilt engines (`referdino export` / `referdino build` output) into an
//! [`EngineSet`]: the ONNX files on the CPU backend, or the TensorRT plans on a board.
//!
//! The manifest written next to the engines is the contract: each loaded engine's bindings are
//! checked against it, so a directory mixing two exports or a plan built from other ONNX is refused
//! with the differences named instead of failing later inside a run.

use crate::engines::checksum::verify_file;
use crate::engines::plan_info::check_specs;
use crate::error::{Error, Result};
use crate::graph::export::{EngineEntry, Manifest};
use crate::pipeline::session::EngineSet;
use std::path::{Path, PathBuf};

pub use crate::backend::kind::BackendKind;

/// The four engine names in the order of [`EngineSet`]'s fields.
const ENGINE_NAMES: [&str; 4] = ["text", "frame", "temporal", "head"];

fn entry<'a>(m: &'a Manifest, dir: &Path, name: &str) -> Result<&'a EngineEntry> {
    m.engines.iter().find(|e| e.name == name).ok_or_else(|| {
        Error::Config(format!(
            "{}/manifest.json lists no `{name}` engine (it lists: {})",
            dir.display(),
            m.engines
                .iter()
                .map(|e| e.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })
}

/// The ONNX file of manifest entry `e`, checked to be the very file the manifest lists (size and
/// CRC-32), so a file copied in from another export of the same shapes is refused.
fn listed_onnx(dir: &Path, e: &EngineEntry) -> Result<PathBuf> {
    let path = existing(dir.join(&e.file), "re-run `referdino export`")?;
    verify_file(
        &path,
        e.bytes,
        e.crc32.as_deref(),
        &dir.join("manifest.json"),
    )?;
    Ok(path)
}

/// Fails when a plan's sidecar names another ONNX source than the CRC-32 listed for it now (the
/// ONNX was exported again after the plan was built).
#[cfg(feature = "tensorrt")]
fn plan_built_from(plan: &Path, listed: Option<&str>) -> Result<()> {
    let info = crate::engines::PlanInfo::load_for(plan)?;
    crate::engines::checksum::check_plan_source(
        plan,
        info.as_ref().and_then(|i| i.onnx_crc32.as_deref()),
        listed,
    )
}

/// [`plan_built_from`] for a whole-frame plan against its manifest entry `e`.
#[cfg(feature = "tensorrt")]
fn plan_matches_export(plan: &Path, e: &EngineEntry) -> Result<()> {
    plan_built_from(plan, e.crc32.as_deref())
}

/// The object set's recorded checksums beside plans in `dir` (empty without `objects/objects.json`),
/// after checking the set goes with the text engine `text`.
#[cfg(feature = "tensorrt")]
fn object_sums(
    dir: &Path,
    text: &EngineEntry,
) -> Result<std::collections::BTreeMap<String, crate::graph::object_engines::FileSum>> {
    use crate::graph::object_engines::{ObjectManifest, OBJECTS_MANIFEST};
    let sub = dir.join(OBJECTS_SUBDIR);
    if !sub.join(OBJECTS_MANIFEST).is_file() {
        return Ok(Default::default());
    }
    let om = ObjectManifest::read(&sub)?;
    objects_match_text(&sub, &om, text)?;
    Ok(om.checksums)
}

/// [`plan_matches_export`] for the object plan `stem` against the object set's checksums.
#[cfg(feature = "tensorrt")]
fn object_plan_matches(
    plan: &Path,
    stem: &str,
    sums: &std::collections::BTreeMap<String, crate::graph::object_engines::FileSum>,
) -> Result<()> {
    plan_built_from(
        plan,
        sums.get(&format!("{stem}.onnx")).map(|s| s.crc32.as_str()),
    )
}

/// Fails when the object set in `sub` was exported with another text engine than the one
/// `manifest` lists (an `objects/` directory left from an older export).
fn objects_match_text(
    sub: &Path,
    om: &crate::graph::object_engines::ObjectManifest,
    text: &EngineEntry,
) -> Result<()> {
    match (&om.text_crc32, &text.crc32) {
        (Some(a), Some(b)) if !a.eq_ignore_ascii_case(b) => Err(Error::Config(format!(
            "{}: the object engines were exported with another text engine (CRC-32 {a}) than the \
             one beside them ({b}): they come from another export; export the object set again \
             (`referdino export --objects`)",
            sub.display()
        ))),
        _ => Ok(()),
    }
}

fn existing(path: PathBuf, hint: &str) -> Result<PathBuf> {
    if path.is_file() {
        Ok(path)
    } else {
        Err(Error::Config(format!(
            "missing engine file {} ({hint})",
            path.display()
        )))
    }
}

/// Loads the engines of `dir` for `backend` on every available core. `plugins` is our TensorRT plugin
/// library (searched in the usual places when `None`); the host backends ignore it.
pub fn load_engine_dir(
    dir: &Path,
    backend: BackendKind,
    plugins: Option<&Path>,
) -> Result<(EngineSet, Manifest)> {
    load_engine_dir_with(dir, backend, None, plugins)
}

/// [`load_engine_dir_with`] in the argument order the live runtime uses.
pub fn load_engine_dir_threads(
    dir: &Path,
    backend: BackendKind,
    plugins: Option<&Path>,
    threads: Option<usize>,
) -> Result<(EngineSet, Manifest)> {
    load_engine_dir_with(dir, backend, threads, plugins)
}

/// [`load_engine_dir`] with the host backends' engines on `threads` threads (`None`: every core).
/// Native and decomposed exports load on tract and on ONNX Runtime alike.
pub fn load_engine_dir_with(
    dir: &Path,
    backend: BackendKind,
    threads: Option<usize>,
    plugins: Option<&Path>,
) -> Result<(EngineSet, Manifest)> {
    if !dir.exists() {
        return Err(Error::Config(format!(
            "engine directory {} does not exist (write one with `referdino export` or `referdino build`)",
            dir.display()
        )));
    }
    let manifest = Manifest::read(dir)?;
    let mut loaded = Vec::with_capacity(4);
    match backend {
        BackendKind::Cpu | BackendKind::Ort | BackendKind::Auto | BackendKind::Mix(_) => {
            // Both exports load on both host backends (ONNX Runtime runs our custom ops as custom
            // operators), so each engine goes to the backend the choice gives it.
            let backends = backend.host_backends_for(threads, precision_of(&manifest))?;
            for name in ENGINE_NAMES {
                let e = entry(&manifest, dir, name)?;
                let path = listed_onnx(dir, e)?;
                let engine = backends.load(name, &path)?;
                check_specs(
                    name,
                    &e.inputs,
                    &e.outputs,
                    engine.inputs(),
                    engine.outputs(),
                )
                .map_err(|err| {
                    Error::Config(format!(
                        "{} does not match {}/manifest.json: {err}",
                        path.display(),
                        dir.display()
                    ))
                })?;
                loaded.push(engine);
            }
        }
        BackendKind::TensorRt => loaded = load_plans(dir, &manifest, plugins)?,
    }
    let mut it = loaded.into_iter();
    let mut next = || {
        it.next()
            .ok_or_else(|| Error::Backend("engine directory: an engine went missing".into()))
    };
    let engines = EngineSet {
        text: next()?,
        frame: next()?,
        temporal: next()?,
        head: next()?,
    };
    Ok((engines, manifest))
}

/// Whether `dir` (written by `referdino build` with a profile's `objects` range) holds the object
/// engine set: `objects/{image,cross,temporal,head}.plan`.
pub fn has_object_plans(dir: &Path) -> bool {
    ["image", "cross", "temporal", "head"]
        .iter()
        .all(|s| dir.join(OBJECTS_SUBDIR).join(format!("{s}.plan")).is_file())
}

/// Subdirectory of an engine directory with the object engine set.
pub const OBJECTS_SUBDIR: &str = "objects";

/// Whether `dir` holds an exported object engine set (`objects/objects.json`, written by `referdino
/// export --objects` or `build` with a profile's `objects`).
pub fn has_object_onnx(dir: &Path) -> bool {
    dir.join(OBJECTS_SUBDIR)
        .join(crate::graph::object_engines::OBJECTS_MANIFEST)
        .is_file()
}

/// The engines of an ONNX engine directory for several objects on the host backends: `text.onnx`,
/// then the object set's `image` (once per frame) and `cross`, `temporal`, `head` with their object
/// axis fixed to `batch` objects per run (`onnx::batch_axis::fix_batch`), each on the backend
/// `backend` gives it (the image and cross engines follow `frame`).
pub fn load_object_onnx(
    dir: &Path,
    backend: BackendKind,
    threads: Option<usize>,
    batch: usize,
) -> Result<(crate::pipeline::multi::MultiEngineSet, Manifest)> {
    use crate::graph::object_engines::{ObjectManifest, OBJECTS_DIM};
    use crate::pipeline::multi::{Front, MultiEngineSet};
    use prost::Message;
    let manifest = Manifest::read(dir)?;
    let sub = dir.join(OBJECTS_SUBDIR);
    let om = ObjectManifest::read(&sub)?;
    if om.geometry != manifest.geometry {
        return Err(Error::Config(format!(
            "{}: the object engines are for {:?}, the engines beside them for {:?}: export them together",
            sub.display(),
            om.geometry,
            manifest.geometry
        )));
    }
    let e = entry(&manifest, dir, "text")?;
    objects_match_text(&sub, &om, e)?;
    let backends = backend.host_backends_for(threads, precision_of(&manifest))?;
    let text = backends.load("text", &listed_onnx(dir, e)?)?;
    let listed_in = sub.join(crate::graph::object_engines::OBJECTS_MANIFEST);
    let load = |stem: &str| -> Result<Box<dyn crate::backend::Engine>> {
        let file = format!("{stem}.onnx");
        let path = existing(sub.join(&file), "re-run `referdino export --objects`")?;
        if let Some(sum) = om.checksums.get(&file) {
            verify_file(&path, sum.bytes, Some(&sum.crc32), &listed_in)?;
        }
        if !om.batched.contains(&file) {
            return backends.load(stem, &path);
        }
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let m = tract_onnx::pb::ModelProto::decode(bytes.as_slice())
            .map_err(|e| Error::Graph(format!("{}: {e}", path.display())))?;
        let m = crate::onnx::batch_axis::fix_batch(m, OBJECTS_DIM, batch)
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        backends.load_bytes(stem, &m.encode_to_vec())
    };
    let engines = MultiEngineSet {
        text,
        front: Front::Split {
            image: load("image")?,
            cross: load("cross")?,
        },
        temporal: load("temporal")?,
        head: load("head")?,
    };
    Ok((engines, manifest))
}

/// The TensorRT engines of `dir` for several objects: `text.plan`, then the object set's `image`
/// (once per frame) and `cross`, `temporal`, `head` at `batch` objects per run, each loaded from
/// its plan's optimization profile at that batch (a batch outside the profile is an error naming
/// the range).
#[cfg(feature = "tensorrt")]
pub fn load_object_plans(
    dir: &Path,
    plugins: Option<&Path>,
    batch: usize,
) -> Result<(crate::pipeline::multi::MultiEngineSet, Manifest)> {
    use crate::pipeline::multi::{Front, MultiEngineSet};
    let manifest = Manifest::read(dir)?;
    let trt = trt_backend(plugins)?;
    let e = entry(&manifest, dir, "text")?;
    let hint = "build the plans on this board with `referdino build` and a profile with `objects`";
    let text_plan = existing(dir.join("text.plan"), hint)?;
    plan_matches_export(&text_plan, e)?;
    let text = trt.load_checked(&text_plan, &e.inputs, &e.outputs)?;
    let sums = object_sums(dir, e)?;
    let obj = |stem: &str| {
        let p = existing(dir.join(OBJECTS_SUBDIR).join(format!("{stem}.plan")), hint)?;
        object_plan_matches(&p, stem, &sums)?;
        Ok::<_, Error>(p)
    };
    let engines = MultiEngineSet {
        text,
        front: Front::Split {
            image: trt.load_batched(&obj("image")?, 1)?,
            cross: trt.load_batched(&obj("cross")?, batch)?,
        },
        temporal: trt.load_batched(&obj("temporal")?, batch)?,
        head: trt.load_batched(&obj("head")?, batch)?,
    };
    Ok((engines, manifest))
}

/// Without the `tensorrt` feature: the error saying how to get it.
#[cfg(not(feature = "tensorrt"))]
pub fn load_object_plans(
    _dir: &Path,
    _plugins: Option<&Path>,
    _batch: usize,
) -> Result<(crate::pipeline::multi::MultiEngineSet, Manifest)> {
    Err(Error::Backend(NO_TENSORRT.into()))
}

/// The error of a TensorRT request in a binary built without the feature.
#[cfg(not(feature = "tensorrt"))]
const NO_TENSORRT: &str =
    "this binary was built without TensorRT; rebuild with `cargo build --release \
    --features tensorrt` on the board, or use `--backend cpu` with the ONNX files";

#[cfg(feature = "tensorrt")]
fn trt_backend(plugins: Option<&Path>) -> Result<crate::backend::tensorrt::TensorRtBackend> {
    use crate::backend::tensorrt::{TensorRtBackend, TrtOptions};
    let lib = match plugins {
        Some(p) => p.to_path_buf(),
        None => crate::backend::plugin_search::find_plugin_library().ok_or_else(|| {
            Error::Backend(
                "plugin library libreferdino_plugins.so not found; pass --plugins PATH".into(),
            )
        })?,
    };
    // Checks CUDA first, then loads the plugin library, then creates the runtime.
    TensorRtBackend::new(TrtOptions {
        plugin_library: Some(lib),
        ..Default::default()
    })
}

#[cfg(feature = "tensorrt")]
fn load_plans(
    dir: &Path,
    manifest: &Manifest,
    plugins: Option<&Path>,
) -> Result<Vec<Box<dyn crate::backend::Engine>>> {
    let trt = trt_backend(plugins)?;
    let mut out = Vec::with_capacity(4);
    for name in ENGINE_NAMES {
        let e = entry(manifest, dir, name)?;
        let path = existing(
            dir.join(format!("{name}.plan")),
            "build the plans on this board with `referdino build`",
        )?;
        plan_matches_export(&path, e)?;
        out.push(trt.load_checked(&path, &e.inputs, &e.outputs)?);
    }
    Ok(out)
}

/// The TensorRT backend of a run's plans (every directory's: one CUDA context and TensorRT runtime,
/// so that one directory's plan can serve another's sets through [`TrtPlan::share_on`]).
#[cfg(feature = "tensorrt")]
pub fn plan_backend(plugins: Option<&Path>) -> Result<crate::backend::tensorrt::TensorRtBackend> {
    trt_backend(plugins)
}

/// The text plan of a run: deserialized from the first directory loaded, and shared by every other
/// whose manifest lists the same text engine (the same ONNX CRC-32).
#[cfg(feature = "tensorrt")]
pub struct SharedTextPlan {
    plan: std::sync::Arc<crate::backend::tensorrt::TrtPlan>,
    crc32: String,
    from: PathBuf,
}

/// One engine directory's plans, deserialized once (one copy of the weights in GPU memory, no
/// execution context), from which [`DirPlans::make_set`] makes a stream's engine set when it takes
/// one. The whole-frame set (`text`, `frame`, `temporal`, `head`), or the object set (`text`, then
/// `image` at batch 1 and `cross`, `temporal`, `head` at the run's batch).
#[cfg(feature = "tensorrt")]
pub struct DirPlans {
    trt: std::sync::Arc<crate::backend::tensorrt::TensorRtBackend>,
    text: std::sync::Arc<crate::backend::tensorrt::TrtPlan>,
    /// The frame plan, or the object set's image and cross plans; then temporal and head.
    rest: Vec<crate::backend::tensorrt::TrtPlan>,
    split: bool,
    /// Whether the text plan is this directory's own (deserialized here) rather than shared.
    own_text: bool,
}

#[cfg(feature = "tensorrt")]
impl DirPlans {
    /// An engine set on a CUDA stream of its own: an execution context of each plan (each with its
    /// own activation memory; the weights shared with every other set of the run).
    pub fn make_set(&self) -> Result<crate::pipeline::multi::MultiEngineSet> {
        use crate::pipeline::multi::{Front, MultiEngineSet};
        let b = self.trt.with_new_stream()?;
        let mut it = self.rest.iter();
        let mut next = || -> Result<Box<dyn crate::backend::Engine>> {
            let p = it
                .next()
                .ok_or_else(|| Error::Backend("engine directory: an engine went missing".into()))?;
            Ok(Box::new(p.share_on(&b)?))
        };
        let front = if self.split {
            Front::Split {
                image: next()?,
                cross: next()?,
            }
        } else {
            Front::Frame(next()?)
        };
        Ok(MultiEngineSet {
            text: Box::new(self.text.share_on(&b)?),
            front,
            temporal: next()?,
            head: next()?,
        })
    }

    /// Whether this directory deserialized its own text plan (false: it shares the run's).
    pub fn own_text(&self) -> bool {
        self.own_text
    }
}

/// Deserializes the plans of `dir` on `trt` (checked against the manifest like
/// [`load_engine_dir`]'s, or, with `objects = Some(batch)`, the object set as [`load_object_plans`]
/// loads it), each checked through a first execution context which is then freed: contexts are
/// made per stream by [`DirPlans::make_set`]. The text plan is `text`'s when this directory's
/// manifest lists the same text engine (its file is still checked to be there and built from it),
/// else deserialized here and, when `text` holds none yet, left in it for the next directories.
#[cfg(feature = "tensorrt")]
pub fn load_dir_plans(
    trt: &std::sync::Arc<crate::backend::tensorrt::TensorRtBackend>,
    dir: &Path,
    objects: Option<usize>,
    text: &mut Option<SharedTextPlan>,
) -> Result<(DirPlans, Manifest)> {
    use crate::backend::tensorrt::TrtPlan;
    use std::sync::Arc;
    if !dir.exists() {
        return Err(Error::Config(format!(
            "engine directory {} does not exist (write one with `referdino build`)",
            dir.display()
        )));
    }
    let manifest = Manifest::read(dir)?;
    let plan = |name: &str, hint: &str| existing(dir.join(format!("{name}.plan")), hint);
    let hint = match objects {
        None => "build the plans on this board with `referdino build`",
        Some(_) => {
            "build the plans on this board with `referdino build` and a profile with `objects`"
        }
    };
    let e = entry(&manifest, dir, "text")?;
    let text_plan = plan("text", hint)?;
    plan_matches_export(&text_plan, e)?;
    let shared = match (text.as_ref(), e.crc32.as_deref()) {
        (Some(t), Some(crc)) if t.crc32.eq_ignore_ascii_case(crc) => Some(Arc::clone(&t.plan)),
        _ => None,
    };
    let own_text = shared.is_none();
    let text_of_dir = match shared {
        Some(p) => {
            if let Some(t) = text.as_ref() {
                log::info!(
                    "{}: the text plan of {} serves it (the same text engine)",
                    dir.display(),
                    t.from.display()
                );
            }
            p
        }
        None => {
            let p = Arc::new(
                trt.load_checked_plan(&text_plan, &e.inputs, &e.outputs)?
                    .into_plan(),
            );
            if let (None, Some(crc)) = (text.as_ref(), e.crc32.as_deref()) {
                *text = Some(SharedTextPlan {
                    plan: Arc::clone(&p),
                    crc32: crc.to_string(),
                    from: dir.to_path_buf(),
                });
            }
            p
        }
    };
    let mut rest: Vec<TrtPlan> = Vec::with_capacity(4);
    match objects {
        None => {
            for name in &ENGINE_NAMES[1..] {
                let e = entry(&manifest, dir, name)?;
                let path = plan(name, hint)?;
                plan_matches_export(&path, e)?;
                rest.push(
                    trt.load_checked_plan(&path, &e.inputs, &e.outputs)?
                        .into_plan(),
                );
            }
        }
        Some(batch) => {
            let sums = object_sums(dir, e)?;
            for (stem, b) in [
                ("image", 1),
                ("cross", batch),
                ("temporal", batch),
                ("head", batch),
            ] {
                let p = plan(&format!("{OBJECTS_SUBDIR}/{stem}"), hint)?;
                object_plan_matches(&p, stem, &sums)?;
                rest.push(trt.load_batched_plan(&p, b)?.into_plan());
            }
        }
    }
    let plans = DirPlans {
        trt: Arc::clone(trt),
        text: text_of_dir,
        rest,
        split: objects.is_some(),
        own_text,
    };
    Ok((plans, manifest))
}

#[cfg(not(feature = "tensorrt"))]
fn load_plans(
    _dir: &Path,
    _manifest: &Manifest,
    _plugins: Option<&Path>,
) -> Result<Vec<Box<dyn crate::backend::Engine>>> {
    Err(Error::Backend(NO_TENSORRT.into()))
}

/// The precision of a directory's engines, for `auto`'s per-engine rule.
fn precision_of(manifest: &Manifest) -> crate::backend::kind::Precision {
    crate::backend::kind::Precision::int8_if(manifest.precision.as_deref() == Some("int8"))
}
