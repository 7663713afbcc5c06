//! FPN pixel decoder producing the stride-4 segmentation features `F_seg` (docs/model.md: FPN pixel decoder).
//!
//! Reads the post-encoder memory at strides 32/16/8 and the Swin stride-4 map; upsampling is PyTorch's
//! legacy `nearest` to explicit sizes (`src = floor(dst·in/out)`), GroupNorm has 8 groups, and `out_lay`
//! has no norm or activation. Channel counts are taken from the weights, so one function serves Swin-T,
//! Swin-B and the tiny fixtures.

use crate::error::Result;
use crate::onnx::builder::{Graph, Value, Weights};

const GROUPS: usize = 8;

fn conv_gn_relu(g: &mut Graph, w: &dyn Weights, x: &Value, i: usize) -> Result<Value> {
    let c = g.conv2d(w, x, &format!("pixel_decoder.lay{i}"), 1, 1, true)?;
    let n = g.group_norm(w, &c, GROUPS, &format!("pixel_decoder.gn{i}"), 1e-5)?;
    g.tap(&format!("fpn.gn{i}"), &n)?;
    Ok(g.relu(&n))
}

/// `x32 [B,d,h32,w32]`, `f16 [B,d,h16,w16]`, `f8 [B,d,h8,w8]` (memory levels 2, 1, 0 as maps) and
/// `f4 [B,C1,h4,w4]` (Swin stage 1 after `norm0`) → `F_seg [B,mask_dim,h4,w4]`. A skip input may have
/// batch 1 while the memory has `B` (one image, `B` prompts): its adapter then runs once and the sum
/// broadcasts it over the batch.
pub fn fpn(
    g: &mut Graph,
    w: &dyn Weights,
    x32: &Value,
    f16: &Value,
    f8: &Value,
    f4: &Value,
) -> Result<Value> {
    let mut x = conv_gn_relu(g, w, x32, 1)?;
    x = conv_gn_relu(g, w, &x, 2)?;
    for (i, skip) in [f16, f8, f4].into_iter().enumerate() {
        let a = g.conv2d(
            w,
            skip,
            &format!("pixel_decoder.adapter{}", i + 1),
            1,
            0,
            true,
        )?;
        g.tap(&format!("fpn.adapter{}", i + 1), &a)?;
        let up = g.resize(&x, a.dim(2), a.dim(3), false)?;
        let s = g.add(&a, &up)?;
        x = conv_gn_relu(g, w, &s, i + 3)?;
    }
    let out = g.conv2d(w, &x, "pixel_decoder.out_lay", 1, 1, true)?;
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
