//! Grounding-guided deformable mask decoder (docs/model.md: Grounding-guided deformable mask decoder) and the mask dot product.
//!
//! Each block is a deformable transformer decoder layer over the stride-4 features `F_seg`: self-attention
//! among the tracks → text cross-attention → deformable attention (1 level, 16 points, the tracked 4-D box
//! as reference) → FFN, all post-norm. Query positions come from the main decoder's `ref_point_head` on
//! the sine embedding of the tracked box.

use super::attention::{deform_attn, mha, mlp, AttnMasks, DeformLevels};
use super::builder::{Graph, Value, Weights};
use super::decoder::query_sine_embed;
use crate::error::Result;

/// Sizes of the mask decoder.
#[derive(Clone, Debug)]
pub struct MaskDecoderParams {
    /// Number of blocks (`SegHead.n_layers`, 3).
    pub layers: usize,
    /// Attention heads (`SegHead.n_heads`, 8).
    pub heads: usize,
    /// Deformable sampling points (`SegHead.n_points`, 16).
    pub points: usize,
}

/// Runs the mask decoder and the mask dot product.
///
/// `objects [B,Q,d]` (temporal output), `refs [B,Q,4]` (tracked boxes), `text [B,L,d]`, `text_mask [B,L]`
/// (true = real token), `f_seg [B,d,h,w]` → mask logits `[B,Q,h,w]`.
#[allow(clippy::too_many_arguments)]
pub fn mask_decoder(
    g: &mut Graph,
    w: &dyn Weights,
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
    let pos = mlp(g, w, "transformer.decoder.ref_point_head", &sine, 2)?;
    g.tap("mask_decoder.query_pos", &pos)?;
    let ref4 = g.reshape(refs, &[b, q, 1, 4])?;
    g.tap("mask_decoder.ref_points_input", &ref4)?;
    if g.opts.taps {
        let ss = g.const_i64(&[1, 2], vec![h as i64, wd as i64])?;
        g.tap("mask_decoder.memory_spatial_shapes", &ss)?;
    }
    let flat = g.reshape(f_seg, &[b, d, h * wd])?;
    let value = g.transpose(&flat, &[0, 2, 1])?; // [B, h·w, d]
    let pad = g.not(text_mask);
    let masks = AttnMasks {
        key_padding: Some(&pad),
        attn: None,
    };
    let levels = DeformLevels {
        shapes: vec![(h, wd)],
    };
    let mut x = objects.clone();
    for i in 0..p.layers {
        let pre = format!("mask_decoder.{i}");
        let qk = g.add(&x, &pos)?;
        let sa = mha(
            g,
            w,
            &format!("{pre}.self_attn"),
            &qk,
            &qk,
            &x,
            p.heads,
            AttnMasks::default(),
            false,
        )?;
        let r = g.add(&x, &sa.out)?;
        x = g.layer_norm(w, &r, &format!("{pre}.norm2"), 1e-5)?;
        let qx = g.add(&x, &pos)?;
        let ca = mha(
            g,
            w,
            &format!("{pre}.ca_text"),
            &qx,
            text,
            text,
            p.heads,
            masks,
            false,
        )?;
        let r = g.add(&x, &ca.out)?;
        x = g.layer_norm(w, &r, &format!("{pre}.catext_norm"), 1e-5)?;
        let qx = g.add(&x, &pos)?;
        let da = deform_attn(
            g,
            w,
            &format!("{pre}.cross_attn"),
            &qx,
            &value,
            &ref4,
            &levels,
            p.heads,
            p.points,
            None,
        )?;
        let r = g.add(&x, &da)?;
        x = g.layer_norm(w, &r, &format!("{pre}.norm1"), 1e-5)?;
        let f = g.linear(w, &x, &format!("{pre}.linear1"), true)?;
        let f = g.relu(&f);
        let f = g.linear(w, &f, &format!("{pre}.linear2"), true)?;
        let r = g.add(&x, &f)?;
        x = g.layer_norm(w, &r, &format!("{pre}.norm3"), 1e-5)?;
        g.tap(&format!("mask_decoder.layer{i}.out"), &x)?;
    }
    let m = g.matmul(&x, &flat)?; // [B,Q,h·w]
    let m = g.reshape(&m, &[b, q, h, wd])?;
    g.tap("mask.pred_masks", &m)?;
    Ok(m)
}
