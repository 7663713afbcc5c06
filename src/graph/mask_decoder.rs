//! Grounding-guided deformable mask decoder (docs/model.md: Grounding-guided deformable mask decoder) and the mask dot product.
//!
//! Each block is a deformable transformer decoder layer over the stride-4 features `F_seg`: self-attention
//! among the tracks → text cross-attention → deformable attention (1 level, 16 points, the tracked 4-D box
//! as reference) → FFN, all post-norm. Query positions come from the main decoder's `ref_point_head` on
//! the sine embedding of the tracked box.

use super::attention::AttnWeights;
use super::deformable::{deformable_decoder_layer, DecoderLayerInputs, DecoderLayerParams};
use super::mlp::mlp;
use super::position::query_sine_embed;
use crate::error::Result;
use crate::onnx::builder::{Graph, Value};
use crate::onnx::Scope;

/// Sizes of the mask decoder.
#[derive(Clone, Debug)]
pub struct MaskDecoderParams {
    /// Number of blocks (`SegHead.n_layers`, 3).
    pub layers: usize,
    /// Attention heads (`SegHead.n_heads`, 8).
    pub heads: usize,
    /// Deformable sampling points (`SegHead.n_points`, 16).
    pub points: usize,
    /// FFN hidden size (`SegHead.d_ffn`).
    pub ffn: usize,
    /// LayerNorm epsilon (1e-5).
    pub eps: f32,
}

/// Runs the mask decoder and the mask dot product. `w` is the root scope: the blocks live under
/// `mask_decoder`, and the query positions come from the main decoder's
/// `transformer.decoder.ref_point_head`.
///
/// `objects [B,Q,d]` (temporal output), `refs [B,Q,4]` (tracked boxes), `text [B,L,d]`, `text_mask [B,L]`
/// (true = real token), `f_seg [B,d,h,w]` → mask logits `[B,Q,h,w]`.
#[allow(clippy::too_many_arguments)]
pub fn mask_decoder(
    g: &mut Graph,
    w: &Scope<'_>,
    p: &MaskDecoderParams,
    objects: &Value,
    refs: &Value,
    text: &Value,
    text_mask: &Value,
    f_seg: &Value,
) -> Result<Value> {
    let (b, q, d) = (objects.dim(0), objects.dim(1), objects.dim(2));
    let (h, wd) = (f_seg.dim(2), f_seg.dim(3));
    let sine = query_sine_embed(g, refs, d)?;
    let pos = mlp(
        g,
        &w.pp("transformer").pp("decoder").pp("ref_point_head"),
        &sine,
        d,
        d,
        2,
    )?;
    g.tap("mask_decoder.query_pos", &pos)?;
    let ref4 = g.reshape(refs, &[b, q, 1, 4])?;
    g.tap("mask_decoder.ref_points_input", &ref4)?;
    if g.opts.taps {
        let ss = g.const_i64(&[1, 2], vec![h as i64, wd as i64])?;
        g.tap("mask_decoder.memory_spatial_shapes", &ss)?;
    }
    let flat = g.reshape(f_seg, &[b, d, h * wd])?;
    let value = g.transpose(&flat, &[0, 2, 1])?; // [B, h·w, d]
    let pad = g.not(text_mask)?;
    let layer = DecoderLayerParams {
        heads: p.heads,
        points: p.points,
        level_shapes: vec![(h, wd)],
        ffn: p.ffn,
        eps: p.eps,
    };
    let mut x = objects.clone();
    for i in 0..p.layers {
        let (out, _) = deformable_decoder_layer(
            g,
            &w.pp("mask_decoder").pp(i),
            &layer,
            &DecoderLayerInputs {
                x: &x,
                query_pos: &pos,
                reference: &ref4,
                memory: &value,
                text,
                text_pad: &pad,
            },
            AttnWeights::Dropped,
        )?;
        x = out;
        g.tap(&format!("mask_decoder.layer{i}.out"), &x)?;
    }
    let m = g.matmul(&x, &flat)?; // [B,Q,h·w]
    let m = g.reshape(&m, &[b, q, h, wd])?;
    g.tap("mask.pred_masks", &m)?;
    Ok(m)
}
