//! Our custom ops (`referdino::MSDeformAttn`, `referdino::QueryPrune`) as ONNX Runtime custom
//! operators running the same CPU kernels as the tract backend ([`crate::ops`]), so ONNX Runtime loads
//! the native export as it is: no decomposition into `GridSample` (which costs most of a frame) and the
//! same numbers as the tract backend for these two ops.
//!
//! The op contracts (inputs, shapes, attributes) are the ones the graph builder emits: docs/model.md
//! (Multi-scale deformable attention; Decoder with confidence-aware pruning). The deformable attention
//! spreads its rows over ONNX Runtime's own intra-op threads, so a thread budget still holds and no
//! second pool competes with them.

use ort::operator::{
    BoxedKernel, ComputeContext, KernelContext, Operator, OperatorDomain, OperatorInput,
    OperatorOutput,
};
use ort::value::TensorElementType;

use crate::onnx::builder::CUSTOM_DOMAIN;
use crate::ops::msdeform::{ms_deform_attn_on, MsDeformDims, ParallelFor};
use crate::ops::prune::query_prune;

fn fail(op: &str, e: impl std::fmt::Display) -> ort::Error {
    ort::Error::new(format!("referdino::{op}: {e}"))
}

/// Dimension `i` of `shape`, checked against the rank.
fn dim(op: &str, what: &str, shape: &[i64], rank: usize, i: usize) -> ort::Result<usize> {
    if shape.len() != rank {
        return Err(fail(
            op,
            format!("{what} has shape {shape:?}, expected rank {rank}"),
        ));
    }
    usize::try_from(shape[i]).map_err(|_| fail(op, format!("{what} has shape {shape:?}")))
}

/// A shape of rank at most 6 as sizes, on the stack (the kernel runs per frame).
fn dims(op: &str, what: &str, shape: &[i64]) -> ort::Result<heapless::Vec<usize, 6>> {
    let mut v = heapless::Vec::new();
    for &d in shape {
        let d = usize::try_from(d).map_err(|_| fail(op, format!("{what} has shape {shape:?}")))?;
        v.push(d)
            .map_err(|_| fail(op, format!("{what} has shape {shape:?}: rank over 6")))?;
    }
    Ok(v)
}

/// `referdino::MSDeformAttn(value [B,S,H,Dh], spatial_shapes [L,2] i64, level_start_index [L] i64,
/// sampling_locations [B,Q,H,L,P,2], attention_weights [B,Q,H,L,P]) → out [B,Q,H·Dh]`.
struct MsDeformAttn {
    threads: usize,
}

/// ONNX Runtime's intra-op pool as the kernel's executor: running the rows on our own pool would
/// compete with ONNX Runtime's workers, which spin between ops.
struct OrtPool<'a> {
    ctx: &'a ComputeContext,
    threads: usize,
    failed: &'a std::sync::atomic::AtomicBool,
}

// SAFETY: ONNX Runtime's `par_for(n, n, f)` runs each index of `0..n` once and returns after
// all; when it fails, every index is run again here, in order, after it has returned.
unsafe impl ParallelFor for OrtPool<'_> {
    fn threads(&self) -> usize {
        self.threads
    }

    fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        if self.ctx.par_for(n, n, f).is_err() {
            // Not run by ONNX Runtime: run here, in order, so the output is still complete.
            self.failed
                .store(true, std::sync::atomic::Ordering::Relaxed);
            (0..n).for_each(f);
        }
    }
}

impl Operator for MsDeformAttn {
    type Kernel<'attr> = BoxedKernel<'attr>;

    fn name(&self) -> &str {
        "MSDeformAttn"
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        [
            OperatorInput::required(TensorElementType::Float32),
            OperatorInput::required(TensorElementType::Int64),
            OperatorInput::required(TensorElementType::Int64),
            OperatorInput::required(TensorElementType::Float32),
            OperatorInput::required(TensorElementType::Float32),
        ]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float32)]
    }

    fn create_kernel<'attr>(&self, _: &KernelContext<'attr>) -> ort::Result<Self::Kernel<'attr>> {
        let threads = self.threads;
        Ok(Box::new(move |ctx: &ComputeContext| {
            const OP: &str = "MSDeformAttn";
            let input = |i: usize| {
                ctx.input(i)?
                    .ok_or_else(|| fail(OP, format!("input {i} is missing")))
            };
            let (value, shapes, starts, locs, attn) =
                (input(0)?, input(1)?, input(2)?, input(3)?, input(4)?);
            let (vs, value) = value.try_extract_tensor::<f32>()?;
            let (ss, shapes) = shapes.try_extract_tensor::<i64>()?;
            let (sts, starts) = starts.try_extract_tensor::<i64>()?;
            let (ls, locs) = locs.try_extract_tensor::<f32>()?;
            let (ats, attn) = attn.try_extract_tensor::<f32>()?;
            let d = MsDeformDims::from_shapes(
                &dims(OP, "value", vs)?,
                &dims(OP, "spatial_shapes", ss)?,
                &dims(OP, "level_start_index", sts)?,
                &dims(OP, "sampling_locations", ls)?,
                &dims(OP, "attention_weights", ats)?,
            )
            .map_err(|e| fail(OP, e))?;
            // Shapes as arrays: ONNX Runtime's shape type holds up to 4 dimensions inline, so the
            // kernel allocates nothing per call.
            let shape = [d.batch, d.num_query, d.heads * d.head_dim];
            let mut out = ctx
                .output(0, shape)?
                .ok_or_else(|| fail(OP, "output 0 is missing"))?;
            let (_, out) = out.try_extract_tensor_mut::<f32>()?;
            let failed = std::sync::atomic::AtomicBool::new(false);
            let pool = OrtPool {
                ctx,
                threads,
                failed: &failed,
            };
            ms_deform_attn_on(&pool, value, shapes, starts, locs, attn, d, out)
                .map_err(|e| fail(OP, e))?;
            if failed.load(std::sync::atomic::Ordering::Relaxed) {
                log::debug!("{OP}: ONNX Runtime's parallel-for was unavailable; ran on one thread");
            }
            Ok(())
        }))
    }
}

/// `referdino::QueryPrune(class_logits [B,N,Lt], self_attn [B,N,N]; keep) → (keep_idx [B,K] i64,
/// gate [B,N])`.
struct QueryPrune;

impl Operator for QueryPrune {
    type Kernel<'attr> = BoxedKernel<'attr>;

    fn name(&self) -> &str {
        "QueryPrune"
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        [
            OperatorInput::required(TensorElementType::Float32),
            OperatorInput::required(TensorElementType::Float32),
        ]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [
            OperatorOutput::required(TensorElementType::Int64),
            OperatorOutput::required(TensorElementType::Float32),
        ]
    }

    fn create_kernel<'attr>(
        &self,
        kctx: &KernelContext<'attr>,
    ) -> ort::Result<Self::Kernel<'attr>> {
        const OP: &str = "QueryPrune";
        let keep: i64 = kctx
            .get("keep")
            .ok_or_else(|| fail(OP, "attribute `keep` is missing"))?;
        let keep = usize::try_from(keep).map_err(|_| fail(OP, format!("keep = {keep}")))?;
        Ok(Box::new(move |ctx: &ComputeContext| {
            let input = |i: usize| {
                ctx.input(i)?
                    .ok_or_else(|| fail(OP, format!("input {i} is missing")))
            };
            let (logits, attn) = (input(0)?, input(1)?);
            let (shape, logits) = logits.try_extract_tensor::<f32>()?;
            let (_, attn) = attn.try_extract_tensor::<f32>()?;
            let b = dim(OP, "class_logits", shape, 3, 0)?;
            let n = dim(OP, "class_logits", shape, 3, 1)?;
            let lt = dim(OP, "class_logits", shape, 3, 2)?;
            let mut idx = ctx
                .output(0, [b, keep])?
                .ok_or_else(|| fail(OP, "output 0 is missing"))?;
            let mut gate = ctx
                .output(1, [b, n])?
                .ok_or_else(|| fail(OP, "output 1 is missing"))?;
            let (_, idx) = idx.try_extract_tensor_mut::<i64>()?;
            let (_, gate) = gate.try_extract_tensor_mut::<f32>()?;
            query_prune(logits, attn, b, n, lt, keep, idx, gate).map_err(|e| fail(OP, e))
        }))
    }
}

/// The `referdino` operator domain; the deformable-attention kernel splits its rows for `threads`
/// workers of ONNX Runtime's intra-op pool.
pub(crate) fn domain(threads: usize) -> ort::Result<OperatorDomain> {
    OperatorDomain::new(CUSTOM_DOMAIN)?
        .add(MsDeformAttn { threads })?
        .add(QueryPrune)
}
