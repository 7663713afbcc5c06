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

/// `LN(a + b)` with the add and the LayerNorm on the tokens flattened to 2-D `[N, d]` (then reshaped
/// back): the same values. ONNX Runtime fuses a rank-3 add + LayerNorm into its SkipLayerNormalization,
/// which measured several times slower than the two ops apart on the encoder's 4820 tokens
/// (benches/README.md: session 8); on 2-D tensors it leaves them apart.
pub fn add_layer_norm_2d(
    g: &mut Graph,
    norm: &Scope<'_>,
    a: &Value,
    b: &Value,
    eps: f32,
) -> Result<Value> {
    let shape = a.shape.clone();
    let d = a.dim(-1);
    let n = a.shape.iter().product::<usize>() / d.max(1);
    let a2 = g.reshape(a, &[n, d])?;
    let b2 = g.reshape(b, &[n, d])?;
    let r = g.add(&a2, &b2)?;
    let y = g.layer_norm(norm, &r, eps)?;
    g.reshape(&y, &shape)
}

/// [`ffn`] with its residual add and LayerNorm in the 2-D form of [`add_layer_norm_2d`].
pub fn ffn_2d(
    g: &mut Graph,
    w: &FfnScopes<'_>,
    x: &Value,
    hidden: usize,
    eps: f32,
) -> Result<Value> {
    let d = x.dim(-1);
    let h = g.linear(&w.lin1, x, hidden, Bias::With)?;
    let h = g.relu(&h)?;
    let h = g.linear(&w.lin2, &h, d, Bias::With)?;
    add_layer_norm_2d(g, &w.norm, x, &h, eps)
}
