//! The per-object engines with a symbolic batch axis (`graph::object_engines`, `onnx::batch_axis`):
//! what a TensorRT optimization profile parses.
//!
//! On the tiny fixture, the merged `cross`, `temporal` and `head` models run at batches they were not
//! built at (1 and 4; built at 2, 3, 5) and give, output by output, what a static build at that batch
//! gives (plain tract on the decomposed export; ONNX Runtime too when python3 can import it). Graphs
//! where the batch enters data or structure are refused with the tensor or node named.

use super::split::{
    affine, geo, get, image, lift, model, opts, ort_bytes, prompts, row, run, stack, text_inputs,
};
use crate::support::common::{assert_close, max_err, tiny_outputs};
use prost::Message;
use referdino::graph::engines::{
    build_cross, build_head_batched, build_image, build_temporal_batched, names as n,
};
use referdino::graph::object_engines::{build_object_engines, ObjectEngine, OBJECTS_DIM};
use referdino::onnx::batch_axis::{symbolic_batch, Build};
use referdino::onnx::builder::{Graph, GraphOptions};
use referdino::onnx::run::run_plain;
use referdino::tensor::{DType, Data, Tensor};
use tract_onnx::pb;

/// The dims of graph input or output `name` (`None` for a symbolic one, with its name).
fn dims(m: &pb::ModelProto, name: &str) -> Vec<Result<i64, String>> {
    use pb::tensor_shape_proto::dimension::Value as D;
    let g = m.graph.as_ref().unwrap();
    let v = g
        .input
        .iter()
        .chain(&g.output)
        .find(|v| v.name == name)
        .unwrap_or_else(|| panic!("no binding {name}"));
    let Some(pb::type_proto::Value::TensorType(t)) = v.r#type.as_ref().unwrap().value.as_ref()
    else {
        panic!("{name}: not a tensor")
    };
    t.shape
        .as_ref()
        .unwrap()
        .dim
        .iter()
        .map(|d| match &d.value {
            Some(D::DimValue(x)) => Ok(*x),
            Some(D::DimParam(p)) => Err(p.clone()),
            None => Err(String::new()),
        })
        .collect()
}

/// Runs a merged model in plain tract with inputs by name; outputs by name.
fn run_dynamic(m: &pb::ModelProto, inputs: &[(&str, Tensor)]) -> Vec<(String, Tensor)> {
    let g = m.graph.as_ref().unwrap();
    let ordered: Vec<Tensor> = g
        .input
        .iter()
        .map(|v| {
            inputs
                .iter()
                .find(|(k, _)| *k == v.name)
                .unwrap_or_else(|| panic!("input {} not given", v.name))
                .1
                .clone()
        })
        .collect();
    let outs = run_plain(&m.encode_to_vec(), &ordered).unwrap();
    g.output.iter().map(|v| v.name.clone()).zip(outs).collect()
}

fn engine<'a>(es: &'a [ObjectEngine], name: &str) -> &'a pb::ModelProto {
    &es.iter().find(|e| e.name == name).unwrap().model
}

fn compare(what: &str, dynamic: &[(String, Tensor)], fixed: &[(String, Tensor)]) {
    for (k, want) in fixed {
        let got = get(dynamic, k);
        assert_eq!(got.shape(), want.shape(), "{what} {k}: shape");
        let (e, _) = max_err(got, want);
        eprintln!("{what} {k}: max abs difference {e:e}");
        assert_close(&format!("{what}: {k}"), got, want);
    }
}

#[test]
fn object_engines_run_at_batches_they_were_not_built_at() {
    let (w, p) = model();
    let es = build_object_engines(&w, &p, &geo(), &opts(true)).unwrap();
    let names: Vec<&str> = es.iter().map(|e| e.name).collect();
    assert_eq!(names, [n::IMAGE_PART, n::CROSS, n::TEMPORAL, n::HEAD]);
    let sym = Err(OBJECTS_DIM.to_string());
    // The object axis is symbolic on the per-object bindings; the image side stays batch 1.
    let cross = engine(&es, n::CROSS);
    assert_eq!(dims(cross, n::ENCODED_TEXT)[0], sym);
    assert_eq!(dims(cross, n::F_SEG)[0], sym);
    assert_eq!(dims(cross, n::IMAGE_TOKENS)[0], Ok(1));
    assert_eq!(dims(engine(&es, n::TEMPORAL), n::OBJECTS)[0], sym);
    assert_eq!(dims(engine(&es, n::HEAD), n::MASK_LOGITS)[0], sym);
    assert!(dims(engine(&es, n::IMAGE_PART), n::IMAGE)
        .iter()
        .all(|d| d.is_ok()));

    // image → cross at B = 1 and B = 4 (prompts 0, 1, 2, 0).
    let img = run(
        build_image(&w, &p, &geo(), &opts(true)).unwrap(),
        true,
        &[(n::IMAGE, image())],
    );
    let ps = prompts();
    for rows in [vec![0], vec![0, 1, 2, 0]] {
        let chosen: Vec<_> = rows.iter().map(|&r| ps[r].clone()).collect();
        let mut inputs = vec![
            (n::IMAGE_TOKENS, get(&img, n::IMAGE_TOKENS).clone()),
            (n::STRIDE4, get(&img, n::STRIDE4).clone()),
        ];
        inputs.extend(text_inputs(&chosen));
        let b = rows.len();
        let fixed = run(
            build_cross(&w, &p, &geo(), b, &opts(true)).unwrap(),
            true,
            &inputs,
        );
        compare(
            &format!("cross B={b} [symbolic vs static, tract]"),
            &run_dynamic(cross, &inputs),
            &fixed,
        );
        if b == 4 {
            let out_names = fixed.iter().map(|(k, _)| k.clone()).collect();
            if let Some(o) = ort_bytes(&cross.encode_to_vec(), out_names, &inputs, "dyn-cross") {
                compare("cross B=4 [symbolic in ORT vs static tract]", &o, &fixed);
            }
        }
    }

    // temporal and head at B = 1 and 4 against static builds at that batch.
    let o = tiny_outputs();
    let win = geo().window;
    for b in [1usize, 4] {
        let per_t: Vec<[Tensor; 3]> = (0..b)
            .map(|r| {
                let s = 1.0 + 0.3 * r as f32;
                let mask: Vec<bool> = (0..win).map(|k| k + r % win >= win - 1).collect();
                [
                    lift(&affine(&o["tracker.hs"], s, 0.0)),
                    lift(&affine(&o["temporal.sent_feat"], 1.0 / s, 0.02 * r as f32)),
                    Tensor::new(vec![1, win], Data::Bool(mask)).unwrap(),
                ]
            })
            .collect();
        let col = |k: usize, v: &[[Tensor; 3]]| {
            stack(&v.iter().map(|x| x[k].clone()).collect::<Vec<_>>())
        };
        let t_in = vec![
            (n::OBJECTS, col(0, &per_t)),
            (n::SENTENCE, col(1, &per_t)),
            (n::FRAME_MASK, col(2, &per_t)),
        ];
        let fixed = run(
            build_temporal_batched(&w, &p.temporal, p.queries_out, &geo(), b, &opts(true)).unwrap(),
            true,
            &t_in,
        );
        compare(
            &format!("temporal B={b} [symbolic vs static, tract]"),
            &run_dynamic(engine(&es, n::TEMPORAL), &t_in),
            &fixed,
        );

        let mut h_in: Vec<(&str, Vec<Tensor>)> = vec![
            (n::OBJECTS_T, vec![]),
            (n::REFS, vec![]),
            (n::MEMORY_TEXT, vec![]),
            (n::TEXT_TOKEN_MASK, vec![]),
            (n::F_SEG, vec![]),
        ];
        for r in 0..b {
            let s = 1.0 - 0.2 * (r % 3) as f32;
            let rows = [
                affine(&row(&o["temporal.out"], 0), s, 0.0),
                row(&o["tracker.ref"], r % 3),
                affine(&row(&o["encoder.memory_text"], 0), s, 0.01),
                ps[r % 3].mask.clone(),
                row(&o["fpn.mask_features"], r % 3),
            ];
            for (slot, t) in h_in.iter_mut().zip(rows) {
                slot.1.push(t);
            }
        }
        let h_in: Vec<(&str, Tensor)> = h_in.into_iter().map(|(k, v)| (k, stack(&v))).collect();
        let fixed = run(
            build_head_batched(&w, &p.head, &geo(), b, &opts(true)).unwrap(),
            true,
            &h_in,
        );
        compare(
            &format!("head B={b} [symbolic vs static, tract]"),
            &run_dynamic(engine(&es, n::HEAD), &h_in),
            &fixed,
        );
    }
}

/// A graph of `batch` rows: `x [batch, 6]` → reshape to `[batch·2, 3]` → `+ c` → reshape back. With
/// `data_dep`, the added constant is `[batch·2, 3]` (batch-dependent data); with `unrolled`, one node
/// per row (batch-dependent structure).
fn toy(batch: usize, data_dep: bool, unrolled: bool) -> pb::ModelProto {
    let mut g = Graph::new("toy", GraphOptions::default());
    let x = g.input("x", DType::F32, &[batch, 6]);
    let y = g.reshape(&x, &[batch * 2, 3]).unwrap();
    let y = if data_dep {
        let c = g.const_f32(&[batch * 2, 3], vec![0.5; batch * 6]).unwrap();
        g.add(&y, &c).unwrap()
    } else {
        let c = g.const_f32(&[1, 3], vec![0.5, 1.0, 1.5]).unwrap();
        g.add(&y, &c).unwrap()
    };
    let y = if unrolled {
        let parts: Vec<_> = (0..batch * 2)
            .map(|i| g.slice(&y, 0, i, i + 1).unwrap())
            .collect();
        let refs: Vec<_> = parts.iter().collect();
        g.concat(&refs, 0).unwrap()
    } else {
        y
    };
    let y = g.reshape(&y, &[batch, 6]).unwrap();
    let r = g_scalar_row(&mut g);
    let z = g.expand(&r, &[batch, 6]).unwrap();
    let y = g.mul(&y, &z).unwrap();
    g.output("y", &y).unwrap();
    g.into_model()
}

fn g_scalar_row(g: &mut Graph) -> referdino::onnx::Value {
    g.const_f32(&[1, 6], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
        .unwrap()
}

fn merge(data_dep: bool, unrolled: bool) -> referdino::error::Result<pb::ModelProto> {
    let b = [2usize, 3, 5].map(|batch| Build {
        batch,
        model: toy(batch, data_dep, unrolled),
    });
    symbolic_batch(b, "batch")
}

#[test]
fn symbolic_batch_runs_at_any_batch_and_refuses_what_is_not_generic() {
    let m = merge(false, false).unwrap();
    // The Reshape targets became -1 at the batch entry; Expand's target is computed from the input.
    let g = m.graph.as_ref().unwrap();
    assert!(g.node.iter().any(|nd| nd.op_type == "Shape"));
    for b in [1usize, 4, 7] {
        let x: Vec<f32> = (0..b * 6).map(|i| i as f32 * 0.25 - 1.0).collect();
        let out = run_plain(
            &m.encode_to_vec(),
            &[Tensor::from_f32(&[b, 6], x.clone()).unwrap()],
        )
        .unwrap();
        let want: Vec<f32> = x
            .iter()
            .enumerate()
            .map(|(i, v)| (v + [0.5, 1.0, 1.5][i % 3]) * (1 + i % 6) as f32)
            .collect();
        assert_eq!(out[0].shape(), [b, 6]);
        assert_eq!(out[0].f32s().unwrap(), &want[..], "batch {b}");
    }
    let e = merge(true, false).unwrap_err().to_string();
    assert!(e.contains("batch-dependent data"), "{e}");
    let e = merge(false, true).unwrap_err().to_string();
    assert!(e.contains("not batch-generic"), "{e}");
    // Three builds at two distinct batches are refused.
    let e = symbolic_batch(
        [2usize, 3, 3].map(|batch| Build {
            batch,
            model: toy(batch, false, false),
        }),
        "batch",
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("distinct"), "{e}");
}

/// What `referdino build` exports for a profile with `objects`: our custom ops (native) and the FP16
/// pass applied to each build before the merge. The merge checks that the pass treats every batch
/// alike (same casts, same nodes); the result keeps the symbolic axis and its FP16 casts.
#[test]
fn native_fp16_object_engines_merge() {
    use referdino::onnx::precision::Precision;
    use referdino::quant::engines::apply;
    let (w, p) = model();
    let finish = |m: pb::ModelProto| apply(&m, Precision::Fp16, None, true).map(|(m, _)| m);
    let es = referdino::graph::object_engines::build_object_engines_with(
        &w,
        &p,
        &geo(),
        &opts(false),
        &finish,
    )
    .unwrap();
    let sym = Err(OBJECTS_DIM.to_string());
    for e in &es[1..] {
        let g = e.model.graph.as_ref().unwrap();
        assert!(
            g.node.iter().any(|nd| nd.op_type == "Cast"),
            "{}: FP16 casts",
            e.name
        );
        let first = &g.input.iter().find(|v| dims(&e.model, &v.name)[0] == sym);
        assert!(first.is_some(), "{}: an input with the object axis", e.name);
    }
    let cross = &es[1].model;
    assert!(cross
        .graph
        .as_ref()
        .unwrap()
        .node
        .iter()
        .any(|nd| nd.op_type == "MSDeformAttn"));
}
