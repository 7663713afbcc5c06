//! Compute and parameter counting over a finished ONNX model (docs/model.md: Compute budget).
//!
//! Counts follow docs/model.md: Compute budget: **MACs** are the multiply-accumulates of MatMul (with numpy broadcasting of
//! the batch axes), Gemm and Conv; everything else is reported in separate columns so the MAC column is
//! comparable with the independent per-stage count in docs/model.md (Compute budget):
//! - **elementwise**: approximate scalar operations of point-wise ops (one per output element), reductions
//!   (one per input element), Softmax (5 per element: max, subtract, exp, sum, divide), LayerNormalization
//!   (8 per element), TopK (one per input element), the weighting of deformable attention, QueryPrune's gate;
//! - **sampling**: bilinear taps (4 per sampled value) of GridSample, bilinear Resize and the MSDeformAttn
//!   custom op, whose cost is derived from its I/O shapes (`value [B,S,H,Dh]`, `locations [B,Q,H,L,P,2]`);
//! - data movement (Reshape, Transpose, Slice, Concat, Gather, Pad, Cast, Identity, ...) counts zero.
//!
//! Nodes are attributed to **stages** by [`StageRule`]s: first by node-name scope (our node names are
//! `scope/…/op`), then by the official state-dict key of a weight the node reads, then by inheriting the
//! stage of the node that produced its first input with a stage (so attention score products land with the
//! projections that feed them), and finally the stage of its first consumer with one (reshapes of graph
//! inputs). [`StageRule::spec_rows`] reproduces the rows of docs/model.md: Compute budget.
//! Parameters are the initializers named by official keys (names with a `.`, no `/`; host-derived copies
//! `key#tag` included), attributed to the stage of their first consumer.

use super::infer::{attr, elem, infer_types, init_numel, TypeMap};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use tract_onnx::pb;

/// Counters of one node, group or model.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Multiply-accumulates of MatMul / Gemm / Conv.
    pub macs: u64,
    /// Approximate point-wise / reduction operations (see the module docs).
    pub elementwise: u64,
    /// Bilinear taps of sampling ops.
    pub sampling: u64,
    /// Parameter elements (weights by official key).
    pub params: u64,
    /// Bytes of those parameters as stored in the model.
    pub weight_bytes: u64,
    /// Bytes of other initializers (host-computed constants, masks, shape tensors).
    pub const_bytes: u64,
    /// Number of nodes.
    pub nodes: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.macs += o.macs;
        self.elementwise += o.elementwise;
        self.sampling += o.sampling;
        self.params += o.params;
        self.weight_bytes += o.weight_bytes;
        self.const_bytes += o.const_bytes;
        self.nodes += o.nodes;
    }
}

/// Cost of one node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCost {
    /// Node name (`scope/op`).
    pub name: String,
    /// ONNX op type.
    pub op: String,
    /// Node-name scope (the name without its last component).
    pub scope: String,
    /// Stage the node is attributed to.
    pub stage: String,
    /// MACs.
    pub macs: u64,
    /// Point-wise / reduction operations.
    pub elementwise: u64,
    /// Bilinear taps.
    pub sampling: u64,
}

/// Totals of one group (a stage or a scope prefix).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupCost {
    /// Stage label or scope prefix.
    pub name: String,
    /// Totals.
    #[serde(flatten)]
    pub counts: Counts,
}

/// Compute and parameter report of one model.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CostReport {
    /// Graph name.
    pub model: String,
    /// Per node, in graph order.
    pub nodes: Vec<NodeCost>,
    /// Per stage, in rule order (then `other`), empty stages left out.
    pub stages: Vec<GroupCost>,
    /// Per node-name scope prefix of the requested depth, in first-appearance order.
    pub scopes: Vec<GroupCost>,
    /// Whole model.
    pub total: Counts,
}

/// One stage row: which nodes belong to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageRule {
    /// Row label.
    pub stage: String,
    /// Scope patterns: a pattern matches a node when one of the node name's scope components equals it,
    /// optionally followed by digits (`dec` matches `dec3/matmul`).
    pub scopes: Vec<String>,
    /// Official state-dict key prefixes of weights the node reads.
    pub weights: Vec<String>,
}

impl StageRule {
    fn new(stage: &str, scopes: &[&str], weights: &[&str]) -> Self {
        StageRule {
            stage: stage.into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            weights: weights.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// The rows of docs/model.md: Compute budget, keyed by the scopes our modules use and by official key prefixes.
    pub fn spec_rows() -> Vec<StageRule> {
        vec![
            StageRule::new("Swin backbone", &["swin", "backbone"], &["backbone.0."]),
            StageRule::new("input projections", &["input_proj"], &["input_proj."]),
            StageRule::new(
                "BERT + feat_map",
                &["bert", "feat_map"],
                &["bert.", "feat_map."],
            ),
            StageRule::new(
                "enhancer: deformable self-attn + FFN",
                &[],
                &["transformer.encoder.layers."],
            ),
            StageRule::new(
                "enhancer: bi-attention fusion",
                &[],
                &["transformer.encoder.fusion_layers."],
            ),
            StageRule::new(
                "enhancer: text self-attention",
                &[],
                &["transformer.encoder.text_layers."],
            ),
            StageRule::new(
                "two-stage heads",
                &["query_selection", "two_stage"],
                &[
                    "transformer.enc_output",
                    "transformer.enc_out_",
                    "transformer.tgt_embed",
                    "transformer.level_embed",
                ],
            ),
            StageRule::new(
                "decoder (+ query pos, box refinement)",
                &["dec", "decoder"],
                &["transformer.decoder.", "ref_point_head.", "bbox_embed."],
            ),
            StageRule::new(
                "tracker + temporal decoder",
                &["temporal", "tracker"],
                &["temporal_decoder."],
            ),
            StageRule::new("FPN", &["fpn", "pixel_decoder"], &["pixel_decoder."]),
            StageRule::new("mask decoder", &["mask_decoder"], &["mask_decoder."]),
            StageRule::new("final heads", &["heads", "head"], &[]),
        ]
    }

    fn scope_matches(&self, components: &[&str]) -> bool {
        self.scopes.iter().any(|p| {
            components.iter().any(|c| {
                c.strip_prefix(p.as_str())
                    .is_some_and(|rest| rest.chars().all(|ch| ch.is_ascii_digit()))
            })
        })
    }

    fn weight_matches(&self, key: &str) -> bool {
        self.weights.iter().any(|p| key.starts_with(p.as_str()))
    }
}

/// Independent per-frame reference (docs/model.md: Compute budget) for Swin-T at 360×640 (query_decay 0.5): (row label of
/// [`StageRule::spec_rows`], GMAC, million parameters). BERT is per expression (L = 11); "final heads" is
/// listed as "< 0.01" GMAC in the spec.
pub const SPEC_8_2_SWIN_T_360X640: &[(&str, f64, f64)] = &[
    ("Swin backbone", 22.49, 27.52),
    ("input projections", 0.42, 2.12),
    ("BERT + feat_map", 0.94, 109.68),
    ("enhancer: deformable self-attn + FFN", 36.96, 8.95),
    ("enhancer: bi-attention fusion", 23.77, 10.95),
    ("enhancer: text self-attention", 0.05, 5.23),
    ("two-stage heads", 0.97, 0.43),
    ("decoder (+ query pos, box refinement)", 5.79, 12.35),
    ("tracker + temporal decoder", 0.08, 5.53),
    ("FPN", 1.08, 1.07),
    ("mask decoder", 2.94, 3.85),
    ("final heads", 0.0, 0.13),
];

/// Label of nodes no rule claims.
pub const OTHER: &str = "other";

/// Whether an initializer name is a weight by official key (vs a builder constant `scope/const_3`).
pub fn is_weight_name(name: &str) -> bool {
    let key = name.split('#').next().unwrap_or(name);
    key.contains('.') && !name.contains('/')
}

/// MACs, point-wise operations and bilinear taps of one node, given the model's inferred types.
pub fn node_cost(n: &pb::NodeProto, types: &TypeMap) -> Result<(u64, u64, u64)> {
    let ty = |i: usize| {
        n.input
            .get(i)
            .and_then(|s| types.get(s))
            .ok_or_else(|| Error::Graph(format!("cost: node `{}` input {i} has no type", n.name)))
    };
    let out = |i: usize| {
        n.output
            .get(i)
            .and_then(|s| types.get(s))
            .ok_or_else(|| Error::Graph(format!("cost: node `{}` output {i} has no type", n.name)))
    };
    let numel_out = || out(0).map(|t| t.numel() as u64);
    Ok(match n.op_type.as_str() {
        "MatMul" => {
            let k = *ty(0)?.shape.last().unwrap_or(&1) as u64;
            (numel_out()? * k, 0, 0)
        }
        "Gemm" => {
            let a = ty(0)?;
            let trans_a = attr(n, "transA").map(|a| a.i).unwrap_or(0) != 0;
            let k = if trans_a { a.shape[0] } else { a.shape[1] } as u64;
            (numel_out()? * k, 0, 0)
        }
        "Conv" => {
            let w = ty(1)?;
            let per: u64 = w.shape[1..].iter().map(|&d| d as u64).product();
            (numel_out()? * per, 0, 0)
        }
        "GridSample" => {
            let bilinear = attr(n, "mode").is_none_or(|a| a.s == b"bilinear" || a.s == b"linear");
            (0, 0, numel_out()? * if bilinear { 4 } else { 1 })
        }
        "Resize" => {
            let linear = attr(n, "mode").is_some_and(|a| a.s == b"linear");
            (0, 0, if linear { numel_out()? * 4 } else { 0 })
        }
        "MSDeformAttn" => {
            let v = ty(0)?;
            let loc = ty(3)?;
            // value [B,S,H,Dh], locations [B,Q,H,L,P,2]: B·Q·H·L·P sampled vectors of Dh channels.
            let dh = *v.shape.last().unwrap_or(&1) as u64;
            let samples: u64 = loc.shape[..loc.shape.len() - 1]
                .iter()
                .map(|&d| d as u64)
                .product();
            (0, samples * dh, samples * dh * 4)
        }
        "QueryPrune" => {
            let l = ty(0)?; // [B,N,Lt]
            let a = ty(1)?; // [B,N,N]
            let bn = (l.shape[0] * l.shape[1]) as u64;
            // max over tokens, column sums, two softmaxes and the average (≈ 11 per query), TopK.
            (0, l.numel() as u64 + a.numel() as u64 + 12 * bn, 0)
        }
        "Softmax" => (0, 5 * numel_out()?, 0),
        "LayerNormalization" => (0, 8 * numel_out()?, 0),
        "ReduceMax" | "ReduceMean" | "ReduceSum" | "ReduceMin" | "TopK" => {
            (0, ty(0)?.numel() as u64, 0)
        }
        "Add" | "Sub" | "Mul" | "Div" | "Max" | "Min" | "Pow" | "And" | "Or" | "Equal" | "Less"
        | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "Mod" | "Where" | "Relu" | "Sigmoid"
        | "Exp" | "Log" | "Sqrt" | "Sin" | "Cos" | "Neg" | "Erf" | "Not" | "Tanh" | "Abs"
        | "Reciprocal" | "Floor" | "Ceil" | "Round" | "Sign" | "Clip" | "CumSum"
        | "QuantizeLinear" | "DequantizeLinear" => (0, numel_out()?, 0),
        _ => (0, 0, 0),
    })
}

fn scope_of(name: &str) -> &str {
    name.rsplit_once('/').map(|(s, _)| s).unwrap_or("")
}

fn scope_prefix(scope: &str, depth: usize) -> String {
    if scope.is_empty() {
        return "(root)".into();
    }
    scope.split('/').take(depth).collect::<Vec<_>>().join("/")
}

/// Counts `model`, attributing nodes to `rules` (in order; unclaimed nodes go to [`OTHER`]) and
/// grouping scopes to `scope_depth` components. Parameters are the stored initializer elements; see
/// [`cost_report_with_params`] to count them by checkpoint tensor instead.
pub fn cost_report(
    model: &pb::ModelProto,
    rules: &[StageRule],
    scope_depth: usize,
) -> Result<CostReport> {
    cost_report_with_params(model, rules, scope_depth, &HashMap::new())
}

/// [`cost_report`], counting the parameters of every official key found in `param_sizes` (key → number
/// of elements in the checkpoint) once, whatever host-derived copies (`key#tag`: transposes, q/k/v
/// splits, Swin's expanded relative-position bias) the graph stores; other weights count as stored.
pub fn cost_report_with_params(
    model: &pb::ModelProto,
    rules: &[StageRule],
    scope_depth: usize,
    param_sizes: &HashMap<String, usize>,
) -> Result<CostReport> {
    let types = infer_types(model)?;
    let g = model
        .graph
        .as_ref()
        .ok_or_else(|| Error::Graph("model has no graph".into()))?;
    let inits: HashMap<&str, &pb::TensorProto> =
        g.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut producer_stage: HashMap<&str, usize> = HashMap::new();
    let other = rules.len();
    let mut nodes = Vec::with_capacity(g.node.len());
    let mut node_stage = Vec::with_capacity(g.node.len());
    for n in &g.node {
        let comps: Vec<&str> = {
            let s = scope_of(&n.name);
            if s.is_empty() {
                vec![]
            } else {
                s.split('/').collect()
            }
        };
        let by_scope = rules.iter().position(|r| r.scope_matches(&comps));
        let by_weight = || {
            n.input
                .iter()
                .filter(|i| inits.contains_key(i.as_str()) && is_weight_name(i))
                .find_map(|i| rules.iter().position(|r| r.weight_matches(i)))
        };
        let inherited = || {
            n.input
                .iter()
                .find_map(|i| producer_stage.get(i.as_str()).copied())
        };
        let stage = by_scope
            .or_else(by_weight)
            .or_else(inherited)
            .unwrap_or(other);
        for o in &n.output {
            if stage != other {
                producer_stage.insert(o.as_str(), stage);
            }
        }
        let (macs, elementwise, sampling) = node_cost(n, &types)?;
        node_stage.push(stage);
        nodes.push(NodeCost {
            name: n.name.clone(),
            op: n.op_type.clone(),
            scope: scope_of(&n.name).to_string(),
            stage: rules
                .get(stage)
                .map(|r| r.stage.clone())
                .unwrap_or_else(|| OTHER.into()),
            macs,
            elementwise,
            sampling,
        });
    }
    // Nodes no rule claimed and no producer explains (e.g. reshapes of a graph input) take the stage of
    // their first consumer that has one.
    let mut consumers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, n) in g.node.iter().enumerate() {
        for inp in &n.input {
            consumers.entry(inp.as_str()).or_default().push(i);
        }
    }
    for i in (0..g.node.len()).rev() {
        if node_stage[i] != other {
            continue;
        }
        let found = g.node[i]
            .output
            .iter()
            .filter_map(|o| consumers.get(o.as_str()))
            .flatten()
            .map(|&c| node_stage[c])
            .find(|&s| s != other);
        if let Some(s) = found {
            node_stage[i] = s;
            nodes[i].stage = rules[s].stage.clone();
        }
    }
    // Group accumulation.
    let mut stage_counts = vec![Counts::default(); rules.len() + 1];
    let mut scope_order: Vec<String> = Vec::new();
    let mut scope_counts: HashMap<String, Counts> = HashMap::new();
    let mut total = Counts::default();
    let mut seen_init: HashSet<&str> = HashSet::new();
    let mut seen_key: HashSet<&str> = HashSet::new();
    for ((n, nc), &st) in g.node.iter().zip(&nodes).zip(&node_stage) {
        let mut c = Counts {
            macs: nc.macs,
            elementwise: nc.elementwise,
            sampling: nc.sampling,
            nodes: 1,
            ..Default::default()
        };
        for i in &n.input {
            if let Some(t) = inits.get(i.as_str()) {
                if seen_init.insert(i.as_str()) {
                    let bytes = (init_numel(t) * elem::size(t.data_type)) as u64;
                    if is_weight_name(i) {
                        let key = i.split('#').next().unwrap_or(i);
                        match param_sizes.get(key) {
                            Some(&n) if seen_key.insert(key) => c.params += n as u64,
                            Some(_) => {}
                            None => c.params += init_numel(t) as u64,
                        }
                        c.weight_bytes += bytes;
                    } else {
                        c.const_bytes += bytes;
                    }
                }
            }
        }
        stage_counts[st].add(&c);
        let sp = scope_prefix(&nc.scope, scope_depth);
        if !scope_counts.contains_key(&sp) {
            scope_order.push(sp.clone());
        }
        scope_counts.entry(sp).or_default().add(&c);
        total.add(&c);
    }
    let stages = stage_counts
        .into_iter()
        .enumerate()
        .filter(|(_, c)| c.nodes > 0)
        .map(|(i, counts)| GroupCost {
            name: rules
                .get(i)
                .map(|r| r.stage.clone())
                .unwrap_or_else(|| OTHER.into()),
            counts,
        })
        .collect();
    let scopes = scope_order
        .into_iter()
        .map(|name| {
            let counts = scope_counts.remove(&name).unwrap_or_default();
            GroupCost { name, counts }
        })
        .collect();
    Ok(CostReport {
        model: g.name.clone(),
        nodes,
        stages,
        scopes,
        total,
    })
}

impl CostReport {
    /// The stage table and the scope table as aligned text (GMAC, M elementwise ops, M params, MB).
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "model `{}`", self.model);
        for (title, rows) in [("stage", &self.stages), ("scope", &self.scopes)] {
            let _ = writeln!(
                s,
                "{:<40} {:>10} {:>10} {:>10} {:>10} {:>10} {:>7}",
                title, "GMAC", "M elem", "M taps", "M params", "weight MB", "nodes"
            );
            for r in rows.iter() {
                row(&mut s, &r.name, &r.counts);
            }
            row(&mut s, "total", &self.total);
            s.push('\n');
        }
        s
    }

    /// Our stage rows next to a reference table of (label, GMAC, M params), e.g.
    /// [`SPEC_8_2_SWIN_T_360X640`]; rows missing on either side are shown with `-`.
    pub fn compare_table(&self, reference: &[(&str, f64, f64)]) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<40} {:>10} {:>10} {:>8} {:>10} {:>10}",
            "stage", "GMAC", "spec GMAC", "ratio", "M params", "spec M"
        );
        let mut names: Vec<&str> = reference.iter().map(|r| r.0).collect();
        for g in &self.stages {
            if !names.contains(&g.name.as_str()) {
                names.push(&g.name);
            }
        }
        for name in names {
            let ours = self.stage(name);
            let spec = reference.iter().find(|r| r.0 == name);
            let f = |v: Option<f64>, p: usize| {
                v.map(|x| format!("{x:.p$}")).unwrap_or_else(|| "-".into())
            };
            let gm = ours.map(|c| c.macs as f64 / 1e9);
            let ratio = match (gm, spec) {
                (Some(a), Some(r)) if r.1 > 0.0 => Some(a / r.1),
                _ => None,
            };
            let _ = writeln!(
                s,
                "{:<40} {:>10} {:>10} {:>8} {:>10} {:>10}",
                name,
                f(gm, 3),
                f(spec.map(|r| r.1), 2),
                f(ratio, 3),
                f(ours.map(|c| c.params as f64 / 1e6), 3),
                f(spec.map(|r| r.2), 2)
            );
        }
        s
    }

    /// The report as pretty JSON.
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self)
            .map_err(|e| Error::Other(format!("cost report json: {e}")))
    }

    /// The group called `name` among the stages.
    pub fn stage(&self, name: &str) -> Option<&Counts> {
        self.stages
            .iter()
            .find(|g| g.name == name)
            .map(|g| &g.counts)
    }
}

fn row(s: &mut String, name: &str, c: &Counts) {
    let _ = writeln!(
        s,
        "{:<40} {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>10.2} {:>7}",
        name,
        c.macs as f64 / 1e9,
        c.elementwise as f64 / 1e6,
        c.sampling as f64 / 1e6,
        c.params as f64 / 1e6,
        c.weight_bytes as f64 / 1e6,
        c.nodes
    );
}
