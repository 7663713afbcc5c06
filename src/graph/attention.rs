//! Building blocks shared by several modules: multi-head attention (`nn.MultiheadAttention` layout),
//! the multi-scale deformable attention module, MLPs, the contrastive class head and `inverse_sigmoid`.
//!
//! All tensors are batch-first (`[B, N, d]`), unlike the official seq-first code; results are identical.

use super::builder::{Graph, Value, Weights};
use crate::error::{Error, Result};
use crate::tensor::DType;

/// Result of [`mha`]: the attended output and, when asked, the head-averaged probabilities `[B, Lq, Lk]`.
pub struct MhaOut {
    /// `[B, Lq, d]` after `out_proj`.
    pub out: Value,
    /// Head-averaged attention probabilities (rows = queries).
    pub avg_weights: Option<Value>,
}

/// Masks to apply inside attention. `true` means *blocked* (PyTorch's boolean convention).
#[derive(Default, Clone, Copy)]
pub struct AttnMasks<'a> {
    /// `[B, Lk]` bool, true on padded keys.
    pub key_padding: Option<&'a Value>,
    /// `[B, Lq, Lk]` or `[1, Lq, Lk]` bool, true where a query may not attend a key.
    pub attn: Option<&'a Value>,
}

#[allow(clippy::too_many_arguments)]
/// `nn.MultiheadAttention` with packed `in_proj_weight [3d, d]` / `in_proj_bias [3d]` and `out_proj`.
///
/// `q_in [B,Lq,d]`, `k_in`/`v_in [B,Lk,d]`. Scale 1/√(d/heads); masked logits are set to −∞ before the
/// softmax (a fully masked row would be NaN, exactly as in PyTorch; callers never produce one).
pub fn mha(
    g: &mut Graph,
    w: &dyn Weights,
    prefix: &str,
    q_in: &Value,
    k_in: &Value,
    v_in: &Value,
    heads: usize,
    masks: AttnMasks<'_>,
    want_weights: bool,
) -> Result<MhaOut> {
    let (b, lq, d) = (q_in.dim(0), q_in.dim(1), q_in.dim(2));
    let lk = k_in.dim(1);
    if d % heads != 0 {
        return Err(Error::Graph(format!(
            "{prefix}: d={d} not divisible by {heads} heads"
        )));
    }
    let dh = d / heads;
    let wkey = format!("{prefix}.in_proj_weight");
    let bkey = format!("{prefix}.in_proj_bias");
    let proj = |g: &mut Graph, x: &Value, part: usize, tag: &str| -> Result<Value> {
        let wt = g.derived_weight(w, &wkey, &format!("{tag}T"), |t| {
            let v = t.f32s()?;
            if t.shape() != [3 * d, d] {
                return Err(Error::Checkpoint(format!(
                    "{wkey}: shape {:?}, expected [{}, {d}]",
                    t.shape(),
                    3 * d
                )));
            }
            let rows = &v[part * d * d..(part + 1) * d * d];
            super::builder::transpose2d(&crate::tensor::Tensor::from_f32(&[d, d], rows.to_vec())?)
        })?;
        let bias = g.derived_weight(w, &bkey, tag, |t| {
            let v = t.f32s()?;
            crate::tensor::Tensor::from_f32(&[d], v[part * d..(part + 1) * d].to_vec())
        })?;
        let y = g.matmul(x, &wt)?;
        g.add(&y, &bias)
    };
    let q = proj(g, q_in, 0, "q")?;
    let k = proj(g, k_in, 1, "k")?;
    let v = proj(g, v_in, 2, "v")?;
    // [B, L, H, dh] → [B, H, L, dh]
    let split = |g: &mut Graph, x: &Value, l: usize| -> Result<Value> {
        let r = g.reshape(x, &[b, l, heads, dh])?;
        g.transpose(&r, &[0, 2, 1, 3])
    };
    let q = split(g, &q, lq)?;
    let q = g.mul_scalar(&q, 1.0 / (dh as f32).sqrt())?;
    let k = split(g, &k, lk)?;
    let v = split(g, &v, lk)?;
    let kt = g.transpose(&k, &[0, 1, 3, 2])?;
    let mut s = g.matmul(&q, &kt)?; // [B,H,Lq,Lk]
    let mut blocked: Option<Value> = None;
    if let Some(kp) = masks.key_padding {
        let m = g.reshape(kp, &[b, 1, 1, lk])?;
        blocked = Some(m);
    }
    if let Some(am) = masks.attn {
        let m = g.unsqueeze(am, &[1])?; // [B|1,1,Lq,Lk]
        blocked = Some(match blocked {
            Some(prev) => g.or(&prev, &m)?,
            None => m,
        });
    }
    if let Some(m) = blocked {
        let ninf = g.scalar(f32::NEG_INFINITY);
        s = g.where_(&m, &ninf, &s)?;
    }
    let p = g.softmax(&s, -1);
    let o = g.matmul(&p, &v)?; // [B,H,Lq,dh]
    let o = g.transpose(&o, &[0, 2, 1, 3])?;
    let o = g.reshape(&o, &[b, lq, d])?;
    let out = g.linear(w, &o, &format!("{prefix}.out_proj"), true)?;
    let avg_weights = if want_weights {
        Some(g.reduce_mean(&p, &[1], false))
    } else {
        None
    };
    Ok(MhaOut { out, avg_weights })
}

/// Static description of the value maps a deformable attention reads.
#[derive(Clone, Debug)]
pub struct DeformLevels {
    /// (h, w) per level, in flattening order.
    pub shapes: Vec<(usize, usize)>,
}

/// `MultiScaleDeformableAttention` (docs/model.md: Multi-scale deformable attention): projections around the [`Graph::ms_deform_attn`] core.
///
/// `query [B,Nq,d]`, `value_in [B,S,d]`, `reference [B,Nq,L,2]` (points) or `[B,Nq,L,4]` (boxes, cx cy w h),
/// `value_mask [B,S]` bool (true = padded, zeroed) optional. Weights under `prefix.{value_proj,
/// sampling_offsets, attention_weights, output_proj}`.
#[allow(clippy::too_many_arguments)]
pub fn deform_attn(
    g: &mut Graph,
    w: &dyn Weights,
    prefix: &str,
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
    let mut v = g.linear(w, value_in, &format!("{prefix}.value_proj"), true)?;
    if let Some(m) = value_mask {
        let m = g.unsqueeze(m, &[-1])?;
        let zero = g.scalar(0.0);
        v = g.where_(&m, &zero, &v)?;
    }
    let v = g.reshape(&v, &[b, s, heads, dh])?;
    let off = g.linear(w, query, &format!("{prefix}.sampling_offsets"), true)?;
    let off = g.reshape(&off, &[b, nq, heads, l, points, 2])?;
    let att = g.linear(w, query, &format!("{prefix}.attention_weights"), true)?;
    let att = g.reshape(&att, &[b, nq, heads, l * points])?;
    let att = g.softmax(&att, -1);
    let att = g.reshape(&att, &[b, nq, heads, l, points])?;
    let loc = match reference.dim(-1) {
        2 => {
            let norm: Vec<f32> = levels
                .shapes
                .iter()
                .flat_map(|&(h, wd)| [wd as f32, h as f32])
                .collect();
            let norm = g.const_f32(&[1, 1, 1, l, 1, 2], norm)?;
            let o = g.div(&off, &norm)?;
            let r = g.reshape(reference, &[b, nq, 1, l, 1, 2])?;
            g.add(&r, &o)?
        }
        4 => {
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
                "{prefix}: reference must end in 2 or 4, got {n}"
            )))
        }
    };
    let out = g.ms_deform_attn(&v, &levels.shapes, &loc, &att)?;
    g.linear(w, &out, &format!("{prefix}.output_proj"), true)
}

/// `MLP` with ReLU between layers: `prefix.layers.{0..n}`.
pub fn mlp(
    g: &mut Graph,
    w: &dyn Weights,
    prefix: &str,
    x: &Value,
    n_layers: usize,
) -> Result<Value> {
    let mut h = x.clone();
    for i in 0..n_layers {
        h = g.linear(w, &h, &format!("{prefix}.layers.{i}"), true)?;
        if i + 1 < n_layers {
            h = g.relu(&h);
        }
    }
    Ok(h)
}

/// Contrastive class head: `logits[b,q,k] = x_q · t_k`, −∞ where `text_mask` (true = real token) is false.
pub fn contrastive_logits(
    g: &mut Graph,
    x: &Value,
    text: &Value,
    text_mask: &Value,
) -> Result<Value> {
    if text_mask.dtype != DType::Bool {
        return Err(Error::Graph("text mask must be bool".into()));
    }
    let tt = g.transpose(text, &[0, 2, 1])?;
    let s = g.matmul(x, &tt)?;
    let m = g.unsqueeze(text_mask, &[1])?; // [B,1,L]
    let ninf = g.scalar(f32::NEG_INFINITY);
    g.where_(&m, &s, &ninf)
}

/// `inverse_sigmoid` with the model's ε = 1e-3: `ln(max(x,ε) / max(1−x,ε))` after clamping x to [0, 1].
pub fn inverse_sigmoid(g: &mut Graph, x: &Value) -> Result<Value> {
    const EPS: f32 = 1e-3;
    let x = g.clip(x, 0.0, 1.0);
    let x1 = g.clip(&x, EPS, f32::INFINITY);
    let one = g.scalar(1.0);
    let om = g.sub(&one, &x)?;
    let x2 = g.clip(&om, EPS, f32::INFINITY);
    let r = g.div(&x1, &x2)?;
    Ok(g.log(&r))
}

/// Post-norm FFN block: `LN(x + W2·ReLU(W1·x))`.
pub(crate) fn ffn_block(
    g: &mut Graph,
    w: &dyn Weights,
    x: &Value,
    lin1: &str,
    lin2: &str,
    norm: &str,
    eps: f32,
) -> Result<Value> {
    let h = g.linear(w, x, lin1, true)?;
    let h = g.relu(&h);
    let h = g.linear(w, &h, lin2, true)?;
    let r = g.add(x, &h)?;
    g.layer_norm(w, &r, norm, eps)
}

/// Gathers rows `idx [B, K]` of `x [B, N, C]` → `[B, K, C]` (per batch item).
pub(crate) fn gather_rows(g: &mut Graph, x: &Value, idx: &Value) -> Result<Value> {
    let (b, k, c) = (idx.dim(0), idx.dim(1), x.dim(2));
    let i = g.unsqueeze(idx, &[-1])?;
    let i = g.expand(&i, &[b, k, c])?;
    g.gather_elements(x, &i, 1)
}
