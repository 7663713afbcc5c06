//! Explicit INT8 Q/DQ as the exported ONNX carries it: `onnx::precision::insert_qdq` (the one Q/DQ
//! builder, the one the exporter uses) puts a per-tensor activation Q/DQ and a per-channel weight Q/DQ in
//! front of a MatMul; the model passes the ONNX checker and runs in tract and in ONNX Runtime
//! (independent implementations of QuantizeLinear/DequantizeLinear) with exactly the results of our
//! fake-quant maths, and close to FP32.
//!
//! ONNX Runtime and the checker come from Python (`pip install onnx onnxruntime`); without them this test
//! skips their part, unless REFERDINO_REQUIRE_ORACLES=1 (CI) makes that a failure.

use prost::Message;
use referdino::graph::fp32_policy;
use referdino::onnx::precision::{insert_qdq, Int8Options};
use referdino::onnx::run::run_plain;
use referdino::quant::fake::{fake_quant, fake_quant_per_channel};
use referdino::quant::scale::per_channel_scales;
use referdino::tensor::Tensor;
use std::collections::HashMap;
use tract_onnx::pb;

const K: usize = 16;
const M: usize = 8;
const B: usize = 4;

pub(super) fn value_info(name: &str, shape: &[usize]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::{dimension, Dimension};
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: 1,
                shape: Some(pb::TensorShapeProto {
                    dim: shape
                        .iter()
                        .map(|&d| Dimension {
                            value: Some(dimension::Value::DimValue(d as i64)),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Deterministic data with a spread of magnitudes.
pub(super) fn data(n: usize, seed: u32, amp: f32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let t = (i as f32 * 0.7548776 + seed as f32 * 0.5698403).fract();
            amp * (2.0 * t - 1.0) * (1.0 + (i % 5) as f32 * 0.3)
        })
        .collect()
}

/// x [B,K] → MatMul with W [K,M] → y, then `insert_qdq` with the activation scale of x: Q/DQ per tensor on
/// x and per output channel (axis 1) on W. Outputs y and the dequantized x (the DequantizeLinear output
/// that feeds the MatMul). Also returns the weight scales the pass stored.
fn model(x_scale: f32, w: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let fp32 = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }],
        producer_name: "referdino-test".into(),
        graph: Some(pb::GraphProto {
            node: vec![pb::NodeProto {
                input: vec!["x".into(), "w".into()],
                output: vec!["y".into()],
                name: "matmul".into(),
                op_type: "MatMul".into(),
                ..Default::default()
            }],
            name: "qdq".into(),
            initializer: vec![pb::TensorProto {
                name: "w".into(),
                dims: vec![K as i64, M as i64],
                data_type: 1,
                raw_data: w.iter().flat_map(|v| v.to_le_bytes()).collect(),
                ..Default::default()
            }],
            input: vec![value_info("x", &[B, K])],
            output: vec![value_info("y", &[B, M])],
            ..Default::default()
        }),
        ..Default::default()
    };
    let scales: HashMap<String, f32> = [("x".to_string(), x_scale)].into();
    let (mut m, rep) = insert_qdq(
        &fp32,
        &fp32_policy::policy(),
        &scales,
        &Int8Options::default(),
    )
    .unwrap();
    assert_eq!((rep.activation_pairs, rep.weight_pairs), (1, 1));
    let g = m.graph.as_mut().unwrap();
    let mm = g
        .node
        .iter()
        .find(|n| n.op_type == "MatMul")
        .unwrap()
        .clone();
    // The weight's DequantizeLinear reads its scale initializer as input 1.
    let wdq = g
        .node
        .iter()
        .find(|n| n.op_type == "DequantizeLinear" && n.output[0] == mm.input[1])
        .unwrap();
    let wscale = g
        .initializer
        .iter()
        .find(|t| t.name == wdq.input[1])
        .unwrap();
    let ws: Vec<f32> = wscale
        .raw_data
        .chunks(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    g.node.push(pb::NodeProto {
        input: vec![mm.input[0].clone()],
        output: vec!["x_dq".into()],
        name: "identity".into(),
        op_type: "Identity".into(),
        ..Default::default()
    });
    g.output.push(value_info("x_dq", &[B, K]));
    (m.encode_to_vec(), ws)
}

fn matmul(x: &[f32], w: &[f32]) -> Vec<f32> {
    let mut y = vec![0f32; B * M];
    for b in 0..B {
        for m in 0..M {
            y[b * M + m] = (0..K).map(|k| x[b * K + k] * w[k * M + m]).sum();
        }
    }
    y
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Runs the model in ONNX Runtime (and the full ONNX checker) through Python; None when unavailable.
fn onnxruntime(model: &[u8], x: &[f32]) -> Option<(Vec<f32>, Vec<f32>)> {
    let dir = tempfile::tempdir().unwrap();
    let (mp, xp) = (dir.path().join("m.onnx"), dir.path().join("x.bin"));
    std::fs::write(&mp, model).unwrap();
    std::fs::write(
        &xp,
        x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(),
    )
    .unwrap();
    let script = format!(
        "import sys, numpy as np, onnx, onnxruntime as ort\n\
         m = onnx.load(sys.argv[1]); onnx.checker.check_model(m, full_check=True)\n\
         x = np.fromfile(sys.argv[2], dtype=np.float32).reshape({B}, {K})\n\
         s = ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])\n\
         y, xdq = s.run(None, {{'x': x}})\n\
         y.astype(np.float32).tofile(sys.argv[3]); xdq.astype(np.float32).tofile(sys.argv[4])\n"
    );
    let (yp, xdp) = (dir.path().join("y.bin"), dir.path().join("xdq.bin"));
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(&script)
        .args([&mp, &xp, &yp, &xdp])
        .output();
    let required = std::env::var("REFERDINO_REQUIRE_ORACLES").as_deref() == Ok("1");
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr).to_string();
            // The checker rejecting the model is always a failure; a missing module is a skip.
            if required || !err.contains("ModuleNotFoundError") {
                panic!("onnx checker / onnxruntime failed: {err}");
            }
            eprintln!("skipping ONNX Runtime oracle: {err}");
            return None;
        }
        Err(e) => {
            assert!(!required, "python3 not available: {e}");
            eprintln!("skipping ONNX Runtime oracle: {e}");
            return None;
        }
    }
    let read = |p: &std::path::Path| -> Vec<f32> {
        std::fs::read(p)
            .unwrap()
            .chunks(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    Some((read(&yp), read(&xdp)))
}

#[test]
fn qdq_onnx_equals_fake_quant_in_tract_and_onnxruntime() {
    let x = data(B * K, 1, 2.0);
    let w = data(K * M, 2, 0.3);
    // Activation scale from a slightly clipped amax, so saturation is exercised too.
    let x_amax = x.iter().fold(0f32, |m, v| m.max(v.abs())) * 0.8;
    let x_scale = x_amax / 127.0;
    let w_scales = per_channel_scales(&w, &[K, M], 1).unwrap();
    let (onnx, stored) = model(x_scale, &w);
    assert_eq!(
        stored, w_scales,
        "insert_qdq stores per-output-channel max|w|/127"
    );

    // Our maths.
    let mut xq = x.clone();
    fake_quant(&mut xq, x_scale).unwrap();
    let mut wq = w.clone();
    fake_quant_per_channel(&mut wq, &[K, M], 1, &w_scales).unwrap();
    let y_ref = matmul(&xq, &wq);
    let y_fp32 = matmul(&x, &w);

    // tract.
    let outs = run_plain(&onnx, &[Tensor::from_f32(&[B, K], x.clone()).unwrap()]).unwrap();
    let (y_t, xdq_t) = (outs[0].f32s().unwrap(), outs[1].f32s().unwrap());
    assert_eq!(
        xdq_t,
        &xq[..],
        "tract QuantizeLinear/DequantizeLinear vs fake_quant"
    );
    assert!(
        max_diff(y_t, &y_ref) < 1e-5,
        "tract matmul {}",
        max_diff(y_t, &y_ref)
    );

    // The INT8 result stays close to FP32 (relative to the output range).
    let range = y_fp32.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(
        max_diff(&y_ref, &y_fp32) < 0.1 * range,
        "int8 vs fp32 {}",
        max_diff(&y_ref, &y_fp32)
    );

    // ONNX Runtime (+ full ONNX checker).
    if let Some((y_o, xdq_o)) = onnxruntime(&onnx, &x) {
        assert_eq!(
            xdq_o, xq,
            "onnxruntime QuantizeLinear/DequantizeLinear vs fake_quant"
        );
        assert!(
            max_diff(&y_o, &y_ref) < 1e-5,
            "onnxruntime matmul {}",
            max_diff(&y_o, &y_ref)
        );
    }
}

#[test]
fn qdq_rejects_invalid_scales() {
    let w = data(K * M, 2, 0.3);
    for bad in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        let r = std::panic::catch_unwind(|| model(bad, &w));
        assert!(r.is_err(), "scale {bad} accepted");
    }
}
