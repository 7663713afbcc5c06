//! Position embeddings and reference points shared by the input projections, the encoder, the decoder and
//! the mask decoder: the interleaved sine embedding of coordinates (image positions, text position ids,
//! reference boxes) and the encoder's reference points.

use crate::error::{Error, Result};
use crate::onnx::builder::{Graph, Value};
use crate::tensor::DType;

/// Interleaved sine embedding of every coordinate of `pos [..., n]` → `[..., n·feats]`:
/// `e[2k] = sin(2π·z / T^(2k/F))`, `e[2k+1] = cos(2π·z / T^(2k/F))`, coordinates kept in input order.
///
/// Follows the official float order: `(z·2π) / dim_t` with `dim_t` computed in f32.
pub fn sine_pos_embed(g: &mut Graph, pos: &Value, feats: usize, temperature: f32) -> Result<Value> {
    if !feats.is_multiple_of(2) {
        return Err(Error::Graph(format!(
            "sine embedding needs an even feature count, got {feats}"
        )));
    }
    let pos = g.cast(pos, DType::F32)?;
    let mut shape = pos.shape.clone();
    let n = shape.pop().unwrap_or(1);
    // dim_t[2k] = dim_t[2k+1], so channels 2k and 2k+1 share one angle: each angle is computed
    // once, its sine and cosine stacked on a last axis of 2 (the official stack(sin(even),
    // cos(odd)) with the same values, half the sines and cosines of evaluating both on all).
    let half = feats / 2;
    let dim_t: Vec<f32> = (0..half)
        .map(|k| {
            let e = 2.0 * (k as f32) / feats as f32;
            temperature.powf(e)
        })
        .collect();
    let dim_t = g.const_f32(&[half, 1], dim_t)?;
    // [..., n] → [..., n, 1, 1] in one node (the node names after it, which calibration tables
    // key on, stay as they were).
    let r = pos.rank() as i64;
    let x = g.unsqueeze(&pos, &[r, r + 1])?;
    let x = g.mul_scalar(&x, std::f32::consts::TAU)?;
    let x = g.div(&x, &dim_t)?; // [..., n, F/2, 1]
    let s = g.sin(&x)?;
    let c = g.cos(&x)?;
    let e = g.concat(&[&s, &c], -1)?; // [..., n, F/2, 2]
    shape.push(n * feats);
    g.reshape(&e, &shape)
}

/// Query sine embedding of boxes `[B, N, 4]` (cx, cy, w, h) → `[B, N, 4·(d/2)]` in the order y, x, w, h.
pub fn query_sine_embed(g: &mut Graph, boxes: &Value, d: usize) -> Result<Value> {
    if boxes.rank() != 3 || boxes.dim(2) != 4 {
        return Err(Error::Graph(format!(
            "query sine embedding needs [B, N, 4] boxes, got {:?}",
            boxes.shape
        )));
    }
    let order = g.const_i64(&[4], vec![1, 0, 2, 3])?;
    let yxwh = g.gather(boxes, &order, 2)?;
    sine_pos_embed(g, &yxwh, d / 2, 10000.0)
}

/// `PositionEmbeddingSineHW` of a fully valid `h × w` map, normalised, as `[h·w, 2F]` row-major with
/// channels `[P_y (F), P_x (F)]`. Follows the official f32 operation order.
pub fn image_sine_embed(h: usize, w: usize, num_pos_feats: usize, temperature: f32) -> Vec<f32> {
    let scale = (2.0 * std::f64::consts::PI) as f32;
    let eps = 1e-6f32;
    let dim_t: Vec<f32> = (0..num_pos_feats)
        .map(|i| temperature.powf((2 * (i / 2)) as f32 / num_pos_feats as f32))
        .collect();
    // cumulative counts 1..=n, normalised by the last one (+eps), times 2π
    let norm = |n: usize| -> Vec<f32> {
        (1..=n)
            .map(|c| c as f32 / (n as f32 + eps) * scale)
            .collect()
    };
    let ys = norm(h);
    let xs = norm(w);
    let enc = |v: f32, out: &mut Vec<f32>| {
        for (i, &d) in dim_t.iter().enumerate() {
            let a = v / d;
            out.push(if i % 2 == 0 { a.sin() } else { a.cos() });
        }
    };
    // The interleave above equals the official stack(sin(even), cos(odd)).flatten: channel 2k is
    // sin(a/dim_t[2k]) and 2k+1 is cos(a/dim_t[2k+1]).
    let mut out = Vec::with_capacity(h * w * 2 * num_pos_feats);
    for &y in &ys {
        for &x in &xs {
            enc(y, &mut out);
            enc(x, &mut out);
        }
    }
    out
}

/// Encoder reference points of fully valid levels, `[S, L, 2]` row-major: the cell centre
/// `((j + 0.5)/w_l, (i + 0.5)/h_l)` of each token, the same on every level (valid ratios 1).
pub fn encoder_reference_points(shapes: &[(usize, usize)]) -> Vec<f32> {
    let nl = shapes.len();
    let s: usize = shapes.iter().map(|&(h, w)| h * w).sum();
    let mut out = Vec::with_capacity(s * nl * 2);
    for &(h, w) in shapes {
        for i in 0..h {
            for j in 0..w {
                // linspace(0.5, n − 0.5, n) is exactly k + 0.5 here; divided by (ratio 1 · n).
                let x = (j as f32 + 0.5) / w as f32;
                let y = (i as f32 + 0.5) / h as f32;
                for _ in 0..nl {
                    out.push(x);
                    out.push(y);
                }
            }
        }
    }
    out
}

/// The encoder reference points as a `[1, S, L, 2]` constant. Taps `encoder.reference_points`
/// broadcast to `batch`.
pub fn reference_points_const(
    g: &mut Graph,
    shapes: &[(usize, usize)],
    batch: usize,
) -> Result<Value> {
    let s: usize = shapes.iter().map(|&(h, w)| h * w).sum();
    let nl = shapes.len();
    let v = g.const_f32(&[1, s, nl, 2], encoder_reference_points(shapes))?;
    if g.opts.taps {
        let t = g.expand(&v, &[batch, s, nl, 2])?;
        g.tap("encoder.reference_points", &t)?;
    }
    Ok(v)
}
