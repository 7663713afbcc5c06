//! tract's nearest-neighbour `Resize` (`asymmetric` coordinates, `floor` rounding) of f32 tensors
//! of static shape that changes only the last two axes → [`ResizeNearestOp`]
//! ([`crate::ops::resize`]), swapped in after the optimisation (the op changes, the node and its
//! inputs stay; the scale / size inputs are constants and no longer read).

use super::{f32_output, recycle};
use crate::ops::resize::{nearest_indices, resize_nearest_2d};
use std::sync::Arc;
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::tract_core::ops::nn::{CoordTransformer, Interpolator, Nearest, Resize};

/// Replaces every eligible `Resize` by [`ResizeNearestOp`]; returns how many.
pub fn use_our_resize(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in 0..model.nodes().len() {
        let node = model.node(id);
        let Some(r) = node.op_as::<Resize>() else {
            continue;
        };
        if r.interpolator != Interpolator::Nearest
            || r.coord_transformer != CoordTransformer::Asymmetric
            || r.nearest != Nearest::Floor
            || node.inputs.is_empty()
        {
            continue;
        }
        let fact = model.outlet_fact(node.inputs[0])?;
        let out = model.outlet_fact(OutletId::new(id, 0))?;
        let (Some(shape), Some(out_shape)) = (fact.shape.as_concrete(), out.shape.as_concrete())
        else {
            continue;
        };
        let r = shape.len();
        let f32s = fact.datum_type == f32::datum_type() && out.datum_type == f32::datum_type();
        if !f32s || r < 2 || out_shape.len() != r || shape[..r - 2] != out_shape[..r - 2] {
            continue;
        }
        let op = ResizeNearestOp {
            rows: Arc::new(nearest_indices(shape[r - 2], out_shape[r - 2])),
            cols: Arc::new(nearest_indices(shape[r - 1], out_shape[r - 1])),
        };
        model.node_mut(id).op = Box::new(op);
        replaced += 1;
    }
    Ok(replaced)
}

/// Nearest-neighbour resizing of the last two axes through fixed index tables.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResizeNearestOp {
    /// The input row each output row reads.
    pub rows: Arc<Vec<usize>>,
    /// The input column each output column reads.
    pub cols: Arc<Vec<usize>>,
}

impl ResizeNearestOp {
    /// The output shape for an input of `shape`.
    fn resized(&self, shape: &[usize]) -> TractResult<TVec<usize>> {
        ensure!(
            shape.len() >= 2,
            "Resize (referdino) needs two axes, got {shape:?}"
        );
        let mut out: TVec<usize> = shape.into();
        let r = out.len();
        out[r - 2] = self.rows.len();
        out[r - 1] = self.cols.len();
        Ok(out)
    }
}

impl Op for ResizeNearestOp {
    fn name(&self) -> StaticName {
        "Resize (referdino)".into()
    }
    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "nearest to {}×{}",
            self.rows.len(),
            self.cols.len()
        )])
    }
    op_as_typed_op!();
}

impl EvalOp for ResizeNearestOp {
    op_out_of_plan!();

    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(!inputs.is_empty(), "Resize takes an input");
        let shape = inputs[0].shape();
        let out_shape = self.resized(shape)?;
        let r = shape.len();
        let (h, w) = (shape[r - 2], shape[r - 1]);
        let planes: usize = shape[..r - 2].iter().product();
        let y = {
            let x = inputs[0].try_as_plain_ram()?;
            let x = x.as_slice::<f32>()?;
            f32_output(ctx, &out_shape, |y| {
                resize_nearest_2d(x, planes, h, w, &self.rows, &self.cols, y)
            })?
        };
        recycle::recycle(ctx, inputs);
        Ok(tvec!(y))
    }
}

impl TypedOp for ResizeNearestOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            !inputs.is_empty() && inputs[0].datum_type == f32::datum_type(),
            "Resize (referdino) takes an f32 input"
        );
        let shape = inputs[0]
            .shape
            .as_concrete()
            .context("Resize (referdino) needs a static shape")?;
        Ok(tvec!(f32::fact(self.resized(shape)?)))
    }
    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::builder::{Graph, GraphOptions, Interp};
    use crate::tensor::DType;

    /// The FPN's resizes (12×20 → 23×40, 23×40 → 45×80, 45×80 → 90×160) and a shrinking one, as
    /// our graph builder emits them: the bits of tract's own `Resize`, which none are left of.
    #[test]
    fn nearest_resizes_give_the_shape_and_bits_of_tracts() {
        let mut g = Graph::new("resize", GraphOptions::default());
        let a = g.input("a", DType::F32, &[1, 3, 12, 20]);
        let b = g.input("b", DType::F32, &[1, 2, 23, 40]);
        let c = g.input("c", DType::F32, &[1, 2, 45, 80]);
        for (i, (x, h, w)) in [(&a, 23, 40), (&b, 45, 80), (&c, 90, 160), (&c, 20, 33)]
            .into_iter()
            .enumerate()
        {
            let y = g.resize(x, h, w, Interp::Nearest).unwrap();
            g.output(&format!("y{i}"), &y).unwrap();
        }
        let bytes = g.to_bytes();
        let model = tract_onnx::onnx()
            .model_for_read(&mut &bytes[..])
            .unwrap()
            .into_optimized()
            .unwrap();
        let inputs: TVec<TValue> = [[1usize, 3, 12, 20], [1, 2, 23, 40], [1, 2, 45, 80]]
            .iter()
            .map(|s| {
                let n: usize = s.iter().product();
                let v: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
                Tensor::from_shape(s, &v).unwrap().into_tvalue()
            })
            .collect();
        let run = |m: TypedModel| m.into_runnable().unwrap().run(inputs.clone()).unwrap();
        let want = run(model.clone());
        let mut ours = model;
        assert_eq!(use_our_resize(&mut ours).unwrap(), 4);
        assert!(ours.nodes().iter().all(|n| !n.op_is::<Resize>()));
        let got = run(ours);
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.shape(), w.shape());
            let (g, w) = (g.try_as_plain_ram().unwrap(), w.try_as_plain_ram().unwrap());
            assert_eq!(g.as_slice::<f32>().unwrap(), w.as_slice::<f32>().unwrap());
        }
    }
}
