//! The structure of every INT8 export the project can produce: no `Cast` between a `DequantizeLinear` and
//! the MatMul/Gemm/Conv it quantizes. TensorRT fuses a DequantizeLinear into the op it feeds; with a Cast
//! in between that is not a documented fusion pattern and the GEMM may stay FP16 behind an explicit
//! dequantize, so an INT8 engine would be no faster than the FP16 one.
//!
//! Walks the four engines of the fixture-sized model in every export form (native and decomposed custom
//! ops, with and without parity taps) through the deployed INT8 pass (`quant::engines::apply` with FP16
//! elsewhere, as `referdino build` and `export` run it) and the CPU calibration form (INT8 alone).

use crate::support::common;
use referdino::graph::fp32_policy;

use referdino::config::ModelConfig;
use referdino::graph::engines::{ExportOptions, Geometry};
use referdino::onnx::precision::{
    insert_qdq, to_fp16, Int8Options, Match, PASS_THROUGH_OPS, QUANTIZED_OPS,
};
use referdino::quant::engines::{all_calibration_tensors, apply, fp32_models};
use referdino::quant::Precision;
use std::collections::HashMap;
use tract_onnx::pb;

/// The geometry of engines/test-profiles/referdino-tiny-*.toml.
const GEO: Geometry = Geometry {
    height: 70,
    width: 118,
    max_text: 12,
    window: 3,
};

/// What one walk found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Walk {
    nodes: usize,
    dequantize: usize,
    /// Quantized-op inputs fed by a DequantizeLinear with nothing in between.
    direct: usize,
    /// Quantized-op inputs fed by a DequantizeLinear through at least one Cast.
    through_cast: usize,
}

impl std::ops::AddAssign for Walk {
    fn add_assign(&mut self, o: Walk) {
        self.nodes += o.nodes;
        self.dequantize += o.dequantize;
        self.direct += o.direct;
        self.through_cast += o.through_cast;
    }
}

/// Follows every input of every MatMul/Gemm/Conv back through Casts and pure data movement to see
/// whether it comes from a DequantizeLinear, and whether a Cast sits on the way. Returns the counts and
/// one line per offending chain.
fn walk(m: &pb::ModelProto) -> (Walk, Vec<String>) {
    let g = m.graph.as_ref().unwrap();
    let producer: HashMap<&str, &pb::NodeProto> = g
        .node
        .iter()
        .flat_map(|n| n.output.iter().map(move |o| (o.as_str(), n)))
        .collect();
    let mut w = Walk {
        nodes: g.node.len(),
        dequantize: g
            .node
            .iter()
            .filter(|n| n.op_type == "DequantizeLinear")
            .count(),
        ..Default::default()
    };
    let mut bad = Vec::new();
    for n in g
        .node
        .iter()
        .filter(|n| QUANTIZED_OPS.contains(&n.op_type.as_str()))
    {
        for (j, input) in n.input.iter().enumerate() {
            let mut chain = Vec::new();
            let mut cur = input.as_str();
            while let Some(p) = producer.get(cur) {
                chain.push(format!("{} ({})", p.name, p.op_type));
                if p.op_type == "DequantizeLinear" {
                    if chain.iter().any(|c| c.ends_with("(Cast)")) {
                        w.through_cast += 1;
                        chain.reverse();
                        bad.push(format!(
                            "{}: {} → {} ({}) input {j}",
                            g.name,
                            chain.join(" → "),
                            n.name,
                            n.op_type
                        ));
                    } else if chain.len() == 1 {
                        w.direct += 1;
                    }
                    break;
                }
                if p.op_type != "Cast" && !PASS_THROUGH_OPS.contains(&p.op_type.as_str()) {
                    break;
                }
                match p.input.first() {
                    Some(i) => cur = i.as_str(),
                    None => break,
                }
            }
        }
    }
    (w, bad)
}

#[test]
fn no_cast_between_dequantize_and_the_op_it_quantizes_in_any_int8_export() {
    let cfg = ModelConfig::from_file(&common::fixture("referdino-tiny/config.json")).unwrap();
    let weights = common::tiny_weights();
    let mut total = Walk::default();
    let mut exports = 0;
    // The policy before the fix (no `Match::Dequantized` rule): the walk must find the chains there, so
    // a clean result below is not a blind walk.
    let mut old_policy = fp32_policy::policy();
    old_policy.rules.retain(|r| r.matches != Match::Dequantized);
    let mut old_total = Walk::default();
    let mut bad = Vec::new();
    for decompose_custom_ops in [false, true] {
        for taps in [false, true] {
            let opts = ExportOptions {
                taps,
                decompose_custom_ops,
            };
            let models = fp32_models(&weights, &cfg, &GEO, &opts).unwrap();
            // The scale values do not change the graph: any positive scale for every activation the
            // INT8 pass quantizes.
            let scales: HashMap<String, f32> = all_calibration_tensors(&models)
                .unwrap()
                .into_iter()
                .flatten()
                .map(|n| (n, 0.02))
                .collect();
            for m in &models {
                let (mq, _) =
                    insert_qdq(m, &fp32_policy::policy(), &scales, &Int8Options::default())
                        .unwrap();
                let (old, _) = to_fp16(&mq, &old_policy).unwrap();
                old_total += walk(&old).0;
                for fp16_rest in [true, false] {
                    let (q, _) = apply(m, Precision::Int8, Some(&scales), fp16_rest).unwrap();
                    let (w, b) = walk(&q);
                    let form = format!(
                        "{} taps={taps} fp16_rest={fp16_rest}",
                        if decompose_custom_ops {
                            "decomposed"
                        } else {
                            "native"
                        }
                    );
                    eprintln!("{form} {}: {w:?}", q.graph.as_ref().unwrap().name);
                    assert!(
                        w.dequantize > 0 && w.direct > 0,
                        "{form}: the INT8 pass quantized nothing ({w:?})"
                    );
                    bad.extend(b.into_iter().map(|l| format!("{form} {l}")));
                    total += w;
                    exports += 1;
                }
            }
        }
    }
    eprintln!(
        "{exports} INT8 exports walked: {} nodes, {} DequantizeLinear, {} quantized-op inputs fed \
         directly, {} through a Cast",
        total.nodes, total.dequantize, total.direct, total.through_cast
    );
    eprintln!(
        "the same exports under the old policy (DQ cast to f16 before the op): {} quantized-op inputs \
         fed directly, {} through a Cast",
        old_total.direct, old_total.through_cast
    );
    assert!(old_total.through_cast > 0, "the walk finds the old chains");
    assert_eq!(exports, 32);
    assert!(
        bad.is_empty(),
        "{} DequantizeLinear → Cast → op chain(s), first ones:\n{}",
        bad.len(),
        bad.iter().take(10).cloned().collect::<Vec<_>>().join("\n")
    );
}
