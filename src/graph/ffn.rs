//! The post-norm feed-forward block of every transformer layer of the model.

use crate::error::Result;
use crate::onnx::builder::{Bias, Graph, Value};
use crate::onnx::Scope;

/// The scopes of one FFN block: its two Linear layers and the LayerNorm after the residual.
pub struct FfnScopes<'a> {
    /// `linear1`: d → hidden.
    pub lin1: Scope<'a>,
    /// `linear2`: hidden → d.
    pub lin2: Scope<'a>,
    /// The LayerNorm after the residual add.
    pub norm: Scope<'a>,
}

/// Post-norm FFN block: `LN(x + W2·ReLU(W1·x))`, `hidden` wide inside.
pub fn ffn(g: &mut Graph, w: &FfnScopes<'_>, x: &Value, hidden: usize, eps: f32) -> Result<Value> {
    let d = x.dim(-1);
    let h = g.linear(&w.lin1, x, hidden, Bias::With)?;
    let h = g.relu(&h)?;
    let h = g.linear(&w.lin2, &h, d, Bias::With)?;
    let r = g.add(x, &h)?;
    g.layer_norm(&w.norm, &r, eps)
}
