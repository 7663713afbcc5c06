//! ONNX `QLinear` and `QuantizeU8` (domain `referdino`, written by
//! [`crate::onnx::int8_products`]) → [`QLinearOp`] and [`QuantizeU8Op`]
//! ([`crate::ops::qlinear`]).

use super::{check_domain, f32_output, recycle};
use crate::ops::linear::Epilogue;
use crate::ops::qlinear::{
    fake_quantize_u8, qlinear, qlinear_quantized, quantize_u8, QPackedWeights,
};
use std::sync::Arc;
use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::ops::expandable::expand;
use tract_onnx::tract_hir::tract_core::ops::change_axes::{AxisOp, IntoShape};

/// Builds an ONNX `QLinear` node.
pub(super) fn qlinear_builder(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    check_domain(node)?;
    Ok((expand(QLinearExpansion), vec![]))
}

/// Builds an ONNX `QuantizeU8` node.
pub(super) fn quantize_u8_builder(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    check_domain(node)?;
    Ok((expand(QuantizeU8Expansion { fake: false }), vec![]))
}

/// Builds an ONNX `FakeQuantU8` node.
pub(super) fn fake_quantize_u8_builder(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    check_domain(node)?;
    Ok((expand(QuantizeU8Expansion { fake: true }), vec![]))
}

/// The scalar f32 of a constant input.
fn const_scalar(model: &TypedModel, o: OutletId, what: &str) -> TractResult<f32> {
    let t = model
        .outlet_fact(o)?
        .konst
        .clone()
        .with_context(|| format!("{what} must be a constant"))?;
    ensure!(
        t.len() == 1,
        "{what} must be one value, got {:?}",
        t.shape()
    );
    t.cast_to_scalar::<f32>()
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct QLinearExpansion;

impl Expansion for QLinearExpansion {
    fn name(&self) -> StaticName {
        "QLinear".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        if inputs.len() != 5 {
            check_input_arity(inputs, 4)?;
        }
        check_output_arity(outputs, 1)?;
        s.equals(&inputs[0].datum_type, u8::datum_type())?;
        s.equals(&inputs[1].datum_type, f32::datum_type())?;
        s.equals(&inputs[2].datum_type, i8::datum_type())?;
        s.equals(&inputs[3].datum_type, f32::datum_type())?;
        s.equals(&outputs[0].datum_type, f32::datum_type())?;
        s.equals(&inputs[2].rank, 2)?;
        s.equals(&inputs[0].rank, &outputs[0].rank)?;
        s.given(&inputs[0].rank, move |s, r| {
            ensure!(r >= 1, "QLinear: a scalar input");
            let r = r as usize;
            for i in 0..r - 1 {
                s.equals(&inputs[0].shape[i], &outputs[0].shape[i])?;
            }
            s.equals(&inputs[0].shape[r - 1], &inputs[2].shape[0])?;
            s.equals(&outputs[0].shape[r - 1], &inputs[2].shape[1])
        })?;
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let x_scale = const_scalar(model, inputs[1], "QLinear's input scale")?;
        let konst = |i: usize, what: &str| {
            model
                .outlet_fact(inputs[i])
                .ok()
                .and_then(|f| f.konst.clone())
                .with_context(|| format!("QLinear's {what} must be a constant"))
        };
        let wq = konst(2, "weight")?;
        let (k, n) = (wq.shape()[0], wq.shape()[1]);
        let scales = konst(3, "weight scales")?;
        let weights = QPackedWeights::pack(
            wq.try_as_plain_ram()?.as_slice::<i8>()?,
            k,
            n,
            scales.try_as_plain_ram()?.as_slice::<f32>()?,
        )
        .map_err(|e| anyhow!("{e}"))?;
        let bias = match inputs.get(4) {
            Some(_) => {
                let b = konst(4, "bias")?;
                let b = b.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
                ensure!(b.len() == n, "QLinear: bias of {} for {n} columns", b.len());
                Some(Arc::new(b))
            }
            None => None,
        };
        let op = QLinearOp {
            weights: Arc::new(weights),
            x_scale,
            bias,
            relu: false,
            gelu: false,
            out_scale: None,
        };
        model.wire_node(prefix, op, &[inputs[0]])
    }
}

/// `y = (x_q − 128) · W_q · (s_x · s_w) (+ b)` over the last axis of `x_q` (see
/// [`mod@crate::ops::qlinear`]).
#[derive(Debug, Clone, PartialEq)]
pub struct QLinearOp {
    /// The packed int8 weight and its column scales.
    pub weights: Arc<QPackedWeights>,
    /// The input's scale.
    pub x_scale: f32,
    /// Folded-in bias (`[n]`).
    pub bias: Option<Arc<Vec<f32>>>,
    /// Folded-in ReLU (after the bias; `super::fuse_linear_epilogues`).
    pub relu: bool,
    /// Folded-in exact GELU (after the bias).
    pub gelu: bool,
    /// Folded-in `QuantizeU8` of the output at this scale ([`fuse_output_quantization`]): the
    /// output is uint8.
    pub out_scale: Option<f32>,
}

impl Eq for QLinearOp {}

impl Op for QLinearOp {
    fn name(&self) -> StaticName {
        "QLinear (referdino)".into()
    }
    fn info(&self) -> TractResult<Vec<String>> {
        let mut info = format!(
            "k: {}, n: {}, bias: {}, relu: {}, gelu: {}",
            self.weights.k(),
            self.weights.n(),
            self.bias.is_some(),
            self.relu,
            self.gelu
        );
        if let Some(s) = self.out_scale {
            info += &format!(", uint8 out, scale: {s}");
        }
        Ok(vec![info])
    }
    op_as_typed_op!();
}

impl EvalOp for QLinearOp {
    op_out_of_plan!();

    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(
            inputs.len() == 1,
            "QLinear takes 1 input, got {}",
            inputs.len()
        );
        let x = &inputs[0];
        let shape = x.shape();
        ensure!(
            shape.last() == Some(&self.weights.k()),
            "QLinear: input {shape:?} does not end in k = {}",
            self.weights.k()
        );
        let m = shape[..shape.len() - 1].iter().product();
        let mut out_shape: TVec<usize> = shape.into();
        *out_shape.last_mut().expect("rank ≥ 1") = self.weights.n();
        let y = {
            let plain = x.try_as_plain_ram()?;
            let xq = plain.as_slice::<u8>()?;
            let ep = Epilogue {
                bias: self.bias.as_deref().map(Vec::as_slice),
                row_bias: None,
                relu: self.relu,
                gelu: self.gelu,
            };
            match self.out_scale {
                None => f32_output(ctx, &out_shape, |y| {
                    qlinear(xq, m, &self.weights, self.x_scale, ep, y)
                })?,
                Some(scale) => {
                    // SAFETY: `qlinear_quantized` writes every element (the output's length is
                    // checked there); on an error the tensor is dropped unread.
                    let mut q = unsafe { recycle::tensor_of::<u8>(ctx, &out_shape)? };
                    {
                        let mut plain_q = q.try_as_plain_ram_mut()?;
                        let yq = plain_q.as_slice_mut::<u8>()?;
                        qlinear_quantized(xq, m, &self.weights, self.x_scale, ep, scale, yq)
                            .map_err(|e| anyhow!("{e}"))?;
                    }
                    q.into_tvalue()
                }
            }
        };
        // The quantized activation, when this was its last reader, serves the next QuantizeU8.
        recycle::recycle(ctx, inputs);
        Ok(tvec!(y))
    }
}

impl TypedOp for QLinearOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            inputs.len() == 1 && inputs[0].datum_type == u8::datum_type() && inputs[0].rank() >= 1,
            "QLinear takes one u8 input"
        );
        let mut shape = inputs[0].shape.to_tvec();
        *shape.last_mut().expect("rank ≥ 1") = self.weights.n().into();
        Ok(tvec!(if self.out_scale.is_some() {
            u8::fact(shape)
        } else {
            f32::fact(shape)
        }))
    }
    as_op!();
}

/// Folds each `QuantizeU8` that is the only reader of an integer product's output into that
/// product ([`QLinearOp::out_scale`]): an MLP's hidden layer (product, ReLU or GELU, quantize,
/// product) then never exists in f32 in memory; each task quantizes its block while it is in cache
/// (`crate::ops::qlinear::qlinear_quantized`: the same bytes). Run after
/// [`super::fuse_linear_epilogues`] (the activation must be in the product first); returns how
/// many were folded.
pub fn fuse_output_quantization(model: &mut TypedModel) -> TractResult<usize> {
    rewrite_sole_reader_pairs(model, |producer, reader| {
        let q = reader.op_as::<QuantizeU8Op>().filter(|q| !q.fake)?;
        let lin = producer
            .op_as::<QLinearOp>()
            .filter(|l| l.out_scale.is_none())?;
        let op = QLinearOp {
            out_scale: Some(q.scale),
            ..lin.clone()
        };
        Some(vec![(
            producer.name.clone(),
            Box::new(op) as Box<dyn TypedOp>,
        )])
    })
}

/// Moves each `FakeQuantU8` above the transposes and reshapes (`AxisOp`, `IntoShape`) that are
/// its input's only readers: an element-wise pass commutes with them, and an INT8 engine's
/// attention operands (`Transpose` → Q → DQ → `MatMul`) then reach the product directly from the
/// move, which [`super::fold_moves_into_products`] folds into the product's read instead of a
/// copy. The values do not change. Run before it; returns how many moves were crossed.
pub fn fake_quantize_before_moves(model: &mut TypedModel) -> TractResult<usize> {
    rewrite_sole_reader_pairs(model, |mover, reader| {
        let q = reader.op_as::<QuantizeU8Op>().filter(|q| q.fake)?;
        let pure_move = mover.op_is::<AxisOp>() || mover.op_is::<IntoShape>();
        if !pure_move || mover.inputs.len() != 1 {
            return None;
        }
        Some(vec![
            (reader.name.clone(), Box::new(q.clone()) as Box<dyn TypedOp>),
            (mover.name.clone(), mover.op.clone()),
        ])
    })
}

/// Until none is left: for a node (`reader`) whose first input's producer it alone reads (and
/// which is no model output), `rewrite(producer, reader)` may give the chain of ops that replaces
/// the pair, wired in order from the producer's first input, the last one standing for the
/// reader's output. Returns how many pairs were replaced.
fn rewrite_sole_reader_pairs(
    model: &mut TypedModel,
    rewrite: impl Fn(&TypedNode, &TypedNode) -> Option<Vec<(String, Box<dyn TypedOp>)>>,
) -> TractResult<usize> {
    let mut done = 0;
    loop {
        let mut found = None;
        for id in model.eval_order()? {
            let node = model.node(id);
            let Some(&src) = node.inputs.first() else {
                continue;
            };
            if super::linear::sole_consumer(model, src.node) != Some(id) || src.slot != 0 {
                continue;
            }
            let producer = model.node(src.node);
            if let Some(chain) = rewrite(producer, node) {
                found = Some((producer.inputs[0], id, chain));
                break;
            }
        }
        let Some((input, reader, chain)) = found else {
            return Ok(done);
        };
        let mut p = TypedModelPatch::default();
        let mut wire = p.tap_model(model, input)?;
        for (name, op) in chain {
            wire = p.wire_node(name, op, &[wire])?[0];
        }
        p.shunt_outside(model, OutletId::new(reader, 0), wire)?;
        p.apply(model)?;
        done += 1;
    }
}

/// `QuantizeU8` (uint8 out) or, with `fake`, `FakeQuantU8` (f32 out).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct QuantizeU8Expansion {
    fake: bool,
}

impl Expansion for QuantizeU8Expansion {
    fn name(&self) -> StaticName {
        if self.fake {
            "FakeQuantU8".into()
        } else {
            "QuantizeU8".into()
        }
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 2)?;
        check_output_arity(outputs, 1)?;
        s.equals(&inputs[0].datum_type, f32::datum_type())?;
        s.equals(&inputs[1].datum_type, f32::datum_type())?;
        let out = if self.fake {
            f32::datum_type()
        } else {
            u8::datum_type()
        };
        s.equals(&outputs[0].datum_type, out)?;
        s.equals(&inputs[0].shape, &outputs[0].shape)?;
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let scale = const_scalar(model, inputs[1], "the quantization scale")?;
        ensure!(
            scale.is_finite() && scale > 0.0,
            "{}: scale {scale} is not finite and > 0",
            self.name()
        );
        let op = QuantizeU8Op {
            scale,
            fake: self.fake,
        };
        model.wire_node(prefix, op, &[inputs[0]])
    }
}

/// ONNX `QuantizeLinear` of an f32 tensor to uint8 with zero point 128 ([`quantize_u8`]), or with
/// `fake` that and `DequantizeLinear` back in one pass, f32 out, in place where the input is not
/// read elsewhere ([`fake_quantize_u8`]).
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizeU8Op {
    /// The scale (finite, > 0).
    pub scale: f32,
    /// Dequantize again (f32 out).
    pub fake: bool,
}

impl Eq for QuantizeU8Op {}

impl Op for QuantizeU8Op {
    fn name(&self) -> StaticName {
        if self.fake {
            "FakeQuantU8 (referdino)".into()
        } else {
            "QuantizeU8 (referdino)".into()
        }
    }
    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("scale: {}", self.scale)])
    }
    op_as_typed_op!();
}

impl EvalOp for QuantizeU8Op {
    op_out_of_plan!();

    fn eval(&self, ctx: &EvalContext, mut inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(
            inputs.len() == 1,
            "{} takes 1 input, got {}",
            self.name(),
            inputs.len()
        );
        if self.fake {
            let mut x = recycle::owned(ctx, inputs.remove(0))?;
            fake_quantize_u8(x.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?, self.scale)
                .map_err(|e| anyhow!("{e}"))?;
            return Ok(tvec!(x.into_tvalue()));
        }
        let x = &inputs[0];
        // SAFETY: `quantize_u8` writes every element (its output has the input's length, checked
        // there); on an error the tensor is dropped unread.
        let mut q = unsafe { recycle::tensor_of::<u8>(ctx, x.shape())? };
        quantize_u8(
            x.try_as_plain_ram()?.as_slice::<f32>()?,
            self.scale,
            q.try_as_plain_ram_mut()?.as_slice_mut::<u8>()?,
        )
        .map_err(|e| anyhow!("{e}"))?;
        recycle::recycle(ctx, inputs);
        Ok(tvec!(q.into_tvalue()))
    }
}

impl TypedOp for QuantizeU8Op {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            inputs.len() == 1 && inputs[0].datum_type == f32::datum_type(),
            "{} takes one f32 input",
            self.name()
        );
        let shape = inputs[0].shape.clone();
        Ok(tvec!(if self.fake {
            f32::fact(shape)
        } else {
            u8::fact(shape)
        }))
    }
    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_values as values;

    fn product(k: usize, n: usize, seed: usize, relu: bool) -> QLinearOp {
        let wq: Vec<i8> = (0..k * n)
            .map(|i| ((i * 37 + seed * 11) % 255) as i8)
            .collect();
        let scales: Vec<f32> = (0..n).map(|c| 0.004 + 0.0005 * c as f32).collect();
        QLinearOp {
            weights: Arc::new(QPackedWeights::pack(&wq, k, n, &scales).unwrap()),
            x_scale: 0.02,
            bias: Some(Arc::new(values(n, seed))),
            relu,
            gelu: false,
            out_scale: None,
        }
    }

    /// `x_q [2, 5, 8]` → product to 12 (ReLU) → quantize → product to 3 (an MLP), and beside it a
    /// product whose output is quantized and also a model output (left as it is): the quantize of
    /// the first is folded into its product, with the same output bits.
    #[test]
    fn a_quantize_read_only_after_a_product_is_folded_into_it() {
        let mut m = TypedModel::default();
        let x = m.add_source("x", u8::fact([2, 5, 8])).unwrap();
        let h = m.wire_node("fc1", product(8, 12, 1, true), &[x]).unwrap();
        let quantize = |fake| QuantizeU8Op { scale: 0.03, fake };
        let hq = m.wire_node("q1", quantize(false), &h).unwrap();
        let y = m.wire_node("fc2", product(12, 3, 2, false), &hq).unwrap();
        let side = m.wire_node("side", product(8, 4, 3, false), &[x]).unwrap();
        let sq = m.wire_node("q2", quantize(false), &side).unwrap();
        let s2 = m.wire_node("side2", product(4, 2, 4, false), &sq).unwrap();
        m.select_output_outlets(&[y[0], side[0], s2[0]]).unwrap();
        let xq: Vec<u8> = (0..80).map(|i| ((i * 53 + 7) % 256) as u8).collect();
        let input = Tensor::from_shape(&[2, 5, 8], &xq).unwrap();
        let run = |m: &TypedModel| {
            let plan = m.clone().into_runnable().unwrap();
            plan.run(tvec!(input.clone().into_tvalue())).unwrap()
        };
        let want = run(&m);
        assert_eq!(fuse_output_quantization(&mut m).unwrap(), 1);
        m.compact().unwrap();
        let quantizes = m
            .nodes()
            .iter()
            .filter(|n| n.op_is::<QuantizeU8Op>())
            .count();
        assert_eq!(quantizes, 1, "the side product's quantize stays");
        let fc1 = m.nodes().iter().find(|n| n.name == "fc1").unwrap();
        assert_eq!(fc1.op_as::<QLinearOp>().unwrap().out_scale, Some(0.03));
        let got = run(&m);
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.shape(), w.shape());
            let (gp, wp) = (g.try_as_plain_ram().unwrap(), w.try_as_plain_ram().unwrap());
            let (gs, ws) = (gp.as_slice::<f32>().unwrap(), wp.as_slice::<f32>().unwrap());
            assert!(gs.iter().zip(ws).all(|(a, b)| a.to_bits() == b.to_bits()));
            assert!(gs.iter().any(|v| *v != 0.0));
        }
    }

    /// `x [2, 3, 4]` → move → reshape → fake quantize (moved above both), and beside it a move read
    /// by a fake quantize and a model output (left as it is): the same bits either way.
    #[test]
    fn a_fake_quantize_moves_above_the_transposes_before_it() {
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([2, 3, 4])).unwrap();
        let t = m.wire_node("t", AxisOp::Move(1, 2), &[x]).unwrap();
        let r = m
            .wire_node(
                "r",
                AxisOp::Reshape(1, tvec![4.into(), 3.into()], tvec![12.into()]),
                &t,
            )
            .unwrap();
        let fq = |scale| QuantizeU8Op { scale, fake: true };
        let a = m.wire_node("fq_a", fq(0.01), &r).unwrap();
        let t2 = m.wire_node("t2", AxisOp::Move(0, 2), &[x]).unwrap();
        let b = m.wire_node("fq_b", fq(0.02), &t2).unwrap();
        m.select_output_outlets(&[a[0], b[0], t2[0]]).unwrap();
        let input = Tensor::from_shape(&[2, 3, 4], &values(24, 5)).unwrap();
        let run = |m: &TypedModel| {
            let plan = m.clone().into_runnable().unwrap();
            plan.run(tvec!(input.clone().into_tvalue())).unwrap()
        };
        let want = run(&m);
        assert_eq!(fake_quantize_before_moves(&mut m).unwrap(), 2);
        m.compact().unwrap();
        // fq_a now reads the source; fq_b still reads its move.
        let node = |name: &str| m.nodes().iter().find(|n| n.name == name).unwrap();
        assert_eq!(node("fq_a").inputs[0].node, node("x").id);
        assert_eq!(node("fq_b").inputs[0].node, node("t2").id);
        let got = run(&m);
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.shape(), w.shape());
            let (gp, wp) = (g.try_as_plain_ram().unwrap(), w.try_as_plain_ram().unwrap());
            let (gs, ws) = (gp.as_slice::<f32>().unwrap(), wp.as_slice::<f32>().unwrap());
            assert!(gs.iter().zip(ws).all(|(a, b)| a.to_bits() == b.to_bits()));
        }
    }
}
