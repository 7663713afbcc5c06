//! Graphs emitted by the graph builder with NATIVE custom ops (`referdino::MSDeformAttn`,
//! `referdino::QueryPrune`) run on the CPU backend and match the official fixtures, and agree with the
//! builder's decomposed standard-ONNX form run in plain tract (an independent implementation).

use crate::support::common;

use common::{fixture, tiny_outputs};
use referdino::backend::cpu::CpuBackend;
use referdino::backend::{View, ViewMut};
use referdino::onnx::builder::{Graph, GraphOptions};
use referdino::onnx::run::run_plain;
use referdino::tensor::{read_safetensors, DType};

fn opts(decompose: bool) -> GraphOptions {
    GraphOptions {
        taps: false,
        decompose_custom_ops: decompose,
    }
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn native_msdeform_graph_matches_fixtures_and_decomposed_form() {
    for case in ["small", "single_level_16pts", "realistic"] {
        let (t, _) = read_safetensors(&fixture(&format!("msdeform/{case}.safetensors"))).unwrap();
        let (value, loc, att) = (
            &t["value"],
            &t["sampling_locations"],
            &t["attention_weights"],
        );
        let shapes: Vec<(usize, usize)> = t["spatial_shapes"]
            .i64s()
            .unwrap()
            .chunks(2)
            .map(|c| (c[0] as usize, c[1] as usize))
            .collect();
        let build = |decompose: bool| {
            let mut g = Graph::new("msdeform", opts(decompose));
            let v = g.input("value", DType::F32, value.shape());
            let l = g.input("loc", DType::F32, loc.shape());
            let a = g.input("att", DType::F32, att.shape());
            let o = g.ms_deform_attn(&v, &shapes, &l, &a).unwrap();
            g.output("out", &o).unwrap();
            g.to_bytes()
        };
        let native = build(false);
        assert!(
            String::from_utf8_lossy(&native).contains("MSDeformAttn"),
            "{case}: the native graph carries the custom op"
        );
        let mut e = CpuBackend::new().load_bytes("msdeform", &native).unwrap();
        let want = t["output"].f32s().unwrap();
        let mut out = vec![f32::NAN; want.len()];
        e.run(
            &[
                View::F32(value.f32s().unwrap()),
                View::F32(loc.f32s().unwrap()),
                View::F32(att.f32s().unwrap()),
            ],
            &mut [ViewMut::F32(&mut out)],
        )
        .unwrap();
        let err = max_abs(&out, want);
        assert!(err <= 1e-5, "{case}: native vs official {err:e}");
        let dec = run_plain(&build(true), &[value.clone(), loc.clone(), att.clone()]).unwrap();
        let err = max_abs(&out, dec[0].f32s().unwrap());
        assert!(err <= 1e-5, "{case}: native vs decomposed {err:e}");
    }
}

#[test]
fn native_query_prune_graph_matches_fixture() {
    let o = tiny_outputs();
    for layer in 0..2 {
        let logits = &o[&format!("decoder.layer{layer}.class_logits")];
        let attn = &o[&format!("decoder.layer{layer}.self_attn_weights")];
        let keep_want = o[&format!("decoder.layer{layer}.keep_idx")]
            .i64s()
            .unwrap()
            .to_vec();
        let gate_want = o[&format!("decoder.layer{layer}.gate")]
            .f32s()
            .unwrap()
            .to_vec();
        let keep = o[&format!("decoder.layer{layer}.keep_idx")].shape()[1];
        let mut g = Graph::new("prune", opts(false));
        let l = g.input("logits", DType::F32, logits.shape());
        let a = g.input("attn", DType::F32, attn.shape());
        let (idx, gate) = g.query_prune(&l, &a, keep).unwrap();
        g.output("keep_idx", &idx).unwrap();
        g.output("gate", &gate).unwrap();
        let mut e = CpuBackend::new()
            .load_bytes("prune", &g.to_bytes())
            .unwrap();
        let mut k = vec![-1i64; keep_want.len()];
        let mut gt = vec![f32::NAN; gate_want.len()];
        e.run(
            &[
                View::F32(logits.f32s().unwrap()),
                View::F32(attn.f32s().unwrap()),
            ],
            &mut [ViewMut::I64(&mut k), ViewMut::F32(&mut gt)],
        )
        .unwrap();
        assert_eq!(k, keep_want, "layer {layer} keep_idx");
        let err = max_abs(&gt, &gate_want);
        assert!(err <= 1e-6, "layer {layer} gate error {err:e}");
    }
}
