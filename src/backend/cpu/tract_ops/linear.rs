//! ONNX `MatMul` by a constant weight matrix → [`LinearOp`] ([`mod@crate::ops::linear`]), with the bias
//! `Add` and `Relu` that follow it folded in ([`fuse_linear_epilogues`]); `MatMul` of two f32
//! activations with static shapes → [`MatMulOp`] ([`crate::ops::matmul`]).
//!
//! The builder takes every `MatMul`; when the graph is typed, a node whose right operand is a
//! constant 2-D f32 matrix and whose left operand is f32 with a static last axis becomes
//! [`LinearOp`], one of two f32 operands with static shapes [`MatMulOp`], any other one is wired as
//! tract's own `MatMul`. Only on x86-64 with AVX2 + FMA ([`mod@crate::ops::linear`] says why);
//! elsewhere tract's kernels (NEON assembly on a Jetson's cores) stay.

use super::{f32_output, recycle, QLinearOp};
use crate::ops::linear::{linear_strided, Epilogue, PackedWeights, Strides};
use crate::ops::matmul::{matmul, matmul_strided, Layout, MatMulShapes};
use crate::ops::qlinear::QPackedWeights;
use std::sync::Arc;
use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::ops::expandable::expand;
use tract_onnx::tract_hir::ops::matmul::MatMulInference;
use tract_onnx::tract_hir::tract_core::ops::array::Slice;
use tract_onnx::tract_hir::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_hir::tract_core::ops::change_axes::{AxisOp, IntoShape};
use tract_onnx::tract_hir::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_hir::tract_core::ops::math::{Add, Max};
use tract_onnx::tract_hir::tract_core::ops::nn::GeluExact;

/// Builds every ONNX `MatMul` node: ours or tract's is decided when the graph is typed.
pub(super) fn matmul_builder(
    _ctx: &ParsingContext,
    _node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    Ok((expand(LinearExpansion::default()), vec![]))
}

/// `MatMul` with tract's shape rules; wired as [`LinearOp`] where the right operand is a weight.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
struct LinearExpansion {
    tract: MatMulInference,
}

impl Expansion for LinearExpansion {
    fn name(&self) -> StaticName {
        "MatMul".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        self.tract.rules(s, inputs, outputs)
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        if let [a, b] = inputs {
            if let Some(weights) = weight_operand(model, *a, *b)? {
                let op = LinearOp {
                    weights: Arc::new(weights),
                    bias: None,
                    relu: false,
                    gelu: false,
                    input_move: None,
                };
                return model.wire_node(prefix, op, &[*a]);
            }
            if let Some(shapes) = activation_operands(model, *a, *b)? {
                let op = MatMulOp {
                    shapes,
                    moves: [None, None],
                };
                return model.wire_node(prefix, op, &[*a, *b]);
            }
        }
        self.tract.wire(prefix, model, inputs)
    }
}

/// The packed right operand when `a · b` can run as [`LinearOp`]: `b` a constant `[k, n]` f32
/// matrix, `a` f32 of rank ≥ 2 with last axis `k`.
fn weight_operand(
    model: &TypedModel,
    a: OutletId,
    b: OutletId,
) -> TractResult<Option<PackedWeights>> {
    let (fa, fb) = (model.outlet_fact(a)?, model.outlet_fact(b)?);
    let Some(w) = fb.konst.as_ref() else {
        return Ok(None);
    };
    if fa.datum_type != f32::datum_type() || w.datum_type() != f32::datum_type() {
        return Ok(None);
    }
    if w.rank() != 2 || fa.rank() < 2 {
        return Ok(None);
    }
    let (k, n) = (w.shape()[0], w.shape()[1]);
    if fa.shape[fa.rank() - 1].to_usize().ok() != Some(k) {
        return Ok(None);
    }
    let plain = w.try_as_plain_ram()?;
    let data = plain.as_slice::<f32>()?;
    Ok(Some(
        PackedWeights::pack(data, k, n).map_err(|e| anyhow!("{e}"))?,
    ))
}

/// The shapes of `a · b` when it can run as [`MatMulOp`]: both f32 with static shapes that multiply.
fn activation_operands(
    model: &TypedModel,
    a: OutletId,
    b: OutletId,
) -> TractResult<Option<MatMulShapes>> {
    let (fa, fb) = (model.outlet_fact(a)?, model.outlet_fact(b)?);
    if fa.datum_type != f32::datum_type() || fb.datum_type != f32::datum_type() {
        return Ok(None);
    }
    let (Some(sa), Some(sb)) = (fa.shape.as_concrete(), fb.shape.as_concrete()) else {
        return Ok(None);
    };
    Ok(MatMulShapes::new(sa, sb).ok())
}

/// Batched `a · b` of two activations (see [`crate::ops::matmul`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatMulOp {
    /// The operands' and output's shapes.
    pub shapes: MatMulShapes,
    /// Per operand, the `MoveAxis` (from, to) folded into it ([`fold_moves_into_products`]): the
    /// input is the tensor before the move, read through the moved view.
    pub moves: [Option<(usize, usize)>; 2],
}

impl Op for MatMulOp {
    fn name(&self) -> StaticName {
        "MatMul (referdino)".into()
    }
    fn info(&self) -> TractResult<Vec<String>> {
        let s = &self.shapes;
        let mut info = format!("batch {:?}, m: {}, k: {}, n: {}", s.batch, s.m, s.k, s.n);
        for (name, mv) in ["a", "b"].iter().zip(&self.moves) {
            if let Some((from, to)) = mv {
                info += &format!(", {name} moved {from} to {to}");
            }
        }
        Ok(vec![info])
    }
    op_as_typed_op!();
}

impl EvalOp for MatMulOp {
    op_out_of_plan!();

    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(
            inputs.len() == 2,
            "MatMul takes 2 inputs, got {}",
            inputs.len()
        );
        let s = &self.shapes;
        let mut shape: TVec<usize> = s.batch.iter().copied().collect();
        shape.push(s.m);
        shape.push(s.n);
        let mut scratch = recycle::scratch(ctx, s.scratch_len())?;
        let y = {
            let (a, b) = (inputs[0].try_as_plain_ram()?, inputs[1].try_as_plain_ram()?);
            let (a, b) = (a.as_slice::<f32>()?, b.as_slice::<f32>()?);
            let mut sp = scratch.try_as_plain_ram_mut()?;
            let sc = sp.as_slice_mut::<f32>()?;
            if self.moves == [None, None] {
                f32_output(ctx, &shape, |y| matmul(a, b, s, sc, y))?
            } else {
                let (la, lb) = self.layouts(inputs[0].shape(), inputs[1].shape())?;
                f32_output(ctx, &shape, |y| matmul_strided(a, &la, b, &lb, s, sc, y))?
            }
        };
        recycle::give_back(ctx, scratch);
        recycle::recycle(ctx, inputs);
        Ok(tvec!(y))
    }
}

impl MatMulOp {
    /// The output's shape.
    pub(super) fn output_shape(&self) -> TVec<usize> {
        let s = &self.shapes;
        let mut shape: TVec<usize> = s.batch.iter().copied().collect();
        shape.push(s.m);
        shape.push(s.n);
        shape
    }

    /// The operands' layouts for inputs of shapes `a` and `b` (their [`Self::moves`] applied).
    pub(super) fn layouts(&self, a: &[usize], b: &[usize]) -> TractResult<(Layout, Layout)> {
        let (s, rank) = (&self.shapes, self.shapes.batch.len());
        let la = match self.moves[0] {
            Some(mv) => moved_layout(a, mv, rank)?,
            None => s.a_layout(),
        };
        let lb = match self.moves[1] {
            Some(mv) => moved_layout(b, mv, rank)?,
            None => s.b_layout(),
        };
        Ok((la, lb))
    }
}

impl TypedOp for MatMulOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            inputs.len() == 2 && inputs.iter().all(|f| f.datum_type == f32::datum_type()),
            "MatMul takes two f32 inputs"
        );
        let s = &self.shapes;
        let mut shape: TVec<usize> = s.batch.iter().copied().collect();
        shape.push(s.m);
        shape.push(s.n);
        Ok(tvec!(f32::fact(shape)))
    }
    as_op!();
}

/// `y = x · W (+ b) (ReLU)` over the last axis of `x`, `W` packed once (see [`mod@crate::ops::linear`]).
#[derive(Debug, Clone, PartialEq)]
pub struct LinearOp {
    /// The packed `[k, n]` weight matrix.
    pub weights: Arc<PackedWeights>,
    /// Folded-in bias (`[n]`).
    pub bias: Option<Arc<Vec<f32>>>,
    /// Folded-in ReLU (after the bias).
    pub relu: bool,
    /// Folded-in exact GELU (after the bias).
    pub gelu: bool,
    /// The `MoveAxis` (from, to) folded into the input ([`fold_moves_into_products`]): the input is
    /// the tensor before the move, read through the moved view.
    pub input_move: Option<(usize, usize)>,
}

impl Eq for LinearOp {}

impl Op for LinearOp {
    fn name(&self) -> StaticName {
        "Linear (referdino)".into()
    }
    fn info(&self) -> TractResult<Vec<String>> {
        let mut info = format!(
            "k: {}, n: {}, bias: {}, relu: {}",
            self.weights.k(),
            self.weights.n(),
            self.bias.is_some(),
            self.relu
        );
        if self.gelu {
            info.push_str(", gelu: true");
        }
        if let Some((from, to)) = self.input_move {
            info += &format!(", input moved {from} to {to}");
        }
        Ok(vec![info])
    }
    op_as_typed_op!();
}

impl EvalOp for LinearOp {
    op_out_of_plan!();

    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(
            inputs.len() == 1,
            "Linear takes 1 input, got {}",
            inputs.len()
        );
        let x = &inputs[0];
        let (shape, strides) = view(x.shape(), self.input_move)?;
        ensure!(
            shape.last() == Some(&self.weights.k()),
            "Linear: input {shape:?} does not end in k = {}",
            self.weights.k()
        );
        let r = shape.len();
        let (m, row) = collapse(&shape[..r - 1], &strides[..r - 1]).ok_or_else(|| {
            anyhow!("Linear: the rows of {shape:?} (strides {strides:?}) are not one step apart")
        })?;
        let st = Strides {
            row,
            k: strides[r - 1],
        };
        let mut out_shape = shape.clone();
        *out_shape.last_mut().unwrap() = self.weights.n();
        let ep = Epilogue {
            bias: self.bias.as_deref().map(|b| b.as_slice()),
            row_bias: None,
            relu: self.relu,
            gelu: self.gelu,
        };
        let y = {
            let plain = x.try_as_plain_ram()?;
            let xs = plain.as_slice::<f32>()?;
            f32_output(ctx, &out_shape, |y| {
                linear_strided(xs, m, st, self.weights.panels(), ep, y)
            })?
        };
        recycle::recycle(ctx, inputs);
        Ok(tvec!(y))
    }
}

impl TypedOp for LinearOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            inputs.len() == 1 && inputs[0].datum_type == f32::datum_type() && inputs[0].rank() >= 1,
            "Linear takes one f32 input"
        );
        let mut shape = inputs[0].shape.to_tvec();
        if let Some((from, to)) = self.input_move {
            ensure!(from < shape.len() && to < shape.len(), "Linear: bad move");
            let d = shape.remove(from);
            shape.insert(to, d);
        }
        *shape.last_mut().unwrap() = self.weights.n().into();
        Ok(tvec!(f32::fact(shape)))
    }
    as_op!();
}

/// Folds into each [`LinearOp`] the bias `Add` (a constant that varies only along the last axis)
/// and then the `Relu` (`max(·, 0)`) or, with `gelu`, the `GeluExact` that consume its output
/// alone, as tract does for its own products. Runs on the typed, decluttered graph, before tract's
/// optimisation. Returns how many nodes were folded.
pub fn fuse_linear_epilogues(model: &mut TypedModel, gelu: bool) -> TractResult<usize> {
    let mut fused = 0;
    loop {
        let mut patch = None;
        for id in model.eval_order()? {
            let node = model.node(id);
            let (n, tail) = if let Some(op) = node.op_as::<LinearOp>() {
                (op.weights.n(), Tail::of(op.bias.clone(), op.relu, op.gelu))
            } else if let Some(op) = node
                .op_as::<QLinearOp>()
                .filter(|op| op.out_scale.is_none())
            {
                (op.weights.n(), Tail::of(op.bias.clone(), op.relu, op.gelu))
            } else {
                continue;
            };
            let Some(next) = sole_consumer(model, id) else {
                continue;
            };
            if let Some(new) = absorb(model, n, &tail, OutletId::new(id, 0), next, gelu)? {
                let op: Box<dyn TypedOp> = if let Some(op) = node.op_as::<LinearOp>() {
                    Box::new(LinearOp {
                        bias: new.bias,
                        relu: new.relu,
                        gelu: new.gelu,
                        ..op.clone()
                    })
                } else {
                    let op = node.op_as::<QLinearOp>().expect("matched above");
                    Box::new(QLinearOp {
                        bias: new.bias,
                        relu: new.relu,
                        gelu: new.gelu,
                        ..op.clone()
                    })
                };
                patch = Some((id, next, op));
                break;
            }
        }
        let Some((id, next, new)) = patch else {
            return Ok(fused);
        };
        let input = model.node(id).inputs[0];
        let mut p = TypedModelPatch::default();
        let tap = p.tap_model(model, input)?;
        let out = p.wire_node(&model.node(id).name, new, &[tap])?[0];
        p.shunt_outside(model, OutletId::new(next, 0), out)?;
        p.apply(model)?;
        fused += 1;
    }
}

/// What a linear layer ([`LinearOp`], [`QLinearOp`]) applies after its sums.
struct Tail {
    bias: Option<Arc<Vec<f32>>>,
    relu: bool,
    gelu: bool,
}

impl Tail {
    fn of(bias: Option<Arc<Vec<f32>>>, relu: bool, gelu: bool) -> Self {
        Tail { bias, relu, gelu }
    }
}

/// Splits a product ([`LinearOp`], or [`QLinearOp`] in INT8 engines) whose output is only
/// reshaped so that its last axis becomes `[g, …]`
/// and then only sliced along that `g` axis (Swin's `qkv` projection, `[…, 3C]` → `[…, 3, H, d]`
/// → q, k, v) into one product per slice, each computing only its slice's columns and reshaped to
/// the slice's shape: tract copied every slice out of the whole product (≈ 14 ms of the Swin-T
/// frame engine). Each output element is the same sum with the same weights as before, so the
/// values do not change. Runs on the optimised graph; returns how many products were split.
pub fn split_sliced_products(model: &mut TypedModel) -> TractResult<usize> {
    let mut split = 0;
    loop {
        let Some(SlicedProduct {
            linear: lin,
            slices,
            parts,
        }) = find_sliced_product(model)?
        else {
            return Ok(split);
        };
        let node = model.node(lin);
        let product = Product::of(node).expect("found as a product");
        let mut patch = TypedModelPatch::default();
        let x = patch.tap_model(model, node.inputs[0])?;
        let lin_shape = model.outlet_fact(OutletId::new(lin, 0))?.shape.to_tvec();
        let r = lin_shape.len();
        for (&slice, &(c0, c1)) in slices.iter().zip(&parts) {
            let name = format!("{}.cols{c0}..{c1}", model.node(lin).name);
            let part_op = product.columns(c0, c1)?;
            let y = patch.wire_node(&name, part_op, &[x])?[0];
            let cols = c1 - c0;
            let want = model.outlet_fact(OutletId::new(slice, 0))?.shape.to_tvec();
            let reshape = AxisOp::Reshape(r - 1, tvec![cols.into()], want[r - 1..].into());
            let y = patch.wire_node(format!("{name}.reshape"), reshape, &[y])?[0];
            patch.shunt_outside(model, OutletId::new(slice, 0), y)?;
        }
        patch.apply(model)?;
        split += 1;
    }
}

/// A product by a constant weight that [`split_sliced_products`] can split by columns.
enum Product<'a> {
    /// f32 weights.
    Float(&'a LinearOp),
    /// int8 weights with per-column scales.
    Int8(&'a QLinearOp),
}

impl<'a> Product<'a> {
    fn of(node: &'a TypedNode) -> Option<Self> {
        if let Some(op) = node.op_as::<LinearOp>() {
            Some(Product::Float(op))
        } else {
            node.op_as::<QLinearOp>().map(Product::Int8)
        }
    }

    /// Output columns.
    fn n(&self) -> usize {
        match self {
            Product::Float(op) => op.weights.n(),
            Product::Int8(op) => op.weights.n(),
        }
    }

    /// The same product restricted to output columns `c0..c1`: the same weights, scales, bias and
    /// activation for each of them, so each column's value is unchanged.
    fn columns(&self, c0: usize, c1: usize) -> TractResult<Box<dyn TypedOp>> {
        fn cut<T: Copy + Default>(w: &[T], n: usize, c0: usize, c1: usize) -> Vec<T> {
            let cols = c1 - c0;
            let mut part = vec![T::default(); w.len() / n.max(1) * cols];
            for (dst, src) in part.chunks_exact_mut(cols.max(1)).zip(w.chunks_exact(n)) {
                dst.copy_from_slice(&src[c0..c1]);
            }
            part
        }
        let (k, n, cols) = (self.k(), self.n(), c1 - c0);
        Ok(match self {
            Product::Float(op) => {
                let part = cut(&op.weights.unpack(), n, c0, c1);
                let weights = PackedWeights::pack(&part, k, cols).map_err(|e| anyhow!("{e}"))?;
                Box::new(LinearOp {
                    weights: Arc::new(weights),
                    bias: op.bias.as_ref().map(|b| Arc::new(b[c0..c1].to_vec())),
                    ..(*op).clone()
                })
            }
            Product::Int8(op) => {
                let part = cut(&op.weights.unpack(), n, c0, c1);
                let scales = &op.weights.scales()[c0..c1];
                let weights =
                    QPackedWeights::pack(&part, k, cols, scales).map_err(|e| anyhow!("{e}"))?;
                Box::new(QLinearOp {
                    weights: Arc::new(weights),
                    bias: op.bias.as_ref().map(|b| Arc::new(b[c0..c1].to_vec())),
                    ..(*op).clone()
                })
            }
        })
    }

    /// Input columns.
    fn k(&self) -> usize {
        match self {
            Product::Float(op) => op.weights.k(),
            Product::Int8(op) => op.weights.k(),
        }
    }
}

/// A product ([`LinearOp`], [`QLinearOp`]) that [`split_sliced_products`] splits.
struct SlicedProduct {
    /// The product's node.
    linear: usize,
    /// The slice nodes reading it.
    slices: Vec<usize>,
    /// The output columns `[c0, c1)` each slice reads.
    parts: Vec<(usize, usize)>,
}

/// The first [`SlicedProduct`] of `model`, if any.
fn find_sliced_product(model: &TypedModel) -> TractResult<Option<SlicedProduct>> {
    for id in model.eval_order()? {
        let Some(op) = Product::of(model.node(id)) else {
            continue;
        };
        let Some(reshape) = sole_consumer(model, id) else {
            continue;
        };
        let Some(into) = model.node(reshape).op_as::<IntoShape>() else {
            continue;
        };
        let lin_shape = model.outlet_fact(OutletId::new(id, 0))?.shape.to_tvec();
        let Some(lin_shape) = lin_shape
            .iter()
            .map(|d| d.to_usize().ok())
            .collect::<Option<TVec<usize>>>()
        else {
            continue;
        };
        let (r, n) = (lin_shape.len(), op.n());
        // The reshape keeps the leading axes and splits the last one into [g, …].
        let dims = &into.dims;
        if dims.len() <= r || dims[..r - 1] != lin_shape[..r - 1] || dims[r - 1] < 2 {
            continue;
        }
        let g = dims[r - 1];
        if dims[r - 1..].iter().product::<usize>() != n || !n.is_multiple_of(g) {
            continue;
        }
        let succ = &model.node(reshape).outputs[0].successors;
        if succ.is_empty() || model.output_outlets()?.contains(&OutletId::new(reshape, 0)) {
            continue;
        }
        let mut slices = Vec::new();
        let mut parts = Vec::new();
        for s in succ {
            let node = model.node(s.node);
            let Some(sl) = node.op_as::<Slice>() else {
                break;
            };
            let (Ok(a), Ok(b)) = (sl.start.to_usize(), sl.end.to_usize()) else {
                break;
            };
            if sl.axis != r - 1 || a >= b || b > g {
                break;
            }
            slices.push(s.node);
            parts.push((a * (n / g), b * (n / g)));
        }
        if slices.len() == succ.len() {
            return Ok(Some(SlicedProduct {
                linear: id,
                slices,
                parts,
            }));
        }
    }
    Ok(None)
}

/// The one node reading `id`'s output, unless it is also a model output or read elsewhere.
pub(super) fn sole_consumer(model: &TypedModel, id: usize) -> Option<usize> {
    let out = OutletId::new(id, 0);
    let succ = &model.node(id).outputs[0].successors;
    if succ.len() != 1 || model.output_outlets().ok()?.contains(&out) {
        return None;
    }
    Some(succ[0].node)
}

/// The tail of a linear layer of `n` columns (whose output is `lin`) with `next` folded in, when `next` is a bias `Add` (op has no bias,
/// ReLU or GELU yet), a ReLU (`max` with a constant 0) or, with `gelu`, an f32 `GeluExact` (op has
/// neither yet).
fn absorb(
    model: &TypedModel,
    n: usize,
    op: &Tail,
    lin: OutletId,
    next: usize,
    gelu: bool,
) -> TractResult<Option<Tail>> {
    let node = model.node(next);
    if let Some(ew) = node.op_as::<ElementWiseOp>() {
        let f32_out = ew.1.is_none_or(|dt| dt == f32::datum_type());
        if gelu && ew.0.is::<GeluExact>() && f32_out && !op.relu && !op.gelu {
            return Ok(Some(Tail::of(op.bias.clone(), op.relu, true)));
        }
        return Ok(None);
    }
    let Some(bin) = node.op_as::<TypedBinOp>() else {
        return Ok(None);
    };
    let [i0, i1] = node.inputs[..] else {
        return Ok(None);
    };
    let other = if i0 == lin { i1 } else { i0 };
    if other == lin {
        return Ok(None);
    }
    let Some(c) = model.outlet_fact(other)?.konst.clone() else {
        return Ok(None);
    };
    if c.datum_type() != f32::datum_type() {
        return Ok(None);
    }
    // The constant must broadcast along every axis but the last, and not widen the output.
    let lin_rank = model.outlet_fact(lin)?.rank();
    let cs = c.shape();
    if cs.len() > lin_rank || cs.iter().rev().skip(1).any(|&d| d != 1) {
        return Ok(None);
    }
    let last = cs.last().copied().unwrap_or(1);
    let plain = c.try_as_plain_ram()?;
    let vals = plain.as_slice::<f32>()?;
    if bin.0.is::<Add>() && op.bias.is_none() && !op.relu && !op.gelu && (last == n || last == 1) {
        let bias = if last == n {
            vals.to_vec()
        } else {
            vec![vals[0]; n]
        };
        return Ok(Some(Tail::of(Some(Arc::new(bias)), false, false)));
    }
    if bin.0.is::<Max>() && !op.relu && !op.gelu && vals.iter().all(|&v| v == 0.0) {
        return Ok(Some(Tail::of(op.bias.clone(), true, false)));
    }
    Ok(None)
}

/// The shape and element strides of a contiguous tensor of `shape` seen through `AxisOp::Move(from,
/// to)` (or as it is).
fn view(shape: &[usize], mv: Option<(usize, usize)>) -> TractResult<(TVec<usize>, TVec<usize>)> {
    let mut shape: TVec<usize> = shape.into();
    let mut strides: TVec<usize> = tvec![0; shape.len()];
    let mut step = 1;
    for (st, &d) in strides.iter_mut().zip(&shape).rev() {
        *st = step;
        step *= d;
    }
    if let Some((from, to)) = mv {
        ensure!(
            from < shape.len() && to < shape.len(),
            "moving axis {from} to {to} of {shape:?}"
        );
        let (d, st) = (shape.remove(from), strides.remove(from));
        shape.insert(to, d);
        strides.insert(to, st);
    }
    Ok((shape, strides))
}

/// `(m, step)` when the axes `dims` (with `strides`) enumerate `m` rows `step` apart, in order.
fn collapse(dims: &[usize], strides: &[usize]) -> Option<(usize, usize)> {
    let m = dims.iter().product::<usize>();
    let mut inner: Option<(usize, usize)> = None; // (dim, stride) of the next inner axis
    let mut step = 1;
    for (&d, &st) in dims.iter().zip(strides).rev() {
        if d == 1 {
            continue;
        }
        match inner {
            None => step = st,
            Some((id, ist)) if st == id * ist => {}
            Some(_) => return None,
        }
        inner = Some((d, st));
    }
    Some((m, step))
}

/// The [`Layout`] of a product operand that is a contiguous tensor of `shape` seen through
/// `AxisOp::Move(from, to)`, its leading axes right-aligned to `rank` batch axes.
fn moved_layout(shape: &[usize], mv: (usize, usize), rank: usize) -> TractResult<Layout> {
    let (shape, strides) = view(shape, Some(mv))?;
    let r = shape.len();
    ensure!(
        r >= 2 && r - 2 <= rank,
        "MatMul operand {shape:?} for {rank} batch axes"
    );
    let mut batch = vec![0; rank - (r - 2)];
    batch.extend_from_slice(&strides[..r - 2]);
    Ok(Layout {
        batch,
        row: strides[r - 2],
        col: strides[r - 1],
    })
}

/// Folds each `MoveAxis` whose readers are all our products ([`LinearOp`]'s input, either operand
/// of [`MatMulOp`]) into them: each then reads the tensor before the move through the moved view
/// instead of a moved copy (tract's own kernels read such transposes in place; ours now do too). A
/// linear layer's rows must stay one step apart (true of every move that keeps `k` innermost or
/// makes it the outer axis), and a left operand that must be gathered is folded only into a sole
/// reader. Runs on the optimised graph; returns how many moves were folded.
pub fn fold_moves_into_products(model: &mut TypedModel) -> TractResult<usize> {
    let mut folded = 0;
    let outputs: Vec<OutletId> = model.output_outlets()?.to_vec();
    for id in 0..model.nodes().len() {
        let node = model.node(id);
        let Some(&AxisOp::Move(from, to)) = node.op_as::<AxisOp>() else {
            continue;
        };
        let [source] = node.inputs[..] else {
            continue;
        };
        let readers = node.outputs[0].successors.clone();
        // (A product reading this node twice keeps the copy: rare, and one op per node here.)
        let twice = readers
            .iter()
            .enumerate()
            .any(|(i, a)| readers[..i].iter().any(|b| b.node == a.node));
        if readers.is_empty() || twice || outputs.contains(&OutletId::new(id, 0)) {
            continue;
        }
        let Some(shape) = model
            .outlet_fact(source)?
            .shape
            .as_concrete()
            .map(TVec::from)
        else {
            continue;
        };
        let (moved, strides) = view(&shape, Some((from, to)))?;
        let r = moved.len();
        let rows_ok = r >= 1 && collapse(&moved[..r - 1], &strides[..r - 1]).is_some();
        // A left operand whose `k` step is not 1 is gathered block by block by each product that
        // reads it: cheaper than tract's copy for one reader, dearer for several (the head
        // engine's `[256, 14400]` features read by three layers), which keep the copy.
        let gathers = r >= 1 && strides[r - 1] != 1;
        let left_ok = !gathers || readers.len() == 1;
        let mut new_ops: Vec<(InletId, Box<dyn TypedOp>)> = Vec::new();
        for inlet in &readers {
            let reader = model.node(inlet.node);
            let op: Box<dyn TypedOp> =
                match (reader.op_as::<LinearOp>(), reader.op_as::<MatMulOp>()) {
                    (Some(op), _) if rows_ok && left_ok && op.input_move.is_none() => {
                        Box::new(LinearOp {
                            input_move: Some((from, to)),
                            ..op.clone()
                        })
                    }
                    (_, Some(op))
                        if op.moves[inlet.slot].is_none() && (inlet.slot == 1 || left_ok) =>
                    {
                        let mut op = op.clone();
                        op.moves[inlet.slot] = Some((from, to));
                        Box::new(op)
                    }
                    _ => break,
                };
            new_ops.push((*inlet, op));
        }
        if new_ops.len() != readers.len() {
            continue;
        }
        for (inlet, op) in new_ops {
            model.node_mut(inlet.node).op = op;
            model.add_edge(source, inlet)?;
        }
        folded += 1;
    }
    Ok(folded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::test_values as values;

    /// `x [2, 5, 8]` → a product to 12 columns (`product`, reading `x` of `dt`) → reshape
    /// `[2, 5, 3, 2, 2]` → three slices along the `3` axis (one of them two wide), each a model
    /// output: the same bits before and after the split, which leaves no slice behind.
    fn check_split<P: TypedOp + Clone>(product: P, dt: DatumType, input: Tensor) {
        let (k, n) = (8, 12);
        let mut m = TypedModel::default();
        let x = m.add_source("x", dt.fact([2, 5, k])).unwrap();
        let y = m.wire_node("lin", product, &[x]).unwrap();
        let dims = tvec![3.into(), 2.into(), 2.into()];
        let r = m
            .wire_node("r", AxisOp::Reshape(2, tvec![n.into()], dims), &y)
            .unwrap();
        let mut outs = tvec![];
        for (i, (a, b)) in [(0, 1), (1, 3), (2, 3)].into_iter().enumerate() {
            let s = m
                .wire_node(format!("s{i}"), Slice::new(2, a, b), &r)
                .unwrap();
            outs.push(s[0]);
        }
        m.select_output_outlets(&outs).unwrap();
        let m = m.into_optimized().unwrap();
        let run = |m: TypedModel| {
            let plan = m.into_runnable().unwrap();
            plan.run(tvec!(input.clone().into_tvalue())).unwrap()
        };
        let want = run(m.clone());
        let mut split = m;
        assert_eq!(split_sliced_products(&mut split).unwrap(), 1);
        assert!(split.nodes().iter().all(|n| n.op_as::<Slice>().is_none()));
        let products = split.nodes().iter().filter(|n| n.op_is::<P>()).count();
        assert_eq!(products, 3);
        let got = run(split);
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.shape(), w.shape());
            let (gp, wp) = (g.try_as_plain_ram().unwrap(), w.try_as_plain_ram().unwrap());
            let (gs, ws) = (gp.as_slice::<f32>().unwrap(), wp.as_slice::<f32>().unwrap());
            assert!(gs.iter().zip(ws).all(|(a, b)| a.to_bits() == b.to_bits()));
            assert!(gs.iter().all(|v| v.is_finite()));
        }
    }

    #[test]
    fn a_product_read_only_through_slices_is_split_into_one_per_slice() {
        let (k, n) = (8, 12);
        let w = PackedWeights::pack(&values(k * n, 1), k, n).unwrap();
        let lin = LinearOp {
            weights: Arc::new(w),
            bias: Some(Arc::new(values(n, 2))),
            relu: false,
            gelu: false,
            input_move: None,
        };
        let input = Tensor::from_shape(&[2, 5, k], &values(2 * 5 * k, 3)).unwrap();
        check_split(lin, f32::datum_type(), input);
    }

    /// The same for an INT8 product (Swin's `qkv` in an INT8 engine): each part keeps its columns'
    /// int8 weights, scales and bias, and the activation.
    #[test]
    fn an_int8_product_read_only_through_slices_is_split_too() {
        let (k, n) = (8, 12);
        let wq: Vec<i8> = (0..k * n).map(|i| ((i * 37) % 255) as i8).collect();
        let scales: Vec<f32> = (0..n).map(|c| 0.01 + 0.001 * c as f32).collect();
        let lin = QLinearOp {
            weights: Arc::new(QPackedWeights::pack(&wq, k, n, &scales).unwrap()),
            x_scale: 0.02,
            bias: Some(Arc::new(values(n, 2))),
            relu: false,
            gelu: true,
            out_scale: None,
        };
        let xq: Vec<u8> = (0..2 * 5 * k).map(|i| ((i * 53 + 7) % 256) as u8).collect();
        let input = Tensor::from_shape(&[2, 5, k], &xq).unwrap();
        check_split(lin, u8::datum_type(), input);
    }
}
