//! Reshapes of model inputs folded into the inputs themselves ([`fold_input_reshapes`]).
//!
//! The CPU backend keeps each input tensor between runs (it copies the caller's data into it), so
//! tract never owns an input exclusively and its `IntoShape` of one copies the whole tensor into new
//! memory every run: the head engine's `[1, 256, 90, 160]` stride-4 features, flattened to
//! `[1, 256, 14400]`, cost a 14.7 MB allocation and copy per object and frame (7.6 ms of 39 in
//! its profile). A row-major reshape moves no data, so the input tensor is allocated in the
//! reshaped form instead and the reshape becomes an identity.

use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::tract_core::ops::change_axes::IntoShape;
use tract_onnx::tract_hir::tract_core::ops::identity::Identity;
use tract_onnx::tract_hir::tract_core::ops::source::TypedSource;

/// For every model input whose one reader is an `IntoShape`, gives the input the reshaped fact and
/// turns the reshape into an identity. The caller's data (row-major, the declared shape) is copied
/// into the input unchanged; only the shape it is labelled with differs. Returns how many.
pub fn fold_input_reshapes(model: &mut TypedModel) -> TractResult<usize> {
    let mut folded = 0;
    for outlet in model.input_outlets()?.to_vec() {
        let succ = &model.node(outlet.node).outputs[outlet.slot].successors;
        let [reader] = succ[..] else {
            continue;
        };
        if model.output_outlets()?.contains(&outlet) {
            continue;
        }
        let node = model.node(reader.node);
        if node.op_as::<IntoShape>().is_none() || node.inputs.len() != 1 {
            continue;
        }
        let fact = model.outlet_fact(OutletId::new(reader.node, 0))?.clone();
        let was = model.outlet_fact(outlet)?;
        let concrete = was.shape.as_concrete().is_some() && fact.shape.as_concrete().is_some();
        if fact.datum_type != was.datum_type || !concrete {
            continue;
        }
        let source = model.node_mut(outlet.node);
        source.op = Box::new(TypedSource::new(fact.clone()));
        source.outputs[outlet.slot].fact = fact;
        model.node_mut(reader.node).op = Box::new(Identity);
        folded += 1;
    }
    Ok(folded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_input_read_through_a_reshape_takes_its_shape_and_gives_the_same_result() {
        // x [2, 3, 4] → reshape [2, 12] → + 1, and a second input read directly (left as it is).
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([2, 3, 4])).unwrap();
        let z = m.add_source("z", f32::fact([2, 12])).unwrap();
        let r = m
            .wire_node(
                "r",
                AxisOp::Reshape(1, tvec![3.into(), 4.into()], tvec![12.into()]),
                &[x],
            )
            .unwrap();
        let y = m
            .wire_node(
                "y",
                tract_onnx::tract_hir::tract_core::ops::math::add(),
                &[r[0], z],
            )
            .unwrap();
        m.select_output_outlets(&y).unwrap();
        let m = m.into_optimized().unwrap();
        let xs: Vec<f32> = (0..24).map(|i| i as f32).collect();
        let zs = vec![1.0f32; 24];
        let run = |m: TypedModel, shape: &[usize]| {
            let plan = m.into_runnable().unwrap();
            let out = plan
                .run(tvec!(
                    Tensor::from_shape(shape, &xs).unwrap().into_tvalue(),
                    Tensor::from_shape(&[2, 12], &zs).unwrap().into_tvalue()
                ))
                .unwrap();
            let plain = out[0].try_as_plain_ram().unwrap();
            plain.as_slice::<f32>().unwrap().to_vec()
        };
        let want = run(m.clone(), &[2, 3, 4]);
        let mut folded = m;
        assert_eq!(fold_input_reshapes(&mut folded).unwrap(), 1);
        let inputs = folded.input_outlets().unwrap().to_vec();
        assert_eq!(
            folded.outlet_fact(inputs[0]).unwrap().shape.as_concrete(),
            Some(&[2usize, 12][..])
        );
        assert_eq!(
            folded.outlet_fact(inputs[1]).unwrap().shape.as_concrete(),
            Some(&[2usize, 12][..])
        );
        assert_eq!(run(folded, &[2, 12]), want);
        assert_eq!(want[5], 6.0);
    }
}
