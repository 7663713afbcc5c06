//! f32 `Add`, `Sub`, `Mul`, `Div` and `Iff` (ONNX `Where`) nodes that tract's optimisation leaves
//! on its generic broadcasting path → [`BroadcastAddOp`] (an `Add` into an input of the output's
//! shape), [`BroadcastBinOp`] or [`BroadcastSelectOp`]; the same four operations of two f32
//! tensors of one shape that tract runs as `OptBinUnicast` → [`UnicastOp`], and as `OptBinByScalar`
//! (one value per leading index) → [`ByScalarOp`]; and f32
//! `MultiBroadcastTo` → [`BroadcastToOp`] ([`crate::ops::broadcast`]); swapped in after the
//! optimisation (the op changes, the node and its inputs stay).

use super::{f32_output, recycle};
use crate::ops::broadcast::{
    add_broadcast_in_place, binary_broadcast, binary_broadcast_in_place, broadcast_shape,
    broadcast_to, broadcasts_into, select_broadcast, unicast_in_place, BinaryOp,
};
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::tract_core::ops::array::MultiBroadcastTo;
use tract_onnx::tract_hir::tract_core::ops::binary::{
    BinMiniOp, OptBinByScalar, OptBinUnicast, TypedBinOp,
};
use tract_onnx::tract_hir::tract_core::ops::logic::Iff;
use tract_onnx::tract_hir::tract_core::ops::math::{Add, Div, Mul, Sub};

/// Replaces every generic f32 `Add`, `Sub`, `Mul` and `Div` of an optimised model whose inputs
/// have static shapes of one rank: an `Add` with an input of the output's shape by
/// [`BroadcastAddOp`] (in place), the others by [`BroadcastBinOp`]; every `Iff` choosing
/// between such f32 inputs by [`BroadcastSelectOp`]; every such operation tract runs as
/// `OptBinUnicast` on two f32 inputs of one static shape by [`UnicastOp`], and as `OptBinByScalar`
/// on f32 inputs of static shapes by [`ByScalarOp`]; and every
/// `MultiBroadcastTo` of an f32 tensor of static shape by [`BroadcastToOp`]. Returns how many.
pub fn use_our_broadcast_add(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    for id in 0..model.nodes().len() {
        let node = model.node(id);
        if node.op_is::<MultiBroadcastTo>() {
            if let Some(op) = broadcast_to_op(model, node)? {
                model.node_mut(id).op = Box::new(op);
                replaced += 1;
            }
            continue;
        }
        if let Some(s) = node.op_as::<OptBinByScalar>() {
            if let Some(op) = binary_op(&*s.binop) {
                if by_scalar_f32(model, node)? {
                    model.node_mut(id).op = Box::new(ByScalarOp { op });
                    replaced += 1;
                }
            }
            continue;
        }
        if let Some(u) = node.op_as::<OptBinUnicast>() {
            if let Some(op) = binary_op(&*u.binop) {
                if same_f32_shapes(model, node)? {
                    model.node_mut(id).op = Box::new(UnicastOp { op });
                    replaced += 1;
                }
            }
            continue;
        }
        if node.op_is::<Iff>() {
            if selects_f32(model, node)? {
                let shape = out_shape(model, id)?;
                model.node_mut(id).op = Box::new(BroadcastSelectOp { shape });
                replaced += 1;
            }
            continue;
        }
        let Some(bin) = node.op_as::<TypedBinOp>() else {
            continue;
        };
        let Some(op) = binary_op(&*bin.0) else {
            continue;
        };
        if bin.1.is_some() || node.inputs.len() != 2 {
            continue;
        }
        let facts = [
            model.outlet_fact(node.inputs[0])?,
            model.outlet_fact(node.inputs[1])?,
        ];
        if facts.iter().any(|f| f.datum_type != f32::datum_type()) {
            continue;
        }
        let (Some(a), Some(b)) = (facts[0].shape.as_concrete(), facts[1].shape.as_concrete())
        else {
            continue;
        };
        if a.len() != b.len() {
            continue;
        }
        let full = (0..2).find(|&i| {
            let (f, o) = if i == 0 { (a, b) } else { (b, a) };
            broadcasts_into(o, f)
        });
        model.node_mut(id).op = match full {
            Some(full) if op == BinaryOp::Add => Box::new(BroadcastAddOp { full }),
            _ if broadcast_shape(&[a, b]).is_ok() => {
                let shape = out_shape(model, id)?;
                Box::new(BroadcastBinOp { op, shape })
            }
            _ => continue,
        };
        replaced += 1;
    }
    Ok(replaced)
}

/// `a + b` with one input (`full`) of the output's shape and the other broadcast into it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BroadcastAddOp {
    /// The input that has the output's shape (0 or 1); the sum is written into it.
    pub full: usize,
}

impl Op for BroadcastAddOp {
    fn name(&self) -> StaticName {
        "Add (referdino)".into()
    }
    op_as_typed_op!();
}

impl EvalOp for BroadcastAddOp {
    op_out_of_plan!();

    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(
            inputs.len() == 2,
            "Add takes 2 inputs, got {}",
            inputs.len()
        );
        let mut inputs = inputs.into_iter();
        let (first, second) = (inputs.next().unwrap(), inputs.next().unwrap());
        let (full, other) = if self.full == 0 {
            (first, second)
        } else {
            (second, first)
        };
        // A copy only when another op still reads the full input.
        let mut t = super::recycle::owned(ctx, full)?;
        let shape: TVec<usize> = t.shape().into();
        {
            let op = other.try_as_plain_ram()?;
            let mut plain = t.try_as_plain_ram_mut()?;
            add_broadcast_in_place(
                plain.as_slice_mut::<f32>()?,
                &shape,
                op.as_slice::<f32>()?,
                other.shape(),
            )
            .map_err(|e| anyhow!("{e}"))?;
        }
        super::recycle::recycle(ctx, tvec!(other));
        Ok(tvec!(t.into_tvalue()))
    }
}

impl TypedOp for BroadcastAddOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            inputs.len() == 2 && inputs.iter().all(|f| f.datum_type == f32::datum_type()),
            "Add takes two f32 inputs"
        );
        Ok(tvec!(f32::fact(inputs[self.full].shape.clone())))
    }
    as_op!();
}

/// The static output shape of node `id` (checked by the replacements: their inputs are static).
fn out_shape(model: &TypedModel, id: usize) -> TractResult<TVec<usize>> {
    let fact = model.outlet_fact(OutletId::new(id, 0))?;
    Ok(fact
        .shape
        .as_concrete()
        .context("a broadcast of static shapes has a static output")?
        .into())
}

/// `a ∘ b` with both inputs broadcast into the output ([`binary_broadcast`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BroadcastBinOp {
    /// The operation.
    pub op: BinaryOp,
    /// The output's shape, kept so that a run computes (and allocates) nothing to find it; the
    /// kernel checks it against the inputs'.
    pub shape: TVec<usize>,
}

impl Op for BroadcastBinOp {
    fn name(&self) -> StaticName {
        format!("{} (referdino)", self.op.name()).into()
    }
    op_as_typed_op!();
}

impl EvalOp for BroadcastBinOp {
    op_out_of_plan!();

    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(
            inputs.len() == 2,
            "{} takes 2 inputs, got {}",
            self.op.name(),
            inputs.len()
        );
        let y = {
            let (a, b) = (inputs[0].try_as_plain_ram()?, inputs[1].try_as_plain_ram()?);
            let (a, b) = (a.as_slice::<f32>()?, b.as_slice::<f32>()?);
            f32_output(ctx, &self.shape, |y| {
                binary_broadcast(self.op, a, inputs[0].shape(), b, inputs[1].shape(), y)
            })?
        };
        recycle::recycle(ctx, inputs);
        Ok(tvec!(y))
    }
}

impl TypedOp for BroadcastBinOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            inputs.len() == 2 && inputs.iter().all(|f| f.datum_type == f32::datum_type()),
            "{} takes two f32 inputs",
            self.op.name()
        );
        let (Some(a), Some(b)) = (inputs[0].shape.as_concrete(), inputs[1].shape.as_concrete())
        else {
            bail!("{} (referdino) needs static shapes", self.op.name());
        };
        let shape = broadcast_shape(&[a, b]).map_err(|e| anyhow!("{e}"))?;
        Ok(tvec!(f32::fact(shape)))
    }
    as_op!();
}

/// Whether an `Iff` node selects between f32 tensors by a bool condition, all of static shapes of
/// one rank.
fn selects_f32(model: &TypedModel, node: &TypedNode) -> TractResult<bool> {
    let [c, a, b] = node.inputs[..] else {
        return Ok(false);
    };
    let facts = [
        model.outlet_fact(c)?,
        model.outlet_fact(a)?,
        model.outlet_fact(b)?,
    ];
    let types = facts[0].datum_type == bool::datum_type()
        && facts[1..].iter().all(|f| f.datum_type == f32::datum_type());
    let rank = facts[0].rank();
    let shapes = facts
        .iter()
        .all(|f| f.rank() == rank && f.shape.as_concrete().is_some());
    Ok(types && shapes)
}

/// `cond ? a : b` with all three broadcast into the output ([`select_broadcast`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BroadcastSelectOp {
    /// The output's shape (as [`BroadcastBinOp::shape`]).
    pub shape: TVec<usize>,
}

impl Op for BroadcastSelectOp {
    fn name(&self) -> StaticName {
        "Iff (referdino)".into()
    }
    op_as_typed_op!();
}

impl EvalOp for BroadcastSelectOp {
    op_out_of_plan!();

    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(
            inputs.len() == 3,
            "Iff takes 3 inputs, got {}",
            inputs.len()
        );
        let y = {
            let plain: TVec<_> = inputs
                .iter()
                .map(|t| t.try_as_plain_ram())
                .collect::<TractResult<_>>()?;
            let c = plain[0].as_slice::<bool>()?;
            let (a, b) = (plain[1].as_slice::<f32>()?, plain[2].as_slice::<f32>()?);
            f32_output(ctx, &self.shape, |y| {
                select_broadcast(
                    c,
                    inputs[0].shape(),
                    a,
                    inputs[1].shape(),
                    b,
                    inputs[2].shape(),
                    y,
                )
            })?
        };
        recycle::recycle(ctx, inputs);
        Ok(tvec!(y))
    }
}

impl TypedOp for BroadcastSelectOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            inputs.len() == 3
                && inputs[0].datum_type == bool::datum_type()
                && inputs[1..]
                    .iter()
                    .all(|f| f.datum_type == f32::datum_type()),
            "Iff (referdino) selects between two f32 inputs by a bool one"
        );
        let shapes: TVec<&[usize]> = inputs
            .iter()
            .map(|f| {
                f.shape
                    .as_concrete()
                    .context("Iff (referdino) needs static shapes")
            })
            .collect::<TractResult<_>>()?;
        let shape = broadcast_shape(&shapes).map_err(|e| anyhow!("{e}"))?;
        Ok(tvec!(f32::fact(shape)))
    }
    as_op!();
}

/// [`BroadcastToOp`] for a `MultiBroadcastTo` node of an f32 input and output of static shapes.
fn broadcast_to_op(model: &TypedModel, node: &TypedNode) -> TractResult<Option<BroadcastToOp>> {
    let [x] = node.inputs[..] else {
        return Ok(None);
    };
    let (xf, of) = (
        model.outlet_fact(x)?,
        model.outlet_fact(OutletId::new(node.id, 0))?,
    );
    let f32s = xf.datum_type == f32::datum_type() && of.datum_type == f32::datum_type();
    let (Some(x_shape), Some(shape)) = (xf.shape.as_concrete(), of.shape.as_concrete()) else {
        return Ok(None);
    };
    if !f32s || x_shape.len() > shape.len() {
        return Ok(None);
    }
    // Numpy broadcasting right-aligns the input: leading axes of 1.
    let mut from: TVec<usize> = tvec![1; shape.len() - x_shape.len()];
    from.extend_from_slice(x_shape);
    if !broadcasts_into(&from, shape) {
        return Ok(None);
    }
    Ok(Some(BroadcastToOp {
        from,
        shape: shape.into(),
    }))
}

/// An f32 tensor repeated into a larger shape ([`broadcast_to`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BroadcastToOp {
    /// The input's shape, with leading axes of 1 up to the output's rank.
    pub from: TVec<usize>,
    /// The output's shape.
    pub shape: TVec<usize>,
}

impl Op for BroadcastToOp {
    fn name(&self) -> StaticName {
        "MultiBroadcastTo (referdino)".into()
    }
    op_as_typed_op!();
}

impl EvalOp for BroadcastToOp {
    op_out_of_plan!();

    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(
            inputs.len() == 1,
            "MultiBroadcastTo takes 1 input, got {}",
            inputs.len()
        );
        let y = {
            let x = inputs[0].try_as_plain_ram()?;
            let x = x.as_slice::<f32>()?;
            f32_output(ctx, &self.shape, |y| {
                broadcast_to(x, &self.from, &self.shape, y)
            })?
        };
        recycle::recycle(ctx, inputs);
        Ok(tvec!(y))
    }
}

impl TypedOp for BroadcastToOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            inputs.len() == 1 && inputs[0].datum_type == f32::datum_type(),
            "MultiBroadcastTo (referdino) takes one f32 input"
        );
        let n: usize = self.from.iter().product();
        ensure!(
            inputs[0]
                .shape
                .as_concrete()
                .map(|s| s.iter().product::<usize>())
                == Some(n),
            "MultiBroadcastTo (referdino): input {:?} for {:?}",
            inputs[0].shape,
            self.from
        );
        Ok(tvec!(f32::fact(&*self.shape)))
    }
    as_op!();
}

/// Our [`BinaryOp`] for tract's mini-op, if it is one of the four.
fn binary_op(op: &dyn BinMiniOp) -> Option<BinaryOp> {
    if op.is::<Add>() {
        Some(BinaryOp::Add)
    } else if op.is::<Sub>() {
        Some(BinaryOp::Sub)
    } else if op.is::<Mul>() {
        Some(BinaryOp::Mul)
    } else if op.is::<Div>() {
        Some(BinaryOp::Div)
    } else {
        None
    }
}

/// Whether a two-input node reads two f32 tensors of one static shape.
fn same_f32_shapes(model: &TypedModel, node: &TypedNode) -> TractResult<bool> {
    let [a, b] = node.inputs[..] else {
        return Ok(false);
    };
    let (a, b) = (model.outlet_fact(a)?, model.outlet_fact(b)?);
    Ok(a.datum_type == f32::datum_type()
        && b.datum_type == f32::datum_type()
        && a.shape.as_concrete().is_some()
        && a.shape == b.shape)
}

/// `a ∘ b` (`b` broadcast into `a`'s shape) into a pooled or new tensor: [`UnicastOp`] and
/// [`ByScalarOp`] when no input is theirs to write over.
fn into_new(ctx: &EvalContext, op: BinaryOp, a: &TValue, b: &TValue) -> TractResult<TValue> {
    let (pa, pb) = (a.try_as_plain_ram()?, b.try_as_plain_ram()?);
    let (sa, sb) = (pa.as_slice::<f32>()?, pb.as_slice::<f32>()?);
    f32_output(ctx, a.shape(), |y| {
        binary_broadcast(op, sa, a.shape(), sb, b.shape(), y)
    })
}

/// `a ∘ b` of two f32 tensors of one shape, written over whichever input no other node still reads
/// ([`unicast_in_place`]); when both are still read, into a pooled or new tensor.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UnicastOp {
    /// The operation.
    pub op: BinaryOp,
}

impl Op for UnicastOp {
    fn name(&self) -> StaticName {
        format!("{}Unicast (referdino)", self.op.name()).into()
    }
    op_as_typed_op!();
}

impl EvalOp for UnicastOp {
    op_out_of_plan!();

    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(
            inputs.len() == 2 && inputs[0].shape() == inputs[1].shape(),
            "{} (referdino) takes two inputs of one shape",
            self.op.name()
        );
        let mut it = inputs.into_iter();
        let (a, b) = (it.next().unwrap(), it.next().unwrap());
        let (acc, other, acc_is_left) = match (a.is_exclusive(), b.is_exclusive()) {
            (true, _) => (a, b, true),
            (false, true) => (b, a, false),
            (false, false) => return Ok(tvec!(into_new(ctx, self.op, &a, &b)?)),
        };
        let mut t = acc.into_tensor();
        {
            let o = other.try_as_plain_ram()?;
            let mut plain = t.try_as_plain_ram_mut()?;
            unicast_in_place(
                self.op,
                plain.as_slice_mut::<f32>()?,
                o.as_slice::<f32>()?,
                acc_is_left,
            )
            .map_err(|e| anyhow!("{e}"))?;
        }
        recycle::recycle(ctx, tvec!(other));
        Ok(tvec!(t.into_tvalue()))
    }
}

impl TypedOp for UnicastOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            inputs.len() == 2
                && inputs.iter().all(|f| f.datum_type == f32::datum_type())
                && inputs[0].shape == inputs[1].shape,
            "{} (referdino) takes two f32 inputs of one shape",
            self.op.name()
        );
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }
    as_op!();
}

/// Whether a two-input node reads an f32 tensor and a second f32 tensor broadcast into its shape
/// (same rank, static shapes).
fn by_scalar_f32(model: &TypedModel, node: &TypedNode) -> TractResult<bool> {
    let [a, b] = node.inputs[..] else {
        return Ok(false);
    };
    let (a, b) = (model.outlet_fact(a)?, model.outlet_fact(b)?);
    let (Some(sa), Some(sb)) = (a.shape.as_concrete(), b.shape.as_concrete()) else {
        return Ok(false);
    };
    Ok(a.datum_type == f32::datum_type()
        && b.datum_type == f32::datum_type()
        && broadcasts_into(sb, sa))
}

/// `a ∘ b` with `b` broadcast into `a`'s shape, written over `a` when no later node reads it
/// ([`binary_broadcast_in_place`]), otherwise into a pooled or new tensor.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ByScalarOp {
    /// The operation.
    pub op: BinaryOp,
}

impl Op for ByScalarOp {
    fn name(&self) -> StaticName {
        format!("{}ByScalar (referdino)", self.op.name()).into()
    }
    op_as_typed_op!();
}

impl EvalOp for ByScalarOp {
    op_out_of_plan!();

    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(
            inputs.len() == 2,
            "{} takes 2 inputs, got {}",
            self.op.name(),
            inputs.len()
        );
        let mut it = inputs.into_iter();
        let (a, b) = (it.next().unwrap(), it.next().unwrap());
        if !a.is_exclusive() {
            return Ok(tvec!(into_new(ctx, self.op, &a, &b)?));
        }
        let mut t = a.into_tensor();
        let shape: TVec<usize> = t.shape().into();
        {
            let pb = b.try_as_plain_ram()?;
            let mut plain = t.try_as_plain_ram_mut()?;
            binary_broadcast_in_place(
                self.op,
                plain.as_slice_mut::<f32>()?,
                &shape,
                pb.as_slice::<f32>()?,
                b.shape(),
            )
            .map_err(|e| anyhow!("{e}"))?;
        }
        recycle::recycle(ctx, tvec!(b));
        Ok(tvec!(t.into_tvalue()))
    }
}

impl TypedOp for ByScalarOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            inputs.len() == 2 && inputs.iter().all(|f| f.datum_type == f32::datum_type()),
            "{}ByScalar (referdino) takes two f32 inputs",
            self.op.name()
        );
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }
    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_hir::tract_core::ops::math;

    /// Element-wise operations of equal shapes whose operands are read elsewhere too (a model
    /// output, another operation), so that each computes over its first input, its second, or a
    /// new tensor, and two by one value per row: the bits of tract's own `OptBinUnicast` and
    /// `OptBinByScalar`.
    #[test]
    fn unicast_and_by_scalar_operations_give_the_bits_of_tracts_whichever_input_they_write_over() {
        let shape = [3usize, 50_000];
        let mut m = TypedModel::default();
        let src: Vec<OutletId> = ["x", "y", "z"]
            .iter()
            .map(|n| m.add_source(*n, f32::fact(shape)).unwrap())
            .collect();
        let sx = m.wire_node("sx", math::sin(), &[src[0]]).unwrap()[0];
        let sy = m.wire_node("sy", math::sin(), &[src[1]]).unwrap()[0];
        let sz = m.wire_node("sz", math::cos(), &[src[2]]).unwrap()[0];
        let u = m.wire_node("u", math::add(), &[sx, sy]).unwrap()[0];
        let v = m.wire_node("v", math::sub(), &[sy, sz]).unwrap()[0];
        let w = m.wire_node("w", math::div(), &[sy, sx]).unwrap()[0];
        let p = m.wire_node("p", math::mul(), &[u, v]).unwrap()[0];
        // One value per row: over a shared input (a new tensor) and over a free one (in place).
        let k = m.add_source("k", f32::fact([3, 1])).unwrap();
        let e = m.wire_node("e", math::sin(), &[src[2]]).unwrap()[0];
        let scaled = m.wire_node("scaled", math::mul(), &[sx, k]).unwrap()[0];
        let shifted = m.wire_node("shifted", math::sub(), &[e, k]).unwrap()[0];
        // `u` is an output too, so that tract does not fuse it with `p`; tract runs the division
        // as a product by a reciprocal.
        m.select_output_outlets(&[sx, u, p, w, scaled, shifted])
            .unwrap();
        let m = m.into_optimized().unwrap();
        let n: usize = shape.iter().product();
        let mut inputs: TVec<TValue> = (0..3)
            .map(|k| {
                let v: Vec<f32> = (0..n).map(|i| (i * (k + 3)) as f32 * 0.001 - 7.0).collect();
                Tensor::from_shape(&shape, &v).unwrap().into_tvalue()
            })
            .collect();
        inputs.push(tensor2(&[[0.75f32], [-2.5], [3.0]]).into_tvalue());
        let run = |m: TypedModel| m.into_runnable().unwrap().run(inputs.clone()).unwrap();
        let want = run(m.clone());
        let mut ours = m;
        let replaced = use_our_broadcast_add(&mut ours).unwrap();
        let count = |f: fn(&TypedNode) -> bool| ours.nodes().iter().filter(|n| f(n)).count();
        let unicasts = count(|n| n.op_is::<UnicastOp>());
        let by_scalar = count(|n| n.op_is::<ByScalarOp>());
        assert_eq!((replaced, unicasts, by_scalar), (6, 4, 2));
        let got = run(ours);
        for (g, w) in got.iter().zip(&want) {
            let (g, w) = (g.try_as_plain_ram().unwrap(), w.try_as_plain_ram().unwrap());
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(g.as_slice::<f32>().unwrap()),
                bits(w.as_slice::<f32>().unwrap())
            );
        }
    }
}
