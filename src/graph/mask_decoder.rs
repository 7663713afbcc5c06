//! Grounding-guided deformable mask decoder (spec §4.5, §9.24) and the mask dot product.
//!
//! Each block is a deformable transformer decoder layer over the stride-4 features `F_seg`: self-attention
//! among the tracks → text cross-attention → deformable attention (1 level, 16 points, the tracked 4-D box
//! as reference) → FFN, all post-norm. Query positions come from the main decoder's `ref_point_head` on
//! the sine embedding of the tracked box.

use super::attention::{deform_attn, mha, mlp, AttnMasks, DeformLevels};
use super::builder::{Graph, Value, Weights};
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

/// `sine4(cx, cy, w, h) = [E(cy), E(cx), E(w), E(h)]` with `E(z)[2k] = sin(2π·z / 10000^(2k/F))`,
/// `E(z)[2k+1] = cos(...)`, `F = d/2` features per coordinate (the official width 128 at d = 256).
pub fn box_sine_embed(g: &mut Graph, boxes: &Value, d_model: usize) -> Result<Value> {
    let f = d_model / 2;
    let dim_t: Vec<f32> = (0..f)
        .map(|i| 10000f32.powf((2 * (i / 2)) as f32 / f as f32))
        .collect();
    let dim_t = g.const_f32(&[f], dim_t)?;
    let even: Vec<bool> = (0..f).map(|i| i % 2 == 0).collect();
    let even = g.constant(
        "even_lanes",
        &crate::tensor::Tensor::new(vec![f], crate::tensor::Data::Bool(even))?,
    );
    let scaled = g.mul_scalar(boxes, 2.0 * std::f32::consts::PI)?;
    let mut parts = Vec::with_capacity(4);
    for c in [1usize, 0, 2, 3] {
        let z = g.slice(&scaled, -1, c, c + 1)?; // [..., 1]
        let p = g.div(&z, &dim_t)?; // [..., F]
        let s = g.sin(&p);
        let co = g.cos(&p);
        parts.push(g.where_(&even, &s, &co)?);
    }
    let refs: Vec<&Value> = parts.iter().collect();
    g.concat(&refs, -1)
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
    let sine = box_sine_embed(g, refs, d)?;
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
