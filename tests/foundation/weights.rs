//! Checkpoint readers, key map, LoRA folding and validation against the `referdino-tiny` fixture
//! (weights written by the official PyTorch code: `weights.safetensors` and `torch.save`'s
//! `checkpoint.pth`).

use referdino::config::ModelConfig;
use referdino::tensor::Data;
use referdino::weights::keymap::{expected_keys, unique_parameters};
use referdino::weights::{Checkpoint, Format};
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/referdino-tiny")
        .join(name)
}

fn tiny_config() -> ModelConfig {
    ModelConfig::from_file(&fixture("config.json")).unwrap()
}

/// The safetensors header parsed independently of our reader: shapes, aliases, key order.
struct Header {
    shapes: HashMap<String, Vec<usize>>,
    aliases: HashMap<String, String>,
    key_order: Vec<String>,
}

fn header() -> Header {
    let bytes = std::fs::read(fixture("weights.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut h: serde_json::Map<String, Value> = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let meta = h.remove("__metadata__").unwrap();
    let shapes = h
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v["shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap() as usize)
                    .collect(),
            )
        })
        .collect();
    let aliases = serde_json::from_str(meta["aliases"].as_str().unwrap()).unwrap();
    let key_order = serde_json::from_str(meta["key_order"].as_str().unwrap()).unwrap();
    Header {
        shapes,
        aliases,
        key_order,
    }
}

fn meta() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("meta.json")).unwrap()).unwrap()
}

#[test]
fn tiny_config_reads_official_names_and_overrides() {
    let c = tiny_config();
    assert_eq!(c.backbone, "swin_B_384_22k");
    assert_eq!((c.hidden_dim, c.nheads, c.dim_feedforward), (128, 8, 64));
    assert_eq!(
        (c.enc_layers, c.dec_layers, c.num_queries, c.lora_rank),
        (2, 2, 50, 4)
    );
    assert_eq!(c.swin.embed_dim, 12);
    assert_eq!(c.swin.depths, vec![1, 1, 2, 1]);
    assert_eq!(c.swin.num_heads, vec![1, 2, 4, 8]);
    assert_eq!(c.swin.window_size, 7);
    assert_eq!(
        (
            c.bert.hidden_size,
            c.bert.num_hidden_layers,
            c.bert.intermediate_size
        ),
        (16, 2, 64)
    );
    assert_eq!(
        (
            c.temporal_dim_feedforward,
            c.seg_head.d_ffn,
            c.seg_head.mask_dim
        ),
        (64, 64, 128)
    );
    assert_eq!(
        (c.seg_head.n_points, c.seg_head.n_layers, c.temporal_layer),
        (16, 3, 3)
    );
    // meta.json: queries per decoder layer after pruning [25, 13] from 50.
    let m = meta();
    let q: Vec<usize> = m["queries_per_decoder_layer"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect();
    let mut want = vec![50];
    want.extend(q);
    assert_eq!(c.queries_per_layer(), want);
}

#[test]
fn key_map_equals_the_official_state_dict_of_the_fixture() {
    let h = header();
    let keys = expected_keys(&tiny_config()).unwrap();
    let ours: HashMap<&str, &Vec<usize>> =
        keys.iter().map(|e| (e.key.as_str(), &e.shape)).collect();
    assert_eq!(keys.len(), h.key_order.len(), "number of state-dict keys");
    for k in &h.key_order {
        let stored = h.aliases.get(k).unwrap_or(k);
        let want = &h.shapes[stored];
        assert_eq!(ours.get(k.as_str()).copied(), Some(want), "{k}");
    }
    // Aliases: ours name the same stored tensor as the fixture's metadata.
    for e in &keys {
        match (&e.alias_of, h.aliases.get(&e.key)) {
            (Some(a), Some(b)) => assert_eq!(a, b, "{}", e.key),
            (None, None) => {}
            (a, b) => panic!("{}: alias {a:?} vs fixture {b:?}", e.key),
        }
    }
    // meta.json counts the unique parameters of the official model (LoRA factors included).
    assert_eq!(
        unique_parameters(&keys, true) as u64,
        meta()["num_parameters_unique"].as_u64().unwrap()
    );
}

#[test]
fn safetensors_loads_resolves_aliases_and_validates() {
    let ck = Checkpoint::load(&fixture("weights.safetensors")).unwrap();
    assert_eq!(ck.format(), Format::Safetensors);
    let h = header();
    assert_eq!(ck.raw_entries().len(), h.key_order.len());
    assert_eq!(
        ck.raw_entries().len() as u64,
        meta()["num_state_dict_keys"].as_u64().unwrap()
    );
    // Every non-LoRA key of the official state dict is reachable, aliases included.
    for k in &h.key_order {
        let lora = k.ends_with(".lora_A") || k.ends_with(".lora_B");
        assert_eq!(ck.contains(k), !lora, "{k}");
    }
    // Aliased keys hand out the same tensor as their target.
    for (a, target) in &h.aliases {
        if a.contains("lora_") {
            continue;
        }
        assert!(
            std::ptr::eq(ck.get(a).unwrap(), ck.get(target).unwrap()),
            "{a}"
        );
    }
    ck.validate(&tiny_config()).unwrap();
    assert!(ck.lora().pairs > 0);
    assert_eq!(ck.lora().ranks, vec![4]);
    // Relative position index stays an integer buffer.
    let idx = ck
        .get("backbone.0.layers.0.blocks.0.attn.relative_position_index")
        .unwrap();
    assert!(matches!(idx.data(), Data::I64(_)));
}

/// Reads one raw tensor from the safetensors file without our reader.
fn raw_f32(name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(fixture("weights.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let v = st.tensor(name).unwrap();
    (
        v.shape().to_vec(),
        v.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect(),
    )
}

#[test]
fn lora_is_folded_as_w_plus_b_a_over_rank() {
    let ck = Checkpoint::load(&fixture("weights.safetensors")).unwrap();
    for base in [
        "transformer.encoder.layers.0.self_attn.sampling_offsets",
        "transformer.encoder.fusion_layers.1.attn.out_l_proj",
        "transformer.decoder.layers.1.linear2",
        "transformer.decoder.ref_point_head.layers.0",
    ] {
        let (ws, w) = raw_f32(&format!("{base}.weight"));
        let (as_, a) = raw_f32(&format!("{base}.lora_A"));
        let (_, b) = raw_f32(&format!("{base}.lora_B"));
        let (out, inp, r) = (ws[0], ws[1], as_[0]);
        assert_eq!(r, 4);
        let got = ck
            .get(&format!("{base}.weight"))
            .unwrap()
            .f32s()
            .unwrap()
            .to_vec();
        let mut max_err = 0f64;
        let mut max_delta = 0f64;
        for o in 0..out {
            for i in 0..inp {
                let ba: f64 = (0..r)
                    .map(|k| b[o * r + k] as f64 * a[k * inp + i] as f64)
                    .sum();
                let want = w[o * inp + i] as f64 + ba / r as f64;
                max_err = max_err.max((got[o * inp + i] as f64 - want).abs());
                max_delta = max_delta.max((ba / r as f64).abs());
            }
        }
        assert!(max_delta > 1e-3, "{base}: LoRA delta is not trivially zero");
        assert!(max_err < 2e-6, "{base}: folded weight off by {max_err}");
    }
    // The alias of a folded weight is the folded weight.
    assert_eq!(
        ck.get("ref_point_head.layers.0.weight").unwrap(),
        ck.get("transformer.decoder.ref_point_head.layers.0.weight")
            .unwrap()
    );
    // Weights without LoRA are untouched.
    let (_, raw) = raw_f32("transformer.decoder.layers.0.self_attn.out_proj.weight");
    assert_eq!(
        ck.get("transformer.decoder.layers.0.self_attn.out_proj.weight")
            .unwrap()
            .f32s()
            .unwrap(),
        &raw[..]
    );
}

#[test]
fn pth_and_safetensors_give_identical_tensors() {
    let st = Checkpoint::load(&fixture("weights.safetensors")).unwrap();
    let pt = Checkpoint::load(&fixture("checkpoint.pth")).unwrap();
    assert_eq!(pt.format(), Format::Pth);
    let mut a: Vec<&str> = st.keys();
    let mut b: Vec<&str> = pt.keys();
    a.sort();
    b.sort();
    assert_eq!(a, b, "same key sets");
    for k in st.keys() {
        assert_eq!(st.get(k).unwrap(), pt.get(k).unwrap(), "{k}");
    }
    // Storage sharing in the .pth is recognised as aliasing.
    assert_eq!(
        pt.alias_target("bbox_embed.1.layers.2.bias"),
        Some("transformer.decoder.bbox_embed.0.layers.2.bias")
    );
    assert_eq!(pt.raw_entries().len(), st.raw_entries().len());
    assert_eq!(pt.lora(), st.lora());
    pt.validate(&tiny_config()).unwrap();
}

#[test]
fn another_models_checkpoint_is_named_key_by_key() {
    let ck = Checkpoint::load(&fixture("weights.safetensors")).unwrap();
    let e = ck.validate(&ModelConfig::swin_t()).unwrap_err().to_string();
    assert!(
        e.contains("transformer.level_embed: expected [4, 256] float, found [4, 128] float32"),
        "{e}"
    );
    assert!(e.contains("missing"), "{e}");
    assert!(
        e.contains("transformer.encoder.fusion_layers.2.layer_norm_v.weight"),
        "{e}"
    );
    assert!(e.contains("wrong shape"), "{e}");
    // The full comparison behind the message names every difference.
    let m = ck.check(&ModelConfig::swin_t()).unwrap();
    assert!(m
        .missing
        .iter()
        .any(|k| k == "transformer.encoder.layers.5.norm2.weight"));
    assert!(m
        .missing
        .iter()
        .any(|k| k == "backbone.0.layers.2.blocks.5.mlp.fc2.bias"));
    assert!(m
        .wrong_shape
        .iter()
        .any(|k| k.starts_with("backbone.0.patch_embed.proj.weight: expected [96, 3, 4, 4]")));
    assert_eq!(m.unexpected, Vec::<String>::new());
    // A config with one fewer decoder layer: the extra layer's keys are unexpected, by name.
    let mut c = tiny_config();
    c.dec_layers = 1;
    let e = ck.validate(&c).unwrap_err().to_string();
    assert!(e.contains("unexpected"), "{e}");
    assert!(e.contains("transformer.decoder.layers.1.norm3.bias"), "{e}");
    // Wrong LoRA rank.
    let mut c = tiny_config();
    c.lora_rank = 8;
    let e = ck.validate(&c).unwrap_err().to_string();
    assert!(
        e.contains("transformer.encoder.layers.0.linear1.lora_A: expected [8, 128]"),
        "{e}"
    );
}

#[test]
fn pth_order_is_the_state_dict_order() {
    let st = Checkpoint::load(&fixture("weights.safetensors")).unwrap();
    let pt = Checkpoint::load(&fixture("checkpoint.pth")).unwrap();
    assert_eq!(st.keys(), pt.keys());
    assert_eq!(st.keys()[0], "transformer.level_embed");
}

#[test]
fn folded_copy_round_trips_and_validates_without_lora() {
    let dir = tempfile::tempdir().unwrap();
    let pt = Checkpoint::load(&fixture("checkpoint.pth")).unwrap();
    let out = dir.path().join("folded.safetensors");
    pt.write_safetensors(&out).unwrap();
    let back = Checkpoint::load(&out).unwrap();
    assert_eq!(back.keys(), pt.keys());
    for k in pt.keys() {
        assert_eq!(back.get(k).unwrap(), pt.get(k).unwrap(), "{k}");
    }
    // No LoRA factors left: a merged checkpoint is valid for the same configuration.
    assert_eq!(back.lora().pairs, 0);
    back.validate(&tiny_config()).unwrap();
    assert_eq!(
        back.alias_target("bbox_embed.0.layers.0.weight"),
        Some("transformer.decoder.bbox_embed.0.layers.0.weight")
    );
}

/// A tensor to write: name, dtype, shape, little-endian bytes.
type Entry = (String, safetensors::Dtype, Vec<usize>, Vec<u8>);

/// The fixture's safetensors rewritten after `edit` changed its metadata or tensors.
fn rewritten(edit: impl FnOnce(&mut HashMap<String, String>, &mut Vec<Entry>)) -> Vec<u8> {
    use safetensors::{tensor::TensorView, SafeTensors};
    let bytes = std::fs::read(fixture("weights.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let (_, md) = SafeTensors::read_metadata(&bytes).unwrap();
    let mut meta = md.metadata().clone().unwrap_or_default();
    let mut entries: Vec<Entry> = md
        .offset_keys()
        .into_iter()
        .map(|k| {
            let v = st.tensor(&k).unwrap();
            (k, v.dtype(), v.shape().to_vec(), v.data().to_vec())
        })
        .collect();
    edit(&mut meta, &mut entries);
    let views = entries
        .iter()
        .map(|(k, dt, sh, b)| (k.clone(), TensorView::new(*dt, sh.clone(), b).unwrap()));
    safetensors::serialize(views, Some(meta)).unwrap()
}

#[test]
fn key_order_must_list_each_held_key_once() {
    // An extra tensor hidden by listing another key twice (the count still matches).
    let bytes = rewritten(|meta, entries| {
        entries.push((
            "evil.extra_head.weight".into(),
            safetensors::Dtype::F32,
            vec![1],
            vec![0; 4],
        ));
        let mut order: Vec<String> = serde_json::from_str(&meta["key_order"]).unwrap();
        order.insert(0, order[0].clone());
        meta.insert("key_order".into(), serde_json::to_string(&order).unwrap());
    });
    let e = Checkpoint::from_bytes(Path::new("dup.safetensors"), &bytes)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("dup.safetensors")
            && e.contains("key_order lists transformer.level_embed twice"),
        "{e}"
    );
    // Left out without a duplicate: the unlisted key is named.
    let bytes = rewritten(|_, entries| {
        entries.push((
            "evil.extra_head.weight".into(),
            safetensors::Dtype::F32,
            vec![1],
            vec![0; 4],
        ));
    });
    let e = Checkpoint::from_bytes(Path::new("extra.safetensors"), &bytes)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("leaves out 1 key(s)") && e.contains("evil.extra_head.weight"),
        "{e}"
    );
}

#[test]
fn int32_index_buffers_are_widened_to_int64() {
    let bytes = rewritten(|_, entries| {
        for (k, dt, _, b) in entries.iter_mut() {
            if k.ends_with("relative_position_index") {
                *dt = safetensors::Dtype::I32;
                *b = b
                    .chunks_exact(8)
                    .flat_map(|c| (i64::from_le_bytes(c.try_into().unwrap()) as i32).to_le_bytes())
                    .collect();
            }
        }
    });
    let ck = Checkpoint::from_bytes(Path::new("i32.safetensors"), &bytes).unwrap();
    let orig = Checkpoint::load(&fixture("weights.safetensors")).unwrap();
    let k = "backbone.0.layers.0.blocks.0.attn.relative_position_index";
    assert_eq!(
        ck.get(k).unwrap().i64s().unwrap(),
        orig.get(k).unwrap().i64s().unwrap()
    );
    ck.validate(&tiny_config()).unwrap();
}

#[test]
fn export_refused_while_building_leaves_no_out_dir() {
    use referdino::graph::engines::{ExportOptions, Geometry};
    // Index values that do not fit the window: validation passes (shape and kind are right), the
    // backbone refuses them while the graphs are built.
    let bytes = rewritten(|_, entries| {
        for (k, _, _, b) in entries.iter_mut() {
            if k == "backbone.0.layers.0.blocks.0.attn.relative_position_index" {
                b.fill(0);
            }
        }
    });
    let ck = Checkpoint::from_bytes(Path::new("bad-index.safetensors"), &bytes).unwrap();
    let cfg = tiny_config();
    ck.validate(&cfg).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let geo = Geometry {
        height: 64,
        width: 64,
        max_text: 10,
        window: 2,
    };
    let opts = ExportOptions {
        taps: false,
        decompose_custom_ops: false,
    };
    let e = referdino::graph::export::export_engines(&ck, &cfg, &geo, &opts, &out)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("relative_position_index does not match window"),
        "{e}"
    );
    assert!(!out.exists(), "{} left behind", out.display());
}

#[test]
fn a_checkpoint_of_another_model_is_reported_against_the_closest_config() {
    use referdino::cli::export::resolve_config;
    // Alone in its folder: no config.json to fall back on.
    let dir = tempfile::tempdir().unwrap();
    let w = dir.path().join("model.safetensors");
    std::fs::copy(fixture("weights.safetensors"), &w).unwrap();
    let ck = Checkpoint::load(&w).unwrap();
    let e = format!("{:#}", resolve_config(None, &ck).unwrap_err());
    assert!(
        e.contains("pass --config")
            && e.contains("Closest is official Swin-")
            && e.contains("missing")
            && e.contains("transformer.level_embed: expected [4, 256] float"),
        "{e}"
    );
    // A config.json beside it is picked up; when it does not parse, the message says it was used
    // because no official configuration matched.
    std::fs::write(dir.path().join("config.json"), r#"{"vocab_size": 30522}"#).unwrap();
    let e = format!("{:#}", resolve_config(None, &ck).unwrap_err());
    assert!(
        e.contains("config.json (next to it) was used") && e.contains("--config"),
        "{e}"
    );
}

/// A training checkpoint laid out as the official trainer saves one (`model_state_dict` beside
/// optimizer, scheduler and grad-scaler states, epochs, a numpy `best_mAP` and an
/// `argparse.Namespace`; `tests/fixtures/training-checkpoint/make.py` pickles them with Python's own
/// pickler as `torch.save` does): the weights load, exactly and in order, and nothing but the model's
/// tensors becomes an entry (the optimizer's tensors, the scheduler's `collections.Counter`, the numpy
/// scalar and the namespace are kept inert and skipped).
#[test]
fn a_training_checkpoint_with_python_objects_loads_its_model_weights() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/training-checkpoint/training.pth");
    let ck = Checkpoint::load(&p).unwrap();
    assert_eq!(
        ck.keys(),
        [
            "input_proj.0.weight",
            "input_proj.0.bias",
            "class_embed.bias"
        ]
    );
    let w = ck.get("input_proj.0.weight").unwrap();
    assert_eq!(w.shape(), [2, 3]);
    assert_eq!(w.f32s().unwrap(), [0.5, -1.0, 2.0, 0.25, 3.0, -0.125]);
    assert_eq!(
        ck.get("input_proj.0.bias").unwrap().f32s().unwrap(),
        [1.5, -2.5]
    );
    assert_eq!(
        ck.get("class_embed.bias").unwrap().f32s().unwrap(),
        [0.0, 7.0, -7.0]
    );
}
