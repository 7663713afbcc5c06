//! tract's f32 `Concat` and `Slice` of static shapes → [`ConcatRangesOp`]
//! ([`crate::ops::concat`]). A `Concat` reads the tensors its sliced inputs were cut from directly
//! (where the concatenation is the slice's only reader), so Swin's cyclic shift, two slices joined
//! in the other order, becomes one copy; the remaining slices become one-piece ops. Runs on the
//! optimised graph; the slices a concatenation no longer reads are left unread (compacted away
//! before planning).

use super::{f32_output, recycle};
use crate::ops::concat::{concat_ranges, Piece};
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::tract_core::ops::array::{Slice, TypedConcat};

/// Replaces every eligible `Concat` (reading through its sliced inputs) and then every remaining
/// eligible `Slice`; returns how many nodes.
pub fn use_our_concat_and_slice(model: &mut TypedModel) -> TractResult<usize> {
    let mut replaced = 0;
    let n = model.nodes().len();
    for id in 0..n {
        let Some(concat) = model.node(id).op_as::<TypedConcat>() else {
            continue;
        };
        let axis = concat.axis;
        let Some((sources, pieces)) = concat_pieces(model, id, axis)? else {
            continue;
        };
        let shape: TVec<usize> = match model.outlet_fact(OutletId::new(id, 0))?.shape.as_concrete()
        {
            Some(s) => s.into(),
            None => continue,
        };
        let node = model.node(id);
        let name = node.name.clone();
        let mut p = TypedModelPatch::default();
        let taps: TVec<OutletId> = sources
            .iter()
            .map(|&o| p.tap_model(model, o))
            .collect::<TractResult<_>>()?;
        let op = ConcatRangesOp {
            axis,
            pieces,
            shape,
        };
        let out = p.wire_node(name, op, &taps)?[0];
        p.shunt_outside(model, OutletId::new(id, 0), out)?;
        p.apply(model)?;
        replaced += 1;
    }
    for id in 0..model.nodes().len() {
        let node = model.node(id);
        let Some(slice) = node.op_as::<Slice>() else {
            continue;
        };
        let (Some(start), Some(end)) = (slice.start.as_usize(), slice.end.as_usize()) else {
            continue;
        };
        let [x] = node.inputs[..] else {
            continue;
        };
        let fact = model.outlet_fact(OutletId::new(id, 0))?;
        let f32s = fact.datum_type == f32::datum_type()
            && model.outlet_fact(x)?.shape.as_concrete().is_some();
        let Some(shape) = fact.shape.as_concrete().filter(|_| f32s) else {
            continue;
        };
        let op = ConcatRangesOp {
            axis: slice.axis,
            pieces: vec![Piece {
                source: 0,
                start,
                end,
            }],
            shape: shape.into(),
        };
        model.node_mut(id).op = Box::new(op);
        replaced += 1;
    }
    Ok(replaced)
}

/// The sources and pieces of a `Concat` node along `axis`, reading a sliced input's source where
/// the concatenation is that slice's only reader; `None` unless everything is f32 of static shape.
#[allow(clippy::type_complexity)]
fn concat_pieces(
    model: &TypedModel,
    id: usize,
    axis: usize,
) -> TractResult<Option<(TVec<OutletId>, Vec<Piece>)>> {
    let node = model.node(id);
    let (mut sources, mut pieces): (TVec<OutletId>, Vec<Piece>) = (tvec![], vec![]);
    for &input in &node.inputs {
        let fact = model.outlet_fact(input)?;
        let Some(shape) = fact.shape.as_concrete() else {
            return Ok(None);
        };
        if fact.datum_type != f32::datum_type() || axis >= shape.len() {
            return Ok(None);
        }
        let producer = model.node(input.node);
        let sliced = producer.op_as::<Slice>().and_then(|s| {
            let only_reader = producer.outputs[0].successors.len() == 1;
            let range = s.start.as_usize().zip(s.end.as_usize());
            range.filter(|_| only_reader && s.axis == axis)
        });
        let (source, start, end) = match sliced {
            Some((start, end)) => (producer.inputs[0], start, end),
            None => (input, 0, shape[axis]),
        };
        if model.outlet_fact(source)?.shape.as_concrete().is_none() {
            return Ok(None);
        }
        let k = match sources.iter().position(|&s| s == source) {
            Some(k) => k,
            None => {
                sources.push(source);
                sources.len() - 1
            }
        };
        pieces.push(Piece {
            source: k,
            start,
            end,
        });
    }
    Ok(Some((sources, pieces)))
}

/// Pieces of its inputs along one axis, one after the other ([`concat_ranges`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConcatRangesOp {
    /// The axis.
    pub axis: usize,
    /// What goes into the output along it, in order.
    pub pieces: Vec<Piece>,
    /// The output's shape.
    pub shape: TVec<usize>,
}

impl Op for ConcatRangesOp {
    fn name(&self) -> StaticName {
        if self.pieces.len() == 1 {
            "Slice (referdino)".into()
        } else {
            "Concat (referdino)".into()
        }
    }
    fn info(&self) -> TractResult<Vec<String>> {
        let ranges: Vec<String> = self
            .pieces
            .iter()
            .map(|p| format!("{}[{}..{}]", p.source, p.start, p.end))
            .collect();
        Ok(vec![format!("axis {}: {}", self.axis, ranges.join(" "))])
    }
    op_as_typed_op!();
}

impl EvalOp for ConcatRangesOp {
    op_out_of_plan!();

    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let plain: TVec<_> = inputs
            .iter()
            .map(|t| t.try_as_plain_ram())
            .collect::<TractResult<_>>()?;
        let sources: TVec<(&[f32], &[usize])> = plain
            .iter()
            .zip(&inputs)
            .map(|(p, t)| Ok((p.as_slice::<f32>()?, t.shape())))
            .collect::<TractResult<_>>()?;
        let y = f32_output(ctx, &self.shape, |y| {
            concat_ranges(&sources, &self.pieces, self.axis, &self.shape, y)
        })?;
        drop(sources);
        drop(plain);
        recycle::recycle(ctx, inputs);
        Ok(tvec!(y))
    }
}

impl TypedOp for ConcatRangesOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            inputs.iter().all(|f| f.datum_type == f32::datum_type()),
            "{} takes f32 inputs",
            self.name()
        );
        Ok(tvec!(f32::fact(&*self.shape)))
    }
    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Swin's roll by 3 along one axis (two slices of one tensor joined the other way round), a
    /// plain concatenation and a slice read by two nodes: the bits of tract's own ops, the roll
    /// read straight from its source.
    #[test]
    fn slices_and_concatenations_give_the_bits_of_tracts() {
        let shape = [1usize, 9, 11, 4];
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact(shape)).unwrap();
        let y = m.add_source("y", f32::fact([1, 2, 11, 4])).unwrap();
        let slice = |m: &mut TypedModel, name: &str, axis: usize, s: usize, e: usize, of| {
            let op = Slice::new(axis, s.to_dim(), e.to_dim());
            m.wire_node(name, op, &[of]).unwrap()[0]
        };
        let tail = slice(&mut m, "tail", 1, 3, 9, x);
        let head = slice(&mut m, "head", 1, 0, 3, x);
        let roll = m
            .wire_node("roll", TypedConcat::new(1), &[tail, head])
            .unwrap()[0];
        let cat = m.wire_node("cat", TypedConcat::new(1), &[roll, y]).unwrap()[0];
        // A slice read twice stays a slice of its own.
        let cut = slice(&mut m, "cut", 2, 2, 7, x);
        let twice = m
            .wire_node("twice", TypedConcat::new(3), &[cut, cut])
            .unwrap()[0];
        m.select_output_outlets(&[roll, cat, twice]).unwrap();
        let inputs = tvec![
            Tensor::from_shape(&shape, &(0..396).map(|i| i as f32).collect::<Vec<_>>())
                .unwrap()
                .into_tvalue(),
            Tensor::from_shape(
                &[1, 2, 11, 4],
                &(0..88).map(|i| -(i as f32)).collect::<Vec<_>>()
            )
            .unwrap()
            .into_tvalue(),
        ];
        let run = |m: TypedModel| m.into_runnable().unwrap().run(inputs.clone()).unwrap();
        let want = run(m.clone());
        let mut ours = m;
        // Three concatenations and the slice read twice.
        assert_eq!(use_our_concat_and_slice(&mut ours).unwrap(), 4);
        ours.compact().unwrap();
        let rolled = ours
            .nodes()
            .iter()
            .find_map(|n| {
                n.op_as::<ConcatRangesOp>()
                    .filter(|o| o.pieces.len() == 2 && n.inputs.len() == 1)
            })
            .cloned();
        let p = |source, start, end| Piece { source, start, end };
        assert_eq!(rolled.map(|o| o.pieces), Some(vec![p(0, 3, 9), p(0, 0, 3)]));
        assert!(ours
            .nodes()
            .iter()
            .all(|n| !n.op_is::<Slice>() && !n.op_is::<TypedConcat>()));
        let got = run(ours);
        assert_eq!(got, want);
    }
}
