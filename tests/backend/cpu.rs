//! The tract-based CPU backend on small hand-built ONNX graphs, including our custom ops fed from the
//! official fixtures, and its error paths.

use crate::support::common;

use common::{f32s, i64s};

use prost::Message;
use referdino::backend::cpu::CpuBackend;
use referdino::backend::{Backend, DeviceSpan, Engine, View, ViewMut};
use referdino::tensor::DType;
use referdino::Error;
use safetensors::SafeTensors;
use std::path::PathBuf;
use tract_onnx::pb::{
    attribute_proto::AttributeType, tensor_proto::DataType, tensor_shape_proto::dimension,
    tensor_shape_proto::Dimension, type_proto, AttributeProto, GraphProto, ModelProto, NodeProto,
    OperatorSetIdProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};

// ---------------------------------------------------------------------------------------------
// ONNX building helpers

fn value_info(name: &str, dt: DataType, dims: &[i64]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|&d| Dimension {
            value: Some(if d >= 0 {
                dimension::Value::DimValue(d)
            } else {
                dimension::Value::DimParam("batch".into())
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: dt as i32,
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn node(
    op: &str,
    domain: &str,
    inputs: &[&str],
    outputs: &[&str],
    attrs: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        name: format!("{op}_node"),
        op_type: op.into(),
        domain: domain.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute: attrs,
        ..Default::default()
    }
}

fn int_attr(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i: v,
        ..Default::default()
    }
}

fn f32_init(name: &str, dims: &[i64], v: &[f32]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: DataType::Float as i32,
        raw_data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn i64_init(name: &str, dims: &[i64], v: &[i64]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: DataType::Int64 as i32,
        raw_data: v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn model(
    nodes: Vec<NodeProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    inits: Vec<TensorProto>,
) -> Vec<u8> {
    ModelProto {
        ir_version: 8,
        opset_import: vec![
            OperatorSetIdProto {
                domain: String::new(),
                version: 17,
            },
            OperatorSetIdProto {
                domain: "referdino".into(),
                version: 1,
            },
        ],
        graph: Some(GraphProto {
            name: "test".into(),
            node: nodes,
            input: inputs,
            output: outputs,
            initializer: inits,
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

/// Y = X·W + B with X [2,3], W [3,4], B [4].
const W: [f32; 12] = [1., 2., 3., 4., 5., 6., 7., 8., 9., 10., 11., 12.];
const B: [f32; 4] = [0.5, -0.5, 1.0, -1.0];

fn matmul_add() -> Vec<u8> {
    model(
        vec![
            node("MatMul", "", &["x", "w"], &["xw"], vec![]),
            node("Add", "", &["xw", "b"], &["y"], vec![]),
        ],
        vec![value_info("x", DataType::Float, &[2, 3])],
        vec![value_info("y", DataType::Float, &[2, 4])],
        vec![f32_init("w", &[3, 4], &W), f32_init("b", &[4], &B)],
    )
}

// ---------------------------------------------------------------------------------------------
// fixture helpers

fn fixture(rel: &str) -> Vec<u8> {
    std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(rel),
    )
    .unwrap()
}

fn dims(s: &[usize]) -> Vec<i64> {
    s.iter().map(|&d| d as i64).collect()
}

fn backend_msg(r: Result<impl Sized, Error>) -> String {
    match r {
        Err(Error::Backend(m)) => m,
        Err(e) => panic!("expected a backend error, got {e}"),
        Ok(_) => panic!("expected an error"),
    }
}

// ---------------------------------------------------------------------------------------------
// tests

#[test]
fn matmul_add_runs_and_reports_specs() {
    let mut e = CpuBackend::new().load_bytes("mm", &matmul_add()).unwrap();
    assert_eq!(e.name(), "mm");
    assert_eq!(e.inputs().len(), 1);
    assert_eq!(
        (
            e.inputs()[0].name.as_str(),
            e.inputs()[0].dtype,
            e.inputs()[0].shape.clone()
        ),
        ("x", DType::F32, vec![2, 3])
    );
    assert_eq!(
        (
            e.outputs()[0].name.as_str(),
            e.outputs()[0].dtype,
            e.outputs()[0].shape.clone()
        ),
        ("y", DType::F32, vec![2, 4])
    );
    let x = [1.0f32, 0.0, -1.0, 0.5, 2.0, 0.25];
    let mut y = [0.0f32; 8];
    e.run(&[View::F32(&x)], &mut [ViewMut::F32(&mut y)])
        .unwrap();
    for r in 0..2 {
        for c in 0..4 {
            let want: f32 = (0..3).map(|k| x[r * 3 + k] * W[k * 4 + c]).sum::<f32>() + B[c];
            assert!(
                (y[r * 4 + c] - want).abs() < 1e-5,
                "y[{r},{c}] = {} want {want}",
                y[r * 4 + c]
            );
        }
    }
    // Runs again on the same engine (steady state).
    let mut y2 = [0.0f32; 8];
    e.run(&[View::F32(&x)], &mut [ViewMut::F32(&mut y2)])
        .unwrap();
    assert_eq!(y, y2);
}

#[test]
fn load_from_path() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("frame.onnx");
    std::fs::write(&p, matmul_add()).unwrap();
    let e = CpuBackend::new().load(&p).unwrap();
    assert_eq!(e.name(), "frame");
    assert_eq!(CpuBackend::new().name(), "cpu");
}

#[test]
fn msdeform_node_matches_fixture() {
    let bytes = fixture("msdeform/small.safetensors");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (vs, value) = f32s(&st, "value");
    let (ss, shapes) = i64s(&st, "spatial_shapes");
    let (lss, starts) = i64s(&st, "level_start_index");
    let (ls, locs) = f32s(&st, "sampling_locations");
    let (as_, attn) = f32s(&st, "attention_weights");
    let (os, want) = f32s(&st, "output");
    let onnx = model(
        vec![node(
            "MSDeformAttn",
            "referdino",
            &[
                "value",
                "spatial_shapes",
                "level_start_index",
                "loc",
                "attn",
            ],
            &["out"],
            vec![],
        )],
        vec![
            value_info("value", DataType::Float, &dims(&vs)),
            value_info("loc", DataType::Float, &dims(&ls)),
            value_info("attn", DataType::Float, &dims(&as_)),
        ],
        vec![value_info("out", DataType::Float, &dims(&os))],
        vec![
            i64_init("spatial_shapes", &dims(&ss), &shapes),
            i64_init("level_start_index", &dims(&lss), &starts),
        ],
    );
    let mut e = CpuBackend::new().load_bytes("msda", &onnx).unwrap();
    assert_eq!(e.outputs()[0].shape, os);
    let mut out = vec![f32::NAN; want.len()];
    e.run(
        &[View::F32(&value), View::F32(&locs), View::F32(&attn)],
        &mut [ViewMut::F32(&mut out)],
    )
    .unwrap();
    let err = out
        .iter()
        .zip(&want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(err <= 1e-5, "max abs error {err:e}");
}

#[test]
fn query_prune_node_matches_fixture() {
    let bytes = fixture("referdino-tiny/outputs.safetensors");
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (ls, logits) = f32s(&st, "decoder.layer0.class_logits");
    let (as_, attn) = f32s(&st, "decoder.layer0.self_attn_weights");
    let (gs, want_gate) = f32s(&st, "decoder.layer0.gate");
    let (ks, want_keep) = i64s(&st, "decoder.layer0.keep_idx");
    let onnx = model(
        vec![node(
            "QueryPrune",
            "referdino",
            &["logits", "attn"],
            &["keep_idx", "gate"],
            vec![int_attr("keep", ks[1] as i64)],
        )],
        vec![
            value_info("logits", DataType::Float, &dims(&ls)),
            value_info("attn", DataType::Float, &dims(&as_)),
        ],
        vec![
            value_info("keep_idx", DataType::Int64, &dims(&ks)),
            value_info("gate", DataType::Float, &dims(&gs)),
        ],
        vec![],
    );
    let mut e = CpuBackend::new().load_bytes("prune", &onnx).unwrap();
    assert_eq!(e.outputs()[0].dtype, DType::I64);
    assert_eq!(e.outputs()[0].shape, ks);
    let mut keep = vec![-1i64; want_keep.len()];
    let mut gate = vec![f32::NAN; want_gate.len()];
    e.run(
        &[View::F32(&logits), View::F32(&attn)],
        &mut [ViewMut::I64(&mut keep), ViewMut::F32(&mut gate)],
    )
    .unwrap();
    assert_eq!(keep, want_keep);
    let err = gate
        .iter()
        .zip(&want_gate)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(err <= 1e-6, "gate error {err:e}");
}

#[test]
fn bad_bindings_are_errors() {
    let mut e = CpuBackend::new().load_bytes("mm", &matmul_add()).unwrap();
    let x = [0.0f32; 6];
    let mut y = [0.0f32; 8];
    let m = backend_msg(e.run(&[View::F32(&x[..5])], &mut [ViewMut::F32(&mut y)]));
    assert!(m.contains("mm") && m.contains("input x"), "{m}");
    let xi = [0i64; 6];
    let m = backend_msg(e.run(&[View::I64(&xi)], &mut [ViewMut::F32(&mut y)]));
    assert!(m.contains("input x"), "{m}");
    let m = backend_msg(e.run(&[View::F32(&x)], &mut [ViewMut::F32(&mut y[..7])]));
    assert!(m.contains("output y"), "{m}");
    let m = backend_msg(e.run(&[], &mut [ViewMut::F32(&mut y)]));
    assert!(m.contains("expected 1 inputs"), "{m}");
    // SAFETY: no engine here runs on a GPU: the CPU backend refuses a device view before using it,
    // which is what is tested, so the made-up address is never read or written.
    let span = unsafe { DeviceSpan::new(0x1000, 1024) };
    let m = backend_msg(e.run(&[View::Device(span)], &mut [ViewMut::F32(&mut y)]));
    assert!(m.contains("device memory"), "{m}");
    let m = backend_msg(e.run(&[View::F32(&x)], &mut [ViewMut::Device(span)]));
    assert!(m.contains("device memory"), "{m}");
}

#[test]
fn bad_models_are_errors() {
    let cpu = CpuBackend::new();
    match cpu.load(std::path::Path::new("/nonexistent/dir/model.onnx")) {
        Err(Error::Io { path, .. }) => assert!(path.ends_with("model.onnx")),
        Err(e) => panic!("expected an I/O error, got {e}"),
        Ok(_) => panic!("missing file loaded"),
    }
    let m = backend_msg(cpu.load_bytes("junk", &[0xff; 32]));
    assert!(m.contains("junk") && m.contains("not an ONNX model"), "{m}");
    let m = backend_msg(cpu.load_bytes("empty", &[]));
    assert!(m.contains("no graph"), "{m}");

    let unknown = model(
        vec![node("FrobnicateTensor", "", &["x"], &["y"], vec![])],
        vec![value_info("x", DataType::Float, &[2])],
        vec![value_info("y", DataType::Float, &[2])],
        vec![],
    );
    let m = backend_msg(cpu.load_bytes("unk", &unknown));
    assert!(m.contains("unk") && m.contains("FrobnicateTensor"), "{m}");

    let wrong_domain = model(
        vec![node(
            "QueryPrune",
            "com.example",
            &["a", "b"],
            &["k", "g"],
            vec![int_attr("keep", 1)],
        )],
        vec![
            value_info("a", DataType::Float, &[1, 2, 3]),
            value_info("b", DataType::Float, &[1, 2, 2]),
        ],
        vec![
            value_info("k", DataType::Int64, &[1, 1]),
            value_info("g", DataType::Float, &[1, 2]),
        ],
        vec![],
    );
    let m = backend_msg(cpu.load_bytes("dom", &wrong_domain));
    assert!(m.contains("referdino"), "{m}");

    let no_keep = model(
        vec![node(
            "QueryPrune",
            "referdino",
            &["a", "b"],
            &["k", "g"],
            vec![],
        )],
        vec![
            value_info("a", DataType::Float, &[1, 2, 3]),
            value_info("b", DataType::Float, &[1, 2, 2]),
        ],
        vec![
            value_info("k", DataType::Int64, &[1, 1]),
            value_info("g", DataType::Float, &[1, 2]),
        ],
        vec![],
    );
    let m = backend_msg(cpu.load_bytes("nokeep", &no_keep));
    assert!(m.contains("keep"), "{m}");

    // keep larger than the queries there are: refused when the engine loads, not by allocating
    // `[B, keep]` at every run.
    let big_keep = model(
        vec![node(
            "QueryPrune",
            "referdino",
            &["a", "b"],
            &["k", "g"],
            vec![int_attr("keep", 1 << 40)],
        )],
        vec![
            value_info("a", DataType::Float, &[1, 2, 3]),
            value_info("b", DataType::Float, &[1, 2, 2]),
        ],
        vec![
            value_info("k", DataType::Int64, &[1, 1 << 40]),
            value_info("g", DataType::Float, &[1, 2]),
        ],
        vec![],
    );
    let m = backend_msg(cpu.load_bytes("bigkeep", &big_keep));
    assert!(m.contains("keep") && m.contains("2 queries"), "{m}");

    // tract evaluates constant subgraphs while loading, and its Gather indexes without checks: an
    // out-of-range constant index is a load error, not a panic.
    let gather = model(
        vec![
            node("Gather", "", &["d", "i"], &["g"], vec![int_attr("axis", 0)]),
            node("Add", "", &["x", "g"], &["y"], vec![]),
        ],
        vec![value_info("x", DataType::Float, &[1])],
        vec![value_info("y", DataType::Float, &[1])],
        vec![f32_init("d", &[2], &[1.0, 2.0]), i64_init("i", &[1], &[5])],
    );
    match cpu.load_bytes("gather", &gather) {
        Err(Error::Backend(m)) => assert!(m.contains("gather"), "{m}"),
        Err(e) => panic!("expected a backend error, got {e}"),
        // tract may also refuse it without evaluating it; loading must not panic either way,
        // and running it must not either.
        Ok(mut e) => {
            let x = [0.0f32];
            let mut y = [0.0f32];
            assert!(e
                .run(&[View::F32(&x)], &mut [ViewMut::F32(&mut y)])
                .is_err());
        }
    }

    // An input declared larger than any engine of the model: refused before allocating it.
    let huge = model(
        vec![node("Relu", "", &["x"], &["y"], vec![])],
        vec![value_info("x", DataType::Float, &[1 << 40])],
        vec![value_info("y", DataType::Float, &[1 << 40])],
        vec![],
    );
    let m = backend_msg(cpu.load_bytes("huge", &huge));
    assert!(m.contains("larger than"), "{m}");

    let dynamic = model(
        vec![node("Relu", "", &["x"], &["y"], vec![])],
        vec![value_info("x", DataType::Float, &[-1, 4])],
        vec![value_info("y", DataType::Float, &[-1, 4])],
        vec![],
    );
    let m = backend_msg(cpu.load_bytes("dyn", &dynamic));
    assert!(m.contains("dynamic shape"), "{m}");
}

#[test]
fn kernel_errors_surface_from_run() {
    // A level that does not fit the value rows passes shape inference but fails in the kernel.
    let onnx = model(
        vec![node(
            "MSDeformAttn",
            "referdino",
            &["value", "ss", "lsi", "loc", "attn"],
            &["out"],
            vec![],
        )],
        vec![
            value_info("value", DataType::Float, &[1, 4, 1, 2]),
            value_info("loc", DataType::Float, &[1, 1, 1, 1, 1, 2]),
            value_info("attn", DataType::Float, &[1, 1, 1, 1, 1]),
        ],
        vec![value_info("out", DataType::Float, &[1, 1, 2])],
        vec![
            i64_init("ss", &[1, 2], &[3, 3]),
            i64_init("lsi", &[1], &[0]),
        ],
    );
    let mut e = CpuBackend::new().load_bytes("badlevel", &onnx).unwrap();
    let mut out = [0.0f32; 2];
    let m = backend_msg(e.run(
        &[
            View::F32(&[0.0; 8]),
            View::F32(&[0.5, 0.5]),
            View::F32(&[1.0]),
        ],
        &mut [ViewMut::F32(&mut out)],
    ));
    assert!(m.contains("badlevel") && m.contains("level 0"), "{m}");
}

/// `Softmax` (axis attribute `axis`) of an f32 `[2, 5, 3, 49]` input.
fn softmax_model(axis: i64) -> Vec<u8> {
    model(
        vec![node(
            "Softmax",
            "",
            &["x"],
            &["y"],
            vec![int_attr("axis", axis)],
        )],
        vec![value_info("x", DataType::Float, &[2, 5, 3, 49])],
        vec![value_info("y", DataType::Float, &[2, 5, 3, 49])],
        vec![],
    )
}

#[test]
fn softmax_runs_our_kernel_on_every_axis_and_matches_tract_own() {
    let shape = [2usize, 5, 3, 49];
    let x: Vec<f32> = (0..shape.iter().product::<usize>())
        .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.2)
        .collect();
    for axis in [-1i64, 1, 0, 2] {
        let a = axis.rem_euclid(4) as usize;
        let inner: usize = shape[a + 1..].iter().product();
        let n = shape[a];
        // The definition in f64, one softmax per position of the other axes.
        let mut want = vec![0.0f64; x.len()];
        for (i, w) in want.iter_mut().enumerate() {
            let base = i - (i / inner % n) * inner;
            let max = (0..n)
                .map(|k| x[base + k * inner] as f64)
                .fold(f64::MIN, f64::max);
            let sum: f64 = (0..n)
                .map(|k| (x[base + k * inner] as f64 - max).exp())
                .sum();
            *w = (x[i] as f64 - max).exp() / sum;
        }
        let onnx = softmax_model(axis);
        let mut ours = CpuBackend::new().load_cpu_bytes("sm", &onnx).unwrap();
        let mut theirs = CpuBackend::new()
            .tract_softmax()
            .load_cpu_bytes("sm", &onnx)
            .unwrap();
        let (mut y, mut t) = (vec![0.0f32; x.len()], vec![0.0f32; x.len()]);
        let profile = ours
            .profile(&[View::F32(&x)], &mut [ViewMut::F32(&mut y)], false)
            .unwrap();
        assert!(
            profile.iter().any(|o| o.op == "Softmax (referdino)"),
            "axis {axis}: {profile:?}"
        );
        let profile = theirs
            .profile(&[View::F32(&x)], &mut [ViewMut::F32(&mut t)], false)
            .unwrap();
        assert!(
            profile.iter().all(|o| o.op != "Softmax (referdino)"),
            "axis {axis}: {profile:?}"
        );
        for i in 0..x.len() {
            assert!(
                (y[i] as f64 - want[i]).abs() <= 1e-6 * want[i] + 1e-12,
                "axis {axis}, element {i}: {} against {}",
                y[i],
                want[i]
            );
            assert!(
                (y[i] - t[i]).abs() <= 1e-6 * t[i] + 1e-12,
                "axis {axis}, element {i}: ours {} against tract's {}",
                y[i],
                t[i]
            );
        }
    }
}

/// `LayerNormalization` over the axes from `axis` of an f32 `[2, 6, 40]` input, with a bias or
/// not, and with its `Mean` output asked for or not.
fn layer_norm_model(axis: i64, bias: bool, mean_output: bool) -> Vec<u8> {
    let width: usize = [2usize, 6, 40][axis.rem_euclid(3) as usize..]
        .iter()
        .product();
    let scale: Vec<f32> = (0..width).map(|i| 0.5 + (i % 7) as f32 * 0.25).collect();
    let b: Vec<f32> = (0..width).map(|i| (i % 5) as f32 * 0.1 - 0.2).collect();
    let wdims: Vec<i64> = [2i64, 6, 40][axis.rem_euclid(3) as usize..].to_vec();
    let mut inputs = vec!["x", "scale"];
    let mut inits = vec![f32_init("scale", &wdims, &scale)];
    if bias {
        inputs.push("bias");
        inits.push(f32_init("bias", &wdims, &b));
    }
    let mut outputs = vec!["y"];
    let mut out_infos = vec![value_info("y", DataType::Float, &[2, 6, 40])];
    if mean_output {
        outputs.push("mean");
        let mut mdims = vec![2i64, 6, 40];
        for d in mdims.iter_mut().skip(axis.rem_euclid(3) as usize) {
            *d = 1;
        }
        out_infos.push(value_info("mean", DataType::Float, &mdims));
    }
    let mut attrs = vec![int_attr("axis", axis)];
    attrs.push(AttributeProto {
        name: "epsilon".into(),
        r#type: AttributeType::Float as i32,
        f: 1e-3,
        ..Default::default()
    });
    model(
        vec![node("LayerNormalization", "", &inputs, &outputs, attrs)],
        vec![value_info("x", DataType::Float, &[2, 6, 40])],
        out_infos,
        inits,
    )
}

#[test]
fn layer_norm_runs_our_kernel_and_matches_the_definition_and_tract_own() {
    let x: Vec<f32> = (0..480)
        .map(|i| ((i * 53 % 97) as f32 - 30.0) * 0.3)
        .collect();
    for (axis, bias) in [(-1i64, true), (-1, false), (1, true)] {
        let a = axis.rem_euclid(3) as usize;
        let width: usize = [2usize, 6, 40][a..].iter().product();
        let scale = |i: usize| 0.5 + (i % 7) as f64 * 0.25;
        let b = |i: usize| {
            if bias {
                (i % 5) as f64 * 0.1 - 0.2
            } else {
                0.0
            }
        };
        let mut want = Vec::new();
        for r in x.chunks(width) {
            let mean = r.iter().map(|&v| v as f64).sum::<f64>() / width as f64;
            let var = r.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / width as f64;
            for (j, &v) in r.iter().enumerate() {
                want.push((v as f64 - mean) / (var + 1e-3).sqrt() * scale(j) + b(j));
            }
        }
        let onnx = layer_norm_model(axis, bias, false);
        let mut ours = CpuBackend::new().load_cpu_bytes("ln", &onnx).unwrap();
        let mut theirs = CpuBackend::new()
            .tract_layer_norm()
            .load_cpu_bytes("ln", &onnx)
            .unwrap();
        let (mut y, mut t) = (vec![0.0f32; 480], vec![0.0f32; 480]);
        let p = ours
            .profile(&[View::F32(&x)], &mut [ViewMut::F32(&mut y)], false)
            .unwrap();
        assert!(p.iter().any(|o| o.op == "LayerNorm (referdino)"), "{p:?}");
        let p = theirs
            .profile(&[View::F32(&x)], &mut [ViewMut::F32(&mut t)], false)
            .unwrap();
        assert!(p.iter().all(|o| o.op != "LayerNorm (referdino)"), "{p:?}");
        for i in 0..480 {
            assert!(
                (y[i] as f64 - want[i]).abs() <= 1e-5 * (1.0 + want[i].abs()),
                "axis {axis} bias {bias} element {i}: {} against {}",
                y[i],
                want[i]
            );
            assert!(
                (y[i] - t[i]).abs() <= 1e-5 * (1.0 + t[i].abs()),
                "axis {axis} bias {bias} element {i}: ours {} against tract's {}",
                y[i],
                t[i]
            );
        }
    }
    // A node whose mean output is used goes to tract's own operator, and still runs.
    let mut e = CpuBackend::new()
        .load_cpu_bytes("ln", &layer_norm_model(-1, true, true))
        .unwrap();
    let (mut y, mut mean) = (vec![0.0f32; 480], vec![0.0f32; 12]);
    let p = e
        .profile(
            &[View::F32(&x)],
            &mut [ViewMut::F32(&mut y), ViewMut::F32(&mut mean)],
            false,
        )
        .unwrap();
    assert!(p.iter().all(|o| o.op != "LayerNorm (referdino)"), "{p:?}");
    let first: f32 = x[..40].iter().sum::<f32>() / 40.0;
    assert!(
        (mean[0] - first).abs() < 1e-4,
        "{} against {first}",
        mean[0]
    );
}

/// `x [2, 5, 40] · W [40, 300]` then, by `variant`: "fused" `+ b` and `Relu`; "bias_left" `b + ·`;
/// "weights_input" W as a graph input (not a constant); "bare" the product alone.
fn linear_model(variant: &str, w: &[f32], b: &[f32]) -> Vec<u8> {
    let x = value_info("x", DataType::Float, &[2, 5, 40]);
    let y = value_info("y", DataType::Float, &[2, 5, 300]);
    let wi = || f32_init("w", &[40, 300], w);
    let bi = || f32_init("b", &[300], b);
    match variant {
        "fused" => model(
            vec![
                node("MatMul", "", &["x", "w"], &["p"], vec![]),
                node("Add", "", &["p", "b"], &["q"], vec![]),
                node("Relu", "", &["q"], &["y"], vec![]),
            ],
            vec![x],
            vec![y],
            vec![wi(), bi()],
        ),
        "bias_left" => model(
            vec![
                node("MatMul", "", &["x", "w"], &["p"], vec![]),
                node("Add", "", &["b", "p"], &["y"], vec![]),
            ],
            vec![x],
            vec![y],
            vec![wi(), bi()],
        ),
        "weights_input" => model(
            vec![node("MatMul", "", &["x", "w"], &["y"], vec![])],
            vec![x, value_info("w", DataType::Float, &[40, 300])],
            vec![y],
            vec![],
        ),
        _ => model(
            vec![node("MatMul", "", &["x", "w"], &["y"], vec![])],
            vec![x],
            vec![y],
            vec![wi()],
        ),
    }
}

#[test]
fn matmul_by_weights_runs_our_linear_kernel_with_bias_and_relu_folded_in() {
    let x: Vec<f32> = (0..400)
        .map(|i| ((i * 31 % 89) as f32 - 44.0) * 0.02)
        .collect();
    let w: Vec<f32> = (0..12_000)
        .map(|i| ((i * 17 % 103) as f32 - 51.0) * 0.01)
        .collect();
    let b: Vec<f32> = (0..300).map(|i| (i % 13) as f32 * 0.1 - 0.6).collect();
    let ours_expected = referdino::ops::linear::avx2_fma();
    for (variant, info) in [
        ("fused", "bias: true, relu: true"),
        ("bias_left", "bias: true, relu: false"),
        ("bare", "bias: false, relu: false"),
        ("weights_input", ""),
    ] {
        let (bias, relu) = (
            variant == "fused" || variant == "bias_left",
            variant == "fused",
        );
        // The definition in f64, with an f32 dot product's error bound (k·2⁻²³·Σ|x·w| + bias).
        let mut want = Vec::new();
        for r in x.chunks(40) {
            for j in 0..300 {
                let (mut s, mut mag) = (0.0f64, 0.0f64);
                for (kk, &v) in r.iter().enumerate() {
                    let p = v as f64 * w[kk * 300 + j] as f64;
                    s += p;
                    mag += p.abs();
                }
                if bias {
                    s += b[j] as f64;
                    mag += (b[j] as f64).abs();
                }
                if relu {
                    s = s.max(0.0);
                }
                want.push((s, 42.0 * 2f64.powi(-23) * mag + 1e-30));
            }
        }
        let onnx = linear_model(variant, &w, &b);
        let mut ours = CpuBackend::new().load_cpu_bytes("lin", &onnx).unwrap();
        let mut theirs = CpuBackend::new()
            .tract_matmul()
            .load_cpu_bytes("lin", &onnx)
            .unwrap();
        let (mut y, mut t) = (vec![0.0f32; 3000], vec![0.0f32; 3000]);
        let inputs: Vec<View> = if variant == "weights_input" {
            vec![View::F32(&x), View::F32(&w)]
        } else {
            vec![View::F32(&x)]
        };
        let p = ours
            .profile(&inputs, &mut [ViewMut::F32(&mut y)], true)
            .unwrap();
        let linear: Vec<&str> = p
            .iter()
            .filter(|o| o.op.starts_with("Linear (referdino)"))
            .map(|o| o.op.as_str())
            .collect();
        if ours_expected && variant != "weights_input" {
            // One node, with the bias and ReLU folded in: nothing else runs on the product.
            assert!(
                linear.len() == 1 && linear[0].ends_with(info),
                "{variant}: {p:?}"
            );
            assert!(
                p.iter().all(|o| !o.op.starts_with("OptMatMul")),
                "{variant}: {p:?}"
            );
        } else {
            assert!(linear.is_empty(), "{variant}: {p:?}");
            // Weights that are an input: our batched product of two activations.
            let dynamic = p.iter().any(|o| o.op.starts_with("MatMul (referdino)"));
            assert_eq!(dynamic, ours_expected, "{variant}: {p:?}");
        }
        let p = theirs
            .profile(&inputs, &mut [ViewMut::F32(&mut t)], false)
            .unwrap();
        assert!(
            p.iter().all(|o| !o.op.starts_with("Linear (referdino)")),
            "{p:?}"
        );
        for (i, &(s, tol)) in want.iter().enumerate() {
            assert!(
                (y[i] as f64 - s).abs() <= tol,
                "{variant} element {i}: {} against {s} (±{tol:e})",
                y[i]
            );
            assert!(
                (t[i] as f64 - s).abs() <= tol,
                "{variant} element {i}: tract's {} against {s} (±{tol:e})",
                t[i]
            );
        }
    }
}

fn ints_attr(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    }
}

/// `Conv` of an f32 `[2, 4, 11, 13]` input with a constant `[6, 4 / group, 3, 3]` kernel and bias,
/// stride 2 × 1, padding 1 / 2, dilation 1 × 2.
fn conv_model(group: i64, kernel: &[f32], bias: &[f32]) -> Vec<u8> {
    model(
        vec![node(
            "Conv",
            "",
            &["x", "k", "b"],
            &["y"],
            vec![
                ints_attr("strides", &[2, 1]),
                ints_attr("pads", &[1, 2, 1, 2]),
                ints_attr("dilations", &[1, 2]),
                int_attr("group", group),
            ],
        )],
        vec![value_info("x", DataType::Float, &[2, 4, 11, 13])],
        vec![value_info("y", DataType::Float, &[2, 6, 6, 13])],
        vec![
            f32_init("k", &[6, 4 / group, 3, 3], kernel),
            f32_init("b", &[6], bias),
        ],
    )
}

#[test]
fn conv_runs_our_kernel_and_matches_the_definition_and_tract_own() {
    let x: Vec<f32> = (0..2 * 4 * 11 * 13)
        .map(|i| ((i * 29 % 83) as f32 - 41.0) * 0.03)
        .collect();
    let bias: Vec<f32> = (0..6).map(|i| i as f32 * 0.25 - 0.5).collect();
    let ours_expected = referdino::ops::linear::avx2_fma();
    for group in [1i64, 2] {
        let cg = 4 / group as usize;
        let kernel: Vec<f32> = (0..6 * cg * 9)
            .map(|i| ((i * 13 % 37) as f32 - 18.0) * 0.05)
            .collect();
        // The definition in f64: out (6 × 13 here: (11 + 2 − 3) / 2 + 1, (13 + 4 − 5) / 1 + 1).
        let mut want = Vec::new();
        for b in 0..2 {
            for o in 0..6 {
                let g0 = o / (6 / group as usize) * cg;
                for oy in 0..6usize {
                    for ox in 0..13usize {
                        let (mut s, mut mag) = (bias[o] as f64, (bias[o] as f64).abs());
                        for c in 0..cg {
                            for dy in 0..3 {
                                for dx in 0..3 {
                                    let iy = (oy * 2 + dy) as isize - 1;
                                    let ix = (ox + dx * 2) as isize - 2;
                                    if iy < 0 || ix < 0 || iy >= 11 || ix >= 13 {
                                        continue;
                                    }
                                    let xv = x
                                        [((b * 4 + g0 + c) * 11 + iy as usize) * 13 + ix as usize]
                                        as f64;
                                    let kv = kernel[((o * cg + c) * 3 + dy) * 3 + dx] as f64;
                                    s += xv * kv;
                                    mag += (xv * kv).abs();
                                }
                            }
                        }
                        want.push((s, 40.0 * 2f64.powi(-23) * mag + 1e-30));
                    }
                }
            }
        }
        let onnx = conv_model(group, &kernel, &bias);
        let mut ours = CpuBackend::new().load_cpu_bytes("conv", &onnx).unwrap();
        let mut theirs = CpuBackend::new()
            .tract_matmul()
            .load_cpu_bytes("conv", &onnx)
            .unwrap();
        let (mut y, mut t) = (vec![0.0f32; want.len()], vec![0.0f32; want.len()]);
        let p = ours
            .profile(&[View::F32(&x)], &mut [ViewMut::F32(&mut y)], false)
            .unwrap();
        // Grouped convolutions stay tract's.
        let ran_ours = p.iter().any(|o| o.op == "Conv (referdino)");
        assert_eq!(
            ran_ours,
            ours_expected && group == 1,
            "group {group}: {p:?}"
        );
        let p = theirs
            .profile(&[View::F32(&x)], &mut [ViewMut::F32(&mut t)], false)
            .unwrap();
        assert!(p.iter().all(|o| o.op != "Conv (referdino)"), "{p:?}");
        for (i, &(s, tol)) in want.iter().enumerate() {
            assert!(
                (y[i] as f64 - s).abs() <= tol,
                "group {group} element {i}: {} against {s} (±{tol:e})",
                y[i]
            );
            assert!(
                (t[i] as f64 - s).abs() <= tol,
                "group {group} element {i}: tract's {} against {s} (±{tol:e})",
                t[i]
            );
        }
    }
}

#[test]
fn broadcasting_add_runs_our_kernel_with_the_same_bits_as_tract_own() {
    // Swin's pattern: scores [6, 3, 7, 7] + a bias broadcast over the windows, then + a mask
    // broadcast over the heads; inputs, so that tract cannot fold them.
    let onnx = model(
        vec![
            NodeProto {
                name: "add_bias".into(),
                ..node("Add", "", &["s", "bias"], &["t"], vec![])
            },
            NodeProto {
                name: "add_mask".into(),
                ..node("Add", "", &["mask", "t"], &["y"], vec![])
            },
        ],
        vec![
            value_info("s", DataType::Float, &[6, 3, 7, 7]),
            value_info("bias", DataType::Float, &[1, 3, 7, 7]),
            value_info("mask", DataType::Float, &[6, 1, 7, 7]),
        ],
        vec![value_info("y", DataType::Float, &[6, 3, 7, 7])],
        vec![],
    );
    let s: Vec<f32> = (0..882).map(|i| (i % 97) as f32 * 0.37 - 11.0).collect();
    let bias: Vec<f32> = (0..147).map(|i| (i % 13) as f32 * 0.11 - 0.4).collect();
    let mask: Vec<f32> = (0..294)
        .map(|i| if i % 5 == 0 { -100.0 } else { 0.0 })
        .collect();
    let mut want = vec![0.0f32; 882];
    for (i, w) in want.iter_mut().enumerate() {
        let (win, pos) = (i / 147, i % 49);
        *w = mask[win * 49 + pos] + (s[i] + bias[i % 147]);
    }
    let inputs = [View::F32(&s), View::F32(&bias), View::F32(&mask)];
    for (label, backend) in [
        ("ours", CpuBackend::new()),
        ("tract's", CpuBackend::new().tract_add()),
    ] {
        let mut e = backend.load_cpu_bytes("add", &onnx).unwrap();
        let mut y = vec![0.0f32; 882];
        let p = e
            .profile(&inputs, &mut [ViewMut::F32(&mut y)], false)
            .unwrap();
        let ours = p.iter().find(|o| o.op == "Add (referdino)");
        assert_eq!(
            ours.map(|o| o.count),
            (label == "ours").then_some(2),
            "{label}: {p:?}"
        );
        assert!(
            y.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()),
            "{label}: {:?} against {:?}",
            &y[..8],
            &want[..8]
        );
    }
}

#[test]
fn two_sided_broadcasts_and_where_run_our_kernels_with_the_same_bits_as_tract_own() {
    // The sine embedding's angles (`[1, n, 4, 1, 1] · [1, 1, 1, F, 1]`: neither operand has the
    // output's shape), the fusion's caption mask (`Where([1, 1, 1, L], scores, −∞)`) and the
    // deformable reference points repeated over heads and points (`Expand`).
    let onnx = model(
        vec![
            NodeProto {
                name: "angles".into(),
                ..node("Mul", "", &["pos", "freq"], &["a"], vec![])
            },
            NodeProto {
                name: "masked".into(),
                ..node("Where", "", &["keep", "s", "low"], &["m"], vec![])
            },
            NodeProto {
                name: "expanded".into(),
                ..node("Expand", "", &["refs", "to"], &["r"], vec![])
            },
        ],
        vec![
            value_info("pos", DataType::Float, &[1, 9, 4, 1, 1]),
            value_info("freq", DataType::Float, &[1, 1, 1, 16, 1]),
            value_info("keep", DataType::Bool, &[1, 1, 1, 11]),
            value_info("s", DataType::Float, &[1, 30, 4, 11]),
            value_info("low", DataType::Float, &[1, 1, 1, 1]),
            value_info("refs", DataType::Float, &[1, 9, 1, 4, 1, 2]),
        ],
        vec![
            value_info("a", DataType::Float, &[1, 9, 4, 16, 1]),
            value_info("m", DataType::Float, &[1, 30, 4, 11]),
            value_info("r", DataType::Float, &[1, 9, 8, 4, 4, 2]),
        ],
        vec![i64_init("to", &[6], &[1, 9, 8, 4, 4, 2])],
    );
    let pos: Vec<f32> = (0..36).map(|i| i as f32 * 0.03).collect();
    let freq: Vec<f32> = (0..16).map(|i| 1.0 / (i + 1) as f32).collect();
    let keep: Vec<bool> = (0..11).map(|i| i < 7).collect();
    let s: Vec<f32> = (0..1320).map(|i| (i % 37) as f32 * 0.5 - 9.0).collect();
    let low = [f32::NEG_INFINITY];
    let refs: Vec<f32> = (0..72).map(|i| i as f32 * 0.125 - 1.0).collect();
    // [q, h, l, p, c] ← refs[q, l, c].
    let want_r: Vec<f32> = (0..2304)
        .map(|i| refs[(i / 256) * 8 + (i / 8 % 4) * 2 + i % 2])
        .collect();
    let want_a: Vec<f32> = (0..576).map(|i| pos[i / 16] * freq[i % 16]).collect();
    let want_m: Vec<f32> = (0..1320)
        .map(|i| if keep[i % 11] { s[i] } else { low[0] })
        .collect();
    let inputs = [
        View::F32(&pos),
        View::F32(&freq),
        View::Bool(&keep),
        View::F32(&s),
        View::F32(&low),
        View::F32(&refs),
    ];
    for (label, backend) in [
        ("ours", CpuBackend::new()),
        ("tract's", CpuBackend::new().tract_add()),
    ] {
        let mut e = backend.load_cpu_bytes("bcast", &onnx).unwrap();
        let (mut a, mut m, mut r) = (vec![0.0f32; 576], vec![0.0f32; 1320], vec![0.0f32; 2304]);
        let p = e
            .profile(
                &inputs,
                &mut [
                    ViewMut::F32(&mut a),
                    ViewMut::F32(&mut m),
                    ViewMut::F32(&mut r),
                ],
                false,
            )
            .unwrap();
        for op in [
            "Mul (referdino)",
            "Iff (referdino)",
            "MultiBroadcastTo (referdino)",
        ] {
            let ours = p.iter().find(|o| o.op == op).map(|o| o.count);
            assert_eq!(ours, (label == "ours").then_some(1), "{label} {op}: {p:?}");
        }
        assert!(
            a.iter()
                .zip(&want_a)
                .all(|(x, y)| x.to_bits() == y.to_bits()),
            "{label}: angles {:?} against {:?}",
            &a[..8],
            &want_a[..8]
        );
        assert!(
            m.iter()
                .zip(&want_m)
                .all(|(x, y)| x.to_bits() == y.to_bits()),
            "{label}: masked scores"
        );
        assert_eq!(r, want_r, "{label}: expanded reference points");
    }
}

#[test]
fn matmul_of_two_activations_runs_our_kernel_with_broadcast_batches() {
    let onnx = model(
        vec![node("MatMul", "", &["a", "b"], &["y"], vec![])],
        vec![
            value_info("a", DataType::Float, &[2, 3, 5, 70]),
            value_info("b", DataType::Float, &[3, 70, 20]),
        ],
        vec![value_info("y", DataType::Float, &[2, 3, 5, 20])],
        vec![],
    );
    let a: Vec<f32> = (0..2100)
        .map(|i| ((i * 31 % 89) as f32 - 44.0) * 0.02)
        .collect();
    let b: Vec<f32> = (0..4200)
        .map(|i| ((i * 17 % 103) as f32 - 51.0) * 0.01)
        .collect();
    let mut want = Vec::new();
    for t in 0..6 {
        for i in 0..5 {
            for j in 0..20 {
                let (mut s, mut mag) = (0.0f64, 0.0f64);
                for kk in 0..70 {
                    let p =
                        a[(t * 5 + i) * 70 + kk] as f64 * b[((t % 3) * 70 + kk) * 20 + j] as f64;
                    s += p;
                    mag += p.abs();
                }
                want.push((s, 72.0 * 2f64.powi(-23) * mag + 1e-30));
            }
        }
    }
    let ours_expected = referdino::ops::linear::avx2_fma();
    for (label, backend) in [
        ("ours", CpuBackend::new()),
        ("tract's", CpuBackend::new().tract_matmul()),
    ] {
        let mut e = backend.load_cpu_bytes("mm", &onnx).unwrap();
        let mut y = vec![0.0f32; 600];
        let p = e
            .profile(
                &[View::F32(&a), View::F32(&b)],
                &mut [ViewMut::F32(&mut y)],
                false,
            )
            .unwrap();
        let ran_ours = p.iter().any(|o| o.op == "MatMul (referdino)");
        assert_eq!(ran_ours, ours_expected && label == "ours", "{label}: {p:?}");
        for (i, &(s, tol)) in want.iter().enumerate() {
            assert!(
                (y[i] as f64 - s).abs() <= tol,
                "{label} element {i}: {} against {s} (±{tol:e})",
                y[i]
            );
        }
    }
}

/// `nodes` named n0, n1, … (tract wants distinct node names).
fn named<const N: usize>(nodes: [NodeProto; N]) -> Vec<NodeProto> {
    nodes
        .into_iter()
        .enumerate()
        .map(|(i, n)| NodeProto {
            name: format!("n{i}"),
            ..n
        })
        .collect()
}

/// `y = softmax(((x·W1)·W2)·W3)·W4 + x·W1`, every intermediate `[512, 512]` f32 (1 MiB, the
/// smallest block the buffer pool takes); `x·W1` is read twice, so its last reader is the `Add`.
fn pooled_chain_model() -> Vec<u8> {
    let w = |name: &str, seed: usize| {
        let v: Vec<f32> = (0..512 * 512)
            .map(|i| ((i * 7919 + seed * 104_729) % 1009) as f32 / 1009.0 * 0.1 - 0.05)
            .collect();
        f32_init(name, &[512, 512], &v)
    };
    model(
        named([
            node("MatMul", "", &["x", "w1"], &["h1"], vec![]),
            node("MatMul", "", &["h1", "w2"], &["h2"], vec![]),
            node("MatMul", "", &["h2", "w3"], &["h3"], vec![]),
            node("Softmax", "", &["h3"], &["s"], vec![int_attr("axis", -1)]),
            node("MatMul", "", &["s", "w4"], &["p"], vec![]),
            node("Add", "", &["p", "h1"], &["y"], vec![]),
        ]),
        vec![value_info("x", DataType::Float, &[512, 512])],
        vec![value_info("y", DataType::Float, &[512, 512])],
        vec![w("w1", 1), w("w2", 2), w("w3", 3), w("w4", 4)],
    )
}

#[test]
fn the_buffer_pool_reuses_memory_without_changing_a_bit() {
    let onnx = pooled_chain_model();
    let mut pooled = CpuBackend::new().load_cpu_bytes("chain", &onnx).unwrap();
    let mut fresh = CpuBackend::new()
        .pool_bytes(0)
        .load_cpu_bytes("chain", &onnx)
        .unwrap();
    let mut small = CpuBackend::new()
        .pool_bytes(1 << 20)
        .load_cpu_bytes("chain", &onnx)
        .unwrap();
    assert!(
        pooled.pool_stats().is_none(),
        "no pool before the first run"
    );
    let ours = referdino::ops::linear::avx2_fma();
    let mut per_run = Vec::new();
    for run in 0..4 {
        // Another input every run: a pooled buffer still holding the last run's values must not
        // leak into this one.
        let x: Vec<f32> = (0..512 * 512)
            .map(|i| ((i * 31 + run * 977) % 211) as f32 / 211.0 - 0.5)
            .collect();
        let mut ys = [
            vec![0.0f32; 512 * 512],
            vec![0.0; 512 * 512],
            vec![0.0; 512 * 512],
        ];
        for (e, y) in [&mut pooled, &mut fresh, &mut small]
            .into_iter()
            .zip(&mut ys)
        {
            e.run(&[View::F32(&x)], &mut [ViewMut::F32(y)]).unwrap();
        }
        for (label, y) in [("small pool", &ys[2]), ("pool", &ys[0])] {
            let diff = y
                .iter()
                .zip(&ys[1])
                .position(|(a, b)| a.to_bits() != b.to_bits());
            assert_eq!(diff, None, "run {run}, {label} against no pool");
        }
        // Not all equal: the check above compares something.
        assert!(ys[1].iter().any(|&v| v != ys[1][0]));
        per_run.push(pooled.pool_stats().expect("a pool after a run"));
    }
    assert!(
        fresh.pool_stats().is_none(),
        "pool_bytes(0) runs without one"
    );
    let (small_stats, small_bytes) = small.pool_stats().unwrap();
    assert!(
        small_bytes <= 1 << 20,
        "{small_bytes} bytes over the budget"
    );
    if ours {
        // Steady state from the second run: the same hits and misses every run, nothing growing.
        let d = |i: usize| {
            let (a, b) = (per_run[i - 1].0, per_run[i].0);
            (b.hits - a.hits, b.misses - a.misses, per_run[i].1)
        };
        assert_eq!(d(2), d(3), "{per_run:?}");
        // Per run, x·W2 and the softmax come back (their last readers are ours) and serve two of
        // the four products; x·W1 is last read by tract's Add, so it never does.
        let (hits, _, bytes) = d(3);
        assert!(hits >= 2, "{per_run:?}");
        assert!(bytes <= 4 << 20, "{per_run:?}");
        assert!(small_stats.hits > 0, "{small_stats:?}");
    }
}

/// Three transposes in front of products: `[1, 64, 300] → [1, 300, 64]` read by two linear
/// layers, `[1, 32, 100] → [1, 100, 32]` read by one, and keys `[2, 3, 20, 16] → [2, 3, 16, 20]`
/// as the right operand of a product of two activations.
fn transposes_model() -> Vec<u8> {
    let w = |name: &str, k: usize, n: usize, seed: usize| {
        let v: Vec<f32> = (0..k * n)
            .map(|i| ((i * 613 + seed * 7907) % 197) as f32 / 197.0 - 0.5)
            .collect();
        f32_init(name, &[k as i64, n as i64], &v)
    };
    let perm = |p: &[i64]| ints_attr("perm", p);
    model(
        named([
            node("Transpose", "", &["x"], &["t"], vec![perm(&[0, 2, 1])]),
            node("MatMul", "", &["t", "w1"], &["y1"], vec![]),
            node("MatMul", "", &["t", "w2"], &["y2"], vec![]),
            node("Transpose", "", &["u"], &["tu"], vec![perm(&[0, 2, 1])]),
            node("MatMul", "", &["tu", "w3"], &["y3"], vec![]),
            node("Transpose", "", &["k"], &["kt"], vec![perm(&[0, 1, 3, 2])]),
            node("MatMul", "", &["q", "kt"], &["s"], vec![]),
        ]),
        vec![
            value_info("x", DataType::Float, &[1, 64, 300]),
            value_info("u", DataType::Float, &[1, 32, 100]),
            value_info("q", DataType::Float, &[2, 3, 20, 16]),
            value_info("k", DataType::Float, &[2, 3, 20, 16]),
        ],
        vec![
            value_info("y1", DataType::Float, &[1, 300, 48]),
            value_info("y2", DataType::Float, &[1, 300, 40]),
            value_info("y3", DataType::Float, &[1, 100, 24]),
            value_info("s", DataType::Float, &[2, 3, 20, 20]),
        ],
        vec![w("w1", 64, 48, 1), w("w2", 64, 40, 2), w("w3", 32, 24, 3)],
    )
}

#[test]
fn transposes_are_folded_into_products_or_tiled_with_the_bits_of_tract_copies() {
    let onnx = transposes_model();
    let values = |n: usize, seed: usize| -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 31 + seed * 101) % 89) as f32 / 89.0 - 0.5)
            .collect()
    };
    let (x, u, q, k) = (
        values(64 * 300, 1),
        values(32 * 100, 2),
        values(2 * 3 * 20 * 16, 3),
        values(2 * 3 * 20 * 16, 4),
    );
    let inputs = [View::F32(&x), View::F32(&u), View::F32(&q), View::F32(&k)];
    let sizes = [300 * 48, 300 * 40, 100 * 24, 2 * 3 * 20 * 20];
    let mut results = Vec::new();
    for (label, backend) in [
        ("ours", CpuBackend::new()),
        ("tract's MoveAxis", CpuBackend::new().tract_transpose()),
    ] {
        let mut e = backend.load_cpu_bytes("transposes", &onnx).unwrap();
        let mut ys: Vec<Vec<f32>> = sizes.iter().map(|&n| vec![f32::NAN; n]).collect();
        let mut outs: Vec<ViewMut> = ys.iter_mut().map(|y| ViewMut::F32(y)).collect();
        let p = e.profile(&inputs, &mut outs, true).unwrap();
        let names: Vec<&str> = p.iter().map(|o| o.op.as_str()).collect();
        let has = |s: &str| names.iter().any(|n| n.contains(s));
        if label == "ours" && referdino::ops::linear::avx2_fma() {
            // Read by two layers: one tiled transpose; by one: folded into it (gathered); the
            // keys: packed from the untransposed tensor.
            assert!(has("MoveAxis (referdino)"), "{names:?}");
            assert!(has("input moved"), "{names:?}");
            assert!(has("b moved"), "{names:?}");
            assert!(
                !names.iter().any(|n| n.starts_with("MoveAxis [")),
                "{names:?}"
            );
        }
        if label != "ours" {
            assert!(!has("MoveAxis (referdino)") && !has("moved"), "{names:?}");
        }
        results.push(ys);
    }
    for (i, (a, b)) in results[0].iter().zip(&results[1]).enumerate() {
        let diff = a
            .iter()
            .zip(b)
            .position(|(p, q)| p.to_bits() != q.to_bits());
        assert_eq!(diff, None, "output {i}");
        assert!(a.iter().all(|v| v.is_finite()), "output {i}");
    }
    // And against the definition: y3 = uᵀ · w3 (f64, a length-32 dot product's error bound).
    let w3: Vec<f32> = (0..32 * 24)
        .map(|i| ((i * 613 + 3 * 7907) % 197) as f32 / 197.0 - 0.5)
        .collect();
    for i in 0..100 {
        for j in 0..24 {
            let (mut s, mut mag) = (0.0f64, 0.0f64);
            for kk in 0..32 {
                let p = u[kk * 100 + i] as f64 * w3[kk * 24 + j] as f64;
                s += p;
                mag += p.abs();
            }
            let got = results[0][2][i * 24 + j] as f64;
            assert!(
                (got - s).abs() <= 34.0 * 2f64.powi(-23) * mag + 1e-30,
                "y3 ({i}, {j})"
            );
        }
    }
}
