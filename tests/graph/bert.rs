//! The BERT + feat_map graph reproduces the official text features, and padding the text to a static
//! length leaves the real tokens unchanged.

use crate::support::common;

use common::{assert_close, max_err, tiny_inputs, tiny_outputs, tiny_weights};
use referdino::graph::bert::{text_encoder, BertParams, TextInputs};
use referdino::onnx::builder::{Graph, GraphOptions};
use referdino::onnx::run::run_plain;
use referdino::onnx::Scope;
use referdino::tensor::{DType, Data, Tensor};

fn tiny_params() -> BertParams {
    // tiny_overrides.bert of the fixture: hidden 16, 2 layers, 2 heads
    let cfg = common::tiny_config();
    BertParams::from_config(&cfg.bert, cfg.hidden_dim)
}

fn taps() -> GraphOptions {
    GraphOptions {
        taps: true,
        decompose_custom_ops: true,
    }
}

/// Builds the text engine for `[b, l]` inputs and runs it; returns (output names, outputs).
fn run_text(p: &BertParams, ins: &[Tensor; 4], opts: GraphOptions) -> (Vec<String>, Vec<Tensor>) {
    let w = tiny_weights();
    let (b, l) = (ins[0].shape()[0], ins[0].shape()[1]);
    let mut g = Graph::new("text", opts);
    let ids = g.input("input_ids", DType::I64, &[b, l]);
    let tt = g.input("token_type_ids", DType::I64, &[b, l]);
    let pos = g.input("position_ids", DType::I64, &[b, l]);
    let m = g.input("text_self_attention_mask", DType::Bool, &[b, l, l]);
    let t = TextInputs {
        input_ids: &ids,
        token_type_ids: &tt,
        position_ids: &pos,
        self_attention_mask: &m,
    };
    let y = text_encoder(&mut g, &Scope::new(&w), p, &t).unwrap();
    g.output("encoded_text", &y).unwrap();
    let names = g.output_specs().iter().map(|s| s.name.clone()).collect();
    (names, run_plain(&g.to_bytes(), ins).unwrap())
}

fn fixture_inputs() -> [Tensor; 4] {
    let i = tiny_inputs();
    [
        i["input_ids"].clone(),
        i["token_type_ids"].clone(),
        i["position_ids"].clone(),
        i["text_self_attention_mask"].clone(),
    ]
}

#[test]
fn bert_matches_fixture() {
    let o = tiny_outputs();
    let (names, got) = run_text(&tiny_params(), &fixture_inputs(), taps());
    let want = [
        "text.bert.embeddings",
        "text.bert.layer0",
        "text.bert.layer1",
        "text.bert.last_hidden_state",
        "text.encoded_text",
    ];
    for key in want {
        let i = names
            .iter()
            .position(|n| n == key)
            .unwrap_or_else(|| panic!("no tap {key}"));
        assert_close(key, &got[i], &o[key]);
    }
}

/// Pads `[1, L]` / `[1, L, L]` inputs to `lmax`: zero ids, zero positions, identity mask on the pads.
fn pad_inputs(ins: &[Tensor; 4], lmax: usize) -> [Tensor; 4] {
    let l = ins[0].shape()[1];
    let pad1 = |t: &Tensor| {
        let mut v = t.i64s().unwrap().to_vec();
        v.resize(lmax, 0);
        Tensor::from_i64(&[1, lmax], v).unwrap()
    };
    let Data::Bool(m) = ins[3].data() else {
        panic!("mask must be bool")
    };
    let mut pm = vec![false; lmax * lmax];
    for i in 0..lmax {
        for j in 0..lmax {
            pm[i * lmax + j] = if i < l && j < l { m[i * l + j] } else { i == j };
        }
    }
    [
        pad1(&ins[0]),
        pad1(&ins[1]),
        pad1(&ins[2]),
        Tensor::new(vec![1, lmax, lmax], Data::Bool(pm)).unwrap(),
    ]
}

/// Lmax = 16 with 6 pads: the 10 real tokens' encoded text equals the unpadded fixture output.
#[test]
fn bert_padding_leaves_real_tokens_unchanged() {
    let o = tiny_outputs();
    let ins = fixture_inputs();
    let l = ins[0].shape()[1];
    let (_, got) = run_text(
        &tiny_params(),
        &pad_inputs(&ins, 16),
        GraphOptions::default(),
    );
    let y = &got[0];
    assert_eq!(y.shape(), &[1, 16, 128]);
    let real = Tensor::from_f32(&[1, l, 128], y.f32s().unwrap()[..l * 128].to_vec()).unwrap();
    assert_close(
        "text.encoded_text (padded to 16)",
        &real,
        &o["text.encoded_text"],
    );
}

/// Bad inputs (wrong dtype, weights of another width) are clear errors, not panics.
#[test]
fn bert_rejects_bad_inputs() {
    let w = tiny_weights();
    let p = tiny_params();
    let mut g = Graph::new("bad", GraphOptions::default());
    let ids = g.input("input_ids", DType::I64, &[1, 10]);
    let tt = g.input("token_type_ids", DType::I64, &[1, 10]);
    let pos = g.input("position_ids", DType::F32, &[1, 10]);
    let m = g.input("mask", DType::Bool, &[1, 10, 10]);
    let t = TextInputs {
        input_ids: &ids,
        token_type_ids: &tt,
        position_ids: &pos,
        self_attention_mask: &m,
    };
    let e = text_encoder(&mut g, &Scope::new(&w), &p, &t).expect_err("must fail");
    assert!(e.to_string().contains("position_ids"), "{e}");
    // wrong hidden size for these weights
    let mut g = Graph::new("bad", GraphOptions::default());
    let pos = g.input("position_ids", DType::I64, &[1, 10]);
    let t = TextInputs {
        input_ids: &ids,
        token_type_ids: &tt,
        position_ids: &pos,
        self_attention_mask: &m,
    };
    assert!(text_encoder(
        &mut g,
        &Scope::new(&w),
        &BertParams {
            hidden: 32,
            ..tiny_params()
        },
        &t
    )
    .is_err());
}

/// Batch of 2 different captions in one graph: each row equals its own single-caption run.
#[test]
fn bert_batch_rows_are_independent() {
    let ins = fixture_inputs();
    let padded = pad_inputs(&ins, 12);
    // second row: same caption with positions shifted by nothing but ids of a different word
    let mut ids2 = padded[0].i64s().unwrap().to_vec();
    ids2[2] = 2304; // another vocabulary word
    let cat = |a: &Tensor, b: &[i64]| {
        let mut v = a.i64s().unwrap().to_vec();
        v.extend_from_slice(b);
        Tensor::from_i64(&[2, 12], v).unwrap()
    };
    let Data::Bool(m) = padded[3].data() else {
        panic!()
    };
    let mut m2 = m.clone();
    m2.extend_from_slice(m);
    let batch = [
        cat(&padded[0], &ids2),
        cat(&padded[1], padded[1].i64s().unwrap()),
        cat(&padded[2], padded[2].i64s().unwrap()),
        Tensor::new(vec![2, 12, 12], Data::Bool(m2)).unwrap(),
    ];
    let (_, got) = run_text(&tiny_params(), &batch, GraphOptions::default());
    let (_, one) = run_text(&tiny_params(), &padded, GraphOptions::default());
    let y = got[0].f32s().unwrap();
    let row0 = Tensor::from_f32(&[1, 12, 128], y[..12 * 128].to_vec()).unwrap();
    let (err, _) = max_err(&row0, &one[0]);
    assert!(err < 1e-5, "row 0 differs from the single run by {err}");
    let row1 = Tensor::from_f32(&[1, 12, 128], y[12 * 128..].to_vec()).unwrap();
    let (diff, _) = max_err(&row1, &one[0]);
    assert!(diff > 1e-3, "a different word must change the features");
}

/// A second configuration with random weights (hidden 32, 3 layers, 4 heads, d = 64, B = 2, L = 7)
/// builds and runs with the expected shape and finite values.
#[test]
fn bert_second_config_random_weights() {
    use std::collections::HashMap;
    let (hid, layers, heads, inter, d, vocab) =
        (32usize, 3usize, 4usize, 48usize, 64usize, 100usize);
    let mut seed = 12345u64;
    let mut rnd = |n: usize, s: f32| -> Vec<f32> {
        (0..n)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * s
            })
            .collect()
    };
    let mut w: HashMap<String, Tensor> = HashMap::new();
    let mut put = |k: &str, shape: &[usize], s: f32| {
        let n = shape.iter().product();
        w.insert(k.to_string(), Tensor::from_f32(shape, rnd(n, s)).unwrap());
    };
    put("bert.embeddings.word_embeddings.weight", &[vocab, hid], 1.0);
    put(
        "bert.embeddings.position_embeddings.weight",
        &[20, hid],
        1.0,
    );
    put(
        "bert.embeddings.token_type_embeddings.weight",
        &[2, hid],
        1.0,
    );
    put("bert.embeddings.LayerNorm.weight", &[hid], 1.0);
    put("bert.embeddings.LayerNorm.bias", &[hid], 0.1);
    for i in 0..layers {
        let pre = format!("bert.encoder.layer.{i}");
        for n in ["query", "key", "value"] {
            put(
                &format!("{pre}.attention.self.{n}.weight"),
                &[hid, hid],
                0.3,
            );
            put(&format!("{pre}.attention.self.{n}.bias"), &[hid], 0.1);
        }
        put(
            &format!("{pre}.attention.output.dense.weight"),
            &[hid, hid],
            0.3,
        );
        put(&format!("{pre}.attention.output.dense.bias"), &[hid], 0.1);
        put(
            &format!("{pre}.attention.output.LayerNorm.weight"),
            &[hid],
            1.0,
        );
        put(
            &format!("{pre}.attention.output.LayerNorm.bias"),
            &[hid],
            0.1,
        );
        put(
            &format!("{pre}.intermediate.dense.weight"),
            &[inter, hid],
            0.3,
        );
        put(&format!("{pre}.intermediate.dense.bias"), &[inter], 0.1);
        put(&format!("{pre}.output.dense.weight"), &[hid, inter], 0.3);
        put(&format!("{pre}.output.dense.bias"), &[hid], 0.1);
        put(&format!("{pre}.output.LayerNorm.weight"), &[hid], 1.0);
        put(&format!("{pre}.output.LayerNorm.bias"), &[hid], 0.1);
    }
    put("feat_map.weight", &[d, hid], 0.3);
    put("feat_map.bias", &[d], 0.1);
    let (b, l) = (2usize, 7usize);
    let mut g = Graph::new("text2", GraphOptions::default());
    let ids = g.input("input_ids", DType::I64, &[b, l]);
    let tt = g.input("token_type_ids", DType::I64, &[b, l]);
    let pos = g.input("position_ids", DType::I64, &[b, l]);
    let m = g.input("mask", DType::Bool, &[b, l, l]);
    let t = TextInputs {
        input_ids: &ids,
        token_type_ids: &tt,
        position_ids: &pos,
        self_attention_mask: &m,
    };
    let y = text_encoder(
        &mut g,
        &Scope::new(&w),
        &BertParams {
            hidden: hid,
            layers,
            heads,
            intermediate: inter,
            vocab,
            max_positions: 20,
            d_model: d,
            ..tiny_params()
        },
        &t,
    )
    .unwrap();
    assert_eq!(y.shape, vec![b, l, d]);
    g.output("y", &y).unwrap();
    let ids_t = Tensor::from_i64(
        &[b, l],
        (0..(b * l) as i64)
            .map(|i| (i * 7) % vocab as i64)
            .collect(),
    )
    .unwrap();
    let tt_t = Tensor::from_i64(&[b, l], vec![0; b * l]).unwrap();
    let pos_t =
        Tensor::from_i64(&[b, l], (0..(b * l) as i64).map(|i| i % l as i64).collect()).unwrap();
    let mask = Tensor::new(
        vec![b, l, l],
        Data::Bool((0..b * l * l).map(|i| (i / l) % l >= i % l).collect()),
    )
    .unwrap();
    let out = run_plain(&g.to_bytes(), &[ids_t, tt_t, pos_t, mask]).unwrap();
    assert_eq!(out[0].shape(), &[b, l, d]);
    assert!(out[0].f32s().unwrap().iter().all(|v| v.is_finite()));
}
