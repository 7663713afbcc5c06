//! ONNX `LayerNormalization` → [`LayerNormOp`] ([`crate::ops::layer_norm`]) where it can.

use super::{recycle, TRACT_LAYER_NORM};
use crate::ops::layer_norm_in_place;
use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::ops::expandable::expand;
use tract_onnx::tract_hir::tract_core::ops::cast::cast;

/// ONNX `LayerNormalization` with only its first output used and f32 statistics (`stash_type` 1,
/// the default) becomes [`LayerNormOp`]; other nodes go to tract's builder.
pub(super) fn layer_norm_builder(
    ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let extra_outputs = node.output.iter().skip(1).any(|o| !o.is_empty());
    let stash: i64 = node.get_attr_opt("stash_type")?.unwrap_or(1);
    if extra_outputs || stash != 1 || !(2..=3).contains(&node.input.len()) {
        let theirs = TRACT_LAYER_NORM
            .get()
            .context("tract's LayerNormalization builder was not registered")?;
        return theirs(ctx, node);
    }
    let axis: i64 = node.get_attr_opt("axis")?.unwrap_or(-1);
    let epsilon: f32 = node.get_attr_opt("epsilon")?.unwrap_or(1e-5);
    Ok((
        expand(LayerNormExpansion {
            axis,
            epsilon_bits: epsilon.to_bits(),
            bias: node.input.len() == 3,
        }),
        vec![],
    ))
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct LayerNormExpansion {
    axis: i64,
    epsilon_bits: u32,
    bias: bool,
}

impl Expansion for LayerNormExpansion {
    fn name(&self) -> StaticName {
        "LayerNormalization".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 2 + self.bias as usize)?;
        check_output_arity(outputs, 1)?;
        s.equals(&inputs[0].datum_type, &inputs[1].datum_type)?;
        if self.bias {
            s.equals(&inputs[0].datum_type, &inputs[2].datum_type)?;
        }
        s.equals(&inputs[0].datum_type, &outputs[0].datum_type)?;
        s.equals(&inputs[0].shape, &outputs[0].shape)?;
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let fact = model.outlet_fact(inputs[0])?.clone();
        let rank = fact.rank() as i64;
        let axis = if self.axis < 0 {
            self.axis + rank
        } else {
            self.axis
        };
        ensure!(
            (0..rank).contains(&axis),
            "LayerNormalization axis {} of a rank-{rank} input",
            self.axis
        );
        let axis = axis as usize;
        let width = static_len(&fact.shape[axis..])
            .context("LayerNormalization needs static normalised dimensions")?;
        // Statistics in f32 as stash_type 1 asks: other input types are cast around the op.
        let dt = fact.datum_type;
        let mut wired = TVec::new();
        for (i, &input) in inputs.iter().enumerate() {
            let f = model.outlet_fact(input)?;
            if i > 0 {
                let len = static_len(&f.shape)
                    .context("LayerNormalization scale and bias need static shapes")?;
                ensure!(
                    len == width,
                    "LayerNormalization scale/bias of {len} elements for rows of {width}"
                );
            }
            wired.push(if f.datum_type == f32::datum_type() {
                input
            } else {
                model.wire_node(
                    format!("{prefix}.cast_in{i}"),
                    cast(f32::datum_type()),
                    &[input],
                )?[0]
            });
        }
        let y = model.wire_node(
            prefix,
            LayerNormOp {
                axis,
                epsilon_bits: self.epsilon_bits,
            },
            &wired,
        )?;
        if dt == f32::datum_type() {
            return Ok(y);
        }
        model.wire_node(format!("{prefix}.cast_out"), cast(dt), &y)
    }
}

/// Number of elements of static dimensions (an error for a symbolic one).
fn static_len(dims: &[TDim]) -> TractResult<usize> {
    dims.iter().map(|d| Ok(d.to_usize()?)).product()
}

/// Typed tract op running [`layer_norm_in_place`] over the axes from `axis` on (f32).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LayerNormOp {
    /// First normalised axis.
    pub axis: usize,
    /// ε's bits (an `f32` is not `Hash`).
    pub epsilon_bits: u32,
}

impl Op for LayerNormOp {
    fn name(&self) -> StaticName {
        "LayerNorm (referdino)".into()
    }
    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "axis: {}, epsilon: {}",
            self.axis,
            f32::from_bits(self.epsilon_bits)
        )])
    }
    op_as_typed_op!();
}

impl EvalOp for LayerNormOp {
    op_out_of_plan!();

    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(
            (2..=3).contains(&inputs.len()),
            "LayerNormalization takes 2 or 3 inputs, got {}",
            inputs.len()
        );
        let mut it = inputs.into_iter();
        let mut x = recycle::owned(ctx, it.next().unwrap())?;
        let (scale, bias) = (it.next().unwrap(), it.next());
        ensure!(
            self.axis < x.rank(),
            "LayerNormalization axis {} of a rank-{} tensor",
            self.axis,
            x.rank()
        );
        let width: usize = x.shape()[self.axis..].iter().product();
        {
            let scale = scale.try_as_plain_ram()?;
            let bias = bias.as_ref().map(|b| b.try_as_plain_ram()).transpose()?;
            let bias = bias.as_ref().map(|b| b.as_slice::<f32>()).transpose()?;
            let mut plain = x.try_as_plain_ram_mut()?;
            layer_norm_in_place(
                plain.as_slice_mut::<f32>()?,
                width,
                scale.as_slice::<f32>()?,
                bias,
                f32::from_bits(self.epsilon_bits),
            )?;
        }
        Ok(tvec!(x.into_tvalue()))
    }
}

impl TypedOp for LayerNormOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            inputs.iter().all(|f| f.datum_type == f32::datum_type()),
            "LayerNormalization runs on f32"
        );
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }
    as_op!();
}
