//! Which parts of the ReferDINO engines stay in f32 when they are exported in FP16 or INT8, and why: the
//! model's own table for the precision passes of [`crate::onnx::precision`]. The passes are generic ONNX
//! machinery; the rules name our ops, node scopes and engine outputs, so they live with the graph.

use super::engines::names;
use crate::onnx::precision::{rule, Keep, Match, Policy, Rule, FEEDER_STOP_OPS};

/// The default FP32 policy.
pub const DEFAULT_RULES: &[Rule] = &[
    rule(
        Match::Op("LayerNormalization"),
        Keep::Node,
        false,
        "LayerNorm statistics",
    ),
    rule(
        Match::Op("Softmax"),
        Keep::Node,
        false,
        "softmax of attention logits",
    ),
    rule(
        Match::Op("ReduceMean"),
        Keep::Node,
        true,
        "GroupNorm mean/variance; head-averaged attention for QueryPrune",
    ),
    rule(
        Match::Op("Sqrt"),
        Keep::Node,
        true,
        "GroupNorm standard deviation",
    ),
    rule(Match::DivBySqrt, Keep::Node, false, "GroupNorm normalise"),
    rule(
        Match::Op("Sin"),
        Keep::Node,
        true,
        "sine embeddings of reference boxes",
    ),
    rule(
        Match::Op("Cos"),
        Keep::Node,
        true,
        "sine embeddings of reference boxes",
    ),
    rule(
        Match::Op("Log"),
        Keep::Node,
        true,
        "inverse_sigmoid / box maths",
    ),
    rule(
        Match::Op("TopK"),
        Keep::Inputs(&[0]),
        true,
        "selection scores (order must not flip on fp16 rounding)",
    ),
    rule(
        Match::Op("QueryPrune"),
        Keep::Node,
        true,
        "QueryPrune gate inputs",
    ),
    rule(
        Match::Op("MSDeformAttn"),
        Keep::Inputs(&[3, 4]),
        true,
        "deformable sampling locations and attention weights",
    ),
    rule(
        Match::Op("GridSample"),
        Keep::Inputs(&[1]),
        true,
        "deformable sampling grid (decomposed MSDeformAttn)",
    ),
    rule(
        Match::Op("Resize"),
        Keep::Inputs(&[1, 2]),
        false,
        "ONNX: Resize roi/scales are float32",
    ),
    rule(
        Match::OpInScope("MatMul", "fusion"),
        Keep::Node,
        false,
        "bi-attention fusion: in our order every product is text-sized or activation × activation \
         (docs/model.md: Feature enhancer), so quantizing it saves little and costs accuracy",
    ),
    rule(
        Match::Op("QuantizeLinear"),
        Keep::Node,
        false,
        "ONNX opset 13: Q/DQ compute in float32",
    ),
    rule(
        Match::Op("DequantizeLinear"),
        Keep::Node,
        false,
        "ONNX opset 13: Q/DQ compute in float32",
    ),
    rule(
        Match::Dequantized,
        Keep::Node,
        false,
        "INT8 op: its DequantizeLinear inputs (f32 in opset 13) feed it directly, with no Cast between, \
         so TensorRT fuses them into an INT8 kernel; its output is cast to f16 after it",
    ),
];

/// Graph outputs whose producers (and feeders) stay f32: the reference boxes and boxes of the engines.
pub const F32_OUTPUTS: &[&str] = &[names::REFS, names::BOXES];

/// The policy every export, calibration and report uses: [`DEFAULT_RULES`], the [`F32_OUTPUTS`] and the
/// feeder stop ops.
pub fn policy() -> Policy {
    Policy {
        rules: DEFAULT_RULES.to_vec(),
        f32_outputs: F32_OUTPUTS.iter().map(|s| s.to_string()).collect(),
        stop_ops: FEEDER_STOP_OPS.iter().map(|s| s.to_string()).collect(),
    }
}
