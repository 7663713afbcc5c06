//! The official state-dict key map of a [`ModelConfig`]: every key the official `model.state_dict()`
//! holds, its shape, and whether it is a LoRA factor or an alias of another key (shared modules).
//!
//! The graph is the source of truth for what inference reads: [`crate::graph::engines::declared_weights`]
//! lists every tensor with the shape its call site declares. This file adds only what the graph cannot
//! say: the LoRA factors of the Linear layers the official model wraps (inference sees them folded), the
//! names under which shared modules are stored again, and the keys only training uses.

use crate::config::ModelConfig;
use crate::error::Result;
use crate::tensor::DType;

/// Kind of values a key holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A float parameter.
    Float,
    /// An integer buffer (Swin `relative_position_index`).
    Int,
}

/// One expected state-dict entry.
#[derive(Debug, Clone, PartialEq)]
pub struct Expected {
    /// Official key.
    pub key: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Float parameter or integer buffer.
    pub kind: Kind,
    /// `lora_A` / `lora_B` factor (absent from checkpoints whose LoRA was already merged).
    pub lora_factor: bool,
    /// The key this one repeats (shared module), if any.
    pub alias_of: Option<String>,
}

/// Linear layers the official model wraps with LoRA when `enc_lora` (under `transformer.encoder.`) or
/// `dec_lora` (under `transformer.decoder.`) is set, by their last name component: the deformable
/// attention projections, the FFNs and the fusion projections (never `nn.MultiheadAttention`'s
/// `out_proj`), plus the decoder's `ref_point_head` MLP.
const LORA_LINEARS: &[&str] = &[
    "sampling_offsets",
    "attention_weights",
    "value_proj",
    "output_proj",
    "linear1",
    "linear2",
    "v_proj",
    "l_proj",
    "values_v_proj",
    "values_l_proj",
    "out_v_proj",
    "out_l_proj",
];

/// Whether the Linear weight `key` carries LoRA factors in an official checkpoint of `cfg`.
fn has_lora(cfg: &ModelConfig, key: &str) -> bool {
    let Some(base) = key.strip_suffix(".weight") else {
        return false;
    };
    let enc = cfg.enc_lora && base.starts_with("transformer.encoder.");
    let dec = cfg.dec_lora && base.starts_with("transformer.decoder.");
    let last = base.rsplit('.').next().unwrap_or("");
    ((enc || dec) && LORA_LINEARS.contains(&last))
        || (dec && base.starts_with("transformer.decoder.ref_point_head.layers."))
}

/// Shared modules stored under several names: (the name the graph's keys are mapped to, the other
/// names). Prefixes end with a dot.
fn alias_groups(cfg: &ModelConfig) -> Vec<(String, Vec<String>)> {
    let dl = cfg.dec_layers;
    let bbox = "transformer.decoder.bbox_embed.0.".to_string();
    let mut bbox_names: Vec<String> = (1..dl)
        .map(|i| format!("transformer.decoder.bbox_embed.{i}."))
        .collect();
    bbox_names.extend((0..dl).map(|i| format!("bbox_embed.{i}.")));
    vec![
        (bbox, bbox_names),
        (
            "transformer.decoder.ref_point_head.".into(),
            vec!["ref_point_head.".into()],
        ),
        (
            "temporal_decoder.0.".into(),
            (1..dl).map(|i| format!("temporal_decoder.{i}.")).collect(),
        ),
    ]
}

/// Keys of the official checkpoint that only training reads, with their shapes (see
/// [`unused_at_inference`]).
fn training_only(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let hb = cfg.bert.hidden_size;
    vec![
        ("bert.pooler.dense.weight".into(), vec![hb, hb]),
        ("bert.pooler.dense.bias".into(), vec![hb]),
    ]
}

fn float(key: String, shape: Vec<usize>, lora_factor: bool) -> Expected {
    Expected {
        key,
        shape,
        kind: Kind::Float,
        lora_factor,
        alias_of: None,
    }
}

/// Every key of the official `model.state_dict()` for this configuration (aliases included, LoRA factors
/// flagged): the graph's declarations, then the keys only training reads, then the aliases.
pub fn expected_keys(cfg: &ModelConfig) -> Result<Vec<Expected>> {
    let groups = alias_groups(cfg);
    let canonical = |key: &str| -> String {
        for (to, names) in &groups {
            for n in names {
                if let Some(rest) = key.strip_prefix(n.as_str()) {
                    return format!("{to}{rest}");
                }
            }
        }
        key.to_string()
    };
    let mut out: Vec<Expected> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for d in crate::graph::engines::declared_weights(cfg)? {
        let key = canonical(&d.key);
        if !seen.insert(key.clone()) {
            continue;
        }
        let lora = has_lora(cfg, &key);
        out.push(Expected {
            kind: if d.dtype == DType::F32 {
                Kind::Float
            } else {
                Kind::Int
            },
            key: key.clone(),
            shape: d.shape.clone(),
            lora_factor: false,
            alias_of: None,
        });
        if lora {
            if let [o, i] = d.shape[..] {
                let base = key.trim_end_matches(".weight");
                out.push(float(
                    format!("{base}.lora_A"),
                    vec![cfg.lora_rank, i],
                    true,
                ));
                out.push(float(
                    format!("{base}.lora_B"),
                    vec![o, cfg.lora_rank],
                    true,
                ));
            }
        }
    }
    for (key, shape) in training_only(cfg) {
        out.push(float(key, shape, false));
    }
    for (to, names) in &groups {
        let shared: Vec<Expected> = out
            .iter()
            .filter(|e| e.key.starts_with(to.as_str()) && e.alias_of.is_none())
            .cloned()
            .collect();
        for n in names {
            out.extend(shared.iter().map(|e| Expected {
                key: format!("{n}{}", &e.key[to.len()..]),
                alias_of: Some(e.key.clone()),
                ..e.clone()
            }));
        }
    }
    // Reports list differences module by module, the model's core first (a stable sort keeps the
    // graph's order inside a module).
    out.sort_by_key(|e| module_rank(&e.key));
    Ok(out)
}

/// Order of the top-level modules in key lists and mismatch reports.
fn module_rank(key: &str) -> usize {
    const ORDER: &[&str] = &[
        "transformer.",
        "bert.",
        "feat_map.",
        "input_proj.",
        "backbone.",
        "bbox_embed.",
        "ref_point_head.",
        "pixel_decoder.",
        "mask_decoder.",
        "temporal_decoder.",
    ];
    ORDER
        .iter()
        .position(|p| key.starts_with(p))
        .unwrap_or(ORDER.len())
}

/// Unique parameter count of a key map: float tensors, aliases counted once, LoRA factors
/// included (`with_lora`) or not.
pub fn unique_parameters(keys: &[Expected], with_lora: bool) -> usize {
    keys.iter()
        .filter(|e| e.alias_of.is_none() && e.kind == Kind::Float && (with_lora || !e.lora_factor))
        .map(|e| e.shape.iter().product::<usize>())
        .sum()
}

/// Keys the official loader ignores: profiler leftovers and version-dependent BERT buffers.
pub fn is_ignorable(key: &str) -> bool {
    key.ends_with("total_ops")
        || key.ends_with("total_params")
        || key == "bert.embeddings.position_ids"
        || key == "bert.embeddings.token_type_ids"
}

/// Keys of the official checkpoint that the official inference (`infer`) never reads, so neither do
/// our engines: BERT's pooler (GroundingDINO uses the token features, not the pooled sentence vector).
pub fn unused_at_inference(key: &str) -> bool {
    key.starts_with("bert.pooler.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_key_counts_and_parameters_match_the_spec() {
        // Official checkpoint inventory: 1772 / 1940 state-dict keys; 187,807,730 / 247,872,944 unique parameters
        // with LoRA factors separate; 183,293,938 / 243,359,152 after folding.
        let t = expected_keys(&ModelConfig::swin_t()).unwrap();
        assert_eq!(t.len(), 1772);
        assert_eq!(unique_parameters(&t, true), 187_807_730);
        assert_eq!(unique_parameters(&t, false), 183_293_938);
        let lora_modules = t
            .iter()
            .filter(|e| e.key.ends_with("lora_A") && e.alias_of.is_none())
            .count();
        assert_eq!(lora_modules, 122);
        let b = expected_keys(&ModelConfig::swin_b()).unwrap();
        assert_eq!(b.len(), 1940);
        assert_eq!(unique_parameters(&b, true), 247_872_944);
        assert_eq!(unique_parameters(&b, false), 243_359_152);
    }
}
