//! The Swin backbone graph reproduces the official patch embedding and the four normed stage outputs,
//! and builds at the real Swin-T / Swin-B sizes.

use crate::support::common;

use common::{assert_close, tiny_inputs, tiny_outputs, tiny_weights};
use referdino::graph::swin::{swin_backbone, SwinParams};
use referdino::onnx::builder::{Graph, GraphOptions};
use referdino::onnx::run::run_plain;
use referdino::onnx::Scope;
use referdino::tensor::{DType, Tensor};
use std::collections::HashMap;

fn tiny_params() -> SwinParams {
    // tiny_overrides of the fixture
    SwinParams::new(12, &[1, 1, 2, 1], &[1, 2, 4, 8], 7)
}

fn taps() -> GraphOptions {
    GraphOptions {
        taps: true,
        decompose_custom_ops: true,
    }
}

/// `frames [1, T, 3, H, W]` → `[T, 3, H, W]`.
fn frames() -> Tensor {
    let f = tiny_inputs()["frames"].clone();
    let s = f.shape().to_vec();
    f.reshape(&[s[1], s[2], s[3], s[4]]).unwrap()
}

#[test]
fn swin_matches_fixture() {
    let w = tiny_weights();
    let o = tiny_outputs();
    let x = frames();
    let mut g = Graph::new("swin", taps());
    let img = g.input("frames", DType::F32, x.shape());
    let out = swin_backbone(&mut g, &Scope::new(&w), &tiny_params(), &img).unwrap();
    assert_eq!(out.features.len(), 4);
    let names: Vec<String> = g.output_specs().iter().map(|s| s.name.clone()).collect();
    let got = run_plain(&g.to_bytes(), &[x]).unwrap();
    let mut checked = 0;
    for (name, t) in names.iter().zip(&got) {
        assert_close(name, t, &o[name]);
        checked += 1;
    }
    // patch_embed + 4 features
    assert_eq!(checked, 5, "taps: {names:?}");
}

/// Random weights of the right shapes for a Swin backbone (all f32, small values).
fn random_swin_weights(p: &SwinParams) -> HashMap<String, Tensor> {
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut rnd = |n: usize, s: f32| -> Vec<f32> {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                ((seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * s
            })
            .collect()
    };
    let mut m = HashMap::new();
    let mut put = |k: String, shape: &[usize], s: f32, m: &mut HashMap<String, Tensor>| {
        let n = shape.iter().product();
        m.insert(k, Tensor::from_f32(shape, rnd(n, s)).unwrap());
    };
    let pre = &p.prefix;
    let c0 = p.embed_dim;
    put(
        format!("{pre}.patch_embed.proj.weight"),
        &[c0, 3, 4, 4],
        0.2,
        &mut m,
    );
    put(format!("{pre}.patch_embed.proj.bias"), &[c0], 0.1, &mut m);
    let ln = |k: String, c: usize, m: &mut HashMap<String, Tensor>| {
        m.insert(
            format!("{k}.weight"),
            Tensor::from_f32(&[c], vec![1.0; c]).unwrap(),
        );
        m.insert(
            format!("{k}.bias"),
            Tensor::from_f32(&[c], vec![0.0; c]).unwrap(),
        );
    };
    ln(format!("{pre}.patch_embed.norm"), c0, &mut m);
    let t = (2 * p.window - 1) * (2 * p.window - 1);
    for s in 0..4 {
        let c = p.channels(s);
        let hd = p.num_heads[s];
        for b in 0..p.depths[s] {
            let bp = format!("{pre}.layers.{s}.blocks.{b}");
            ln(format!("{bp}.norm1"), c, &mut m);
            ln(format!("{bp}.norm2"), c, &mut m);
            let sc = 1.0 / (c as f32).sqrt();
            put(format!("{bp}.attn.qkv.weight"), &[3 * c, c], sc, &mut m);
            put(format!("{bp}.attn.qkv.bias"), &[3 * c], 0.1, &mut m);
            put(format!("{bp}.attn.proj.weight"), &[c, c], sc, &mut m);
            put(format!("{bp}.attn.proj.bias"), &[c], 0.1, &mut m);
            put(
                format!("{bp}.attn.relative_position_bias_table"),
                &[t, hd],
                1.0,
                &mut m,
            );
            put(format!("{bp}.mlp.fc1.weight"), &[4 * c, c], sc, &mut m);
            put(format!("{bp}.mlp.fc1.bias"), &[4 * c], 0.1, &mut m);
            put(
                format!("{bp}.mlp.fc2.weight"),
                &[c, 4 * c],
                sc / 2.0,
                &mut m,
            );
            put(format!("{bp}.mlp.fc2.bias"), &[c], 0.1, &mut m);
        }
        ln(format!("{pre}.norm{s}"), c, &mut m);
        if s < 3 {
            ln(format!("{pre}.layers.{s}.downsample.norm"), 4 * c, &mut m);
            put(
                format!("{pre}.layers.{s}.downsample.reduction.weight"),
                &[2 * c, 4 * c],
                0.5 / (c as f32).sqrt(),
                &mut m,
            );
        }
    }
    m
}

fn build(
    p: &SwinParams,
    shape: &[usize],
    w: &HashMap<String, Tensor>,
) -> (Vec<u8>, usize, Vec<Vec<usize>>) {
    let mut g = Graph::new("swin", GraphOptions::default());
    let img = g.input("image", DType::F32, shape);
    let out = swin_backbone(&mut g, &Scope::new(w), p, &img).unwrap();
    for (i, f) in out.features.iter().enumerate() {
        g.output(&format!("features.{i}"), f).unwrap();
    }
    let shapes = out.features.iter().map(|f| f.shape.clone()).collect();
    let n = g.node_count();
    (g.to_bytes(), n, shapes)
}

/// Swin-T at 360×640 builds with the expected output shapes (random weights); prints its size.
#[test]
fn swin_t_builds_at_360x640() {
    let p = SwinParams::swin_t();
    let w = random_swin_weights(&p);
    let (bytes, nodes, shapes) = build(&p, &[1, 3, 360, 640], &w);
    assert_eq!(
        shapes,
        vec![
            vec![1, 96, 90, 160],
            vec![1, 192, 45, 80],
            vec![1, 384, 23, 40],
            vec![1, 768, 12, 20]
        ]
    );
    eprintln!(
        "Swin-T 360x640: {nodes} nodes, ONNX {} bytes ({:.1} MiB)",
        bytes.len(),
        bytes.len() as f64 / (1024.0 * 1024.0)
    );
}

/// Swin-B (window 12, other depths/heads) at an odd size builds and runs in plain tract with the
/// expected shapes and finite values — shape logic not tied to the fixture.
#[test]
fn swin_b_shapes_run_at_odd_size() {
    // Real Swin-B widths and window; depths cut to keep the test fast (the block logic is per block).
    let mut p = SwinParams::swin_b();
    p.depths = vec![2, 2, 2, 2];
    let w = random_swin_weights(&p);
    let (bytes, _, shapes) = build(&p, &[2, 3, 101, 77], &w);
    assert_eq!(
        shapes,
        vec![
            vec![2, 128, 26, 20],
            vec![2, 256, 13, 10],
            vec![2, 512, 7, 5],
            vec![2, 1024, 4, 3]
        ]
    );
    let n = 2 * 3 * 101 * 77;
    let x = Tensor::from_f32(
        &[2, 3, 101, 77],
        (0..n).map(|i| ((i % 17) as f32 - 8.0) / 8.0).collect(),
    )
    .unwrap();
    let out = run_plain(&bytes, &[x]).unwrap();
    for (i, t) in out.iter().enumerate() {
        assert_eq!(t.shape(), shapes[i].as_slice());
        assert!(
            t.f32s().unwrap().iter().all(|v| v.is_finite()),
            "features.{i} not finite"
        );
    }
}

/// A bad image shape is a clear error, not a panic.
#[test]
fn swin_rejects_bad_input() {
    let p = tiny_params();
    let w = tiny_weights();
    let mut g = Graph::new("bad", GraphOptions::default());
    let img = g.input("image", DType::F32, &[1, 4, 64, 64]);
    let e = swin_backbone(&mut g, &Scope::new(&w), &p, &img)
        .err()
        .expect("must fail");
    assert!(e.to_string().contains("[B, 3, H, W]"), "{e}");
    let mut bad = p.clone();
    bad.num_heads = vec![5, 2, 4, 8];
    let mut g = Graph::new("bad", GraphOptions::default());
    let img = g.input("image", DType::F32, &[1, 3, 64, 64]);
    assert!(swin_backbone(&mut g, &Scope::new(&w), &bad, &img).is_err());
}
