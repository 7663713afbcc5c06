//! The four engines at a chosen precision: FP32 export → [`to_fp16`] (FP16) or [`insert_qdq`] from a
//! scale table then [`to_fp16`] (INT8, explicit Q/DQ with FP16 elsewhere), written to disk for a build or
//! loaded on the CPU backend for calibration and agreement runs.
//!
//! The tensor names a scale table holds are exactly the activation names [`calibration_tensors`] lists
//! and [`insert_qdq`] consumes. Those names come from the exported graph, so they depend on the export
//! form (native custom ops vs decomposed) and on the geometry (e.g. Swin pads only some sizes): a table
//! records both ([`ScaleTable::custom_ops`], [`ScaleTable::geometry`]) and [`check_table`] refuses a
//! mismatch with a message that names `referdino calibrate`.

use super::policy::Precision;
use super::scale::{ScaleTable, TensorScale};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::graph::engines::{build_engines, names, ExportOptions, Geometry};
use crate::graph::export::{export_engines, Manifest};
use crate::graph::fp32_policy;
use crate::onnx::precision::{calibration_tensors, insert_qdq, to_fp16, Int8Options, QdqReport};
use crate::onnx::Weights;
use prost::Message;
use std::collections::HashMap;
use std::path::Path;
use tract_onnx::pb;

/// `native` or `decomposed`, as written in manifests and scale tables.
pub fn custom_ops_label(opts: &ExportOptions) -> &'static str {
    if opts.decompose_custom_ops {
        "decomposed"
    } else {
        "native"
    }
}

/// The per-tensor activation scales of a table, as [`insert_qdq`] takes them.
pub fn activation_scales(table: &ScaleTable) -> HashMap<String, f32> {
    table
        .tensors
        .iter()
        .filter_map(|(k, v)| match v {
            TensorScale::PerTensor { scale, .. } => Some((k.clone(), *scale)),
            TensorScale::PerChannel { .. } => None,
        })
        .collect()
}

/// Activation scales for an engine of the object set (`image`, `cross`, the batched `temporal` and
/// `head`) from the scales of the whole-frame engines `whole` (the FP32 text, frame, temporal and head
/// models): each activation takes the scale of the tensor that the node of the same name reads at the
/// same input in the whole-frame engine the object engine was cut from (`frame` for `image` and
/// `cross`). Node names are the graph's scopes, shared by both sets, and the same layer computes the
/// same values per object; tensor names are not a safe key, as the split and the batched layout name
/// some of their own (the cross engine's `stride4` input, the batched temporal decoder's reshapes) and
/// reuse others for different tensors. An activation whose node has no counterpart keeps its own entry
/// if `scales` has one, else is left out, and [`apply`] then refuses the graph naming it.
pub fn mapped_scales(
    whole: &[pb::ModelProto],
    model: &pb::ModelProto,
    scales: &HashMap<String, f32>,
) -> Result<HashMap<String, f32>> {
    let needed = calibration_tensors(model, &fp32_policy::policy(), &Int8Options::default())?;
    let name = model.graph.as_ref().map_or("", |g| g.name.as_str());
    let source = match name {
        n if n == names::IMAGE_PART || n == names::CROSS => names::FRAME,
        n => n,
    };
    let source = whole
        .iter()
        .filter_map(|m| m.graph.as_ref())
        .find(|g| g.name == source)
        .ok_or_else(|| {
            Error::Graph(format!(
                "engine `{name}`: no whole-frame engine `{source}` to take its scales from"
            ))
        })?;
    let mut by_site: HashMap<(&str, usize), &str> = HashMap::new();
    for n in &source.node {
        for (i, t) in n.input.iter().enumerate() {
            by_site.insert((n.name.as_str(), i), t.as_str());
        }
    }
    let needed: std::collections::HashSet<&str> = needed.iter().map(String::as_str).collect();
    let mut out = HashMap::with_capacity(needed.len());
    let g = model
        .graph
        .as_ref()
        .ok_or_else(|| Error::Graph("model has no graph".into()))?;
    for n in &g.node {
        for (i, t) in n.input.iter().enumerate() {
            if !needed.contains(t.as_str()) || out.contains_key(t) {
                continue;
            }
            let scale = match by_site.get(&(n.name.as_str(), i)) {
                Some(w) => scales.get(*w),
                None => scales.get(t),
            };
            if let Some(&s) = scale {
                out.insert(t.clone(), s);
            }
        }
    }
    Ok(out)
}

/// Checks that `table` was calibrated for this export form and geometry (when it says so).
pub fn check_table(
    table: &ScaleTable,
    table_path: &Path,
    opts: &ExportOptions,
    geo: &Geometry,
) -> Result<()> {
    let hint = "re-run `referdino calibrate --weights W --recipe calib/<name>.toml --profile P` \
                (add --decompose-custom-ops when building with it)";
    check_fit(table, table_path, opts, geo, true, hint)
}

/// [`check_table`] and [`HostInt8::check`]: the export form, and the geometry (all of it with
/// `text_and_window`, else the frame size) the table records, against the engines'.
fn check_fit(
    table: &ScaleTable,
    path: &Path,
    opts: &ExportOptions,
    geo: &Geometry,
    text_and_window: bool,
    hint: &str,
) -> Result<()> {
    let path = path.display();
    let form = custom_ops_label(opts);
    if let Some(c) = table.custom_ops.as_deref().filter(|c| *c != form) {
        return Err(Error::Config(format!(
            "scale table {path} was calibrated on the {c} export but these engines are the \
             {form} export; tensor names depend on it, {hint}"
        )));
    }
    let at = |g: &Geometry| {
        if text_and_window {
            format!(
                "{}x{} (text {}, window {})",
                g.height, g.width, g.max_text, g.window
            )
        } else {
            format!("{}x{} (height x width)", g.height, g.width)
        }
    };
    if let Some(g) = table.geometry.filter(|g| at(g) != at(geo)) {
        return Err(Error::Config(format!(
            "scale table {path} was calibrated at {} but these engines are exported at {}; \
             tensor names depend on the geometry, {hint}",
            at(&g),
            at(geo)
        )));
    }
    Ok(())
}

/// What [`apply`] did to one engine.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Applied {
    /// Engine name.
    pub engine: String,
    /// Nodes before.
    pub nodes_before: usize,
    /// Nodes after.
    pub nodes_after: usize,
    /// Cast nodes of the FP16 pass.
    pub casts: usize,
    /// Nodes kept in f32 by the policy.
    pub f32_nodes: usize,
    /// Per-channel weight Q/DQ pairs.
    pub weight_pairs: usize,
    /// Per-tensor activation Q/DQ pairs.
    pub activation_pairs: usize,
}

/// Applies `precision` to one FP32 engine. `int8` needs `scales` (from [`activation_scales`]) covering
/// every activation [`calibration_tensors`] lists for this engine; `fp16_rest` also converts what is not
/// quantized to FP16 (what the deployed INT8 engines do; CPU agreement runs measure INT8 alone).
pub fn apply(
    model: &pb::ModelProto,
    precision: Precision,
    scales: Option<&HashMap<String, f32>>,
    fp16_rest: bool,
) -> Result<(pb::ModelProto, Applied)> {
    let g = model
        .graph
        .as_ref()
        .ok_or_else(|| Error::Graph("model has no graph".into()))?;
    let mut a = Applied {
        engine: g.name.clone(),
        nodes_before: g.node.len(),
        nodes_after: g.node.len(),
        ..Default::default()
    };
    let policy = fp32_policy::policy();
    // Without FP16 the engines are the host form: uint8 activations (see `Int8Options::activation_u8`).
    let int8_opts = Int8Options {
        activation_u8: !fp16_rest,
        ..Int8Options::default()
    };
    let qdq = |m: &pb::ModelProto, a: &mut Applied| -> Result<pb::ModelProto> {
        let scales = scales.ok_or_else(|| {
            Error::Config("int8 needs a scale table (run `referdino calibrate`)".into())
        })?;
        let (mq, r): (pb::ModelProto, QdqReport) = insert_qdq(m, &policy, scales, &int8_opts)
            .map_err(|e| {
                Error::Config(format!(
                    "engine `{}`: the scale table does not cover this graph ({e}); re-run \
                     `referdino calibrate` for this checkpoint, profile and export form",
                    a.engine
                ))
            })?;
        a.weight_pairs = r.weight_pairs;
        a.activation_pairs = r.activation_pairs;
        a.nodes_after = r.nodes_after;
        Ok(mq)
    };
    let half = |m: &pb::ModelProto, a: &mut Applied| -> Result<pb::ModelProto> {
        let (m16, r) = to_fp16(m, &policy)?;
        a.casts = r.casts;
        a.f32_nodes = r.f32_nodes;
        a.nodes_after = r.nodes_after;
        Ok(m16)
    };
    let out = match precision {
        Precision::Fp32 => model.clone(),
        Precision::Fp16 => half(model, &mut a)?,
        Precision::Int8 => {
            let mq = qdq(model, &mut a)?;
            if fp16_rest {
                half(&mq, &mut a)?
            } else {
                mq
            }
        }
    };
    Ok((out, a))
}

/// The four FP32 engine models (text, frame, temporal, head) in memory.
pub fn fp32_models(
    w: &dyn Weights,
    cfg: &ModelConfig,
    geo: &Geometry,
    opts: &ExportOptions,
) -> Result<Vec<pb::ModelProto>> {
    Ok(build_engines(w, cfg, geo, opts)?
        .into_iter()
        .map(|g| g.into_model())
        .collect())
}

/// The four FP32 engine graphs (text, frame, temporal, head) without their initializers: the node
/// structure [`mapped_scales`] reads, without holding the weights (hundreds of MB at Swin-T) while the
/// object engines are exported.
pub fn fp32_structure(
    w: &dyn Weights,
    cfg: &ModelConfig,
    geo: &Geometry,
    opts: &ExportOptions,
) -> Result<Vec<pb::ModelProto>> {
    let mut models = fp32_models(w, cfg, geo, opts)?;
    for g in models.iter_mut().filter_map(|m| m.graph.as_mut()) {
        g.initializer = Vec::new();
    }
    Ok(models)
}

/// Every activation the INT8 pass quantizes, over the four models (graph order, no repeats).
pub fn all_calibration_tensors(models: &[pb::ModelProto]) -> Result<Vec<Vec<String>>> {
    models
        .iter()
        .map(|m| calibration_tensors(m, &fp32_policy::policy(), &Int8Options::default()))
        .collect()
}

/// Exports the four engines with [`export_engines`], then rewrites each file at `precision` (INT8: Q/DQ
/// from `table`; with `fp16_rest` FP16 elsewhere, the TensorRT form, else FP32 elsewhere, the form ONNX
/// Runtime runs on a CPU) and records the precision in `manifest.json` (`precision`, `rest` and
/// `scales` for INT8). Returns the manifest and what was applied per engine.
#[allow(clippy::too_many_arguments)]
pub fn export_with_precision(
    w: &dyn Weights,
    cfg: &ModelConfig,
    geo: &Geometry,
    opts: &ExportOptions,
    precision: Precision,
    table: Option<(&ScaleTable, &Path)>,
    fp16_rest: bool,
    out_dir: &Path,
) -> Result<(Manifest, Vec<Applied>)> {
    let scales = match (precision, table) {
        (Precision::Int8, Some((t, p))) => {
            check_table(t, p, opts, geo)?;
            Some(activation_scales(t))
        }
        (Precision::Int8, None) => {
            return Err(Error::Config(
                "int8 export needs a scale table (run `referdino calibrate`)".into(),
            ))
        }
        _ => None,
    };
    let mut m = export_engines(w, cfg, geo, opts, out_dir)?;
    let mut applied = Vec::new();
    for e in m.engines.iter_mut() {
        let path = out_dir.join(&e.file);
        let bytes = std::fs::read(&path).map_err(|err| Error::io(&path, err))?;
        let model = pb::ModelProto::decode(bytes.as_slice())
            .map_err(|err| Error::Graph(format!("{}: {err}", path.display())))?;
        let (out, a) = apply(&model, precision, scales.as_ref(), fp16_rest)?;
        let bytes = out.encode_to_vec();
        std::fs::write(&path, &bytes).map_err(|err| Error::io(&path, err))?;
        e.bytes = bytes.len() as u64;
        e.crc32 = Some(crate::engines::checksum::crc32_of(&bytes));
        e.nodes = a.nodes_after;
        log::info!(
            "{} at {precision}: {} → {} nodes ({} casts, {} weight + {} activation Q/DQ pairs)",
            e.name,
            a.nodes_before,
            a.nodes_after,
            a.casts,
            a.weight_pairs,
            a.activation_pairs
        );
        applied.push(a);
    }
    m.precision = Some(precision.as_str().into());
    if precision == Precision::Int8 {
        m.rest = Some(if fp16_rest { "fp16" } else { "host" }.into());
        m.scales = table.map(|(_, p)| p.display().to_string());
    }
    let p = out_dir.join("manifest.json");
    let json = serde_json::to_string_pretty(&m).map_err(|e| Error::Other(e.to_string()))?;
    std::fs::write(&p, json).map_err(|e| Error::io(&p, e))?;
    Ok((m, applied))
}

/// Writes the object engine set of the export `m` into `dir` at `precision`, like
/// [`export_with_precision`] does the whole-frame engines: INT8 takes the whole-frame table, carried
/// over to the object engines node by node ([`mapped_scales`]; the FP32 whole-frame graphs say which
/// tensor each site read there).
#[allow(clippy::too_many_arguments)]
pub fn export_objects_with_precision(
    w: &dyn Weights,
    cfg: &ModelConfig,
    geo: &Geometry,
    opts: &ExportOptions,
    precision: Precision,
    table: Option<&ScaleTable>,
    fp16_rest: bool,
    m: &Manifest,
    dir: &Path,
) -> Result<crate::graph::object_engines::ObjectManifest> {
    use crate::graph::object_engines::{build_object_engines_with, write_object_engines};
    let p = crate::graph::engines::NetParams::new(cfg, geo)?;
    let int8 = match table {
        Some(t) if precision == Precision::Int8 => {
            Some((fp32_structure(w, cfg, geo, opts)?, activation_scales(t)))
        }
        _ => None,
    };
    let finish = |m: pb::ModelProto| {
        let scales = match &int8 {
            Some((whole, s)) => Some(mapped_scales(whole, &m, s)?),
            None => None,
        };
        apply(&m, precision, scales.as_ref(), fp16_rest).map(|(m, _)| m)
    };
    let es = build_object_engines_with(w, &p, geo, opts, &finish)?;
    write_object_engines(&es, geo, m, dir)
}

/// A scale table ready to make INT8 engines in memory for the host backends (`run`, `eval`, `demo`
/// with `--int8 TABLE`): each engine is exported FP32, then gets Q/DQ pairs in the host form
/// ([`apply`] without FP16: uint8 activations, FP32 elsewhere), which ONNX Runtime runs as integer
/// products.
///
/// The tensor names a table holds depend on the export form and on the frame size (Swin pads only
/// some sizes), so both must match the table's; the text length and the window only change the
/// sizes of the same tensors (`tests/quant/int8_build.rs` checks that the quantized sites are the same
/// nodes), so live runs and evaluations may use another text length or window than calibration did.
/// A table that lacks an activation of a graph is refused by [`HostInt8::apply`].
#[derive(Clone, Debug)]
pub struct HostInt8 {
    path: std::path::PathBuf,
    table: ScaleTable,
    scales: HashMap<String, f32>,
}

impl HostInt8 {
    /// Reads the table at `path` (written by `referdino calibrate`).
    pub fn load(path: &Path) -> Result<Self> {
        let table = ScaleTable::load(path)?;
        let scales = activation_scales(&table);
        Ok(HostInt8 {
            path: path.to_path_buf(),
            table,
            scales,
        })
    }

    /// The table's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Checks that the table fits engines exported with `opts` at `geo` (export form and frame size;
    /// see the type's documentation).
    pub fn check(&self, opts: &ExportOptions, geo: &Geometry) -> Result<()> {
        let hint =
            "calibrate a table for these engines (`referdino calibrate --weights W --recipe \
                    R`, the recipe's [geometry] at this frame size)";
        check_fit(&self.table, &self.path, opts, geo, false, hint)
    }

    /// `model` (an FP32 whole-frame engine) in the host INT8 form.
    pub fn apply(&self, model: &pb::ModelProto) -> Result<pb::ModelProto> {
        apply(model, Precision::Int8, Some(&self.scales), false).map(|(m, _)| m)
    }

    /// `model` (an FP32 engine of the object set) in the host INT8 form, its scales carried over from
    /// the FP32 whole-frame engines `whole` ([`mapped_scales`]; [`fp32_structure`] is enough).
    pub fn apply_object(
        &self,
        whole: &[pb::ModelProto],
        model: &pb::ModelProto,
    ) -> Result<pb::ModelProto> {
        let scales = mapped_scales(whole, model, &self.scales)?;
        apply(model, Precision::Int8, Some(&scales), false).map(|(m, _)| m)
    }
}
