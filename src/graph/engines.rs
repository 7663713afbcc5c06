//! The four engines of the runtime and their I/O contract (docs/model.md: Where each module runs).
//!
//! The network is split by how often each part runs. Every binding is a named, static-shaped tensor; the
//! shapes depend only on the [`Geometry`] (image size, max text length, temporal window) and the model
//! configuration. These names are the contract between the exporter, the backends and the pipeline.
//!
//! | engine | runs | inputs | outputs |
//! |---|---|---|---|
//! | `text` | once per prompt | `input_ids [1,Lm] i64`, `token_type_ids [1,Lm] i64`, `position_ids [1,Lm] i64`, `text_self_attention_mask [1,Lm,Lm] bool` | `encoded_text [1,Lm,d]` |
//! | `frame` | per frame | `image [1,3,H,W]`, `encoded_text [1,Lm,d]`, `text_token_mask [1,Lm] bool`, `text_self_attention_mask [1,Lm,Lm] bool`, `position_ids [1,Lm] i64` | `objects [1,Ns,d]`, `refs [1,Ns,4]`, `memory_text [1,Lm,d]`, `f_seg [1,dm,H4,W4]` |
//! | `image` | per frame, once for all objects | `image [1,3,H,W]` | `image_tokens [1,S,d]`, `stride4 [1,C1,H4,W4]` |
//! | `cross` | per frame, batched over `B` objects | `image_tokens [1,S,d]`, `stride4 [1,C1,H4,W4]`, the frame engine's text inputs at `[B,...]` | the frame engine's outputs at `[B,...]` |
//! | `temporal` | per frame, over the window | `objects [W,Ns,d]` (tracked), `sentence [W,d]`, `frame_mask [W] bool` | `objects_t [W,Ns,d]` |
//! | `head` | per frame | `objects_t [1,Ns,d]`, `refs [1,Ns,4]` (tracked), `memory_text [1,Lm,d]`, `text_token_mask [1,Lm] bool`, `f_seg [1,dm,H4,W4]` | `logits [1,Ns]`, `boxes [1,Ns,4]`, `mask_logits [1,Ns,H4,W4]` |
//!
//! `Lm` = max text length of the profile (real tokens are marked by `text_token_mask`; pads are masked in
//! every consumer), `Ns` = queries left after pruning (15 for the official config), `H4 = ceil(H/4)`.
//! The tracker (Hungarian + memory), selection and upsampling run on the host between engines.
//!
//! `image` + `cross` are `frame` split where the prompt first enters: `S` = tokens of the four levels,
//! `C1` = Swin's first stage width. `cross` at `B = 1` computes what `frame` computes; at `B > 1` each
//! batch row is the `B = 1` result of that row's prompt (the image inputs are broadcast inside the
//! graph). [`build_head_batched`] and [`build_temporal_batched`] give the per-object engines the same
//! batch axis.

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
    /// Image engine file stem: the text-independent part of `frame` (Swin + input projections), run
    /// once per frame whatever the number of objects.
    pub const IMAGE_PART: &str = "image";
    /// Cross-modal engine file stem: the rest of `frame` (enhancer, query selection, decoder, FPN),
    /// batched over objects.
    pub const CROSS: &str = "cross";

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
    /// Flattened projected feature levels `[1, S, d]` (image engine output, cross engine input).
    pub const IMAGE_TOKENS: &str = "image_tokens";
    /// Swin stage-1 map after its output norm `[1, C1, H4, W4]` (image engine output, cross engine
    /// input; the FPN's finest input).
    pub const STRIDE4: &str = "stride4";
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
use super::heads::heads;
use super::mask_decoder::{mask_decoder, MaskDecoderParams};
use super::temporal::{temporal_decoder, temporal_decoder_batched, TemporalParams};
use crate::error::Result;
use crate::onnx::builder::{Graph, GraphOptions};
use crate::onnx::scope::{Declarations, Declared};
use crate::onnx::Scope;
use crate::onnx::Weights;
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
    let root = Scope::new(w);
    let enc = g.scoped("text", |g| text_encoder(g, &root, bert, &t))?;
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
    let root = Scope::new(w);
    let out = g.scoped("temporal", |g| {
        temporal_decoder(g, &root, p, &objs, &sent, &mask)
    })?;
    g.output(names::OBJECTS_T, &out)?;
    Ok(g)
}

/// [`build_temporal`] over `batch` objects: `objects [batch,W,Ns,d]`, `sentence [batch,W,d]`,
/// `frame_mask [batch,W]` → `objects_t [batch,W,Ns,d]`. The temporal decoder already batches over the
/// tracks of one object (its attention runs along the window); objects differ in their sentence and
/// window, so each object's tracks become rows of one row batch (`temporal_decoder_batched`): the same
/// nodes for any `batch`, so the engine can also be exported with a dynamic batch axis.
pub fn build_temporal_batched(
    w: &dyn Weights,
    p: &TemporalParams,
    queries: usize,
    geo: &Geometry,
    batch: usize,
    opts: &GraphOptions,
) -> Result<Graph> {
    if batch == 0 {
        return Err(Error::Config(
            "temporal engine: batch must be at least 1".into(),
        ));
    }
    let mut g = Graph::new(names::TEMPORAL, opts.clone());
    let (win, d) = (geo.window, p.d_model);
    let objs = g.input(names::OBJECTS, DType::F32, &[batch, win, queries, d]);
    let sent = g.input(names::SENTENCE, DType::F32, &[batch, win, d]);
    let mask = g.input(names::FRAME_MASK, DType::Bool, &[batch, win]);
    let root = Scope::new(w);
    let out = g.scoped("temporal", |g| {
        temporal_decoder_batched(g, &root, p, &objs, &sent, &mask)
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
    build_head_batched(w, p, geo, 1, opts)
}

/// [`build_head`] over `batch` objects of one frame: every binding gets a leading `[batch, ...]`
/// (each object has its own enhanced text and `f_seg`); `batch = 1` is the head engine itself.
pub fn build_head_batched(
    w: &dyn Weights,
    p: &HeadParams,
    geo: &Geometry,
    batch: usize,
    opts: &GraphOptions,
) -> Result<Graph> {
    if batch == 0 {
        return Err(Error::Config(
            "head engine: batch must be at least 1".into(),
        ));
    }
    let mut g = Graph::new(names::HEAD, opts.clone());
    let (h4, w4) = geo.stride4();
    let (b, q, d, lm) = (batch, p.queries, p.d_model, geo.max_text);
    let objs = g.input(names::OBJECTS_T, DType::F32, &[b, q, d]);
    let refs = g.input(names::REFS, DType::F32, &[b, q, 4]);
    let text = g.input(names::MEMORY_TEXT, DType::F32, &[b, lm, d]);
    let tmask = g.input(names::TEXT_TOKEN_MASK, DType::Bool, &[b, lm]);
    let fseg = g.input(names::F_SEG, DType::F32, &[b, p.mask_dim, h4, w4]);
    let root = Scope::new(w);
    let h = g.scoped("heads", |g| {
        heads(g, &root.pp(&p.bbox_prefix), &objs, &text, &tmask, &refs)
    })?;
    let m = g.scoped("mask_decoder", |g| {
        mask_decoder(
            g,
            &root,
            &p.mask_decoder,
            &objs,
            &refs,
            &text,
            &tmask,
            &fseg,
        )
    })?;
    g.output(names::LOGITS, &h.logits)?;
    g.output(names::BOXES, &h.boxes)?;
    g.output(names::MASK_LOGITS, &m)?;
    Ok(g)
}

use super::decoder::{decoder, DecoderInputs, DecoderParams};
use super::enhancer::{feature_enhancer, EnhancerInputs, EnhancerParams};
use super::fpn::{fpn, memory_maps};
use super::input_proj::{
    flatten_levels, input_proj, level_pos_flatten, level_shapes, level_start_index, text_pos_embed,
    InputProjParams,
};
use super::query_selection::{query_selection, QuerySelectionParams};
use super::swin::{swin_backbone, SwinParams};
use crate::config::ModelConfig;
use crate::error::Error;
use crate::tensor::{Data, Tensor};

/// Every module's sizes for one model configuration and geometry.
#[derive(Clone, Debug)]
pub struct NetParams {
    /// Swin backbone.
    pub swin: SwinParams,
    /// BERT + feat_map.
    pub bert: BertParams,
    /// Input projections and position embeddings.
    pub input_proj: InputProjParams,
    /// Feature enhancer.
    pub enhancer: EnhancerParams,
    /// Two-stage query selection.
    pub query_selection: QuerySelectionParams,
    /// Decoder with pruning.
    pub decoder: DecoderParams,
    /// Temporal decoder.
    pub temporal: TemporalParams,
    /// Heads and mask decoder.
    pub head: HeadParams,
    /// Queries left after pruning.
    pub queries_out: usize,
}

/// The Swin parameters and the transformer's feature level shapes of `cfg` for a
/// `height` × `width` input.
fn feature_levels(
    cfg: &ModelConfig,
    height: usize,
    width: usize,
) -> Result<(SwinParams, Vec<(usize, usize)>)> {
    let s = &cfg.swin;
    let mut swin = SwinParams::new(s.embed_dim, &s.depths, &s.num_heads, s.window_size);
    swin.patch = s.patch_size;
    let stages = swin.stage_shapes(height, width);
    if stages.len() != 4 || cfg.num_feature_levels != 4 {
        return Err(Error::Config(format!(
            "expected 4 Swin stages and 4 feature levels, got {} and {}",
            stages.len(),
            cfg.num_feature_levels
        )));
    }
    let (h32, w32) = stages[3];
    let mut levels: Vec<(usize, usize)> = stages[1..].to_vec();
    levels.push(((h32 - 1) / 2 + 1, (w32 - 1) / 2 + 1)); // 3×3 conv, stride 2, padding 1
    Ok((swin, levels))
}

/// Feature tokens the transformer's encoder holds for a `height` × `width` input (every level's
/// cells); query selection picks `cfg.num_queries` of them, so there must be at least that many.
pub fn feature_tokens(cfg: &ModelConfig, height: usize, width: usize) -> Result<usize> {
    let (_, levels) = feature_levels(cfg, height, width)?;
    Ok(levels.iter().map(|(h, w)| h * w).sum())
}

/// Refuses a `height` × `width` input with fewer feature tokens than the model has queries, before
/// anything is built; `what` says which flags set the size.
pub fn check_enough_tokens(
    cfg: &ModelConfig,
    height: usize,
    width: usize,
    what: &str,
) -> Result<()> {
    let tokens = feature_tokens(cfg, height, width)?;
    if tokens < cfg.num_queries {
        return Err(Error::Config(format!(
            "{what}: a {height}x{width} (height x width) input gives {tokens} feature tokens, fewer than the model's {} queries; use a larger input",
            cfg.num_queries
        )));
    }
    Ok(())
}

impl NetParams {
    /// Derives every module's sizes from a model configuration at a given image size.
    pub fn new(cfg: &ModelConfig, geo: &Geometry) -> Result<Self> {
        let d = cfg.hidden_dim;
        let (swin, levels) = feature_levels(cfg, geo.height, geo.width)?;
        let b = &cfg.bert;
        let bert = BertParams::from_config(b, d);
        let mut ip = InputProjParams::new(d);
        ip.image_temperature = cfg.pe_temperature_h;
        let enhancer = EnhancerParams::from_transformer(
            d,
            cfg.enc_layers,
            cfg.nheads,
            cfg.enc_n_points,
            cfg.dim_feedforward,
            levels.clone(),
        );
        let query_selection = QuerySelectionParams {
            d_model: d,
            num_queries: cfg.num_queries,
            level_shapes: levels.clone(),
            eps: 1e-5,
        };
        let decoder = DecoderParams {
            d_model: d,
            heads: cfg.nheads,
            ffn: cfg.dim_feedforward,
            layers: cfg.dec_layers,
            points: cfg.dec_n_points,
            level_shapes: levels,
            query_decay: cfg.query_decay_f64(),
            eps: 1e-5,
        };
        let queries_out = *decoder
            .keep_schedule(cfg.num_queries)
            .last()
            .ok_or_else(|| Error::Config("dec_layers must be at least 1".into()))?;
        let nl = cfg.dec_layers - 1;
        let temporal = TemporalParams {
            d_model: d,
            heads: cfg.nheads,
            ffn: cfg.temporal_dim_feedforward,
            blocks: cfg.temporal_layer,
            prefix: format!("temporal_decoder.{nl}"),
        };
        let head = HeadParams {
            d_model: d,
            queries: queries_out,
            mask_dim: cfg.seg_head.mask_dim,
            bbox_prefix: format!("transformer.decoder.bbox_embed.{nl}"),
            mask_decoder: MaskDecoderParams {
                layers: cfg.seg_head.n_layers,
                heads: cfg.seg_head.n_heads,
                points: cfg.seg_head.n_points,
                ffn: cfg.seg_head.d_ffn,
                eps: 1e-5,
            },
        };
        Ok(NetParams {
            swin,
            bert,
            input_proj: ip,
            enhancer,
            query_selection,
            decoder,
            temporal,
            head,
            queries_out,
        })
    }
}

fn bool_const(
    g: &mut Graph,
    hint: &str,
    shape: &[usize],
    v: bool,
) -> Result<crate::onnx::builder::Value> {
    let n = shape.iter().product();
    Ok(g.constant(hint, &Tensor::new(shape.to_vec(), Data::Bool(vec![v; n]))?))
}

/// Builds the frame engine: Swin → input projections → enhancer → query selection → decoder with pruning,
/// and the FPN on the encoder memory.
pub fn build_frame(
    w: &dyn Weights,
    p: &NetParams,
    geo: &Geometry,
    opts: &GraphOptions,
) -> Result<Graph> {
    let mut g = Graph::new(names::FRAME, opts.clone());
    let (d, lm) = (p.enhancer.d_model, geo.max_text);
    let image = g.input(names::IMAGE, DType::F32, &[1, 3, geo.height, geo.width]);
    let text = g.input(names::ENCODED_TEXT, DType::F32, &[1, lm, d]);
    let tmask = g.input(names::TEXT_TOKEN_MASK, DType::Bool, &[1, lm]);
    let sam = g.input(names::TEXT_SELF_ATTENTION_MASK, DType::Bool, &[1, lm, lm]);
    let pos_ids = g.input(names::POSITION_IDS, DType::I64, &[1, lm]);
    let root = Scope::new(w);
    let feats = g
        .scoped("swin", |g| swin_backbone(g, &root, &p.swin, &image))?
        .features;
    let srcs = input_proj(&mut g, &root.pp("input_proj"), &p.input_proj, &feats)?;
    let shapes = level_shapes(&srcs);
    if shapes != p.enhancer.level_shapes {
        return Err(Error::Graph(format!(
            "level shapes {shapes:?} differ from the planned {:?}",
            p.enhancer.level_shapes
        )));
    }
    if g.opts.taps {
        for (l, &(h, wd)) in shapes.iter().enumerate() {
            let m = bool_const(&mut g, "pad_mask", &[1, h, wd], false)?;
            g.tap(&format!("mask.{l}"), &m)?;
        }
        let ss: Vec<i64> = shapes
            .iter()
            .flat_map(|&(h, w)| [h as i64, w as i64])
            .collect();
        let ss = g.const_i64(&[shapes.len(), 2], ss)?;
        g.tap("encoder.spatial_shapes", &ss)?;
        let st: Vec<i64> = level_start_index(&shapes)
            .iter()
            .map(|&x| x as i64)
            .collect();
        let st = g.const_i64(&[shapes.len()], st)?;
        g.tap("encoder.level_start_index", &st)?;
        let vr = g.const_f32(&[1, shapes.len(), 2], vec![1.0; shapes.len() * 2])?;
        g.tap("encoder.valid_ratios", &vr)?;
        g.tap("encoder.text_in", &text)?;
        // The official encoder takes the *padding* mask (true = padded token).
        let pad = g.not(&tmask)?;
        g.tap("encoder.text_attention_mask", &pad)?;
        g.tap("encoder.text_position_ids", &pos_ids)?;
        g.tap("encoder.text_self_attention_masks", &sam)?;
    }
    let src = flatten_levels(&mut g, &srcs)?;
    let out = cross_modal(
        &mut g,
        &root,
        p,
        &shapes,
        &CrossInputs {
            src: &src,
            stride4: &feats[0],
            text: &text,
            text_token_mask: &tmask,
            text_self_attention_mask: &sam,
            position_ids: &pos_ids,
        },
    )?;
    out.emit(&mut g)?;
    Ok(g)
}

/// Builds the image engine: Swin → input projections, the part of [`build_frame`] that does not
/// depend on the prompt. Outputs the flattened levels `image_tokens [1, S, d]` and Swin's stride-4 map
/// `stride4 [1, C1, H4, W4]`, which are all [`build_cross`] needs of the image.
pub fn build_image(
    w: &dyn Weights,
    p: &NetParams,
    geo: &Geometry,
    opts: &GraphOptions,
) -> Result<Graph> {
    build_image_batched(w, p, geo, 1, opts)
}

/// [`build_image`] over `batch` frames (of several streams): `image [batch,3,H,W]` →
/// `image_tokens [batch,S,d]`, `stride4 [batch,C1,H4,W4]`; row `b` is frame `b`'s [`build_image`]
/// output (Swin and the projections are batch-first throughout).
pub fn build_image_batched(
    w: &dyn Weights,
    p: &NetParams,
    geo: &Geometry,
    batch: usize,
    opts: &GraphOptions,
) -> Result<Graph> {
    if batch == 0 {
        return Err(Error::Config(
            "image engine: batch must be at least 1".into(),
        ));
    }
    let mut g = Graph::new(names::IMAGE_PART, opts.clone());
    let image = g.input(names::IMAGE, DType::F32, &[batch, 3, geo.height, geo.width]);
    let root = Scope::new(w);
    let feats = g
        .scoped("swin", |g| swin_backbone(g, &root, &p.swin, &image))?
        .features;
    let srcs = input_proj(&mut g, &root.pp("input_proj"), &p.input_proj, &feats)?;
    let shapes = level_shapes(&srcs);
    if shapes != p.enhancer.level_shapes {
        return Err(Error::Graph(format!(
            "level shapes {shapes:?} differ from the planned {:?}",
            p.enhancer.level_shapes
        )));
    }
    let (c1, h4, w4) = stride4_shape(p, geo);
    if feats[0].shape != [batch, c1, h4, w4] {
        return Err(Error::Graph(format!(
            "Swin stride-4 map {:?}, expected [{batch}, {c1}, {h4}, {w4}]",
            feats[0].shape
        )));
    }
    let src = flatten_levels(&mut g, &srcs)?;
    g.output(names::IMAGE_TOKENS, &src)?;
    g.output(names::STRIDE4, &feats[0])?;
    Ok(g)
}

/// Swin's stride-4 map `(C1, H4, W4)`: the first stage's width at the patch grid.
pub fn stride4_shape(p: &NetParams, geo: &Geometry) -> (usize, usize, usize) {
    let (h, w) = p
        .swin
        .stage_shapes(geo.height, geo.width)
        .first()
        .copied()
        .unwrap_or((0, 0));
    (p.swin.embed_dim, h, w)
}

/// Builds the cross-modal engine for `batch` objects: enhancer → query selection → decoder with pruning,
/// and the FPN, on the image engine's outputs. Text inputs are those of [`build_frame`] with a leading
/// `batch` (`encoded_text [B,Lm,d]`, `text_token_mask [B,Lm]`, `text_self_attention_mask [B,Lm,Lm]`,
/// `position_ids [B,Lm]`); the image inputs stay `[1, ...]` and are broadcast to `B` inside the graph.
/// Outputs are the frame engine's at `[B, ...]`.
pub fn build_cross(
    w: &dyn Weights,
    p: &NetParams,
    geo: &Geometry,
    batch: usize,
    opts: &GraphOptions,
) -> Result<Graph> {
    if batch == 0 {
        return Err(Error::Config(
            "cross engine: batch must be at least 1".into(),
        ));
    }
    let mut g = Graph::new(names::CROSS, opts.clone());
    let root = Scope::new(w);
    let (b, d, lm) = (batch, p.enhancer.d_model, geo.max_text);
    let shapes = p.enhancer.level_shapes.clone();
    let s = p.enhancer.tokens();
    let (c1, h4, w4) = stride4_shape(p, geo);
    let tokens = g.input(names::IMAGE_TOKENS, DType::F32, &[1, s, d]);
    let s4 = g.input(names::STRIDE4, DType::F32, &[1, c1, h4, w4]);
    let text = g.input(names::ENCODED_TEXT, DType::F32, &[b, lm, d]);
    let tmask = g.input(names::TEXT_TOKEN_MASK, DType::Bool, &[b, lm]);
    let sam = g.input(names::TEXT_SELF_ATTENTION_MASK, DType::Bool, &[b, lm, lm]);
    let pos_ids = g.input(names::POSITION_IDS, DType::I64, &[b, lm]);
    let src = if b == 1 {
        tokens
    } else {
        g.expand(&tokens, &[b, s, d])?
    };
    let out = cross_modal(
        &mut g,
        &root,
        p,
        &shapes,
        &CrossInputs {
            src: &src,
            // kept at batch 1: the FPN's stride-4 adapter runs once and its sum broadcasts
            stride4: &s4,
            text: &text,
            text_token_mask: &tmask,
            text_self_attention_mask: &sam,
            position_ids: &pos_ids,
        },
    )?;
    out.emit(&mut g)?;
    Ok(g)
}

/// The image-side inputs (already at the batch size of the text) and the text inputs of the
/// cross-modal part.
struct CrossInputs<'a> {
    /// Flattened projected levels `[B, S, d]`.
    src: &'a crate::onnx::builder::Value,
    /// Swin stage-1 map `[B or 1, C1, H4, W4]` (after its output norm).
    stride4: &'a crate::onnx::builder::Value,
    text: &'a crate::onnx::builder::Value,
    text_token_mask: &'a crate::onnx::builder::Value,
    text_self_attention_mask: &'a crate::onnx::builder::Value,
    position_ids: &'a crate::onnx::builder::Value,
}

/// The outputs shared by the `frame` and `cross` engines, all `[B, ...]`.
struct CrossOut {
    objects: crate::onnx::builder::Value,
    refs: crate::onnx::builder::Value,
    memory_text: crate::onnx::builder::Value,
    f_seg: crate::onnx::builder::Value,
}

impl CrossOut {
    fn emit(&self, g: &mut Graph) -> Result<()> {
        g.output(names::OBJECTS, &self.objects)?;
        g.output(names::REFS, &self.refs)?;
        g.output(names::MEMORY_TEXT, &self.memory_text)?;
        g.output(names::F_SEG, &self.f_seg)
    }
}

/// Everything after the input projections: position terms, enhancer, query selection, decoder with
/// pruning and the FPN. Every module is batch-first, so the batch is whatever `i.src` carries.
fn cross_modal(
    g: &mut Graph,
    root: &Scope<'_>,
    p: &NetParams,
    shapes: &[(usize, usize)],
    i: &CrossInputs<'_>,
) -> Result<CrossOut> {
    let tr = root.pp("transformer");
    let pos = level_pos_flatten(g, &tr, &p.input_proj, shapes, i.src.dim(0))?;
    let pos = g.expand(&pos, &i.src.shape)?;
    if g.opts.taps {
        super::position::reference_points_const(g, shapes, i.src.dim(0))?;
    }
    let text_pos = text_pos_embed(g, &p.input_proj, i.position_ids)?;
    let enc = g.scoped("encoder", |g| {
        feature_enhancer(
            g,
            &tr.pp("encoder"),
            &p.enhancer,
            &EnhancerInputs {
                src: i.src,
                pos: &pos,
                text: i.text,
                text_pos: &text_pos,
                text_token_mask: i.text_token_mask,
                text_self_attention_mask: i.text_self_attention_mask,
            },
        )
    })?;
    let qs = g.scoped("query_selection", |g| {
        query_selection(
            g,
            &tr,
            &p.query_selection,
            &enc.memory,
            &enc.memory_text,
            i.text_token_mask,
        )
    })?;
    let dec = g.scoped("decoder", |g| {
        decoder(
            g,
            &tr.pp("decoder"),
            &p.decoder,
            &DecoderInputs {
                tgt: &qs.tgt,
                reference: &qs.reference,
                memory: &enc.memory,
                memory_text: &enc.memory_text,
                text_token_mask: i.text_token_mask,
            },
        )
    })?;
    let f_seg = g.scoped("fpn", |g| {
        let maps = memory_maps(g, &enc.memory, &shapes[..3])?;
        fpn(
            g,
            &root.pp("pixel_decoder"),
            &maps[2],
            &maps[1],
            &maps[0],
            i.stride4,
            p.head.mask_dim,
        )
    })?;
    Ok(CrossOut {
        objects: dec.hs,
        refs: dec.reference,
        memory_text: enc.memory_text,
        f_seg,
    })
}

/// What an export emits: the graph options themselves (parity taps, custom ops decomposed), under the
/// name the export API has always used.
pub type ExportOptions = GraphOptions;

/// Every checkpoint tensor the engines of `cfg` read, with the shape and type each call site declares, in
/// the order the graph reads them: the four engines built from a [`Declarations`] source (no weight is
/// read or copied) at a small geometry (weight shapes do not depend on the geometry).
pub fn declared_weights(cfg: &ModelConfig) -> Result<Vec<Declared>> {
    // 256×256 keeps S ≥ num_queries for every released configuration (S = 1360 for Swin-T/B).
    let geo = Geometry {
        height: 256,
        width: 256,
        max_text: 4,
        window: 2,
    };
    let src = Declarations::new();
    build_engines(&src, cfg, &geo, &ExportOptions::default())?;
    Ok(src.into_list())
}

/// The four engine graphs of one model at one geometry, in the order text, frame, temporal, head.
pub fn build_engines(
    w: &dyn Weights,
    cfg: &ModelConfig,
    geo: &Geometry,
    opts: &ExportOptions,
) -> Result<Vec<Graph>> {
    let p = NetParams::new(cfg, geo)?;
    Ok(vec![
        build_text(w, &p.bert, geo, opts)?,
        build_frame(w, &p, geo, opts)?,
        build_temporal(w, &p.temporal, p.queries_out, geo, opts)?,
        build_head(w, &p.head, geo, opts)?,
    ])
}

#[cfg(test)]
mod input_size_tests {
    use super::*;

    /// The official model selects 900 queries: 360x640 gives 45·80 + 23·40 + 12·20 + 6·10 = 4 820
    /// tokens; a 1x1 or 64x64 input gives far fewer and is refused by name before any graph is built.
    #[test]
    fn too_few_tokens_for_the_queries_are_refused() {
        let cfg = ModelConfig::swin_t();
        assert_eq!(feature_tokens(&cfg, 360, 640).unwrap(), 4820);
        assert!(check_enough_tokens(&cfg, 360, 640, "--short-side 360").is_ok());
        for (h, w) in [(1, 1), (64, 64)] {
            let e = check_enough_tokens(&cfg, h, w, "--short-side 1").unwrap_err();
            let e = e.to_string();
            assert!(
                e.contains("--short-side 1") && e.contains("900 queries"),
                "{e}"
            );
        }
    }
}
