//! The `MLP` block (Linear layers with ReLU between them) used by the box heads, `ref_point_head` and the
//! query selection.

use crate::error::Result;
use crate::onnx::builder::{Graph, Value, Weights};

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
