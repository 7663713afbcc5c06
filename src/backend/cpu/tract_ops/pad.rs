//! tract's constant `Pad` of f32 tensors → [`PadOp`] ([`crate::ops::pad`]), swapped in after the
//! optimisation (the op changes, the node and its input stay).

use super::{f32_output, recycle};
use crate::ops::pad::pad_constant;
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::tract_core::ops::array::{Pad, PadMode};

/// Replaces every constant `Pad` of an f32 tensor of static shape by [`PadOp`]; returns how many.
pub fn use_our_pad(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in 0..model.nodes().len() {
        let node = model.node(id);
        let Some(pad) = node.op_as::<Pad>() else {
            continue;
        };
        let PadMode::Constant(value) = &pad.mode else {
            continue;
        };
        let [input] = node.inputs[..] else {
            continue;
        };
        let fact = model.outlet_fact(input)?;
        let f32s = fact.datum_type == f32::datum_type() && value.datum_type() == f32::datum_type();
        if !f32s || value.len() != 1 || fact.shape.as_concrete().is_none() {
            continue;
        }
        if pad.pads.len() != fact.rank() {
            continue;
        }
        let value = value.cast_to_scalar::<f32>()?;
        let op = PadOp {
            pads: pad.pads.clone(),
            value_bits: value.to_bits(),
        };
        model.node_mut(id).op = Box::new(op);
        replaced += 1;
    }
    Ok(replaced)
}

/// Pads an f32 tensor with a constant ([`pad_constant`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PadOp {
    /// (before, after) per axis.
    pub pads: Vec<(usize, usize)>,
    /// The padding value's bits (an `f32` is not `Hash`).
    pub value_bits: u32,
}

impl PadOp {
    fn padded(&self, shape: &[usize]) -> TractResult<TVec<usize>> {
        ensure!(
            shape.len() == self.pads.len(),
            "Pad of {} axes on a rank-{} tensor",
            self.pads.len(),
            shape.len()
        );
        Ok(shape
            .iter()
            .zip(&self.pads)
            .map(|(&d, &(a, b))| d + a + b)
            .collect())
    }
}

impl Op for PadOp {
    fn name(&self) -> StaticName {
        "Pad (referdino)".into()
    }
    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "pads: {:?}, value: {}",
            self.pads,
            f32::from_bits(self.value_bits)
        )])
    }
    op_as_typed_op!();
}

impl EvalOp for PadOp {
    op_out_of_plan!();

    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(inputs.len() == 1, "Pad takes 1 input, got {}", inputs.len());
        let shape = self.padded(inputs[0].shape())?;
        let y = {
            let x = inputs[0].try_as_plain_ram()?;
            let x = x.as_slice::<f32>()?;
            f32_output(ctx, &shape, |y| {
                pad_constant(
                    x,
                    inputs[0].shape(),
                    &self.pads,
                    f32::from_bits(self.value_bits),
                    y,
                )
            })?
        };
        recycle::recycle(ctx, inputs);
        Ok(tvec!(y))
    }
}

impl TypedOp for PadOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            inputs.len() == 1 && inputs[0].datum_type == f32::datum_type(),
            "Pad (referdino) takes one f32 input"
        );
        let shape = inputs[0]
            .shape
            .as_concrete()
            .context("Pad (referdino) needs a static shape")?;
        Ok(tvec!(f32::fact(self.padded(shape)?)))
    }
    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_pads_give_the_shape_and_bits_of_tracts() {
        for (shape, pads) in [
            (
                vec![1usize, 9, 16, 5],
                vec![(0usize, 0usize), (0, 1), (0, 1), (0, 0)],
            ),
            (vec![2, 3, 4], vec![(1, 2), (0, 1), (3, 0)]),
        ] {
            let n: usize = shape.iter().product();
            let x =
                Tensor::from_shape(&shape, &(0..n).map(|i| i as f32).collect::<Vec<_>>()).unwrap();
            let mut m = TypedModel::default();
            let src = m.add_source("x", f32::fact(&shape)).unwrap();
            let pad = Pad::new(pads, PadMode::Constant(Arc::new(tensor0(-2.5f32))));
            let y = m.wire_node("pad", pad, &[src]).unwrap();
            m.select_output_outlets(&y).unwrap();
            let m = m.into_optimized().unwrap();
            let run = |m: TypedModel| {
                let plan = m.into_runnable().unwrap();
                plan.run(tvec!(x.clone().into_tvalue())).unwrap().remove(0)
            };
            let want = run(m.clone());
            let mut ours = m;
            assert_eq!(use_our_pad(&mut ours).unwrap(), 1);
            let got = run(ours);
            assert_eq!(got.shape(), want.shape());
            let (g, w) = (
                got.try_as_plain_ram().unwrap(),
                want.try_as_plain_ram().unwrap(),
            );
            assert_eq!(g.as_slice::<f32>().unwrap(), w.as_slice::<f32>().unwrap());
        }
    }
}
