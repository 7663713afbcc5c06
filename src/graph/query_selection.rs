//! Language-guided query selection (two-stage, docs/model.md: Language-guided query selection): score every encoder token against the enhanced
//! text, keep the top `num_queries` tokens, and turn them into the decoder's initial reference boxes; the
//! content queries are the learned `tgt_embed`.
//!
//! The anchor proposals and their validity depend only on the level shapes, so they are host constants
//! (+∞ logits where a proposal is invalid, as the official code).

use super::mlp::mlp;
use super::scoring::contrastive_logits;
use crate::error::{Error, Result};
use crate::onnx::builder::{Bias, Graph, Value};
use crate::onnx::Scope;
use crate::tensor::{Data, Tensor};

/// Sizes of the query selection.
#[derive(Clone, Debug)]
pub struct QuerySelectionParams {
    /// Hidden size `d`.
    pub d_model: usize,
    /// Number of selected queries (900).
    pub num_queries: usize,
    /// (h, w) of every feature level, in flattening order.
    pub level_shapes: Vec<(usize, usize)>,
    /// LayerNorm epsilon (1e-5).
    pub eps: f32,
}

/// Outputs of the query selection.
pub struct QuerySelectionOut {
    /// Content queries `[B, K, d]` (`tgt_embed`, the same for every frame).
    pub tgt: Value,
    /// Initial reference boxes `[B, K, 4]` (cx, cy, w, h) in sigmoid space.
    pub reference: Value,
    /// Unsigmoided reference boxes `[B, K, 4]` (may hold +∞ for invalid proposals).
    pub reference_unsig: Value,
    /// Selected token indices `[B, K]` (i64), descending score.
    pub topk_indices: Value,
}

/// Anchor proposals of every token `[S, 4]` as logits `ln(p / (1 − p))`, and their validity `[S]`.
///
/// A proposal (cell centre, size 0.05·2^l) is valid when all four numbers lie strictly inside (0.01, 0.99);
/// invalid proposals hold +∞. Unpadded levels (valid size = map size). Official float order (f32).
pub fn encoder_proposals(level_shapes: &[(usize, usize)]) -> (Vec<f32>, Vec<bool>) {
    let mut props = Vec::new();
    let mut valid = Vec::new();
    for (lvl, &(h, w)) in level_shapes.iter().enumerate() {
        let wh = 0.05f32 * 2f32.powi(lvl as i32);
        for i in 0..h {
            for j in 0..w {
                let p = [
                    (j as f32 + 0.5) / w as f32,
                    (i as f32 + 0.5) / h as f32,
                    wh,
                    wh,
                ];
                let ok = p.iter().all(|&x| x > 0.01 && x < 0.99);
                valid.push(ok);
                for x in p {
                    props.push(if ok {
                        (x / (1.0 - x)).ln()
                    } else {
                        f32::INFINITY
                    });
                }
            }
        }
    }
    (props, valid)
}

/// Two-stage query selection; `w` is the `transformer` scope (`enc_output`, `enc_output_norm`,
/// `enc_out_bbox_embed`, `tgt_embed`). Taps every `query_selection.*` fixture key.
pub fn query_selection(
    g: &mut Graph,
    w: &Scope<'_>,
    p: &QuerySelectionParams,
    memory: &Value,
    memory_text: &Value,
    text_token_mask: &Value,
) -> Result<QuerySelectionOut> {
    let s: usize = p.level_shapes.iter().map(|(h, w)| h * w).sum();
    let d = p.d_model;
    let b = memory.shape.first().copied().unwrap_or(0);
    if memory.shape != [b, s, d] {
        return Err(Error::Graph(format!(
            "query selection: memory {:?}, expected [B, {s}, {d}]",
            memory.shape
        )));
    }
    if p.num_queries == 0 || p.num_queries > s {
        return Err(Error::Graph(format!(
            "query selection: {} queries from {s} tokens",
            p.num_queries
        )));
    }
    let l = memory_text.shape.get(1).copied().unwrap_or(0);
    if memory_text.shape != [b, l, d]
        || text_token_mask.shape != [b, l]
        || text_token_mask.dtype != crate::tensor::DType::Bool
    {
        return Err(Error::Graph(format!(
            "query selection: text {:?} / mask {:?} {:?}, expected [{b}, L, {d}] / bool [{b}, L]",
            memory_text.shape, text_token_mask.dtype, text_token_mask.shape
        )));
    }
    let k = p.num_queries;
    let (props, valid) = encoder_proposals(&p.level_shapes);
    let props = g.const_f32(&[1, s, 4], props)?;
    let valid = g.constant(
        "proposal_valid",
        &Tensor::new(vec![1, s, 1], Data::Bool(valid))?,
    );
    if g.opts.taps {
        let pe = g.expand(&props, &[b, s, 4])?;
        g.tap("query_selection.output_proposals", &pe)?;
    }
    let zero = g.scalar(0.0);
    let om = g.where_(&valid, memory, &zero)?;
    let om = g.linear(&w.pp("enc_output"), &om, d, Bias::With)?;
    let om = g.layer_norm(&w.pp("enc_output_norm"), &om, p.eps)?;
    g.tap("query_selection.output_memory", &om)?;
    let logits = contrastive_logits(g, &om, memory_text, text_token_mask)?;
    g.tap("query_selection.enc_class_logits", &logits)?;
    let delta = mlp(g, &w.pp("enc_out_bbox_embed"), &om, d, 4, 3)?;
    g.tap("query_selection.enc_bbox_delta", &delta)?;
    let coord = g.add(&delta, &props)?;
    let score = g.reduce_max(&logits, &[2], false)?;
    g.tap("query_selection.topk_input", &score)?;
    let (_, idx) = g.topk(&score, k, -1)?;
    g.tap("query_selection.topk_indices", &idx)?;
    let ref_unsig = g.gather_rows(&coord, &idx)?;
    g.tap("query_selection.refpoint_unsig", &ref_unsig)?;
    if g.opts.taps {
        let pe = g.expand(&props, &[b, s, 4])?;
        let ip = g.gather_rows(&pe, &idx)?;
        let ip = g.sigmoid(&ip)?;
        g.tap("query_selection.init_box_proposal", &ip)?;
    }
    let reference = g.sigmoid(&ref_unsig)?;
    // [num_queries, d_model]
    let tgt = g.weight(&w.pp("tgt_embed"), "weight", &[k, d])?;
    let tgt = g.unsqueeze(&tgt, &[0])?;
    let tgt = g.expand(&tgt, &[b, k, d])?;
    Ok(QuerySelectionOut {
        tgt,
        reference,
        reference_unsig: ref_unsig,
        topk_indices: idx,
    })
}
