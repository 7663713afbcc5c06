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

impl NetParams {
    /// Derives every module's sizes from a model configuration at a given image size.
    pub fn new(cfg: &ModelConfig, geo: &Geometry) -> Result<Self> {
        let d = cfg.hidden_dim;
        let s = &cfg.swin;
        let mut swin = SwinParams::new(s.embed_dim, &s.depths, &s.num_heads, s.window_size);
        swin.patch = s.patch_size;
        let stages = swin.stage_shapes(geo.height, geo.width);
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
        let b = &cfg.bert;
        let mut bert = BertParams::new(b.hidden_size, b.num_hidden_layers, b.num_attention_heads);
        bert.eps = b.layer_norm_eps;
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
) -> Result<super::builder::Value> {
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
    let feats = g
        .scoped("swin", |g| swin_backbone(g, w, &p.swin, &image))?
        .features;
    let srcs = input_proj(&mut g, w, &p.input_proj, &feats)?;
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
        let pad = g.not(&tmask);
        g.tap("encoder.text_attention_mask", &pad)?;
        g.tap("encoder.text_position_ids", &pos_ids)?;
        g.tap("encoder.text_self_attention_masks", &sam)?;
    }
    let src = flatten_levels(&mut g, &srcs)?;
    let pos = level_pos_flatten(&mut g, w, &p.input_proj, &shapes, 1)?;
    let pos = g.expand(&pos, &src.shape)?;
    if g.opts.taps {
        super::input_proj::reference_points_const(&mut g, &shapes, 1)?;
    }
    let text_pos = text_pos_embed(&mut g, &p.input_proj, &pos_ids)?;
    let enc = g.scoped("encoder", |g| {
        feature_enhancer(
            g,
            w,
            &p.enhancer,
            &EnhancerInputs {
                src: &src,
                pos: &pos,
                text: &text,
                text_pos: &text_pos,
                text_token_mask: &tmask,
                text_self_attention_mask: &sam,
            },
        )
    })?;
    let qs = g.scoped("query_selection", |g| {
        query_selection(
            g,
            w,
            &p.query_selection,
            &enc.memory,
            &enc.memory_text,
            &tmask,
        )
    })?;
    let dec = g.scoped("decoder", |g| {
        decoder(
            g,
            w,
            &p.decoder,
            &DecoderInputs {
                tgt: &qs.tgt,
                reference: &qs.reference,
                memory: &enc.memory,
                memory_text: &enc.memory_text,
                text_token_mask: &tmask,
            },
        )
    })?;
    let f_seg = g.scoped("fpn", |g| {
        let maps = memory_maps(g, &enc.memory, &shapes[..3])?;
        fpn(g, w, &maps[2], &maps[1], &maps[0], &feats[0])
    })?;
    g.output(names::OBJECTS, &dec.hs)?;
    g.output(names::REFS, &dec.reference)?;
    g.output(names::MEMORY_TEXT, &enc.memory_text)?;
    g.output(names::F_SEG, &f_seg)?;
    Ok(g)
}

/// What an export emits.
#[derive(Clone, Debug, Default)]
pub struct ExportOptions {
    /// Add parity taps as extra outputs.
    pub taps: bool,
    /// Emit the custom ops as standard ONNX.
    pub decompose_custom_ops: bool,
}

impl ExportOptions {
    fn graph(&self) -> GraphOptions {
        GraphOptions {
            taps: self.taps,
            decompose_custom_ops: self.decompose_custom_ops,
        }
    }
}

/// The four engine graphs of one model at one geometry, in the order text, frame, temporal, head.
pub fn build_engines(
    w: &dyn Weights,
    cfg: &ModelConfig,
    geo: &Geometry,
    opts: &ExportOptions,
) -> Result<Vec<Graph>> {
    let p = NetParams::new(cfg, geo)?;
    let go = opts.graph();
    Ok(vec![
        build_text(w, &p.bert, geo, &go)?,
        build_frame(w, &p, geo, &go)?,
        build_temporal(w, &p.temporal, p.queries_out, geo, &go)?,
        build_head(w, &p.head, geo, &go)?,
    ])
}
