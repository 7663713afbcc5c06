//! Engine loading for a live run: exported at start-up from a checkpoint on the CPU backend, or
//! loaded from directories of prebuilt engines (ONNX on the CPU backend, TensorRT plans on a board).
//! One engine set per input size the sources resize to (cameras of different aspect ratios; no
//! padding, so every stream's input is what a single-image run of that camera feeds the model), the
//! text engine shared; a camera that joins later with a new size gets its set exported in the
//! background ([`super::exporter`]).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};

use super::config::RuntimeConfig;
#[cfg(feature = "cuda")]
use super::pool::DeviceSets;
use crate::backend::kind::HostBackends;
use crate::backend::Engine;
use crate::config::ModelConfig;
use crate::graph::engines::{ExportOptions, Geometry};
use crate::graph::export::Manifest;
use crate::pipeline::engine_dir::{
    has_object_onnx, has_object_plans, load_engine_dir_threads, load_object_onnx,
    load_object_plans, BackendKind,
};
use crate::pipeline::multi::{text_engine_on, GeometryEngines, MultiEngineSet};
use crate::pipeline::stream::StreamConfig;
use crate::quant::engines::HostInt8;
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
    /// Run on the host path and shared by the streams: one text engine (text features do not
    /// depend on the image size) and one set per input size, each stream on the set of the size its
    /// frames resize to. A set is the frame engine split into image (once per frame) and cross
    /// (batched over objects) when exported at start-up or when the directory holds the object set;
    /// otherwise a directory's frame/temporal/head (the frame engine runs once per object).
    Host {
        /// BERT + feat_map, shared by every set.
        text: Box<dyn Engine>,
        /// One set per input size (distinct sizes).
        sets: Vec<GeometryEngines>,
    },
    /// Engine sets for the device-resident path, one per stream: TensorRT engines (the plans'
    /// weights shared, an execution context and CUDA stream each, made when a stream takes its
    /// set), or (`emulated`) host engines run by the device session's host emulation (tests of the
    /// runtime's device lanes without a GPU). Each stream takes a set of the input size its frames
    /// resize to, when it opens.
    #[cfg(feature = "cuda")]
    Device {
        /// The sets streams take, by input size: made when taken, or given ready.
        sets: DeviceSets,
        /// Run under the host emulation (`pipeline::gpu::Stream::host`).
        emulated: bool,
    },
}

impl From<MultiEngineSet> for RunEngines {
    fn from(e: MultiEngineSet) -> Self {
        let (text, set) = e.split_text();
        RunEngines::Host {
            text,
            sets: vec![set],
        }
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

/// Where the engines of an input size the run has no set for come from, for a camera that joins
/// later with such a size.
#[derive(Clone)]
pub enum MoreGeometries {
    /// Exported from the run's weights when a stream needs them, one size after another by the
    /// run's export worker ([`super::exporter::Exporter`]), on these backends.
    Export(HostBackends),
    /// Nowhere: only the sets the run started with; `what` names them in errors (the engine
    /// directories, the caller's engines).
    Fixed {
        /// What the sets are, e.g. "the --engines directories".
        what: String,
        /// Each set's input (width, height) with where it came from (a directory), for errors.
        sizes: Vec<((u32, u32), String)>,
    },
}

impl MoreGeometries {
    /// The sets the caller gave (no weights to export others from).
    pub fn given() -> Self {
        MoreGeometries::Fixed {
            what: "the engines given".into(),
            sizes: Vec::new(),
        }
    }
}

/// Engines ready for a run, with the geometries they take and the stream settings they imply.
pub struct LoadedEngines {
    /// The engines.
    pub engines: RunEngines,
    /// Input geometry of each input size the engines take, first come first.
    pub geometries: Vec<Geometry>,
    /// Stream settings from the model (tracking momentum, text length).
    pub stream: StreamConfig,
    /// Where engines for another input size come from.
    pub more: MoreGeometries,
}

/// A source's frame size and the model input its frames resize to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceInput {
    /// The stream's index (its place among the configured sources).
    pub stream: usize,
    /// What the source says it is.
    pub description: String,
    /// Frame (width, height).
    pub frame: (u32, u32),
    /// Model input (width, height) at the configured shorter side.
    pub input: (u32, u32),
}

/// The distinct input sizes of `sources`, first come first (each entry the first source of that
/// size); more than [`crate::limits::MAX_GEOMETRIES`] is refused, naming them.
pub fn distinct_inputs(sources: &[SourceInput]) -> anyhow::Result<Vec<SourceInput>> {
    let mut out: Vec<SourceInput> = Vec::new();
    for s in sources {
        if !out.iter().any(|o| o.input == s.input) {
            out.push(s.clone());
        }
    }
    if out.len() > crate::limits::MAX_GEOMETRIES {
        let list: Vec<String> = out
            .iter()
            .map(|s| {
                format!(
                    "{}x{} (stream {}, {}x{} frames)",
                    s.input.0, s.input.1, s.stream, s.frame.0, s.frame.1
                )
            })
            .collect();
        bail!(
            "the sources resize to {} input sizes ({}), more than the {} engine sets a run holds \
             (one per input size); give cameras of fewer aspect ratios, or crop or scale them to a \
             common one (a gst: or csi: pipeline can)",
            out.len(),
            list.join(", "),
            crate::limits::MAX_GEOMETRIES
        );
    }
    Ok(out)
}

/// Checks the backend choice against the configuration.
pub fn backend_kind(c: &RuntimeConfig) -> anyhow::Result<BackendKind> {
    let backend = BackendKind::parse(&c.backend)?;
    if backend == BackendKind::TensorRt && c.engine_dirs().is_empty() {
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

/// The geometry of a `(width, height)` input with the run's text length and window.
fn geometry_of(c: &RuntimeConfig, (iw, ih): (u32, u32)) -> Geometry {
    Geometry {
        height: ih as usize,
        width: iw as usize,
        max_text: c.max_text(),
        window: c.window(),
    }
}

/// Loads the engines `c` names for `sources` (the sources open at start-up; `streams` are
/// configured in all, those still to come included): the engine directories' (one per input size;
/// every source must find its size among them) or an export of the weights at every input size
/// among the sources, the text engine exported once for all.
pub fn load_engines(
    c: &RuntimeConfig,
    backend: BackendKind,
    sources: &[SourceInput],
    streams: usize,
) -> anyhow::Result<LoadedEngines> {
    for s in sources {
        let ((fw, fh), (iw, ih)) = (s.frame, s.input);
        crate::limits::check_input_size(
            &format!("--short-side {}: {fw}x{fh} frames resize to", c.short_side),
            ih as usize,
            iw as usize,
        )?;
    }
    let t_build = Instant::now();
    let dirs = c.engine_dirs();
    if !dirs.is_empty() && c.int8.is_some() {
        bail!(
            "--int8 makes the engines exported at start-up INT8; an engine directory is INT8 when \
             exported so (`referdino export --precision int8 --scales TABLE`)"
        );
    }
    let loaded = if dirs.is_empty() {
        export_at_start(c, backend, sources)?
    } else {
        load_dirs(c, backend, &dirs, sources, streams)?
    };
    let sizes: Vec<String> = loaded
        .geometries
        .iter()
        .map(|g| format!("{}x{}", g.width, g.height))
        .collect();
    let (max_text, window) = loaded
        .geometries
        .first()
        .map_or((c.max_text(), c.window()), |g| (g.max_text, g.window));
    log::info!(
        "{} engines for {}, text ≤ {max_text} tokens, window {window} ready in {:.1} s",
        c.backend,
        sizes.join(" and "),
        t_build.elapsed().as_secs_f64()
    );
    Ok(loaded)
}

/// The engines of every input size among `sources`, exported from the weights: one text engine,
/// then one set per size.
fn export_at_start(
    c: &RuntimeConfig,
    backend: BackendKind,
    sources: &[SourceInput],
) -> anyhow::Result<LoadedEngines> {
    let inputs = distinct_inputs(sources)?;
    let first = inputs.first().context("no source to size the engines")?;
    let (ck, cfg) = load_model(c.weights.as_deref(), c.config.as_deref())?;
    // The model-dependent limits, checked for every size before the (allocating) exports.
    check_model_limits(c, &cfg, &inputs)?;
    let int8 = int8_table(c)?;
    let precision = crate::backend::kind::Precision::int8_if(int8.is_some());
    let backends = backend.host_backends_for(c.threads, precision)?;
    let text = text_engine_on(
        &backends,
        &ck,
        &cfg,
        &geometry_of(c, first.input),
        &ExportOptions::default(),
        int8.as_ref(),
    )?;
    let mut sets = Vec::with_capacity(inputs.len());
    for s in &inputs {
        let set = export_geometry(c, &backends, (&ck, &cfg), s, &|| false)?;
        sets.push(set.context("the export stopped without being asked to")?);
    }
    Ok(LoadedEngines {
        engines: RunEngines::Host { text, sets },
        geometries: inputs.iter().map(|s| geometry_of(c, s.input)).collect(),
        stream: StreamConfig::for_model(&cfg),
        more: MoreGeometries::Export(backends),
    })
}

/// `--max-text` within the model's text length, and enough feature tokens for the model's queries
/// at each of `inputs`.
pub(super) fn check_model_limits(
    c: &RuntimeConfig,
    cfg: &ModelConfig,
    inputs: &[SourceInput],
) -> anyhow::Result<()> {
    crate::limits::check_range(
        "--max-text",
        c.max_text(),
        crate::limits::MIN_MAX_TEXT,
        cfg.max_text_len,
    )?;
    for s in inputs {
        let ((fw, fh), (iw, ih)) = (s.frame, s.input);
        crate::graph::engines::check_enough_tokens(
            cfg,
            ih as usize,
            iw as usize,
            &format!(
                "--short-side {} ({fw}x{fh} frames resize to {iw}x{ih})",
                c.short_side
            ),
        )?;
    }
    Ok(())
}

/// The engines of `s`'s input size but the text engine, exported from the weights; `None` once
/// `stop` says so (asked before each engine: a background export the run no longer needs).
pub(super) fn export_geometry(
    c: &RuntimeConfig,
    backends: &HostBackends,
    (ck, cfg): (&Checkpoint, &ModelConfig),
    s: &SourceInput,
    stop: &dyn Fn() -> bool,
) -> anyhow::Result<Option<GeometryEngines>> {
    let int8 = int8_table(c)?;
    Ok(GeometryEngines::on_each_until(
        backends,
        ck,
        cfg,
        &geometry_of(c, s.input),
        &ExportOptions::default(),
        (c.cross_batch.max(1), c.image_batch.max(1)),
        int8.as_ref(),
        stop,
    )?)
}

/// The run's INT8 scale table (`RuntimeConfig::int8`), read.
fn int8_table(c: &RuntimeConfig) -> anyhow::Result<Option<HostInt8>> {
    c.int8
        .as_deref()
        .map(|p| HostInt8::load(p).context("--int8"))
        .transpose()
}

/// One engine directory of a run, read before its engines are loaded.
struct Dir<'a> {
    path: &'a Path,
    manifest: Manifest,
}

impl Dir<'_> {
    fn input(&self) -> (u32, u32) {
        let g = &self.manifest.geometry;
        (g.width as u32, g.height as u32)
    }
}

/// `what` of the directories' manifests must be the same: the streams share the tracker settings,
/// window and text length, and (on the host path) one text engine.
fn agree(dirs: &[Dir<'_>]) -> anyhow::Result<()> {
    let Some((first, rest)) = dirs.split_first() else {
        return Ok(());
    };
    let text_crc = |m: &Manifest| {
        m.engines
            .iter()
            .find(|e| e.name == "text")
            .and_then(|e| e.crc32.clone())
    };
    let (m0, p0) = (&first.manifest, first.path.display());
    for d in rest {
        let (m, p) = (&d.manifest, d.path.display());
        let fields: [(&str, String, String); 6] = [
            (
                "window",
                m0.geometry.window.to_string(),
                m.geometry.window.to_string(),
            ),
            (
                "text length",
                m0.geometry.max_text.to_string(),
                m.geometry.max_text.to_string(),
            ),
            (
                "tracking momentum",
                m0.tracking_alpha.to_string(),
                m.tracking_alpha.to_string(),
            ),
            ("backbone", m0.backbone.clone(), m.backbone.clone()),
            (
                "hidden size",
                m0.hidden_dim.to_string(),
                m.hidden_dim.to_string(),
            ),
            ("queries", m0.queries.to_string(), m.queries.to_string()),
        ];
        for (what, a, b) in fields {
            if a != b {
                bail!(
                    "the --engines directories disagree on the {what}: {p0} has {a}, {p} has {b}; \
                     export every input size with the same weights, --window and --max-text"
                );
            }
        }
        if let (Some(a), Some(b)) = (text_crc(m0), text_crc(m)) {
            if !a.eq_ignore_ascii_case(&b) {
                bail!(
                    "the --engines directories hold different text engines (text.onnx CRC-32 {a} in \
                     {p0}, {b} in {p}): they come from other weights or another precision; export \
                     every input size from the same checkpoint"
                );
            }
        }
    }
    // Every pair: a third directory may repeat the second's size.
    for (i, d) in dirs.iter().enumerate() {
        if let Some(e) = dirs[..i].iter().find(|e| e.input() == d.input()) {
            let (w, h) = d.input();
            bail!(
                "--engines {} and {} both take {w}x{h} images: give one directory per input size",
                e.path.display(),
                d.path.display()
            );
        }
    }
    Ok(())
}

/// The error for a source of input size `s.input` that none of `sizes` (input, where it came from)
/// takes, `what` naming the sets.
pub(crate) fn no_set_for(
    s: &SourceInput,
    short_side: u32,
    what: &str,
    sizes: &[((u32, u32), String)],
) -> String {
    let ((fw, fh), (iw, ih)) = (s.frame, s.input);
    let list: Vec<String> = sizes
        .iter()
        .map(|((w, h), from)| match from.is_empty() {
            true => format!("{w}x{h}"),
            false => format!("{w}x{h} ({from})"),
        })
        .collect();
    format!(
        "source {} ({}): {fw}x{fh} frames resize to {iw}x{ih} (shorter side {short_side}), an \
         input size {what} do not take: they take {}",
        s.stream,
        s.description,
        if list.is_empty() {
            "no other".to_string()
        } else {
            list.join(", ")
        }
    )
}

/// The engine directories' engines: each a set of one input size, which the sources open at
/// start-up must find among them.
fn load_dirs(
    c: &RuntimeConfig,
    backend: BackendKind,
    paths: &[&Path],
    sources: &[SourceInput],
    streams: usize,
) -> anyhow::Result<LoadedEngines> {
    // Engine directories (ONNX or plans) hold the image engine at batch 1: batching several
    // streams' frames needs it exported at start-up at that batch.
    if c.image_batch > 1 {
        bail!(
            "--image-batch {} needs the image engine exported at start-up at that batch (--weights/--config \
             without --engines); {} holds it at batch 1",
            c.image_batch,
            paths[0].display()
        );
    }
    if paths.len() > crate::limits::MAX_GEOMETRIES {
        bail!(
            "--engines given {} times: a run holds at most {} engine sets (one per input size)",
            paths.len(),
            crate::limits::MAX_GEOMETRIES
        );
    }
    let dirs = paths
        .iter()
        .map(|&path| {
            if !path.exists() {
                bail!(
                    "engine directory {} does not exist (write one with `referdino export` or \
                     `referdino build`)",
                    path.display()
                );
            }
            Ok(Dir {
                path,
                manifest: Manifest::read(path)?,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    agree(&dirs)?;
    let g = &dirs[0].manifest.geometry;
    // The directories' window and text length are the engines' own; a value given that
    // disagrees would be ignored, so it is refused (one equal to the default included).
    for (flag, asked, has) in [
        ("--window", c.window, g.window),
        ("--max-text", c.max_text, g.max_text),
    ] {
        if let Some(asked) = asked.filter(|&a| a != has) {
            bail!(
                "{flag} {asked}: the engines in {} were exported with {has}; drop {flag} \
                 (an engine directory fixes it) or export the engines again",
                dirs[0].path.display()
            );
        }
    }
    for s in sources {
        if !dirs.iter().any(|d| d.input() == s.input) {
            let ((fw, fh), (iw, ih)) = (s.frame, s.input);
            if let [d] = dirs.as_slice() {
                let (w, h) = d.input();
                bail!(
                    "source {} ({}): the engines in {} take {w}x{h} images, but {fw}x{fh} frames \
                     resize to {iw}x{ih} (shorter side {}); build engines for this geometry (and \
                     add them with another --engines) or change --short-side",
                    s.stream,
                    s.description,
                    d.path.display(),
                    c.short_side
                );
            }
            let sizes: Vec<((u32, u32), String)> = dirs
                .iter()
                .map(|d| (d.input(), d.path.display().to_string()))
                .collect();
            bail!(
                "{}; export engines for {iw}x{ih} (`referdino export --height {ih} --width {iw}`) \
                 and add them with another --engines, or change --short-side",
                no_set_for(s, c.short_side, "the --engines directories", &sizes)
            );
        }
    }
    // Streams still to come may take any of the sizes; without any, a directory no open source
    // uses would only hold memory. On the device path a directory's plans are deserialized once and
    // a stream's execution contexts made when it takes its set (a camera still to come makes none).
    let waiting = streams.saturating_sub(sources.len());
    let mut text = None;
    let mut host_sets = Vec::new();
    let mut device = DeviceLoad::default();
    #[cfg(feature = "tensorrt")]
    let mut device_sets = DeviceSets::default();
    let mut used = Vec::new();
    for d in &dirs {
        let users = sources.iter().filter(|s| s.input == d.input()).count();
        if users + waiting == 0 {
            log::info!(
                "{}: no source resizes to its {}x{} images; not loaded",
                d.path.display(),
                d.input().0,
                d.input().1
            );
            continue;
        }
        match load_dir(c, backend, d.path, &mut device)? {
            DirEngines::Host(e) => {
                let (t, set) = e.split_text();
                // The directories hold the same text engine (checked above): one serves all.
                text.get_or_insert(t);
                host_sets.push(set);
            }
            #[cfg(feature = "tensorrt")]
            DirEngines::Device(plans) => {
                device.texts += usize::from(plans.own_text());
                device_sets.add_maker(d.input(), Box::new(move || Ok(plans.make_set()?)));
            }
        }
        used.push(d);
    }
    let geometries = used.iter().map(|d| d.manifest.geometry).collect();
    // Agreed by every directory (checked above).
    let stream = StreamConfig {
        tracking_alpha: dirs[0].manifest.tracking_alpha,
        ..StreamConfig::default()
    };
    let more = MoreGeometries::Fixed {
        what: "the --engines directories".into(),
        sizes: used
            .iter()
            .map(|d| (d.input(), d.path.display().to_string()))
            .collect(),
    };
    #[cfg(feature = "tensorrt")]
    if !device_sets.is_empty() {
        if !host_sets.is_empty() {
            bail!("the --engines directories run on different paths (host and device): give plans of one kind");
        }
        log::info!(
            "device path: the plans of {} director(ies) deserialized once ({} text plan(s)); each \
             stream's execution contexts are made when it takes its set ({} stream(s) open now, {} \
             still to come)",
            used.len(),
            device.texts,
            sources.len(),
            waiting
        );
        return Ok(LoadedEngines {
            engines: RunEngines::Device {
                sets: device_sets,
                emulated: false,
            },
            geometries,
            stream,
            more,
        });
    }
    let text = text.context("no engine directory was loaded")?;
    Ok(LoadedEngines {
        engines: RunEngines::Host {
            text,
            sets: host_sets,
        },
        geometries,
        stream,
        more,
    })
}

/// One directory's engines: a host set, or its plans deserialized for the device path (from which
/// each stream that takes a set of its size gets execution contexts of its own).
enum DirEngines {
    Host(MultiEngineSet),
    #[cfg(feature = "tensorrt")]
    Device(crate::pipeline::engine_dir::DirPlans),
}

/// What the device-path directories of a run share while they load: one TensorRT backend (one
/// runtime, so that plans can be shared between directories) and the text plan, deserialized once.
#[derive(Default)]
struct DeviceLoad {
    #[cfg(feature = "tensorrt")]
    trt: Option<std::sync::Arc<crate::backend::tensorrt::TensorRtBackend>>,
    #[cfg(feature = "tensorrt")]
    text: Option<crate::pipeline::engine_dir::SharedTextPlan>,
    /// Text plans deserialized (one unless the directories' manifests do not say their text engine
    /// is the same).
    #[cfg(feature = "tensorrt")]
    texts: usize,
}

/// Loads the engines of `dir` for the run: TensorRT plans on the device-resident path when the run
/// takes it (with what the directories share, `device`), else one set on the host path (the object
/// set when the directory holds it).
fn load_dir(
    c: &RuntimeConfig,
    backend: BackendKind,
    dir: &Path,
    device: &mut DeviceLoad,
) -> anyhow::Result<DirEngines> {
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
        // Said once per directory at start-up, so that latency figures are read for the path
        // they measure.
        match reason {
            Some(why) => log::info!(
                "{}: TensorRT plans on the host path ({why}): engine bindings and masks go through host memory every frame",
                dir.display()
            ),
            None => log::info!(
                "{}: TensorRT plans on the device-resident path: one CUDA stream per stream, up to {} object(s) each, {}",
                dir.display(),
                c.max_objects,
                if objects {
                    format!("the object set ({batch} object(s) per cross-modal run)")
                } else {
                    "the whole frame plan once per object".to_string()
                }
            ),
        }
    }
    if trt && reason.is_none() {
        return load_device_plans(dir, c.plugins.as_deref(), objects.then_some(batch), device);
    }
    let e = if objects {
        log::info!(
            "{}: the object engine set, {batch} object(s) per cross-modal run",
            dir.display()
        );
        if trt {
            load_object_plans(dir, c.plugins.as_deref(), batch)?.0
        } else {
            load_object_onnx(dir, backend, c.threads, batch)?.0
        }
    } else {
        MultiEngineSet::from(
            load_engine_dir_threads(dir, backend, c.plugins.as_deref(), c.threads)?.0,
        )
    };
    Ok(DirEngines::Host(e))
}

/// The TensorRT plans of `dir` (the object set at `objects` per run, else the whole-frame set),
/// deserialized once on the run's backend (made by the first directory), the text plan shared
/// with the directories before it when it is the same engine.
#[cfg(feature = "tensorrt")]
fn load_device_plans(
    dir: &Path,
    plugins: Option<&Path>,
    objects: Option<usize>,
    device: &mut DeviceLoad,
) -> anyhow::Result<DirEngines> {
    use crate::pipeline::engine_dir::{load_dir_plans, plan_backend};
    let trt = match &device.trt {
        Some(t) => std::sync::Arc::clone(t),
        None => std::sync::Arc::clone(
            device
                .trt
                .insert(std::sync::Arc::new(plan_backend(plugins)?)),
        ),
    };
    let (plans, _) = load_dir_plans(&trt, dir, objects, &mut device.text)?;
    Ok(DirEngines::Device(plans))
}

/// Without the `tensorrt` feature, [`host_path_reason`] never picks the device path.
#[cfg(not(feature = "tensorrt"))]
fn load_device_plans(
    _dir: &Path,
    _plugins: Option<&Path>,
    _objects: Option<usize>,
    _device: &mut DeviceLoad,
) -> anyhow::Result<DirEngines> {
    bail!("this binary was built without the device path (feature tensorrt)")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(stream: usize, frame: (u32, u32), input: (u32, u32)) -> SourceInput {
        SourceInput {
            stream,
            description: format!("camera {stream}"),
            frame,
            input,
        }
    }

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

    /// Sources of one input size share a set; five sizes are one more than a run holds, refused
    /// naming each with the stream and frames that gave it.
    #[test]
    fn distinct_input_sizes_are_bounded_and_named() {
        let s = |i: usize, w: u32, h: u32| source(i, (w * 2, h * 2), (w, h));
        let two = distinct_inputs(&[s(0, 118, 70), s(1, 94, 70), s(2, 118, 70)]).unwrap();
        let got: Vec<(usize, (u32, u32))> = two.iter().map(|s| (s.stream, s.input)).collect();
        assert_eq!(got, [(0, (118, 70)), (1, (94, 70))]);
        let five: Vec<SourceInput> = (0..5).map(|i| s(i, 70 + 10 * i as u32, 70)).collect();
        assert_eq!(distinct_inputs(&five[..4]).unwrap().len(), 4);
        let e = distinct_inputs(&five).unwrap_err().to_string();
        assert!(
            e.contains("5 input sizes") && e.contains("110x70 (stream 4, 220x140 frames)"),
            "{e}"
        );
        assert!(e.contains("more than the 4 engine sets"), "{e}");
    }

    #[test]
    fn an_image_batch_over_an_engine_directory_is_refused_not_ignored() {
        let mut c = RuntimeConfig::new("synthetic");
        c.engines = Some("engines-dir".into());
        c.image_batch = 2;
        for backend in [BackendKind::Cpu, BackendKind::TensorRt] {
            let e = load_engines(&c, backend, &[source(0, (640, 360), (640, 360))], 2)
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
        let s = source(0, (4000, 10), input(4000, 10, 360));
        let e = load_engines(&c, BackendKind::Cpu, &[s], 1)
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
