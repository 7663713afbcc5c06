//! FPN pixel decoder producing the stride-4 segmentation features `F_seg` (docs/model.md: FPN pixel decoder).
//!
//! Reads the post-encoder memory at strides 32/16/8 and the Swin stride-4 map; upsampling is PyTorch's
//! legacy `nearest` to explicit sizes (`src = floor(dst·in/out)`), GroupNorm has 8 groups, and `out_lay`
//! has no norm or activation. Widths follow from `d` and `mask_dim`, so one function serves Swin-T,
//! Swin-B and the tiny fixtures.

use crate::error::Result;
use crate::onnx::builder::{Bias, Graph, Interp, Value};
use crate::onnx::Scope;

const GROUPS: usize = 8;

/// `lay{i}` (3×3 conv to `out` channels) → `gn{i}` → ReLU.
fn conv_gn_relu(g: &mut Graph, w: &Scope<'_>, x: &Value, i: usize, out: usize) -> Result<Value> {
    let c = g.conv2d(&w.pp(format!("lay{i}")), x, out, 3, 1, 1, Bias::With)?;
    let n = g.group_norm(&w.pp(format!("gn{i}")), &c, GROUPS, 1e-5)?;
    g.tap(&format!("fpn.gn{i}"), &n)?;
    g.relu(&n)
}

/// `x32 [B,d,h32,w32]`, `f16 [B,d,h16,w16]`, `f8 [B,d,h8,w8]` (memory levels 2, 1, 0 as maps) and
/// `f4 [B,C1,h4,w4]` (Swin stage 1 after `norm0`) → `F_seg [B,mask_dim,h4,w4]`; `w` is the
/// `pixel_decoder` scope. The widths halve after each stage: d, d/2, d/4, d/8, d/16. A skip input may have
/// batch 1 while the memory has `B` (one image, `B` prompts): its adapter then runs once and the sum
/// broadcasts it over the batch.
pub fn fpn(
    g: &mut Graph,
    w: &Scope<'_>,
    x32: &Value,
    f16: &Value,
    f8: &Value,
    f4: &Value,
    mask_dim: usize,
) -> Result<Value> {
    let d = x32.dim(1);
    let mut x = conv_gn_relu(g, w, x32, 1, d)?;
    x = conv_gn_relu(g, w, &x, 2, d / 2)?;
    for (i, skip) in [f16, f8, f4].into_iter().enumerate() {
        let width = d >> (i + 1);
        let a = g.conv2d(
            &w.pp(format!("adapter{}", i + 1)),
            skip,
            width,
            1,
            1,
            0,
            Bias::With,
        )?;
        g.tap(&format!("fpn.adapter{}", i + 1), &a)?;
        let up = g.resize(&x, a.dim(2), a.dim(3), Interp::Nearest)?;
        let s = g.add(&a, &up)?;
        x = conv_gn_relu(g, w, &s, i + 3, width / 2)?;
    }
    let out = g.conv2d(&w.pp("out_lay"), &x, mask_dim, 3, 1, 1, Bias::With)?;
    g.tap("fpn.mask_features", &out)?;
    Ok(out)
}
/// Cuts a flattened `[B,S,d]` memory into per-level `[B,d,h,w]` maps (levels in flattening order).
pub fn memory_maps(g: &mut Graph, memory: &Value, shapes: &[(usize, usize)]) -> Result<Vec<Value>> {
    let (b, d) = (memory.dim(0), memory.dim(2));
    let mut out = Vec::with_capacity(shapes.len());
    let mut start = 0;
    for &(h, wd) in shapes {
        let m = g.slice(memory, 1, start, start + h * wd)?;
        start += h * wd;
        let m = g.transpose(&m, &[0, 2, 1])?;
        out.push(g.reshape(&m, &[b, d, h, wd])?);
    }
    Ok(out)
}
