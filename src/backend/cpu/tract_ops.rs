//! tract operators that run our kernels for the `referdino`-domain ONNX nodes, and for standard
//! `Softmax` nodes.
//!
//! Each `referdino`-domain ONNX node becomes an [`Expansion`] (shape inference at parse time) that
//! wires one typed op (`TypedOp` + `EvalOp`) calling [`crate::ops`]. tract keys its op register on
//! `op_type` alone, so the builders check the node's domain themselves. Softmax is swapped in after
//! tract has optimised the graph ([`use_our_softmax`]): tract's own stays what every optimisation
//! pass sees, and only the evaluation changes.

use crate::ops::{ms_deform_attn, query_prune, softmax_in_place, MsDeformDims};
use tract_onnx::model::{OnnxOpRegister, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::ops::expandable::expand;
use tract_onnx::tract_hir::tract_core::ops::nn::{Softmax, SoftmaxKind};

/// ONNX domain of our custom operators.
pub const DOMAIN: &str = "referdino";

/// Adds `MSDeformAttn` and `QueryPrune` to a tract ONNX op register.
pub fn register(reg: &mut OnnxOpRegister) {
    reg.insert("MSDeformAttn", ms_deform_attn_builder);
    reg.insert("QueryPrune", query_prune_builder);
}

fn check_domain(node: &NodeProto) -> TractResult<()> {
    if node.domain != DOMAIN {
        bail!(
            "node {:?}: op {} is only known in domain {DOMAIN:?}, not {:?}",
            node.name,
            node.op_type,
            node.domain
        );
    }
    Ok(())
}

fn ms_deform_attn_builder(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    check_domain(node)?;
    Ok((expand(MsDeformAttnExpansion), vec![]))
}

fn query_prune_builder(
    _ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    check_domain(node)?;
    let keep: i64 = node.get_attr("keep")?;
    if keep < 0 {
        bail!("node {:?}: QueryPrune keep = {keep} is negative", node.name);
    }
    Ok((
        expand(QueryPruneExpansion {
            keep: keep as usize,
        }),
        vec![],
    ))
}

// ---------------------------------------------------------------------------------------------
// MSDeformAttn

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct MsDeformAttnExpansion;

impl Expansion for MsDeformAttnExpansion {
    fn name(&self) -> StaticName {
        "MSDeformAttn".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 5)?;
        check_output_arity(outputs, 1)?;
        s.equals(&inputs[0].datum_type, f32::datum_type())?;
        s.equals(&inputs[1].datum_type, i64::datum_type())?;
        s.equals(&inputs[2].datum_type, i64::datum_type())?;
        s.equals(&inputs[3].datum_type, f32::datum_type())?;
        s.equals(&inputs[4].datum_type, f32::datum_type())?;
        s.equals(&outputs[0].datum_type, f32::datum_type())?;
        s.equals(&inputs[0].rank, 4)?;
        s.equals(&inputs[1].rank, 2)?;
        s.equals(&inputs[2].rank, 1)?;
        s.equals(&inputs[3].rank, 6)?;
        s.equals(&inputs[4].rank, 5)?;
        s.equals(&outputs[0].rank, 3)?;
        s.equals(&outputs[0].shape[0], &inputs[0].shape[0])?;
        s.equals(&outputs[0].shape[1], &inputs[3].shape[1])?;
        s.given_2(&inputs[0].shape[2], &inputs[0].shape[3], move |s, h, d| {
            s.equals(&outputs[0].shape[2], h * d)
        })?;
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, MsDeformAttnOp, inputs)
    }
}

/// Typed tract op running [`ms_deform_attn`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MsDeformAttnOp;

impl Op for MsDeformAttnOp {
    fn name(&self) -> StaticName {
        "MSDeformAttn".into()
    }
    op_as_typed_op!();
}

impl EvalOp for MsDeformAttnOp {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(
            inputs.len() == 5,
            "MSDeformAttn takes 5 inputs, got {}",
            inputs.len()
        );
        let (v, ss, lsi, loc, att) = (&inputs[0], &inputs[1], &inputs[2], &inputs[3], &inputs[4]);
        ensure!(
            v.rank() == 4
                && ss.rank() == 2
                && lsi.rank() == 1
                && loc.rank() == 6
                && att.rank() == 5,
            "MSDeformAttn: input ranks {:?} {:?} {:?} {:?} {:?}, expected 4, 2, 1, 6, 5",
            v.shape(),
            ss.shape(),
            lsi.shape(),
            loc.shape(),
            att.shape()
        );
        let dims = MsDeformDims::from_shapes(
            v.shape(),
            ss.shape(),
            lsi.shape(),
            loc.shape(),
            att.shape(),
        )?;
        let mut out =
            Tensor::zero::<f32>(&[dims.batch, dims.num_query, dims.heads * dims.head_dim])?;
        {
            let mut ov = out.try_as_plain_ram_mut()?;
            ms_deform_attn(
                v.try_as_plain_ram()?.as_slice::<f32>()?,
                ss.try_as_plain_ram()?.as_slice::<i64>()?,
                lsi.try_as_plain_ram()?.as_slice::<i64>()?,
                loc.try_as_plain_ram()?.as_slice::<f32>()?,
                att.try_as_plain_ram()?.as_slice::<f32>()?,
                dims,
                ov.as_slice_mut::<f32>()?,
            )?;
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for MsDeformAttnOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            inputs.len() == 5,
            "MSDeformAttn takes 5 inputs, got {}",
            inputs.len()
        );
        let v = &inputs[0].shape;
        let loc = &inputs[3].shape;
        ensure!(
            v.rank() == 4 && loc.rank() == 6,
            "MSDeformAttn: value rank 4 and locations rank 6"
        );
        let dims: TVec<TDim> = tvec![v[0].clone(), loc[1].clone(), v[2].clone() * v[3].clone()];
        Ok(tvec!(f32::fact(dims)))
    }
    as_op!();
}

// ---------------------------------------------------------------------------------------------
// QueryPrune

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct QueryPruneExpansion {
    keep: usize,
}

impl Expansion for QueryPruneExpansion {
    fn name(&self) -> StaticName {
        "QueryPrune".into()
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Ok(2)
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 2)?;
        check_output_arity(outputs, 2)?;
        s.equals(&inputs[0].datum_type, f32::datum_type())?;
        s.equals(&inputs[1].datum_type, f32::datum_type())?;
        s.equals(&outputs[0].datum_type, i64::datum_type())?;
        s.equals(&outputs[1].datum_type, f32::datum_type())?;
        s.equals(&inputs[0].rank, 3)?;
        s.equals(&inputs[1].rank, 3)?;
        s.equals(&outputs[0].rank, 2)?;
        s.equals(&outputs[1].rank, 2)?;
        s.equals(&outputs[0].shape[0], &inputs[0].shape[0])?;
        s.equals(&outputs[0].shape[1], self.keep.to_dim())?;
        s.equals(&outputs[1].shape[0], &inputs[0].shape[0])?;
        s.equals(&outputs[1].shape[1], &inputs[0].shape[1])?;
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, QueryPruneOp { keep: self.keep }, inputs)
    }
}

/// Typed tract op running [`query_prune`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QueryPruneOp {
    /// Number of queries kept.
    pub keep: usize,
}

impl Op for QueryPruneOp {
    fn name(&self) -> StaticName {
        "QueryPrune".into()
    }
    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("keep: {}", self.keep)])
    }
    op_as_typed_op!();
}

impl EvalOp for QueryPruneOp {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(
            inputs.len() == 2,
            "QueryPrune takes 2 inputs, got {}",
            inputs.len()
        );
        let (logits, attn) = (&inputs[0], &inputs[1]);
        let (ls, as_) = (logits.shape(), attn.shape());
        ensure!(
            ls.len() == 3
                && as_.len() == 3
                && as_[0] == ls[0]
                && as_[1] == ls[1]
                && as_[2] == ls[1],
            "QueryPrune: class_logits {:?} and self_attn {:?} must be [B,N,Lt] and [B,N,N]",
            ls,
            as_
        );
        let (b, n, lt) = (ls[0], ls[1], ls[2]);
        ensure!(
            (1..=n).contains(&self.keep),
            "QueryPrune: keep = {} but there are {n} queries",
            self.keep
        );
        let mut keep_idx = Tensor::zero::<i64>(&[b, self.keep])?;
        let mut gate = Tensor::zero::<f32>(&[b, n])?;
        {
            let mut kv = keep_idx.try_as_plain_ram_mut()?;
            let mut gv = gate.try_as_plain_ram_mut()?;
            query_prune(
                logits.try_as_plain_ram()?.as_slice::<f32>()?,
                attn.try_as_plain_ram()?.as_slice::<f32>()?,
                b,
                n,
                lt,
                self.keep,
                kv.as_slice_mut::<i64>()?,
                gv.as_slice_mut::<f32>()?,
            )?;
        }
        Ok(tvec!(keep_idx.into_tvalue(), gate.into_tvalue()))
    }
}

impl TypedOp for QueryPruneOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            inputs.len() == 2,
            "QueryPrune takes 2 inputs, got {}",
            inputs.len()
        );
        let l = &inputs[0].shape;
        ensure!(l.rank() == 3, "QueryPrune: class_logits must have rank 3");
        // Checked when the engine loads (N is static): otherwise each run would allocate the
        // `[B, keep]` output, gigabytes for a damaged `keep`, before the kernel refuses it.
        if let Ok(n) = l[1].to_usize() {
            ensure!(
                (1..=n).contains(&self.keep),
                "QueryPrune: keep = {} but there are {n} queries (1..={n})",
                self.keep
            );
        }
        Ok(tvec!(
            i64::fact([l[0].clone(), self.keep.to_dim()]),
            f32::fact([l[0].clone(), l[1].clone()])
        ))
    }
    as_op!();
}

// ---------------------------------------------------------------------------------------------
// Softmax

/// Replaces every single-axis f32 softmax of an optimised model by [`SoftmaxOp`] (same semantics;
/// [`crate::ops::softmax`] says why and how accurately). Returns how many were replaced; log-softmax,
/// quantized and multi-axis softmaxes keep tract's operator.
pub fn use_our_softmax(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in 0..model.nodes().len() {
        let node = model.node(id);
        let Some(sm) = node.op_as::<Softmax>() else {
            continue;
        };
        if sm.kind != SoftmaxKind::Softmax || sm.quant_output_dt.is_some() || sm.axes.len() != 1 {
            continue;
        }
        let axis = sm.axes[0];
        let [input] = node.inputs[..] else {
            continue;
        };
        let fact = model.outlet_fact(input)?;
        if fact.datum_type != f32::datum_type() || axis >= fact.rank() {
            continue;
        }
        model.node_mut(id).op = Box::new(SoftmaxOp { axis });
        replaced += 1;
    }
    Ok(replaced)
}

/// Typed tract op running [`softmax_in_place`] along one axis of an f32 tensor.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SoftmaxOp {
    /// The axis normalised over.
    pub axis: usize,
}

impl Op for SoftmaxOp {
    fn name(&self) -> StaticName {
        "Softmax (referdino)".into()
    }
    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("axis: {}", self.axis)])
    }
    op_as_typed_op!();
}

impl EvalOp for SoftmaxOp {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(
            inputs.len() == 1,
            "Softmax takes 1 input, got {}",
            inputs.len()
        );
        let mut t = inputs.into_iter().next().unwrap().into_tensor();
        let shape = t.shape();
        ensure!(
            self.axis < shape.len(),
            "Softmax axis {} of a rank-{} tensor",
            self.axis,
            shape.len()
        );
        let outer: usize = shape[..self.axis].iter().product();
        let n = shape[self.axis];
        let inner: usize = shape[self.axis + 1..].iter().product();
        {
            let mut plain = t.try_as_plain_ram_mut()?;
            softmax_in_place(plain.as_slice_mut::<f32>()?, outer, n, inner)?;
        }
        Ok(tvec!(t.into_tvalue()))
    }
}

impl TypedOp for SoftmaxOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            inputs.len() == 1 && inputs[0].datum_type == f32::datum_type(),
            "Softmax takes one f32 input"
        );
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }
    as_op!();
}
