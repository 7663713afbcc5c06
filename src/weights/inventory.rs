//! A human (and JSON) inventory of a checkpoint: tensors and parameters per module, dtypes, LoRA,
//! and which configuration it matches.

use super::{Checkpoint, Format, LoraInfo, Mismatch};
use crate::config::ModelConfig;
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};

/// Tensors and parameters of one top-level module.
#[derive(Debug, Clone, Serialize)]
pub struct ModuleSummary {
    /// Module prefix (`backbone`, `bert`, `transformer.encoder`, …).
    pub module: String,
    /// Keys under it, aliases included.
    pub tensors: usize,
    /// Of which aliases of other keys.
    pub aliases: usize,
    /// Unique float parameters as stored (LoRA factors included).
    pub parameters: usize,
    /// LoRA pairs stored in the file under it (shared modules once).
    pub lora_pairs: usize,
}

/// How the checkpoint compares with one configuration.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigMatch {
    /// Configuration label.
    pub config: String,
    /// No missing, unexpected or wrongly shaped tensor.
    pub matches: bool,
    /// Counts of each kind of difference.
    pub missing: usize,
    /// Keys the configuration does not have.
    pub unexpected: usize,
    /// Keys of another shape.
    pub wrong_shape: usize,
    /// The differences (first few of each kind), when it does not match.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<Mismatch>,
}

/// The inventory printed by `referdino inspect`.
#[derive(Debug, Clone, Serialize)]
pub struct Inventory {
    /// File.
    pub path: String,
    /// Container format.
    pub format: Format,
    /// Container note (e.g. top-level keys).
    pub note: String,
    /// Keys in the state dict, aliases included, LoRA factors included.
    pub keys: usize,
    /// Distinct tensors stored.
    pub stored_tensors: usize,
    /// Unique float parameters as stored (LoRA factors counted separately).
    pub parameters: usize,
    /// Unique float parameters after folding LoRA.
    pub parameters_folded: usize,
    /// Tensors per dtype in the file.
    pub dtypes: BTreeMap<String, usize>,
    /// LoRA pairs and ranks found in the file.
    pub lora: LoraInfo,
    /// `present (folded at load)` or `absent (no LoRA, or already merged)`.
    pub lora_state: String,
    /// Per-module breakdown.
    pub modules: Vec<ModuleSummary>,
    /// Comparison with the official configurations (and a user-given one).
    pub configs: Vec<ConfigMatch>,
}

fn module_of(key: &str) -> String {
    let parts: Vec<&str> = key.split('.').collect();
    match parts.first().copied() {
        Some("transformer") if parts.len() > 2 && matches!(parts[1], "encoder" | "decoder") => {
            format!("transformer.{}", parts[1])
        }
        Some("transformer") => "transformer (queries, two-stage)".into(),
        Some("backbone") => "backbone".into(),
        Some(p) => p.to_string(),
        None => String::new(),
    }
}

impl Inventory {
    /// Builds the inventory; `extra` is a user configuration to compare with besides the official ones.
    pub fn of(ck: &Checkpoint, extra: Option<&ModelConfig>) -> Self {
        let mut modules: BTreeMap<String, ModuleSummary> = BTreeMap::new();
        let mut dtypes = BTreeMap::new();
        let (mut params, mut lora_params, mut stored) = (0usize, 0usize, 0usize);
        let mut first_seen: HashSet<&str> = HashSet::new();
        for e in ck.raw_entries() {
            let m = module_of(&e.key);
            let s = modules.entry(m.clone()).or_insert_with(|| ModuleSummary {
                module: m,
                tensors: 0,
                aliases: 0,
                parameters: 0,
                lora_pairs: 0,
            });
            s.tensors += 1;
            if e.alias_of.is_some() {
                s.aliases += 1;
                continue;
            }
            if !first_seen.insert(&e.key) {
                continue;
            }
            stored += 1;
            *dtypes.entry(e.dtype.clone()).or_insert(0) += 1;
            let n: usize = e.shape.iter().product();
            let is_float = e.dtype.starts_with("float") || e.dtype == "bfloat16";
            if is_float {
                s.parameters += n;
                params += n;
                if e.key.ends_with(".lora_A") || e.key.ends_with(".lora_B") {
                    lora_params += n;
                }
            }
            if e.key.ends_with(".lora_A") {
                s.lora_pairs += 1;
            }
        }
        let mut configs = Vec::new();
        let mut cands = vec![ModelConfig::swin_t(), ModelConfig::swin_b()];
        if let Some(c) = extra {
            if !cands.contains(c) {
                cands.push(c.clone());
            }
        }
        for c in &cands {
            let m = ck.check(c).unwrap_or_else(|e| Mismatch {
                missing: vec![format!("(no key map: {e})")],
                ..Mismatch::default()
            });
            configs.push(ConfigMatch {
                config: c.label(),
                matches: m.is_ok(),
                missing: m.missing.len(),
                unexpected: m.unexpected.len(),
                wrong_shape: m.wrong_shape.len(),
                detail: if m.is_ok() {
                    None
                } else {
                    Some(Mismatch {
                        missing: m.missing.into_iter().take(5).collect(),
                        unexpected: m.unexpected.into_iter().take(5).collect(),
                        wrong_shape: m.wrong_shape.into_iter().take(5).collect(),
                    })
                },
            });
        }
        let lora = ck.lora().clone();
        let lora_state = if lora.pairs > 0 {
            format!(
                "present: {} pairs, rank {:?}, folded into the base weights at load (W + B·A/r)",
                lora.pairs, lora.ranks
            )
        } else {
            "absent: no LoRA factors in the file (already merged, or a model without LoRA)".into()
        };
        Inventory {
            path: ck.path().display().to_string(),
            format: ck.format(),
            note: ck.note().to_string(),
            keys: ck.raw_entries().len(),
            stored_tensors: stored,
            parameters: params,
            parameters_folded: params - lora_params,
            dtypes,
            lora,
            lora_state,
            modules: modules.into_values().collect(),
            configs,
        }
    }

    /// The text report.
    pub fn render(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!("checkpoint  {}\n", self.path));
        s.push_str(&format!("format      {:?} — {}\n", self.format, self.note));
        s.push_str(&format!(
            "keys        {} in the state dict, {} tensors stored (the rest are aliases of shared modules)\n",
            self.keys, self.stored_tensors
        ));
        s.push_str(&format!(
            "parameters  {} as stored, {} after folding LoRA\n",
            group(self.parameters),
            group(self.parameters_folded)
        ));
        let dt: Vec<String> = self
            .dtypes
            .iter()
            .map(|(k, v)| format!("{k} ×{v}"))
            .collect();
        s.push_str(&format!("dtypes      {}\n", dt.join(", ")));
        s.push_str(&format!("LoRA        {}\n\n", self.lora_state));
        s.push_str(&format!(
            "{:<36} {:>8} {:>8} {:>14} {:>6}\n",
            "module", "tensors", "aliases", "parameters", "LoRA"
        ));
        for m in &self.modules {
            s.push_str(&format!(
                "{:<36} {:>8} {:>8} {:>14} {:>6}\n",
                m.module,
                m.tensors,
                m.aliases,
                group(m.parameters),
                m.lora_pairs
            ));
        }
        s.push('\n');
        for c in &self.configs {
            if c.matches {
                s.push_str(&format!("config      matches {}\n", c.config));
            } else {
                s.push_str(&format!(
                    "config      does not match {}: {} missing, {} unexpected, {} wrong shape\n",
                    c.config, c.missing, c.unexpected, c.wrong_shape
                ));
            }
        }
        s
    }
}

/// `1234567` → `1,234,567`.
fn group(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}
