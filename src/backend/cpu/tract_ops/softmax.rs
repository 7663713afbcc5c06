//! Single-axis f32 softmax → [`SoftmaxOp`] ([`crate::ops::softmax`]), swapped in after tract's
//! optimisation ([`use_our_softmax`]).

use super::recycle;
use crate::ops::softmax_in_place;
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::tract_core::ops::nn::{Softmax, SoftmaxKind};

/// Replaces every single-axis f32 softmax of an optimised model by [`SoftmaxOp`] (same semantics;
/// [`crate::ops::softmax`] says why and how accurately). Returns how many were replaced; log-softmax,
/// quantized and multi-axis softmaxes keep tract's operator.
pub fn use_our_softmax(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in 0..model.nodes().len() {
        let node = model.node(id);
        let Some(sm) = node.op_as::<Softmax>() else {
            continue;
        };
        if sm.kind != SoftmaxKind::Softmax || sm.quant_output_dt.is_some() || sm.axes.len() != 1 {
            continue;
        }
        let axis = sm.axes[0];
        let [input] = node.inputs[..] else {
            continue;
        };
        let fact = model.outlet_fact(input)?;
        if fact.datum_type != f32::datum_type() || axis >= fact.rank() {
            continue;
        }
        model.node_mut(id).op = Box::new(SoftmaxOp { axis });
        replaced += 1;
    }
    Ok(replaced)
}

/// Typed tract op running [`softmax_in_place`] along one axis of an f32 tensor.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SoftmaxOp {
    /// The axis normalised over.
    pub axis: usize,
}

impl Op for SoftmaxOp {
    fn name(&self) -> StaticName {
        "Softmax (referdino)".into()
    }
    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("axis: {}", self.axis)])
    }
    op_as_typed_op!();
}

impl EvalOp for SoftmaxOp {
    op_out_of_plan!();

    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(
            inputs.len() == 1,
            "Softmax takes 1 input, got {}",
            inputs.len()
        );
        let mut t = recycle::owned(ctx, inputs.into_iter().next().unwrap())?;
        let shape = t.shape();
        ensure!(
            self.axis < shape.len(),
            "Softmax axis {} of a rank-{} tensor",
            self.axis,
            shape.len()
        );
        let outer: usize = shape[..self.axis].iter().product();
        let n = shape[self.axis];
        let inner: usize = shape[self.axis + 1..].iter().product();
        {
            let mut plain = t.try_as_plain_ram_mut()?;
            softmax_in_place(plain.as_slice_mut::<f32>()?, outer, n, inner)?;
        }
        Ok(tvec!(t.into_tvalue()))
    }
}

impl TypedOp for SoftmaxOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            inputs.len() == 1 && inputs[0].datum_type == f32::datum_type(),
            "Softmax takes one f32 input"
        );
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }
    as_op!();
}
