//! `referdino calibrate` and `referdino build --weights` on the bundled tiny checkpoint, run as a user
//! would: a freshly calibrated table holds exactly the activations the INT8 pass quantizes, the FP16 and
//! INT8 engines written by `build` pass the ONNX checker and run in ONNX Runtime (decomposed export) and on
//! our CPU backend (native export, tract executes the Q/DQ pairs) close to FP32, and bad tables are refused
//! with errors that name `referdino calibrate`.

use crate::support::common;
use crate::support::int8_oracle;

use int8_oracle::*;
use prost::Message;
use referdino::backend::cpu::CpuBackend;
use referdino::backend::{View, ViewMut};
use referdino::config::ModelConfig;
use referdino::graph::engines::{ExportOptions, Geometry};
use referdino::quant::engines::{all_calibration_tensors, fp32_models};
use referdino::quant::ScaleTable;
use referdino::tensor::{DType, Data, Tensor};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use tract_onnx::pb;

const ENGINES: [&str; 4] = ["text", "frame", "temporal", "head"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn weights() -> PathBuf {
    common::fixture("referdino-tiny/weights.safetensors")
}

fn config() -> PathBuf {
    common::fixture("referdino-tiny/config.json")
}

/// The geometry of engines/test-profiles/referdino-tiny-*.toml.
const GEO: Geometry = Geometry {
    height: 70,
    width: 118,
    max_text: 12,
    window: 3,
};

fn referdino(args: &[&str]) -> (bool, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_referdino"))
        .current_dir(root())
        .args(args)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The shipped tiny test profile for `precision`, with its scale table replaced by `scales`.
fn profile(dir: &Path, precision: &str, scales: Option<&Path>) -> PathBuf {
    let text = std::fs::read_to_string(root().join(format!(
        "engines/test-profiles/referdino-tiny-{precision}.toml"
    )))
    .unwrap();
    let mut out: String = text
        .lines()
        .filter(|l| !l.starts_with("scales"))
        .map(|l| format!("{l}\n"))
        .collect();
    if let Some(t) = scales {
        out.push_str(&format!("scales = {:?}\n", s(t)));
    }
    let p = dir.join(format!("tiny-{precision}.toml"));
    std::fs::write(&p, out).unwrap();
    p
}

/// Calibrates the tiny recipe (all 3 fixture frames × 2 prompts) with `method` into `table`.
fn calibrate(table: &Path, method: &str, decompose: bool) {
    let (w, c) = (weights(), config());
    let recipe = table.with_extension("toml");
    let text = std::fs::read_to_string(root().join("calib/referdino-tiny.toml"))
        .unwrap()
        .replace("method = \"entropy\"", &format!("method = \"{method}\""));
    std::fs::write(&recipe, text).unwrap();
    let mut args = vec![
        "calibrate",
        "--weights",
        s(&w),
        "--config",
        s(&c),
        "--recipe",
        s(&recipe),
        "--profile",
        "engines/test-profiles/referdino-tiny-int8.toml",
        "--out",
        s(table),
    ];
    if decompose {
        args.push("--decompose-custom-ops");
    }
    let (ok, out, err) = referdino(&args);
    assert!(ok, "calibrate failed:\n{out}\n{err}");
    assert!(out.contains("SQNR dB"), "{out}");
}

fn build(profile: &Path, out: &Path, decompose: bool) -> (bool, String, String) {
    let (w, c) = (weights(), config());
    let mut args = vec![
        "build",
        "--weights",
        s(&w),
        "--config",
        s(&c),
        "--profile",
        s(profile),
        "--out",
        s(out),
    ];
    if decompose {
        args.push("--decompose-custom-ops");
    }
    let r = referdino(&args);
    if !r.0 {
        return r;
    }
    #[cfg(not(feature = "tensorrt"))]
    assert!(
        r.1.contains("without the `tensorrt` feature") && r.1.contains("trtexec --onnx="),
        "a build without TensorRT says so and prints the trtexec lines:\n{}",
        r.1
    );
    r
}

fn fp32(decompose: bool) -> Vec<pb::ModelProto> {
    let cfg = ModelConfig::from_file(&config()).unwrap();
    fp32_models(
        &common::tiny_weights(),
        &cfg,
        &GEO,
        &ExportOptions {
            taps: false,
            decompose_custom_ops: decompose,
        },
    )
    .unwrap()
}

fn load(dir: &Path, engine: &str) -> pb::ModelProto {
    let b = std::fs::read(dir.join(format!("{engine}.onnx"))).unwrap();
    pb::ModelProto::decode(b.as_slice()).unwrap()
}

/// Outputs of `m` on the CPU backend (the runtime's own engine loader).
fn cpu_run(m: &pb::ModelProto, inputs: &[(String, Tensor)]) -> Vec<Tensor> {
    let e = CpuBackend::new()
        .load_bytes("t", &m.encode_to_vec())
        .expect("the CPU backend loads the engine");
    run_engine(e, inputs)
}

/// Runs a loaded engine once on `inputs` (graph input order); its outputs.
fn run_engine(
    mut e: Box<dyn referdino::backend::Engine>,
    inputs: &[(String, Tensor)],
) -> Vec<Tensor> {
    let ins: Vec<View<'_>> = inputs
        .iter()
        .map(|(_, t)| match t.data() {
            Data::F32(v) => View::F32(v),
            Data::I64(v) => View::I64(v),
            Data::Bool(v) => View::Bool(v),
            _ => panic!("input type"),
        })
        .collect();
    let mut outs: Vec<Tensor> = e
        .outputs()
        .iter()
        .map(|s| Tensor::zeros(&s.shape, s.dtype))
        .collect();
    {
        let mut ov: Vec<ViewMut<'_>> = outs
            .iter_mut()
            .map(|t| match t.data_mut() {
                Data::F32(v) => ViewMut::F32(v),
                Data::I64(v) => ViewMut::I64(v),
                Data::Bool(v) => ViewMut::Bool(v),
                _ => panic!("output type"),
            })
            .collect();
        e.run(&ins, &mut ov).unwrap();
    }
    outs
}

/// Real inputs for each FP32 engine, in graph input order: the fixture caption and first frame through
/// the FP32 engines on the CPU backend (each engine fed what the one before produced), so reduced
/// precision is compared on the activations it was calibrated for.
fn real_inputs(m32: &[pb::ModelProto]) -> Vec<Vec<(String, Tensor)>> {
    use std::collections::HashMap;
    let tok = referdino::text::Tokenizer::bundled().unwrap();
    let cap = tok
        .encode_prompt("the red ball rolling to the left", 256)
        .unwrap();
    let (lm, l) = (GEO.max_text, cap.len);
    let mut v: HashMap<String, Tensor> = HashMap::new();
    let pad = |x: &[i64]| {
        let mut o = vec![0i64; lm];
        o[..l].copy_from_slice(x);
        Tensor::from_i64(&[1, lm], o).unwrap()
    };
    v.insert("input_ids".into(), pad(&cap.input_ids));
    v.insert("token_type_ids".into(), pad(&cap.token_type_ids));
    v.insert("position_ids".into(), pad(&cap.position_ids));
    let mut sam = vec![false; lm * lm];
    for i in 0..lm {
        for j in 0..lm {
            sam[i * lm + j] = if i < l && j < l {
                cap.self_attention_mask[i * l + j]
            } else {
                i == j
            };
        }
    }
    v.insert(
        "text_self_attention_mask".into(),
        Tensor::new(vec![1, lm, lm], Data::Bool(sam)).unwrap(),
    );
    v.insert(
        "text_token_mask".into(),
        Tensor::new(vec![1, lm], Data::Bool((0..lm).map(|i| i < l).collect())).unwrap(),
    );
    let frames =
        referdino::cli::parity::normalize_frames(&common::tiny_inputs()["frames_uint8"]).unwrap();
    v.insert(
        "image".into(),
        Tensor::from_f32(&[1, 3, GEO.height, GEO.width], frames[0].clone()).unwrap(),
    );
    let gather = |m: &pb::ModelProto, v: &HashMap<String, Tensor>| -> Vec<(String, Tensor)> {
        m.graph
            .as_ref()
            .unwrap()
            .input
            .iter()
            .map(|i| (i.name.clone(), v[&i.name].clone()))
            .collect()
    };
    let mut all = Vec::new();
    for (k, m) in m32.iter().enumerate() {
        if k == 2 {
            // Temporal window: frame 0's objects in every slot, frame 0's sentence, all frames valid.
            let o = &v["objects"];
            let (ns, d) = (o.shape()[1], o.shape()[2]);
            let w = GEO.window;
            let objs: Vec<f32> = o.f32s().unwrap().repeat(w);
            let sent: Vec<f32> = v["memory_text"].f32s().unwrap()[..d].repeat(w);
            v.insert(
                "objects".into(),
                Tensor::from_f32(&[w, ns, d], objs).unwrap(),
            );
            v.insert("sentence".into(), Tensor::from_f32(&[w, d], sent).unwrap());
            v.insert(
                "frame_mask".into(),
                Tensor::new(vec![w], Data::Bool(vec![true; w])).unwrap(),
            );
        }
        if k == 3 {
            let o = &v["objects_t"];
            let per = o.numel() / GEO.window;
            let first = o.f32s().unwrap()[..per].to_vec();
            let mut shape = o.shape().to_vec();
            shape[0] = 1;
            v.insert("objects_t".into(), Tensor::from_f32(&shape, first).unwrap());
        }
        let ins = gather(m, &v);
        let outs = cpu_run(m, &ins);
        for (n, t) in output_names(m).into_iter().zip(outs) {
            v.insert(n, t);
        }
        all.push(ins);
    }
    all
}

/// Compares the outputs of one engine that do not depend on which queries the selection picked (see
/// `selection_dependent`) with the FP32 run.
fn compare_engine(
    engine: &str,
    names: &[String],
    got: &[Tensor],
    want: &[Tensor],
    tol: (f32, f32),
) -> Vec<String> {
    let mut fails = Vec::new();
    for ((n, g), w) in names.iter().zip(got).zip(want) {
        if selection_dependent(n) || w.dtype() != DType::F32 {
            continue;
        }
        fails.extend(
            compare(
                std::slice::from_ref(n),
                std::slice::from_ref(g),
                std::slice::from_ref(w),
                tol.0,
                tol.1,
                &[],
            )
            .into_iter()
            .map(|e| format!("{engine}: {e}")),
        );
    }
    fails
}

/// A freshly calibrated table (decomposed export) covers exactly the quantized activations; `build`
/// writes FP16 and INT8 engines from it that pass the checker and run in ORT close to FP32.
#[test]
fn build_fp16_and_int8_from_a_fresh_table_run_in_ort() {
    let dir = tempfile::tempdir().unwrap();
    let table_path = dir.path().join("tiny.decomposed.scales.json");
    calibrate(&table_path, "max", true);
    let table = ScaleTable::load(&table_path).unwrap();
    assert_eq!(table.custom_ops.as_deref(), Some("decomposed"));
    assert_eq!(table.geometry, Some(GEO));
    let m32 = fp32(true);
    let want_names: BTreeSet<String> = all_calibration_tensors(&m32)
        .unwrap()
        .into_iter()
        .flatten()
        .collect();
    let got_names: BTreeSet<String> = table.tensors.keys().cloned().collect();
    assert_eq!(
        got_names, want_names,
        "the table's names are exactly the activations insert_qdq consumes"
    );

    let real = real_inputs(&m32);
    let mut fails = Vec::new();
    for (precision, tol) in [("fp16", FP16_TOL), ("int8", INT8_TOL)] {
        let prof = profile(
            dir.path(),
            precision,
            (precision == "int8").then_some(table_path.as_path()),
        );
        let out = dir.path().join(precision);
        let (ok, stdout, err) = build(&prof, &out, true);
        assert!(ok, "build {precision} failed:\n{stdout}\n{err}");
        let manifest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap())
                .unwrap();
        assert_eq!(manifest["precision"], precision);
        assert_eq!(manifest["custom_ops"], "decomposed");
        for ((engine, m), inputs) in ENGINES.iter().zip(&m32).zip(&real) {
            let built = load(&out, engine);
            let ops: BTreeSet<&str> = built
                .graph
                .as_ref()
                .unwrap()
                .node
                .iter()
                .map(|n| n.op_type.as_str())
                .collect();
            assert!(ops.contains("Cast"), "{precision} {engine}: no casts");
            assert_eq!(
                ops.contains("QuantizeLinear"),
                precision == "int8",
                "{engine}: Q/DQ only in int8"
            );
            if !check(dir.path(), &built, &format!("{precision}-{engine}.onnx")) {
                return; // oracles unavailable and optional
            }
            let want = tract(m, inputs);
            let got = ort(
                dir.path(),
                &built,
                &format!("{precision}-{engine}.onnx"),
                inputs,
            )
            .unwrap();
            eprintln!("ORT {precision} {engine} vs tract fp32:");
            fails.extend(compare_engine(engine, &output_names(m), &got, &want, tol));
            // The same file on our CPU backend (tract runs the casts and the Q/DQ pairs): as close to
            // ORT as the tolerance against FP32 asks. The runtimes differ in fp16 accumulation and so in
            // which values land across an int8 rounding boundary, so this is not a bit-level check.
            let ours = cpu_run(&built, inputs);
            eprintln!("CPU backend {precision} {engine} vs ORT {precision}:");
            fails.extend(
                compare_engine(engine, &output_names(m), &ours, &got, tol)
                    .into_iter()
                    .map(|e| format!("{precision} CPU backend vs ORT: {e}")),
            );
        }
    }
    assert!(fails.is_empty(), "{fails:?}");
}

/// The committed example table (calib/referdino-tiny.scales.json, native export) still covers the
/// graph; `build` writes native INT8 engines from it that our CPU backend runs close to FP32.
#[test]
fn build_int8_native_from_the_committed_table_runs_on_the_cpu_backend() {
    let dir = tempfile::tempdir().unwrap();
    let table = root().join("calib/referdino-tiny.scales.json");
    let prof = profile(dir.path(), "int8", Some(&table));
    let out = dir.path().join("int8");
    let (ok, stdout, err) = build(&prof, &out, false);
    assert!(
        ok,
        "build failed (if the graph changed, re-run the calibrate command in calib/README.md):\n{stdout}\n{err}"
    );
    let m32 = fp32(false);
    let real = real_inputs(&m32);
    let mut fails = Vec::new();
    // The frame and head engines hold MSDeformAttn, whose CPU kernel is f32-only, and INT8 engines run
    // the unquantized ops in FP16: those two run in ORT (decomposed) in the test above.
    for ((engine, m), inputs) in ENGINES.iter().zip(&m32).zip(&real) {
        if *engine == "frame" || *engine == "head" {
            continue;
        }
        let want = cpu_run(m, inputs);
        let got = cpu_run(&load(&out, engine), inputs);
        eprintln!("CPU backend int8 {engine} vs fp32:");
        fails.extend(compare_engine(
            engine,
            &output_names(m),
            &got,
            &want,
            INT8_TOL,
        ));
    }
    assert!(fails.is_empty(), "{fails:?}");
}

/// Tables that do not fit are refused before anything is written, naming `referdino calibrate`.
#[test]
fn build_refuses_tables_that_do_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let committed = ScaleTable::load(&root().join("calib/referdino-tiny.scales.json")).unwrap();
    // Native table, decomposed build.
    let prof = profile(
        dir.path(),
        "int8",
        Some(&root().join("calib/referdino-tiny.scales.json")),
    );
    let (ok, _, err) = build(&prof, &dir.path().join("a"), true);
    assert!(
        !ok && err.contains("native export") && err.contains("referdino calibrate"),
        "{err}"
    );
    // A table missing one activation names it.
    let mut t = committed.clone();
    let gone = t.tensors.keys().next().unwrap().clone();
    t.tensors.remove(&gone);
    let p = dir.path().join("partial.json");
    t.save(&p).unwrap();
    let (ok, _, err) = build(
        &profile(dir.path(), "int8", Some(&p)),
        &dir.path().join("b"),
        false,
    );
    assert!(
        !ok && err.contains(&gone) && err.contains("referdino calibrate"),
        "{err}"
    );
    // A table calibrated at another geometry.
    let mut t = committed;
    t.geometry = Some(Geometry { height: 72, ..GEO });
    t.save(&p).unwrap();
    let (ok, _, err) = build(
        &profile(dir.path(), "int8", Some(&p)),
        &dir.path().join("c"),
        false,
    );
    assert!(
        !ok && err.contains("72x118") && err.contains("referdino calibrate"),
        "{err}"
    );
    // An int8 profile whose table does not exist.
    let (ok, _, err) = build(
        &profile(dir.path(), "int8", Some(&dir.path().join("none.json"))),
        &dir.path().join("d"),
        false,
    );
    assert!(
        !ok && err.contains("none.json") && err.contains("referdino calibrate"),
        "{err}"
    );
}

/// Named engine inputs.
type Named = Vec<(String, Tensor)>;

/// Two objects' temporal inputs (the real ones, and a scaled copy of their f32 tensors) and the two
/// stacked on a leading object axis, as the batched temporal object engine takes them.
fn two_objects(t_in: &[(String, Tensor)]) -> ([Named; 2], Named) {
    let scaled: Named = t_in
        .iter()
        .map(|(k, t)| match t.data() {
            Data::F32(v) => (
                k.clone(),
                Tensor::from_f32(t.shape(), v.iter().map(|x| 0.9 * x + 0.01).collect()).unwrap(),
            ),
            _ => (k.clone(), t.clone()),
        })
        .collect();
    let rows = [t_in.to_vec(), scaled];
    let stacked = (0..t_in.len())
        .map(|i| {
            let mut shape = vec![2];
            shape.extend_from_slice(rows[0][i].1.shape());
            let mut bytes = rows[0][i].1.to_le_bytes();
            bytes.extend(rows[1][i].1.to_le_bytes());
            (
                rows[0][i].0.clone(),
                Tensor::from_le_bytes(&shape, rows[0][i].1.dtype(), &bytes).unwrap(),
            )
        })
        .collect();
    (rows, stacked)
}

/// Row `r` of a batched f32 output, shaped like the single-object output `like`.
fn output_row(batched: &Tensor, like: &Tensor, r: usize) -> Tensor {
    let per = like.numel();
    let bytes = batched.to_le_bytes();
    Tensor::from_le_bytes(
        like.shape(),
        DType::F32,
        &bytes[r * per * 4..(r + 1) * per * 4],
    )
    .unwrap()
}

/// `build` with a profile's `objects` range (FP16, decomposed): the object set is exported next to the
/// four engines, passes the ONNX checker, carries the symbolic object axis, and `trtexec.sh` builds it
/// with the matching optimization profile. The FP16 temporal object engine runs in ONNX Runtime at 2
/// objects, each row within the FP16 tolerance of the FP32 single-object engine on that row's input.
#[test]
fn build_with_objects_exports_the_object_set() {
    let dir = tempfile::tempdir().unwrap();
    let prof = profile(dir.path(), "fp16", None);
    let mut text = std::fs::read_to_string(&prof).unwrap();
    text.push_str("objects = { min = 1, opt = 2, max = 4 }\n");
    std::fs::write(&prof, text).unwrap();
    let out = dir.path().join("fp16-objects");
    let (ok, stdout, err) = build(&prof, &out, true);
    assert!(ok, "build failed:\n{stdout}\n{err}");
    assert!(stdout.contains("exported the object engines"), "{stdout}");
    let objects = out.join("objects");
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(objects.join("objects.json")).unwrap())
            .unwrap();
    assert_eq!(m["axis"], "objects");
    assert_eq!(
        m["batched"],
        serde_json::json!(["cross.onnx", "temporal.onnx", "head.onnx"])
    );
    let script = std::fs::read_to_string(out.join("trtexec.sh")).unwrap();
    let cross_line = script
        .lines()
        .find(|l| l.contains("objects/cross.onnx"))
        .unwrap_or_else(|| panic!("no cross line in\n{script}"));
    let lm = GEO.max_text;
    for (flag, b) in [("min", 1), ("opt", 2), ("max", 4)] {
        assert!(
            cross_line.contains(&format!("--{flag}Shapes="))
                && cross_line.contains(&format!("text_token_mask:{b}x{lm}")),
            "{flag}: {cross_line}"
        );
    }
    let image_line = script
        .lines()
        .find(|l| l.contains("objects/image.onnx"))
        .unwrap();
    assert!(!image_line.contains("Shapes"), "{image_line}");
    for e in ["image", "cross", "temporal", "head"] {
        let built = load(&objects, e);
        if !check(dir.path(), &built, &format!("objects-{e}.onnx")) {
            return; // oracles unavailable and optional
        }
    }
    // The FP16 temporal object engine at 2 objects in ONNX Runtime, row by row against FP32.
    let m32 = fp32(true);
    let real = real_inputs(&m32);
    let t_in = &real[2];
    let (rows, stacked) = two_objects(t_in);
    let built = load(&objects, "temporal");
    let got = ort(dir.path(), &built, "objects-temporal.onnx", &stacked).unwrap();
    let mut fails = Vec::new();
    for (r, inputs) in rows.iter().enumerate() {
        let want = tract(&m32[2], inputs);
        let row = output_row(&got[0], &want[0], r);
        eprintln!("ORT fp16 temporal object engine, row {r} vs tract fp32 single object:");
        fails.extend(compare_engine(
            "temporal",
            &output_names(&m32[2]),
            &[row],
            &want,
            FP16_TOL,
        ));
    }
    assert!(fails.is_empty(), "{fails:?}");
}

/// The activation Q/DQ sites of a model: (consumer node name, input index) → the per-tensor scale of
/// the DequantizeLinear that feeds it (activations only: the DQ reads a QuantizeLinear's output).
fn activation_sites(m: &pb::ModelProto) -> std::collections::BTreeMap<(String, usize), u32> {
    let g = m.graph.as_ref().unwrap();
    let f32_of = |name: &str| -> Option<f32> {
        let t = g.initializer.iter().find(|t| t.name == name).or_else(|| {
            g.node
                .iter()
                .find(|n| n.op_type == "Constant" && n.output[0] == name)
                .and_then(|n| n.attribute.iter().find_map(|a| a.t.as_ref()))
        })?;
        if let Some(v) = t.float_data.first() {
            return Some(*v);
        }
        t.raw_data
            .get(..4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let quantized: BTreeSet<&str> = g
        .node
        .iter()
        .filter(|n| n.op_type == "QuantizeLinear")
        .map(|n| n.output[0].as_str())
        .collect();
    let dq: std::collections::HashMap<&str, u32> = g
        .node
        .iter()
        .filter(|n| n.op_type == "DequantizeLinear" && quantized.contains(n.input[0].as_str()))
        .map(|n| {
            let s = f32_of(&n.input[1]).expect("a per-tensor activation scale");
            (n.output[0].as_str(), s.to_bits())
        })
        .collect();
    let mut out = std::collections::BTreeMap::new();
    for n in &g.node {
        for (i, t) in n.input.iter().enumerate() {
            if let Some(&s) = dq.get(t.as_str()) {
                out.insert((n.name.clone(), i), s);
            }
        }
    }
    out
}

/// An INT8 profile with an `objects` range builds the object engine set from the whole-frame scale
/// table: every activation the INT8 pass quantizes in `image`, `cross`, the batched `temporal` and
/// `head` gets the scale the same node's same input has in the whole-frame engines (node names are
/// shared; the split's and the batched layout's own tensor names are carried over by node); and the
/// INT8 temporal object engine at 2 objects computes, row by row, what the INT8 whole-frame temporal
/// engine computes for one (ONNX Runtime; identical on this machine).
#[test]
fn int8_object_engines_take_the_whole_frame_scales_node_by_node() {
    let dir = tempfile::tempdir().unwrap();
    let table = root().join("calib/referdino-tiny.scales.json");
    let prof = profile(dir.path(), "int8", Some(&table));
    let mut text = std::fs::read_to_string(&prof).unwrap();
    text.push_str("objects = { min = 1, opt = 2, max = 4 }\n");
    std::fs::write(&prof, text).unwrap();
    let out = dir.path().join("int8");
    let (ok, stdout, err) = build(&prof, &out, false);
    assert!(ok, "build failed:\n{stdout}\n{err}");
    let mut renamed = 0;
    // Each object engine against the whole-frame engine it was cut from.
    for (e, from) in [
        ("image", "frame"),
        ("cross", "frame"),
        ("temporal", "temporal"),
        ("head", "head"),
    ] {
        let whole = activation_sites(&load(&out, from));
        let m = load(&out.join("objects"), e);
        let sites = activation_sites(&m);
        assert!(!sites.is_empty(), "{e}: no activation Q/DQ");
        for (site, scale) in &sites {
            let want = whole
                .get(site)
                .unwrap_or_else(|| panic!("{e}: site {site:?} has no counterpart"));
            assert_eq!(
                f32::from_bits(*scale),
                f32::from_bits(*want),
                "{e}: {site:?}"
            );
        }
        // Every quantizable site of the object engine is quantized: as many as its nodes have in the
        // whole-frame engines.
        let names: BTreeSet<&str> = sites.keys().map(|(n, _)| n.as_str()).collect();
        let there = whole
            .keys()
            .filter(|(n, _)| names.contains(n.as_str()))
            .count();
        assert_eq!(sites.len(), there, "{e}");
        let g = m.graph.as_ref().unwrap();
        renamed += g
            .node
            .iter()
            .filter(|n| n.op_type == "QuantizeLinear")
            .filter(|n| {
                !ENGINES.iter().any(|w| {
                    load(&out, w)
                        .graph
                        .unwrap()
                        .node
                        .iter()
                        .any(|x| x.op_type == "QuantizeLinear" && x.input[0] == n.input[0])
                })
            })
            .count();
        eprintln!(
            "{e}: {} activation sites, scales as in the whole-frame engines",
            sites.len()
        );
    }
    // The carried-over names (cross's `stride4`, the batched temporal's reshapes) were quantized too.
    assert!(renamed > 0, "no renamed activation was quantized");
    // And numerically: the INT8 temporal object engine at 2 objects in ONNX Runtime, each row against
    // the INT8 whole-frame temporal engine on that row's input (same scales at the same sites).
    let whole = load(&out, "temporal");
    let objects = load(&out.join("objects"), "temporal");
    let t_in = &real_inputs(&fp32(false))[2];
    let (rows, stacked) = two_objects(t_in);
    let Some(got) = ort(dir.path(), &objects, "int8-objects-temporal.onnx", &stacked) else {
        return; // oracles unavailable and optional
    };
    let mut fails = Vec::new();
    for (r, inputs) in rows.iter().enumerate() {
        let want = ort(dir.path(), &whole, "int8-temporal.onnx", inputs).unwrap();
        let row = output_row(&got[0], &want[0], r);
        eprintln!("ORT int8 temporal object engine, row {r} vs int8 single object:");
        fails.extend(compare_engine(
            "temporal",
            &output_names(&whole),
            &[row],
            &want,
            FP16_TOL,
        ));
    }
    assert!(fails.is_empty(), "{fails:?}");
}

// ---- INT8 on the CPU: the host form (export --precision int8, run/eval --int8) ----------------------

/// Outputs of `m` on our ONNX Runtime backend (our custom ops as its custom operators), the graph it
/// optimised written to `optimized/<name>.onnx`; `None` when ONNX Runtime is not installed (a failure
/// under `REFERDINO_REQUIRE_ORACLES=1`).
#[cfg(feature = "ort")]
fn ort_backend_run(
    m: &pb::ModelProto,
    name: &str,
    inputs: &[(String, Tensor)],
    optimized: &Path,
) -> Option<Vec<Tensor>> {
    use referdino::backend::ort::OrtBackend;
    if !common::have_ort("host INT8 on ONNX Runtime") {
        return None;
    }
    let b = OrtBackend::new(2).unwrap().optimized_models(optimized);
    Some(run_engine(
        b.load_bytes(name, &m.encode_to_vec()).unwrap(),
        inputs,
    ))
}

/// The products of an ONNX Runtime optimised graph: (integer ones, float MatMul/Gemm still fed by a
/// DequantizeLinear).
fn products_after_ort(optimized: &Path) -> (usize, Vec<String>) {
    let m = pb::ModelProto::decode(std::fs::read(optimized).unwrap().as_slice()).unwrap();
    let g = m.graph.unwrap();
    let dq: BTreeSet<&str> = g
        .node
        .iter()
        .filter(|n| n.op_type == "DequantizeLinear")
        .flat_map(|n| n.output.iter().map(|o| o.as_str()))
        .collect();
    let integer = g
        .node
        .iter()
        .filter(|n| {
            matches!(
                n.op_type.as_str(),
                "MatMulIntegerToFloat" | "QLinearMatMul" | "QGemm" | "MatMulInteger"
            )
        })
        .count();
    let float: Vec<String> = g
        .node
        .iter()
        .filter(|n| matches!(n.op_type.as_str(), "MatMul" | "Gemm" | "FusedMatMul"))
        .filter(|n| n.input.iter().any(|i| dq.contains(i.as_str())))
        .map(|n| format!("{} ({})", n.name, n.op_type))
        .collect();
    (integer, float)
}

/// The host INT8 form of the four engines (committed table, native export): uint8 activations with
/// zero point 128, no casts; ONNX Runtime turns every quantized MatMul into an integer product (none
/// left in float behind a DequantizeLinear, which is what happens with its MatMul+Add fusion on, or
/// with int8 activations feeding several products); its outputs agree with tract running the same
/// Q/DQ graph in float and with our integer kernel on the CPU backend, and with FP32 within the INT8
/// tolerance.
#[cfg(feature = "ort")]
#[test]
fn host_int8_engines_run_integer_products_in_onnx_runtime() {
    use referdino::quant::engines::HostInt8;
    let dir = tempfile::tempdir().unwrap();
    let q = HostInt8::load(&root().join("calib/referdino-tiny.scales.json")).unwrap();
    q.check(&ExportOptions::default(), &GEO).unwrap();
    let m32 = fp32(false);
    let real = real_inputs(&m32);
    let mut fails = Vec::new();
    for ((engine, m), inputs) in ENGINES.iter().zip(&m32).zip(&real) {
        let m8 = q.apply(m).unwrap();
        let g = m8.graph.as_ref().unwrap();
        let to_f16 = |n: &pb::NodeProto| {
            n.op_type == "Cast" && n.attribute.iter().any(|a| a.name == "to" && a.i == 10)
        };
        assert!(!g.node.iter().any(to_f16), "{engine}: FP16 casts");
        let zp: Vec<&pb::TensorProto> = g
            .initializer
            .iter()
            .filter(|t| t.name.starts_with("qdq::zero_point"))
            .collect();
        assert_eq!(zp.len(), 1, "{engine}");
        assert_eq!(
            (zp[0].data_type, zp[0].raw_data.as_slice()),
            (2, &[128u8][..])
        );
        assert!(referdino::backend::ort::is_quantized(&m8.encode_to_vec()));
        assert!(!referdino::backend::ort::is_quantized(&m.encode_to_vec()));
        let Some(got) = ort_backend_run(&m8, engine, inputs, dir.path()) else {
            return;
        };
        let (integer, float) = products_after_ort(&dir.path().join(format!("{engine}.onnx")));
        eprintln!("{engine}: {integer} integer products in ONNX Runtime");
        assert!(integer > 0, "{engine}: no integer product");
        assert!(
            float.is_empty(),
            "{engine}: float products behind a dequantize: {float:?}"
        );
        let float = CpuBackend::new()
            .float_int8()
            .load_bytes("t", &m8.encode_to_vec())
            .unwrap();
        let fake = run_engine(float, inputs);
        let want = cpu_run(m, inputs);
        eprintln!("ORT int8 {engine} vs tract int8 (Q/DQ in float):");
        let tol = if *engine == "frame" {
            HOST_INT8_FRAME_TOL
        } else {
            HOST_INT8_TOL
        };
        fails.extend(compare_engine(engine, &output_names(m), &got, &fake, tol));
        // Our integer kernel (where this CPU has one; the float evaluation otherwise): the same
        // integers as ONNX Runtime's.
        let ours = cpu_run(&m8, inputs);
        eprintln!(
            "ORT int8 {engine} vs tract int8 (integer products: {}):",
            CpuBackend::new().integer_products()
        );
        fails.extend(compare_engine(engine, &output_names(m), &got, &ours, tol));
        eprintln!("ORT int8 {engine} vs tract fp32:");
        fails.extend(compare_engine(
            engine,
            &output_names(m),
            &got,
            &want,
            INT8_TOL,
        ));
    }
    assert!(fails.is_empty(), "{fails:?}");
}

/// ONNX Runtime's integer products against tract running the same Q/DQ graph in float: the integer
/// sums are exact, so the two differ by float rounding (measured ≤ 4e-7 relative on the text, temporal
/// and head engines), and where that moves a value across an int8 rounding boundary, by one step of
/// that tensor's scale, carried through the layers after it: the frame engine's ~60 quantized layers
/// (Swin, encoder, decoder) do that (measured 2.5–3.0e-2 relative on `memory_text` and `f_seg`, against
/// 3.0–3.8e-2 between INT8 and FP32).
const HOST_INT8_TOL: (f32, f32) = (1e-5, 1e-5);
const HOST_INT8_FRAME_TOL: (f32, f32) = (0.06, 1e-3);

/// A table calibrated at one text length and window serves others (`HostInt8::check`): the activations
/// the INT8 pass quantizes are the same tensors, produced by the same nodes, whatever the text length
/// and the window; only the frame size may change them.
#[test]
fn quantized_activations_do_not_depend_on_text_length_or_window() {
    let cfg = ModelConfig::from_file(&config()).unwrap();
    let sites = |geo: &Geometry| -> Vec<Vec<(String, String, String)>> {
        let ms = fp32_models(
            &common::tiny_weights(),
            &cfg,
            geo,
            &ExportOptions::default(),
        )
        .unwrap();
        let names = all_calibration_tensors(&ms).unwrap();
        ms.iter()
            .zip(names)
            .map(|(m, names)| {
                let g = m.graph.as_ref().unwrap();
                names
                    .into_iter()
                    .map(|t| {
                        let n = g.node.iter().find(|n| n.output.contains(&t));
                        let (name, op) = n.map_or(("<input>".into(), String::new()), |n| {
                            (n.name.clone(), n.op_type.clone())
                        });
                        (t, name, op)
                    })
                    .collect()
            })
            .collect()
    };
    let base = sites(&GEO);
    assert!(base.iter().all(|e| !e.is_empty()));
    let other = Geometry {
        max_text: 20,
        window: 8,
        ..GEO
    };
    assert_eq!(sites(&other), base);
    let q =
        referdino::quant::engines::HostInt8::load(&root().join("calib/referdino-tiny.scales.json"))
            .unwrap();
    q.check(&ExportOptions::default(), &other).unwrap();
    let e = q
        .check(&ExportOptions::default(), &Geometry { height: 64, ..GEO })
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("calibrated at 70x118") && e.contains("referdino calibrate"),
        "{e}"
    );
    let e = q
        .check(
            &ExportOptions {
                decompose_custom_ops: true,
                ..Default::default()
            },
            &GEO,
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("native export"), "{e}");
}
