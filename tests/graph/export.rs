//! Exported engines pass the ONNX checker, and the decomposed export runs in ONNX Runtime (an independent
//! runtime) with the same results as our CPU backend running the native custom-op export.

use crate::support::common;

use common::{assert_close, fixture, tiny_inputs, tiny_outputs};
use referdino::backend::cpu::CpuBackend;
use referdino::backend::Backend;
use referdino::config::ModelConfig;
use referdino::graph::engines::{ExportOptions, Geometry};
use referdino::graph::export::{export_engines, Manifest};
use referdino::pipeline::session::Bound;
use referdino::tensor::{read_npy, write_npy, Data, Tensor};
use referdino::weights::Checkpoint;
use std::collections::BTreeMap;
use std::path::Path;

use crate::support::onnx_oracle::oracle;

fn first_frame(t: &Tensor) -> Tensor {
    let mut s = t.shape().to_vec();
    let per = t.numel() / s[0];
    s[0] = 1;
    let b = t.to_le_bytes();
    Tensor::from_le_bytes(&s, t.dtype(), &b[..per * t.dtype().size()]).unwrap()
}

fn bools(shape: &[usize], v: bool) -> Tensor {
    Tensor::new(shape.to_vec(), Data::Bool(vec![v; shape.iter().product()])).unwrap()
}

/// Inputs of every engine, cut from the official fixture (frame 0 for the per-frame engines).
fn engine_inputs() -> BTreeMap<&'static str, Vec<(&'static str, Tensor)>> {
    let i = tiny_inputs();
    let o = tiny_outputs();
    let sam = i["text_self_attention_mask"].clone();
    let pos = i["position_ids"].clone();
    let mut m = BTreeMap::new();
    m.insert(
        "text",
        vec![
            ("input_ids", i["input_ids"].clone()),
            ("token_type_ids", i["token_type_ids"].clone()),
            ("position_ids", pos.clone()),
            ("text_self_attention_mask", sam.clone()),
        ],
    );
    let frames = i["frames"].clone().reshape(&[3, 3, 70, 118]).unwrap();
    m.insert(
        "frame",
        vec![
            ("image", first_frame(&frames)),
            ("encoded_text", o["text.encoded_text"].clone()),
            ("text_token_mask", bools(&[1, 10], true)),
            ("text_self_attention_mask", sam),
            ("position_ids", pos),
        ],
    );
    m.insert(
        "temporal",
        vec![
            ("objects", o["tracker.hs"].clone()),
            ("sentence", o["temporal.sent_feat"].clone()),
            ("frame_mask", bools(&[3], true)),
        ],
    );
    m.insert(
        "head",
        vec![
            ("objects_t", first_frame(&o["temporal.out"])),
            ("refs", first_frame(&o["tracker.ref"])),
            ("memory_text", first_frame(&o["encoder.memory_text"])),
            ("text_token_mask", bools(&[1, 10], true)),
            ("f_seg", first_frame(&o["fpn.mask_features"])),
        ],
    );
    m
}

fn export(dir: &Path, decomposed: bool) -> Manifest {
    let ck = Checkpoint::load(&fixture("referdino-tiny/weights.safetensors")).unwrap();
    let cfg = ModelConfig::from_file(&fixture("referdino-tiny/config.json")).unwrap();
    let geo = Geometry {
        height: 70,
        width: 118,
        max_text: 10,
        window: 3,
    };
    let opts = ExportOptions {
        taps: false,
        decompose_custom_ops: decomposed,
    };
    export_engines(&ck, &cfg, &geo, &opts, dir).unwrap()
}

fn run_cpu(path: &Path, inputs: &[(&str, Tensor)]) -> Vec<(String, Tensor)> {
    let mut b = Bound::new(CpuBackend::new().load(path).unwrap());
    for (n, t) in inputs {
        *b.input_mut(n).unwrap() = t.clone();
    }
    b.run().unwrap();
    b.output_names()
        .into_iter()
        .map(|n| {
            let t = b.output(&n).unwrap().clone();
            (n, t)
        })
        .collect()
}

#[test]
fn exported_engines_check_and_match_onnx_runtime() {
    let root = std::env::temp_dir().join(format!("referdino-export-{}", std::process::id()));
    let native = root.join("native");
    let decomposed = root.join("decomposed");
    let mn = export(&native, false);
    let md = export(&decomposed, true);
    assert_eq!(Manifest::read(&native).unwrap().engines.len(), 4);
    assert_eq!(mn.queries, 13);
    assert_eq!(md.custom_ops, "decomposed");
    for dir in [&native, &decomposed] {
        for e in ["text", "frame", "temporal", "head"] {
            let p = dir.join(format!("{e}.onnx"));
            if oracle(&["check", p.to_str().unwrap()]).is_none() {
                return;
            }
        }
    }
    let o = tiny_outputs();
    let reference: BTreeMap<&str, (&str, Tensor)> = [
        ("text", ("encoded_text", o["text.encoded_text"].clone())),
        ("frame", ("objects", first_frame(&o["objects.hs"]))),
        ("temporal", ("objects_t", o["temporal.out"].clone())),
        ("head", ("mask_logits", first_frame(&o["mask.pred_masks"]))),
    ]
    .into_iter()
    .collect();
    for (engine, inputs) in engine_inputs() {
        let in_dir = root.join(format!("{engine}_in"));
        let out_dir = root.join(format!("{engine}_out"));
        std::fs::create_dir_all(&in_dir).unwrap();
        for (n, t) in &inputs {
            write_npy(&in_dir.join(format!("{n}.npy")), t).unwrap();
        }
        let model = decomposed.join(format!("{engine}.onnx"));
        oracle(&[
            "run",
            model.to_str().unwrap(),
            in_dir.to_str().unwrap(),
            out_dir.to_str().unwrap(),
        ])
        .expect("onnxruntime run");
        let ours = run_cpu(&native.join(format!("{engine}.onnx")), &inputs);
        for (name, t) in &ours {
            let ort = read_npy(&out_dir.join(format!("{name}.npy"))).unwrap();
            assert_close(
                &format!("{engine}.{name} (ORT decomposed vs CPU native)"),
                &ort,
                t,
            );
        }
        let (rname, rt) = &reference[engine];
        let got = &ours.iter().find(|(n, _)| n == rname).unwrap().1;
        assert_close(&format!("{engine}.{rname} vs official fixture"), got, rt);
    }
    std::fs::remove_dir_all(&root).ok();
}
