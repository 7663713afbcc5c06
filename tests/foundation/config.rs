//! Config files: official YAML layouts, fixture JSON, unknown and bad fields.

use referdino::config::ModelConfig;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// An official config in the `{k: {value: v}}` layout (field names and values of
/// iSEE-Laboratory/ReferDINO configs/ytvos_swint.yaml, abridged to the model section plus a few
/// training fields).
const OFFICIAL_SWINT_YAML: &str = r#"
lr:
  desc: main model learning rate
  value: 5e-5
num_frames:
  value: 6
GroundingDINO:
  desc: "the parameter of GroundingDINO"
  value:
    backbone: "swin_T_224_1k"
    position_embedding: "sine"
    pe_temperatureH: 20
    pe_temperatureW: 20
    return_interm_indices: [0, 1, 2, 3]
    backbone_freeze_keywords: None
    enc_layers: 6
    dec_layers: 6
    pre_norm: false
    dim_feedforward: 2048
    hidden_dim: 256
    dropout: 0.0
    nheads: 8
    num_queries: 900
    query_dim: 4
    num_patterns: 0
    num_feature_levels: 4
    enc_n_points: 4
    dec_n_points: 4
    two_stage_type: "standard"
    transformer_activation: "relu"
    max_text_len: 256
    text_encoder_type: "bert-base-uncased"
    query_decay: 0.5
    dec_lora: true
    enc_lora: true
    lora_rank: 32
    temporal_layer: 3
    tracking_alpha: 0.1
    SegHead:
      mask_dim: 256
      n_heads: 8
      n_points: 16
      dropout: 0.0
      n_layers: 3
      use_self_attention: true
      use_text_cross_attention: true
eval_batch_size:
  value: 1
"#;

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn official_yaml_equals_builtin_swin_t() {
    let dir = tempfile::tempdir().unwrap();
    let c = ModelConfig::from_file(&write(&dir, "ytvos_swint.yaml", OFFICIAL_SWINT_YAML)).unwrap();
    assert_eq!(c, ModelConfig::swin_t());
    let b = OFFICIAL_SWINT_YAML.replace("swin_T_224_1k", "swin_B_384_22k");
    let c = ModelConfig::from_file(&write(&dir, "ytvos_swinb.yaml", &b)).unwrap();
    assert_eq!(c, ModelConfig::swin_b());
}

#[test]
fn plain_yaml_layout_is_accepted() {
    // The same without the {value: …} wrapping.
    let dir = tempfile::tempdir().unwrap();
    let plain: serde_json::Value = serde_yaml::from_str(OFFICIAL_SWINT_YAML).unwrap();
    let mut g = plain["GroundingDINO"]["value"].clone();
    g["backbone"] = "swin_B_384_22k".into();
    let doc = serde_json::json!({ "GroundingDINO": g, "lr": "5e-5" });
    let c = ModelConfig::from_file(&write(
        &dir,
        "plain.yml",
        &serde_yaml::to_string(&doc).unwrap(),
    ))
    .unwrap();
    assert_eq!(c, ModelConfig::swin_b());
    // And a flattened JSON without the GroundingDINO nesting.
    let c = ModelConfig::from_file(&write(
        &dir,
        "flat.json",
        &serde_json::to_string(&g).unwrap(),
    ))
    .unwrap();
    assert_eq!(c, ModelConfig::swin_b());
}

#[test]
fn temporal_fields_default_like_the_official_class() {
    // configs/jhmdb_swint.yaml omits temporal_layer and tracking_alpha; GroundingDINO's defaults are 3, 0.1.
    let dir = tempfile::tempdir().unwrap();
    let y = OFFICIAL_SWINT_YAML
        .replace("    temporal_layer: 3\n", "")
        .replace("    tracking_alpha: 0.1\n", "");
    assert_eq!(
        ModelConfig::from_file(&write(&dir, "jhmdb.yaml", &y)).unwrap(),
        ModelConfig::swin_t()
    );
}

#[test]
fn fixture_config_loads() {
    let c = ModelConfig::from_file(&fixture("referdino-tiny/config.json")).unwrap();
    assert_eq!(c.hidden_dim, 128);
    assert_eq!(c.queries_per_layer(), vec![50, 25, 13]);
}

#[test]
fn missing_and_inconsistent_fields_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let e = ModelConfig::from_file(&write(
        &dir,
        "a.yaml",
        &OFFICIAL_SWINT_YAML.replace("    hidden_dim: 256\n", ""),
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("missing required field `GroundingDINO.hidden_dim`"),
        "{e}"
    );
    let e = ModelConfig::from_file(&write(
        &dir,
        "b.yaml",
        &OFFICIAL_SWINT_YAML.replace("nheads: 8", "nheads: 7"),
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("hidden_dim") && e.contains("nheads = 7"), "{e}");
    let e = ModelConfig::from_file(&write(
        &dir,
        "c.yaml",
        &OFFICIAL_SWINT_YAML.replace("query_decay: 0.5", "query_decay: 1.5"),
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("query_decay"), "{e}");
    let e = ModelConfig::from_file(&write(
        &dir,
        "d.yaml",
        &OFFICIAL_SWINT_YAML.replace("num_queries: 900", "num_queries: \"many\""),
    ))
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("`GroundingDINO.num_queries` must be a number"),
        "{e}"
    );
    let e = ModelConfig::from_file(&write(
        &dir,
        "e.yaml",
        &OFFICIAL_SWINT_YAML.replace("swin_T_224_1k", "resnet50"),
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("backbone") && e.contains("resnet50"), "{e}");
    let e = ModelConfig::from_file(&write(&dir, "f.yaml", "GroundingDINO: [1, 2]"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("GroundingDINO"), "{e}");
    let e = ModelConfig::from_file(&write(&dir, "g.yaml", "a: [unclosed"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("invalid YAML"), "{e}");
    let e = ModelConfig::from_file(&write(&dir, "h.toml", ""))
        .unwrap_err()
        .to_string();
    assert!(e.contains("unsupported config extension"), "{e}");
    let mut c = ModelConfig::swin_t();
    c.swin.depths = vec![2, 2, 6];
    assert!(c
        .validate()
        .unwrap_err()
        .to_string()
        .contains("swin.depths"));
}

#[test]
fn unknown_fields_are_accepted() {
    // Unknown fields only warn (named in the log); the config still loads.
    let dir = tempfile::tempdir().unwrap();
    let y = OFFICIAL_SWINT_YAML.replace(
        "eval_batch_size:",
        "my_new_knob:\n  value: 3\neval_batch_size:",
    );
    assert_eq!(
        ModelConfig::from_file(&write(&dir, "u.yaml", &y)).unwrap(),
        ModelConfig::swin_t()
    );
    // They are reported by name; the official training fields are not.
    let y = y.replace(
        "    lora_rank: 32\n",
        "    lora_rank: 32\n    fancy_new_head: true\n",
    );
    let v: serde_json::Value = serde_yaml::from_str(&y).unwrap();
    let (_, unknown) = ModelConfig::from_value_reporting(v).unwrap();
    assert_eq!(
        unknown,
        vec![
            "my_new_knob".to_string(),
            "GroundingDINO.fancy_new_head".to_string()
        ]
    );
    // The fixture config (official fields + tiny_overrides + generator bookkeeping) has none.
    let v: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("referdino-tiny/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        ModelConfig::from_value_reporting(v).unwrap().1,
        Vec::<String>::new()
    );
}
