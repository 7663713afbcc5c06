//! Model configuration: the official ReferDINO Swin-T / Swin-B configurations and any config file
//! (official `configs/*.yaml`, or a fixture `config.json` = an official config flattened plus
//! `tiny_overrides`).
//!
//! Official config files carry many training-only fields. Every field that appears in an official
//! `configs/*.yaml` is accepted silently; other unknown fields are named in one warning; a missing or
//! inconsistent required field is an error naming it.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::Path;

/// Default temporal window W in frames (every command that exports or runs engines).
pub const DEFAULT_WINDOW: usize = 36;
/// Default longest prompt in tokens the engines are exported for (special tokens included).
pub const DEFAULT_MAX_TEXT: usize = 32;
/// Default shorter side of the model input in pixels (the official evaluation resizes to 360).
pub const DEFAULT_SHORT_SIDE: u32 = 360;

/// Swin Transformer backbone sizes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SwinConfig {
    /// Channels of stage 0 (stage `i` has `embed_dim · 2^i`).
    pub embed_dim: usize,
    /// Blocks per stage.
    pub depths: Vec<usize>,
    /// Attention heads per stage.
    pub num_heads: Vec<usize>,
    /// Attention window side (7 for `*_224_*`, 12 for `*_384_*`).
    pub window_size: usize,
    /// Patch embedding stride/side (4).
    pub patch_size: usize,
    /// MLP hidden size / channels (4.0).
    pub mlp_ratio: f32,
}

impl SwinConfig {
    /// The size table of the official `build_swin_transformer` for a backbone name.
    pub fn from_backbone_name(name: &str) -> Result<Self> {
        let (embed_dim, depths, num_heads, window_size) = match name {
            "swin_T_224_1k" => (96, vec![2, 2, 6, 2], vec![3, 6, 12, 24], 7),
            "swin_B_224_22k" => (128, vec![2, 2, 18, 2], vec![4, 8, 16, 32], 7),
            "swin_B_384_22k" => (128, vec![2, 2, 18, 2], vec![4, 8, 16, 32], 12),
            "swin_L_224_22k" => (192, vec![2, 2, 18, 2], vec![6, 12, 24, 48], 7),
            "swin_L_384_22k" => (192, vec![2, 2, 18, 2], vec![6, 12, 24, 48], 12),
            other => {
                return Err(Error::Config(format!(
                    "field `backbone`: unknown backbone {other:?} (expected one of swin_T_224_1k, \
                     swin_B_224_22k, swin_B_384_22k, swin_L_224_22k, swin_L_384_22k)"
                )))
            }
        };
        Ok(SwinConfig {
            embed_dim,
            depths,
            num_heads,
            window_size,
            patch_size: 4,
            mlp_ratio: 4.0,
        })
    }

    /// Channels of each stage output (`embed_dim · 2^i`).
    pub fn stage_channels(&self) -> Vec<usize> {
        (0..self.depths.len())
            .map(|i| self.embed_dim << i)
            .collect()
    }
}

/// BERT text encoder sizes (HuggingFace `BertConfig` field names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BertConfig {
    /// WordPiece vocabulary size (30522 for bert-base-uncased).
    pub vocab_size: usize,
    /// Width of the encoder.
    pub hidden_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// FFN width.
    pub intermediate_size: usize,
    /// Rows of the position embedding table.
    pub max_position_embeddings: usize,
    /// Rows of the token-type embedding table.
    pub type_vocab_size: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f32,
}

impl BertConfig {
    /// `bert-base-uncased`.
    pub fn base_uncased() -> Self {
        BertConfig {
            vocab_size: 30522,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            layer_norm_eps: 1e-12,
        }
    }
}

/// The grounding-guided deformable mask decoder and its FPN (`SegHead` in the official configs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SegHeadConfig {
    /// Output channels of the FPN (`F_seg`).
    pub mask_dim: usize,
    /// Heads of the mask decoder attention.
    pub n_heads: usize,
    /// Deformable sampling points per head (1 level).
    pub n_points: usize,
    /// Mask decoder layers.
    pub n_layers: usize,
    /// Mask decoder FFN width: 1024 officially (class default), `mask_decoder_d_ffn` in tiny fixtures.
    pub d_ffn: usize,
}

/// Everything the inference network's shapes depend on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Official backbone name (e.g. `swin_T_224_1k`).
    pub backbone: String,
    /// Transformer width `d`.
    pub hidden_dim: usize,
    /// Heads of the deformable attention and decoder.
    pub nheads: usize,
    /// FFN width of encoder/decoder layers (text layers and fusion use half).
    pub dim_feedforward: usize,
    /// Encoder (feature enhancer) layers.
    pub enc_layers: usize,
    /// Decoder layers.
    pub dec_layers: usize,
    /// Decoder queries before pruning.
    pub num_queries: usize,
    /// Feature levels of the transformer (4).
    pub num_feature_levels: usize,
    /// Encoder deformable points per head and level.
    pub enc_n_points: usize,
    /// Decoder deformable points per head and level.
    pub dec_n_points: usize,
    /// Fraction of queries each decoder layer keeps (`ceil(n · query_decay)`).
    pub query_decay: f32,
    /// Text tokens kept after the tokenizer (256).
    pub max_text_len: usize,
    /// Temporal decoder blocks.
    pub temporal_layer: usize,
    /// Tracker memory momentum.
    pub tracking_alpha: f32,
    /// LoRA rank (scaling = 1 / rank).
    pub lora_rank: usize,
    /// Sine position embedding temperature (height).
    pub pe_temperature_h: f32,
    /// Sine position embedding temperature (width).
    pub pe_temperature_w: f32,
    /// FFN width of the temporal decoder's `nn.TransformerDecoderLayer` (2048 officially).
    pub temporal_dim_feedforward: usize,
    /// Whether the encoder linears carry LoRA factors (`enc_lora`).
    pub enc_lora: bool,
    /// Whether the decoder linears carry LoRA factors (`dec_lora`).
    pub dec_lora: bool,
    /// Mask decoder and FPN.
    pub seg_head: SegHeadConfig,
    /// Backbone sizes.
    pub swin: SwinConfig,
    /// Text encoder sizes.
    pub bert: BertConfig,
}

/// Top-level fields of the official `configs/*.yaml` files (training/eval only; accepted, unused).
const OFFICIAL_TOP_FIELDS: &[&str] = &[
    "lr",
    "weight_decay",
    "clip_max_norm",
    "enable_amp",
    "seed",
    "GroundingDINO",
    "set_cost_class",
    "set_cost_bbox",
    "set_cost_giou",
    "set_cost_mask",
    "set_cost_dice",
    "set_cost_proj",
    "cls_loss_coef",
    "bbox_loss_coef",
    "giou_loss_coef",
    "mask_loss_coef",
    "dice_loss_coef",
    "proj_loss_coef",
    "eos_coef",
    "dataset_name",
    "dataset_path",
    "num_frames",
    "output_dir",
    "num_workers",
    "binary",
    "wandb_mode",
    "eval_batch_size",
    "ann_file",
    "img_folder",
    "calculate_precision_and_iou_metrics",
    "dataset_coco_gt_format_path",
    "out_dir",
    "sampling_step",
    "use_random_sample",
    // Fixture-only additions (the fixture generator's bookkeeping).
    "device",
    "tiny_overrides",
    "base_official_config",
    "fixture",
];

/// Fields of the official `GroundingDINO:` section.
const OFFICIAL_GDINO_FIELDS: &[&str] = &[
    "backbone",
    "position_embedding",
    "pe_temperatureH",
    "pe_temperatureW",
    "return_interm_indices",
    "backbone_freeze_keywords",
    "enc_layers",
    "dec_layers",
    "pre_norm",
    "dim_feedforward",
    "hidden_dim",
    "dropout",
    "nheads",
    "num_queries",
    "query_dim",
    "num_patterns",
    "num_feature_levels",
    "enc_n_points",
    "dec_n_points",
    "two_stage_type",
    "two_stage_bbox_embed_share",
    "two_stage_class_embed_share",
    "transformer_activation",
    "dec_pred_bbox_embed_share",
    "dn_box_noise_scale",
    "dn_label_noise_ratio",
    "dn_label_coef",
    "dn_bbox_coef",
    "embed_init_tgt",
    "dn_labelbook_size",
    "max_text_len",
    "text_encoder_type",
    "use_text_enhancer",
    "use_fusion_layer",
    "use_checkpoint",
    "use_transformer_ckpt",
    "use_text_cross_attention",
    "text_dropout",
    "fusion_dropout",
    "fusion_droppath",
    "sub_sentence_present",
    "pretrained_path",
    "aux_loss",
    "full_tune",
    "query_decay",
    "dec_lora",
    "enc_lora",
    "lora_rank",
    "temporal_layer",
    "tracking_alpha",
    "SegHead",
];

/// Fields of the official `SegHead:` section.
const OFFICIAL_SEGHEAD_FIELDS: &[&str] = &[
    "mask_dim",
    "n_heads",
    "n_points",
    "dropout",
    "n_layers",
    "use_self_attention",
    "use_text_cross_attention",
];

/// Fields of `tiny_overrides`.
const TINY_FIELDS: &[&str] = &[
    "swin",
    "bert",
    "temporal_dim_feedforward",
    "mask_decoder_d_ffn",
];

/// Replaces the official `{k: {value: v, desc: ...}}` wrapping by `{k: v}`, recursively.
fn unwrap_values(v: Value) -> Value {
    match v {
        Value::Object(map) => {
            let wrapped =
                map.contains_key("value") && map.keys().all(|k| k == "value" || k == "desc");
            if wrapped {
                let inner = map.into_iter().find(|(k, _)| k == "value").map(|(_, v)| v);
                unwrap_values(inner.unwrap_or(Value::Null))
            } else {
                Value::Object(
                    map.into_iter()
                        .map(|(k, v)| (k, unwrap_values(v)))
                        .collect(),
                )
            }
        }
        other => other,
    }
}

fn warn_unknown(
    map: &Map<String, Value>,
    known: &[&str],
    section: &str,
    unknown: &mut Vec<String>,
) {
    for k in map.keys() {
        if !known.contains(&k.as_str()) {
            unknown.push(format!("{section}{k}"));
        }
    }
}

/// Typed access to one section of a config with field paths in errors.
struct Section<'a> {
    map: &'a Map<String, Value>,
    path: &'a str,
}

impl<'a> Section<'a> {
    fn name(&self, key: &str) -> String {
        format!("{}{}", self.path, key)
    }

    fn get(&self, key: &str) -> Result<&'a Value> {
        self.map
            .get(key)
            .ok_or_else(|| Error::Config(format!("missing required field `{}`", self.name(key))))
    }

    fn number(&self, key: &str) -> Result<f64> {
        let v = self.get(key)?;
        let n = match v {
            Value::Number(n) => n.as_f64(),
            // YAML 1.1 reads `5e-5` as a string; accept numeric strings.
            Value::String(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        };
        n.filter(|x| x.is_finite()).ok_or_else(|| {
            Error::Config(format!(
                "field `{}` must be a number, found {v}",
                self.name(key)
            ))
        })
    }

    fn usize(&self, key: &str) -> Result<usize> {
        let x = self.number(key)?;
        if x < 0.0 || x.fract() != 0.0 || x > u32::MAX as f64 {
            return Err(Error::Config(format!(
                "field `{}` must be a non-negative integer, found {x}",
                self.name(key)
            )));
        }
        Ok(x as usize)
    }

    fn f32(&self, key: &str) -> Result<f32> {
        Ok(self.number(key)? as f32)
    }

    /// An optional field with the official class default (`GroundingDINO.__init__`), logged when
    /// used: `configs/jhmdb_swint.yaml` omits `temporal_layer` and `tracking_alpha`.
    fn usize_or(&self, key: &str, default: usize) -> Result<usize> {
        if self.map.contains_key(key) {
            return self.usize(key);
        }
        log::warn!(
            "config: `{}` not given; using the official default {default}",
            self.name(key)
        );
        Ok(default)
    }

    fn f32_or(&self, key: &str, default: f32) -> Result<f32> {
        if self.map.contains_key(key) {
            return self.f32(key);
        }
        log::warn!(
            "config: `{}` not given; using the official default {default}",
            self.name(key)
        );
        Ok(default)
    }

    fn string(&self, key: &str) -> Result<String> {
        match self.get(key)? {
            Value::String(s) => Ok(s.clone()),
            v => Err(Error::Config(format!(
                "field `{}` must be a string, found {v}",
                self.name(key)
            ))),
        }
    }

    fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.map.get(key) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(Error::Config(format!(
                "field `{}` must be true or false, found {v}",
                self.name(key)
            ))),
        }
    }

    fn usize_list(&self, key: &str) -> Result<Vec<usize>> {
        let v = self.get(key)?;
        let arr = v.as_array().ok_or_else(|| {
            Error::Config(format!(
                "field `{}` must be a list, found {v}",
                self.name(key)
            ))
        })?;
        arr.iter()
            .map(|x| {
                x.as_u64().map(|u| u as usize).ok_or_else(|| {
                    Error::Config(format!(
                        "field `{}` must hold non-negative integers, found {x}",
                        self.name(key)
                    ))
                })
            })
            .collect()
    }

    fn section(&self, key: &str, path: &'a str) -> Result<Section<'a>> {
        match self.get(key)? {
            Value::Object(map) => Ok(Section { map, path }),
            v => Err(Error::Config(format!(
                "field `{}` must be a mapping, found {v}",
                self.name(key)
            ))),
        }
    }
}

impl ModelConfig {
    /// The official ReferDINO Swin-T video configuration (`configs/ytvos_swint.yaml`).
    pub fn swin_t() -> Self {
        Self::official("swin_T_224_1k").expect("known backbone")
    }

    /// The official ReferDINO Swin-B video configuration (`configs/ytvos_swinb.yaml`).
    pub fn swin_b() -> Self {
        Self::official("swin_B_384_22k").expect("known backbone")
    }

    fn official(backbone: &str) -> Result<Self> {
        Ok(ModelConfig {
            backbone: backbone.to_string(),
            hidden_dim: 256,
            nheads: 8,
            dim_feedforward: 2048,
            enc_layers: 6,
            dec_layers: 6,
            num_queries: 900,
            num_feature_levels: 4,
            enc_n_points: 4,
            dec_n_points: 4,
            query_decay: 0.5,
            max_text_len: 256,
            temporal_layer: 3,
            tracking_alpha: 0.1,
            lora_rank: 32,
            pe_temperature_h: 20.0,
            pe_temperature_w: 20.0,
            temporal_dim_feedforward: 2048,
            enc_lora: true,
            dec_lora: true,
            seg_head: SegHeadConfig {
                mask_dim: 256,
                n_heads: 8,
                n_points: 16,
                n_layers: 3,
                d_ffn: 1024,
            },
            swin: SwinConfig::from_backbone_name(backbone)?,
            bert: BertConfig::base_uncased(),
        })
    }

    /// Loads a config file: `.json` (a fixture config or a flattened official config) or
    /// `.yaml`/`.yml` (official `configs/*.yaml`, with the `{k: {value: v}}` or the plain layout).
    /// The file is validated before it is returned.
    pub fn from_file(p: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
        let ext = p
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or("")
            .to_ascii_lowercase();
        let value: Value = match ext.as_str() {
            "json" => serde_json::from_str(&text)
                .map_err(|e| Error::Config(format!("{}: invalid JSON: {e}", p.display())))?,
            "yaml" | "yml" => serde_yaml::from_str(&text)
                .map_err(|e| Error::Config(format!("{}: invalid YAML: {e}", p.display())))?,
            other => {
                return Err(Error::Config(format!(
                    "{}: unsupported config extension {other:?} (expected .json, .yaml or .yml)",
                    p.display()
                )))
            }
        };
        Self::from_value(value).map_err(|e| match e {
            Error::Config(m) => Error::Config(format!("{}: {m}", p.display())),
            e => e,
        })
    }

    /// Builds a config from an already parsed official/fixture document.
    pub fn from_value(value: Value) -> Result<Self> {
        Self::from_value_reporting(value).map(|(c, _)| c)
    }

    /// [`ModelConfig::from_value`] that also returns the unknown fields it warned about (dotted
    /// paths), so callers and tests can act on them.
    pub fn from_value_reporting(value: Value) -> Result<(Self, Vec<String>)> {
        let value = unwrap_values(value);
        let root = match &value {
            Value::Object(m) => m,
            v => {
                return Err(Error::Config(format!(
                    "the document must be a mapping of fields, found {v}"
                )))
            }
        };
        let mut unknown = Vec::new();
        // Official files nest the model under `GroundingDINO`; accept a bare model section too.
        let (g, gpath): (&Map<String, Value>, &str) = match root.get("GroundingDINO") {
            Some(Value::Object(m)) => {
                warn_unknown(root, OFFICIAL_TOP_FIELDS, "", &mut unknown);
                (m, "GroundingDINO.")
            }
            Some(v) => {
                return Err(Error::Config(format!(
                    "field `GroundingDINO` must be a mapping, found {v}"
                )))
            }
            None => {
                let known: Vec<&str> = OFFICIAL_TOP_FIELDS
                    .iter()
                    .chain(OFFICIAL_GDINO_FIELDS)
                    .copied()
                    .collect();
                warn_unknown(root, &known, "", &mut unknown);
                (root, "")
            }
        };
        if !gpath.is_empty() {
            warn_unknown(g, OFFICIAL_GDINO_FIELDS, gpath, &mut unknown);
        }
        let gs = Section {
            map: g,
            path: gpath,
        };
        let seg_path = format!("{gpath}SegHead.");
        let seg = gs.section("SegHead", &seg_path)?;
        warn_unknown(seg.map, OFFICIAL_SEGHEAD_FIELDS, &seg_path, &mut unknown);

        let backbone = gs.string("backbone")?;
        let mut swin = SwinConfig::from_backbone_name(&backbone).map_err(|e| {
            Error::Config(format!(
                "{gpath}{}",
                e.to_string().trim_start_matches("config: ")
            ))
        })?;
        let text_encoder = match g.get("text_encoder_type") {
            None => "bert-base-uncased".to_string(),
            Some(_) => gs.string("text_encoder_type")?,
        };
        let mut bert = match text_encoder.as_str() {
            "bert-base-uncased" => BertConfig::base_uncased(),
            other => {
                return Err(Error::Config(format!(
                    "field `{gpath}text_encoder_type`: unsupported text encoder {other:?} (only bert-base-uncased)"
                )))
            }
        };
        let mut temporal_dim_feedforward = 2048;
        let mut mask_d_ffn = 1024;

        let tiny_path = "tiny_overrides.";
        if let Some(t) = root.get("tiny_overrides") {
            let tmap = t.as_object().ok_or_else(|| {
                Error::Config(format!(
                    "field `tiny_overrides` must be a mapping, found {t}"
                ))
            })?;
            warn_unknown(tmap, TINY_FIELDS, tiny_path, &mut unknown);
            let ts = Section {
                map: tmap,
                path: tiny_path,
            };
            if tmap.contains_key("swin") {
                let s = ts.section("swin", "tiny_overrides.swin.")?;
                for k in s.map.keys() {
                    match k.as_str() {
                        "embed_dim" => swin.embed_dim = s.usize(k)?,
                        "depths" => swin.depths = s.usize_list(k)?,
                        "num_heads" => swin.num_heads = s.usize_list(k)?,
                        "window_size" => swin.window_size = s.usize(k)?,
                        "patch_size" => swin.patch_size = s.usize(k)?,
                        "mlp_ratio" => swin.mlp_ratio = s.f32(k)?,
                        _ => unknown.push(format!("tiny_overrides.swin.{k}")),
                    }
                }
            }
            if tmap.contains_key("bert") {
                let b = ts.section("bert", "tiny_overrides.bert.")?;
                for k in b.map.keys() {
                    match k.as_str() {
                        "vocab_size" => bert.vocab_size = b.usize(k)?,
                        "hidden_size" => bert.hidden_size = b.usize(k)?,
                        "num_hidden_layers" => bert.num_hidden_layers = b.usize(k)?,
                        "num_attention_heads" => bert.num_attention_heads = b.usize(k)?,
                        "intermediate_size" => bert.intermediate_size = b.usize(k)?,
                        "max_position_embeddings" => bert.max_position_embeddings = b.usize(k)?,
                        "type_vocab_size" => bert.type_vocab_size = b.usize(k)?,
                        "layer_norm_eps" => bert.layer_norm_eps = b.f32(k)?,
                        "hidden_act" => {
                            let act = b.string(k)?;
                            if act != "gelu" {
                                return Err(Error::Config(format!(
                                    "field `tiny_overrides.bert.hidden_act`: only \"gelu\" is supported, found {act:?}"
                                )));
                            }
                        }
                        "pad_token_id" => {
                            b.usize(k)?;
                        }
                        _ => unknown.push(format!("tiny_overrides.bert.{k}")),
                    }
                }
            }
            if tmap.contains_key("temporal_dim_feedforward") {
                temporal_dim_feedforward = ts.usize("temporal_dim_feedforward")?;
            }
            if tmap.contains_key("mask_decoder_d_ffn") {
                mask_d_ffn = ts.usize("mask_decoder_d_ffn")?;
            }
        }

        if !unknown.is_empty() {
            log::warn!(
                "config: ignoring {} unknown field(s): {}",
                unknown.len(),
                unknown.join(", ")
            );
        }

        // Inference-relevant switches that have only one supported value.
        let expect_str = |key: &str, want: &str| -> Result<()> {
            if let Some(v) = g.get(key) {
                if v.as_str() != Some(want) {
                    return Err(Error::Config(format!(
                        "field `{gpath}{key}`: only {want:?} is supported, found {v}"
                    )));
                }
            }
            Ok(())
        };
        expect_str("two_stage_type", "standard")?;
        expect_str("transformer_activation", "relu")?;
        expect_str("position_embedding", "sine")?;
        if let Some(v) = g.get("query_dim") {
            if v.as_u64() != Some(4) {
                return Err(Error::Config(format!(
                    "field `{gpath}query_dim`: only 4 (boxes) is supported, found {v}"
                )));
            }
        }

        let cfg = ModelConfig {
            backbone,
            hidden_dim: gs.usize("hidden_dim")?,
            nheads: gs.usize("nheads")?,
            dim_feedforward: gs.usize("dim_feedforward")?,
            enc_layers: gs.usize("enc_layers")?,
            dec_layers: gs.usize("dec_layers")?,
            num_queries: gs.usize("num_queries")?,
            num_feature_levels: gs.usize("num_feature_levels")?,
            enc_n_points: gs.usize("enc_n_points")?,
            dec_n_points: gs.usize("dec_n_points")?,
            query_decay: gs.f32("query_decay")?,
            max_text_len: gs.usize("max_text_len")?,
            temporal_layer: gs.usize_or("temporal_layer", 3)?,
            tracking_alpha: gs.f32_or("tracking_alpha", 0.1)?,
            lora_rank: gs.usize("lora_rank")?,
            pe_temperature_h: gs.f32("pe_temperatureH")?,
            pe_temperature_w: gs.f32("pe_temperatureW")?,
            temporal_dim_feedforward,
            enc_lora: gs.bool_or("enc_lora", true)?,
            dec_lora: gs.bool_or("dec_lora", true)?,
            seg_head: SegHeadConfig {
                mask_dim: seg.usize("mask_dim")?,
                n_heads: seg.usize("n_heads")?,
                n_points: seg.usize("n_points")?,
                n_layers: seg.usize("n_layers")?,
                d_ffn: mask_d_ffn,
            },
            swin,
            bert,
        };
        cfg.validate()?;
        Ok((cfg, unknown))
    }

    /// Checks that the sizes are consistent with each other (every divisibility the official modules
    /// need). The error names the first inconsistent field.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, why: String| Err(Error::Config(format!("field `{field}`: {why}")));
        let positive = [
            ("hidden_dim", self.hidden_dim),
            ("nheads", self.nheads),
            ("dim_feedforward", self.dim_feedforward),
            ("enc_layers", self.enc_layers),
            ("dec_layers", self.dec_layers),
            ("num_queries", self.num_queries),
            ("num_feature_levels", self.num_feature_levels),
            ("enc_n_points", self.enc_n_points),
            ("dec_n_points", self.dec_n_points),
            ("max_text_len", self.max_text_len),
            ("temporal_layer", self.temporal_layer),
            ("temporal_dim_feedforward", self.temporal_dim_feedforward),
            ("SegHead.mask_dim", self.seg_head.mask_dim),
            ("SegHead.n_heads", self.seg_head.n_heads),
            ("SegHead.n_points", self.seg_head.n_points),
            ("SegHead.n_layers", self.seg_head.n_layers),
            ("mask_decoder_d_ffn", self.seg_head.d_ffn),
            ("swin.embed_dim", self.swin.embed_dim),
            ("swin.window_size", self.swin.window_size),
            ("swin.patch_size", self.swin.patch_size),
            ("bert.vocab_size", self.bert.vocab_size),
            ("bert.hidden_size", self.bert.hidden_size),
            ("bert.num_hidden_layers", self.bert.num_hidden_layers),
            ("bert.num_attention_heads", self.bert.num_attention_heads),
            ("bert.intermediate_size", self.bert.intermediate_size),
            (
                "bert.max_position_embeddings",
                self.bert.max_position_embeddings,
            ),
            ("bert.type_vocab_size", self.bert.type_vocab_size),
        ];
        for (name, v) in positive {
            if v == 0 {
                return bad(name, "must be greater than 0".into());
            }
        }
        let d = self.hidden_dim;
        if !d.is_multiple_of(self.nheads) {
            return bad(
                "hidden_dim",
                format!("{d} is not divisible by nheads = {}", self.nheads),
            );
        }
        if !self.nheads.is_multiple_of(2) || !d.is_multiple_of(self.nheads / 2) {
            return bad(
                "nheads",
                format!("text layers use nheads/2 heads: nheads = {} must be even and nheads/2 must divide hidden_dim = {d}", self.nheads),
            );
        }
        let fusion = self.dim_feedforward / 2;
        if !self.dim_feedforward.is_multiple_of(2) || !fusion.is_multiple_of(self.nheads / 2) {
            return bad(
                "dim_feedforward",
                format!(
                    "the fusion layers use dim_feedforward/2 wide attention with nheads/2 heads: {} does not fit",
                    self.dim_feedforward
                ),
            );
        }
        if !d.is_multiple_of(32) {
            return bad(
                "hidden_dim",
                format!("{d} must be a multiple of 32 (GroupNorm(32) in input_proj)"),
            );
        }
        // The FPN narrows d down to d/16 channels with GroupNorm(8, ·).
        if !d.is_multiple_of(128) {
            return bad(
                "hidden_dim",
                format!("{d} must be a multiple of 128 (the FPN's GroupNorm(8, hidden_dim/16))"),
            );
        }
        if !d.is_multiple_of(self.seg_head.n_heads) {
            return bad(
                "SegHead.n_heads",
                format!("{} does not divide hidden_dim = {d}", self.seg_head.n_heads),
            );
        }
        if !(self.query_decay > 0.0 && self.query_decay <= 1.0) {
            return bad(
                "query_decay",
                format!("must be in (0, 1], found {}", self.query_decay),
            );
        }
        if !(self.tracking_alpha >= 0.0 && self.tracking_alpha <= 1.0) {
            return bad(
                "tracking_alpha",
                format!("must be in [0, 1], found {}", self.tracking_alpha),
            );
        }
        if (self.enc_lora || self.dec_lora) && self.lora_rank == 0 {
            return bad(
                "lora_rank",
                "must be greater than 0 when enc_lora or dec_lora is set".into(),
            );
        }
        if self.pe_temperature_h.is_nan()
            || self.pe_temperature_w.is_nan()
            || self.pe_temperature_h <= 0.0
            || self.pe_temperature_w <= 0.0
        {
            return bad("pe_temperatureH", "temperatures must be positive".into());
        }
        let s = &self.swin;
        if s.depths.len() != 4 || s.num_heads.len() != 4 {
            return bad(
                "swin.depths",
                format!(
                    "the backbone has 4 stages: depths {:?} and num_heads {:?} must both have 4 entries",
                    s.depths, s.num_heads
                ),
            );
        }
        for (i, (&c, &h)) in s.stage_channels().iter().zip(&s.num_heads).enumerate() {
            if h == 0 || c % h != 0 {
                return bad(
                    "swin.num_heads",
                    format!("stage {i}: {h} heads do not divide {c} channels"),
                );
            }
            if s.depths[i] == 0 {
                return bad("swin.depths", format!("stage {i} has no blocks"));
            }
        }
        if self.num_feature_levels < 3 {
            return bad(
                "num_feature_levels",
                format!(
                    "{} < 3: the model uses the last three Swin stages",
                    self.num_feature_levels
                ),
            );
        }
        let b = &self.bert;
        if !b.hidden_size.is_multiple_of(b.num_attention_heads) {
            return bad(
                "bert.hidden_size",
                format!(
                    "{} is not divisible by num_attention_heads = {}",
                    b.hidden_size, b.num_attention_heads
                ),
            );
        }
        if self.max_text_len > b.max_position_embeddings {
            return bad(
                "max_text_len",
                format!(
                    "{} exceeds bert.max_position_embeddings = {}",
                    self.max_text_len, b.max_position_embeddings
                ),
            );
        }
        if b.layer_norm_eps.is_nan() || b.layer_norm_eps <= 0.0 {
            return bad("bert.layer_norm_eps", "must be positive".into());
        }
        Ok(())
    }

    /// Queries alive at the input of each decoder layer and after the last one:
    /// `[num_queries, ceil(num_queries · decay), …]`, `dec_layers + 1` entries
    /// (official: 900, 450, 225, 113, 57, 29, 15).
    pub fn queries_per_layer(&self) -> Vec<usize> {
        let mut out = vec![self.num_queries];
        out.extend(keep_schedule(
            self.num_queries,
            self.query_decay_f64(),
            self.dec_layers,
        ));
        out
    }

    /// `query_decay` as the decimal the config wrote. The official code multiplies by a Python float
    /// (double), so 0.7 must mean 0.7, not the f32 nearest to it widened to f64.
    pub fn query_decay_f64(&self) -> f64 {
        format!("{}", self.query_decay)
            .parse()
            .unwrap_or(self.query_decay as f64)
    }

    /// LoRA scaling applied when folding (`lora_alpha / r` with loralib's `lora_alpha = 1`).
    pub fn lora_scaling(&self) -> f32 {
        1.0 / self.lora_rank.max(1) as f32
    }

    /// A short human label: `swin-t`, `swin-b`, or `custom (<backbone>, d=<hidden>)`.
    pub fn label(&self) -> String {
        if *self == Self::swin_t() {
            "official Swin-T (ytvos_swint)".into()
        } else if *self == Self::swin_b() {
            "official Swin-B (ytvos_swinb)".into()
        } else {
            format!(
                "custom ({}, embed {}, d {}, enc/dec {}/{}, queries {})",
                self.backbone,
                self.swin.embed_dim,
                self.hidden_dim,
                self.enc_layers,
                self.dec_layers,
                self.num_queries
            )
        }
    }
}

/// Queries kept after each of `layers` decoder layers when `n` enter the first: `ceil(n · decay)` per
/// layer. The one implementation of the pruning schedule (the graph's decoder and the config both use it).
pub fn keep_schedule(n: usize, decay: f64, layers: usize) -> Vec<usize> {
    let mut out = Vec::with_capacity(layers);
    let mut cur = n;
    for _ in 0..layers {
        cur = (cur as f64 * decay).ceil() as usize;
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_query_schedule() {
        assert_eq!(
            ModelConfig::swin_t().queries_per_layer(),
            vec![900, 450, 225, 113, 57, 29, 15]
        );
    }

    #[test]
    fn official_configs_validate() {
        ModelConfig::swin_t().validate().unwrap();
        ModelConfig::swin_b().validate().unwrap();
        assert_eq!(ModelConfig::swin_b().swin.window_size, 12);
        assert_eq!(
            ModelConfig::swin_t().swin.stage_channels(),
            vec![96, 192, 384, 768]
        );
    }

    #[test]
    fn unwraps_value_layout() {
        let v: Value = serde_json::json!({"a": {"desc": "x", "value": {"b": {"value": 3}}}, "c": {"value": 1, "other": 2}});
        let u = unwrap_values(v);
        assert_eq!(
            u,
            serde_json::json!({"a": {"b": 3}, "c": {"value": 1, "other": 2}})
        );
    }
}
