//! ONNX `QLinear` and `QuantizeU8` (domain `referdino`, written by
//! [`crate::onnx::int8_products`]) → [`QLinearOp`] and [`QuantizeU8Op`]
//! ([`crate::ops::qlinear`]).

use super::{check_domain, f32_output, recycle};
use crate::ops::linear::Epilogue;
use crate::ops::qlinear::{fake_quantize_u8, qlinear, quantize_u8, QPackedWeights};
use std::sync::Arc;
use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::ops::expandable::expand;

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
}

impl Eq for QLinearOp {}

impl Op for QLinearOp {
    fn name(&self) -> StaticName {
        "QLinear (referdino)".into()
    }
    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "k: {}, n: {}, bias: {}, relu: {}, gelu: {}",
            self.weights.k(),
            self.weights.n(),
            self.bias.is_some(),
            self.relu,
            self.gelu
        )])
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
            f32_output(ctx, &out_shape, |y| {
                qlinear(xq, m, &self.weights, self.x_scale, ep, y)
            })?
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
        Ok(tvec!(f32::fact(shape)))
    }
    as_op!();
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
