//! A host INT8 graph's products on our integer kernel (`onnx::int8_products`, `ops::qlinear`): the
//! rewrite keeps the graph's meaning (the ONNX `QuantizeLinear` integers, summed exactly), runs on
//! the CPU backend bit for bit as this file's own reading of the ONNX operators, agrees with tract's
//! float evaluation of the Q/DQ graph and with ONNX Runtime's integer products, leaves products of
//! two activations in their Q/DQ form, and a malformed fused node is a load error.

use super::qdq::{data, value_info};
use crate::support::common;
use prost::Message;
use referdino::backend::cpu::CpuBackend;
use referdino::backend::{Engine, View, ViewMut};
use referdino::graph::fp32_policy;
use referdino::onnx::int8_products::{
    fuse_int8_products, Fused, FAKE_QUANTIZE_OP, PRODUCT_OP, QUANTIZE_OP,
};
use referdino::onnx::precision::{insert_qdq, Int8Options};
use std::collections::HashMap;
use tract_onnx::pb;

const B: usize = 2;
const T: usize = 5;
/// Not a multiple of 4: the kernel's last group of `k` is partial.
const K: usize = 10;
const N1: usize = 7;
/// More than one 32-column pair.
const N2: usize = 33;
const X_SCALE: f32 = 0.021;
const XT_SCALE: f32 = 0.019;

fn f32_init(name: &str, dims: &[usize], v: &[f32]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.into(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: 1,
        raw_data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn node(op: &str, name: &str, inputs: &[&str], output: &str) -> pb::NodeProto {
    pb::NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        name: name.into(),
        op_type: op.into(),
        ..Default::default()
    }
}

/// x [B,T,K]: y1 = x·W1 + b1, y2 = x·W2 (x quantized once for both), y3 = x·xᵀ (two activations);
/// then the host INT8 pass (uint8 activations).
fn host_int8_model(w1: &[f32], b1: &[f32], w2: &[f32]) -> pb::ModelProto {
    let mut transpose = node("Transpose", "transpose", &["x"], "xt");
    transpose.attribute.push(pb::AttributeProto {
        name: "perm".into(),
        r#type: pb::attribute_proto::AttributeType::Ints as i32,
        ints: vec![0, 2, 1],
        ..Default::default()
    });
    let fp32 = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        producer_name: "referdino-test".into(),
        graph: Some(pb::GraphProto {
            node: vec![
                node("MatMul", "l1/matmul", &["x", "w1"], "h1"),
                node("Add", "l1/add", &["h1", "b1"], "y1"),
                node("MatMul", "l2/matmul", &["x", "w2"], "y2"),
                transpose,
                node("MatMul", "att/matmul", &["x", "xt"], "y3"),
            ],
            name: "int8_products".into(),
            initializer: vec![
                f32_init("w1", &[K, N1], w1),
                f32_init("b1", &[N1], b1),
                f32_init("w2", &[K, N2], w2),
            ],
            input: vec![value_info("x", &[B, T, K])],
            output: vec![
                value_info("y1", &[B, T, N1]),
                value_info("y2", &[B, T, N2]),
                value_info("y3", &[B, T, T]),
            ],
            ..Default::default()
        }),
        ..Default::default()
    };
    let scales: HashMap<String, f32> =
        [("x".to_string(), X_SCALE), ("xt".to_string(), XT_SCALE)].into();
    let opts = Int8Options {
        activation_u8: true,
        ..Int8Options::default()
    };
    insert_qdq(&fp32, &fp32_policy::policy(), &scales, &opts)
        .unwrap()
        .0
}

/// Runs an engine on x; its three outputs.
fn run(mut e: Box<dyn Engine>, x: &[f32]) -> Vec<Vec<f32>> {
    let mut outs = vec![
        vec![0f32; B * T * N1],
        vec![0f32; B * T * N2],
        vec![0f32; B * T * T],
    ];
    {
        let mut ov: Vec<ViewMut<'_>> = outs.iter_mut().map(|v| ViewMut::F32(v)).collect();
        e.run(&[View::F32(x)], &mut ov).unwrap();
    }
    outs
}

/// ONNX `QuantizeLinear` as the operator's definition reads: `saturate(round_half_to_even(v / s) + zp)`.
fn onnx_quantize(v: f32, s: f32, zp: f32, lo: f32, hi: f32) -> i32 {
    ((v / s).round_ties_even() + zp).clamp(lo, hi) as i32
}

fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    let range = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
        / range
}

#[test]
fn int8_products_run_the_onnx_integers_on_our_kernel() {
    let (w1, b1, w2) = (data(K * N1, 2, 0.3), data(N1, 3, 0.5), data(K * N2, 4, 0.2));
    let x = data(B * T * K, 1, 2.0);
    let m8 = host_int8_model(&w1, &b1, &w2);
    let (fused, counts) = fuse_int8_products(&m8).unwrap();
    assert_eq!(
        counts,
        Fused {
            products: 2,
            with_bias: 1,
            quantizations: 1,
            fake_quantizations: 1,
        }
    );
    let g = fused.graph.as_ref().unwrap();
    let ops = |op: &str| g.node.iter().filter(|n| n.op_type == op).count();
    assert_eq!(ops(PRODUCT_OP), 2);
    assert_eq!(ops(QUANTIZE_OP), 1);
    // Left: x·xᵀ (and the float Transpose), with x dequantized from the uint8 the products read and
    // xᵀ quantized and dequantized in one pass.
    assert_eq!(ops("MatMul"), 1);
    assert_eq!(ops("Add"), 0);
    assert_eq!(ops("DequantizeLinear"), 1);
    assert_eq!(ops("QuantizeLinear"), 0);
    assert_eq!(ops(FAKE_QUANTIZE_OP), 1);
    let names: Vec<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    assert!(
        !names.contains(&"w1") && !names.contains(&"w2"),
        "the f32 weights nothing reads are dropped: {names:?}"
    );
    // The stored int8 weight is ONNX QuantizeLinear of W with the graph's column scales.
    let q1 = g.node.iter().find(|n| n.output[0] == "y1").unwrap();
    assert_eq!(q1.input.len(), 5, "bias folded in");
    let init = |n: &str| g.initializer.iter().find(|t| t.name == n).unwrap();
    let sw1: Vec<f32> = init(&q1.input[3])
        .raw_data
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    let wq1: Vec<i32> = init(&q1.input[2])
        .raw_data
        .iter()
        .map(|&b| b as i8 as i32)
        .collect();
    let want_wq1: Vec<i32> = w1
        .iter()
        .enumerate()
        .map(|(i, &v)| onnx_quantize(v, sw1[i % N1], 0.0, -128.0, 127.0))
        .collect();
    assert_eq!(wq1, want_wq1);

    // On the CPU backend (the fused graph loads on any CPU: the portable kernel where there is no
    // fast one), bit for bit as the integers read from the operators' definitions.
    let cpu = CpuBackend::with_threads(2).unwrap();
    let got = run(cpu.load_bytes("fused", &fused.encode_to_vec()).unwrap(), &x);
    let xq: Vec<i32> = x
        .iter()
        .map(|&v| onnx_quantize(v, X_SCALE, 128.0, 0.0, 255.0) - 128)
        .collect();
    let mut want_y1 = vec![0f32; B * T * N1];
    for r in 0..B * T {
        for c in 0..N1 {
            let acc: i32 = (0..K).map(|kk| xq[r * K + kk] * wq1[kk * N1 + c]).sum();
            want_y1[r * N1 + c] = acc as f32 * (X_SCALE * sw1[c]) + b1[c];
        }
    }
    assert!(
        got[0]
            .iter()
            .zip(&want_y1)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "y1 {:?} vs {:?}",
        &got[0][..4],
        &want_y1[..4]
    );
    // Against tract evaluating the Q/DQ graph in float: the f32 rounding of the sums.
    let float = run(
        cpu.clone()
            .float_int8()
            .load_bytes("qdq", &m8.encode_to_vec())
            .unwrap(),
        &x,
    );
    for (i, (a, b)) in got.iter().zip(&float).enumerate() {
        let d = max_rel(a, b);
        eprintln!("y{}: integer vs float Q/DQ, max rel {d:.2e}", i + 1);
        assert!(d < 1e-5, "y{}: {d}", i + 1);
    }
    // The backend fuses a Q/DQ graph itself where the CPU has the fast kernel: the same outputs.
    if cpu.integer_products() {
        let auto = run(cpu.load_bytes("auto", &m8.encode_to_vec()).unwrap(), &x);
        assert_eq!(auto, got);
    }
    // ONNX Runtime's integer products on the Q/DQ graph (measured: the same bits).
    #[cfg(feature = "ort")]
    if common::have_ort("int8 products vs ONNX Runtime") {
        let ort = referdino::backend::ort::OrtBackend::new(2).unwrap();
        let theirs = run(ort.load_bytes("qdq", &m8.encode_to_vec()).unwrap(), &x);
        for (i, (a, b)) in got.iter().zip(&theirs).enumerate().take(2) {
            let d = max_rel(a, b);
            eprintln!("y{}: ours vs ONNX Runtime, max rel {d:.2e}", i + 1);
            assert!(d < 1e-6, "y{}: {d}", i + 1);
        }
    }
}

#[test]
fn a_malformed_int8_product_is_a_load_error() {
    let (w1, b1, w2) = (data(K * N1, 2, 0.3), data(N1, 3, 0.5), data(K * N2, 4, 0.2));
    let (fused, _) = fuse_int8_products(&host_int8_model(&w1, &b1, &w2)).unwrap();
    let cpu = CpuBackend::with_threads(1).unwrap();
    let broken = |f: &dyn Fn(&mut pb::GraphProto)| {
        let mut m = fused.clone();
        f(m.graph.as_mut().unwrap());
        match cpu.load_bytes("broken", &m.encode_to_vec()) {
            Ok(_) => panic!("a malformed QLinear loaded"),
            Err(e) => e.to_string(),
        }
    };
    let q1 = |g: &mut pb::GraphProto| {
        let n = g.node.iter().position(|n| n.output[0] == "y1").unwrap();
        g.node[n].clone()
    };
    // A bias of the wrong length.
    let e = broken(&|g| {
        let b = q1(g).input[4].clone();
        let t = g.initializer.iter_mut().find(|t| t.name == b).unwrap();
        t.dims = vec![3];
        t.raw_data.truncate(12);
    });
    assert!(e.contains("bias"), "{e}");
    // An f32 weight where int8 belongs.
    let e = broken(&|g| {
        let w = q1(g).input[2].clone();
        let t = g.initializer.iter_mut().find(|t| t.name == w).unwrap();
        t.data_type = 1;
        t.raw_data = vec![0; K * N1 * 4];
    });
    assert!(!e.is_empty());
    // A weight scale that is not > 0.
    let e = broken(&|g| {
        let s = q1(g).input[3].clone();
        let t = g.initializer.iter_mut().find(|t| t.name == s).unwrap();
        t.raw_data[..4].copy_from_slice(&0f32.to_le_bytes());
    });
    assert!(e.contains("scale"), "{e}");
    // Outside our domain the op is refused by name.
    let e = broken(&|g| {
        let n = g.node.iter().position(|n| n.op_type == PRODUCT_OP).unwrap();
        g.node[n].domain = "com.example".into();
    });
    assert!(e.contains("QLinear"), "{e}");
}

/// The fuzz seed of `fuzzing::int8_products` (fuzz/make_seeds.py writes its protobuf by hand) is a
/// host INT8 graph the rewrite takes: the mutants start from the paths that matter.
#[test]
fn the_fuzz_seed_is_rewritten() {
    let seed = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds/int8_products/host_int8.onnx");
    let m = pb::ModelProto::decode(std::fs::read(seed).unwrap().as_slice()).unwrap();
    let (_, counts) = fuse_int8_products(&m).unwrap();
    assert_eq!(
        counts,
        Fused {
            products: 1,
            with_bias: 1,
            quantizations: 1,
            fake_quantizations: 1,
        }
    );
}
