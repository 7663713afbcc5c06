//! The four engines of the runtime and their I/O contract (ARCHITECTURE §3, spec §7.3).
//!
//! The network is split by how often each part runs. Every binding is a named, static-shaped tensor; the
//! shapes depend only on the [`Geometry`] (image size, max text length, temporal window) and the model
//! configuration. These names are the contract between the exporter, the backends and the pipeline.
//!
//! | engine | runs | inputs | outputs |
//! |---|---|---|---|
//! | `text` | once per prompt | `input_ids [1,Lm] i64`, `token_type_ids [1,Lm] i64`, `position_ids [1,Lm] i64`, `text_self_attention_mask [1,Lm,Lm] bool` | `encoded_text [1,Lm,d]` |
//! | `frame` | per frame | `image [1,3,H,W]`, `encoded_text [1,Lm,d]`, `text_token_mask [1,Lm] bool`, `text_self_attention_mask [1,Lm,Lm] bool`, `position_ids [1,Lm] i64` | `objects [1,Ns,d]`, `refs [1,Ns,4]`, `memory_text [1,Lm,d]`, `f_seg [1,dm,H4,W4]` |
//! | `temporal` | per frame, over the window | `objects [W,Ns,d]` (tracked), `sentence [W,d]`, `frame_mask [W] bool` | `objects_t [W,Ns,d]` |
//! | `head` | per frame | `objects_t [1,Ns,d]`, `refs [1,Ns,4]` (tracked), `memory_text [1,Lm,d]`, `text_token_mask [1,Lm] bool`, `f_seg [1,dm,H4,W4]` | `logits [1,Ns]`, `boxes [1,Ns,4]`, `mask_logits [1,Ns,H4,W4]` |
//!
//! `Lm` = max text length of the profile (real tokens are marked by `text_token_mask`; pads are masked in
//! every consumer), `Ns` = queries left after pruning (15 for the official config), `H4 = ceil(H/4)`.
//! The tracker (Hungarian + memory), selection and upsampling run on the host between engines.

/// Binding names, shared by exporter, backends and pipeline.
pub mod names {
    /// Text engine file stem.
    pub const TEXT: &str = "text";
    /// Frame engine file stem.
    pub const FRAME: &str = "frame";
    /// Temporal engine file stem.
    pub const TEMPORAL: &str = "temporal";
    /// Head engine file stem.
    pub const HEAD: &str = "head";

    /// Token ids.
    pub const INPUT_IDS: &str = "input_ids";
    /// Token type ids (all zero).
    pub const TOKEN_TYPE_IDS: &str = "token_type_ids";
    /// Sub-sentence position ids.
    pub const POSITION_IDS: &str = "position_ids";
    /// Sub-sentence self-attention mask (true = may attend).
    pub const TEXT_SELF_ATTENTION_MASK: &str = "text_self_attention_mask";
    /// Real-token mask (true = real token).
    pub const TEXT_TOKEN_MASK: &str = "text_token_mask";
    /// BERT + feat_map output.
    pub const ENCODED_TEXT: &str = "encoded_text";
    /// Normalised frame, NCHW.
    pub const IMAGE: &str = "image";
    /// Object embeddings after the decoder (and after the temporal engine: `objects_t`).
    pub const OBJECTS: &str = "objects";
    /// Reference boxes of the last decoder layer's input (cx, cy, w, h).
    pub const REFS: &str = "refs";
    /// Per-frame enhanced text.
    pub const MEMORY_TEXT: &str = "memory_text";
    /// Stride-4 segmentation features.
    pub const F_SEG: &str = "f_seg";
    /// Per-frame sentence feature (enhanced `[CLS]`).
    pub const SENTENCE: &str = "sentence";
    /// Valid frames of the temporal window.
    pub const FRAME_MASK: &str = "frame_mask";
    /// Temporally enhanced object embeddings.
    pub const OBJECTS_T: &str = "objects_t";
    /// Class logits per query.
    pub const LOGITS: &str = "logits";
    /// Boxes per query.
    pub const BOXES: &str = "boxes";
    /// Mask logits per query at stride 4.
    pub const MASK_LOGITS: &str = "mask_logits";
}

/// The static sizes an export is specialised for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Geometry {
    /// Model input height (after resizing).
    pub height: usize,
    /// Model input width.
    pub width: usize,
    /// Max text length `Lm` in tokens (special tokens included).
    pub max_text: usize,
    /// Temporal window `W` in frames.
    pub window: usize,
}

impl Geometry {
    /// Height and width of the stride-4 map (Swin pads to a multiple of 4).
    pub fn stride4(&self) -> (usize, usize) {
        (self.height.div_ceil(4), self.width.div_ceil(4))
    }
}

use super::bert::{text_encoder, BertParams, TextInputs};
use super::builder::{Graph, GraphOptions, Weights};
use super::heads::heads;
use super::mask_decoder::{mask_decoder, MaskDecoderParams};
use super::temporal::{temporal_decoder, TemporalParams};
use crate::error::Result;
use crate::tensor::DType;

/// Builds the text engine: BERT + `feat_map`.
pub fn build_text(
    w: &dyn Weights,
    bert: &BertParams,
    geo: &Geometry,
    opts: &GraphOptions,
) -> Result<Graph> {
    let mut g = Graph::new(names::TEXT, opts.clone());
    let lm = geo.max_text;
    let ids = g.input(names::INPUT_IDS, DType::I64, &[1, lm]);
    let tt = g.input(names::TOKEN_TYPE_IDS, DType::I64, &[1, lm]);
    let pos = g.input(names::POSITION_IDS, DType::I64, &[1, lm]);
    let sam = g.input(names::TEXT_SELF_ATTENTION_MASK, DType::Bool, &[1, lm, lm]);
    let t = TextInputs {
        input_ids: &ids,
        token_type_ids: &tt,
        position_ids: &pos,
        self_attention_mask: &sam,
    };
    let enc = g.scoped("text", |g| text_encoder(g, w, bert, &t))?;
    g.output(names::ENCODED_TEXT, &enc)?;
    Ok(g)
}

/// Builds the temporal engine over a window of `geo.window` frames.
pub fn build_temporal(
    w: &dyn Weights,
    p: &TemporalParams,
    queries: usize,
    geo: &Geometry,
    opts: &GraphOptions,
) -> Result<Graph> {
    let mut g = Graph::new(names::TEMPORAL, opts.clone());
    let (win, d) = (geo.window, p.d_model);
    let objs = g.input(names::OBJECTS, DType::F32, &[win, queries, d]);
    let sent = g.input(names::SENTENCE, DType::F32, &[win, d]);
    let mask = g.input(names::FRAME_MASK, DType::Bool, &[win]);
    let out = g.scoped("temporal", |g| {
        temporal_decoder(g, w, p, &objs, &sent, &mask)
    })?;
    g.output(names::OBJECTS_T, &out)?;
    Ok(g)
}

/// Sizes of the head engine.
#[derive(Clone, Debug)]
pub struct HeadParams {
    /// Hidden size d.
    pub d_model: usize,
    /// Queries after pruning.
    pub queries: usize,
    /// Mask feature channels.
    pub mask_dim: usize,
    /// Prefix of the shared box MLP.
    pub bbox_prefix: String,
    /// Mask decoder sizes.
    pub mask_decoder: MaskDecoderParams,
}

/// Builds the head engine: class/box heads, mask decoder and mask dot product for one frame.
pub fn build_head(
    w: &dyn Weights,
    p: &HeadParams,
    geo: &Geometry,
    opts: &GraphOptions,
) -> Result<Graph> {
    let mut g = Graph::new(names::HEAD, opts.clone());
    let (h4, w4) = geo.stride4();
    let (q, d, lm) = (p.queries, p.d_model, geo.max_text);
    let objs = g.input(names::OBJECTS_T, DType::F32, &[1, q, d]);
    let refs = g.input(names::REFS, DType::F32, &[1, q, 4]);
    let text = g.input(names::MEMORY_TEXT, DType::F32, &[1, lm, d]);
    let tmask = g.input(names::TEXT_TOKEN_MASK, DType::Bool, &[1, lm]);
    let fseg = g.input(names::F_SEG, DType::F32, &[1, p.mask_dim, h4, w4]);
    let h = g.scoped("heads", |g| {
        heads(g, w, &p.bbox_prefix, &objs, &text, &tmask, &refs)
    })?;
    let m = g.scoped("mask_decoder", |g| {
        mask_decoder(g, w, &p.mask_decoder, &objs, &refs, &text, &tmask, &fseg)
    })?;
    g.output(names::LOGITS, &h.logits)?;
    g.output(names::BOXES, &h.boxes)?;
    g.output(names::MASK_LOGITS, &m)?;
    Ok(g)
}
