//! Input projections, flattening and the positional terms of the encoder (docs/model.md: Input projections; Feature enhancer).
//!
//! - levels 0–2: Conv1×1 + GroupNorm(32) of Swin stages 1–3 (strides 8/16/32); level 3: Conv3×3/2 +
//!   GroupNorm(32) of the normed stage-3 output (stride 64);
//! - the image sine embedding (temperature 20, normalised, `[y, x]`) plus `level_embed`, and the encoder
//!   reference points: both depend only on shapes (and a weight), so they are host constants;
//! - the text sine embedding of the raw position ids (data-dependent, so graph ops).
//!
//! The runtime feeds unpadded frames (one image size per engine), so every level is fully valid: valid
//! ratios are 1 and the padding masks are all false.

use super::position::{image_sine_embed, sine_pos_embed};
use crate::error::{Error, Result};
use crate::onnx::builder::{Bias, Graph, Value};
use crate::onnx::Scope;
use crate::tensor::DType;

/// The numbers of the projection stage.
#[derive(Clone, Debug, PartialEq)]
pub struct InputProjParams {
    /// Transformer width d.
    pub d_model: usize,
    /// GroupNorm groups (32).
    pub groups: usize,
    /// GroupNorm epsilon (1e-5).
    pub eps: f32,
    /// Temperature of the image sine embedding (20 for both axes).
    pub image_temperature: f32,
    /// Temperature of the text sine embedding (10000).
    pub text_temperature: f32,
    /// Features of the text sine embedding (= d_model; official 256).
    pub text_pos_feats: usize,
}

impl InputProjParams {
    /// The official settings for width `d_model`.
    pub fn new(d_model: usize) -> Self {
        InputProjParams {
            d_model,
            groups: 32,
            eps: 1e-5,
            image_temperature: 20.0,
            text_temperature: 10000.0,
            text_pos_feats: d_model,
        }
    }
}

/// The four projected levels `[B, d, h_l, w_l]` from the four Swin outputs (`features[0]` at stride 4
/// is not used here); `w` is the `input_proj` scope. Taps `input_proj.{l}`.
pub fn input_proj(
    g: &mut Graph,
    w: &Scope<'_>,
    p: &InputProjParams,
    features: &[Value],
) -> Result<Vec<Value>> {
    if features.len() != 4 {
        return Err(Error::Graph(format!(
            "input_proj: expected the 4 backbone outputs, got {}",
            features.len()
        )));
    }
    for (i, f) in features.iter().enumerate() {
        if f.rank() != 4 || f.dtype != DType::F32 {
            return Err(Error::Graph(format!(
                "input_proj: backbone feature {i} must be f32 NCHW, got {:?} {:?}",
                f.dtype, f.shape
            )));
        }
    }
    g.scoped("input_proj", |g| {
        let mut srcs = Vec::with_capacity(4);
        for l in 0..4 {
            let level = w.pp(l);
            let (conv, norm) = (level.pp(0), level.pp(1));
            let x = if l < 3 {
                g.conv2d(&conv, &features[l + 1], p.d_model, 1, 1, 0, Bias::With)?
            } else {
                // Stride-64 level from the NORMED stage-4 output (not from projected level 2).
                g.conv2d(&conv, &features[3], p.d_model, 3, 2, 1, Bias::With)?
            };
            let x = g.group_norm(&norm, &x, p.groups, p.eps)?;
            g.tap(&format!("input_proj.{l}"), &x)?;
            srcs.push(x);
        }
        Ok(srcs)
    })
}

/// Spatial shapes `(h_l, w_l)` of a list of NCHW levels.
pub fn level_shapes(srcs: &[Value]) -> Vec<(usize, usize)> {
    srcs.iter().map(|s| (s.dim(2), s.dim(3))).collect()
}

/// Start offset of each level in the flattened token axis.
pub fn level_start_index(shapes: &[(usize, usize)]) -> Vec<usize> {
    let mut acc = 0;
    shapes
        .iter()
        .map(|&(h, w)| {
            let s = acc;
            acc += h * w;
            s
        })
        .collect()
}

/// Flattens the levels row-major, level after level: `[B, d, h_l, w_l]` × L → `[B, S, d]`.
pub fn flatten_levels(g: &mut Graph, srcs: &[Value]) -> Result<Value> {
    let mut parts = Vec::with_capacity(srcs.len());
    for s in srcs {
        let (b, c, h, w) = (s.dim(0), s.dim(1), s.dim(2), s.dim(3));
        let r = g.reshape(s, &[b, c, h * w])?;
        parts.push(g.transpose(&r, &[0, 2, 1])?);
    }
    let refs: Vec<&Value> = parts.iter().collect();
    g.concat(&refs, 1)
}

/// `lvl_pos_embed_flatten` as a `[1, S, d]` constant: the image sine embedding of every level (d/2
/// features per axis) plus `level_embed[l]` of the `transformer` scope `w`. Taps `encoder.pos_flatten`
/// broadcast to `batch`.
pub fn level_pos_flatten(
    g: &mut Graph,
    w: &Scope<'_>,
    p: &InputProjParams,
    shapes: &[(usize, usize)],
    batch: usize,
) -> Result<Value> {
    let d = p.d_model;
    if !d.is_multiple_of(2) {
        return Err(Error::Graph(format!("pos embedding: d_model {d} is odd")));
    }
    let le = w.get("level_embed", &[shapes.len(), d])?;
    let le = le.f32s()?;
    let s: usize = shapes.iter().map(|&(h, w)| h * w).sum();
    let mut out = Vec::with_capacity(s * d);
    for (l, &(h, wd)) in shapes.iter().enumerate() {
        let pe = image_sine_embed(h, wd, d / 2, p.image_temperature);
        let lvl = &le[l * d..(l + 1) * d];
        for tok in pe.chunks(d) {
            out.extend(tok.iter().zip(lvl).map(|(a, b)| a + b));
        }
    }
    let v = g.const_f32(&[1, s, d], out)?;
    if g.opts.taps {
        let t = g.expand(&v, &[batch, s, d])?;
        g.tap("encoder.pos_flatten", &t)?;
    }
    Ok(v)
}

/// Sine embedding of the raw integer text position ids `[B, L]` (i64) → `[B, L, F]`:
/// `e[2k] = sin(p·2π / T^(2k/F))`, `e[2k+1] = cos(same)`, T = `text_temperature`, F = `text_pos_feats`.
/// Taps `encoder.text_pos`.
pub fn text_pos_embed(g: &mut Graph, p: &InputProjParams, position_ids: &Value) -> Result<Value> {
    let f = p.text_pos_feats;
    if position_ids.rank() != 2 || position_ids.dtype != DType::I64 {
        return Err(Error::Graph(format!(
            "text_pos_embed: position_ids must be i64 [B, L], got {:?} {:?}",
            position_ids.dtype, position_ids.shape
        )));
    }
    if f == 0 || !f.is_multiple_of(2) {
        return Err(Error::Graph(format!(
            "text_pos_embed: feature count {f} must be even"
        )));
    }
    // Same maths as the query and image sine embeddings; one implementation for all of them.
    let pos = g.unsqueeze(position_ids, &[-1])?;
    let e = sine_pos_embed(g, &pos, f, p.text_temperature)?;
    g.tap("encoder.text_pos", &e)?;
    Ok(e)
}
