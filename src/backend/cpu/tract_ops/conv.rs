//! tract `Conv` (NCHW, one group, constant f32 OIHW kernel and bias, static shapes) →
//! [`ConvOp`] ([`crate::ops::conv`]), swapped in on the typed, decluttered graph before tract's
//! optimisation, on x86-64 with AVX2 + FMA (where [`mod@crate::ops::linear`] runs its fast kernel).

use super::{f32_output, recycle};
use crate::ops::conv::{conv2d, Conv2dGeometry};
use std::sync::Arc;
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::tract_core::ops::cnn::{Conv, KernelFormat};
use tract_onnx::tract_hir::tract_core::ops::nn::DataFormat;

/// Replaces every eligible convolution by [`ConvOp`]; returns how many.
pub fn use_our_conv(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in model.eval_order()? {
        let Some(op) = eligible(model, id)? else {
            continue;
        };
        let node = model.node(id);
        let (name, x) = (node.name.clone(), node.inputs[0]);
        let mut p = TypedModelPatch::default();
        let tap = p.tap_model(model, x)?;
        let out = p.wire_node(name, op, &[tap])?[0];
        p.shunt_outside(model, OutletId::new(id, 0), out)?;
        p.apply(model)?;
        replaced += 1;
    }
    Ok(replaced)
}

/// [`ConvOp`] for node `id` when it is a convolution we run.
fn eligible(model: &TypedModel, id: usize) -> TractResult<Option<ConvOp>> {
    let node = model.node(id);
    let Some(conv) = node.op_as::<Conv>() else {
        return Ok(None);
    };
    let ps = &conv.pool_spec;
    if conv.q_params.is_some()
        || conv.group != 1
        || conv.kernel_fmt != KernelFormat::OIHW
        || ps.data_format != DataFormat::NCHW
        || ps.rank() != 2
        || node.inputs.len() != 3
    {
        return Ok(None);
    }
    let xf = model.outlet_fact(node.inputs[0])?;
    let (Some(kernel), Some(bias)) = (
        model.outlet_fact(node.inputs[1])?.konst.clone(),
        model.outlet_fact(node.inputs[2])?.konst.clone(),
    ) else {
        return Ok(None);
    };
    let f32t = f32::datum_type();
    if xf.datum_type != f32t || kernel.datum_type() != f32t || bias.datum_type() != f32t {
        return Ok(None);
    }
    let Some(shape) = xf.shape.as_concrete() else {
        return Ok(None);
    };
    let [n, c_in, h, w] = shape[..] else {
        return Ok(None);
    };
    let ks = kernel.shape();
    if ks.len() != 4 || ks[1] != c_in || ks[2..] != ps.kernel_shape[..] {
        return Ok(None);
    }
    let c_out = ks[0];
    let padding = ps.computed_padding(&[h, w]);
    let g = Conv2dGeometry {
        n,
        c_in,
        h,
        w,
        c_out,
        kh: ks[2],
        kw: ks[3],
        stride: [ps.stride(0), ps.stride(1)],
        dilation: [ps.dilation(0), ps.dilation(1)],
        pad: [padding[0].pad_before, padding[1].pad_before],
        oh: padding[0].convoluted,
        ow: padding[1].convoluted,
    };
    let kplain = kernel.try_as_plain_ram()?;
    let kernel = kplain.as_slice::<f32>()?.to_vec();
    let bplain = bias.try_as_plain_ram()?;
    let bvals = bplain.as_slice::<f32>()?;
    let bias = match bvals.len() {
        0 => None,
        1 if bvals[0] == 0.0 => None,
        1 => Some(vec![bvals[0]; c_out]),
        len if len == c_out => Some(bvals.to_vec()),
        _ => return Ok(None),
    };
    Ok(Some(ConvOp {
        geometry: g,
        kernel: Arc::new(kernel),
        bias: bias.map(Arc::new),
    }))
}

/// A 2-D convolution run by [`conv2d`].
#[derive(Debug, Clone, PartialEq)]
pub struct ConvOp {
    /// Shapes, strides, padding.
    pub geometry: Conv2dGeometry,
    /// The kernel, OIHW.
    pub kernel: Arc<Vec<f32>>,
    /// Per output channel.
    pub bias: Option<Arc<Vec<f32>>>,
}

impl Eq for ConvOp {}

impl Op for ConvOp {
    fn name(&self) -> StaticName {
        "Conv (referdino)".into()
    }
    fn info(&self) -> TractResult<Vec<String>> {
        let g = &self.geometry;
        Ok(vec![format!(
            "{}x{} stride {:?} dilation {:?} pad {:?}, {} -> {} channels",
            g.kh, g.kw, g.stride, g.dilation, g.pad, g.c_in, g.c_out
        )])
    }
    op_as_typed_op!();
}

impl EvalOp for ConvOp {
    op_out_of_plan!();

    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(
            inputs.len() == 1,
            "Conv takes 1 input, got {}",
            inputs.len()
        );
        let g = &self.geometry;
        let bias = self.bias.as_deref().map(|b| b.as_slice());
        let mut scratch = recycle::scratch(ctx, g.scratch_len())?;
        let y = {
            let xp = inputs[0].try_as_plain_ram()?;
            let x = xp.as_slice::<f32>()?;
            let mut sp = scratch.try_as_plain_ram_mut()?;
            let s = sp.as_slice_mut::<f32>()?;
            f32_output(ctx, &[g.n, g.c_out, g.oh, g.ow], |y| {
                conv2d(x, g, &self.kernel, bias, s, y)
            })?
        };
        recycle::give_back(ctx, scratch);
        recycle::recycle(ctx, inputs);
        Ok(tvec!(y))
    }
}

impl TypedOp for ConvOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let g = &self.geometry;
        ensure!(
            inputs.len() == 1 && inputs[0].datum_type == f32::datum_type(),
            "Conv takes one f32 input"
        );
        Ok(tvec!(f32::fact([g.n, g.c_out, g.oh, g.ow])))
    }
    as_op!();
}
