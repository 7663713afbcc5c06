//! Scoring shared by the query selection, the decoder and the heads: the contrastive class logits against
//! the text tokens and the box parameterisation's `inverse_sigmoid`.

use crate::error::{Error, Result};
use crate::onnx::builder::{Graph, Value};
use crate::tensor::DType;

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
    let x = g.clip(x, 0.0, 1.0)?;
    let x1 = g.clip(&x, EPS, f32::INFINITY)?;
    let one = g.scalar(1.0);
    let om = g.sub(&one, &x)?;
    let x2 = g.clip(&om, EPS, f32::INFINITY)?;
    let r = g.div(&x1, &x2)?;
    g.log(&r)
}
