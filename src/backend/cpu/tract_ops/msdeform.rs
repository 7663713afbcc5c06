//! ONNX `MSDeformAttn` (domain `referdino`) → [`MsDeformAttnOp`] ([`crate::ops::msdeform`]).

use super::{check_domain, recycle};
use crate::ops::{ms_deform_attn, MsDeformDims};
use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::ops::expandable::expand;

/// Builds an ONNX `MSDeformAttn` node.
pub(super) fn ms_deform_attn_builder(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    check_domain(node)?;
    Ok((expand(MsDeformAttnExpansion), vec![]))
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct MsDeformAttnExpansion;

impl Expansion for MsDeformAttnExpansion {
    fn name(&self) -> StaticName {
        "MSDeformAttn".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 5)?;
        check_output_arity(outputs, 1)?;
        s.equals(&inputs[0].datum_type, f32::datum_type())?;
        s.equals(&inputs[1].datum_type, i64::datum_type())?;
        s.equals(&inputs[2].datum_type, i64::datum_type())?;
        s.equals(&inputs[3].datum_type, f32::datum_type())?;
        s.equals(&inputs[4].datum_type, f32::datum_type())?;
        s.equals(&outputs[0].datum_type, f32::datum_type())?;
        s.equals(&inputs[0].rank, 4)?;
        s.equals(&inputs[1].rank, 2)?;
        s.equals(&inputs[2].rank, 1)?;
        s.equals(&inputs[3].rank, 6)?;
        s.equals(&inputs[4].rank, 5)?;
        s.equals(&outputs[0].rank, 3)?;
        s.equals(&outputs[0].shape[0], &inputs[0].shape[0])?;
        s.equals(&outputs[0].shape[1], &inputs[3].shape[1])?;
        s.given_2(&inputs[0].shape[2], &inputs[0].shape[3], move |s, h, d| {
            s.equals(&outputs[0].shape[2], h * d)
        })?;
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, MsDeformAttnOp, inputs)
    }
}

/// Typed tract op running [`ms_deform_attn`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MsDeformAttnOp;

impl Op for MsDeformAttnOp {
    fn name(&self) -> StaticName {
        "MSDeformAttn".into()
    }
    op_as_typed_op!();
}

impl EvalOp for MsDeformAttnOp {
    op_out_of_plan!();

    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(
            inputs.len() == 5,
            "MSDeformAttn takes 5 inputs, got {}",
            inputs.len()
        );
        let (v, ss, lsi, loc, att) = (&inputs[0], &inputs[1], &inputs[2], &inputs[3], &inputs[4]);
        ensure!(
            v.rank() == 4
                && ss.rank() == 2
                && lsi.rank() == 1
                && loc.rank() == 6
                && att.rank() == 5,
            "MSDeformAttn: input ranks {:?} {:?} {:?} {:?} {:?}, expected 4, 2, 1, 6, 5",
            v.shape(),
            ss.shape(),
            lsi.shape(),
            loc.shape(),
            att.shape()
        );
        let dims = MsDeformDims::from_shapes(
            v.shape(),
            ss.shape(),
            lsi.shape(),
            loc.shape(),
            att.shape(),
        )?;
        let shape = [dims.batch, dims.num_query, dims.heads * dims.head_dim];
        // SAFETY: `ms_deform_attn` writes every element of its output (each row is stored whole
        // once its taps are summed; the ONNX Runtime op hands it uninitialised memory too), and on
        // an error the tensor is dropped unread.
        let mut out = unsafe { recycle::f32_tensor(ctx, &shape)? };
        {
            let mut ov = out.try_as_plain_ram_mut()?;
            ms_deform_attn(
                v.try_as_plain_ram()?.as_slice::<f32>()?,
                ss.try_as_plain_ram()?.as_slice::<i64>()?,
                lsi.try_as_plain_ram()?.as_slice::<i64>()?,
                loc.try_as_plain_ram()?.as_slice::<f32>()?,
                att.try_as_plain_ram()?.as_slice::<f32>()?,
                dims,
                ov.as_slice_mut::<f32>()?,
            )?;
        }
        recycle::recycle(ctx, inputs);
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for MsDeformAttnOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            inputs.len() == 5,
            "MSDeformAttn takes 5 inputs, got {}",
            inputs.len()
        );
        let v = &inputs[0].shape;
        let loc = &inputs[3].shape;
        ensure!(
            v.rank() == 4 && loc.rank() == 6,
            "MSDeformAttn: value rank 4 and locations rank 6"
        );
        let dims: TVec<TDim> = tvec![v[0].clone(), loc[1].clone(), v[2].clone() * v[3].clone()];
        Ok(tvec!(f32::fact(dims)))
    }
    as_op!();
}
