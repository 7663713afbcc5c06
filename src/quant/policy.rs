//! Engine precision, and the precision policy rendered for people.
//!
//! The policy itself (which ops stay FP32 in FP16 and INT8 engines, which inputs get INT8 Q/DQ pairs) is
//! written down once, as data, in [`crate::graph::fp32_policy`] ([`DEFAULT_RULES`], [`F32_OUTPUTS`]) and
//! applied there by `to_fp16` and `insert_qdq`; [`policy_markdown`] prints that same table for build
//! reports and docs.
//!
//! INT8 (explicit Q/DQ) goes only on the inputs of MatMul and Conv nodes outside the FP32 placement:
//! activations per tensor, weights per output channel. Everything else runs FP16 in an INT8 engine.

use crate::graph::fp32_policy::{DEFAULT_RULES, F32_OUTPUTS};
use crate::onnx::precision::{Keep, Match};

pub use crate::onnx::precision::Precision;

/// Op types whose inputs get INT8 Q/DQ pairs (see `insert_qdq`).
pub const INT8_OPS: &[&str] = &["MatMul", "Conv"];

/// The FP32 policy of [`crate::onnx::precision`] as a Markdown table, plus the INT8 op list.
pub fn policy_markdown() -> String {
    let mut s = String::from("| kept in FP32 | what | feeders too | why |\n|---|---|---|---|\n");
    for r in DEFAULT_RULES {
        let what = match &r.matches {
            Match::Op(t) => format!("op `{t}`"),
            Match::OpInScope(t, sc) => format!("op `{t}` in scope `{sc}`"),
            Match::Scope(sc) => format!("scope `{sc}`"),
            Match::DivBySqrt => "`Div` by a `Sqrt`".to_string(),
            Match::Dequantized => "MatMul/Gemm/Conv fed by a `DequantizeLinear`".to_string(),
        };
        let keep = match &r.keep {
            Keep::Node => "whole node".to_string(),
            Keep::Inputs(ix) => format!("inputs {ix:?}"),
        };
        s.push_str(&format!(
            "| {what} | {keep} | {} | {} |\n",
            if r.feeders { "yes" } else { "no" },
            r.why
        ));
    }
    for o in F32_OUTPUTS {
        s.push_str(&format!(
            "| output `{o}` | producer | yes | box maths of the engines |\n"
        ));
    }
    s.push_str(&format!(
        "\nINT8 Q/DQ on the inputs of: {}\n",
        INT8_OPS.join(", ")
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_parses_case_insensitively() {
        assert_eq!("FP16".parse::<Precision>().unwrap(), Precision::Fp16);
        assert!("bf16".parse::<Precision>().is_err());
    }
}
