//! Multi-head attention in the `nn.MultiheadAttention` layout, shared by the enhancer, the decoders and
//! the temporal module.
//!
//! All tensors are batch-first (`[B, N, d]`), unlike the official seq-first code; results are identical.

use crate::error::{Error, Result};
use crate::onnx::builder::{transpose2d, Bias, Graph, Value};
use crate::onnx::Scope;
use crate::tensor::Tensor;

/// Result of [`mha`]: the attended output and, when asked, the head-averaged probabilities `[B, Lq, Lk]`.
pub struct MhaOut {
    /// `[B, Lq, d]` after `out_proj`.
    pub out: Value,
    /// Head-averaged attention probabilities (rows = queries).
    pub avg_weights: Option<Value>,
}

/// Whether [`mha`] also returns its head-averaged attention probabilities (the decoder's pruning gate
/// reads them; every other attention drops them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttnWeights {
    /// Return the probabilities averaged over heads, `[B, Lq, Lk]`.
    Averaged,
    /// Return only the attended output.
    Dropped,
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
/// `nn.MultiheadAttention` of scope `w`: packed `in_proj_weight [3d, d]` / `in_proj_bias [3d]` and
/// `out_proj`.
///
/// `q_in [B,Lq,d]`, `k_in`/`v_in [B,Lk,d]`. Scale 1/√(d/heads); masked logits are set to −∞ before the
/// softmax (a fully masked row would be NaN, exactly as in PyTorch; callers never produce one).
pub fn mha(
    g: &mut Graph,
    w: &Scope<'_>,
    q_in: &Value,
    k_in: &Value,
    v_in: &Value,
    heads: usize,
    masks: AttnMasks<'_>,
    weights: AttnWeights,
) -> Result<MhaOut> {
    let (b, lq, d) = (q_in.dim(0), q_in.dim(1), q_in.dim(2));
    let lk = k_in.dim(1);
    if d % heads != 0 {
        return Err(Error::Graph(format!(
            "{}: d={d} not divisible by {heads} heads",
            w.prefix()
        )));
    }
    let dh = d / heads;
    let proj = |g: &mut Graph, x: &Value, part: usize, tag: &str| -> Result<Value> {
        let wt = g.derived_weight(
            w,
            "in_proj_weight",
            &[3 * d, d],
            &format!("{tag}T"),
            &[d, d],
            |t| {
                let rows = &t.f32s()?[part * d * d..(part + 1) * d * d];
                transpose2d(&Tensor::from_f32(&[d, d], rows.to_vec())?)
            },
        )?;
        let bias = g.derived_weight(w, "in_proj_bias", &[3 * d], tag, &[d], |t| {
            Tensor::from_f32(&[d], t.f32s()?[part * d..(part + 1) * d].to_vec())
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
    let p = g.softmax(&s, -1)?;
    let o = g.matmul(&p, &v)?; // [B,H,Lq,dh]
    let o = g.transpose(&o, &[0, 2, 1, 3])?;
    let o = g.reshape(&o, &[b, lq, d])?;
    let out = g.linear(&w.pp("out_proj"), &o, d, Bias::With)?;
    let avg_weights = if weights == AttnWeights::Averaged {
        Some(g.reduce_mean(&p, &[1], false)?)
    } else {
        None
    };
    Ok(MhaOut { out, avg_weights })
}
