//! Input projections, flattening and the encoder's positional terms against the official fixture.

use crate::support::common;

use common::{assert_close, tiny_outputs, tiny_weights};
use referdino::graph::input_proj::{
    flatten_levels, input_proj, level_pos_flatten, level_shapes, level_start_index, text_pos_embed,
    InputProjParams,
};
use referdino::graph::position::reference_points_const;
use referdino::onnx::builder::{Graph, GraphOptions};
use referdino::onnx::run::run_plain;
use referdino::onnx::Scope;
use referdino::tensor::{DType, Tensor};

fn taps() -> GraphOptions {
    GraphOptions {
        taps: true,
        decompose_custom_ops: true,
    }
}

#[test]
fn input_proj_and_positions_match_fixture() {
    let w = tiny_weights();
    let o = tiny_outputs();
    let p = InputProjParams::new(128);
    let feats: Vec<Tensor> = (0..4)
        .map(|i| o[&format!("backbone.features.{i}")].clone())
        .collect();
    let pos_ids = o["encoder.text_position_ids"].clone(); // [T, L]
    let t = feats[0].shape()[0];
    let mut g = Graph::new("input_proj", taps());
    let fv: Vec<_> = feats
        .iter()
        .enumerate()
        .map(|(i, f)| g.input(&format!("features.{i}"), DType::F32, f.shape()))
        .collect();
    let pid = g.input("position_ids", DType::I64, pos_ids.shape());
    let srcs = input_proj(&mut g, &Scope::new(&w).pp("input_proj"), &p, &fv).unwrap();
    let shapes = level_shapes(&srcs);
    let flat = flatten_levels(&mut g, &srcs).unwrap();
    g.output("src_flatten", &flat).unwrap();
    let pos = level_pos_flatten(&mut g, &Scope::new(&w).pp("transformer"), &p, &shapes, t).unwrap();
    assert_eq!(pos.shape, vec![1, 191, 128]);
    let rp = reference_points_const(&mut g, &shapes, t).unwrap();
    assert_eq!(rp.shape, vec![1, 191, 4, 2]);
    text_pos_embed(&mut g, &p, &pid).unwrap();
    let names: Vec<String> = g.output_specs().iter().map(|s| s.name.clone()).collect();
    let mut ins = feats.clone();
    ins.push(pos_ids);
    let got = run_plain(&g.to_bytes(), &ins).unwrap();
    let mut checked = Vec::new();
    for (name, v) in names.iter().zip(&got) {
        if let Some(want) = o.get(name) {
            assert_close(name, v, want);
            checked.push(name.as_str());
        }
    }
    for key in [
        "input_proj.0",
        "input_proj.1",
        "input_proj.2",
        "input_proj.3",
        "encoder.pos_flatten",
        "encoder.reference_points",
        "encoder.text_pos",
    ] {
        assert!(checked.contains(&key), "{key} not tapped: {names:?}");
    }
    // Flattening: level-major, row-major, channels last — checked against the fixture's projections.
    let flat = &got[names.iter().position(|n| n == "src_flatten").unwrap()];
    let mut want = Vec::new();
    for b in 0..t {
        for l in 0..4 {
            let s = &o[&format!("input_proj.{l}")];
            let (c, h, wd) = (s.shape()[1], s.shape()[2], s.shape()[3]);
            let v = &s.f32s().unwrap()[b * c * h * wd..(b + 1) * c * h * wd];
            for i in 0..h * wd {
                for ch in 0..c {
                    want.push(v[ch * h * wd + i]);
                }
            }
        }
    }
    let want = Tensor::from_f32(&[t, 191, 128], want).unwrap();
    assert_close("src_flatten", flat, &want);
    // Host-side level bookkeeping equals the official tensors.
    let ss: Vec<i64> = shapes
        .iter()
        .flat_map(|&(h, w)| [h as i64, w as i64])
        .collect();
    assert_eq!(ss, o["encoder.spatial_shapes"].i64s().unwrap());
    let lsi: Vec<i64> = level_start_index(&shapes)
        .iter()
        .map(|&v| v as i64)
        .collect();
    assert_eq!(lsi, o["encoder.level_start_index"].i64s().unwrap());
}

/// Another width (d = 64, 16 groups) and the real Swin-T level sizes at 360×640: shapes are right and
/// the graph runs (random-free: the projections read zero-mean synthetic features and unit affine).
#[test]
fn input_proj_second_config_runs() {
    use std::collections::HashMap;
    let d = 64;
    let chans = [96usize, 192, 384, 768];
    let sizes = [(90usize, 160usize), (45, 80), (23, 40), (12, 20)];
    let mut w: HashMap<String, Tensor> = HashMap::new();
    let mut k = 0u32;
    let mut fill = |n: usize| -> Vec<f32> {
        (0..n)
            .map(|_| {
                k = k.wrapping_mul(1103515245).wrapping_add(12345);
                ((k >> 8) % 2000) as f32 / 1000.0 - 1.0
            })
            .collect()
    };
    for l in 0..4 {
        let (cin, ks) = if l < 3 {
            (chans[l + 1], 1)
        } else {
            (chans[3], 3)
        };
        let n = d * cin * ks * ks;
        w.insert(
            format!("input_proj.{l}.0.weight"),
            Tensor::from_f32(
                &[d, cin, ks, ks],
                fill(n).iter().map(|v| v * 0.05).collect(),
            )
            .unwrap(),
        );
        w.insert(
            format!("input_proj.{l}.0.bias"),
            Tensor::from_f32(&[d], fill(d)).unwrap(),
        );
        w.insert(
            format!("input_proj.{l}.1.weight"),
            Tensor::from_f32(&[d], vec![1.0; d]).unwrap(),
        );
        w.insert(
            format!("input_proj.{l}.1.bias"),
            Tensor::from_f32(&[d], vec![0.0; d]).unwrap(),
        );
    }
    w.insert(
        "transformer.level_embed".into(),
        Tensor::from_f32(&[4, d], fill(4 * d)).unwrap(),
    );
    let mut p = InputProjParams::new(d);
    p.groups = 16;
    let mut g = Graph::new("ip2", GraphOptions::default());
    let fv: Vec<_> = (0..4)
        .map(|i| {
            g.input(
                &format!("f{i}"),
                DType::F32,
                &[1, chans[i], sizes[i].0, sizes[i].1],
            )
        })
        .collect();
    let srcs = input_proj(&mut g, &Scope::new(&w).pp("input_proj"), &p, &fv).unwrap();
    let shapes = level_shapes(&srcs);
    assert_eq!(shapes, vec![(45, 80), (23, 40), (12, 20), (6, 10)]);
    let flat = flatten_levels(&mut g, &srcs).unwrap();
    let s = 45 * 80 + 23 * 40 + 12 * 20 + 6 * 10;
    assert_eq!(flat.shape, vec![1, s, d]);
    let pos = level_pos_flatten(&mut g, &Scope::new(&w).pp("transformer"), &p, &shapes, 1).unwrap();
    let src_pos = g.add(&flat, &pos).unwrap();
    g.output("src_pos", &src_pos).unwrap();
    let ins: Vec<Tensor> = (0..4)
        .map(|i| {
            let n = chans[i] * sizes[i].0 * sizes[i].1;
            Tensor::from_f32(&[1, chans[i], sizes[i].0, sizes[i].1], fill(n)).unwrap()
        })
        .collect();
    let out = run_plain(&g.to_bytes(), &ins).unwrap();
    assert_eq!(out[0].shape(), &[1, s, d]);
    assert!(out[0].f32s().unwrap().iter().all(|v| v.is_finite()));
}

/// The text sine embedding is driven by params (F = 64 here) and rejects non-integer ids.
#[test]
fn text_pos_embed_width_and_errors() {
    let mut p = InputProjParams::new(128);
    p.text_pos_feats = 64;
    let mut g = Graph::new("tp", GraphOptions::default());
    let ids = g.input("ids", DType::I64, &[2, 5]);
    let e = text_pos_embed(&mut g, &p, &ids).unwrap();
    assert_eq!(e.shape, vec![2, 5, 64]);
    g.output("e", &e).unwrap();
    let out = run_plain(
        &g.to_bytes(),
        &[Tensor::from_i64(&[2, 5], vec![0, 1, 2, 3, 0, 0, 1, 2, 3, 4]).unwrap()],
    )
    .unwrap();
    let v = out[0].f32s().unwrap();
    // position 3, k = 1: sin(3·2π / 10000^(2/64)) — the definition, evaluated independently in f64
    let want = (3.0f64 * 2.0 * std::f64::consts::PI / 10000f64.powf(2.0 / 64.0)).sin();
    assert!(
        (v[3 * 64 + 2] as f64 - want).abs() < 1e-5,
        "{} vs {want}",
        v[3 * 64 + 2]
    );
    // position 0 → sin 0 = 0, cos 0 = 1
    assert_eq!(&v[..4], &[0.0, 1.0, 0.0, 1.0]);
    let mut g = Graph::new("tp", GraphOptions::default());
    let bad = g.input("ids", DType::F32, &[2, 5]);
    assert!(text_pos_embed(&mut g, &p, &bad).is_err());
}
