//! tract's single-axis f32 `Reduce<Max>` / `Reduce<Min>`, and `Reduce<Sum>` off the last axis →
//! [`ReduceOp`] ([`crate::ops::reduce`]); `GatherElements` of f32 data by i64 indices →
//! [`GatherElementsOp`] ([`crate::ops::gather`]). Swapped in after the optimisation (the op
//! changes, the node and its inputs stay). A sum along the last axis stays tract's: it runs a
//! vectorised, threaded kernel there, whose association ours would not reproduce.

use super::{f32_output, recycle};
use crate::ops::gather::gather_elements;
use crate::ops::reduce::{reduce_axis, Reduction};
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::tract_core::ops::array::GatherElements;
use tract_onnx::tract_hir::tract_core::ops::nn::{Reduce, Reducer};

/// Replaces every eligible `Reduce` and `GatherElements`; returns how many.
pub fn use_our_reduce_and_gather(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in 0..model.nodes().len() {
        let node = model.node(id);
        let op: Box<dyn TypedOp> = if let Some(r) = node.op_as::<Reduce>() {
            let Some(op) = reduce_op(model, node, r)? else {
                continue;
            };
            Box::new(op)
        } else if let Some(g) = node.op_as::<GatherElements>() {
            if !gathers_f32(model, node, g.axis)? {
                continue;
            }
            Box::new(GatherElementsOp { axis: g.axis })
        } else {
            continue;
        };
        model.node_mut(id).op = op;
        replaced += 1;
    }
    Ok(replaced)
}

/// [`ReduceOp`] for a one-axis reduction of an f32 tensor of static shape that we run.
fn reduce_op(model: &TypedModel, node: &TypedNode, r: &Reduce) -> TractResult<Option<ReduceOp>> {
    let ([x], [axis]) = (&node.inputs[..], &r.axes[..]) else {
        return Ok(None);
    };
    let fact = model.outlet_fact(*x)?;
    let Some(shape) = fact.shape.as_concrete() else {
        return Ok(None);
    };
    if fact.datum_type != f32::datum_type() || *axis >= shape.len() || shape[*axis] == 0 {
        return Ok(None);
    }
    let last = shape[axis + 1..].iter().product::<usize>() == 1;
    let reduction = match r.reducer {
        Reducer::Max => Reduction::Max,
        Reducer::Min => Reduction::Min,
        Reducer::Sum if !last => Reduction::Sum,
        _ => return Ok(None),
    };
    Ok(Some(ReduceOp {
        reduction,
        axis: *axis,
    }))
}

/// Whether a `GatherElements` node reads f32 data by i64 indices of static shapes equal off `axis`.
fn gathers_f32(model: &TypedModel, node: &TypedNode, axis: usize) -> TractResult<bool> {
    let [data, idx] = node.inputs[..] else {
        return Ok(false);
    };
    let (d, i) = (model.outlet_fact(data)?, model.outlet_fact(idx)?);
    let (Some(ds), Some(is)) = (d.shape.as_concrete(), i.shape.as_concrete()) else {
        return Ok(false);
    };
    Ok(d.datum_type == f32::datum_type()
        && i.datum_type == i64::datum_type()
        && axis < ds.len()
        && ds.len() == is.len()
        && ds[..axis] == is[..axis]
        && ds[axis + 1..] == is[axis + 1..])
}

/// A reduction over one axis ([`reduce_axis`]); the axis stays, of size 1.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReduceOp {
    /// What it computes.
    pub reduction: Reduction,
    /// The reduced axis.
    pub axis: usize,
}

impl ReduceOp {
    fn reduced(&self, shape: &[usize]) -> TractResult<TVec<usize>> {
        ensure!(
            self.axis < shape.len(),
            "Reduce (referdino) over axis {} of {shape:?}",
            self.axis
        );
        let mut out: TVec<usize> = shape.into();
        out[self.axis] = 1;
        Ok(out)
    }
}

impl Op for ReduceOp {
    fn name(&self) -> StaticName {
        format!("Reduce<{}> (referdino)", self.reduction.name()).into()
    }
    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("axis: {}", self.axis)])
    }
    op_as_typed_op!();
}

impl EvalOp for ReduceOp {
    op_out_of_plan!();

    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(
            inputs.len() == 1,
            "Reduce takes 1 input, got {}",
            inputs.len()
        );
        let shape = self.reduced(inputs[0].shape())?;
        let y = {
            let x = inputs[0].try_as_plain_ram()?;
            let x = x.as_slice::<f32>()?;
            f32_output(ctx, &shape, |y| {
                reduce_axis(self.reduction, x, inputs[0].shape(), self.axis, y)
            })?
        };
        recycle::recycle(ctx, inputs);
        Ok(tvec!(y))
    }
}

impl TypedOp for ReduceOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            inputs.len() == 1 && inputs[0].datum_type == f32::datum_type(),
            "Reduce (referdino) takes one f32 input"
        );
        let shape = inputs[0]
            .shape
            .as_concrete()
            .context("Reduce (referdino) needs a static shape")?;
        Ok(tvec!(f32::fact(self.reduced(shape)?)))
    }
    as_op!();
}

/// ONNX `GatherElements` ([`gather_elements`]); the output has the indices' shape.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GatherElementsOp {
    /// The gathered axis.
    pub axis: usize,
}

impl Op for GatherElementsOp {
    fn name(&self) -> StaticName {
        "GatherElements (referdino)".into()
    }
    op_as_typed_op!();
}

impl EvalOp for GatherElementsOp {
    op_out_of_plan!();

    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(
            inputs.len() == 2,
            "GatherElements takes 2 inputs, got {}",
            inputs.len()
        );
        let y = {
            let (d, i) = (inputs[0].try_as_plain_ram()?, inputs[1].try_as_plain_ram()?);
            let (data, idx) = (d.as_slice::<f32>()?, i.as_slice::<i64>()?);
            f32_output(ctx, inputs[1].shape(), |y| {
                gather_elements(
                    data,
                    inputs[0].shape(),
                    idx,
                    inputs[1].shape(),
                    self.axis,
                    y,
                )
            })?
        };
        recycle::recycle(ctx, inputs);
        Ok(tvec!(y))
    }
}

impl TypedOp for GatherElementsOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            inputs.len() == 2
                && inputs[0].datum_type == f32::datum_type()
                && inputs[1].datum_type == i64::datum_type(),
            "GatherElements (referdino) takes f32 data and i64 indices"
        );
        Ok(tvec!(f32::fact(inputs[1].shape.clone())))
    }
    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sums over an inner axis, maxima over the last, minima over the first and a gather of rows
    /// with negative indices: the bits of tract's own ops; a sum over the last axis stays tract's.
    #[test]
    fn reductions_and_gathers_give_the_bits_of_tracts() {
        let shape = [2usize, 8, 30, 40];
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact(shape)).unwrap();
        let data = m.add_source("data", f32::fact([1, 50, 16])).unwrap();
        let idx = m.add_source("idx", i64::fact([1, 9, 16])).unwrap();
        let mut outs = Vec::new();
        for (name, axis, reducer) in [
            ("sum1", 1, Reducer::Sum),
            ("max3", 3, Reducer::Max),
            ("min0", 0, Reducer::Min),
            ("sum3", 3, Reducer::Sum),
        ] {
            let op = Reduce::new(tvec![axis], reducer);
            outs.push(m.wire_node(name, op, &[x]).unwrap()[0]);
        }
        outs.push(
            m.wire_node("gather", GatherElements::new(1), &[data, idx])
                .unwrap()[0],
        );
        m.select_output_outlets(&outs).unwrap();
        let n: usize = shape.iter().product();
        let xv: Vec<f32> = (0..n)
            .map(|i| match i % 97 {
                0 => -0.0,
                5 => f32::NEG_INFINITY,
                _ => ((i * 7919) % 1009) as f32 * 0.31 - 150.0,
            })
            .collect();
        let dv: Vec<f32> = (0..800).map(|i| i as f32 * 0.25).collect();
        let iv: Vec<i64> = (0..144).map(|i| (i * 13 % 100) - 50).collect();
        let inputs = tvec![
            Tensor::from_shape(&shape, &xv).unwrap().into_tvalue(),
            Tensor::from_shape(&[1, 50, 16], &dv).unwrap().into_tvalue(),
            Tensor::from_shape(&[1, 9, 16], &iv).unwrap().into_tvalue(),
        ];
        let run = |m: TypedModel| m.into_runnable().unwrap().run(inputs.clone()).unwrap();
        let want = run(m.clone());
        let mut ours = m;
        assert_eq!(use_our_reduce_and_gather(&mut ours).unwrap(), 4);
        let names: Vec<String> = ours
            .nodes()
            .iter()
            .map(|n| n.op.name().to_string())
            .collect();
        assert!(names.iter().any(|n| n == "Reduce<Sum>"), "{names:?}");
        let got = run(ours);
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.shape(), w.shape());
            let (g, w) = (g.try_as_plain_ram().unwrap(), w.try_as_plain_ram().unwrap());
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(g.as_slice::<f32>().unwrap()),
                bits(w.as_slice::<f32>().unwrap())
            );
        }
    }
}
