//! The graph builder's emitted ONNX runs in plain tract and matches the official references.

use crate::support::common;

use common::{assert_close, fixture, tiny_outputs};
use referdino::onnx::builder::{Graph, GraphOptions};
use referdino::onnx::run::run_plain;
use referdino::tensor::{read_safetensors, DType, Tensor};

fn decomposed() -> GraphOptions {
    GraphOptions {
        taps: false,
        decompose_custom_ops: true,
    }
}

/// The decomposed MSDeformAttn (GridSample per level) reproduces every official msdeform fixture case.
#[test]
fn msdeform_decomposed_matches_official_cases() {
    for case in ["small", "single_level_16pts", "realistic"] {
        let (t, _) = read_safetensors(&fixture(&format!("msdeform/{case}.safetensors"))).unwrap();
        let value = &t["value"];
        let loc = &t["sampling_locations"];
        let att = &t["attention_weights"];
        let ss = t["spatial_shapes"].i64s().unwrap();
        let shapes: Vec<(usize, usize)> = ss
            .chunks(2)
            .map(|c| (c[0] as usize, c[1] as usize))
            .collect();
        let mut g = Graph::new("msdeform", decomposed());
        let v = g.input("value", DType::F32, value.shape());
        let l = g.input("loc", DType::F32, loc.shape());
        let a = g.input("att", DType::F32, att.shape());
        let o = g.ms_deform_attn(&v, &shapes, &l, &a).unwrap();
        g.output("out", &o).unwrap();
        let out = run_plain(&g.to_bytes(), &[value.clone(), loc.clone(), att.clone()]).unwrap();
        let want = &t["output"];
        let (err, _) = common::max_err(&out[0], want);
        assert!(err <= 1e-5, "{case}: max abs error {err:e}");
    }
}

/// The decomposed QueryPrune reproduces the fixture's gate and kept indices for both decoder layers.
#[test]
fn query_prune_decomposed_matches_fixture() {
    let o = tiny_outputs();
    for layer in 0..2 {
        let logits = &o[&format!("decoder.layer{layer}.class_logits")];
        let attn = &o[&format!("decoder.layer{layer}.self_attn_weights")];
        let keep_want = &o[&format!("decoder.layer{layer}.keep_idx")];
        let keep = keep_want.shape()[1];
        let mut g = Graph::new("prune", decomposed());
        let l = g.input("logits", DType::F32, logits.shape());
        let a = g.input("attn", DType::F32, attn.shape());
        let (idx, gate) = g.query_prune(&l, &a, keep).unwrap();
        g.output("keep_idx", &idx).unwrap();
        g.output("gate", &gate).unwrap();
        let out = run_plain(&g.to_bytes(), &[logits.clone(), attn.clone()]).unwrap();
        assert_close("gate", &out[1], &o[&format!("decoder.layer{layer}.gate")]);
        assert_eq!(
            out[0].i64s().unwrap(),
            keep_want.i64s().unwrap(),
            "layer {layer} keep_idx"
        );
    }
}

/// Shape errors surface at build time with a message naming the problem.
#[test]
fn builder_rejects_bad_shapes() {
    let mut g = Graph::new("bad", GraphOptions::default());
    let a = g.input("a", DType::F32, &[2, 3]);
    let b = g.input("b", DType::F32, &[4, 5]);
    assert!(g.matmul(&a, &b).is_err());
    assert!(g.add(&a, &b).is_err());
    assert!(g.reshape(&a, &[7]).is_err());
    assert!(g.slice(&a, 1, 2, 9).is_err());
    let t = Tensor::from_f32(&[2], vec![1.0, 2.0]).unwrap();
    let c = g.constant("c", &t);
    assert!(g.concat(&[&a, &c], 0).is_err());
}
