//! tract operators that run our kernels for the `referdino`-domain ONNX nodes, and for standard
//! nodes where tract's own kernel is slow on our graphs.
//!
//! A host INT8 engine's quantized products reach tract as `referdino`-domain nodes too: the backend
//! rewrites them before parsing ([`crate::onnx::int8_products`]) into `QLinear` ([`QLinearOp`]),
//! `QuantizeU8` and `FakeQuantU8`, where the CPU has an integer kernel
//! ([`crate::ops::qlinear::fast_kernel`]).
//!
//! Each `referdino`-domain ONNX node becomes an [`Expansion`] (shape inference at parse time) that
//! wires one typed op (`TypedOp` + `EvalOp`) calling [`crate::ops`]. tract keys its op register on
//! `op_type` alone, so the builders check the node's domain themselves. Standard nodes come in at
//! three points: `LayerNormalization` and `MatMul` (by a weight: [`LinearOp`]) by our builders at
//! parse time; convolutions ([`use_our_conv`]) and the bias / ReLU after a linear layer
//! ([`fuse_linear_epilogues`]) on the typed, decluttered graph before tract's optimisation; softmax
//! ([`use_our_softmax`]), broadcasting arithmetic and `Where` ([`use_our_broadcast_add`]), `Sin`,
//! `Cos`, `GeluExact` ([`use_our_unary`]), constant `Pad` ([`use_our_pad`]), nearest `Resize`
//! ([`use_our_resize`]), one-axis `Reduce` and `GatherElements` ([`use_our_reduce_and_gather`])
//! after it, where only the evaluation changes; there too, data movement: transposes folded into
//! products or tiled ([`fold_moves_into_products`], [`use_our_transpose`]), products split by
//! their slices ([`split_sliced_products`]) and slices and concatenations copied once
//! ([`use_our_concat_and_slice`]).

mod broadcast;
mod concat;
mod conv;
mod inputs;
mod layer_norm;
mod linear;
mod msdeform;
mod order;
mod pad;
mod prune;
mod qlinear;
mod qmatmul;
mod recycle;
mod reduce;
mod resize;
mod softmax;
mod transpose;
mod unary;

pub use broadcast::{
    use_our_broadcast_add, BroadcastAddOp, BroadcastBinOp, BroadcastSelectOp, BroadcastToOp,
    ByScalarOp, UnicastOp,
};
pub use concat::{use_our_concat_and_slice, ConcatRangesOp};
pub use conv::{use_our_conv, ConvOp};
pub use inputs::fold_input_reshapes;
pub use linear::{
    fold_moves_into_products, fuse_linear_epilogues, split_sliced_products, LinearOp, MatMulOp,
};
pub use order::in_place_readers_last;
pub use pad::{use_our_pad, PadOp};
pub use qmatmul::{int8_attention_products, QMatMulOp};
pub use recycle::{InstallPool, PoolStats, TensorPool, DEFAULT_CAP as DEFAULT_POOL_CAP};
pub use reduce::{use_our_reduce_and_gather, GatherElementsOp, ReduceOp};
pub use resize::{use_our_resize, ResizeNearestOp};
pub use transpose::{use_our_transpose, TransposeOp};
pub use unary::{use_our_unary, UnaryOp};

pub use layer_norm::LayerNormOp;
pub use msdeform::MsDeformAttnOp;
pub use prune::QueryPruneOp;
pub use qlinear::{fake_quantize_before_moves, fuse_output_quantization, QLinearOp, QuantizeU8Op};
pub use softmax::{use_our_softmax, SoftmaxOp};

use tract_onnx::model::{OnnxOpRegister, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

/// ONNX domain of our custom operators.
pub const DOMAIN: &str = "referdino";

/// Adds `MSDeformAttn`, `QueryPrune`, `QLinear`, `QuantizeU8` and `FakeQuantU8` to a tract ONNX op
/// register, and puts our
/// `LayerNormalization` in place of tract's (which stays available to [`use_tract_layer_norm`]).
pub fn register(reg: &mut OnnxOpRegister) {
    reg.insert("MSDeformAttn", msdeform::ms_deform_attn_builder);
    reg.insert("QueryPrune", prune::query_prune_builder);
    reg.insert("QLinear", qlinear::qlinear_builder);
    reg.insert("QuantizeU8", qlinear::quantize_u8_builder);
    reg.insert("FakeQuantU8", qlinear::fake_quantize_u8_builder);
    if let Some(&theirs) = reg.0.get("LayerNormalization") {
        TRACT_LAYER_NORM.get_or_init(|| theirs);
    }
    reg.insert("LayerNormalization", layer_norm::layer_norm_builder);
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

/// An error unless `node` is in our domain (tract keys its register on `op_type` alone).
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
