//! tract's `MoveAxis` of an f32 tensor → [`TransposeOp`] ([`crate::ops::transpose`]), swapped in
//! after tract's optimisation ([`use_our_transpose`]).

use super::recycle;
use crate::ops::transpose::transpose_blocks;
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::tract_core::ops::change_axes::AxisOp;

/// `AxisOp::Move(from, to)`: a batched 2-D transpose of blocks, or, where the moved axis crosses
/// only axes of size 1, the same memory under the new shape (no copy when nothing else reads it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TransposeOp {
    /// The axis moved.
    pub from: usize,
    /// Where it goes.
    pub to: usize,
}

impl TransposeOp {
    /// `shape` with the axis moved (`from` and `to` inside it: checked by the callers).
    fn moved<T>(&self, mut shape: TVec<T>) -> TVec<T> {
        let d = shape.remove(self.from);
        shape.insert(self.to, d);
        shape
    }

    /// `(batch, rows, cols, block)` of the transpose that moves the axis in a tensor of `shape`:
    /// the axes before both positions are the batch, the moved axis and the axes it crosses the
    /// two sides of each matrix, the axes after both the contiguous block.
    fn dims(&self, shape: &[usize]) -> TractResult<(usize, usize, usize, usize)> {
        let r = shape.len();
        let p = |s: &[usize]| s.iter().product::<usize>();
        let (from, to) = (self.from, self.to);
        ensure!(from < r && to < r, "MoveAxis {from} to {to} of {shape:?}");
        Ok(if from < to {
            (
                p(&shape[..from]),
                shape[from],
                p(&shape[from + 1..=to]),
                p(&shape[to + 1..]),
            )
        } else {
            (
                p(&shape[..to]),
                p(&shape[to..from]),
                shape[from],
                p(&shape[from + 1..]),
            )
        })
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
        let (batch, rows, cols, block) = self.dims(inputs[0].shape())?;
        let shape = self.moved(inputs[0].shape().into());
        if rows == 1 || cols == 1 {
            // Only axes of size 1 (or none) are crossed: the layout does not change.
            let x = inputs.into_iter().next().context("one input")?;
            let mut y = recycle::owned(ctx, x)?;
            y.set_shape(&shape)?;
            return Ok(tvec!(y.into_tvalue()));
        }
        let y = {
            let xp = inputs[0].try_as_plain_ram()?;
            let xs = xp.as_slice::<f32>()?;
            super::f32_output(ctx, &shape, |y| {
                transpose_blocks(xs, batch, rows, cols, block, y)
            })?
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
        let shape = inputs[0].shape.to_tvec();
        ensure!(self.from < shape.len() && self.to < shape.len(), "bad move");
        Ok(tvec!(f32::fact(self.moved(shape))))
    }
    as_op!();
}

/// Swaps tract's `MoveAxis` for [`TransposeOp`] where it moves an axis of a static-shape f32
/// tensor (tract's copy walks element by element; see [`crate::ops::transpose`]). Returns how many
/// were swapped.
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
        if fact.datum_type != f32::datum_type() || fact.shape.as_concrete().is_none() || from == to
        {
            continue;
        }
        model.node_mut(id).op = Box::new(TransposeOp { from, to });
        replaced += 1;
    }
    Ok(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_move_gives_the_shape_and_bits_of_tracts() {
        // Moves across axes of size 1 (the same memory reshaped), to and from the last axis
        // (blocks of 1), and between inner axes (blocks of several values).
        let shape = [2usize, 1, 3, 4, 5];
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 7.0).collect();
        let x = Tensor::from_shape(&shape, &data).unwrap();
        for from in 0..shape.len() {
            for to in 0..shape.len() {
                if from == to {
                    continue;
                }
                let mut model = TypedModel::default();
                let src = model.add_source("x", f32::fact(shape)).unwrap();
                let y = model
                    .wire_node("move", AxisOp::Move(from, to), &[src])
                    .unwrap();
                model.select_output_outlets(&y).unwrap();
                let run = |m: TypedModel| {
                    let plan = SimplePlan::new(m).unwrap();
                    plan.run(tvec!(x.clone().into_tvalue())).unwrap().remove(0)
                };
                let want = run(model.clone());
                assert_eq!(use_our_transpose(&mut model).unwrap(), 1);
                let got = run(model);
                assert_eq!(got.shape(), want.shape(), "{from} to {to}");
                let (gp, wp) = (
                    got.try_as_plain_ram().unwrap(),
                    want.try_as_plain_ram().unwrap(),
                );
                let (g, w) = (gp.as_slice::<f32>().unwrap(), wp.as_slice::<f32>().unwrap());
                assert!(
                    g.iter().zip(w).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{from} to {to}: {g:?} against {w:?}"
                );
            }
        }
    }
}
