//! An INT8 engine's attention products in integers: a [`MatMulOp`] whose two operands are
//! fake-quantized (`FakeQuantU8`, the export's activation Q → DQ pairs before a product of two
//! activations) becomes one [`QMatMulOp`] that quantizes its f32 operands itself and multiplies
//! them on the integer kernels ([`crate::ops::qmatmul`]).

use super::linear::{sole_consumer, MatMulOp};
use super::qlinear::QuantizeU8Op;
use super::TransposeOp;
use super::{f32_output, recycle};
use crate::ops::qlinear::QKernel;
use crate::ops::qmatmul::{qmatmul_strided, scratch_len};
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::tract_core::ops::change_axes::{AxisOp, IntoShape};

/// `y = a · b` of two f32 activations, each quantized to uint8 at its scale first
/// ([`crate::ops::qmatmul`]): the integers ONNX Runtime multiplies for the same Q/DQ graph.
#[derive(Debug, Clone, PartialEq)]
pub struct QMatMulOp {
    /// The product (shapes and the moves folded into its operands).
    pub product: MatMulOp,
    /// The operands' scales (finite, > 0).
    pub scales: [f32; 2],
    /// The integer kernel.
    pub kernel: QKernel,
}

impl Eq for QMatMulOp {}

impl Op for QMatMulOp {
    fn name(&self) -> StaticName {
        "QMatMul (referdino)".into()
    }
    fn info(&self) -> TractResult<Vec<String>> {
        let mut info = self.product.info()?;
        info.push(format!(
            "scales {} and {}, {} kernel",
            self.scales[0],
            self.scales[1],
            self.kernel.name()
        ));
        Ok(info)
    }
    op_as_typed_op!();
}

impl EvalOp for QMatMulOp {
    op_out_of_plan!();

    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(
            inputs.len() == 2,
            "QMatMul takes 2 inputs, got {}",
            inputs.len()
        );
        let s = &self.product.shapes;
        let mut scratch = recycle::scratch(ctx, scratch_len(s))?;
        let y = {
            let (la, lb) = self.product.layouts(inputs[0].shape(), inputs[1].shape())?;
            let (a, b) = (inputs[0].try_as_plain_ram()?, inputs[1].try_as_plain_ram()?);
            let (a, b) = (a.as_slice::<f32>()?, b.as_slice::<f32>()?);
            let mut sp = scratch.try_as_plain_ram_mut()?;
            let sc = sp.as_slice_mut::<f32>()?;
            let [sa, sb] = self.scales;
            f32_output(ctx, &self.product.output_shape(), |y| {
                qmatmul_strided(self.kernel, a, &la, sa, b, &lb, sb, s, sc, y)
            })?
        };
        recycle::give_back(ctx, scratch);
        recycle::recycle(ctx, inputs);
        Ok(tvec!(y))
    }
}

impl TypedOp for QMatMulOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.product.output_facts(inputs)
    }
    as_op!();
}

/// How one operand of a product reaches it from its fake quantize.
struct Operand {
    /// The fake quantize's scale.
    scale: f32,
    /// Where the product's operand chain starts: the fake quantize's input when nothing else reads
    /// the fake quantize (it is dropped), else its output (kept; the product quantizes values
    /// already on the grid again, which gives the same integers).
    source: OutletId,
    /// The moves between the fake quantize and the product, in order (`None`: the product's input
    /// as it is).
    moves: Option<Vec<(String, Box<dyn TypedOp>)>>,
}

/// Whether `node` only moves or reshapes its one input (what commutes with an element-wise pass).
fn is_move(node: &TypedNode) -> bool {
    node.inputs.len() == 1
        && (node.op_is::<AxisOp>() || node.op_is::<IntoShape>() || node.op_is::<TransposeOp>())
}

/// The fake quantize that operand `input` of product `id` comes from, through moves and reshapes
/// that each feed only the next one.
fn operand(model: &TypedModel, id: usize, input: OutletId) -> Option<Operand> {
    let mut chain = vec![];
    let (mut reader, mut at) = (id, input);
    loop {
        let node = model.node(at.node);
        if let Some(q) = node.op_as::<QuantizeU8Op>().filter(|q| q.fake) {
            chain.reverse();
            let dropped = sole_consumer(model, node.id) == Some(reader);
            return Some(if dropped {
                Operand {
                    scale: q.scale,
                    source: node.inputs[0],
                    moves: Some(chain),
                }
            } else {
                Operand {
                    scale: q.scale,
                    source: input,
                    moves: None,
                }
            });
        }
        if !is_move(node) || sole_consumer(model, node.id) != Some(reader) {
            return None;
        }
        chain.push((node.name.clone(), node.op.clone()));
        reader = node.id;
        at = node.inputs[0];
    }
}

/// Replaces each [`MatMulOp`] both of whose operands come from `FakeQuantU8` nodes, directly or
/// through moves and reshapes read by nothing else, with a [`QMatMulOp`] on `kernel` that
/// quantizes the operands itself: a fake quantize read only on the way to the product is dropped
/// (the moves then read its input; quantizing commutes with them), one read elsewhere too stays
/// (quantizing a value already on the grid gives the same integer). Run after
/// [`super::fold_moves_into_products`], whose moves the product keeps; returns how many products
/// were replaced.
pub fn int8_attention_products(model: &mut TypedModel, kernel: QKernel) -> TractResult<usize> {
    let mut done = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(product) = node.op_as::<MatMulOp>() else {
            continue;
        };
        // The same operand twice (a · a) would be rewired for one slot only.
        if node.inputs.len() != 2 || node.inputs[0] == node.inputs[1] {
            continue;
        }
        let (Some(a), Some(b)) = (
            operand(model, id, node.inputs[0]),
            operand(model, id, node.inputs[1]),
        ) else {
            continue;
        };
        let op = QMatMulOp {
            product: product.clone(),
            scales: [a.scale, b.scale],
            kernel,
        };
        let (name, inputs) = (node.name.clone(), node.inputs.clone());
        let mut patch = TypedModelPatch::default();
        let mut taps = tvec![];
        for (operand, input) in [a, b].into_iter().zip(inputs) {
            let mut wire = patch.tap_model(model, operand.source)?;
            match operand.moves {
                Some(moves) => {
                    for (name, op) in moves {
                        wire = patch.wire_node(name, op, &[wire])?[0];
                    }
                }
                None => debug_assert_eq!(operand.source, input),
            }
            taps.push(wire);
        }
        let y = patch.wire_node(name, op, &taps)?[0];
        patch.shunt_outside(model, OutletId::new(id, 0), y)?;
        patch.apply(model)?;
        done += 1;
    }
    // The dropped fake quantizes (and the moves they fed) are read by nothing now: no plan runs
    // them.
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::matmul::MatMulShapes;
    use crate::ops::test_values as values;

    fn f32s(t: &TValue) -> Vec<f32> {
        t.try_as_plain_ram()
            .unwrap()
            .as_slice::<f32>()
            .unwrap()
            .to_vec()
    }

    /// `a · bᵀ` with both operands fake-quantized (`b`'s transpose folded into the product, its
    /// fake quantize also a model output), and a product with one float operand (left alone).
    #[test]
    fn a_product_of_two_fake_quantized_operands_runs_on_integers() {
        let Some(kernel) = crate::ops::qlinear::fast_kernel() else {
            return; // no integer kernel on this CPU: the pass is not run
        };
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([2, 5, 8])).unwrap();
        let w = m.add_source("w", f32::fact([2, 6, 8])).unwrap();
        let fq = |scale| QuantizeU8Op { scale, fake: true };
        let a = m.wire_node("fq_a", fq(0.01), &[x]).unwrap()[0];
        let b = m.wire_node("fq_b", fq(0.02), &[w]).unwrap()[0];
        let shapes = MatMulShapes::new(&[2, 5, 8], &[2, 8, 6]).unwrap();
        let product = MatMulOp {
            shapes: shapes.clone(),
            moves: [None, Some((1, 2))],
        };
        let q = m.wire_node("q", product.clone(), &[a, b]).unwrap()[0];
        let float = m.wire_node("float", product.clone(), &[x, b]).unwrap()[0];
        m.select_output_outlets(&[q, float, b]).unwrap();
        let xs = values(80, 1);
        let ws = values(96, 2);
        let inputs = tvec![
            Tensor::from_shape(&[2, 5, 8], &xs).unwrap().into_tvalue(),
            Tensor::from_shape(&[2, 6, 8], &ws).unwrap().into_tvalue(),
        ];
        let run = |m: &TypedModel| {
            let plan = m.clone().into_runnable().unwrap();
            plan.run(inputs.clone()).unwrap()
        };
        let before = run(&m);
        assert_eq!(int8_attention_products(&mut m, kernel).unwrap(), 1);
        m.compact().unwrap();
        let node = |name: &str| m.nodes().iter().find(|n| n.name == name).unwrap();
        // `fq_a` (read by the product alone) is bypassed; `fq_b` (also an output) stays read.
        assert!(m.nodes().iter().all(|n| n.name != "fq_a"));
        assert!(node("q").op_is::<QMatMulOp>());
        assert_eq!(node("q").inputs[0].node, node("x").id);
        assert_eq!(node("q").inputs[1].node, node("fq_b").id);
        assert!(node("float").op_is::<MatMulOp>());
        let after = run(&m);
        // The integer product of the raw operands, read through the same transpose.
        let (la, lb) = product.layouts(&[2, 5, 8], &[2, 6, 8]).unwrap();
        let mut want = vec![0f32; 60];
        let mut scratch = vec![0f32; scratch_len(&shapes)];
        qmatmul_strided(
            kernel,
            &xs,
            &la,
            0.01,
            &ws,
            &lb,
            0.02,
            &shapes,
            &mut scratch,
            &mut want,
        )
        .unwrap();
        let got = f32s(&after[0]);
        assert!(got
            .iter()
            .zip(&want)
            .all(|(g, w)| g.to_bits() == w.to_bits()));
        // Against the float product it replaces: the f32 rounding of 8-term sums.
        let old = f32s(&before[0]);
        let worst = got
            .iter()
            .zip(&old)
            .fold(0f32, |m, (g, o)| m.max((g - o).abs()));
        assert!(worst < 1e-6, "{worst}");
        for i in [1, 2] {
            assert_eq!(f32s(&after[i]), f32s(&before[i]), "output {i} unchanged");
        }
    }
}
