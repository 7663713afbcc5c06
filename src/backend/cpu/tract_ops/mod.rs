//! tract operators that run our kernels for the `referdino`-domain ONNX nodes, and for standard
//! nodes where tract's own kernel is slow on our graphs.
//!
//! Each `referdino`-domain ONNX node becomes an [`Expansion`] (shape inference at parse time) that
//! wires one typed op (`TypedOp` + `EvalOp`) calling [`crate::ops`]. tract keys its op register on
//! `op_type` alone, so the builders check the node's domain themselves. Standard nodes come in at
//! three points: `LayerNormalization` and `MatMul` (by a weight: [`LinearOp`]) by our builders at
//! parse time; convolutions ([`use_our_conv`]) and the bias / ReLU after a linear layer
//! ([`fuse_linear_epilogues`]) on the typed, decluttered graph before tract's optimisation; softmax
//! ([`use_our_softmax`]) and broadcasting `Add` ([`use_our_broadcast_add`]) after it, where only the
//! evaluation changes.

mod broadcast;
mod conv;
mod linear;
mod recycle;
mod transpose;

pub use broadcast::{use_our_broadcast_add, BroadcastAddOp};
pub use conv::{use_our_conv, ConvOp};
pub use linear::{fold_moves_into_products, fuse_linear_epilogues, LinearOp, MatMulOp};
pub use recycle::{InstallPool, PoolStats, TensorPool, DEFAULT_CAP as DEFAULT_POOL_CAP};
pub use transpose::{use_our_transpose, TransposeOp};

use crate::ops::{
    layer_norm_in_place, ms_deform_attn, query_prune, softmax_in_place, MsDeformDims,
};
use tract_onnx::model::{OnnxOpRegister, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::ops::expandable::expand;
use tract_onnx::tract_hir::tract_core::ops::cast::cast;
use tract_onnx::tract_hir::tract_core::ops::nn::{Softmax, SoftmaxKind};

/// ONNX domain of our custom operators.
pub const DOMAIN: &str = "referdino";

/// Adds `MSDeformAttn` and `QueryPrune` to a tract ONNX op register, and puts our
/// `LayerNormalization` in place of tract's (which stays available to [`use_tract_layer_norm`]).
pub fn register(reg: &mut OnnxOpRegister) {
    reg.insert("MSDeformAttn", ms_deform_attn_builder);
    reg.insert("QueryPrune", query_prune_builder);
    if let Some(&theirs) = reg.0.get("LayerNormalization") {
        TRACT_LAYER_NORM.get_or_init(|| theirs);
    }
    reg.insert("LayerNormalization", layer_norm_builder);
    if crate::ops::linear::avx2_fma() {
        if let Some(&theirs) = reg.0.get("MatMul") {
            TRACT_MATMUL.get_or_init(|| theirs);
        }
        reg.insert("MatMul", linear::matmul_builder);
    }
}

/// Puts tract's own `MatMul` back into a register [`register`] filled (for before/after
/// measurements).
pub fn use_tract_matmul(reg: &mut OnnxOpRegister) {
    if let Some(&theirs) = TRACT_MATMUL.get() {
        reg.insert("MatMul", theirs);
    }
}

/// tract's own `MatMul` builder (see [`use_tract_matmul`]).
static TRACT_MATMUL: std::sync::OnceLock<Builder> = std::sync::OnceLock::new();

/// Puts tract's own `LayerNormalization` back into a register [`register`] filled (for before/after
/// measurements).
pub fn use_tract_layer_norm(reg: &mut OnnxOpRegister) {
    if let Some(&theirs) = TRACT_LAYER_NORM.get() {
        reg.insert("LayerNormalization", theirs);
    }
}

/// An f32 tensor of `shape` (pooled or new, see [`recycle`]) filled by `fill`, a kernel that writes
/// every element when it returns Ok (the output of [`LinearOp`], [`MatMulOp`], [`ConvOp`]).
fn f32_output(
    ctx: &EvalContext<'_>,
    shape: &[usize],
    fill: impl FnOnce(&mut [f32]) -> crate::error::Result<()>,
) -> TractResult<TValue> {
    // SAFETY: `fill` writes every element before returning Ok (its contract); on an error the
    // tensor is dropped unread.
    let mut y = unsafe { recycle::f32_tensor(ctx, shape)? };
    fill(y.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?).map_err(|e| anyhow!("{e}"))?;
    Ok(y.into_tvalue())
}

/// How tract-onnx builds an op from an ONNX node (the type of its register's entries).
type Builder = fn(&ParsingContext, &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)>;

/// tract's own `LayerNormalization` builder, for the nodes ours does not take.
static TRACT_LAYER_NORM: std::sync::OnceLock<Builder> = std::sync::OnceLock::new();

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

    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
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
        let shape = [dims.batch, dims.num_query, dims.heads * dims.head_dim];
        // SAFETY: zeroed right below, before anything reads it.
        let mut out = unsafe { recycle::f32_tensor(ctx, &shape)? };
        {
            let mut ov = out.try_as_plain_ram_mut()?;
            ov.as_slice_mut::<f32>()?.fill(0.0);
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
        recycle::recycle(ctx, inputs);
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

    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(
            inputs.len() == 1,
            "Softmax takes 1 input, got {}",
            inputs.len()
        );
        let mut t = recycle::owned(ctx, inputs.into_iter().next().unwrap())?;
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

// ---------------------------------------------------------------------------------------------
// LayerNormalization

/// ONNX `LayerNormalization` with only its first output used and f32 statistics (`stash_type` 1,
/// the default) becomes [`LayerNormOp`]; other nodes go to tract's builder.
fn layer_norm_builder(
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
