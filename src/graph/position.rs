//! Position embeddings shared by the encoder, the decoder and the input projections: the interleaved sine
//! embedding of coordinates (image positions, text position ids, reference boxes).

use super::builder::{Graph, Value};
use crate::error::{Error, Result};
use crate::tensor::DType;

/// Interleaved sine embedding of every coordinate of `pos [..., n]` → `[..., n·feats]`:
/// `e[2k] = sin(2π·z / T^(2k/F))`, `e[2k+1] = cos(2π·z / T^(2k/F))`, coordinates kept in input order.
///
/// Follows the official float order: `(z·2π) / dim_t` with `dim_t` computed in f32.
pub fn sine_pos_embed(g: &mut Graph, pos: &Value, feats: usize, temperature: f32) -> Result<Value> {
    if feats % 2 != 0 {
        return Err(Error::Graph(format!(
            "sine embedding needs an even feature count, got {feats}"
        )));
    }
    let pos = g.cast(pos, DType::F32);
    let mut shape = pos.shape.clone();
    let n = shape.pop().unwrap_or(1);
    let dim_t: Vec<f32> = (0..feats)
        .map(|i| {
            let e = 2.0 * ((i / 2) as f32) / feats as f32;
            temperature.powf(e)
        })
        .collect();
    let dim_t = g.const_f32(&[feats], dim_t)?;
    let x = g.unsqueeze(&pos, &[-1])?; // [..., n, 1]
    let x = g.mul_scalar(&x, std::f32::consts::TAU)?;
    let x = g.div(&x, &dim_t)?; // [..., n, F]
    let s = g.sin(&x);
    let c = g.cos(&x);
    let even: Vec<bool> = (0..feats).map(|i| i % 2 == 0).collect();
    let even = g.constant(
        "sine_even",
        &crate::tensor::Tensor::new(vec![feats], crate::tensor::Data::Bool(even))?,
    );
    let e = g.where_(&even, &s, &c)?;
    shape.push(n * feats);
    g.reshape(&e, &shape)
}
