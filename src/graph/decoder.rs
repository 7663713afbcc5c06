//! Cross-modality decoder with ReferDINO's confidence-aware query pruning (docs/model.md: Decoder with confidence-aware pruning; Heads).
//!
//! Per layer: query sine embedding of the reference box → `ref_point_head` → self-attention (head-averaged
//! weights kept) → text cross-attention → deformable cross-attention on the encoder memory → FFN, all
//! post-norm; then the pruning gate on the un-normalised output, the gather of the kept queries and of their
//! input boxes, box refinement with the shared `bbox_embed`, and `decoder.norm`.

use super::attention::AttnWeights;
use super::deformable::{deformable_decoder_layer, DecoderLayerInputs, DecoderLayerParams};
use super::mlp::mlp;
use super::position::query_sine_embed;
use super::scoring::{contrastive_logits, inverse_sigmoid};
use crate::error::{Error, Result};
use crate::onnx::builder::{Graph, Value};
use crate::onnx::Scope;
use crate::tensor::DType;

/// Sizes of the decoder.
#[derive(Clone, Debug)]
pub struct DecoderParams {
    /// Hidden size `d`.
    pub d_model: usize,
    /// Attention heads (self, text cross and deformable attention; 8).
    pub heads: usize,
    /// FFN hidden size (2048).
    pub ffn: usize,
    /// Decoder layers (6).
    pub layers: usize,
    /// Deformable sampling points per head and level (4).
    pub points: usize,
    /// (h, w) of every feature level of the memory, in flattening order.
    pub level_shapes: Vec<(usize, usize)>,
    /// Fraction of queries kept by each layer (`query_decay`, 0.5): K = ceil(N · decay).
    pub query_decay: f64,
    /// LayerNorm epsilon (1e-5).
    pub eps: f32,
}

impl DecoderParams {
    /// Queries kept by each layer, starting from `n` input queries (official `math.ceil(n * decay)`).
    pub fn keep_schedule(&self, n: usize) -> Vec<usize> {
        crate::config::keep_schedule(n, self.query_decay, self.layers)
    }
}

/// Decoder outputs used downstream.
pub struct DecoderOut {
    /// `hs[nl]`: the last layer's pruned output after `decoder.norm`, `[B, Ns, d]`.
    pub hs: Value,
    /// `references[nl]`: the last layer's input boxes gathered with its kept indices, `[B, Ns, 4]`.
    pub reference: Value,
    /// `references[nl + 1]`: the refined boxes after the last layer, `[B, Ns, 4]` (unused by inference).
    pub final_reference: Value,
    /// Kept indices of every layer, `[B, K_l]` i64 (into that layer's input queries).
    pub keep_idx: Vec<Value>,
}

/// Graph inputs of the decoder.
pub struct DecoderInputs<'a> {
    /// Content queries `[B, N, d]` (from the query selection).
    pub tgt: &'a Value,
    /// Reference boxes `[B, N, 4]` (cx, cy, w, h) in sigmoid space.
    pub reference: &'a Value,
    /// Encoder image memory `[B, S, d]`.
    pub memory: &'a Value,
    /// Encoder text memory `[B, L, d]`.
    pub memory_text: &'a Value,
    /// `[B, L]` bool, true = real token.
    pub text_token_mask: &'a Value,
}

/// The decoder with pruning; `w` is its scope (`transformer.decoder`).
///
/// Taps every `decoder.layer{l}.*` fixture key, `decoder.final_ref`, `objects.hs` and `objects.ref`.
pub fn decoder(
    g: &mut Graph,
    w: &Scope<'_>,
    p: &DecoderParams,
    i: &DecoderInputs<'_>,
) -> Result<DecoderOut> {
    let DecoderInputs {
        tgt,
        reference,
        memory,
        memory_text,
        text_token_mask,
    } = *i;
    if tgt.rank() != 3 || memory_text.rank() != 3 {
        return Err(Error::Graph(format!(
            "decoder: tgt {:?} and memory_text {:?} must be rank 3",
            tgt.shape, memory_text.shape
        )));
    }
    let (b, n, d) = (tgt.dim(0), tgt.dim(1), tgt.dim(2));
    let s: usize = p.level_shapes.iter().map(|(h, w)| h * w).sum();
    let nlev = p.level_shapes.len();
    if d != p.d_model || reference.shape != [b, n, 4] {
        return Err(Error::Graph(format!(
            "decoder: tgt {:?} / reference {:?}, expected [B, N, {}] / [B, N, 4]",
            tgt.shape, reference.shape, p.d_model
        )));
    }
    if memory.shape != [b, s, d] {
        return Err(Error::Graph(format!(
            "decoder: memory {:?}, expected [{b}, {s}, {d}]",
            memory.shape
        )));
    }
    let l = memory_text.dim(1);
    if memory_text.shape != [b, l, d]
        || text_token_mask.shape != [b, l]
        || text_token_mask.dtype != DType::Bool
    {
        return Err(Error::Graph(format!(
            "decoder: text {:?} / bool mask {:?} {:?}, expected [{b}, L, {d}] / [{b}, L]",
            memory_text.shape, text_token_mask.dtype, text_token_mask.shape
        )));
    }
    if p.layers == 0 {
        return Err(Error::Graph("decoder: zero layers".into()));
    }
    if !(p.query_decay > 0.0 && p.query_decay <= 1.0) {
        return Err(Error::Graph(format!(
            "decoder: query_decay {} outside (0, 1]",
            p.query_decay
        )));
    }
    let text_pad = g.not(text_token_mask)?;
    let layer = DecoderLayerParams {
        heads: p.heads,
        points: p.points,
        level_shapes: p.level_shapes.clone(),
        ffn: p.ffn,
        eps: p.eps,
    };
    let schedule = p.keep_schedule(n);
    let mut x = tgt.clone();
    let mut r = reference.clone();
    let mut keep_idx = Vec::with_capacity(p.layers);
    let mut hs = None;
    let mut last_ref = None;
    for (li, &keep) in schedule.iter().enumerate() {
        let nin = x.dim(1);
        let (nx, nr, h, rl, idx) = g.scoped(&format!("dec{li}"), |g| {
            let tk = |k: &str| format!("decoder.layer{li}.{k}");
            // valid ratios are 1: the per-level reference is the box itself
            let r4 = g.unsqueeze(&r, &[2])?;
            let ref_input = g.expand(&r4, &[b, nin, nlev, 4])?;
            g.tap(&tk("ref_points_input"), &ref_input)?;
            let sine = query_sine_embed(g, &r, d)?;
            let query_pos = mlp(g, &w.pp("ref_point_head"), &sine, d, d, 2)?;
            g.tap(&tk("query_pos"), &query_pos)?;
            let (out, attn) = deformable_decoder_layer(
                g,
                &w.pp("layers").pp(li),
                &layer,
                &DecoderLayerInputs {
                    x: &x,
                    query_pos: &query_pos,
                    reference: &ref_input,
                    memory,
                    text: memory_text,
                    text_pad: &text_pad,
                },
                AttnWeights::Averaged,
            )?;
            let attn = attn.ok_or_else(|| Error::Graph("self-attention weights missing".into()))?;
            g.tap(&tk("self_attn_weights"), &attn)?;
            g.tap(&tk("out"), &out)?;
            let logits = contrastive_logits(g, &out, memory_text, text_token_mask)?;
            g.tap(&tk("class_logits"), &logits)?;
            let (idx, gate) = g.query_prune(&logits, &attn, keep)?;
            g.tap(&tk("gate"), &gate)?;
            g.tap(&tk("keep_idx"), &idx)?;
            let xo = g.gather_rows(&out, &idx)?;
            let ro = g.gather_rows(&r, &idx)?;
            g.tap(&tk("ref"), &ro)?;
            let delta = mlp(g, &w.pp("bbox_embed").pp(li), &xo, d, 4, 3)?;
            if g.opts.taps {
                // the fixture stores this one sequence-first
                let dt = g.transpose(&delta, &[1, 0, 2])?;
                g.tap(&tk("bbox_delta"), &dt)?;
            }
            let inv = inverse_sigmoid(g, &ro)?;
            let un = g.add(&delta, &inv)?;
            let nr = g.sigmoid(&un)?;
            let h = g.layer_norm(&w.pp("norm"), &xo, p.eps)?;
            g.tap(&tk("hs"), &h)?;
            Ok((xo, nr, h, ro, idx))
        })?;
        x = nx;
        r = nr;
        hs = Some(h);
        last_ref = Some(rl);
        keep_idx.push(idx);
    }
    let hs = hs.ok_or_else(|| Error::Graph("decoder: no layers".into()))?;
    let reference = last_ref.ok_or_else(|| Error::Graph("decoder: no layers".into()))?;
    g.tap("decoder.final_ref", &r)?;
    g.tap("objects.hs", &hs)?;
    g.tap("objects.ref", &reference)?;
    Ok(DecoderOut {
        hs,
        reference,
        final_reference: r,
        keep_idx,
    })
}
