//! Cross-modal temporal decoder (ReferDINO's object-consistent temporal enhancer, docs/model.md: Cross-modal temporal decoder).
//!
//! The object stream `H` attends over time within each track; the sentence stream `S` (the per-frame
//! enhanced `[CLS]` token, copied to every track) runs a full post-norm decoder layer against `H` and is
//! carried from block to block; `H ← LN(H + S)` closes each block. Time is the sequence axis and tracks are
//! the batch axis, so inside the graph tensors are `[Q, W, d]`.
//!
//! The window is static (`W` frames) with a `frame_mask [W]` (true = valid). Invalid frames are masked as
//! keys in every attention, so the valid frames' outputs equal a run on the valid frames alone.

use super::attention::{mha, AttnMasks, AttnWeights};
use super::ffn::{ffn, FfnScopes};
use crate::error::Result;
use crate::onnx::builder::{Graph, Value};
use crate::onnx::Scope;

/// Sizes of the temporal decoder.
#[derive(Clone, Debug)]
pub struct TemporalParams {
    /// Hidden size d.
    pub d_model: usize,
    /// Attention heads.
    pub heads: usize,
    /// FFN hidden size of the sentence-stream decoder layer (2048 official).
    pub ffn: usize,
    /// Number of blocks `Lt`.
    pub blocks: usize,
    /// Weight prefix, e.g. `temporal_decoder.5` (all six list entries are one module).
    pub prefix: String,
}

/// Runs the temporal decoder, weights under `root`'s [`TemporalParams::prefix`]. `hs [W,Q,d]` (tracked objects, time-major), `sent [W,d]` (per-frame `[CLS]`),
/// `frame_mask [W]` bool (true = valid) → `Õ [W,Q,d]`.
pub fn temporal_decoder(
    g: &mut Graph,
    root: &Scope<'_>,
    p: &TemporalParams,
    hs: &Value,
    sent: &Value,
    frame_mask: &Value,
) -> Result<Value> {
    let (t, q, d) = (hs.dim(0), hs.dim(1), hs.dim(2));
    let w = &root.pp(&p.prefix);
    let h = g.transpose(hs, &[1, 0, 2])?; // [Q,W,d]
    let s0 = g.unsqueeze(sent, &[0])?; // [1,W,d]
    let s = g.expand(&s0, &[q, t, d])?;
    let invalid = g.not(frame_mask)?;
    let invalid = g.unsqueeze(&invalid, &[0])?;
    let kp = g.expand(&invalid, &[q, t])?;
    let masks = AttnMasks {
        key_padding: Some(&kp),
        attn: None,
    };
    let sent_tap = g.transpose(&s, &[1, 0, 2])?;
    let sent_tap = g.slice(&sent_tap, 1, 0, 1)?;
    let sent_tap = g.reshape(&sent_tap, &[t, d])?;
    g.tap("temporal.sent_feat", &sent_tap)?;
    let h = temporal_blocks(g, w, p, h, s, masks)?;
    let out = g.transpose(&h, &[1, 0, 2])?;
    g.tap("temporal.out", &out)?;
    Ok(out)
}

/// The objects of `B` prompts at once: `hs [B,W,Q,d]`, `sent [B,W,d]`, `frame_mask [B,W]` →
/// `Õ [B,W,Q,d]`. Each object's tracks become `Q` rows of the same `[B·Q, W, d]` row batch the single
/// object uses (its sentence and mask copied to its own rows), so every operation stays row-wise and
/// row `b` equals [`temporal_decoder`] of object `b`; the graph has the same nodes for any `B`, which
/// is what a dynamic batch axis needs (`onnx::batch_axis`).
pub fn temporal_decoder_batched(
    g: &mut Graph,
    root: &Scope<'_>,
    p: &TemporalParams,
    hs: &Value,
    sent: &Value,
    frame_mask: &Value,
) -> Result<Value> {
    let (b, t, q, d) = (hs.dim(0), hs.dim(1), hs.dim(2), hs.dim(3));
    let w = &root.pp(&p.prefix);
    let h = g.transpose(hs, &[0, 2, 1, 3])?; // [B,Q,W,d]
    let h = g.reshape(&h, &[b * q, t, d])?;
    let s = g.unsqueeze(sent, &[1])?; // [B,1,W,d]
    let s = g.expand(&s, &[b, q, t, d])?;
    let s = g.reshape(&s, &[b * q, t, d])?;
    let invalid = g.not(frame_mask)?;
    let invalid = g.unsqueeze(&invalid, &[1])?; // [B,1,W]
    let kp = g.expand(&invalid, &[b, q, t])?;
    let kp = g.reshape(&kp, &[b * q, t])?;
    let masks = AttnMasks {
        key_padding: Some(&kp),
        attn: None,
    };
    let h = temporal_blocks(g, w, p, h, s, masks)?;
    let h = g.reshape(&h, &[b, q, t, d])?;
    g.transpose(&h, &[0, 2, 1, 3])
}

/// The `Lt` blocks over track rows: `h`, `s` `[R,W,d]`, key padding `[R,W]` in `masks`.
fn temporal_blocks(
    g: &mut Graph,
    w: &Scope<'_>,
    p: &TemporalParams,
    mut h: Value,
    mut s: Value,
    masks: AttnMasks<'_>,
) -> Result<Value> {
    for i in 0..p.blocks {
        let lp = w.pp("layer").pp(i);
        // Object stream: temporal self-attention inside each track.
        let sa = mha(
            g,
            &lp.pp("self_attn"),
            &h,
            &h,
            &h,
            p.heads,
            masks,
            AttnWeights::Dropped,
        )?;
        let r = g.add(&h, &sa.out)?;
        h = g.layer_norm(&lp.pp("norm"), &r, 1e-5)?;
        tap_tq(g, &format!("temporal.block{i}.hs"), &h)?;
        // Sentence stream: nn.TransformerDecoderLayer(S, memory = H), post-norm, ReLU.
        let dp = lp.pp("decoder");
        let sa = mha(
            g,
            &dp.pp("self_attn"),
            &s,
            &s,
            &s,
            p.heads,
            masks,
            AttnWeights::Dropped,
        )?;
        let r = g.add(&s, &sa.out)?;
        s = g.layer_norm(&dp.pp("norm1"), &r, 1e-5)?;
        let ca = mha(
            g,
            &dp.pp("multihead_attn"),
            &s,
            &h,
            &h,
            p.heads,
            masks,
            AttnWeights::Dropped,
        )?;
        let r = g.add(&s, &ca.out)?;
        s = g.layer_norm(&dp.pp("norm2"), &r, 1e-5)?;
        let scopes = FfnScopes {
            lin1: dp.pp("linear1"),
            lin2: dp.pp("linear2"),
            norm: dp.pp("norm3"),
        };
        s = ffn(g, &scopes, &s, p.ffn, 1e-5)?;
        tap_tq(g, &format!("temporal.block{i}.tgt"), &s)?;
        // Eq. 3: Õ = LN(Ô + O_v).
        let r = g.add(&h, &s)?;
        h = g.layer_norm(&w.pp("norm").pp(i), &r, 1e-5)?;
        tap_tq(g, &format!("temporal.norm{i}"), &h)?;
    }
    Ok(h)
}

/// Taps a `[Q,W,d]` tensor in the fixture's frame-major `[W,Q,d]` layout.
fn tap_tq(g: &mut Graph, key: &str, x: &Value) -> Result<()> {
    if g.opts.taps {
        let t = g.transpose(x, &[1, 0, 2])?;
        g.tap(key, &t)?;
    }
    Ok(())
}
