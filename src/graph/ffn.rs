//! The post-norm feed-forward block of every transformer layer of the model.

use crate::error::Result;
use crate::onnx::builder::{Graph, Value, Weights};

/// Post-norm FFN block: `LN(x + W2·ReLU(W1·x))`.
pub fn ffn(
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
