//! Feature enhancer and query selection stage tests against the official `referdino-tiny` fixture.

use crate::support::common;
use crate::support::xformer;

use common::{assert_close, tiny_outputs, tiny_weights};
use referdino::graph::enhancer::{feature_enhancer, EnhancerInputs, EnhancerParams};
use referdino::graph::input_proj::flatten_levels;
use referdino::graph::position::encoder_reference_points;
use referdino::graph::query_selection::{encoder_proposals, query_selection, QuerySelectionParams};
use referdino::onnx::builder::{Graph, GraphOptions};
use referdino::onnx::Scope;
use referdino::onnx::Weights;
use referdino::tensor::{DType, Data, Tensor};
use std::collections::BTreeMap;
use xformer::{bools, compare_all, not, random_weights, run_named, slice_axis1, Rng, XformerCfg};

fn opts(taps: bool) -> GraphOptions {
    GraphOptions {
        taps,
        decompose_custom_ops: true,
    }
}

/// The tiny fixture's level shapes.
fn fixture_shapes(o: &BTreeMap<String, Tensor>) -> Vec<(usize, usize)> {
    o["encoder.spatial_shapes"]
        .i64s()
        .unwrap()
        .chunks(2)
        .map(|c| (c[0] as usize, c[1] as usize))
        .collect()
}

/// Tiny-model sizes (fixture config: hidden 128, 8 heads, FFN 64, 2 encoder layers, 4 points).
fn tiny_enhancer(shapes: Vec<(usize, usize)>) -> EnhancerParams {
    EnhancerParams::from_transformer(128, 2, 8, 4, 64, shapes)
}

fn tiny_qs(shapes: Vec<(usize, usize)>) -> QuerySelectionParams {
    QuerySelectionParams {
        d_model: 128,
        num_queries: 50,
        level_shapes: shapes,
        eps: 1e-5,
    }
}

/// Builds enhancer (+ query selection) with graph inputs: the 4 projected levels, pos, text, position ids,
/// token mask (true = real), sub-sentence mask.
fn build(
    w: &dyn Weights,
    p: &EnhancerParams,
    qs: Option<&QuerySelectionParams>,
    t: usize,
    l: usize,
    taps: bool,
) -> Graph {
    let mut g = Graph::new("enhancer", opts(taps));
    let d = p.d_model;
    let lv: Vec<_> = p
        .level_shapes
        .iter()
        .enumerate()
        .map(|(i, &(h, wd))| g.input(&format!("level{i}"), DType::F32, &[t, d, h, wd]))
        .collect();
    let s = p.tokens();
    let pos = g.input("pos", DType::F32, &[t, s, d]);
    let text = g.input("text", DType::F32, &[t, l, d]);
    let pids = g.input("position_ids", DType::I64, &[t, l]);
    let tmask = g.input("text_token_mask", DType::Bool, &[t, l]);
    let smask = g.input("text_self_attention_mask", DType::Bool, &[t, l, l]);
    let src = flatten_levels(&mut g, &lv).unwrap();
    let text_pos = referdino::graph::input_proj::text_pos_embed(
        &mut g,
        &referdino::graph::input_proj::InputProjParams::new(d),
        &pids,
    )
    .unwrap();
    let out = feature_enhancer(
        &mut g,
        &Scope::new(w).pp("transformer").pp("encoder"),
        p,
        &EnhancerInputs {
            src: &src,
            pos: &pos,
            text: &text,
            text_pos: &text_pos,
            text_token_mask: &tmask,
            text_self_attention_mask: &smask,
        },
    )
    .unwrap();
    if let Some(q) = qs {
        let o = query_selection(
            &mut g,
            &Scope::new(w).pp("transformer"),
            q,
            &out.memory,
            &out.memory_text,
            &tmask,
        )
        .unwrap();
        g.output("reference", &o.reference).unwrap();
    }
    g.output("memory", &out.memory).unwrap();
    g.output("memory_text", &out.memory_text).unwrap();
    eprintln!("enhancer graph: {} nodes", g.node_count());
    g
}

fn fixture_inputs(o: &BTreeMap<String, Tensor>) -> Vec<Tensor> {
    let mut v: Vec<Tensor> = (0..4)
        .map(|i| o[&format!("input_proj.{i}")].clone())
        .collect();
    v.push(o["encoder.pos_flatten"].clone());
    v.push(o["encoder.text_in"].clone());
    v.push(o["encoder.text_position_ids"].clone());
    v.push(not(&o["encoder.text_attention_mask"]));
    v.push(o["encoder.text_self_attention_masks"].clone());
    v
}

/// Host-side encoder reference points equal the official ones bit for bit.
#[test]
fn encoder_reference_points_match_fixture() {
    let o = tiny_outputs();
    let shapes = fixture_shapes(&o);
    let want = &o["encoder.reference_points"]; // [T, S, 4, 2]
    let got = encoder_reference_points(&shapes);
    let w = want.f32s().unwrap();
    assert_eq!(w.len(), 3 * got.len());
    for t in 0..3 {
        assert_eq!(
            &w[t * got.len()..(t + 1) * got.len()],
            &got[..],
            "frame {t}"
        );
    }
}

/// Host-side proposals equal the official ones (finite entries to 1 ulp-ish, +inf exactly where invalid).
#[test]
fn encoder_proposals_match_fixture() {
    let o = tiny_outputs();
    let shapes = fixture_shapes(&o);
    let (props, valid) = encoder_proposals(&shapes);
    let want = o["query_selection.output_proposals"].f32s().unwrap();
    for (i, (&g, &w)) in props.iter().zip(want).enumerate() {
        if w.is_infinite() {
            assert!(g == w, "proposal {i}: got {g}, want {w}");
        } else {
            assert!(
                (g - w).abs() <= 1e-6 * w.abs().max(1.0),
                "proposal {i}: {g} vs {w}"
            );
        }
    }
    let n_invalid = valid.iter().filter(|&&v| !v).count();
    for (s, &ok) in valid.iter().enumerate() {
        assert_eq!(ok, want[s * 4].is_finite(), "validity of token {s}");
    }
    assert_eq!(n_invalid, 0, "the tiny fixture's proposals are all valid");
    // At 360×640 the first and last columns of level 0 (80 wide) are invalid: 0.5/80 < 0.01 (docs/model.md: Language-guided query selection).
    let (props, valid) = encoder_proposals(&[(45, 80), (23, 40), (12, 20), (6, 10)]);
    let bad: Vec<usize> = (0..valid.len()).filter(|&i| !valid[i]).collect();
    assert_eq!(bad.len(), 2 * 45);
    assert!(bad
        .iter()
        .all(|&i| i < 3600 && (i % 80 == 0 || i % 80 == 79)));
    assert!(bad
        .iter()
        .all(|&i| props[4 * i..4 * i + 4].iter().all(|&x| x == f32::INFINITY)));
}

/// Every encoder stage (fusion, text layer, deformable layer, memory, text memory, text position) matches.
#[test]
fn enhancer_matches_fixture() {
    let o = tiny_outputs();
    let w = tiny_weights();
    let shapes = fixture_shapes(&o);
    let p = tiny_enhancer(shapes);
    let g = build(&w, &p, None, 3, 10, true);
    let got = run_named(g, &fixture_inputs(&o));
    let n = compare_all(&got, &o);
    // text_pos + 2 layers × (fusion_v, fusion_l, text) + layer0.deform + memory + memory_text
    assert_eq!(n, 1 + 6 + 1 + 2, "keys compared");
}

/// Query selection from the fixture memory: every `query_selection.*` key matches, indices identical.
#[test]
fn query_selection_matches_fixture() {
    let o = tiny_outputs();
    let w = tiny_weights();
    let shapes = fixture_shapes(&o);
    let p = tiny_qs(shapes.clone());
    let s: usize = shapes.iter().map(|(h, w)| h * w).sum();
    let mut g = Graph::new("qs", opts(true));
    let mem = g.input("memory", DType::F32, &[3, s, 128]);
    let txt = g.input("memory_text", DType::F32, &[3, 10, 128]);
    let mask = g.input("mask", DType::Bool, &[3, 10]);
    let out = query_selection(
        &mut g,
        &Scope::new(&w).pp("transformer"),
        &p,
        &mem,
        &txt,
        &mask,
    )
    .unwrap();
    g.output("tgt", &out.tgt).unwrap();
    g.output("reference", &out.reference).unwrap();
    let got = run_named(
        g,
        &[
            o["encoder.memory"].clone(),
            o["encoder.memory_text"].clone(),
            not(&o["encoder.text_attention_mask"]),
        ],
    );
    let n = compare_all(&got, &o);
    assert_eq!(n, 8, "keys compared");
    // content queries: tgt_embed repeated per frame
    let te = w["transformer.tgt_embed.weight"].f32s().unwrap();
    let tg = got["tgt"].f32s().unwrap();
    for t in 0..3 {
        assert_eq!(&tg[t * te.len()..(t + 1) * te.len()], te);
    }
    // reference = sigmoid(refpoint_unsig)
    let ru = o["query_selection.refpoint_unsig"].f32s().unwrap();
    let sig: Vec<f32> = ru.iter().map(|x| 1.0 / (1.0 + (-x).exp())).collect();
    let want = Tensor::from_f32(&[3, 50, 4], sig).unwrap();
    assert_close("reference", &got["reference"], &want);
}

/// Pads the fixture text from 10 to `lmax` tokens: random features and zero position ids on the pads, token
/// mask false, sub-sentence mask identity on the pads.
fn pad_text(o: &BTreeMap<String, Tensor>, lmax: usize, seed: u64) -> [Tensor; 4] {
    let (t, l, d) = (3, 10, 128);
    let mut r = Rng(seed);
    let text = o["encoder.text_in"].f32s().unwrap();
    let mut tp = Vec::new();
    for f in 0..t {
        tp.extend_from_slice(&text[f * l * d..(f + 1) * l * d]);
        tp.extend((0..(lmax - l) * d).map(|_| r.uniform(-2.0, 2.0)));
    }
    let pid = o["encoder.text_position_ids"].i64s().unwrap();
    let mut pp = Vec::new();
    for f in 0..t {
        pp.extend_from_slice(&pid[f * l..(f + 1) * l]);
        pp.extend(std::iter::repeat_n(0i64, lmax - l));
    }
    let tm: Vec<bool> = (0..t).flat_map(|_| (0..lmax).map(|i| i < l)).collect();
    let Data::Bool(sm) = o["encoder.text_self_attention_masks"].data() else {
        panic!("bool mask")
    };
    let mut smp = Vec::new();
    for f in 0..t {
        for i in 0..lmax {
            for j in 0..lmax {
                smp.push(if i < l && j < l {
                    sm[f * l * l + i * l + j]
                } else {
                    i == j
                });
            }
        }
    }
    [
        Tensor::from_f32(&[t, lmax, d], tp).unwrap(),
        Tensor::from_i64(&[t, lmax], pp).unwrap(),
        bools(&[t, lmax], tm),
        bools(&[t, lmax, lmax], smp),
    ]
}

/// With the text padded to 16 tokens (6 pads), the real tokens' outputs, the memory and the selected
/// queries are unchanged.
#[test]
fn enhancer_and_selection_ignore_text_padding() {
    let o = tiny_outputs();
    let w = tiny_weights();
    let shapes = fixture_shapes(&o);
    let p = tiny_enhancer(shapes.clone());
    let qs = tiny_qs(shapes);
    let g = build(&w, &p, Some(&qs), 3, 16, true);
    let mut inputs: Vec<Tensor> = (0..4)
        .map(|i| o[&format!("input_proj.{i}")].clone())
        .collect();
    inputs.push(o["encoder.pos_flatten"].clone());
    inputs.extend(pad_text(&o, 16, 7));
    let got = run_named(g, &inputs);
    assert_close("padded memory", &got["memory"], &o["encoder.memory"]);
    let mt = slice_axis1(&got["memory_text"], 10);
    assert_close("padded memory_text[:10]", &mt, &o["encoder.memory_text"]);
    assert_eq!(
        got["query_selection.topk_indices"].i64s().unwrap(),
        o["query_selection.topk_indices"].i64s().unwrap(),
        "top-k under padding"
    );
    assert_close(
        "padded refpoint_unsig",
        &got["query_selection.refpoint_unsig"],
        &o["query_selection.refpoint_unsig"],
    );
    assert_close(
        "padded topk_input",
        &got["query_selection.topk_input"],
        &o["query_selection.topk_input"],
    );
}

/// A second configuration (d 64, 4 heads, 3 levels, 2 points, 3 layers, random weights) builds and runs,
/// and its outputs are finite.
#[test]
fn enhancer_second_config_builds_and_runs() {
    let c = XformerCfg {
        d: 64,
        heads: 4,
        ffn: 96,
        enc_layers: 3,
        dec_layers: 0,
        levels: 3,
        points: 2,
        num_queries: 20,
    };
    let w = random_weights(&c, 11);
    let shapes = vec![(6, 10), (3, 5), (2, 3)];
    let p = EnhancerParams::from_transformer(c.d, c.enc_layers, c.heads, c.points, c.ffn, shapes);
    let q = QuerySelectionParams {
        d_model: c.d,
        num_queries: c.num_queries,
        level_shapes: p.level_shapes.clone(),
        eps: 1e-5,
    };
    let (t, l, s, d) = (2, 7, p.tokens(), c.d);
    let g = build(&w, &p, Some(&q), t, l, false);
    let mut r = Rng(5);
    let mut inputs: Vec<Tensor> = p
        .level_shapes
        .iter()
        .map(|&(h, wd)| r.tensor(&[t, d, h, wd], -1.0, 1.0))
        .collect();
    inputs.push(r.tensor(&[t, s, d], -1.0, 1.0));
    inputs.push(r.tensor(&[t, l, d], -1.0, 1.0));
    inputs.push(Tensor::from_i64(&[t, l], (0..t * l).map(|i| (i % l) as i64).collect()).unwrap());
    inputs.push(bools(&[t, l], vec![true; t * l]));
    inputs.push(bools(&[t, l, l], vec![true; t * l * l]));
    let got = run_named(g, &inputs);
    assert_eq!(got["memory"].shape(), [t, s, d]);
    assert_eq!(got["memory_text"].shape(), [t, l, d]);
    assert_eq!(got["reference"].shape(), [t, c.num_queries, 4]);
    for k in ["memory", "memory_text", "reference"] {
        assert!(
            got[k].f32s().unwrap().iter().all(|x| x.is_finite()),
            "{k} has non-finite values"
        );
    }
}
