//! The official state-dict key map (spec Appendix A), derived from a [`ModelConfig`]: every key
//! the official `model.state_dict()` holds, its shape, and whether it is a LoRA factor or an alias
//! of another key (shared modules).

use crate::config::ModelConfig;

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

struct Builder {
    out: Vec<Expected>,
    rank: usize,
}

impl Builder {
    fn push(&mut self, key: String, shape: Vec<usize>, kind: Kind, lora_factor: bool) {
        self.out.push(Expected {
            key,
            shape,
            kind,
            lora_factor,
            alias_of: None,
        });
    }
    fn param(&mut self, key: String, shape: &[usize]) {
        self.push(key, shape.to_vec(), Kind::Float, false);
    }
    /// `name.weight [out, in]` (+ `name.bias [out]`) (+ LoRA factors).
    fn linear(&mut self, name: &str, out: usize, inp: usize, bias: bool, lora: bool) {
        self.param(format!("{name}.weight"), &[out, inp]);
        if bias {
            self.param(format!("{name}.bias"), &[out]);
        }
        if lora {
            self.push(
                format!("{name}.lora_A"),
                vec![self.rank, inp],
                Kind::Float,
                true,
            );
            self.push(
                format!("{name}.lora_B"),
                vec![out, self.rank],
                Kind::Float,
                true,
            );
        }
    }
    fn norm(&mut self, name: &str, c: usize) {
        self.param(format!("{name}.weight"), &[c]);
        self.param(format!("{name}.bias"), &[c]);
    }
    fn conv(&mut self, name: &str, out: usize, inp: usize, k: usize) {
        self.param(format!("{name}.weight"), &[out, inp, k, k]);
        self.param(format!("{name}.bias"), &[out]);
    }
    /// `nn.MultiheadAttention` (packed in-projection, `out_proj`).
    fn mha(&mut self, name: &str, d: usize) {
        self.param(format!("{name}.in_proj_weight"), &[3 * d, d]);
        self.param(format!("{name}.in_proj_bias"), &[3 * d]);
        self.linear(&format!("{name}.out_proj"), d, d, true, false);
    }
    /// `MSDeformAttn(d, levels, heads, points)`.
    fn msda(
        &mut self,
        name: &str,
        d: usize,
        levels: usize,
        heads: usize,
        points: usize,
        lora: bool,
    ) {
        self.linear(
            &format!("{name}.sampling_offsets"),
            heads * levels * points * 2,
            d,
            true,
            lora,
        );
        self.linear(
            &format!("{name}.attention_weights"),
            heads * levels * points,
            d,
            true,
            lora,
        );
        self.linear(&format!("{name}.value_proj"), d, d, true, lora);
        self.linear(&format!("{name}.output_proj"), d, d, true, lora);
    }
    /// `DeformableTransformerDecoderLayer` (decoder and mask decoder share the layout).
    #[allow(clippy::too_many_arguments)]
    fn decoder_layer(
        &mut self,
        p: &str,
        d: usize,
        levels: usize,
        heads: usize,
        points: usize,
        ffn: usize,
        lora: bool,
    ) {
        self.msda(&format!("{p}.cross_attn"), d, levels, heads, points, lora);
        self.norm(&format!("{p}.norm1"), d);
        self.mha(&format!("{p}.ca_text"), d);
        self.norm(&format!("{p}.catext_norm"), d);
        self.mha(&format!("{p}.self_attn"), d);
        self.norm(&format!("{p}.norm2"), d);
        self.linear(&format!("{p}.linear1"), ffn, d, true, lora);
        self.linear(&format!("{p}.linear2"), d, ffn, true, lora);
        self.norm(&format!("{p}.norm3"), d);
    }
    fn mlp(
        &mut self,
        p: &str,
        d_in: usize,
        hidden: usize,
        d_out: usize,
        layers: usize,
        lora: bool,
    ) {
        for i in 0..layers {
            let inp = if i == 0 { d_in } else { hidden };
            let out = if i + 1 == layers { d_out } else { hidden };
            self.linear(&format!("{p}.layers.{i}"), out, inp, true, lora);
        }
    }
    /// Repeats every key under `from` as an alias under `to` (a module shared by two names).
    fn alias_prefix(&mut self, from: &str, to: &str) {
        let extra: Vec<Expected> = self
            .out
            .iter()
            .filter(|e| e.key.starts_with(from) && e.alias_of.is_none())
            .map(|e| Expected {
                key: format!("{to}{}", &e.key[from.len()..]),
                alias_of: Some(e.key.clone()),
                ..e.clone()
            })
            .collect();
        self.out.extend(extra);
    }
}

/// Every key of the official `model.state_dict()` for this configuration (aliases included,
/// LoRA factors flagged), grouped by module.
pub fn expected_keys(cfg: &ModelConfig) -> Vec<Expected> {
    let mut b = Builder {
        out: Vec::new(),
        rank: cfg.lora_rank,
    };
    let d = cfg.hidden_dim;
    let lv = cfg.num_feature_levels;
    let h = cfg.nheads;
    let ff = cfg.dim_feedforward;
    let (el, dl) = (cfg.enc_lora, cfg.dec_lora);

    // Transformer.
    b.param("transformer.level_embed".into(), &[lv, d]);
    for i in 0..cfg.enc_layers {
        let p = format!("transformer.encoder.layers.{i}");
        b.msda(&format!("{p}.self_attn"), d, lv, h, cfg.enc_n_points, el);
        b.norm(&format!("{p}.norm1"), d);
        b.linear(&format!("{p}.linear1"), ff, d, true, el);
        b.linear(&format!("{p}.linear2"), d, ff, true, el);
        b.norm(&format!("{p}.norm2"), d);
    }
    for i in 0..cfg.enc_layers {
        let p = format!("transformer.encoder.text_layers.{i}");
        b.mha(&format!("{p}.self_attn"), d);
        b.linear(&format!("{p}.linear1"), ff / 2, d, true, el);
        b.linear(&format!("{p}.linear2"), d, ff / 2, true, el);
        b.norm(&format!("{p}.norm1"), d);
        b.norm(&format!("{p}.norm2"), d);
    }
    for i in 0..cfg.enc_layers {
        let p = format!("transformer.encoder.fusion_layers.{i}");
        b.param(format!("{p}.gamma_v"), &[d]);
        b.param(format!("{p}.gamma_l"), &[d]);
        b.norm(&format!("{p}.layer_norm_v"), d);
        b.norm(&format!("{p}.layer_norm_l"), d);
        for n in ["v_proj", "l_proj", "values_v_proj", "values_l_proj"] {
            b.linear(&format!("{p}.attn.{n}"), ff / 2, d, true, el);
        }
        for n in ["out_v_proj", "out_l_proj"] {
            b.linear(&format!("{p}.attn.{n}"), d, ff / 2, true, el);
        }
    }
    for i in 0..cfg.dec_layers {
        let p = format!("transformer.decoder.layers.{i}");
        b.decoder_layer(&p, d, lv, h, cfg.dec_n_points, ff, dl);
    }
    b.norm("transformer.decoder.norm", d);
    // query_dim 4 → the sine embedding of a box is 2·d wide.
    b.mlp("transformer.decoder.ref_point_head", 2 * d, d, d, 2, dl);
    b.mlp("transformer.decoder.bbox_embed.0", d, d, 4, 3, false);
    for i in 1..cfg.dec_layers {
        b.alias_prefix(
            "transformer.decoder.bbox_embed.0.",
            &format!("transformer.decoder.bbox_embed.{i}."),
        );
    }
    b.param("transformer.tgt_embed.weight".into(), &[cfg.num_queries, d]);
    b.linear("transformer.enc_output", d, d, true, false);
    b.norm("transformer.enc_output_norm", d);
    b.mlp("transformer.enc_out_bbox_embed", d, d, 4, 3, false);

    // Text.
    let bc = &cfg.bert;
    let hb = bc.hidden_size;
    b.param(
        "bert.embeddings.word_embeddings.weight".into(),
        &[bc.vocab_size, hb],
    );
    b.param(
        "bert.embeddings.position_embeddings.weight".into(),
        &[bc.max_position_embeddings, hb],
    );
    b.param(
        "bert.embeddings.token_type_embeddings.weight".into(),
        &[bc.type_vocab_size, hb],
    );
    b.norm("bert.embeddings.LayerNorm", hb);
    for i in 0..bc.num_hidden_layers {
        let p = format!("bert.encoder.layer.{i}");
        for n in ["query", "key", "value"] {
            b.linear(&format!("{p}.attention.self.{n}"), hb, hb, true, false);
        }
        b.linear(&format!("{p}.attention.output.dense"), hb, hb, true, false);
        b.norm(&format!("{p}.attention.output.LayerNorm"), hb);
        b.linear(
            &format!("{p}.intermediate.dense"),
            bc.intermediate_size,
            hb,
            true,
            false,
        );
        b.linear(
            &format!("{p}.output.dense"),
            hb,
            bc.intermediate_size,
            true,
            false,
        );
        b.norm(&format!("{p}.output.LayerNorm"), hb);
    }
    b.linear("bert.pooler.dense", hb, hb, true, false);
    b.linear("feat_map", d, hb, true, false);

    // Input projections: the last three Swin stages, then stride-2 3×3 convs.
    let sw = &cfg.swin;
    let ch = sw.stage_channels();
    let last3 = &ch[ch.len() - 3..];
    let mut in_c = *last3.last().expect("4 stages");
    for l in 0..lv {
        let (c, k) = match last3.get(l) {
            Some(&c) => (c, 1),
            None => (in_c, 3),
        };
        b.conv(&format!("input_proj.{l}.0"), d, c, k);
        b.norm(&format!("input_proj.{l}.1"), d);
        if l >= 3 {
            in_c = d;
        }
    }

    // Swin backbone.
    let w = sw.window_size;
    let p = "backbone.0";
    b.conv(
        &format!("{p}.patch_embed.proj"),
        sw.embed_dim,
        3,
        sw.patch_size,
    );
    b.norm(&format!("{p}.patch_embed.norm"), sw.embed_dim);
    let hidden = |c: usize| (c as f32 * sw.mlp_ratio) as usize;
    for (s, (&depth, &heads)) in sw.depths.iter().zip(&sw.num_heads).enumerate() {
        let c = ch[s];
        for blk in 0..depth {
            let q = format!("{p}.layers.{s}.blocks.{blk}");
            b.norm(&format!("{q}.norm1"), c);
            b.param(
                format!("{q}.attn.relative_position_bias_table"),
                &[(2 * w - 1) * (2 * w - 1), heads],
            );
            b.push(
                format!("{q}.attn.relative_position_index"),
                vec![w * w, w * w],
                Kind::Int,
                false,
            );
            b.linear(&format!("{q}.attn.qkv"), 3 * c, c, true, false);
            b.linear(&format!("{q}.attn.proj"), c, c, true, false);
            b.norm(&format!("{q}.norm2"), c);
            b.linear(&format!("{q}.mlp.fc1"), hidden(c), c, true, false);
            b.linear(&format!("{q}.mlp.fc2"), c, hidden(c), true, false);
        }
        if s + 1 < sw.depths.len() {
            b.linear(
                &format!("{p}.layers.{s}.downsample.reduction"),
                2 * c,
                4 * c,
                false,
                false,
            );
            b.norm(&format!("{p}.layers.{s}.downsample.norm"), 4 * c);
        }
    }
    for (i, &c) in ch.iter().enumerate() {
        b.norm(&format!("{p}.norm{i}"), c);
    }

    // Shared heads, also registered at the top level.
    for i in 0..cfg.dec_layers {
        b.alias_prefix(
            "transformer.decoder.bbox_embed.0.",
            &format!("bbox_embed.{i}."),
        );
    }
    b.alias_prefix("transformer.decoder.ref_point_head.", "ref_point_head.");

    // FPN (FPNSpatialDecoder(d, [d, d, C0], mask_dim)).
    let fp = "pixel_decoder";
    let inter = [d, d / 2, d / 4, d / 8, d / 16];
    b.conv(&format!("{fp}.lay1"), inter[0], d, 3);
    b.norm(&format!("{fp}.gn1"), inter[0]);
    b.conv(&format!("{fp}.lay2"), inter[1], inter[0], 3);
    b.norm(&format!("{fp}.gn2"), inter[1]);
    b.conv(&format!("{fp}.lay3"), inter[2], inter[1], 3);
    b.norm(&format!("{fp}.gn3"), inter[2]);
    b.conv(&format!("{fp}.lay4"), inter[3], inter[2], 3);
    b.norm(&format!("{fp}.gn4"), inter[3]);
    b.conv(&format!("{fp}.adapter1"), inter[1], d, 1);
    b.conv(&format!("{fp}.adapter2"), inter[2], d, 1);
    b.conv(&format!("{fp}.adapter3"), inter[3], ch[0], 1);
    b.conv(&format!("{fp}.lay5"), inter[4], inter[3], 3);
    b.norm(&format!("{fp}.gn5"), inter[4]);
    b.conv(&format!("{fp}.out_lay"), cfg.seg_head.mask_dim, inter[4], 3);

    // Mask decoder (1 level, no LoRA).
    let sh = &cfg.seg_head;
    for i in 0..sh.n_layers {
        b.decoder_layer(
            &format!("mask_decoder.{i}"),
            d,
            1,
            sh.n_heads,
            sh.n_points,
            sh.d_ffn,
            false,
        );
    }

    // Temporal decoder: one module under dec_layers names.
    for j in 0..cfg.temporal_layer {
        let q = format!("temporal_decoder.0.layer.{j}");
        b.mha(&format!("{q}.self_attn"), d);
        b.norm(&format!("{q}.norm"), d);
        b.mha(&format!("{q}.decoder.self_attn"), d);
        b.mha(&format!("{q}.decoder.multihead_attn"), d);
        b.linear(
            &format!("{q}.decoder.linear1"),
            cfg.temporal_dim_feedforward,
            d,
            true,
            false,
        );
        b.linear(
            &format!("{q}.decoder.linear2"),
            d,
            cfg.temporal_dim_feedforward,
            true,
            false,
        );
        for n in 1..=3 {
            b.norm(&format!("{q}.decoder.norm{n}"), d);
        }
    }
    for j in 0..cfg.temporal_layer {
        b.norm(&format!("temporal_decoder.0.norm.{j}"), d);
    }
    for i in 1..cfg.dec_layers {
        b.alias_prefix("temporal_decoder.0.", &format!("temporal_decoder.{i}."));
    }
    b.out
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
        let t = expected_keys(&ModelConfig::swin_t());
        assert_eq!(t.len(), 1772);
        assert_eq!(unique_parameters(&t, true), 187_807_730);
        assert_eq!(unique_parameters(&t, false), 183_293_938);
        let lora_modules = t
            .iter()
            .filter(|e| e.key.ends_with("lora_A") && e.alias_of.is_none())
            .count();
        assert_eq!(lora_modules, 122);
        let b = expected_keys(&ModelConfig::swin_b());
        assert_eq!(b.len(), 1940);
        assert_eq!(unique_parameters(&b, true), 247_872_944);
        assert_eq!(unique_parameters(&b, false), 243_359_152);
    }
}
