//! Recipe frames as model input, and the FP32 calibration run over them.
//!
//! Every sample of a recipe is loaded, resized and normalised exactly like live frames
//! ([`Preprocessor`]) to the export geometry, cut into clips of at most `window` frames (the temporal
//! engine's static window), and every clip is run with every prompt of its sample through the offline
//! [`Session`] on the CPU backend.

use super::cpu_engine_set;
use crate::backend::View;
use crate::camera::convert::Preprocessor;
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::graph::engines::{ExportOptions, Geometry};
use crate::onnx::precision::with_outputs;
use crate::onnx::Weights;
use crate::pipeline::post::Selection;
use crate::pipeline::session::EngineSet;
use crate::pipeline::session::{Session, Trace, TraceSink};
use crate::quant::collect::Collector;
use crate::quant::engines::{all_calibration_tensors, fp32_models};
use crate::quant::recipe::{FrameSource, Recipe};
use crate::text::{EncodedCaption, Tokenizer};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Ops whose outputs are bounded probabilities, calibrated with the max method (see
/// [`Collector::scale_table_with`]).
pub const MAX_CALIBRATED_OPS: &[&str] = &["Softmax"];

/// The calibration tensors (of `wanted`) produced by a [`MAX_CALIBRATED_OPS`] op in `models`.
pub fn max_calibrated(
    models: &[tract_onnx::pb::ModelProto],
    wanted: &[Vec<String>],
) -> HashSet<String> {
    let mut out = HashSet::new();
    for (m, names) in models.iter().zip(wanted) {
        for n in m.graph.iter().flat_map(|g| &g.node) {
            if MAX_CALIBRATED_OPS.contains(&n.op_type.as_str()) {
                out.extend(n.output.iter().filter(|o| names.contains(o)).cloned());
            }
        }
    }
    out
}

/// One clip of one sample, preprocessed, with the prompts to run on it.
#[derive(Debug, Clone)]
pub struct Clip {
    /// Sample index in the recipe and first frame index in that sample's (spaced) frames.
    pub label: String,
    /// Normalised `[3,H,W]` frames.
    pub frames: Vec<Vec<f32>>,
    /// Prompts, tokenized.
    pub captions: Vec<EncodedCaption>,
}

/// Normalised `[3,H,W]` model input of one RGB frame at `geo`'s size (shorter side resized to the
/// geometry's shorter side, as the live preprocessing does). The resized size must be the geometry's.
pub fn preprocess(img: &image::RgbImage, geo: &Geometry) -> Result<Vec<f32>> {
    let mut p = Preprocessor::try_new(img.width(), img.height(), geo.height.min(geo.width) as u32)?;
    let (ow, oh) = p.out_size();
    if (ow as usize, oh as usize) != (geo.width, geo.height) {
        return Err(Error::Config(format!(
            "a {}x{} frame resizes to {ow}x{oh}, but the engines take {}x{}: use frames with the \
             engines' aspect ratio or a profile whose size matches them",
            img.width(),
            img.height(),
            geo.width,
            geo.height
        )));
    }
    let mut out = vec![0f32; p.out_len()];
    p.run(img.as_raw(), &mut out)?;
    Ok(out)
}

/// Frames per clip when calibrating. The statistics are streamed ([`collect_activations`]), so memory
/// no longer depends on it; it stays at the length calibration always used because the clips decide
/// what the tracker and the temporal engine see, hence the scale tables (the temporal engine still sees
/// a full window, its unused slots masked out).
pub const CALIBRATION_CLIP_FRAMES: usize = 4;

/// The recipe's samples as clips of at most `clip_frames` frames (capped at `geo.window`; relative paths
/// resolved under `root`), prompts tokenized for `cfg`.
pub fn recipe_clips(
    recipe: &Recipe,
    root: &Path,
    geo: &Geometry,
    cfg: &ModelConfig,
    clip_frames: usize,
) -> Result<Vec<Clip>> {
    let tok = Tokenizer::bundled()?;
    let mut clips = Vec::new();
    for (i, s) in recipe.samples.iter().enumerate() {
        let imgs = FrameSource::parse(&s.frames, root)?.load_spaced(s.max_frames)?;
        let mut captions = Vec::new();
        for p in s.prompts.iter().filter(|p| !p.trim().is_empty()) {
            let c = tok.encode_prompt(p, cfg.max_text_len)?;
            if c.len > geo.max_text {
                return Err(Error::Config(format!(
                    "recipe {} sample {i}: prompt {p:?} has {} tokens but the engines take {} \
                     (max_text of the geometry)",
                    recipe.name, c.len, geo.max_text
                )));
            }
            captions.push(c);
        }
        for chunk in imgs.chunks(clip_frames.min(geo.window).max(1)) {
            let frames = chunk
                .iter()
                .map(|(_, img)| preprocess(img, geo))
                .collect::<Result<Vec<_>>>()
                .map_err(|e| Error::Config(format!("recipe {} sample {i}: {e}", recipe.name)))?;
            clips.push(Clip {
                label: format!("sample{i}/frame{}", chunk[0].0),
                frames,
                captions: captions.clone(),
            });
        }
    }
    if clips.is_empty() {
        return Err(Error::Config(format!(
            "recipe {}: no frames to run",
            recipe.name
        )));
    }
    Ok(clips)
}

/// The FP32 engines with every quantized activation exposed as an extra output, and what the
/// calibration run needs to know about them. Holds no reference to the weights: build it with
/// [`CalibrationEngines::new`], drop the checkpoint, then [`CalibrationEngines::collect`].
pub struct CalibrationEngines(Tapped);

impl CalibrationEngines {
    /// Exports the four FP32 engines (with `opts`) with every activation the INT8 pass quantizes
    /// exposed, and loads them on the CPU backend.
    pub fn new(
        w: &dyn Weights,
        cfg: &ModelConfig,
        geo: &Geometry,
        opts: &ExportOptions,
    ) -> Result<Self> {
        tapped_session(w, cfg, geo, opts).map(Self)
    }

    /// As [`CalibrationEngines::new`], from the models [`calibration_models`] exported (so the
    /// weights can be dropped before the engines are loaded). Each model is dropped as soon as its
    /// engine is loaded.
    pub fn from_models(models: Vec<tract_onnx::pb::ModelProto>, cfg: &ModelConfig) -> Result<Self> {
        tapped_session_from(models, cfg).map(Self)
    }

    /// [`collect_activations_stats`] on these engines.
    pub fn collect(
        self,
        geo: &Geometry,
        clips: &[Clip],
        collector: &mut Collector,
    ) -> Result<(StreamStats, HashSet<String>)> {
        collect_streamed(self.0, geo, clips, collector)
    }
}

struct Tapped {
    /// The four engines on the CPU backend.
    session: Session,
    /// Trace key (exposed output name) → calibration tensor name (graph inputs come out through an
    /// Identity under another name).
    exposed: HashMap<String, String>,
    /// Per engine, the tensors the INT8 pass quantizes.
    wanted: Vec<Vec<String>>,
    /// Tensors calibrated with the max method.
    use_max: HashSet<String>,
}

fn tapped_session(
    w: &dyn Weights,
    cfg: &ModelConfig,
    geo: &Geometry,
    opts: &ExportOptions,
) -> Result<Tapped> {
    tapped_session_from(calibration_models(w, cfg, geo, opts)?, cfg)
}

/// The four FP32 engine models calibration runs (exported with `opts`, parity taps off).
pub fn calibration_models(
    w: &dyn Weights,
    cfg: &ModelConfig,
    geo: &Geometry,
    opts: &ExportOptions,
) -> Result<Vec<tract_onnx::pb::ModelProto>> {
    fp32_models(
        w,
        cfg,
        geo,
        &ExportOptions {
            taps: false,
            ..*opts
        },
    )
}

fn tapped_session_from(
    models: Vec<tract_onnx::pb::ModelProto>,
    cfg: &ModelConfig,
) -> Result<Tapped> {
    let wanted = all_calibration_tensors(&models)?;
    let use_max = max_calibrated(&models, &wanted);
    let mut exposed: HashMap<String, String> = HashMap::new();
    // One engine at a time: its FP32 model, its tapped copy and its encoding are dropped before the
    // next engine is loaded, so the weights are not held three times over while loading.
    let mut engines = Vec::with_capacity(models.len());
    for (i, (m, names)) in models.into_iter().zip(&wanted).enumerate() {
        let (mt, out) = with_outputs(&m, names)?;
        drop(m);
        for (o, n) in out.iter().zip(names) {
            exposed.insert(o.clone(), n.clone());
        }
        engines.push(load_cpu_engine(i, mt)?);
    }
    let mut engines = engines.into_iter();
    let mut next = || {
        engines
            .next()
            .ok_or_else(|| Error::Graph("expected 4 engine models".into()))
    };
    let set = EngineSet {
        text: next()?,
        frame: next()?,
        temporal: next()?,
        head: next()?,
    };
    let session = Session::new(set, cfg.tracking_alpha)?;
    Ok(Tapped {
        session,
        exposed,
        wanted,
        use_max,
    })
}

/// Loads engine `i` (text, frame, temporal, head order) on the CPU backend, dropping the model and its
/// encoding as soon as tract has parsed them.
fn load_cpu_engine(
    i: usize,
    m: tract_onnx::pb::ModelProto,
) -> Result<Box<dyn crate::backend::Engine>> {
    use crate::graph::engines::names;
    use prost::Message;
    let name = [names::TEXT, names::FRAME, names::TEMPORAL, names::HEAD]
        .get(i)
        .ok_or_else(|| Error::Graph(format!("expected 4 engine models, got {}", i + 1)))?;
    let bytes = m.encode_to_vec();
    drop(m);
    crate::backend::cpu::CpuBackend::new().load_bytes(name, &bytes)
}

fn check_all_observed(wanted: &[Vec<String>], collector: &Collector) -> Result<()> {
    let missing: Vec<&String> = wanted
        .iter()
        .flatten()
        .filter(|n| !collector.histograms().contains_key(*n))
        .collect();
    if !missing.is_empty() {
        return Err(Error::Graph(format!(
            "calibration never observed {} quantized activation(s): {:?}",
            missing.len(),
            missing
        )));
    }
    Ok(())
}

/// Feeds trace entries into a [`Collector`] as the session produces them (see
/// [`collect_activations`]). Shared with the caller through a mutex because the session owns its
/// trace.
struct StreamSink {
    state: Arc<Mutex<StreamState>>,
}

/// What the streaming sink holds between engine runs.
struct StreamState {
    collector: Collector,
    /// Trace key → tensor name, for the keys that are the first (in key order) of their tensor name:
    /// observed as they come.
    direct: HashMap<String, String>,
    /// Trace key → tensor name, for keys whose tensor name is also exposed under a smaller key (a
    /// tensor that is both an engine's output and another engine's input): their values are held
    /// until the run ends and then observed in key order, so every histogram sees its batches in the
    /// order of the in-memory reference.
    deferred: BTreeMap<String, (String, Vec<Vec<f32>>)>,
    /// Bytes of activations held right now (deferred values only).
    held: usize,
    /// Largest `held` seen.
    peak_held: usize,
    /// First error (a tap that is not f32).
    error: Option<Error>,
}

impl StreamState {
    fn new(collector: Collector, exposed: &HashMap<String, String>) -> Self {
        // Sorted keys, so "first key of a name" matches the in-memory path's iteration order.
        let sorted: BTreeMap<&String, &String> = exposed.iter().collect();
        let mut seen: HashSet<&String> = HashSet::new();
        let (mut direct, mut deferred) = (HashMap::new(), BTreeMap::new());
        for (k, n) in sorted {
            if seen.insert(n) {
                direct.insert(k.clone(), n.clone());
            } else {
                deferred.insert(k.clone(), (n.clone(), Vec::new()));
            }
        }
        StreamState {
            collector,
            direct,
            deferred,
            held: 0,
            peak_held: 0,
            error: None,
        }
    }

    fn take(&mut self, key: &str, t: View<'_>) -> Result<()> {
        let f32s = || match t {
            View::F32(v) => Ok(v),
            other => Err(Error::Graph(format!(
                "calibration tap {key} is {:?}, not f32",
                other.dtype()
            ))),
        };
        if let Some(name) = self.direct.get(key) {
            return self.collector.observe(name, f32s()?);
        }
        if let Some((_, held)) = self.deferred.get_mut(key) {
            let v = f32s()?;
            held.push(v.to_vec());
            self.held += std::mem::size_of_val(v);
            self.peak_held = self.peak_held.max(self.held);
        }
        Ok(())
    }

    /// Observes the held values of one run, in key order, and ends the sample.
    fn end_run(&mut self) -> Result<()> {
        for (name, held) in self.deferred.values_mut() {
            for v in held.drain(..) {
                self.collector.observe(name, &v)?;
            }
        }
        self.held = 0;
        self.collector.end_sample();
        match self.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl TraceSink for StreamSink {
    fn take(&mut self, key: &str, t: View<'_>) {
        let mut st = match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if st.error.is_none() {
            if let Err(e) = st.take(key, t) {
                st.error = Some(e);
            }
        }
    }
}

/// What one streaming calibration run held (see [`collect_activations_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Clip × prompt runs.
    pub runs: usize,
    /// Largest number of activation bytes the collection held at once outside the engines (values of
    /// tensors exposed under two names, kept until their run ends; 0 when there are none).
    pub peak_held_bytes: usize,
    /// Bytes of the collector's histograms after each run (constant once every tensor was seen).
    pub histogram_bytes_per_run: usize,
}

/// Runs the FP32 engines (exported with `opts`) over `clips` on the CPU backend and feeds every
/// activation the INT8 pass quantizes into `collector`, under the exact names [`crate::onnx::precision::insert_qdq`]
/// consumes. Errors when some quantized activation was never observed. Returns the number of
/// clip × prompt runs and the tensors to calibrate with the max method ([`max_calibrated`]).
///
/// Streaming: each activation goes into its histogram as soon as the engine has computed it (the
/// engines lend their taps, [`crate::backend::Engine::run_taps`]; on the CPU backend straight from
/// tract's per-node hook) and is not kept, so memory does not grow with the clip or the calibration
/// set, and a run never holds all of its activations at once. The histograms are
/// exactly those of [`collect_activations_in_memory`] (which holds a whole clip's activations): every
/// tensor receives the same batches in the same order, and a [`Histogram`](crate::quant::histogram::Histogram)
/// depends only on that sequence.
pub fn collect_activations(
    w: &dyn Weights,
    cfg: &ModelConfig,
    geo: &Geometry,
    opts: &ExportOptions,
    clips: &[Clip],
    collector: &mut Collector,
) -> Result<(usize, HashSet<String>)> {
    collect_activations_stats(w, cfg, geo, opts, clips, collector).map(|(s, m)| (s.runs, m))
}

/// [`collect_activations`], also reporting what the collection held ([`StreamStats`]).
pub fn collect_activations_stats(
    w: &dyn Weights,
    cfg: &ModelConfig,
    geo: &Geometry,
    opts: &ExportOptions,
    clips: &[Clip],
    collector: &mut Collector,
) -> Result<(StreamStats, HashSet<String>)> {
    CalibrationEngines::new(w, cfg, geo, opts)?.collect(geo, clips, collector)
}

fn collect_streamed(
    tapped: Tapped,
    geo: &Geometry,
    clips: &[Clip],
    collector: &mut Collector,
) -> Result<(StreamStats, HashSet<String>)> {
    let Tapped {
        mut session,
        exposed,
        wanted,
        use_max,
    } = tapped;
    let state = Arc::new(Mutex::new(StreamState::new(
        std::mem::replace(collector, Collector::new(collector.bins())?),
        &exposed,
    )));
    let mut stats = StreamStats::default();
    let result = (|| -> Result<()> {
        for clip in clips {
            for cap in &clip.captions {
                session.trace = Some(Trace {
                    sink: Some(Box::new(StreamSink {
                        state: state.clone(),
                    })),
                    ..Default::default()
                });
                let r = session.run_video(
                    cap,
                    &clip.frames,
                    (geo.height, geo.width),
                    Selection::Single,
                );
                session.trace = None;
                r?;
                let mut st = lock(&state);
                st.end_run()?;
                stats.runs += 1;
                stats.histogram_bytes_per_run = st.collector.held_bytes();
                log::info!(
                    "calibration run {}: {} {:?}",
                    stats.runs,
                    clip.label,
                    cap.caption
                );
            }
        }
        Ok(())
    })();
    drop(session);
    let st = match Arc::try_unwrap(state) {
        Ok(m) => m.into_inner().unwrap_or_else(|p| p.into_inner()),
        Err(_) => return Err(Error::Other("calibration sink still shared".into())),
    };
    *collector = st.collector;
    stats.peak_held_bytes = st.peak_held;
    result?;
    check_all_observed(&wanted, collector)?;
    Ok((stats, use_max))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The reference for [`collect_activations`]: the same run, but every tapped activation of a clip is
/// held in the session's trace until the clip ends, then observed tensor by tensor (memory grows with
/// the clip: about 2.5 GB per frame for Swin-T at 360×640). Kept for tests that check the streaming
/// path gives identical histograms.
pub fn collect_activations_in_memory(
    w: &dyn Weights,
    cfg: &ModelConfig,
    geo: &Geometry,
    opts: &ExportOptions,
    clips: &[Clip],
    collector: &mut Collector,
) -> Result<(usize, HashSet<String>)> {
    let Tapped {
        mut session,
        exposed,
        wanted,
        use_max,
    } = tapped_session(w, cfg, geo, opts)?;
    let mut runs = 0;
    for clip in clips {
        for cap in &clip.captions {
            session.trace = Some(Trace::default());
            session.run_video(
                cap,
                &clip.frames,
                (geo.height, geo.width),
                Selection::Single,
            )?;
            let trace = session.trace.take().unwrap_or_default();
            for (key, parts) in &trace.parts {
                if let Some(name) = exposed.get(key) {
                    for t in parts {
                        collector.observe(name, t.f32s()?)?;
                    }
                }
            }
            collector.end_sample();
            runs += 1;
        }
    }
    check_all_observed(&wanted, collector)?;
    Ok((runs, use_max))
}

/// FP16 and INT8 agreement with FP32 over `clips` (see [`super::agreement::VariantAgreement`]).
///
/// - reference: the FP32 engines (native custom ops) on the CPU backend;
/// - `fp16`: the decomposed export through [`crate::onnx::precision::to_fp16`] (the CPU backend's
///   custom-op kernels are f32-only; the decomposed form computes the same ops in standard ONNX);
/// - `int8`: the export form the table was calibrated on, with the Q/DQ pairs of
///   [`crate::onnx::precision::insert_qdq`] from `table` and FP32 elsewhere, run by the CPU backend
///   itself (tract executes QuantizeLinear/DequantizeLinear), so it measures INT8 alone; the deployed
///   INT8 engines also run the unquantized ops in FP16, whose cost is the `fp16` row.
pub fn run_agreement(
    w: &dyn Weights,
    cfg: &ModelConfig,
    geo: &Geometry,
    table: &crate::quant::ScaleTable,
    table_path: &Path,
    clips: &[Clip],
) -> Result<Vec<super::agreement::VariantAgreement>> {
    use super::agreement::VariantAccumulator;
    use crate::quant::engines::{activation_scales, apply, check_table};
    use crate::quant::Precision;
    let native = ExportOptions::default();
    let decomposed = ExportOptions {
        taps: false,
        decompose_custom_ops: true,
    };
    let int8_opts = if table.custom_ops.as_deref() == Some("decomposed") {
        decomposed.clone()
    } else {
        native.clone()
    };
    check_table(table, table_path, &int8_opts, geo)?;
    let scales = activation_scales(table);
    let convert = |opts: &ExportOptions, p: Precision| -> Result<Vec<_>> {
        fp32_models(w, cfg, geo, opts)?
            .iter()
            .map(|m| apply(m, p, Some(&scales), false).map(|(m, _)| m))
            .collect()
    };
    let mut reference = Session::new(
        cpu_engine_set(&fp32_models(w, cfg, geo, &native)?)?,
        cfg.tracking_alpha,
    )?;
    let mut variants = [
        (
            VariantAccumulator::new("fp16 (decomposed)"),
            Session::new(
                cpu_engine_set(&convert(&decomposed, Precision::Fp16)?)?,
                cfg.tracking_alpha,
            )?,
        ),
        (
            VariantAccumulator::new(format!(
                "int8 Q/DQ ({})",
                crate::quant::engines::custom_ops_label(&int8_opts)
            )),
            Session::new(
                cpu_engine_set(&convert(&int8_opts, Precision::Int8)?)?,
                cfg.tracking_alpha,
            )?,
        ),
    ];
    let ns = reference.dims().ns;
    let size = (geo.height, geo.width);
    for clip in clips {
        for (k, cap) in clip.captions.iter().enumerate() {
            let key = format!("{}/prompt{k}", clip.label);
            let r = reference.run_video(cap, &clip.frames, size, Selection::Single)?;
            for (acc, s) in variants.iter_mut() {
                let t = s.run_video(cap, &clip.frames, size, Selection::Single)?;
                acc.add_run(&key, &r, &t, ns)?;
            }
        }
    }
    variants.iter().map(|(a, _)| a.finish()).collect()
}
