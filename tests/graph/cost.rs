//! MAC / parameter counting over finished ONNX models: hand-derived counts on small graphs, and the
//! closed form of docs/model.md: Compute budget for a GroundingDINO encoder image layer.

use referdino::graph::deformable::{deform_attn, DeformLevels};
use referdino::onnx::builder::{Bias, Graph, GraphOptions};
use referdino::onnx::cost::{cost_report, CostReport, StageRule, OTHER, SPEC_8_2_SWIN_T_360X640};
use referdino::onnx::Scope;
use referdino::tensor::{DType, Tensor};
use std::collections::HashMap;

/// Deterministic uniform values in [-a, a).
fn rand(seed: &mut u64, n: usize, a: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            *seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((*seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * a
        })
        .collect()
}

fn put(w: &mut HashMap<String, Tensor>, seed: &mut u64, key: &str, shape: &[usize]) {
    let n = shape.iter().product();
    w.insert(
        key.into(),
        Tensor::from_f32(shape, rand(seed, n, 0.1)).unwrap(),
    );
}

fn opts(decompose: bool) -> GraphOptions {
    GraphOptions {
        taps: false,
        decompose_custom_ops: decompose,
    }
}

/// Linear, broadcasting MatMul and two Convs with MACs, element-wise ops and parameters derived by hand.
#[test]
fn hand_counted_matmul_conv_and_params() {
    let mut seed = 1;
    let mut w = HashMap::new();
    put(&mut w, &mut seed, "lin.weight", &[16, 8]);
    put(&mut w, &mut seed, "lin.bias", &[16]);
    put(
        &mut w,
        &mut seed,
        "pixel_decoder.lay1.weight",
        &[4, 3, 3, 3],
    );
    put(&mut w, &mut seed, "pixel_decoder.lay1.bias", &[4]);
    let root = Scope::new(&w);
    let mut g = Graph::new("hand", opts(true));
    let x = g.input("x", DType::F32, &[2, 5, 8]);
    let a = g.input("a", DType::F32, &[2, 1, 4, 6]);
    let b = g.input("b", DType::F32, &[3, 6, 5]);
    let img = g.input("img", DType::F32, &[1, 3, 8, 8]);
    let y = g
        .scoped("enc0", |g| g.linear(&root.pp("lin"), &x, 16, Bias::With)) // 2·5·8·16 = 1280 MACs, Add 160
        .unwrap();
    let z = g.scoped("dec1", |g| g.matmul(&a, &b)).unwrap(); // out [2,3,4,5] = 120 × K 6 = 720
    let (c1, c2) = g
        .scoped("fpn", |g| {
            let lay1 = root.pp("pixel_decoder").pp("lay1");
            let c1 = g.conv2d(&lay1, &img, 4, 3, 1, 1, Bias::With)?; // 256 × 27 = 6912
            let c2 = g.conv2d(&lay1, &img, 4, 3, 2, 1, Bias::With)?; // 64 × 27 = 1728
            Ok((c1, c2))
        })
        .unwrap();
    let s = g.softmax(&z, -1).unwrap(); // 5 · 120 = 600 elementwise
    g.output("y", &y).unwrap();
    g.output("s", &s).unwrap();
    g.output("c1", &c1).unwrap();
    g.output("c2", &c2).unwrap();
    let r = cost_report(&g.into_model(), &StageRule::spec_rows(), 1).unwrap();
    eprintln!("{}", r.table());
    let node = |op: &str, scope: &str| {
        r.nodes
            .iter()
            .filter(|n| n.op == op && n.scope == scope)
            .map(|n| n.macs)
            .collect::<Vec<_>>()
    };
    assert_eq!(node("MatMul", "enc0"), vec![1280]);
    assert_eq!(node("MatMul", "dec1"), vec![720]);
    assert_eq!(node("Conv", "fpn"), vec![6912, 1728]);
    assert_eq!(r.total.macs, 1280 + 720 + 6912 + 1728);
    assert_eq!(r.total.elementwise, 160 + 600);
    // lin.weight#T 128 + lin.bias 16 + conv 108 + 4; no builder constants counted as parameters.
    assert_eq!(r.total.params, 128 + 16 + 108 + 4);
    assert_eq!(r.total.weight_bytes, 4 * (128 + 16 + 108 + 4));
    // Stages: the fpn scope and the pixel_decoder key agree; `dec1` is a decoder scope; `lin.*` in scope
    // `enc0` matches no rule (encoder rows go by official key), so it lands in `other`.
    assert_eq!(r.stage("FPN").unwrap().macs, 6912 + 1728);
    assert_eq!(r.stage("FPN").unwrap().params, 112);
    let dec = r.stage("decoder (+ query pos, box refinement)").unwrap();
    assert_eq!(
        (dec.macs, dec.elementwise),
        (720, 600),
        "Softmax inherits the MatMul's stage"
    );
    assert_eq!(r.stage(OTHER).unwrap().macs, 1280);
    // Scopes at depth 1.
    let sc: Vec<(&str, u64)> = r
        .scopes
        .iter()
        .map(|s| (s.name.as_str(), s.counts.macs))
        .collect();
    assert!(
        sc.contains(&("enc0", 1280)) && sc.contains(&("fpn", 8640)),
        "{sc:?}"
    );
}

/// MSDeformAttn and QueryPrune are counted from their I/O shapes; the decomposed MSDeformAttn
/// (GridSample per level) gives the same bilinear-tap count as the custom op.
#[test]
fn custom_ops_counted_by_io_shapes() {
    let shapes = [(4usize, 5usize), (2, 2)];
    let (b, s, h, dh, q, l, p) = (1, 24, 2, 4, 3, 2, 4);
    let mut taps = Vec::new();
    for decompose in [false, true] {
        let mut g = Graph::new("msda", opts(decompose));
        let v = g.input("value", DType::F32, &[b, s, h, dh]);
        let loc = g.input("loc", DType::F32, &[b, q, h, l, p, 2]);
        let att = g.input("att", DType::F32, &[b, q, h, l, p]);
        let lo = g.input("logits", DType::F32, &[1, 6, 5]);
        let at = g.input("attn", DType::F32, &[1, 6, 6]);
        let o = g.ms_deform_attn(&v, &shapes, &loc, &att).unwrap();
        let (idx, gate) = g.query_prune(&lo, &at, 3).unwrap();
        g.output("o", &o).unwrap();
        g.output("idx", &idx).unwrap();
        g.output("gate", &gate).unwrap();
        let r = cost_report(&g.into_model(), &StageRule::spec_rows(), 1).unwrap();
        let samples = (b * q * h * l * p) as u64;
        if !decompose {
            let m = r.nodes.iter().find(|n| n.op == "MSDeformAttn").unwrap();
            assert_eq!(m.sampling, samples * dh as u64 * 4);
            assert_eq!(m.elementwise, samples * dh as u64);
            let qp = r.nodes.iter().find(|n| n.op == "QueryPrune").unwrap();
            assert_eq!(qp.elementwise, 30 + 36 + 12 * 6);
        }
        assert_eq!(r.total.macs, 0);
        taps.push(r.total.sampling);
    }
    assert_eq!(taps[0], taps[1], "custom op vs GridSample decomposition");
    assert_eq!(taps[0], 3 * 2 * 2 * 4 * 4 * 4);
}

/// One encoder image layer (deformable self-attention + FFN, d = 256, 8 heads, 4 levels, 4 points) costs
/// S × 1,277,952 MACs (docs/model.md: Compute budget), all attributed to the encoder-layer row.
#[test]
fn encoder_image_layer_matches_spec_closed_form() {
    let pre = "transformer.encoder.layers.0";
    let mut seed = 7;
    let mut w = HashMap::new();
    for (k, sh) in [
        ("self_attn.sampling_offsets", [256, 256]),
        ("self_attn.attention_weights", [128, 256]),
        ("self_attn.value_proj", [256, 256]),
        ("self_attn.output_proj", [256, 256]),
        ("linear1", [2048, 256]),
        ("linear2", [256, 2048]),
    ] {
        put(&mut w, &mut seed, &format!("{pre}.{k}.weight"), &sh);
        put(&mut w, &mut seed, &format!("{pre}.{k}.bias"), &sh[..1]);
    }
    for n in ["norm1", "norm2"] {
        put(&mut w, &mut seed, &format!("{pre}.{n}.weight"), &[256]);
        put(&mut w, &mut seed, &format!("{pre}.{n}.bias"), &[256]);
    }
    let levels = DeformLevels {
        shapes: vec![(4, 6), (2, 3), (1, 2), (1, 1)],
    };
    let s: usize = levels.shapes.iter().map(|(a, b)| a * b).sum();
    let mut g = Graph::new("enc", opts(false));
    let x = g.input("src", DType::F32, &[1, s, 256]);
    let r = g.input("ref", DType::F32, &[1, s, 4, 2]);
    let y = g
        .scoped("enc0", |g| {
            let layer = Scope::new(&w).pp(pre);
            let a = deform_attn(g, &layer.pp("self_attn"), &x, &x, &r, &levels, 8, 4, None)?;
            let x = g.add(&x, &a)?;
            let x = g.layer_norm(&layer.pp("norm1"), &x, 1e-5)?;
            let f = g.linear(&layer.pp("linear1"), &x, 2048, Bias::With)?;
            let f = g.relu(&f)?;
            let f = g.linear(&layer.pp("linear2"), &f, 256, Bias::With)?;
            let x = g.add(&x, &f)?;
            g.layer_norm(&layer.pp("norm2"), &x, 1e-5)
        })
        .unwrap();
    g.output("memory", &y).unwrap();
    let rep = cost_report(&g.into_model(), &StageRule::spec_rows(), 1).unwrap();
    eprintln!("{}", rep.table());
    let row = rep.stage("enhancer: deformable self-attn + FFN").unwrap();
    assert_eq!(row.macs, s as u64 * 1_277_952);
    assert_eq!(
        rep.total.macs, row.macs,
        "every node of the layer lands in its row"
    );
    // Parameters: 4·256² + 128·256 + 2·256·2048 weights + biases + 2 norms.
    let params =
        3 * 256 * 256 + 128 * 256 + 2 * 256 * 2048 + (3 * 256 + 128 + 2048 + 256) + 4 * 256;
    assert_eq!(row.params, params as u64);
    assert!(
        row.const_bytes > 0,
        "level shapes / normalisers are constants, not parameters"
    );
    // The MSDeformAttn core and the norms inherit the row from their producers.
    assert!(rep
        .nodes
        .iter()
        .all(|n| n.stage == "enhancer: deformable self-attn + FFN"));
}

/// The report round-trips through JSON and prints one line per stage.
#[test]
fn report_json_round_trip_and_table() {
    let mut seed = 3;
    let mut w = HashMap::new();
    put(
        &mut w,
        &mut seed,
        "backbone.0.patch_embed.proj.weight",
        &[8, 3, 4, 4],
    );
    put(&mut w, &mut seed, "backbone.0.patch_embed.proj.bias", &[8]);
    let mut g = Graph::new("json", opts(true));
    let img = g.input("image", DType::F32, &[1, 3, 16, 16]);
    let y = g
        .scoped("swin", |g| {
            let proj = Scope::new(&w).pp("backbone.0.patch_embed.proj");
            g.conv2d(&proj, &img, 8, 4, 4, 0, Bias::With)
        })
        .unwrap();
    g.output("y", &y).unwrap();
    let r = cost_report(&g.into_model(), &StageRule::spec_rows(), 2).unwrap();
    let j = r.to_json().unwrap();
    let back: CostReport = serde_json::from_str(&j).unwrap();
    assert_eq!(back, r);
    assert_eq!(r.stage("Swin backbone").unwrap().macs, 16 * 8 * 48);
    let t = r.table();
    assert!(t.contains("Swin backbone") && t.contains("total"), "{t}");
}

/// Swin-T at 360×640 (zero weights of the official shapes): the "Swin backbone" row reproduces docs/model.md: Compute budget
/// (22.49 GMAC, 27.52 M parameters) within 0.2 %, counting parameters by checkpoint key.
#[test]
fn swin_t_row_matches_spec_table() {
    use referdino::graph::swin::{swin_backbone, SwinParams};
    use referdino::onnx::cost::cost_report_with_params;
    let p = SwinParams::swin_t();
    let pre = p.prefix.clone();
    let mut w: HashMap<String, Tensor> = HashMap::new();
    let mut z = |k: String, shape: &[usize]| {
        w.insert(k, Tensor::zeros(shape, DType::F32));
    };
    let c0 = p.embed_dim;
    z(format!("{pre}.patch_embed.proj.weight"), &[c0, 3, 4, 4]);
    z(format!("{pre}.patch_embed.proj.bias"), &[c0]);
    z(format!("{pre}.patch_embed.norm.weight"), &[c0]);
    z(format!("{pre}.patch_embed.norm.bias"), &[c0]);
    let t = (2 * p.window - 1) * (2 * p.window - 1);
    for s in 0..4 {
        let c = p.channels(s);
        for b in 0..p.depths[s] {
            let bp = format!("{pre}.layers.{s}.blocks.{b}");
            for (k, sh) in [
                ("norm1.weight", vec![c]),
                ("norm1.bias", vec![c]),
                ("norm2.weight", vec![c]),
                ("norm2.bias", vec![c]),
                ("attn.qkv.weight", vec![3 * c, c]),
                ("attn.qkv.bias", vec![3 * c]),
                ("attn.proj.weight", vec![c, c]),
                ("attn.proj.bias", vec![c]),
                ("attn.relative_position_bias_table", vec![t, p.num_heads[s]]),
                ("mlp.fc1.weight", vec![4 * c, c]),
                ("mlp.fc1.bias", vec![4 * c]),
                ("mlp.fc2.weight", vec![c, 4 * c]),
                ("mlp.fc2.bias", vec![c]),
            ] {
                z(format!("{bp}.{k}"), &sh);
            }
        }
        z(format!("{pre}.norm{s}.weight"), &[c]);
        z(format!("{pre}.norm{s}.bias"), &[c]);
        if s < 3 {
            z(format!("{pre}.layers.{s}.downsample.norm.weight"), &[4 * c]);
            z(format!("{pre}.layers.{s}.downsample.norm.bias"), &[4 * c]);
            z(
                format!("{pre}.layers.{s}.downsample.reduction.weight"),
                &[2 * c, 4 * c],
            );
        }
    }
    let sizes: HashMap<String, usize> = w.iter().map(|(k, v)| (k.clone(), v.numel())).collect();
    let mut g = Graph::new("swin_t", opts(false));
    let img = g.input("image", DType::F32, &[1, 3, 360, 640]);
    let out = swin_backbone(&mut g, &Scope::new(&w), &p, &img).unwrap();
    for (i, f) in out.features.iter().enumerate() {
        g.output(&format!("features.{i}"), f).unwrap();
    }
    let r = cost_report_with_params(&g.into_model(), &StageRule::spec_rows(), 2, &sizes).unwrap();
    eprintln!("{}", r.table());
    let row = r.stage("Swin backbone").unwrap();
    let gmac = row.macs as f64 / 1e9;
    let mparams = row.params as f64 / 1e6;
    eprintln!("Swin-T 360x640: {gmac:.3} GMAC (spec 22.49), {mparams:.3} M params (spec 27.52)");
    let cmp = r.compare_table(SPEC_8_2_SWIN_T_360X640);
    eprintln!("{cmp}");
    assert!(cmp.contains("1.000"), "{cmp}");
    // Every reference row names a stage rule.
    let rules = StageRule::spec_rows();
    for (name, _, _) in SPEC_8_2_SWIN_T_360X640 {
        assert!(rules.iter().any(|r| r.stage == *name), "{name}");
    }
    assert!((gmac / 22.49 - 1.0).abs() < 0.002, "{gmac} GMAC");
    assert!((mparams / 27.52 - 1.0).abs() < 0.002, "{mparams} M params");
    assert_eq!(r.total.macs, row.macs);
}

/// An op the passes do not know is a clear error naming the node, not a panic or a silent zero: in
/// the builder (whose output shapes come from the same inference) and in the cost report of a model
/// loaded from elsewhere.
#[test]
fn unknown_op_is_a_clear_error() {
    use referdino::onnx::builder::Attr;
    let mut g = Graph::new("bad", opts(true));
    let x = g.input("x", DType::F32, &[2, 3]);
    let e = g
        .node("Hardmax", "", &[&x], &[("axis", Attr::Int(1))], 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("Hardmax") && e.contains("not known"), "{e}");
    let y = g.scoped("enc0", |g| g.softmax(&x, 1)).unwrap();
    g.output("y", &y).unwrap();
    let mut m = g.into_model();
    let n = m
        .graph
        .as_mut()
        .unwrap()
        .node
        .iter_mut()
        .find(|n| n.name == "enc0/softmax")
        .unwrap();
    n.op_type = "Hardmax".into();
    let e = cost_report(&m, &StageRule::spec_rows(), 1)
        .unwrap_err()
        .to_string();
    assert!(e.contains("enc0/softmax") && e.contains("Hardmax"), "{e}");
}

/// The bi-attention fusion of Swin-T at 360×640, L = 11, in our order (docs/model.md: Feature enhancer),
/// counted from the module shapes: S = 4820 image tokens, d = 256, inner size e = 1024 in H = 4 heads of
/// hd = 256, 6 layers. Per layer: the three S-token products (logits `vn · K'`, the text side's `P_l · vn`,
/// the image side's `P_v · N`), S·H·L·d each; the text-side Linears `l_proj`, `values_l_proj` (L·d·e
/// each) and `out_l_proj` (L·e·d); the per-head weight products `k_h W_q,h`, `val_l,h W_out,hᵀ`,
/// `(P_l vn)_h W_vv,hᵀ` (H·L·hd·d each) and the bias product `k_h · b_q,h` (H·L·hd).
const FUSION_REASSOCIATED_GMAC: f64 = {
    let (s, d, e, h, hd, l) = (4820.0, 256.0, 1024.0, 4.0, 256.0, 11.0);
    let per_layer = 3.0 * s * h * l * d + 3.0 * l * d * e + 3.0 * h * l * hd * d + h * l * hd;
    6.0 * per_layer / 1e9
};

/// The whole model (all four engines, Swin-T, 360×640, L = 11, window 1, random weights) against spec
/// Every stage row within 3 % of the independent GMAC count (docs/model.md: Compute budget) (rows ≥ 0.1 GMAC; measured ≤ 0.2 %), and the
/// parameters of the rows without LoRA / shared tensors within 1 % (or the spec's 0.005 M rounding).
#[test]
fn full_model_swin_t_vs_spec_table() {
    use referdino::config::ModelConfig;
    use referdino::graph::engines::{build_engines, ExportOptions, Geometry};
    use referdino::onnx::cost::cost_report_with_params;
    use referdino::weights::random::random_weights;
    let cfg = ModelConfig::swin_t();
    let geo = Geometry {
        height: 360,
        width: 640,
        max_text: 11,
        window: 1,
    };
    let w = random_weights(&cfg, 1).unwrap();
    let sizes: HashMap<String, usize> = w.iter().map(|(k, v)| (k.clone(), v.numel())).collect();
    let graphs = build_engines(&w, &cfg, &geo, &ExportOptions::default()).unwrap();
    drop(w);
    let rules = StageRule::spec_rows();
    let mut total: HashMap<String, (f64, f64)> = HashMap::new();
    for g in graphs {
        let r = cost_report_with_params(&g.into_model(), &rules, 1, &sizes).unwrap();
        eprintln!("{}", r.table());
        for s in &r.stages {
            let e = total.entry(s.name.clone()).or_default();
            e.0 += s.counts.macs as f64 / 1e9;
            e.1 += s.counts.params as f64 / 1e6;
        }
    }
    let mut fails = Vec::new();
    eprintln!(
        "{:<40} {:>10} {:>10} {:>10} {:>10}",
        "stage", "GMAC", "spec", "M params", "spec"
    );
    for (name, spec, mp) in SPEC_8_2_SWIN_T_360X640 {
        let (g, p) = total.get(*name).copied().unwrap_or_default();
        eprintln!("{name:<40} {g:>10.3} {spec:>10.2} {p:>10.3} {mp:>10.2}");
        // The fusion computes the official function in another order (docs/model.md: Feature enhancer):
        // its row is checked against an independent count of that order instead of the official one.
        let gmac = if *name == "enhancer: bi-attention fusion" {
            &FUSION_REASSOCIATED_GMAC
        } else {
            spec
        };
        if *gmac >= 0.1 && (g / gmac - 1.0).abs() > 0.03 {
            fails.push(format!("{name}: {g:.3} GMAC vs spec {gmac}"));
        }
        // The spec's parameter column counts LoRA factors (encoder/decoder rows), BERT's unused pooler,
        // and shared tensors once; ours counts folded weights per engine. Rows without those agree.
        let plain = [
            "Swin backbone",
            "input projections",
            "two-stage heads",
            "tracker + temporal decoder",
            "FPN",
            "final heads",
        ];
        if plain.contains(name) && (p - mp).abs() > (0.01 * mp).max(0.005) {
            fails.push(format!("{name}: {p:.3} M params vs spec {mp}"));
        }
    }
    for (name, (g, p)) in &total {
        if !SPEC_8_2_SWIN_T_360X640.iter().any(|r| r.0 == name) {
            eprintln!("{name:<40} {g:>10.3} {:>10} {p:>10.3}", "-");
        }
    }
    assert!(fails.is_empty(), "{fails:?}");
}
