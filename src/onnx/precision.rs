//! Precision passes over a finished FP32 ONNX model: strongly typed FP16 export, INT8 Q/DQ insertion,
//! and the list of activations INT8 calibration must observe.
//!
//! Which ops stay in FP32 is decided in ONE place: a [`Policy`] (the model's table is
//! `crate::graph::fp32_policy`: its rules plus the engine outputs computed in f32). A rule matches nodes by op type, by op type inside a node-name scope,
//! or by a small pattern, and keeps either the whole node or some of its inputs in f32. With `feeders`, the
//! f32 region also extends backwards over everything that computes those inputs (Reshape, Add, Sigmoid,
//! Gather, ... chains) until a [`FEEDER_STOP_OPS`] op (MatMul, Conv, LayerNorm, ...) whose output is then
//! cast. [`Policy::place`] turns the table into a per-node [`Placement`] that both passes and the tests use.
//!
//! - [`to_fp16`]: every f32 tensor becomes f16 except the f32 placement; f32 initializers are stored as f16
//!   (finite values beyond ±65504 saturate, counted in the report); graph inputs and outputs keep their
//!   declared types with explicit `Cast` nodes at the boundary, and every f16↔f32 crossing inside the graph
//!   is an explicit `Cast` (the result is strongly typed, as TensorRT's strongly-typed mode wants).
//! - [`insert_qdq`]: QuantizeLinear/DequantizeLinear pairs (symmetric int8, zero point 0, opset-13
//!   semantics) on the inputs of MatMul and Conv outside the f32 placement: weights per output channel
//!   (scale = max|w| / 127 over the channel; axis = last axis of a MatMul weight, 0 of a Conv weight),
//!   activations per tensor with the calibrated scale.
//! - [`calibration_tensors`] lists those activations; [`with_outputs`] exposes them as graph outputs.
//!
//! A deployed INT8 engine is [`insert_qdq`] then [`to_fp16`]. There every quantized op (a MatMul, Gemm or
//! Conv fed by a DequantizeLinear, rule [`Match::Dequantized`]) computes in f32: its DequantizeLinear
//! inputs feed it directly and its output is cast to f16 after it. A `DequantizeLinear → Cast → MatMul`
//! chain is not a pattern TensorRT's explicit-quantization fusion documents, so the GEMM could stay FP16
//! behind a separate dequantize; `DequantizeLinear → MatMul` is, and the Cast after the op is a pointwise
//! epilogue. The alternative, an FP16-typed DequantizeLinear, needs opset ≥ 19 (output type = scale
//! type) for the whole model, which changes Reduce*/Pad/Resize/Split forms of every engine and what the
//! CPU runtimes must parse; opset 17 with f32 Q/DQ is what all of them (tract, ONNX Runtime, TensorRT
//! 10.3's parser) run today.

use super::infer::{
    annotate, attr_i, elem, infer_types, init_f32, init_numel, value_info, TypeMap,
};
use crate::error::{Error, Result};
use half::f16;
use std::collections::{HashMap, HashSet};
use tract_onnx::pb;

/// How a [`Rule`] finds its nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Match {
    /// Any node of this op type.
    Op(&'static str),
    /// A node of this op type whose name has a scope component equal to (or starting with, followed by
    /// digits) the given scope: `OpInScope("MatMul", "dec")` matches `dec2/matmul_3`.
    OpInScope(&'static str, &'static str),
    /// Every node in that scope.
    Scope(&'static str),
    /// A `Div` whose divisor comes from a `Sqrt` (the normalise step of the GroupNorm decomposition).
    DivBySqrt,
    /// A MatMul, Gemm or Conv with an input produced by a `DequantizeLinear`: an op that [`insert_qdq`]
    /// quantized (see [`QUANTIZED_OPS`]).
    Dequantized,
}

/// Op types that run in INT8 when their inputs come from `DequantizeLinear` (TensorRT fuses the
/// DequantizeLinear into them when it feeds them directly).
pub const QUANTIZED_OPS: &[&str] = &["MatMul", "Gemm", "Conv"];

/// What a [`Rule`] keeps in f32.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Keep {
    /// The whole node: every float input and output.
    Node,
    /// Only these input positions; the node itself follows the graph precision.
    Inputs(&'static [usize]),
}

/// One line of the FP32 policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Which nodes.
    pub matches: Match,
    /// What stays f32.
    pub keep: Keep,
    /// Whether the ops computing the kept inputs (back to a [`FEEDER_STOP_OPS`] op) stay f32 too.
    pub feeders: bool,
    /// Why (shown in reports).
    pub why: &'static str,
}

/// A [`Rule`] in one line (tables of rules are written with it).
pub const fn rule(matches: Match, keep: Keep, feeders: bool, why: &'static str) -> Rule {
    Rule {
        matches,
        keep,
        feeders,
        why,
    }
}

/// Ops the feeder walk does not enter: their outputs are cast to f32 instead.
pub const FEEDER_STOP_OPS: &[&str] = &[
    "MatMul",
    "Gemm",
    "Conv",
    "LayerNormalization",
    "MSDeformAttn",
    "GridSample",
    "QueryPrune",
];

/// Ops that only move data: with a single float input they take that input's type instead of the graph
/// precision (the FP16 pass then casts at the next compute op, never around a reshape).
pub const PASS_THROUGH_OPS: &[&str] = &[
    "Identity",
    "Reshape",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Slice",
    "Gather",
    "GatherElements",
    "Expand",
];

/// The FP32 policy: rules, f32 graph outputs and feeder stop ops.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Rules, all applied.
    pub rules: Vec<Rule>,
    /// Graph outputs computed in f32 (with feeders).
    pub f32_outputs: Vec<String>,
    /// Ops that end a feeder walk.
    pub stop_ops: Vec<String>,
}

/// Where each node of a model runs, as decided by a [`Policy`].
#[derive(Clone, Debug)]
pub struct Placement {
    /// Per node (graph order): computes in f32.
    pub f32_node: Vec<bool>,
    /// Per node: input positions that must be f32 although the node is not.
    pub f32_inputs: Vec<Vec<usize>>,
    /// Per node: the reason it is f32 (rule text or "feeds an f32 input"), if it is.
    pub why: Vec<Option<&'static str>>,
}

impl Placement {
    /// Names of the f32 nodes.
    pub fn f32_node_names(&self, model: &pb::ModelProto) -> Vec<String> {
        graph(model)
            .map(|g| {
                g.node
                    .iter()
                    .zip(&self.f32_node)
                    .filter(|(_, &f)| f)
                    .map(|(n, _)| n.name.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether input `j` of node `i` must be f32.
    pub fn input_is_f32(&self, i: usize, j: usize) -> bool {
        self.f32_node[i] || self.f32_inputs[i].contains(&j)
    }
}

fn graph(model: &pb::ModelProto) -> Result<&pb::GraphProto> {
    model
        .graph
        .as_ref()
        .ok_or_else(|| Error::Graph("model has no graph".into()))
}

fn scope_has(name: &str, scope: &str) -> bool {
    let s = name.rsplit_once('/').map(|(s, _)| s).unwrap_or("");
    s.split('/').any(|c| {
        c.strip_prefix(scope)
            .is_some_and(|r| r.chars().all(|ch| ch.is_ascii_digit()))
    })
}

fn scope_name(name: &str) -> &str {
    name.rsplit_once('/').map(|(s, _)| s).unwrap_or("")
}

impl Policy {
    fn matches(
        &self,
        r: &Rule,
        n: &pb::NodeProto,
        producer: &HashMap<&str, usize>,
        nodes: &[pb::NodeProto],
    ) -> bool {
        match &r.matches {
            Match::Op(op) => n.op_type == *op,
            Match::OpInScope(op, s) => n.op_type == *op && scope_has(&n.name, s),
            Match::Scope(s) => scope_has(&n.name, s),
            Match::DivBySqrt => {
                n.op_type == "Div"
                    && n.input
                        .get(1)
                        .and_then(|d| producer.get(d.as_str()))
                        .is_some_and(|&p| nodes[p].op_type == "Sqrt")
            }
            Match::Dequantized => {
                QUANTIZED_OPS.contains(&n.op_type.as_str())
                    && n.input.iter().any(|s| {
                        producer
                            .get(s.as_str())
                            .is_some_and(|&p| nodes[p].op_type == "DequantizeLinear")
                    })
            }
        }
    }

    /// Applies the policy to `model` (whose inferred types are `types`).
    pub fn place(&self, model: &pb::ModelProto, types: &TypeMap) -> Result<Placement> {
        let g = graph(model)?;
        let nodes = &g.node;
        let mut producer: HashMap<&str, usize> = HashMap::new();
        for (i, n) in nodes.iter().enumerate() {
            for o in &n.output {
                producer.insert(o.as_str(), i);
            }
        }
        let is_float = |t: &str| types.get(t).is_some_and(|t| elem::is_float(t.elem));
        let mut p = Placement {
            f32_node: vec![false; nodes.len()],
            f32_inputs: vec![Vec::new(); nodes.len()],
            why: vec![None; nodes.len()],
        };
        let mut seeds: Vec<&str> = Vec::new();
        for (i, n) in nodes.iter().enumerate() {
            for r in &self.rules {
                if !self.matches(r, n, &producer, nodes) {
                    continue;
                }
                let kept: Vec<usize> = match &r.keep {
                    Keep::Node => {
                        p.f32_node[i] = true;
                        p.why[i].get_or_insert(r.why);
                        (0..n.input.len()).collect()
                    }
                    Keep::Inputs(ix) => {
                        for &j in ix.iter() {
                            if j < n.input.len() && !p.f32_inputs[i].contains(&j) {
                                p.f32_inputs[i].push(j);
                            }
                        }
                        ix.to_vec()
                    }
                };
                if r.feeders {
                    seeds.extend(
                        kept.iter()
                            .filter_map(|&j| n.input.get(j))
                            .map(|s| s.as_str())
                            .filter(|s| !s.is_empty()),
                    );
                }
            }
        }
        for o in &g.output {
            if self.f32_outputs.contains(&o.name) {
                seeds.push(o.name.as_str());
            }
        }
        let mut seen: HashSet<&str> = HashSet::new();
        while let Some(t) = seeds.pop() {
            if !seen.insert(t) || !is_float(t) {
                continue;
            }
            let Some(&i) = producer.get(t) else { continue };
            let n = &nodes[i];
            if self.stop_ops.contains(&n.op_type) {
                continue;
            }
            if !p.f32_node[i] {
                p.f32_node[i] = true;
                p.why[i] = Some("computes an f32 input (feeder)");
            }
            seeds.extend(n.input.iter().map(|s| s.as_str()).filter(|s| !s.is_empty()));
        }
        Ok(p)
    }
}

/// Node counts and conversions done by [`to_fp16`].
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Fp16Report {
    /// Nodes in the input model.
    pub nodes_before: usize,
    /// Nodes in the output model.
    pub nodes_after: usize,
    /// `Cast` nodes inserted.
    pub casts: usize,
    /// Nodes that compute in f32 (policy and feeders).
    pub f32_nodes: usize,
    /// f32 initializers now stored as f16 (copies included).
    pub f16_initializers: usize,
    /// Initializers kept in f32 because an f32 consumer reads them.
    pub f32_initializers: usize,
    /// Finite initializer values beyond ±65504 that saturated.
    pub saturated: usize,
}

struct Namer {
    used: HashSet<String>,
}

impl Namer {
    fn fresh(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut k = 1;
        while self.used.contains(&name) {
            name = format!("{base}_{k}");
            k += 1;
        }
        self.used.insert(name.clone());
        name
    }
}

fn namer_for(g: &pb::GraphProto) -> Namer {
    let mut used = HashSet::new();
    for n in &g.node {
        used.insert(n.name.clone());
        used.extend(n.output.iter().cloned());
    }
    used.extend(g.initializer.iter().map(|t| t.name.clone()));
    used.extend(g.input.iter().map(|t| t.name.clone()));
    Namer { used }
}

fn cast_node(name: String, input: &str, output: &str, to: i32) -> pb::NodeProto {
    pb::NodeProto {
        input: vec![input.to_string()],
        output: vec![output.to_string()],
        name,
        op_type: "Cast".into(),
        attribute: vec![pb::AttributeProto {
            name: "to".into(),
            r#type: pb::attribute_proto::AttributeType::Int as i32,
            i: to as i64,
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn to_f16_tensor(
    t: &pb::TensorProto,
    name: &str,
    saturated: &mut usize,
) -> Result<pb::TensorProto> {
    let v = init_f32(t)
        .ok_or_else(|| Error::Graph(format!("initializer `{}` is not float32", t.name)))?;
    let mut raw = Vec::with_capacity(v.len() * 2);
    for x in v {
        let y = if x.is_finite() && x.abs() > 65504.0 {
            *saturated += 1;
            65504f32.copysign(x)
        } else {
            x
        };
        raw.extend_from_slice(&f16::from_f32(y).to_le_bytes());
    }
    Ok(pb::TensorProto {
        dims: t.dims.clone(),
        data_type: elem::F16,
        name: name.to_string(),
        raw_data: raw,
        ..Default::default()
    })
}

/// Converts an FP32 model to strongly typed FP16 under `policy` (see the module docs).
pub fn to_fp16(model: &pb::ModelProto, policy: &Policy) -> Result<(pb::ModelProto, Fp16Report)> {
    let types = infer_types(model)?;
    if let Some((name, _)) = types
        .iter()
        .find(|(_, t)| elem::is_float(t.elem) && t.elem != elem::F32)
    {
        return Err(Error::Graph(format!(
            "to_fp16 expects an fp32 model; tensor `{name}` is already a narrower float"
        )));
    }
    let pl = policy.place(model, &types)?;
    let g = graph(model)?;
    let f32t = |s: &str| types.get(s).is_some_and(|t| t.elem == elem::F32);
    let inits: HashMap<&str, &pb::TensorProto> =
        g.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut rep = Fp16Report {
        nodes_before: g.node.len(),
        f32_nodes: pl.f32_node.iter().filter(|&&f| f).count(),
        ..Default::default()
    };

    // Pass 1: the element type every float input wants.
    let want: Vec<Vec<Option<i32>>> = g
        .node
        .iter()
        .enumerate()
        .map(|(i, n)| {
            n.input
                .iter()
                .enumerate()
                .map(|(j, s)| {
                    (!s.is_empty() && f32t(s)).then(|| {
                        if pl.input_is_f32(i, j) {
                            elem::F32
                        } else {
                            elem::F16
                        }
                    })
                })
                .collect()
        })
        .collect();
    let mut init_need: HashMap<&str, (bool, bool)> = HashMap::new();
    for (n, w) in g.node.iter().zip(&want) {
        for (s, w) in n.input.iter().zip(w) {
            if let (Some(w), true) = (w, inits.contains_key(s.as_str())) {
                let e = init_need.entry(s.as_str()).or_default();
                if *w == elem::F32 {
                    e.0 = true;
                } else {
                    e.1 = true;
                }
            }
        }
    }
    let mut namer = namer_for(g);
    let mut init_f16_name: HashMap<&str, String> = HashMap::new();
    let mut initializers = Vec::with_capacity(g.initializer.len());
    for t in &g.initializer {
        let (need32, need16) = init_need
            .get(t.name.as_str())
            .copied()
            .unwrap_or((true, false));
        if t.data_type != elem::F32 || !need16 {
            if t.data_type == elem::F32 {
                rep.f32_initializers += 1;
            }
            initializers.push(t.clone());
            continue;
        }
        let name = if need32 {
            rep.f32_initializers += 1;
            initializers.push(t.clone());
            namer.fresh(&format!("{}::f16", t.name))
        } else {
            t.name.clone()
        };
        initializers.push(to_f16_tensor(t, &name, &mut rep.saturated)?);
        rep.f16_initializers += 1;
        init_f16_name.insert(t.name.as_str(), name);
    }

    // Pass 2: nodes with casts at every crossing.
    let mut cur: HashMap<String, i32> = HashMap::new();
    for i in &g.input {
        if let Some(t) = types.get(&i.name) {
            cur.insert(i.name.clone(), t.elem);
        }
    }
    let mut casts: HashMap<(String, i32), String> = HashMap::new();
    let mut nodes = Vec::with_capacity(g.node.len() * 2);
    for (i, n) in g.node.iter().enumerate() {
        let prec = if pl.f32_node[i] { elem::F32 } else { elem::F16 };
        let mut nn = n.clone();
        let mut wants = want[i].clone();
        // Data movement of one non-constant float tensor keeps that tensor's type: no cast round trip
        // (an f32 value reshaped or passed to a graph output stays exact).
        if !pl.f32_node[i]
            && PASS_THROUGH_OPS.contains(&n.op_type.as_str())
            && wants.iter().filter(|w| w.is_some()).count() == 1
        {
            if let (Some(Some(_)), Some(src)) = (wants.first(), n.input.first()) {
                if let (false, Some(&t)) = (inits.contains_key(src.as_str()), cur.get(src)) {
                    wants[0] = Some(t);
                }
            }
        }
        for (j, w) in wants.iter().enumerate() {
            let Some(w) = *w else { continue };
            let src = n.input[j].as_str();
            if inits.contains_key(src) {
                if w == elem::F16 {
                    nn.input[j] = init_f16_name[src].clone();
                }
                continue;
            }
            let have = *cur.get(src).ok_or_else(|| {
                Error::Graph(format!(
                    "to_fp16: `{src}` used by `{}` before definition",
                    n.name
                ))
            })?;
            if have == w {
                continue;
            }
            let key = (src.to_string(), w);
            let name = match casts.get(&key) {
                Some(c) => c.clone(),
                None => {
                    let tag = if w == elem::F16 { "f16" } else { "f32" };
                    let out = namer.fresh(&format!("{src}::{tag}"));
                    let scope = scope_name(&n.name);
                    let base = if scope.is_empty() {
                        format!("cast_{tag}")
                    } else {
                        format!("{scope}/cast_{tag}")
                    };
                    nodes.push(cast_node(namer.fresh(&base), src, &out, w));
                    rep.casts += 1;
                    casts.insert(key, out.clone());
                    out
                }
            };
            nn.input[j] = name;
        }
        // Output types: float outputs follow input 0 (Where: input 1), else the node precision.
        let lead = if n.op_type == "Where" { 1 } else { 0 };
        let lead_t = wants.get(lead).copied().flatten();
        for o in &n.output {
            if o.is_empty() || !f32t(o) {
                continue;
            }
            let t = match n.op_type.as_str() {
                "Cast" | "DequantizeLinear" => prec,
                _ => lead_t.unwrap_or(prec),
            };
            cur.insert(o.clone(), t);
        }
        if n.op_type == "Cast" && attr_i(n, "to", 0) as i32 == elem::F32 {
            for a in nn.attribute.iter_mut().filter(|a| a.name == "to") {
                a.i = prec as i64;
            }
        }
        nodes.push(nn);
    }
    // Graph outputs keep their declared type.
    for o in &g.output {
        let declared = types.get(&o.name).map(|t| t.elem);
        let have = cur.get(&o.name).copied();
        if let (Some(d), Some(h)) = (declared, have) {
            if d != h && !inits.contains_key(o.name.as_str()) {
                let inner = namer.fresh(&format!("{}::f16", o.name));
                for nd in nodes.iter_mut() {
                    for s in nd.output.iter_mut().chain(nd.input.iter_mut()) {
                        if *s == o.name {
                            *s = inner.clone();
                        }
                    }
                }
                let name = namer.fresh(&format!("output/cast_{}", o.name));
                nodes.push(cast_node(name, &inner, &o.name, d));
                rep.casts += 1;
            }
        }
    }
    rep.nodes_after = nodes.len();
    let mut out = model.clone();
    let og = out.graph.as_mut().expect("graph checked above");
    og.node = nodes;
    og.initializer = initializers;
    og.value_info.clear();
    annotate(&mut out)?;
    Ok((out, rep))
}

/// Options of [`insert_qdq`].
#[derive(Clone, Debug)]
pub struct Int8Options {
    /// Also quantize MatMuls of two activations (attention scores and attention × values).
    pub activation_matmuls: bool,
    /// Leave an activation in float when `scales` has no entry for it (otherwise that is an error).
    pub allow_missing_scales: bool,
    /// Activations as uint8 with zero point 128 instead of int8 with zero point 0: the same grid and
    /// the same saturation (`q_u8 = q_i8 + 128`), so the same values. The host form (ONNX Runtime on a
    /// CPU) wants it: its x86 integer products take uint8 activations, and its own int8 → uint8
    /// rewrite only takes a QuantizeLinear with a single DequantizeLinear after it, so an activation
    /// feeding several products (BERT's query, key and value) would keep them in float behind a
    /// dequantize (benches/README.md, "INT8 on the CPU"). TensorRT takes symmetric int8 only.
    pub activation_u8: bool,
}

impl Default for Int8Options {
    fn default() -> Self {
        Int8Options {
            activation_matmuls: true,
            allow_missing_scales: false,
            activation_u8: false,
        }
    }
}

/// What [`insert_qdq`] did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct QdqReport {
    /// Nodes in the input model.
    pub nodes_before: usize,
    /// Nodes in the output model.
    pub nodes_after: usize,
    /// MatMul/Conv nodes with at least one quantized input.
    pub quantized_nodes: usize,
    /// Per-channel weight Q/DQ pairs.
    pub weight_pairs: usize,
    /// Per-tensor activation Q/DQ pairs.
    pub activation_pairs: usize,
    /// Activations left in float for lack of a scale (with `allow_missing_scales`).
    pub missing_scales: Vec<String>,
}

/// One input that [`insert_qdq`] quantizes.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Site {
    node: usize,
    input: usize,
    /// `Some(axis)` for a per-channel weight.
    weight_axis: Option<usize>,
}

fn qdq_sites(model: &pb::ModelProto, policy: &Policy, opts: &Int8Options) -> Result<Vec<Site>> {
    let types = infer_types(model)?;
    let pl = policy.place(model, &types)?;
    let g = graph(model)?;
    let inits: HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    let mut sites = Vec::new();
    for (i, n) in g.node.iter().enumerate() {
        let inputs: &[usize] = match n.op_type.as_str() {
            "MatMul" => &[0, 1],
            "Conv" => &[0, 1],
            _ => continue,
        };
        if pl.f32_node[i] || !pl.f32_inputs[i].is_empty() {
            continue;
        }
        let is_w = |j: usize| n.input.get(j).is_some_and(|s| inits.contains(s.as_str()));
        if n.op_type == "MatMul" && !is_w(0) && !is_w(1) && !opts.activation_matmuls {
            continue;
        }
        for &j in inputs {
            let Some(s) = n.input.get(j) else { continue };
            let Some(t) = types.get(s) else { continue };
            if t.elem != elem::F32 {
                continue;
            }
            let weight_axis = if is_w(j) {
                let r = t.shape.len();
                Some(match (n.op_type.as_str(), j) {
                    ("Conv", _) => 0,
                    (_, 1) => r - 1,
                    _ => r.saturating_sub(2),
                })
            } else {
                None
            };
            sites.push(Site {
                node: i,
                input: j,
                weight_axis,
            });
        }
    }
    Ok(sites)
}

/// Names of the activation tensors [`insert_qdq`] quantizes per tensor, in graph order: what INT8
/// calibration must observe (add them as outputs with [`with_outputs`]).
pub fn calibration_tensors(
    model: &pb::ModelProto,
    policy: &Policy,
    opts: &Int8Options,
) -> Result<Vec<String>> {
    let g = graph(model)?;
    let mut seen = HashSet::new();
    Ok(qdq_sites(model, policy, opts)?
        .into_iter()
        .filter(|s| s.weight_axis.is_none())
        .map(|s| g.node[s.node].input[s.input].clone())
        .filter(|n| seen.insert(n.clone()))
        .collect())
}

/// A copy of `model` that also outputs the tensors `names`, and the output name under which each one is
/// exposed (in `names` order): the tensor's own name, or `{name}::calib` through an `Identity` for graph
/// inputs (runtimes reject an input that is also an output). Existing outputs are reused.
pub fn with_outputs(
    model: &pb::ModelProto,
    names: &[String],
) -> Result<(pb::ModelProto, Vec<String>)> {
    let types = infer_types(model)?;
    let mut out = model.clone();
    let g = out
        .graph
        .as_mut()
        .ok_or_else(|| Error::Graph("model has no graph".into()))?;
    let mut namer = namer_for(g);
    let mut exposed = Vec::with_capacity(names.len());
    for n in names {
        if g.output.iter().any(|o| o.name == *n) {
            exposed.push(n.clone());
            continue;
        }
        let t = types
            .get(n)
            .ok_or_else(|| Error::Graph(format!("with_outputs: no tensor `{n}` in the model")))?;
        let name = if g.input.iter().any(|i| i.name == *n) {
            let o = namer.fresh(&format!("{n}::calib"));
            g.node.push(pb::NodeProto {
                input: vec![n.clone()],
                output: vec![o.clone()],
                name: namer.fresh(&format!("calib/{n}")),
                op_type: "Identity".into(),
                ..Default::default()
            });
            o
        } else {
            n.clone()
        };
        g.output.push(value_info(&name, t));
        exposed.push(name);
    }
    Ok((out, exposed))
}

/// Engine precision requested by a profile, and the compute precision of one node.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit float everywhere (the reference).
    Fp32,
    /// FP16 compute with the FP32 islands of the policy.
    Fp16,
    /// INT8 Q/DQ on MatMul/Gemm/Conv inputs, FP16 elsewhere, FP32 islands kept.
    Int8,
}

impl Precision {
    /// Lower-case name (`fp32`, `fp16`, `int8`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Fp16 => "fp16",
            Precision::Int8 => "int8",
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Precision {
    type Err = crate::Error;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "fp32" => Ok(Precision::Fp32),
            "fp16" => Ok(Precision::Fp16),
            "int8" => Ok(Precision::Int8),
            _ => Err(crate::Error::Config(format!(
                "unknown precision {s:?} (expected fp32, fp16 or int8)"
            ))),
        }
    }
}

/// Largest magnitude of a symmetric int8 code.
pub const QMAX: f32 = 127.0;

/// Symmetric per-channel int8 scales of a weight: max|w| / 127 over every axis but `axis` (1.0 for an
/// all-zero channel, which then quantizes to exact zeros).
pub fn weight_scales(w: &[f32], shape: &[usize], axis: usize) -> Result<Vec<f32>> {
    per_channel_scales(w, shape, axis)
}

/// `amax / 127`, or 1 when amax is 0, not finite, or so small (under ~1.5e-36) that the scale
/// would be subnormal or round to 0 (such values quantize to 0 either way).
pub fn scale_from_amax(amax: f32) -> f32 {
    let s = amax / QMAX;
    if amax.is_finite() && s >= f32::MIN_POSITIVE {
        s
    } else {
        1.0
    }
}

/// Per-channel symmetric scales of a weight tensor along `axis` (row-major `shape`).
pub fn per_channel_scales(weights: &[f32], shape: &[usize], axis: usize) -> Result<Vec<f32>> {
    if axis >= shape.len() {
        return Err(Error::Shape(format!(
            "per-channel axis {axis} out of range for weight shape {shape:?}"
        )));
    }
    let numel: usize = shape.iter().product();
    if numel != weights.len() {
        return Err(Error::Shape(format!(
            "weight shape {shape:?} holds {numel} elements, got {}",
            weights.len()
        )));
    }
    let channels = shape[axis];
    let inner: usize = shape[axis + 1..].iter().product();
    let mut amax = vec![0f32; channels];
    for (i, &w) in weights.iter().enumerate() {
        let c = (i / inner) % channels;
        if w.is_finite() {
            amax[c] = amax[c].max(w.abs());
        }
    }
    Ok(amax.into_iter().map(scale_from_amax).collect())
}

fn f32_init(name: &str, dims: &[usize], v: &[f32]) -> pb::TensorProto {
    pb::TensorProto {
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: elem::F32,
        name: name.into(),
        raw_data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn i8_zeros(name: &str, dims: &[usize]) -> pb::TensorProto {
    pb::TensorProto {
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: elem::I8,
        name: name.into(),
        raw_data: vec![0u8; dims.iter().product()],
        ..Default::default()
    }
}

fn qdq_nodes(
    namer: &mut Namer,
    scope: &str,
    src: &str,
    scale: &str,
    zp: &str,
    axis: Option<usize>,
) -> (Vec<pb::NodeProto>, String) {
    let q = namer.fresh(&format!("{src}::q"));
    let dq = namer.fresh(&format!("{src}::dq"));
    let attrs: Vec<pb::AttributeProto> = axis
        .map(|a| pb::AttributeProto {
            name: "axis".into(),
            r#type: pb::attribute_proto::AttributeType::Int as i32,
            i: a as i64,
            ..Default::default()
        })
        .into_iter()
        .collect();
    let pre = if scope.is_empty() {
        String::new()
    } else {
        format!("{scope}/")
    };
    let nq = pb::NodeProto {
        input: vec![src.into(), scale.into(), zp.into()],
        output: vec![q.clone()],
        name: namer.fresh(&format!("{pre}quantizelinear")),
        op_type: "QuantizeLinear".into(),
        attribute: attrs.clone(),
        ..Default::default()
    };
    let ndq = pb::NodeProto {
        input: vec![q, scale.into(), zp.into()],
        output: vec![dq.clone()],
        name: namer.fresh(&format!("{pre}dequantizelinear")),
        op_type: "DequantizeLinear".into(),
        attribute: attrs,
        ..Default::default()
    };
    (vec![nq, ndq], dq)
}

/// Inserts int8 Q/DQ pairs on the inputs of MatMul and Conv outside the f32 placement (see the module
/// docs). `scales` maps activation tensor names to their per-tensor scale (> 0, finite).
pub fn insert_qdq(
    model: &pb::ModelProto,
    policy: &Policy,
    scales: &HashMap<String, f32>,
    opts: &Int8Options,
) -> Result<(pb::ModelProto, QdqReport)> {
    let sites = qdq_sites(model, policy, opts)?;
    let g = graph(model)?;
    let inits: HashMap<&str, &pb::TensorProto> =
        g.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut rep = QdqReport {
        nodes_before: g.node.len(),
        ..Default::default()
    };
    let missing: Vec<String> = sites
        .iter()
        .filter(|s| s.weight_axis.is_none())
        .map(|s| g.node[s.node].input[s.input].clone())
        .filter(|n| !scales.contains_key(n))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if !missing.is_empty() && !opts.allow_missing_scales {
        return Err(Error::Graph(format!(
            "insert_qdq: no calibrated scale for {} activation(s): {}",
            missing.len(),
            missing.join(", ")
        )));
    }
    for (k, &v) in scales {
        if !(v.is_finite() && v > 0.0) {
            return Err(Error::Graph(format!(
                "insert_qdq: scale of `{k}` is {v}; it must be finite and > 0"
            )));
        }
    }
    rep.missing_scales = missing;
    let mut namer = namer_for(g);
    let mut initializers = g.initializer.clone();
    let zp_scalar = namer.fresh("qdq::zero_point");
    initializers.push(if opts.activation_u8 {
        pb::TensorProto {
            data_type: elem::U8,
            name: zp_scalar.clone(),
            raw_data: vec![128],
            ..Default::default()
        }
    } else {
        i8_zeros(&zp_scalar, &[])
    });
    let mut by_node: HashMap<usize, Vec<&Site>> = HashMap::new();
    for s in &sites {
        by_node.entry(s.node).or_default().push(s);
    }
    let mut done: HashMap<(String, Option<usize>), String> = HashMap::new();
    let mut nodes = Vec::with_capacity(g.node.len() + 2 * sites.len());
    for (i, n) in g.node.iter().enumerate() {
        let mut nn = n.clone();
        let mut any = false;
        for s in by_node.get(&i).map(|v| v.as_slice()).unwrap_or(&[]) {
            let src = n.input[s.input].clone();
            let key = (src.clone(), s.weight_axis);
            if let Some(dq) = done.get(&key) {
                nn.input[s.input] = dq.clone();
                any = true;
                continue;
            }
            let scope = scope_name(&n.name);
            let (new, dq) = match s.weight_axis {
                Some(axis) => {
                    let t = inits[src.as_str()];
                    let v = init_f32(t).ok_or_else(|| {
                        Error::Graph(format!("insert_qdq: weight `{src}` is not float32"))
                    })?;
                    let shape: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
                    if init_numel(t) != v.len() {
                        return Err(Error::Graph(format!("insert_qdq: weight `{src}` size")));
                    }
                    let sc = weight_scales(&v, &shape, axis)?;
                    let sname = namer.fresh(&format!("{src}::qscale"));
                    let zname = namer.fresh(&format!("{src}::qzero"));
                    initializers.push(f32_init(&sname, &[sc.len()], &sc));
                    initializers.push(i8_zeros(&zname, &[sc.len()]));
                    rep.weight_pairs += 1;
                    qdq_nodes(&mut namer, scope, &src, &sname, &zname, Some(axis))
                }
                None => {
                    let Some(&sc) = scales.get(&src) else {
                        continue;
                    };
                    let sname = namer.fresh(&format!("{src}::qscale"));
                    initializers.push(f32_init(&sname, &[], &[sc]));
                    rep.activation_pairs += 1;
                    qdq_nodes(&mut namer, scope, &src, &sname, &zp_scalar, None)
                }
            };
            nodes.extend(new);
            nn.input[s.input] = dq.clone();
            done.insert(key, dq);
            any = true;
        }
        if any {
            rep.quantized_nodes += 1;
        }
        nodes.push(nn);
    }
    rep.nodes_after = nodes.len();
    let mut out = model.clone();
    let og = out.graph.as_mut().expect("graph checked above");
    og.node = nodes;
    og.initializer = initializers;
    og.value_info.clear();
    annotate(&mut out)?;
    Ok((out, rep))
}
