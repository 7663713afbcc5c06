//! tract's f32 `Sin`, `Cos` and `GeluExact` element-wise nodes → [`UnaryOp`]
//! ([`crate::ops::unary`]), swapped in after the optimisation (the op changes, the node and its
//! input stay).

use super::recycle;
use crate::ops::unary::{apply_in_place, Unary};
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_hir::tract_core::ops::math::{Cos, Sin};
use tract_onnx::tract_hir::tract_core::ops::nn::GeluExact;

/// Replaces every f32 `Sin`, `Cos` and `GeluExact` of an optimised model by [`UnaryOp`]; returns
/// how many.
pub fn use_our_unary(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in 0..model.nodes().len() {
        let node = model.node(id);
        let Some(ew) = node.op_as::<ElementWiseOp>() else {
            continue;
        };
        let f = if ew.0.is::<Sin>() {
            Unary::Sin
        } else if ew.0.is::<Cos>() {
            Unary::Cos
        } else if ew.0.is::<GeluExact>() {
            Unary::GeluExact
        } else {
            continue;
        };
        let [input] = node.inputs[..] else {
            continue;
        };
        let f32_out = ew.1.is_none_or(|dt| dt == f32::datum_type());
        if model.outlet_fact(input)?.datum_type != f32::datum_type() || !f32_out {
            continue;
        }
        model.node_mut(id).op = Box::new(UnaryOp { f });
        replaced += 1;
    }
    Ok(replaced)
}

/// Typed tract op running [`apply_in_place`] over an f32 tensor.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UnaryOp {
    /// The function applied to every element.
    pub f: Unary,
}

impl Op for UnaryOp {
    fn name(&self) -> StaticName {
        format!("{} (referdino)", self.f.name()).into()
    }
    op_as_typed_op!();
}

impl EvalOp for UnaryOp {
    op_out_of_plan!();

    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(
            inputs.len() == 1,
            "{} takes 1 input, got {}",
            self.f.name(),
            inputs.len()
        );
        // A copy only when another op still reads the input.
        let mut t = recycle::owned(ctx, inputs.into_iter().next().unwrap())?;
        {
            let mut plain = t.try_as_plain_ram_mut()?;
            apply_in_place(self.f, plain.as_slice_mut::<f32>()?);
        }
        Ok(tvec!(t.into_tvalue()))
    }
}

impl TypedOp for UnaryOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            inputs.len() == 1 && inputs[0].datum_type == f32::datum_type(),
            "{} takes one f32 input",
            self.f.name()
        );
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }
    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_hir::tract_core::ops::math::{cos, sin};
    use tract_onnx::tract_hir::tract_core::ops::nn::gelu_exact::gelu_exact;

    /// One-node model `f(x)` over `x`, optimised, its node replaced by ours.
    fn run(op: ElementWiseOp, x: &[f32]) -> Vec<f32> {
        let mut m = TypedModel::default();
        let src = m.add_source("x", f32::fact([x.len()])).unwrap();
        let y = m.wire_node("f", op, &[src]).unwrap();
        m.select_output_outlets(&y).unwrap();
        let mut m = m.into_optimized().unwrap();
        let replaced = use_our_unary(&mut m).unwrap();
        assert_eq!(replaced, 1, "the node was not found after optimisation");
        let plan = m.into_runnable().unwrap();
        let out = plan
            .run(tvec!(Tensor::from_shape(&[x.len()], x)
                .unwrap()
                .into_tvalue()))
            .unwrap();
        let plain = out[0].try_as_plain_ram().unwrap();
        plain.as_slice::<f32>().unwrap().to_vec()
    }

    /// tract's own result for the same op.
    fn theirs(op: ElementWiseOp, x: &[f32]) -> Vec<f32> {
        let mut t = Tensor::from_shape(&[x.len()], x).unwrap();
        op.0.eval_in_place(&mut t, None).unwrap();
        let plain = t.try_as_plain_ram().unwrap();
        plain.as_slice::<f32>().unwrap().to_vec()
    }

    #[test]
    fn sin_cos_and_gelu_nodes_run_ours_within_tolerance_of_tracts() {
        let x: Vec<f32> = (0..70_001).map(|i| (i as f32 - 35_000.0) * 1e-3).collect();
        for (op, tol) in [(sin(), 2.5e-7), (cos(), 2.5e-7), (gelu_exact(), 1e-6)] {
            let want = theirs(op.clone(), &x);
            let got = run(op, &x);
            let worst = got
                .iter()
                .zip(&want)
                .map(|(g, w)| (g - w).abs() / w.abs().max(1.0))
                .fold(0.0f32, f32::max);
            assert!(worst <= tol, "worst difference {worst}");
        }
    }
}
