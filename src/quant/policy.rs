//! The precision policy: the single place that says which parts of the network stay FP32 in an FP16
//! engine and which ops get INT8 Q/DQ pairs in an INT8 engine.
//!
//! Engines are built as strongly typed networks, so TensorRT runs every layer in the type the ONNX gives
//! it. The graph builder asks [`PrecisionPolicy::compute_precision`] for each node it emits and inserts
//! casts at the boundaries; it asks [`PrecisionPolicy::quantize_inputs`] whether to put Q/DQ pairs on a
//! node's inputs (activation scale from the [`super::ScaleTable`], per-channel scales for its weight).
//!
//! | kept in FP32 | why |
//! |---|---|
//! | LayerNormalization (and any node named `*norm*`) | variance of 256-wide rows overflows / loses bits in FP16 |
//! | Softmax | exp() and the row sum; attention logits reach ±50000 in the fusion block |
//! | sampling locations / offsets (`*sampling_loc*`, `*sampling_offset*`) | a 1/1000 error is a pixel at 160-wide maps |
//! | box maths (`*box*`, `*inverse_sigmoid*`, `*ref_point*`, `*reference_points*`) | inverse sigmoid of values near 0/1 |
//! | pruning scores (`*prune*`, `*gate*`, QueryPrune) | the top-K order decides which queries survive |
//! | class logits / contrastive head (`*class_logits*`, `*contrastive*`) | selection and tracking compare scores |
//! | MSDeformAttn locations and weights inputs | the plugin reads them as FP32 (value may be FP16) |
//!
//! INT8 (explicit Q/DQ) goes only on the inputs of MatMul, Gemm and Conv nodes that are not in an FP32
//! region: activations per tensor, weights per output channel. Everything else runs FP16 in an INT8 engine.

use serde::{Deserialize, Serialize};

/// Engine precision requested by a profile, and the compute precision of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
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

/// What a policy rule matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Match {
    /// An ONNX op type, exactly (e.g. `LayerNormalization`).
    OpType(String),
    /// A case-insensitive substring of the node name.
    NameContains(String),
}

/// One rule: nodes it matches run in FP32 whatever the engine precision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// What the rule matches.
    pub matches: Match,
    /// Why it is kept in FP32 (printed in build reports).
    pub why: String,
}

/// The set of FP32 rules plus the list of quantizable op types.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrecisionPolicy {
    /// Nodes kept in FP32.
    pub keep_fp32: Vec<Rule>,
    /// Op types whose inputs get INT8 Q/DQ pairs in INT8 engines.
    pub int8_ops: Vec<String>,
}

impl Default for PrecisionPolicy {
    fn default() -> Self {
        let op = |t: &str, why: &str| Rule {
            matches: Match::OpType(t.into()),
            why: why.into(),
        };
        let name = |t: &str, why: &str| Rule {
            matches: Match::NameContains(t.into()),
            why: why.into(),
        };
        Self {
            keep_fp32: vec![
                op("LayerNormalization", "normalization statistics"),
                name("norm", "normalization statistics"),
                op("Softmax", "exp and row sums; fusion logits reach 5e4"),
                name("softmax", "exp and row sums"),
                name("sampling_loc", "sampling locations address pixels"),
                name("sampling_offset", "sampling locations address pixels"),
                name("box", "box maths"),
                name("inverse_sigmoid", "inverse sigmoid near 0 and 1"),
                name("ref_point", "reference points"),
                name("reference_points", "reference points"),
                op("QueryPrune", "pruning scores decide which queries survive"),
                name("prune", "pruning scores decide which queries survive"),
                name("gate", "pruning scores decide which queries survive"),
                name("class_logits", "scores drive selection and tracking"),
                name("contrastive", "scores drive selection and tracking"),
                op("TopK", "top-k order"),
            ],
            int8_ops: vec!["MatMul".into(), "Gemm".into(), "Conv".into()],
        }
    }
}

impl PrecisionPolicy {
    /// The rule that keeps this node in FP32, if any.
    pub fn fp32_rule(&self, op_type: &str, node_name: &str) -> Option<&Rule> {
        let lname = node_name.to_ascii_lowercase();
        self.keep_fp32.iter().find(|r| match &r.matches {
            Match::OpType(t) => t == op_type,
            Match::NameContains(s) => lname.contains(&s.to_ascii_lowercase()),
        })
    }

    /// Compute precision of one node in an engine of precision `engine`: FP32 for policy matches,
    /// otherwise FP16 (INT8 engines run unquantized ops in FP16).
    pub fn compute_precision(
        &self,
        op_type: &str,
        node_name: &str,
        engine: Precision,
    ) -> Precision {
        match engine {
            Precision::Fp32 => Precision::Fp32,
            _ if self.fp32_rule(op_type, node_name).is_some() => Precision::Fp32,
            _ => Precision::Fp16,
        }
    }

    /// Whether the inputs of this node get INT8 Q/DQ pairs in an engine of precision `engine`.
    pub fn quantize_inputs(&self, op_type: &str, node_name: &str, engine: Precision) -> bool {
        engine == Precision::Int8
            && self.int8_ops.iter().any(|t| t == op_type)
            && self.fp32_rule(op_type, node_name).is_none()
    }

    /// The policy as a Markdown table (for build reports and docs).
    pub fn to_markdown(&self) -> String {
        let mut s = String::from("| kept in FP32 | why |\n|---|---|\n");
        for r in &self.keep_fp32 {
            let what = match &r.matches {
                Match::OpType(t) => format!("op `{t}`"),
                Match::NameContains(n) => format!("name contains `{n}`"),
            };
            s.push_str(&format!("| {what} | {} |\n", r.why));
        }
        s.push_str(&format!(
            "\nINT8 Q/DQ on the inputs of: {}\n",
            self.int8_ops.join(", ")
        ));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_keeps_the_documented_islands() {
        let p = PrecisionPolicy::default();
        let f16 = Precision::Fp16;
        assert_eq!(
            p.compute_precision("LayerNormalization", "enc.0.ln", f16),
            Precision::Fp32
        );
        assert_eq!(
            p.compute_precision("Softmax", "bert.0.attn", f16),
            Precision::Fp32
        );
        assert_eq!(
            p.compute_precision("Add", "dec.3.sampling_locations", f16),
            Precision::Fp32
        );
        assert_eq!(
            p.compute_precision("Sigmoid", "dec.3.bbox_embed.out", f16),
            Precision::Fp32
        );
        assert_eq!(
            p.compute_precision("Log", "dec.inverse_sigmoid", f16),
            Precision::Fp32
        );
        assert_eq!(
            p.compute_precision("QueryPrune", "dec.0.q", f16),
            Precision::Fp32
        );
        assert_eq!(
            p.compute_precision("MatMul", "enc.0.ffn.linear1", f16),
            Precision::Fp16
        );
        assert_eq!(
            p.compute_precision("MatMul", "enc.0.ffn.linear1", Precision::Fp32),
            Precision::Fp32
        );
    }

    #[test]
    fn int8_only_on_matmul_like_ops_outside_fp32_islands() {
        let p = PrecisionPolicy::default();
        let i8 = Precision::Int8;
        assert!(p.quantize_inputs("MatMul", "enc.0.ffn.linear1", i8));
        assert!(p.quantize_inputs("Conv", "swin.patch_embed.proj", i8));
        assert!(!p.quantize_inputs("MatMul", "dec.0.bbox_embed.layer2", i8));
        assert!(!p.quantize_inputs("Add", "enc.0.residual", i8));
        assert!(!p.quantize_inputs("MatMul", "enc.0.ffn.linear1", Precision::Fp16));
    }

    #[test]
    fn precision_parses_case_insensitively() {
        assert_eq!("FP16".parse::<Precision>().unwrap(), Precision::Fp16);
        assert!("bf16".parse::<Precision>().is_err());
    }
}
