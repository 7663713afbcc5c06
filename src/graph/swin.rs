//! Swin Transformer backbone (docs/model.md: Swin backbone), as used by GroundingDINO / ReferDINO.
//!
//! Patch embedding (pad to ×4, conv 4×4/4, LayerNorm) → four stages of windowed-attention blocks with
//! relative position bias (odd blocks shifted by ⌊w/2⌋ with the −100 region mask) → patch merging between
//! stages. Each stage output goes through its own `norm{i}` and is returned as NCHW.
//!
//! Inside a stage the tokens are kept as `[B, H, W, C]` so LayerNorm/Linear act on the last axis and
//! windows are plain reshape/transpose. Everything that depends only on shapes (relative-position bias
//! gathered from its table, the shift mask) is computed on the host and stored as constants.

use crate::error::{Error, Result};
use crate::onnx::builder::{Attr, Bias, Graph, Value};
use crate::onnx::Scope;
use crate::tensor::{DType, Tensor};

/// The numbers a Swin backbone needs.
#[derive(Clone, Debug, PartialEq)]
pub struct SwinParams {
    /// Channels after patch embedding (C0); stage `i` has `C0·2^i`.
    pub embed_dim: usize,
    /// Blocks per stage.
    pub depths: Vec<usize>,
    /// Attention heads per stage.
    pub num_heads: Vec<usize>,
    /// Window size (the shift is `window / 2`).
    pub window: usize,
    /// Patch size of the embedding conv.
    pub patch: usize,
    /// MLP hidden size = `mlp_ratio · C`.
    pub mlp_ratio: usize,
    /// LayerNorm epsilon.
    pub eps: f32,
    /// State-dict prefix of the backbone, without the trailing dot (`backbone.0`).
    pub prefix: String,
}

impl SwinParams {
    /// Swin-T (`swin_T_224_1k`): 96 / `[2,2,6,2]` / `[3,6,12,24]` / window 7.
    pub fn swin_t() -> Self {
        Self::new(96, &[2, 2, 6, 2], &[3, 6, 12, 24], 7)
    }

    /// Swin-B (`swin_B_384_22k`): 128 / `[2,2,18,2]` / `[4,8,16,32]` / window 12.
    pub fn swin_b() -> Self {
        Self::new(128, &[2, 2, 18, 2], &[4, 8, 16, 32], 12)
    }

    /// Any size with the official defaults for the rest (patch 4, MLP ratio 4, eps 1e-5, `backbone.0`).
    pub fn new(embed_dim: usize, depths: &[usize], num_heads: &[usize], window: usize) -> Self {
        SwinParams {
            embed_dim,
            depths: depths.to_vec(),
            num_heads: num_heads.to_vec(),
            window,
            patch: 4,
            mlp_ratio: 4,
            eps: 1e-5,
            prefix: "backbone.0".into(),
        }
    }

    /// Channels of stage `i`.
    pub fn channels(&self, i: usize) -> usize {
        self.embed_dim << i
    }

    /// Spatial sizes (h, w) of the stage outputs for an `image_h × image_w` input.
    pub fn stage_shapes(&self, image_h: usize, image_w: usize) -> Vec<(usize, usize)> {
        let mut h = image_h.div_ceil(self.patch);
        let mut w = image_w.div_ceil(self.patch);
        let mut out = Vec::with_capacity(self.depths.len());
        for _ in 0..self.depths.len() {
            out.push((h, w));
            h = h.div_ceil(2);
            w = w.div_ceil(2);
        }
        out
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Graph(format!("SwinParams: {m}")));
        if self.depths.is_empty() || self.depths.len() != self.num_heads.len() {
            return bad(format!(
                "{} depths vs {} head counts",
                self.depths.len(),
                self.num_heads.len()
            ));
        }
        if self.window < 2 || self.patch == 0 || self.embed_dim == 0 || self.mlp_ratio == 0 {
            return bad(format!(
                "window {} / patch {} / embed_dim {} / mlp_ratio {} out of range",
                self.window, self.patch, self.embed_dim, self.mlp_ratio
            ));
        }
        for (i, &h) in self.num_heads.iter().enumerate() {
            if h == 0 || !self.channels(i).is_multiple_of(h) {
                return bad(format!(
                    "stage {i}: {} channels not divisible by {h} heads",
                    self.channels(i)
                ));
            }
        }
        Ok(())
    }
}

/// The four (normed) stage outputs, NCHW `[B, C0·2^i, h_i, w_i]`, strides 4/8/16/32.
pub struct SwinOut {
    /// `features[i]` = `norm{i}(stage i output)`.
    pub features: Vec<Value>,
}

/// The Swin backbone on `image [B, 3, H, W]` (normalised RGB), weights under `root`'s
/// [`SwinParams::prefix`]. Taps `backbone.patch_embed` and `backbone.features.{i}`.
pub fn swin_backbone(
    g: &mut Graph,
    root: &Scope<'_>,
    p: &SwinParams,
    image: &Value,
) -> Result<SwinOut> {
    p.validate()?;
    if image.rank() != 4 || image.dim(1) != 3 || image.dtype != DType::F32 {
        return Err(Error::Graph(format!(
            "swin_backbone: image must be f32 [B, 3, H, W], got {:?} {:?}",
            image.dtype, image.shape
        )));
    }
    let w = &root.pp(&p.prefix);
    g.scoped("swin", |g| {
        let mut x = patch_embed(g, w, p, image)?;
        let mut features = Vec::with_capacity(p.depths.len());
        for s in 0..p.depths.len() {
            x = g.scoped(&format!("stage{s}"), |g| {
                let mut x = x.clone();
                let mask = shift_mask_const(g, p.window, x.dim(1), x.dim(2))?;
                for b in 0..p.depths[s] {
                    let bp = w.pp("layers").pp(s).pp("blocks").pp(b);
                    let shifted = b % 2 == 1;
                    x = swin_block(
                        g,
                        &bp,
                        &x,
                        p.num_heads[s],
                        p.window,
                        shifted.then_some(&mask),
                        p.mlp_ratio,
                        p.eps,
                    )?;
                }
                Ok(x)
            })?;
            let out = g.layer_norm(&w.pp(format!("norm{s}")), &x, p.eps)?;
            let out = g.transpose(&out, &[0, 3, 1, 2])?;
            g.tap(&format!("backbone.features.{s}"), &out)?;
            features.push(out);
            if s + 1 < p.depths.len() {
                let down = w.pp("layers").pp(s).pp("downsample");
                x = patch_merging(g, &down, &x, p.eps)?;
            }
        }
        Ok(SwinOut { features })
    })
}

/// Pad right/bottom to a multiple of the patch, conv patch×patch/patch, LayerNorm → `[B, h, w, C0]`.
fn patch_embed(g: &mut Graph, w: &Scope<'_>, p: &SwinParams, image: &Value) -> Result<Value> {
    let (h, wd) = (image.dim(2), image.dim(3));
    let pb = h.next_multiple_of(p.patch) - h;
    let pr = wd.next_multiple_of(p.patch) - wd;
    let x = g.pad_hw(image, 0, pb, 0, pr)?;
    let pe = w.pp("patch_embed");
    let x = g.conv2d(
        &pe.pp("proj"),
        &x,
        p.embed_dim,
        p.patch,
        p.patch,
        0,
        Bias::With,
    )?;
    let x = g.transpose(&x, &[0, 2, 3, 1])?;
    let x = g.layer_norm(&pe.pp("norm"), &x, p.eps)?;
    if g.opts.taps {
        let t = g.transpose(&x, &[0, 3, 1, 2])?;
        g.tap("backbone.patch_embed", &t)?;
    }
    Ok(x)
}

/// One Swin block on `x [B, H, W, C]`: `x + WMSA(LN1(x))`, then `x + MLP(LN2(x))`.
#[allow(clippy::too_many_arguments)]
fn swin_block(
    g: &mut Graph,
    w: &Scope<'_>,
    x: &Value,
    heads: usize,
    window: usize,
    shift_mask: Option<&Value>,
    mlp_ratio: usize,
    eps: f32,
) -> Result<Value> {
    let (b, h, wd, c) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
    let (hp, wp) = (h.next_multiple_of(window), wd.next_multiple_of(window));
    let shift = window / 2;
    let y = g.layer_norm(&w.pp("norm1"), x, eps)?;
    // Zero padding after norm1; the padded tokens are attended to like real ones (official behaviour).
    let y = pad_spatial(g, &y, hp - h, wp - wd)?;
    let y = if shift_mask.is_some() {
        roll_spatial(g, &y, shift, true)?
    } else {
        y
    };
    // [B, Hp, Wp, C] → windows [B·nW, w², C]
    let (nh, nw) = (hp / window, wp / window);
    let y = g.reshape(&y, &[b, nh, window, nw, window, c])?;
    let y = g.transpose(&y, &[0, 1, 3, 2, 4, 5])?;
    let y = g.reshape(&y, &[b * nh * nw, window * window, c])?;
    let y = window_attention(g, &w.pp("attn"), &y, heads, window, b, shift_mask)?;
    // windows → [B, Hp, Wp, C]
    let y = g.reshape(&y, &[b, nh, nw, window, window, c])?;
    let y = g.transpose(&y, &[0, 1, 3, 2, 4, 5])?;
    let y = g.reshape(&y, &[b, hp, wp, c])?;
    let y = if shift_mask.is_some() {
        roll_spatial(g, &y, shift, false)?
    } else {
        y
    };
    let y = g.slice(&y, 1, 0, h)?;
    let y = g.slice(&y, 2, 0, wd)?;
    let x = g.add(x, &y)?;
    let m = g.layer_norm(&w.pp("norm2"), &x, eps)?;
    let m = g.linear(&w.pp("mlp").pp("fc1"), &m, mlp_ratio * c, Bias::With)?;
    let m = g.gelu(&m)?;
    let m = g.linear(&w.pp("mlp").pp("fc2"), &m, c, Bias::With)?;
    g.add(&x, &m)
}

/// Window MHSA on `x [B·nW, N, C]` with the relative-position bias and, for shifted blocks, the
/// `[nW, 1, N, N]` region mask (added after the bias, as the official code does).
#[allow(clippy::too_many_arguments)]
fn window_attention(
    g: &mut Graph,
    w: &Scope<'_>,
    x: &Value,
    heads: usize,
    window: usize,
    batch: usize,
    shift_mask: Option<&Value>,
) -> Result<Value> {
    let (bw, n, c) = (x.dim(0), x.dim(1), x.dim(2));
    let dh = c / heads;
    let qkv = g.linear(&w.pp("qkv"), x, 3 * c, Bias::With)?;
    let qkv = g.reshape(&qkv, &[bw, n, 3, heads, dh])?;
    let qkv = g.transpose(&qkv, &[2, 0, 3, 1, 4])?; // [3, B_, heads, N, dh]
    let part = |g: &mut Graph, i: usize| -> Result<Value> {
        let t = g.slice(&qkv, 0, i, i + 1)?;
        g.reshape(&t, &[bw, heads, n, dh])
    };
    let q = part(g, 0)?;
    let k = part(g, 1)?;
    let v = part(g, 2)?;
    // head_dim^-0.5 evaluated in double then rounded, as Python does.
    let scale = (dh as f64).powf(-0.5) as f32;
    let q = g.mul_scalar(&q, scale)?;
    let kt = g.transpose(&k, &[0, 1, 3, 2])?;
    let s = g.matmul(&q, &kt)?; // [B_, heads, N, N]
    let bias = relative_position_bias(g, w, heads, window)?;
    let mut s = g.add(&s, &bias)?;
    if let Some(m) = shift_mask {
        let nwin = bw / batch;
        let s5 = g.reshape(&s, &[batch, nwin, heads, n, n])?;
        let s5 = g.add(&s5, m)?;
        s = g.reshape(&s5, &[bw, heads, n, n])?;
    }
    let pr = g.softmax(&s, -1)?;
    let o = g.matmul(&pr, &v)?; // [B_, heads, N, dh]
    let o = g.transpose(&o, &[0, 2, 1, 3])?;
    let o = g.reshape(&o, &[bw, n, c])?;
    g.linear(&w.pp("proj"), &o, c, Bias::With)
}

/// Patch merging on `x [B, H, W, C]`: pad odd sizes, concat the (0,0), (1,0), (0,1), (1,1) sub-grids
/// (row, col offsets) along channels, LayerNorm(4C), Linear 4C → 2C without bias.
fn patch_merging(g: &mut Graph, w: &Scope<'_>, x: &Value, eps: f32) -> Result<Value> {
    let (b, h, wd, c) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
    let x = pad_spatial(g, x, h % 2, wd % 2)?;
    let (h2, w2) = (h.div_ceil(2), wd.div_ceil(2));
    // [B, h2, r, w2, c', C] → [B, h2, w2, c', r, C]: channel block index = 2·c' + r, which is the
    // official x0 (0,0), x1 (1,0), x2 (0,1), x3 (1,1) order.
    let x = g.reshape(&x, &[b, h2, 2, w2, 2, c])?;
    let x = g.transpose(&x, &[0, 1, 3, 4, 2, 5])?;
    let x = g.reshape(&x, &[b, h2, w2, 4 * c])?;
    let x = g.layer_norm(&w.pp("norm"), &x, eps)?;
    g.linear(&w.pp("reduction"), &x, 2 * c, Bias::Without)
}

/// Zero-pads axes 1 (bottom) and 2 (right) of `[B, H, W, C]`.
fn pad_spatial(g: &mut Graph, x: &Value, bottom: usize, right: usize) -> Result<Value> {
    if bottom == 0 && right == 0 {
        return Ok(x.clone());
    }
    let pads = g.const_i64(&[8], vec![0, 0, 0, 0, 0, bottom as i64, right as i64, 0])?;
    let mut y = g.node(
        "Pad",
        "",
        &[x, &pads],
        &[("mode", Attr::Str("constant".into()))],
        1,
    )?;
    y.pop().ok_or_else(|| Error::Graph("Pad: no output".into()))
}

/// `torch.roll` of `[B, H, W, C]` by `−s` (forward) or `+s` (back) on axes 1 and 2, as two slice-concats.
fn roll_spatial(g: &mut Graph, x: &Value, s: usize, forward: bool) -> Result<Value> {
    let mut y = x.clone();
    for ax in [1i64, 2] {
        let n = y.dim(ax);
        let cut = if forward { s % n } else { (n - s % n) % n };
        if cut == 0 {
            continue;
        }
        let a = g.slice(&y, ax, cut, n)?;
        let b = g.slice(&y, ax, 0, cut)?;
        y = g.concat(&[&a, &b], ax)?;
    }
    Ok(y)
}

/// Relative-position index of a `window × window` window (`[w², w²]`, row-major), the standard Swin one.
pub fn relative_position_index(window: usize) -> Vec<usize> {
    let n = window * window;
    let mut idx = Vec::with_capacity(n * n);
    for i in 0..n {
        let (yi, xi) = (i / window, i % window);
        for j in 0..n {
            let (yj, xj) = (j / window, j % window);
            let dy = yi + window - 1 - yj;
            let dx = xi + window - 1 - xj;
            idx.push(dy * (2 * window - 1) + dx);
        }
    }
    idx
}

/// The bias `[heads, N, N]` gathered on the host from the `relative_position_bias_table` of scope `w`.
fn relative_position_bias(
    g: &mut Graph,
    w: &Scope<'_>,
    heads: usize,
    window: usize,
) -> Result<Value> {
    let n = window * window;
    let idx = relative_position_index(window);
    // The checkpoint also stores the index buffer; when present it must agree with ours.
    if let Some(t) = w.get_optional("relative_position_index", &[n, n], DType::I64)? {
        // Checkpoint loading widens int32 to i64; any other type is named, not called a mismatch.
        let v = t.i64s().map_err(|_| {
            Error::Checkpoint(format!(
                "{}.relative_position_index is {:?}, expected int64",
                w.prefix(),
                t.dtype()
            ))
        })?;
        if !v.iter().zip(&idx).all(|(&a, &b)| a == b as i64) {
            return Err(Error::Checkpoint(format!(
                "{}.relative_position_index does not match window {window}",
                w.prefix()
            )));
        }
    }
    let m = (2 * window - 1) * (2 * window - 1);
    let table = "relative_position_bias_table";
    g.derived_weight(w, table, &[m, heads], "bias", &[heads, n, n], |t| {
        let tab = t.f32s()?;
        let mut out = vec![0f32; heads * n * n];
        for hd in 0..heads {
            for (ij, &r) in idx.iter().enumerate() {
                out[hd * n * n + ij] = tab[r * heads + hd];
            }
        }
        Tensor::from_f32(&[heads, n, n], out)
    })
}

/// The shifted-window region mask `[nW, 1, N, N]` for an `h × w` map (padded to window multiples):
/// 0 within a region, −100 across regions.
pub fn shift_mask(window: usize, h: usize, w: usize) -> (Vec<usize>, Vec<f32>) {
    let (hp, wp) = (h.next_multiple_of(window), w.next_multiple_of(window));
    let s = window / 2;
    let region = |i: usize, len: usize| -> usize {
        if i < len - window {
            0
        } else if i < len - s {
            1
        } else {
            2
        }
    };
    let (nh, nw) = (hp / window, wp / window);
    let n = window * window;
    let mut out = Vec::with_capacity(nh * nw * n * n);
    let mut ids = vec![0usize; n];
    for wy in 0..nh {
        for wx in 0..nw {
            for (t, id) in ids.iter_mut().enumerate() {
                let (y, x) = (wy * window + t / window, wx * window + t % window);
                *id = region(y, hp) * 3 + region(x, wp);
            }
            for i in 0..n {
                for j in 0..n {
                    out.push(if ids[i] == ids[j] { 0.0 } else { -100.0 });
                }
            }
        }
    }
    (vec![nh * nw, 1, n, n], out)
}

fn shift_mask_const(g: &mut Graph, window: usize, h: usize, w: usize) -> Result<Value> {
    let (shape, data) = shift_mask(window, h, w);
    g.const_f32(&shape, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_index_matches_definition() {
        let idx = relative_position_index(7);
        assert_eq!(idx.len(), 49 * 49);
        // same position → centre of the (2w−1)² table
        assert_eq!(idx[0], 6 * 13 + 6);
        // token 0 vs token 48 (dy = dx = −6) → 0
        assert_eq!(idx[48], 0);
        // token 48 vs token 0 (dy = dx = +6) → last entry
        assert_eq!(idx[48 * 49], 168);
    }

    #[test]
    fn shift_mask_regions() {
        // A single 7×7 window on a 3×4 map: regions split at rows/cols 4 (= 7 − 3).
        let (shape, m) = shift_mask(7, 3, 4);
        assert_eq!(shape, vec![1, 1, 49, 49]);
        let at = |i: usize, j: usize| m[i * 49 + j];
        assert_eq!(at(0, 3), 0.0); // (0,0) and (0,3): same region
        assert_eq!(at(0, 4), -100.0); // (0,0) and (0,4)
        assert_eq!(at(0, 28), -100.0); // (0,0) and (4,0)
        assert_eq!(at(32, 48), 0.0); // (4,4) and (6,6)
                                     // Only the last window row/column can differ from region 0.
        let (shape, m) = shift_mask(7, 20, 10);
        assert_eq!(shape, vec![6, 1, 49, 49]);
        assert!(m[..49 * 49].iter().all(|&v| v == 0.0));
    }

    #[test]
    fn stage_shapes_round_up() {
        let p = SwinParams::swin_t();
        assert_eq!(
            p.stage_shapes(360, 640),
            vec![(90, 160), (45, 80), (23, 40), (12, 20)]
        );
        assert_eq!(
            SwinParams::new(12, &[1, 1, 2, 1], &[1, 2, 4, 8], 7).stage_shapes(70, 118),
            vec![(18, 30), (9, 15), (5, 8), (3, 4)]
        );
    }
}
