//! tract's `MoveAxis` to or from the last axis of an f32 tensor → [`TransposeOp`]
//! ([`crate::ops::transpose`]), swapped in after tract's optimisation ([`use_our_transpose`]).

use super::recycle;
use crate::ops::transpose::transpose;
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::tract_core::ops::change_axes::AxisOp;

/// `AxisOp::Move(from, to)` with `from` or `to` the last axis, as a batched 2-D transpose.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TransposeOp {
    /// The axis moved.
    pub from: usize,
    /// Where it goes.
    pub to: usize,
}

impl TransposeOp {
    /// `(batch, rows, cols)` of the transpose that moves the axis in a tensor of `shape`.
    fn dims(&self, shape: &[usize]) -> TractResult<(usize, usize, usize)> {
        let r = shape.len();
        let p = |s: &[usize]| s.iter().product::<usize>();
        ensure!(
            self.from < r && self.to < r,
            "MoveAxis {} to {} of {shape:?}",
            self.from,
            self.to
        );
        if self.to == r - 1 {
            Ok((
                p(&shape[..self.from]),
                shape[self.from],
                p(&shape[self.from + 1..]),
            ))
        } else if self.from == r - 1 {
            Ok((
                p(&shape[..self.to]),
                p(&shape[self.to..r - 1]),
                shape[r - 1],
            ))
        } else {
            bail!(
                "MoveAxis {} to {} does not involve the last axis",
                self.from,
                self.to
            )
        }
    }
}

impl Op for TransposeOp {
    fn name(&self) -> StaticName {
        "MoveAxis (referdino)".into()
    }
    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("Axis {} to {}", self.from, self.to)])
    }
    op_as_typed_op!();
}

impl EvalOp for TransposeOp {
    op_out_of_plan!();

    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(
            inputs.len() == 1,
            "MoveAxis takes 1 input, got {}",
            inputs.len()
        );
        let x = &inputs[0];
        let (batch, rows, cols) = self.dims(x.shape())?;
        let mut shape: TVec<usize> = x.shape().into();
        let d = shape.remove(self.from);
        shape.insert(self.to, d);
        let y = {
            let xp = x.try_as_plain_ram()?;
            let xs = xp.as_slice::<f32>()?;
            super::f32_output(ctx, &shape, |y| transpose(xs, batch, rows, cols, y))?
        };
        recycle::recycle(ctx, inputs);
        Ok(tvec!(y))
    }
}

impl TypedOp for TransposeOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            inputs.len() == 1 && inputs[0].datum_type == f32::datum_type(),
            "MoveAxis (referdino) takes one f32 input"
        );
        let mut shape = inputs[0].shape.to_tvec();
        ensure!(self.from < shape.len() && self.to < shape.len(), "bad move");
        let d = shape.remove(self.from);
        shape.insert(self.to, d);
        Ok(tvec!(f32::fact(shape)))
    }
    as_op!();
}

/// Swaps tract's `MoveAxis` for [`TransposeOp`] where it moves an axis of a static-shape f32
/// tensor to or from the last position (its copy there reads or writes one element per cache line).
/// Other moves keep tract's, which copies whole inner runs. Returns how many were swapped.
pub fn use_our_transpose(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in 0..model.nodes().len() {
        let node = model.node(id);
        let Some(&AxisOp::Move(from, to)) = node.op_as::<AxisOp>() else {
            continue;
        };
        let [input] = node.inputs[..] else {
            continue;
        };
        let fact = model.outlet_fact(input)?;
        let r = fact.rank();
        if fact.datum_type != f32::datum_type()
            || fact.shape.as_concrete().is_none()
            || from == to
            || (from != r - 1 && to != r - 1)
        {
            continue;
        }
        model.node_mut(id).op = Box::new(TransposeOp { from, to });
        replaced += 1;
    }
    Ok(replaced)
}
