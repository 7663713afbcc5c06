//! The `MLP` block (Linear layers with ReLU between them) used by the box heads, `ref_point_head` and the
//! query selection.

use crate::error::Result;
use crate::onnx::builder::{Bias, Graph, Value};
use crate::onnx::Scope;

/// `MLP(in, hidden, out, n_layers)` of scope `w`: `layers.{0..n}`, every layer `hidden` wide but the last
/// (`out`), ReLU between layers.
pub fn mlp(
    g: &mut Graph,
    w: &Scope<'_>,
    x: &Value,
    hidden: usize,
    out: usize,
    n_layers: usize,
) -> Result<Value> {
    let layers = w.pp("layers");
    let mut h = x.clone();
    for i in 0..n_layers {
        let width = if i + 1 < n_layers { hidden } else { out };
        h = g.linear(&layers.pp(i), &h, width, Bias::With)?;
        if i + 1 < n_layers {
            h = g.relu(&h)?;
        }
    }
    Ok(h)
}
