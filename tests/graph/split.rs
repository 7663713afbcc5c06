//! The frame engine split where the prompt first enters: `image` (Swin + input projections, once per
//! frame) and `cross` (enhancer, query selection, decoder with pruning, FPN) batched over objects.
//!
//! On the tiny fixture:
//! - `image` → `cross` at B = 1 gives the `frame` engine's outputs (checked bit for bit and with the
//!   project's parity rule, `tests/common` `assert_close`), and the official fixture's `objects.hs`;
//! - `cross` at B = 3 with three different prompts gives, row by row, the B = 1 run of each prompt;
//! - both with our custom ops on the CPU backend and with the decomposed standard-ONNX export in plain
//!   tract, and, when `python3` can import onnxruntime, in ONNX Runtime;
//! - the batched head and temporal engines give, row by row, the B = 1 engines' outputs.

use crate::support::common::{assert_close, fixture, max_err, tiny_inputs, tiny_outputs};
use referdino::backend::cpu::CpuBackend;
use referdino::config::ModelConfig;
use referdino::graph::engines::{
    build_cross, build_frame, build_head, build_head_batched, build_image, build_temporal,
    build_temporal_batched, names as n, Geometry, NetParams,
};
use referdino::onnx::builder::{Graph, GraphOptions};
use referdino::onnx::run::run_plain;
use referdino::pipeline::session::Bound;
use referdino::tensor::{read_npy, write_npy, Data, Tensor};
use referdino::weights::Checkpoint;

const LM: usize = 10;

pub(super) fn geo() -> Geometry {
    Geometry {
        height: 70,
        width: 118,
        max_text: LM,
        window: 3,
    }
}

pub(super) fn model() -> (Checkpoint, NetParams) {
    let ck = Checkpoint::load(&fixture("referdino-tiny/weights.safetensors")).unwrap();
    let cfg = ModelConfig::from_file(&fixture("referdino-tiny/config.json")).unwrap();
    let p = NetParams::new(&cfg, &geo()).unwrap();
    (ck, p)
}

pub(super) fn opts(decompose: bool) -> GraphOptions {
    GraphOptions {
        taps: false,
        decompose_custom_ops: decompose,
    }
}

/// Rows `[i, i+1)` of the leading axis.
pub(super) fn row(t: &Tensor, i: usize) -> Tensor {
    let mut s = t.shape().to_vec();
    let per = t.numel() / s[0];
    s[0] = 1;
    let b = t.to_le_bytes();
    let sz = t.dtype().size();
    Tensor::from_le_bytes(&s, t.dtype(), &b[i * per * sz..(i + 1) * per * sz]).unwrap()
}

/// Stacks `[1, ...]` tensors along the leading axis.
pub(super) fn stack(ts: &[Tensor]) -> Tensor {
    let mut s = ts[0].shape().to_vec();
    s[0] = ts.len();
    let mut bytes = Vec::new();
    for t in ts {
        assert_eq!(t.shape()[1..], s[1..]);
        bytes.extend(t.to_le_bytes());
    }
    Tensor::from_le_bytes(&s, ts[0].dtype(), &bytes).unwrap()
}

/// Adds a leading axis of 1.
pub(super) fn lift(t: &Tensor) -> Tensor {
    let mut s = vec![1];
    s.extend_from_slice(t.shape());
    t.clone().reshape(&s).unwrap()
}

/// One prompt's text inputs of the frame/cross engines, each `[1, ...]`.
#[derive(Clone)]
pub(super) struct Prompt {
    text: Tensor,
    pub(super) mask: Tensor,
    sam: Tensor,
    pos: Tensor,
}

/// Three different prompts: the fixture's, the fixture's tokens reversed and rescaled, and a shorter
/// prompt (7 real tokens, 3 pads) with other values.
pub(super) fn prompts() -> Vec<Prompt> {
    let i = tiny_inputs();
    let o = tiny_outputs();
    let text = o["text.encoded_text"].clone();
    let d = text.shape()[2];
    let base = Prompt {
        text: text.clone(),
        mask: Tensor::new(vec![1, LM], Data::Bool(vec![true; LM])).unwrap(),
        sam: i["text_self_attention_mask"].clone(),
        pos: i["position_ids"].clone(),
    };
    let t = text.f32s().unwrap();
    let mut rev = Vec::with_capacity(t.len());
    for k in (0..LM).rev() {
        rev.extend(t[k * d..(k + 1) * d].iter().map(|x| 0.7 * x + 0.05));
    }
    let reversed = Prompt {
        text: Tensor::from_f32(&[1, LM, d], rev).unwrap(),
        ..base.clone()
    };
    let real = 7;
    let short_text: Vec<f32> = t
        .iter()
        .enumerate()
        .map(|(j, x)| if j / d < real { -0.9 * x } else { 0.0 })
        .collect();
    let mut sam = vec![false; LM * LM];
    for a in 0..LM {
        for b in 0..LM {
            // [CLS] and [SEP] alone, one sub-sentence in between; pads see only themselves
            sam[a * LM + b] = a == b || ((1..real - 1).contains(&a) && (1..real - 1).contains(&b));
        }
    }
    let pos: Vec<i64> = (0..LM)
        .map(|k| {
            if (1..real - 1).contains(&k) {
                k as i64 - 1
            } else {
                0
            }
        })
        .collect();
    let short = Prompt {
        text: Tensor::from_f32(&[1, LM, d], short_text).unwrap(),
        mask: Tensor::new(vec![1, LM], Data::Bool((0..LM).map(|k| k < real).collect())).unwrap(),
        sam: Tensor::new(vec![1, LM, LM], Data::Bool(sam)).unwrap(),
        pos: Tensor::new(vec![1, LM], Data::I64(pos)).unwrap(),
    };
    vec![base, reversed, short]
}

pub(super) fn image() -> Tensor {
    let frames = tiny_inputs()["frames"]
        .clone()
        .reshape(&[3, 3, 70, 118])
        .unwrap();
    row(&frames, 0)
}

/// Runs a graph with our custom ops on the CPU backend, or its decomposed form in plain tract.
/// Returns the outputs by name, in graph order.
pub(super) fn run(g: Graph, decomposed: bool, inputs: &[(&str, Tensor)]) -> Vec<(String, Tensor)> {
    let names: Vec<String> = g.output_specs().into_iter().map(|s| s.name).collect();
    let in_names: Vec<String> = g.input_specs().iter().map(|s| s.name.clone()).collect();
    let name = g.name().to_string();
    let bytes = g.to_bytes();
    if decomposed {
        assert!(
            !String::from_utf8_lossy(&bytes).contains("MSDeformAttn"),
            "{name}: the decomposed graph has no custom op"
        );
        let ordered: Vec<Tensor> = in_names
            .iter()
            .map(|k| inputs.iter().find(|(n, _)| n == k).unwrap().1.clone())
            .collect();
        let outs = run_plain(&bytes, &ordered).unwrap();
        return names.into_iter().zip(outs).collect();
    }
    let mut b = Bound::new(CpuBackend::new().load_bytes(&name, &bytes).unwrap());
    for (k, t) in inputs {
        *b.input_mut(k).unwrap() = t.clone();
    }
    b.run().unwrap();
    names
        .into_iter()
        .map(|k| {
            let t = b.output(&k).unwrap().clone();
            (k, t)
        })
        .collect()
}

pub(super) fn get<'a>(outs: &'a [(String, Tensor)], name: &str) -> &'a Tensor {
    &outs.iter().find(|(n, _)| n == name).unwrap().1
}

pub(super) fn text_inputs(ps: &[Prompt]) -> Vec<(&'static str, Tensor)> {
    let col =
        |f: fn(&Prompt) -> &Tensor| stack(&ps.iter().map(|p| f(p).clone()).collect::<Vec<_>>());
    vec![
        (n::ENCODED_TEXT, col(|p| &p.text)),
        (n::TEXT_TOKEN_MASK, col(|p| &p.mask)),
        (n::TEXT_SELF_ATTENTION_MASK, col(|p| &p.sam)),
        (n::POSITION_IDS, col(|p| &p.pos)),
    ]
}

const CROSS_OUTS: [&str; 4] = [n::OBJECTS, n::REFS, n::MEMORY_TEXT, n::F_SEG];

/// Largest |a − b| over the outputs, for the report (0 = bit-identical up to signed zeros).
fn report(what: &str, a: &[(String, Tensor)], b: &[(String, Tensor)], rows: Option<usize>) {
    for k in CROSS_OUTS {
        let (x, y) = (get(a, k), get(b, k));
        let x = rows.map_or_else(|| x.clone(), |r| row(x, r));
        let (err, _) = max_err(&x, y);
        eprintln!("{what} {k}: max abs difference {err:e}");
    }
}

fn image_then_cross(
    w: &Checkpoint,
    p: &NetParams,
    decomposed: bool,
    ps: &[Prompt],
) -> Vec<(String, Tensor)> {
    let img = run(
        build_image(w, p, &geo(), &opts(decomposed)).unwrap(),
        decomposed,
        &[(n::IMAGE, image())],
    );
    let mut inputs = vec![
        (n::IMAGE_TOKENS, get(&img, n::IMAGE_TOKENS).clone()),
        (n::STRIDE4, get(&img, n::STRIDE4).clone()),
    ];
    inputs.extend(text_inputs(ps));
    let cross = build_cross(w, p, &geo(), ps.len(), &opts(decomposed)).unwrap();
    run(cross, decomposed, &inputs)
}

fn split_matches_frame_and_rows_match(decomposed: bool) {
    let (w, p) = model();
    let ps = prompts();
    let label = if decomposed {
        "decomposed, plain tract"
    } else {
        "custom ops, CPU backend"
    };
    // frame engine, prompt 0
    let mut inputs = vec![(n::IMAGE, image())];
    inputs.extend(text_inputs(&ps[..1]));
    let frame = run(
        build_frame(&w, &p, &geo(), &opts(decomposed)).unwrap(),
        decomposed,
        &inputs,
    );
    let one = image_then_cross(&w, &p, decomposed, &ps[..1]);
    report(
        &format!("[{label}] image+cross B=1 vs frame"),
        &one,
        &frame,
        None,
    );
    for k in CROSS_OUTS {
        assert_close(
            &format!("[{label}] image+cross B=1 vs frame: {k}"),
            get(&one, k),
            get(&frame, k),
        );
    }
    // and the official fixture, as the frame engine's own tests do
    let want = row(&tiny_outputs()["objects.hs"], 0);
    assert_close(
        &format!("[{label}] image+cross B=1 objects vs official fixture"),
        get(&one, n::OBJECTS),
        &want,
    );
    // three prompts at once: each row is that prompt's B = 1 run
    let three = image_then_cross(&w, &p, decomposed, &ps);
    for (r, pr) in ps.iter().enumerate() {
        let single = if r == 0 {
            one.clone()
        } else {
            image_then_cross(&w, &p, decomposed, std::slice::from_ref(pr))
        };
        report(
            &format!("[{label}] B=3 row {r} vs B=1"),
            &three,
            &single,
            Some(r),
        );
        for k in CROSS_OUTS {
            assert_close(
                &format!("[{label}] B=3 row {r} vs B=1: {k}"),
                &row(get(&three, k), r),
                get(&single, k),
            );
        }
    }
    // the prompts really differ, so the rows above are not trivially equal
    let (d01, _) = max_err(
        &row(get(&three, n::OBJECTS), 0),
        &row(get(&three, n::OBJECTS), 1),
    );
    let (d02, _) = max_err(
        &row(get(&three, n::OBJECTS), 0),
        &row(get(&three, n::OBJECTS), 2),
    );
    assert!(
        d01 > 1e-3 && d02 > 1e-3,
        "prompts give different objects: {d01} {d02}"
    );
}

#[test]
fn split_with_custom_ops_on_cpu_backend() {
    split_matches_frame_and_rows_match(false);
}

#[test]
fn split_decomposed_in_plain_tract() {
    split_matches_frame_and_rows_match(true);
}

/// Runs a decomposed graph in ONNX Runtime via `tests/tools/onnx_oracle.py`; `None` when python3 or
/// onnxruntime is missing.
fn ort(g: Graph, inputs: &[(&str, Tensor)], tag: &str) -> Option<Vec<(String, Tensor)>> {
    let names: Vec<String> = g.output_specs().into_iter().map(|s| s.name).collect();
    ort_bytes(&g.to_bytes(), names, inputs, tag)
}

/// [`ort`] on a serialised model whose outputs are `names`.
pub(super) fn ort_bytes(
    bytes: &[u8],
    names: Vec<String>,
    inputs: &[(&str, Tensor)],
    tag: &str,
) -> Option<Vec<(String, Tensor)>> {
    let root = std::env::temp_dir().join(format!("referdino-split-{}-{tag}", std::process::id()));
    let (in_dir, out_dir) = (root.join("in"), root.join("out"));
    std::fs::create_dir_all(&in_dir).unwrap();
    let model = root.join("model.onnx");
    std::fs::write(&model, bytes).unwrap();
    for (k, t) in inputs {
        write_npy(&in_dir.join(format!("{k}.npy")), t).unwrap();
    }
    crate::support::onnx_oracle::oracle(&[
        "run",
        model.to_str().unwrap(),
        in_dir.to_str().unwrap(),
        out_dir.to_str().unwrap(),
    ])?;
    let outs = names
        .into_iter()
        .map(|k| {
            let t = read_npy(&out_dir.join(format!("{k}.npy"))).unwrap();
            (k, t)
        })
        .collect();
    std::fs::remove_dir_all(&root).ok();
    Some(outs)
}

#[test]
fn split_decomposed_in_onnx_runtime_matches_cpu_backend() {
    let (w, p) = model();
    let ps = prompts();
    let Some(img) = ort(
        build_image(&w, &p, &geo(), &opts(true)).unwrap(),
        &[(n::IMAGE, image())],
        "image",
    ) else {
        return;
    };
    let mut inputs = vec![
        (n::IMAGE_TOKENS, get(&img, n::IMAGE_TOKENS).clone()),
        (n::STRIDE4, get(&img, n::STRIDE4).clone()),
    ];
    inputs.extend(text_inputs(&ps));
    let three = ort(
        build_cross(&w, &p, &geo(), 3, &opts(true)).unwrap(),
        &inputs,
        "cross",
    )
    .expect("onnxruntime ran the image engine");
    let ours = image_then_cross(&w, &p, false, &ps);
    report(
        "[ORT decomposed vs CPU custom ops] B=3",
        &three,
        &ours,
        None,
    );
    for k in CROSS_OUTS {
        assert_close(
            &format!("[ORT decomposed vs CPU custom ops] B=3: {k}"),
            get(&three, k),
            get(&ours, k),
        );
    }
}

/// Scales every f32 element by `a` and shifts it by `b` (a different object's inputs).
pub(super) fn affine(t: &Tensor, a: f32, b: f32) -> Tensor {
    let v = t.f32s().unwrap().iter().map(|x| a * x + b).collect();
    Tensor::from_f32(t.shape(), v).unwrap()
}

#[test]
fn batched_head_rows_equal_single_object_heads() {
    let (w, p) = model();
    let o = tiny_outputs();
    let ps = prompts();
    let per: Vec<Vec<(&str, Tensor)>> = (0..3)
        .map(|r| {
            let s = 1.0 - 0.2 * r as f32;
            vec![
                (n::OBJECTS_T, affine(&row(&o["temporal.out"], 0), s, 0.0)),
                (n::REFS, row(&o["tracker.ref"], r % 3)),
                (
                    n::MEMORY_TEXT,
                    affine(&row(&o["encoder.memory_text"], 0), s, 0.01),
                ),
                (n::TEXT_TOKEN_MASK, ps[r].mask.clone()),
                (
                    n::F_SEG,
                    affine(&row(&o["fpn.mask_features"], r % 3), 1.0, 0.0),
                ),
            ]
        })
        .collect();
    let batched: Vec<(&str, Tensor)> = (0..per[0].len())
        .map(|k| {
            let rows: Vec<Tensor> = per.iter().map(|i| i[k].1.clone()).collect();
            (per[0][k].0, stack(&rows))
        })
        .collect();
    for decomposed in [false, true] {
        let b3 = run(
            build_head_batched(&w, &p.head, &geo(), 3, &opts(decomposed)).unwrap(),
            decomposed,
            &batched,
        );
        for (r, inputs) in per.iter().enumerate() {
            let b1 = run(
                build_head(&w, &p.head, &geo(), &opts(decomposed)).unwrap(),
                decomposed,
                inputs,
            );
            for k in [n::LOGITS, n::BOXES, n::MASK_LOGITS] {
                let (e, _) = max_err(&row(get(&b3, k), r), get(&b1, k));
                eprintln!("head decomposed={decomposed} row {r} {k}: max abs difference {e:e}");
                assert_close(
                    &format!("head (decomposed {decomposed}) row {r}: {k}"),
                    &row(get(&b3, k), r),
                    get(&b1, k),
                );
            }
        }
    }
}

#[test]
fn batched_temporal_rows_equal_single_object_temporal() {
    let (w, p) = model();
    let o = tiny_outputs();
    let objs = &o["tracker.hs"];
    let sent = &o["temporal.sent_feat"];
    let win = geo().window;
    let masks = [
        vec![true; win],
        vec![false, true, true],
        vec![false, false, true],
    ];
    let per: Vec<Vec<(&str, Tensor)>> = (0..3)
        .map(|r| {
            let s = 1.0 + 0.3 * r as f32;
            vec![
                (n::OBJECTS, affine(objs, s, 0.0)),
                (n::SENTENCE, affine(sent, 1.0 / s, 0.02 * r as f32)),
                (
                    n::FRAME_MASK,
                    Tensor::new(vec![win], Data::Bool(masks[r].clone())).unwrap(),
                ),
            ]
        })
        .collect();
    let batched: Vec<(&str, Tensor)> = (0..3)
        .map(|k| {
            let rows: Vec<Tensor> = per.iter().map(|i| lift(&i[k].1)).collect();
            (per[0][k].0, stack(&rows))
        })
        .collect();
    for decomposed in [false, true] {
        let b3 = run(
            build_temporal_batched(&w, &p.temporal, p.queries_out, &geo(), 3, &opts(decomposed))
                .unwrap(),
            decomposed,
            &batched,
        );
        let out = get(&b3, n::OBJECTS_T);
        assert_eq!(out.shape(), [3, win, p.queries_out, p.temporal.d_model]);
        for (r, inputs) in per.iter().enumerate() {
            let b1 = run(
                build_temporal(&w, &p.temporal, p.queries_out, &geo(), &opts(decomposed)).unwrap(),
                decomposed,
                inputs,
            );
            let want = lift(get(&b1, n::OBJECTS_T));
            let (e, _) = max_err(&row(out, r), &want);
            eprintln!("temporal decomposed={decomposed} row {r}: max abs difference {e:e}");
            assert_close(
                &format!("temporal (decomposed {decomposed}) row {r}"),
                &row(out, r),
                &want,
            );
        }
    }
}
