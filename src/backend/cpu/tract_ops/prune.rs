//! ONNX `QueryPrune` (domain `referdino`) → [`QueryPruneOp`] ([`crate::ops::prune`]).

use super::check_domain;
use crate::ops::query_prune;
use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::ops::expandable::expand;

/// Builds an ONNX `QueryPrune` node (its `keep` attribute checked).
pub(super) fn query_prune_builder(
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
