//! Feature enhancer (GroundingDINO's transformer encoder, docs/model.md: Feature enhancer): per layer a bi-attention fusion of image
//! and text tokens, a text self-attention layer and a deformable self-attention layer on the image tokens.
//!
//! Inputs are batch-first: image tokens `[B, S, d]` (levels flattened row-major, level by level), their
//! positional embedding `[B, S, d]` (sine + level embedding), text `[B, L, d]`. The image is assumed unpadded
//! (static shapes, valid ratios 1), so no image padding mask exists; padded text tokens are masked with
//! `text_token_mask` (true = real token).

use super::attention::{mha, AttnMasks, AttnWeights};
use super::deformable::{deform_attn, DeformLevels};
use super::ffn::{add_layer_norm_2d, ffn, ffn_2d, FfnScopes};
use crate::error::{Error, Result};
use crate::onnx::builder::{transpose2d, Bias, Graph, Value};
use crate::onnx::Scope;
use crate::tensor::{DType, Tensor};

/// Sizes of the feature enhancer.
#[derive(Clone, Debug)]
pub struct EnhancerParams {
    /// Hidden size `d` (256 in the released models).
    pub d_model: usize,
    /// Number of enhancer layers (6).
    pub layers: usize,
    /// Heads of the deformable self-attention (8).
    pub heads: usize,
    /// Sampling points per head and level (4).
    pub points: usize,
    /// FFN hidden size of the image layers (2048).
    pub ffn: usize,
    /// Heads of the text self-attention (`nheads / 2` = 4).
    pub text_heads: usize,
    /// FFN hidden size of the text self-attention layer (`dim_feedforward / 2` = 1024).
    pub text_ffn: usize,
    /// Inner size of the bi-attention fusion (`dim_feedforward / 2` = 1024).
    pub fusion_dim: usize,
    /// Heads of the bi-attention fusion (`nheads / 2` = 4).
    pub fusion_heads: usize,
    /// (h, w) of every feature level, in flattening order.
    pub level_shapes: Vec<(usize, usize)>,
    /// LayerNorm epsilon (1e-5).
    pub eps: f32,
}

impl EnhancerParams {
    /// The official derivation from the transformer hyper-parameters (`nheads`, `dim_feedforward`).
    pub fn from_transformer(
        d_model: usize,
        layers: usize,
        heads: usize,
        points: usize,
        ffn: usize,
        level_shapes: Vec<(usize, usize)>,
    ) -> Self {
        EnhancerParams {
            d_model,
            layers,
            heads,
            points,
            ffn,
            text_heads: heads / 2,
            text_ffn: ffn / 2,
            fusion_dim: ffn / 2,
            fusion_heads: heads / 2,
            level_shapes,
            eps: 1e-5,
        }
    }

    /// Total number of image tokens `S`.
    pub fn tokens(&self) -> usize {
        self.level_shapes.iter().map(|(h, w)| h * w).sum()
    }
}

/// Graph inputs of the enhancer.
pub struct EnhancerInputs<'a> {
    /// Flattened image tokens `[B, S, d]`.
    pub src: &'a Value,
    /// Image positional embedding (sine + level embedding) `[B, S, d]`.
    pub pos: &'a Value,
    /// Text features `[B, L, d]` (after `feat_map`).
    pub text: &'a Value,
    /// Text positional embedding `[B, L, d]` (see [`crate::graph::input_proj::text_pos_embed`]).
    pub text_pos: &'a Value,
    /// `[B, L]` bool, true = real token.
    pub text_token_mask: &'a Value,
    /// `[B, L, L]` bool sub-sentence mask, true = may attend.
    pub text_self_attention_mask: &'a Value,
}

/// Outputs of the enhancer.
pub struct EnhancerOut {
    /// Image memory `[B, S, d]`.
    pub memory: Value,
    /// Enhanced text `[B, L, d]` (replaces the BERT text everywhere downstream).
    pub memory_text: Value,
}

/// `BiAttentionBlock` (docs/model.md: Feature enhancer, the fusion step): returns the updated (image, text) tokens.
///
/// The residual is added to the LayerNorm-ed inputs. One max per batch item over its logits (heads, image
/// tokens, real text tokens) is subtracted before the ±50000 clamp; the text side subtracts its own row
/// max. The official code takes one max over the whole batch; the runtime's batch items are independent
/// (one frame, or one prompt of a frame), and a softmax does not change with the shift, so each item uses
/// its own. Padded text tokens are excluded from the max, so a padded prompt gives the same result as an
/// unpadded one.
///
/// Its nodes are named in the scope `fusion` (the FP32 policy, src/graph/fp32_policy.rs, keeps its
/// products in f32).
pub fn bi_attention_fusion(
    g: &mut Graph,
    w: &Scope<'_>,
    p: &EnhancerParams,
    v: &Value,
    l: &Value,
    text_token_mask: &Value,
) -> Result<(Value, Value)> {
    g.scoped("fusion", |g| fusion_body(g, w, p, v, l, text_token_mask))
}

fn fusion_body(
    g: &mut Graph,
    w: &Scope<'_>,
    p: &EnhancerParams,
    v: &Value,
    l: &Value,
    text_token_mask: &Value,
) -> Result<(Value, Value)> {
    let (b, s, _) = (v.dim(0), v.dim(1), v.dim(2));
    let nl = l.dim(1);
    let (e, h) = (p.fusion_dim, p.fusion_heads);
    if h == 0 || e % h != 0 {
        return Err(Error::Graph(format!(
            "{}: fusion dim {e} not divisible by {h} heads",
            w.prefix()
        )));
    }
    let hd = e / h;
    let d = v.dim(2);
    let vn = g.layer_norm(&w.pp("layer_norm_v"), v, p.eps)?;
    let ln = g.layer_norm(&w.pp("layer_norm_l"), l, p.eps)?;
    let attn = w.pp("attn");
    let split = |g: &mut Graph, x: &Value, n: usize| -> Result<Value> {
        let r = g.reshape(x, &[b, n, h, hd])?;
        g.transpose(&r, &[0, 2, 1, 3]) // [B, H, n, hd]
    };
    // The image side's three projections (`v_proj`, `values_v_proj`, `out_v_proj`, each between d and
    // e over all S image tokens) are applied on the text side of each product instead, where there are
    // only L tokens: the same sums, re-associated (see `docs/model.md`: Feature enhancer).
    let k = g.linear(&attn.pp("l_proj"), &ln, e, Bias::With)?;
    let k = split(g, &k, nl)?;
    // The official scaling of the image queries, applied to the keys (it multiplies their product).
    let k = g.mul_scalar(&k, (hd as f64).powf(-0.5) as f32)?;
    let val_l = g.linear(&attn.pp("values_l_proj"), &ln, e, Bias::With)?;
    let val_l = split(g, &val_l, nl)?;

    // logits[b, s, h, t] = vn[b, s] · (W_q,h^T k[b, h, t]) + b_q,h · k[b, h, t]
    let wq = g.derived_weight(
        &attn.pp("v_proj"),
        "weight",
        &[e, d],
        "heads",
        &[h, hd, d],
        |t| t.clone().reshape(&[h, hd, d]),
    )?;
    let bq = g.derived_weight(
        &attn.pp("v_proj"),
        "bias",
        &[e],
        "heads",
        &[h, hd, 1],
        |t| t.clone().reshape(&[h, hd, 1]),
    )?;
    let kq = g.matmul(&k, &wq)?; // [B, H, L, d]
    let kq = g.reshape(&kq, &[b, h * nl, d])?;
    let kq = g.transpose(&kq, &[0, 2, 1])?; // [B, d, H·L]
    let kb = g.matmul(&k, &bq)?; // [B, H, L, 1]
    let kb = g.reshape(&kb, &[b, 1, h * nl])?;
    let a = g.matmul(&vn, &kq)?; // [B, S, H·L]
    let a = g.add(&a, &kb)?;
    let a = g.reshape(&a, &[b, s, h, nl])?;

    let real = g.reshape(text_token_mask, &[b, 1, 1, nl])?;
    let ninf = g.scalar(f32::NEG_INFINITY);
    let a_real = g.where_(&real, &a, &ninf)?;
    // Per batch item (keepdims `[B,1,1,1]`): an item's softmax inputs must not depend on the other items
    // of the batch. With B = 1 this is the same single maximum as the official global `max()`.
    let gmax = g.reduce_max(&a_real, &[1, 2, 3], true)?;
    let a = g.sub(&a, &gmax)?;
    let a = g.clip(&a, -50000.0, 50000.0)?;

    // text ← image: rows are tokens, softmax over image tokens
    let at = g.transpose(&a, &[0, 2, 3, 1])?; // [B, H, L, S]
    let rmax = g.reduce_max(&at, &[3], true)?;
    let at = g.sub(&at, &rmax)?;
    let at = g.clip(&at, -50000.0, 50000.0)?;
    let pl = g.softmax(&at, -1)?;
    // image ← text: padded tokens blocked
    let av = g.where_(&real, &a, &ninf)?;
    let pv = g.softmax(&av, -1)?; // [B, S, H, L]

    // image side: Σ_{h,t} pv[b, s, h, t] · (W_out,h val_l[b, h, t]) + b_out, with gamma_v folded into
    // both terms.
    let gv = g.weight(w, "gamma_v", &[d])?;
    let wo = g.derived_weight(
        &attn.pp("out_v_proj"),
        "weight",
        &[d, e],
        "T_heads",
        &[h, hd, d],
        |t| transpose2d(t)?.reshape(&[h, hd, d]),
    )?;
    let bo = g.weight(&attn.pp("out_v_proj"), "bias", &[d])?;
    let nv = g.matmul(&val_l, &wo)?; // [B, H, L, d]
    let nv = g.mul(&nv, &gv)?;
    let nv = g.reshape(&nv, &[b, h * nl, d])?;
    let pv = g.reshape(&pv, &[b, s, h * nl])?;
    let ov = g.matmul(&pv, &nv)?; // [B, S, d]
    let gbo = g.mul(&gv, &bo)?;
    let dv = g.add(&ov, &gbo)?;
    let v_out = g.add(&vn, &dv)?;

    // text side: (Σ_s pl[b, h, t, s] vn[b, s]) W_vv,h^T + b_vv,h (the probabilities sum to 1 over s)
    let wvv = g.derived_weight(
        &attn.pp("values_v_proj"),
        "weight",
        &[e, d],
        "heads_T",
        &[h, d, hd],
        |t| heads_transposed(t, h, hd, d),
    )?;
    let bvv = g.derived_weight(
        &attn.pp("values_v_proj"),
        "bias",
        &[e],
        "heads",
        &[h, 1, hd],
        |t| t.clone().reshape(&[h, 1, hd]),
    )?;
    let pl = g.reshape(&pl, &[b, h * nl, s])?;
    let lv = g.matmul(&pl, &vn)?; // [B, H·L, d]
    let lv = g.reshape(&lv, &[b, h, nl, d])?;
    let ol = g.matmul(&lv, &wvv)?; // [B, H, L, hd]
    let ol = g.add(&ol, &bvv)?;
    let ol = g.transpose(&ol, &[0, 2, 1, 3])?;
    let ol = g.reshape(&ol, &[b, nl, e])?;
    let ol = g.linear(&attn.pp("out_l_proj"), &ol, d, Bias::With)?;

    let gl = g.weight(w, "gamma_l", &[d])?;
    let dl = g.mul(&gl, &ol)?;
    let l_out = g.add(&ln, &dl)?;
    Ok((v_out, l_out))
}

/// `[H·hd, d]` (a Linear weight whose outputs are H heads of hd) → `[H, d, hd]`: per head, the transposed
/// `[hd, d]` block.
fn heads_transposed(t: &Tensor, h: usize, hd: usize, d: usize) -> Result<Tensor> {
    let x = t.f32s()?;
    let mut o = vec![0f32; h * d * hd];
    for hh in 0..h {
        for c in 0..hd {
            for j in 0..d {
                o[(hh * d + j) * hd + c] = x[(hh * hd + c) * d + j];
            }
        }
    }
    Tensor::from_f32(&[h, d, hd], o)
}

/// Text self-attention layer (`TransformerEncoderLayer`, post-norm): q = k = text + text_pos, v = text,
/// attention mask = NOT the sub-sentence mask, no key-padding mask (as the official code).
pub fn text_enhancer_layer(
    g: &mut Graph,
    w: &Scope<'_>,
    p: &EnhancerParams,
    text: &Value,
    text_pos: &Value,
    blocked: &Value,
) -> Result<Value> {
    let qk = g.add(text, text_pos)?;
    let sa = mha(
        g,
        &w.pp("self_attn"),
        &qk,
        &qk,
        text,
        p.text_heads,
        AttnMasks {
            key_padding: None,
            attn: Some(blocked),
        },
        AttnWeights::Dropped,
    )?;
    let x = g.add(text, &sa.out)?;
    let x = g.layer_norm(&w.pp("norm1"), &x, p.eps)?;
    let scopes = FfnScopes {
        lin1: w.pp("linear1"),
        lin2: w.pp("linear2"),
        norm: w.pp("norm2"),
    };
    ffn(g, &scopes, &x, p.text_ffn, p.eps)
}

/// Deformable self-attention encoder layer on the image tokens (post-norm, 2-D reference points).
pub fn deformable_encoder_layer(
    g: &mut Graph,
    w: &Scope<'_>,
    p: &EnhancerParams,
    src: &Value,
    pos: &Value,
    reference: &Value,
) -> Result<Value> {
    let q = g.add(src, pos)?;
    let levels = DeformLevels {
        shapes: p.level_shapes.clone(),
    };
    let a = deform_attn(
        g,
        &w.pp("self_attn"),
        &q,
        src,
        reference,
        &levels,
        p.heads,
        p.points,
        None,
    )?;
    let x = add_layer_norm_2d(g, &w.pp("norm1"), src, &a, p.eps)?;
    let scopes = FfnScopes {
        lin1: w.pp("linear1"),
        lin2: w.pp("linear2"),
        norm: w.pp("norm2"),
    };
    ffn_2d(g, &scopes, &x, p.ffn, p.eps)
}

fn check_inputs(p: &EnhancerParams, i: &EnhancerInputs<'_>) -> Result<(usize, usize)> {
    if i.src.rank() != 3 || i.text.rank() != 3 {
        return Err(Error::Graph(format!(
            "enhancer: image tokens {:?} and text {:?} must be rank 3",
            i.src.shape, i.text.shape
        )));
    }
    let (b, s, d) = (i.src.dim(0), i.src.dim(1), i.src.dim(2));
    if d != p.d_model || s != p.tokens() {
        return Err(Error::Graph(format!(
            "enhancer: image tokens {:?}, expected [B, {}, {}] for levels {:?}",
            i.src.shape,
            p.tokens(),
            p.d_model,
            p.level_shapes
        )));
    }
    if i.pos.shape != i.src.shape {
        return Err(Error::Graph(format!(
            "enhancer: position embedding {:?} does not match image tokens {:?}",
            i.pos.shape, i.src.shape
        )));
    }
    let l = i.text.dim(1);
    if i.text.shape != [b, l, d] || i.text_pos.shape != i.text.shape {
        return Err(Error::Graph(format!(
            "enhancer: text {:?} / text_pos {:?}, expected [{b}, L, {d}]",
            i.text.shape, i.text_pos.shape
        )));
    }
    if i.text_token_mask.shape != [b, l] || i.text_token_mask.dtype != DType::Bool {
        return Err(Error::Graph(format!(
            "enhancer: text_token_mask must be bool [{b}, {l}], got {:?} {:?}",
            i.text_token_mask.dtype, i.text_token_mask.shape
        )));
    }
    if i.text_self_attention_mask.shape != [b, l, l]
        || i.text_self_attention_mask.dtype != DType::Bool
    {
        return Err(Error::Graph(format!(
            "enhancer: text_self_attention_mask must be bool [{b}, {l}, {l}], got {:?} {:?}",
            i.text_self_attention_mask.dtype, i.text_self_attention_mask.shape
        )));
    }
    Ok((b, s))
}

/// The whole feature enhancer; `w` is its scope (`transformer.encoder`). Taps `encoder.layer{i}.{fusion_v, fusion_l, text,
/// deform}` (the last layer's image output is tapped as `encoder.memory`) and `encoder.memory_text`.
pub fn feature_enhancer(
    g: &mut Graph,
    w: &Scope<'_>,
    p: &EnhancerParams,
    i: &EnhancerInputs<'_>,
) -> Result<EnhancerOut> {
    let (b, s) = check_inputs(p, i)?;
    let nlev = p.level_shapes.len();
    let refs = g.const_f32(
        &[1, s, nlev, 2],
        super::position::encoder_reference_points(&p.level_shapes),
    )?;
    let refs = g.expand(&refs, &[b, s, nlev, 2])?;
    let blocked = g.not(i.text_self_attention_mask)?;
    let mut v = i.src.clone();
    let mut l = i.text.clone();
    for li in 0..p.layers {
        let (nv, nl) = g.scoped(&format!("enc{li}"), |g| {
            let (fv, fl) = bi_attention_fusion(
                g,
                &w.pp("fusion_layers").pp(li),
                p,
                &v,
                &l,
                i.text_token_mask,
            )?;
            g.tap(&format!("encoder.layer{li}.fusion_v"), &fv)?;
            g.tap(&format!("encoder.layer{li}.fusion_l"), &fl)?;
            let t =
                text_enhancer_layer(g, &w.pp("text_layers").pp(li), p, &fl, i.text_pos, &blocked)?;
            g.tap(&format!("encoder.layer{li}.text"), &t)?;
            let o = deformable_encoder_layer(g, &w.pp("layers").pp(li), p, &fv, i.pos, &refs)?;
            if li + 1 < p.layers {
                g.tap(&format!("encoder.layer{li}.deform"), &o)?;
            }
            Ok((o, t))
        })?;
        v = nv;
        l = nl;
    }
    g.tap("encoder.memory", &v)?;
    g.tap("encoder.memory_text", &l)?;
    Ok(EnhancerOut {
        memory: v,
        memory_text: l,
    })
}
