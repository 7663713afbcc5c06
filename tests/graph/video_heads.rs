//! Stage parity of the temporal decoder, the heads and the FPN against the official tiny fixture.

use crate::support::common;

use common::{assert_close, tiny_outputs, tiny_weights};
use referdino::graph::fpn::{fpn, memory_maps};
use referdino::graph::heads::heads;
use referdino::graph::temporal::{temporal_decoder, TemporalParams};
use referdino::onnx::builder::{Graph, GraphOptions};
use referdino::onnx::run::run_plain;
use referdino::onnx::Scope;
use referdino::tensor::{DType, Tensor};

fn opts() -> GraphOptions {
    GraphOptions {
        taps: true,
        decompose_custom_ops: true,
    }
}

fn tiny_temporal() -> TemporalParams {
    TemporalParams {
        d_model: 128,
        heads: 8,
        ffn: 64,
        blocks: 3,
        prefix: "temporal_decoder.1".into(),
    }
}

/// Runs the graph and checks every output whose name is a fixture key.
fn check_taps(
    g: Graph,
    inputs: &[Tensor],
    want: &std::collections::BTreeMap<String, Tensor>,
) -> usize {
    let specs: Vec<String> = g.output_specs().iter().map(|s| s.name.clone()).collect();
    let out = run_plain(&g.to_bytes(), inputs).unwrap();
    let mut n = 0;
    for (name, t) in specs.iter().zip(&out) {
        if let Some(r) = want.get(name) {
            assert_close(name, t, r);
            n += 1;
        }
    }
    n
}

/// `[cls]` token of the per-frame enhanced text: `memory_text[:, 0]`.
fn sent_feat(o: &std::collections::BTreeMap<String, Tensor>) -> Tensor {
    let mt = &o["encoder.memory_text"];
    let (t, l, d) = (mt.shape()[0], mt.shape()[1], mt.shape()[2]);
    let v = mt.f32s().unwrap();
    let mut s = Vec::with_capacity(t * d);
    for f in 0..t {
        s.extend_from_slice(&v[f * l * d..f * l * d + d]);
    }
    Tensor::from_f32(&[t, d], s).unwrap()
}

#[test]
fn temporal_decoder_matches_fixture() {
    let o = tiny_outputs();
    let w = tiny_weights();
    let hs = &o["tracker.hs"];
    let mut g = Graph::new("temporal", opts());
    let h = g.input("hs", DType::F32, hs.shape());
    let s = g.input("sent", DType::F32, &[hs.shape()[0], hs.shape()[2]]);
    let m = g.input("frame_mask", DType::Bool, &[hs.shape()[0]]);
    let out = temporal_decoder(&mut g, &Scope::new(&w), &tiny_temporal(), &h, &s, &m).unwrap();
    g.output("out", &out).unwrap();
    let mask = Tensor::new(vec![3], referdino::tensor::Data::Bool(vec![true; 3])).unwrap();
    let n = check_taps(g, &[hs.clone(), sent_feat(&o), mask], &o);
    assert_eq!(n, 11, "every temporal stage key compared");
}

/// A window padded with masked frames gives the valid frames exactly the unpadded result.
#[test]
fn temporal_decoder_padded_window_equals_unpadded() {
    let o = tiny_outputs();
    let w = tiny_weights();
    let hs = &o["tracker.hs"];
    let (t, q, d) = (3, hs.shape()[1], hs.shape()[2]);
    let pad_t = 5;
    // Padded frames hold garbage on purpose: they must not leak into valid frames.
    let mut hv = hs.f32s().unwrap().to_vec();
    hv.extend((0..(pad_t - t) * q * d).map(|i| (i % 7) as f32 - 3.0));
    let mut sv = sent_feat(&o).f32s().unwrap().to_vec();
    sv.extend((0..(pad_t - t) * d).map(|i| (i % 5) as f32));
    let mut g = Graph::new(
        "temporal_pad",
        GraphOptions {
            taps: false,
            decompose_custom_ops: true,
        },
    );
    let h = g.input("hs", DType::F32, &[pad_t, q, d]);
    let s = g.input("sent", DType::F32, &[pad_t, d]);
    let m = g.input("frame_mask", DType::Bool, &[pad_t]);
    let out = temporal_decoder(&mut g, &Scope::new(&w), &tiny_temporal(), &h, &s, &m).unwrap();
    g.output("out", &out).unwrap();
    let mask = Tensor::new(
        vec![pad_t],
        referdino::tensor::Data::Bool(vec![true, true, true, false, false]),
    )
    .unwrap();
    let r = run_plain(
        &g.to_bytes(),
        &[
            Tensor::from_f32(&[pad_t, q, d], hv).unwrap(),
            Tensor::from_f32(&[pad_t, d], sv).unwrap(),
            mask,
        ],
    )
    .unwrap();
    let valid = Tensor::from_f32(&[t, q, d], r[0].f32s().unwrap()[..t * q * d].to_vec()).unwrap();
    assert_close("temporal.out (padded window)", &valid, &o["temporal.out"]);
}

#[test]
fn heads_match_fixture() {
    let o = tiny_outputs();
    let w = tiny_weights();
    let objs = &o["temporal.out"];
    let text = &o["encoder.memory_text"];
    let refs = &o["tracker.ref"];
    let mut g = Graph::new("heads", opts());
    let x = g.input("objects", DType::F32, objs.shape());
    let t = g.input("text", DType::F32, text.shape());
    let m = g.input("text_mask", DType::Bool, &text.shape()[..2]);
    let r = g.input("refs", DType::F32, refs.shape());
    let h = heads(
        &mut g,
        &Scope::new(&w).pp("transformer.decoder.bbox_embed.1"),
        &x,
        &t,
        &m,
        &r,
    )
    .unwrap();
    g.output("logits", &h.logits).unwrap();
    g.output("boxes", &h.boxes).unwrap();
    let mask = Tensor::new(
        text.shape()[..2].to_vec(),
        referdino::tensor::Data::Bool(vec![true; 30]),
    )
    .unwrap();
    let n = check_taps(g, &[objs.clone(), text.clone(), mask, refs.clone()], &o);
    assert_eq!(n, 4);
}

/// Padded text tokens do not change the class logits (they are −∞ and never win the max).
#[test]
fn heads_ignore_padded_tokens() {
    let o = tiny_outputs();
    let w = tiny_weights();
    let objs = &o["temporal.out"];
    let text = &o["encoder.memory_text"];
    let (t, l, d) = (3, 10, text.shape()[2]);
    let lp = 16;
    let mut tv = Vec::new();
    for f in 0..t {
        tv.extend_from_slice(&text.f32s().unwrap()[f * l * d..(f + 1) * l * d]);
        tv.extend(std::iter::repeat_n(50.0f32, (lp - l) * d)); // would dominate the max if unmasked
    }
    let mut mv = Vec::new();
    for _ in 0..t {
        mv.extend((0..lp).map(|i| i < l));
    }
    let mut g = Graph::new(
        "heads_pad",
        GraphOptions {
            taps: false,
            decompose_custom_ops: true,
        },
    );
    let x = g.input("objects", DType::F32, objs.shape());
    let tt = g.input("text", DType::F32, &[t, lp, d]);
    let m = g.input("text_mask", DType::Bool, &[t, lp]);
    let r = g.input("refs", DType::F32, o["tracker.ref"].shape());
    let h = heads(&mut g, &Scope::new(&w).pp("bbox_embed.0"), &x, &tt, &m, &r).unwrap();
    g.output("logits", &h.logits).unwrap();
    let out = run_plain(
        &g.to_bytes(),
        &[
            objs.clone(),
            Tensor::from_f32(&[t, lp, d], tv).unwrap(),
            Tensor::new(vec![t, lp], referdino::tensor::Data::Bool(mv)).unwrap(),
            o["tracker.ref"].clone(),
        ],
    )
    .unwrap();
    let want = o["head.logits"]
        .clone()
        .reshape(&[t, objs.shape()[1]])
        .unwrap();
    assert_close("head.logits (padded text)", &out[0], &want);
}

#[test]
fn fpn_matches_fixture() {
    let o = tiny_outputs();
    let w = tiny_weights();
    let mem = &o["encoder.memory"];
    let f4 = &o["backbone.features.0"];
    let ss = o["encoder.spatial_shapes"].i64s().unwrap().to_vec();
    let shapes: Vec<(usize, usize)> = ss
        .chunks(2)
        .map(|c| (c[0] as usize, c[1] as usize))
        .collect();
    let mut g = Graph::new("fpn", opts());
    let m = g.input("memory", DType::F32, mem.shape());
    let f = g.input("f4", DType::F32, f4.shape());
    let maps = memory_maps(&mut g, &m, &shapes[..3]).unwrap();
    let out = fpn(
        &mut g,
        &Scope::new(&w).pp("pixel_decoder"),
        &maps[2],
        &maps[1],
        &maps[0],
        &f,
        common::tiny_config().seg_head.mask_dim,
    )
    .unwrap();
    g.output("f_seg", &out).unwrap();
    let n = check_taps(g, &[mem.clone(), f4.clone()], &o);
    assert_eq!(n, 9);
}

#[test]
fn mask_decoder_matches_fixture() {
    use referdino::graph::mask_decoder::{mask_decoder, MaskDecoderParams};
    let o = tiny_outputs();
    let w = tiny_weights();
    let objs = &o["temporal.out"];
    let refs = &o["tracker.ref"];
    let text = &o["encoder.memory_text"];
    let fseg = &o["fpn.mask_features"];
    let mut g = Graph::new("mask_decoder", opts());
    let x = g.input("objects", DType::F32, objs.shape());
    let r = g.input("refs", DType::F32, refs.shape());
    let t = g.input("text", DType::F32, text.shape());
    let m = g.input("text_mask", DType::Bool, &text.shape()[..2]);
    let f = g.input("f_seg", DType::F32, fseg.shape());
    let p = MaskDecoderParams {
        layers: 3,
        heads: 8,
        points: 16,
        ffn: common::tiny_config().seg_head.d_ffn,
        eps: 1e-5,
    };
    let out = mask_decoder(&mut g, &Scope::new(&w), &p, &x, &r, &t, &m, &f).unwrap();
    g.output("mask_logits", &out).unwrap();
    let mask = Tensor::new(
        text.shape()[..2].to_vec(),
        referdino::tensor::Data::Bool(vec![true; 30]),
    )
    .unwrap();
    let n = check_taps(
        g,
        &[objs.clone(), refs.clone(), text.clone(), mask, fseg.clone()],
        &o,
    );
    assert_eq!(n, 7, "six stages plus the level shape");
}
