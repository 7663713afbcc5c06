//! Extra ordering constraints for a plan: where a tensor has several readers and one of them can
//! work in place (a reshape, tract's by-scalar arithmetic on its first input, our in-place adds,
//! softmax, layer norm, element-wise functions), that reader runs after the others.
//!
//! Why: tract hands a node an input exclusively only when no later node still reads it; otherwise
//! an op that would reuse the input's memory copies it first. The encoder's residual stream shows
//! it: each layer reshapes `[1, 4820, 256]` ↔ `[4820, 256]` tensors that a linear layer and an add
//! also read, and tract's order put the reshape first, so every such reshape copied 4.9 MB
//! (24 copies, ≈ 4 ms of the Swin-T frame engine). Ordered last, the reshape only relabels the
//! tensor. The constraints only reorder independent nodes: a reader that depends on the in-place
//! one (directly, or through a constraint already added) is never made its precursor, so the
//! order stays acyclic and the results are the same.

use super::{BroadcastAddOp, ByScalarOp, LayerNormOp, SoftmaxOp, UnaryOp, UnicastOp};
use tract_onnx::tract_hir::internal::*;
use tract_onnx::tract_hir::tract_core::ops::binary::{OptBinByScalar, OptBinChain, OptBinUnicast};
use tract_onnx::tract_hir::tract_core::ops::change_axes::IntoShape;

/// How much `node` gains from holding its input `slot` alone: `Some(0)` for a reshape (only a
/// copy can stand in for it), `Some(1)` for an op that computes in place over that input,
/// `Some(2)` for [`UnicastOp`] (it can compute over its other input instead); `None` when it
/// never reuses that input's memory.
fn in_place_rank(node: &TypedNode, slot: usize) -> Option<u8> {
    if node.op_is::<UnicastOp>() {
        return Some(2);
    }
    let first = slot == 0;
    // A reshape relabels an exclusive input; a move (transpose) copies whatever it gets.
    let reshape = node
        .op_as::<AxisOp>()
        .is_some_and(|a| !matches!(a, AxisOp::Move(..)));
    if first && (node.op_is::<IntoShape>() || reshape) {
        return Some(0);
    }
    let single = first
        && (node.op_is::<OptBinUnicast>()
            || node.op_is::<OptBinByScalar>()
            || node.op_is::<OptBinChain>()
            || node.op_is::<LayerNormOp>()
            || node.op_is::<SoftmaxOp>()
            || node.op_is::<UnaryOp>()
            || node.op_is::<ByScalarOp>());
    let add = node
        .op_as::<BroadcastAddOp>()
        .is_some_and(|o| o.full == slot);
    (single || add).then_some(1)
}

/// `(consumer, precursor)` pairs (tract's plan dependencies) that make one in-place reader of each
/// multiply-read tensor run after that tensor's other readers, where that keeps the order acyclic.
pub fn in_place_readers_last(model: &TypedModel) -> TractResult<Vec<(usize, usize)>> {
    let n = model.nodes().len();
    // Edges precursor → consumer added so far, to keep the reachability test exact.
    let mut extra: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut deps = Vec::new();
    let mut seen = vec![0u32; n];
    let mut stamp = 0u32;
    let mut stack = Vec::new();
    for node in model.nodes() {
        for out in &node.outputs {
            let readers = &out.successors;
            if readers.len() < 2 {
                continue;
            }
            let mut candidates: Vec<(u8, &InletId)> = readers
                .iter()
                .filter_map(|i| in_place_rank(model.node(i.node), i.slot).map(|k| (k, i)))
                .collect();
            candidates.sort_by_key(|&(k, _)| k);
            for (_, inlet) in candidates {
                let r = model.node(inlet.node);
                // A node reading the tensor twice never holds it alone.
                if readers.iter().filter(|o| o.node == r.id).count() > 1 {
                    continue;
                }
                // Every other reader must not depend on `r`.
                stamp += 1;
                stack.clear();
                stack.push(r.id);
                seen[r.id] = stamp;
                let mut blocked = false;
                while let Some(id) = stack.pop() {
                    if readers.iter().any(|o| o.node == id && id != r.id) {
                        blocked = true;
                        break;
                    }
                    let next = model
                        .node(id)
                        .outputs
                        .iter()
                        .flat_map(|o| o.successors.iter().map(|s| s.node));
                    for s in next.chain(extra[id].iter().copied()) {
                        if seen[s] != stamp {
                            seen[s] = stamp;
                            stack.push(s);
                        }
                    }
                }
                if blocked {
                    continue;
                }
                for o in readers.iter().filter(|o| o.node != r.id) {
                    if !deps.contains(&(r.id, o.node)) {
                        deps.push((r.id, o.node));
                        extra[o.node].push(r.id);
                    }
                }
                break;
            }
        }
    }
    Ok(deps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::tract_hir::tract_core::ops::math;
    use tract_onnx::tract_hir::tract_core::plan::SimplePlan;

    /// `t = x + x`, read by a reshape (in place) and by `t · x`; with `dependent`, the product also
    /// reads the reshape's output (through a reshape back), so it cannot run first.
    fn model(dependent: bool) -> (TypedModel, usize, usize) {
        let mut m = TypedModel::default();
        let x = m.add_source("x", f32::fact([2, 3])).unwrap();
        let t = m.wire_node("t", math::add(), &[x, x]).unwrap()[0];
        let r = m.wire_node("r", AxisOp::Add(0), &[t]).unwrap()[0];
        let other = if dependent {
            let back = m.wire_node("back", AxisOp::Rm(0), &[r]).unwrap()[0];
            m.wire_node("p", math::mul(), &[t, back]).unwrap()[0]
        } else {
            m.wire_node("p", math::mul(), &[t, x]).unwrap()[0]
        };
        m.select_output_outlets(&[r, other]).unwrap();
        (m, r.node, other.node)
    }

    #[test]
    fn the_in_place_reader_runs_last_with_the_same_results() {
        let (m, r, p) = model(false);
        let deps = in_place_readers_last(&m).unwrap();
        assert_eq!(deps, [(r, p)]);
        let x = Tensor::from_shape(&[2, 3], &[1.0f32, -2.0, 3.5, 0.25, 8.0, -1.0]).unwrap();
        let run = |deps: &[(usize, usize)]| {
            let outs = m.output_outlets().unwrap().to_vec();
            #[allow(deprecated)]
            let plan = SimplePlan::build_with_outputs_and_deps(
                m.clone(),
                &outs,
                deps,
                &Default::default(),
            )
            .unwrap();
            let order = plan.order_without_consts().to_vec();
            let pos = |n: usize| order.iter().position(|&o| o == n).unwrap();
            let out = std::sync::Arc::new(plan)
                .run(tvec!(x.clone().into_tvalue()))
                .unwrap();
            (pos(r) > pos(p), out)
        };
        let (last, ours) = run(&deps);
        assert!(last, "the reshape runs after the product");
        let (theirs_last, theirs) = run(&[]);
        // Without the constraint tract runs the reshape first (which made it copy): the case the
        // constraint exists for.
        assert!(!theirs_last);
        assert_eq!(ours, theirs);
    }

    #[test]
    fn a_reader_that_depends_on_the_in_place_one_is_not_made_to_run_first() {
        let (m, _, _) = model(true);
        assert!(in_place_readers_last(&m).unwrap().is_empty());
    }
}
