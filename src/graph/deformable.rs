//! Multi-scale deformable attention (the projections around the `MSDeformAttn` core op) and the one
//! deformable transformer decoder layer that both the cross-modality decoder and the mask decoder stack.

use super::attention::{mha, AttnMasks, AttnWeights};
use super::ffn::{ffn, FfnScopes};
use crate::error::{Error, Result};
use crate::onnx::builder::{Bias, Graph, Value};
use crate::onnx::Scope;

/// Static description of the value maps a deformable attention reads.
#[derive(Clone, Debug)]
pub struct DeformLevels {
    /// (h, w) per level, in flattening order.
    pub shapes: Vec<(usize, usize)>,
}

/// `MultiScaleDeformableAttention` (docs/model.md: Multi-scale deformable attention): projections around the [`Graph::ms_deform_attn`] core.
///
/// `query [B,Nq,d]`, `value_in [B,S,d]`, `reference [B,Nq,L,2]` (points) or `[B,Nq,L,4]` (boxes, cx cy w h),
/// `value_mask [B,S]` bool (true = padded, zeroed) optional. Weights of scope `w`: `{value_proj,
/// sampling_offsets, attention_weights, output_proj}`.
#[allow(clippy::too_many_arguments)]
pub fn deform_attn(
    g: &mut Graph,
    w: &Scope<'_>,
    query: &Value,
    value_in: &Value,
    reference: &Value,
    levels: &DeformLevels,
    heads: usize,
    points: usize,
    value_mask: Option<&Value>,
) -> Result<Value> {
    let (b, nq, d) = (query.dim(0), query.dim(1), query.dim(2));
    let s = value_in.dim(1);
    let l = levels.shapes.len();
    let dh = d / heads;
    let mut v = g.linear(&w.pp("value_proj"), value_in, d, Bias::With)?;
    if let Some(m) = value_mask {
        let m = g.unsqueeze(m, &[-1])?;
        let zero = g.scalar(0.0);
        v = g.where_(&m, &zero, &v)?;
    }
    let v = g.reshape(&v, &[b, s, heads, dh])?;
    let off = g.linear(
        &w.pp("sampling_offsets"),
        query,
        heads * l * points * 2,
        Bias::With,
    )?;
    let att = g.linear(
        &w.pp("attention_weights"),
        query,
        heads * l * points,
        Bias::With,
    )?;
    let att = g.reshape(&att, &[b, nq, heads, l * points])?;
    let att = g.softmax(&att, -1)?;
    let att = g.reshape(&att, &[b, nq, heads, l, points])?;
    let loc = match reference.dim(-1) {
        2 => {
            // Kept in the projection's `[B, Nq, H·L·P·2]` layout: the divisor (w, h of the point's level)
            // and the reference point are spelled out per element of the last axis, so the Div and the
            // Add are plain row broadcasts / element-wise (the same values and operations as dividing
            // `[B, Nq, H, L, P, 2]` by `[L, 2]`, without the strided broadcast).
            let norm: Vec<f32> = (0..heads)
                .flat_map(|_| {
                    levels
                        .shapes
                        .iter()
                        .flat_map(|&(h, wd)| (0..points).flat_map(move |_| [wd as f32, h as f32]))
                })
                .collect();
            let norm = g.const_f32(&[heads * l * points * 2], norm)?;
            let o = g.div(&off, &norm)?;
            let r = g.reshape(reference, &[b, nq, 1, l, 1, 2])?;
            let r = g.expand(&r, &[b, nq, heads, l, points, 2])?;
            let r = g.reshape(&r, &[b, nq, heads * l * points * 2])?;
            let loc = g.add(&r, &o)?;
            g.reshape(&loc, &[b, nq, heads, l, points, 2])?
        }
        4 => {
            let off = g.reshape(&off, &[b, nq, heads, l, points, 2])?;
            let xy = g.slice(reference, -1, 0, 2)?;
            let wh = g.slice(reference, -1, 2, 4)?;
            let xy = g.reshape(&xy, &[b, nq, 1, l, 1, 2])?;
            let wh = g.reshape(&wh, &[b, nq, 1, l, 1, 2])?;
            let pts = g.scalar(points as f32);
            let o = g.div(&off, &pts)?;
            let o = g.mul(&o, &wh)?;
            let o = g.mul_scalar(&o, 0.5)?;
            g.add(&xy, &o)?
        }
        n => {
            return Err(Error::Graph(format!(
                "{}: reference must end in 2 or 4, got {n}",
                w.prefix()
            )))
        }
    };
    let out = g.ms_deform_attn(&v, &levels.shapes, &loc, &att)?;
    g.linear(&w.pp("output_proj"), &out, d, Bias::With)
}

/// Sizes of one [`deformable_decoder_layer`].
#[derive(Clone, Debug)]
pub struct DecoderLayerParams {
    /// Attention heads of the self, text cross and deformable attention.
    pub heads: usize,
    /// Deformable sampling points per head and level.
    pub points: usize,
    /// (h, w) of every level of the memory the layer samples, in flattening order.
    pub level_shapes: Vec<(usize, usize)>,
    /// FFN hidden size.
    pub ffn: usize,
    /// LayerNorm epsilon.
    pub eps: f32,
}

/// What one [`deformable_decoder_layer`] reads, all batch-first.
pub struct DecoderLayerInputs<'a> {
    /// Queries `[B, N, d]`.
    pub x: &'a Value,
    /// Query position embedding `[B, N, d]`, added to the queries of every attention.
    pub query_pos: &'a Value,
    /// Reference boxes or points per level `[B, N, L, 4 | 2]`.
    pub reference: &'a Value,
    /// Memory the deformable attention samples `[B, S, d]`.
    pub memory: &'a Value,
    /// Text tokens `[B, T, d]`.
    pub text: &'a Value,
    /// `[B, T]` bool, true on padded text tokens.
    pub text_pad: &'a Value,
}

/// One deformable transformer decoder layer, post-norm, as both the cross-modality decoder and the mask
/// decoder stack it: self-attention (`self_attn`, `norm2`) → text cross-attention (`ca_text`,
/// `catext_norm`) → deformable cross-attention on the memory (`cross_attn`, `norm1`) → FFN (`linear1`,
/// `linear2`, `norm3`), the query position added to the queries of every attention.
///
/// Returns the layer output `[B, N, d]` and, with [`AttnWeights::Averaged`], the self-attention's
/// head-averaged probabilities `[B, N, N]`.
pub fn deformable_decoder_layer(
    g: &mut Graph,
    w: &Scope<'_>,
    p: &DecoderLayerParams,
    i: &DecoderLayerInputs<'_>,
    self_weights: AttnWeights,
) -> Result<(Value, Option<Value>)> {
    let qk = g.add(i.x, i.query_pos)?;
    let sa = mha(
        g,
        &w.pp("self_attn"),
        &qk,
        &qk,
        i.x,
        p.heads,
        AttnMasks::default(),
        self_weights,
    )?;
    let x = g.add(i.x, &sa.out)?;
    let x = g.layer_norm(&w.pp("norm2"), &x, p.eps)?;

    let q = g.add(&x, i.query_pos)?;
    let ca = mha(
        g,
        &w.pp("ca_text"),
        &q,
        i.text,
        i.text,
        p.heads,
        AttnMasks {
            key_padding: Some(i.text_pad),
            attn: None,
        },
        AttnWeights::Dropped,
    )?;
    let x = g.add(&x, &ca.out)?;
    let x = g.layer_norm(&w.pp("catext_norm"), &x, p.eps)?;

    let q = g.add(&x, i.query_pos)?;
    let levels = DeformLevels {
        shapes: p.level_shapes.clone(),
    };
    let da = deform_attn(
        g,
        &w.pp("cross_attn"),
        &q,
        i.memory,
        i.reference,
        &levels,
        p.heads,
        p.points,
        None,
    )?;
    let x = g.add(&x, &da)?;
    let x = g.layer_norm(&w.pp("norm1"), &x, p.eps)?;
    let scopes = FfnScopes {
        lin1: w.pp("linear1"),
        lin2: w.pp("linear2"),
        norm: w.pp("norm3"),
    };
    let x = ffn(g, &scopes, &x, p.ffn, p.eps)?;
    Ok((x, sa.avg_weights))
}
