//! Recipe frames as model input, and the FP32 calibration run over them.
//!
//! Every sample of a recipe is loaded, resized and normalised exactly like live frames
//! ([`Preprocessor`]) to the export geometry, cut into clips of at most `window` frames (the temporal
//! engine's static window), and every clip is run with every prompt of its sample through the offline
//! [`Session`] on the CPU backend.

use super::collect::Collector;
use super::engines::{all_calibration_tensors, cpu_engine_set, fp32_models};
use super::recipe::{spaced_indices, FrameSource, Recipe};
use crate::camera::convert::Preprocessor;
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::graph::engines::{ExportOptions, Geometry};
use crate::graph::precision::with_outputs;
use crate::graph::Weights;
use crate::pipeline::post::Selection;
use crate::pipeline::session::{Session, Trace};
use crate::text::{EncodedCaption, Tokenizer};
use std::collections::HashMap;
use std::path::Path;

/// Ops whose outputs are bounded probabilities, calibrated with the max method (see
/// [`Collector::scale_table_with`]).
pub const MAX_CALIBRATED_OPS: &[&str] = &["Softmax"];

/// The calibration tensors (of `wanted`) produced by a [`MAX_CALIBRATED_OPS`] op in `models`.
pub fn max_calibrated(
    models: &[tract_onnx::pb::ModelProto],
    wanted: &[Vec<String>],
) -> std::collections::HashSet<String> {
    let mut out = std::collections::HashSet::new();
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
    let mut p = Preprocessor::new(img.width(), img.height(), geo.height.min(geo.width) as u32);
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

/// Frames per clip when calibrating: every tapped activation of a clip is held until the clip ends
/// (about 0.3 GB per frame for Swin-T at 360×640), so calibration runs short clips; the temporal engine
/// still sees a full window, its unused slots masked out.
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
        let imgs = FrameSource::parse(&s.frames, root)?.load()?;
        let idx = spaced_indices(imgs.len(), s.max_frames);
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
        for chunk in idx.chunks(clip_frames.min(geo.window).max(1)) {
            let frames = chunk
                .iter()
                .map(|&k| preprocess(&imgs[k], geo))
                .collect::<Result<Vec<_>>>()
                .map_err(|e| Error::Config(format!("recipe {} sample {i}: {e}", recipe.name)))?;
            clips.push(Clip {
                label: format!("sample{i}/frame{}", chunk[0]),
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

/// Runs the FP32 engines (exported with `opts`) over `clips` on the CPU backend and feeds every
/// activation the INT8 pass quantizes into `collector`, under the exact names [`crate::graph::precision::insert_qdq`]
/// consumes. Errors when some quantized activation was never observed. Returns the number of
/// clip × prompt runs and the tensors to calibrate with the max method ([`max_calibrated`]).
pub fn collect_activations(
    w: &dyn Weights,
    cfg: &ModelConfig,
    geo: &Geometry,
    opts: &ExportOptions,
    clips: &[Clip],
    collector: &mut Collector,
) -> Result<(usize, std::collections::HashSet<String>)> {
    let models = fp32_models(
        w,
        cfg,
        geo,
        &ExportOptions {
            taps: false,
            ..*opts
        },
    )?;
    let wanted = all_calibration_tensors(&models)?;
    // Exposed output name → tensor name (graph inputs come out through an Identity under another name).
    let mut exposed: HashMap<String, String> = HashMap::new();
    let mut tapped = Vec::with_capacity(models.len());
    for (m, names) in models.iter().zip(&wanted) {
        let (mt, out) = with_outputs(m, names)?;
        for (o, n) in out.iter().zip(names) {
            exposed.insert(o.clone(), n.clone());
        }
        tapped.push(mt);
    }
    let mut session = Session::new(cpu_engine_set(&tapped)?, cfg.tracking_alpha)?;
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
            log::info!("calibration run {runs}: {} {:?}", clip.label, cap.caption);
        }
    }
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
    Ok((runs, max_calibrated(&models, &wanted)))
}

/// FP16 and INT8 agreement with FP32 over `clips` (see [`super::agreement::VariantAgreement`]).
///
/// - reference: the FP32 engines (native custom ops) on the CPU backend;
/// - `fp16`: the decomposed export through [`crate::graph::precision::to_fp16`] (the CPU backend's
///   custom-op kernels are f32-only; the decomposed form computes the same ops in standard ONNX);
/// - `int8`: the export form the table was calibrated on, with the Q/DQ pairs of
///   [`crate::graph::precision::insert_qdq`] from `table` and FP32 elsewhere, run by the CPU backend
///   itself (tract executes QuantizeLinear/DequantizeLinear), so it measures INT8 alone; the deployed
///   INT8 engines also run the unquantized ops in FP16, whose cost is the `fp16` row.
pub fn run_agreement(
    w: &dyn Weights,
    cfg: &ModelConfig,
    geo: &Geometry,
    table: &super::ScaleTable,
    table_path: &Path,
    clips: &[Clip],
) -> Result<Vec<super::agreement::VariantAgreement>> {
    use super::agreement::VariantAccumulator;
    use super::engines::{activation_scales, apply, check_table};
    use super::Precision;
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
                super::engines::custom_ops_label(&int8_opts)
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
