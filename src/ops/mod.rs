//! CPU kernels of the custom operations and the assignment solver.
//!
//! These are the semantic reference for the CUDA/TensorRT plugins and what the CPU backend runs for the
//! `referdino`-domain ONNX nodes:
//! - [`msdeform::ms_deform_attn`]: multi-scale deformable attention sampling (ONNX `MSDeformAttn`);
//! - [`prune::query_prune`]: the confidence-aware query-pruning gate and its top-K (ONNX `QueryPrune`);
//! - [`hungarian::Hungarian`]: exact square linear assignment for the tracker;
//! - [`layer_norm::layer_norm_in_place`]: layer normalisation, which the CPU backend runs for ONNX
//!   `LayerNormalization` in place of tract's decomposition;
//! - [`softmax::softmax_in_place`]: softmax along any axis, which the CPU backend runs for ONNX
//!   `Softmax` in place of tract's own;
//! - [`linear::linear`]: `x·W + b` (and ReLU) with a constant, pre-packed `W`, which the CPU backend
//!   runs on x86-64 with AVX2 + FMA for ONNX `MatMul` by a weight (and its bias `Add`, `Relu`);
//! - [`broadcast::add_broadcast_in_place`]: `a += b` with `b` broadcast, which the CPU backend runs
//!   for the f32 `Add` nodes tract leaves on its generic broadcasting path;
//! - [`matmul::matmul`]: batched `a · b` of two activations (numpy broadcasting), which the CPU
//!   backend runs there for ONNX `MatMul` whose operands are both computed;
//! - [`conv::conv2d`]: 2-D convolution as patch gathering + [`linear::linear`], which the CPU backend
//!   runs there for ONNX `Conv` (NCHW, one group, constant kernel);
//! - [`transpose::transpose`]: batched 2-D transpose in cache tiles, which the CPU backend runs for
//!   tract's `MoveAxis` to or from the last axis;
//! - [`unary::apply_in_place`]: vectorised sine, cosine and exact GELU, which the CPU backend runs
//!   for tract's `Sin`, `Cos` and `GeluExact` nodes;
//! - [`pad::pad_constant`]: constant padding in contiguous runs, which the CPU backend runs for
//!   tract's constant `Pad` of f32 tensors;
//! - [`resize::resize_nearest_2d`]: nearest-neighbour resizing of the last two axes, which the CPU
//!   backend runs for tract's `Resize` in ONNX's `nearest` / `asymmetric` / `floor` mode;
//! - [`reduce::reduce_axis`] and [`gather::gather_elements`]: sum / maximum / minimum over one axis
//!   and ONNX `GatherElements`, which the CPU backend runs for tract's `Reduce` (off the last axis
//!   for sums) and `GatherElements` of f32 tensors;
//! - [`qlinear::qlinear`]: `(x_q − 128) · W_q` in exact 32-bit integer sums (AMX tiles, AVX-512
//!   VNNI or the Arm dot product) times the two scales, plus bias / ReLU / GELU, and [`qlinear::quantize_u8`], which the CPU
//!   backend runs for a host INT8 engine's quantized products by a weight (ONNX `QLinear`,
//!   `QuantizeU8`, `FakeQuantU8` written by [`crate::onnx::int8_products`]);
//! - [`concat::concat_ranges`]: ranges of tensors joined along an axis in one threaded copy, which
//!   the CPU backend runs for tract's `Slice`, `Concat` and concatenations of slices (Swin's roll).
//!
//! Every kernel checks its slice lengths against the stated dimensions and returns
//! [`Error::Shape`] instead of panicking; none allocates per call (scratch comes from the caller;
//! the linear kernel's buffer for gathering strided rows is per thread, allocated on first use).

pub mod broadcast;
pub mod concat;
pub mod conv;
pub mod gather;
pub mod hungarian;
pub mod layer_norm;
pub mod linear;
pub mod matmul;
pub mod msdeform;
pub mod pad;
pub mod prune;
pub mod qlinear;
pub mod qmatmul;
pub mod reduce;
pub mod resize;
pub mod softmax;
pub mod transpose;
pub mod unary;

pub use hungarian::Hungarian;
pub use layer_norm::layer_norm_in_place;
pub use linear::{linear, Epilogue, PackedWeights};
pub use msdeform::{ms_deform_attn, MsDeformDims};
pub use prune::query_prune;
pub use softmax::softmax_in_place;

use crate::error::{Error, Result};

/// Lanes of the kernels' sums (one AVX2 register; two NEON registers).
pub(crate) const LANES: usize = 8;

/// `Σ f(x)` over 8 lanes combined in a fixed tree, then the tail: the same order on every
/// instruction set and thread count (the softmax and layer-norm kernels' reductions).
#[inline(always)]
pub(crate) fn lane_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut l = [0.0f32; LANES];
    let mut it = x.chunks_exact(LANES);
    for c in &mut it {
        for j in 0..LANES {
            l[j] += f(c[j]);
        }
    }
    let mut s = fold_lanes(l, |a, b| a + b);
    for &v in it.remainder() {
        s += f(v);
    }
    s
}

/// Combines 8 lanes with `f` in a fixed tree.
#[inline(always)]
pub(crate) fn fold_lanes(l: [f32; LANES], f: impl Fn(f32, f32) -> f32) -> f32 {
    f(
        f(f(l[0], l[4]), f(l[2], l[6])),
        f(f(l[1], l[5]), f(l[3], l[7])),
    )
}

/// Deterministic test inputs in [-1, 1) (the linear, matmul and conv kernels' tests).
#[cfg(test)]
pub(crate) fn test_values(len: usize, seed: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * 7919 + seed * 104_729) % 2003) as f32 / 1001.5 - 1.0)
        .collect()
}

/// Runs `f` on a rayon pool of `threads` workers (the kernels' thread-count tests).
#[cfg(test)]
pub(crate) fn on_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("a test thread pool")
        .install(f)
}

/// The output of a product that its tasks share, each writing only its own block
/// ([`for_each_block`]).
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub(crate) *mut f32);
// SAFETY: the tasks of one call write disjoint elements (see `for_each_block`), so sharing the
// pointer is sound.
unsafe impl Send for OutPtr {}
// SAFETY: as above.
unsafe impl Sync for OutPtr {}

/// Runs `task(rows, cols)` over the blocks of an `m × n` output: `mc` rows × up to `nc` columns,
/// the columns narrowed (halved, not below `min_nc`) when there are too few row blocks to give every
/// thread work. On the calling thread when `serial`, there is one block or one thread; else on the
/// rayon pool the caller runs in. The blocks never split a sum, so they do not change a bit.
pub(crate) fn for_each_block(
    m: usize,
    n: usize,
    mc: usize,
    mut nc: usize,
    min_nc: usize,
    serial: bool,
    task: impl Fn(std::ops::Range<usize>, std::ops::Range<usize>) + Sync,
) {
    use rayon::prelude::*;
    let row_blocks = m.div_ceil(mc);
    let want = 4 * rayon::current_num_threads();
    while nc > min_nc && row_blocks * n.div_ceil(nc) < want {
        nc /= 2;
    }
    let col_blocks = n.div_ceil(nc);
    let one = |t: usize| {
        let (rb, cb) = (t / col_blocks, t % col_blocks);
        task(
            rb * mc..(rb * mc + mc).min(m),
            cb * nc..(cb * nc + nc).min(n),
        );
    };
    let tasks = row_blocks * col_blocks;
    if tasks == 1 || serial || rayon::current_num_threads() < 2 {
        (0..tasks).for_each(one);
    } else {
        (0..tasks).into_par_iter().for_each(one);
    }
}

/// Checks that a slice has the expected number of elements.
pub(crate) fn check_len(op: &str, what: &str, got: usize, want: usize) -> Result<()> {
    if got != want {
        return Err(Error::shape_mismatch(
            format!("{op}: {what} (elements)"),
            want,
            got,
        ));
    }
    Ok(())
}
