//! Class and box heads after temporal enhancement (docs/model.md: Heads).

use super::mlp::mlp;
use super::scoring::{contrastive_logits, inverse_sigmoid};
use crate::error::Result;
use crate::onnx::builder::{Graph, Value};
use crate::onnx::Scope;

/// Outputs of [`heads`].
pub struct HeadOut {
    /// `[B,Q]` class logit of each query: max over real tokens of `Õ·F_text`.
    pub logits: Value,
    /// `[B,Q,4]` boxes (cx, cy, w, h), normalised.
    pub boxes: Value,
}

/// `objects [B,Q,d]` (temporal output), `text [B,L,d]` (enhanced text), `text_mask [B,L]` (true = real token),
/// `refs [B,Q,4]` (tracked layer-5 input boxes). `bbox` is the scope of the shared box MLP
/// (`transformer.decoder.bbox_embed.N`).
pub fn heads(
    g: &mut Graph,
    bbox: &Scope<'_>,
    objects: &Value,
    text: &Value,
    text_mask: &Value,
    refs: &Value,
) -> Result<HeadOut> {
    let tok = contrastive_logits(g, objects, text, text_mask)?;
    g.tap("head.class_logits_tokens", &tok)?;
    let logits = g.reduce_max(&tok, &[2], false)?;
    if g.opts.taps {
        let l3 = g.unsqueeze(&logits, &[-1])?;
        g.tap("head.logits", &l3)?;
    }
    let delta = mlp(g, bbox, objects, objects.dim(-1), 4, 3)?;
    g.tap("head.bbox_delta", &delta)?;
    let inv = inverse_sigmoid(g, refs)?;
    let s = g.add(&delta, &inv)?;
    let boxes = g.sigmoid(&s)?;
    g.tap("head.boxes", &boxes)?;
    Ok(HeadOut { logits, boxes })
}
