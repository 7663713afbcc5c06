//! Random weights for any configuration, laid out under the official keys (LoRA folded, aliases present).
//!
//! Used where no checkpoint exists: full-size export and latency benchmarks (Swin-T/Swin-B shapes), and
//! end-to-end tests at configurations the fixtures do not cover. Deterministic for a seed. The ranges
//! follow the fixtures' init rules loosely (fan-in scaled weights, norms near 1) so activations stay in a
//! realistic range through deep stacks; they are not meant to produce meaningful masks.

use super::keymap::{expected_keys, Kind};
use crate::config::ModelConfig;
use crate::error::Result;
use crate::tensor::Tensor;
use std::collections::HashMap;

/// A small deterministic generator (SplitMix64), so tests need no RNG crate.
pub struct SplitMix(u64);

impl SplitMix {
    /// Seeds the generator.
    pub fn new(seed: u64) -> Self {
        SplitMix(seed)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        lo + (hi - lo) * u
    }
}

/// Random f32 weights for every float key of `cfg` (LoRA factors omitted, i.e. already folded; aliases
/// filled with their target's tensor). Integer buffers are omitted (they are recomputed from the config).
pub fn random_weights(cfg: &ModelConfig, seed: u64) -> Result<HashMap<String, Tensor>> {
    let mut rng = SplitMix::new(seed);
    let keys = expected_keys(cfg)?;
    let mut out: HashMap<String, Tensor> = HashMap::new();
    for e in keys
        .iter()
        .filter(|e| e.alias_of.is_none() && !e.lora_factor)
    {
        if e.kind == Kind::Int {
            continue;
        }
        let n: usize = e.shape.iter().product();
        let is_norm =
            e.key.contains("norm") || e.key.contains("LayerNorm") || e.key.contains(".gn");
        let v: Vec<f32> = if e.key.ends_with(".bias") {
            (0..n).map(|_| rng.uniform(-0.1, 0.1)).collect()
        } else if is_norm && e.shape.len() == 1 {
            (0..n).map(|_| rng.uniform(0.8, 1.2)).collect()
        } else if e.shape.len() >= 2 {
            let fan_in: usize = e.shape[1..].iter().product();
            let a = (3.0 / fan_in as f32).sqrt();
            (0..n).map(|_| rng.uniform(-a, a)).collect()
        } else {
            (0..n).map(|_| rng.uniform(-0.5, 0.5)).collect()
        };
        out.insert(e.key.clone(), Tensor::from_f32(&e.shape, v)?);
    }
    for e in keys.iter().filter(|e| !e.lora_factor) {
        if let Some(target) = &e.alias_of {
            if let Some(t) = out.get(target).cloned() {
                out.insert(e.key.clone(), t);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_weights_cover_the_config_and_are_deterministic() {
        let cfg = ModelConfig::swin_t();
        let a = random_weights(&cfg, 7).unwrap();
        let b = random_weights(&cfg, 7).unwrap();
        assert_eq!(a.len(), b.len());
        assert_eq!(
            a["transformer.tgt_embed.weight"],
            b["transformer.tgt_embed.weight"]
        );
        assert_eq!(a["transformer.tgt_embed.weight"].shape(), [900, 256]);
        assert!(
            a.contains_key("bbox_embed.3.layers.0.weight"),
            "aliases present"
        );
        assert!(!a.keys().any(|k| k.contains("lora_")));
    }
}
