//! BERT text encoder and `feat_map` (docs/model.md: Text).
//!
//! GroundingDINO feeds BERT the sub-sentence position ids and the 3-D sub-sentence attention mask
//! (`[B, L, L]`, true = may attend), turned into an additive mask of `f32::MIN` on blocked pairs. The
//! encoder is the standard post-LN one with exact GELU and LayerNorm eps 1e-12; the pooler is unused.

use crate::error::{Error, Result};
use crate::onnx::builder::{Bias, Graph, Value};
use crate::onnx::Scope;
use crate::tensor::DType;

/// The numbers the BERT encoder needs.
#[derive(Clone, Debug, PartialEq)]
pub struct BertParams {
    /// Hidden size (768 for bert-base).
    pub hidden: usize,
    /// Encoder layers (12).
    pub layers: usize,
    /// Attention heads (12).
    pub heads: usize,
    /// Inner size of the feed-forward layer (3072).
    pub intermediate: usize,
    /// WordPiece vocabulary (30522).
    pub vocab: usize,
    /// Rows of the position embedding table (512).
    pub max_positions: usize,
    /// Rows of the token-type embedding table (2).
    pub type_vocab: usize,
    /// Output width of `feat_map` (the transformer's `d_model`).
    pub d_model: usize,
    /// LayerNorm epsilon (1e-12).
    pub eps: f32,
    /// State-dict prefix of the BERT model, without the trailing dot (`bert`).
    pub prefix: String,
    /// State-dict prefix of the `feat_map` Linear (hidden → d_model).
    pub feat_map: String,
}

impl BertParams {
    /// bert-base-uncased as used by GroundingDINO, mapped to a `d_model`-wide transformer.
    pub fn bert_base(d_model: usize) -> Self {
        Self::from_config(&crate::config::BertConfig::base_uncased(), d_model)
    }

    /// The encoder a model configuration describes, with the official prefixes.
    pub fn from_config(c: &crate::config::BertConfig, d_model: usize) -> Self {
        BertParams {
            hidden: c.hidden_size,
            layers: c.num_hidden_layers,
            heads: c.num_attention_heads,
            intermediate: c.intermediate_size,
            vocab: c.vocab_size,
            max_positions: c.max_position_embeddings,
            type_vocab: c.type_vocab_size,
            d_model,
            eps: c.layer_norm_eps,
            prefix: "bert".into(),
            feat_map: "feat_map".into(),
        }
    }
}

/// The text inputs of the text engine, all `[B, L]` i64 except the mask `[B, L, L]` bool.
pub struct TextInputs<'a> {
    /// WordPiece ids.
    pub input_ids: &'a Value,
    /// Token type ids (all zero for GroundingDINO).
    pub token_type_ids: &'a Value,
    /// Sub-sentence position ids.
    pub position_ids: &'a Value,
    /// Sub-sentence mask, true = may attend.
    pub self_attention_mask: &'a Value,
}

impl TextInputs<'_> {
    fn validate(&self) -> Result<(usize, usize)> {
        let (b, l) = match self.input_ids.shape.as_slice() {
            &[b, l] => (b, l),
            s => {
                return Err(Error::Graph(format!(
                    "bert: input_ids must be [B, L], got {s:?}"
                )))
            }
        };
        for (name, v) in [
            ("input_ids", self.input_ids),
            ("token_type_ids", self.token_type_ids),
            ("position_ids", self.position_ids),
        ] {
            if v.dtype != DType::I64 || v.shape != [b, l] {
                return Err(Error::Graph(format!(
                    "bert: {name} must be i64 [{b}, {l}], got {:?} {:?}",
                    v.dtype, v.shape
                )));
            }
        }
        let m = self.self_attention_mask;
        if m.dtype != DType::Bool || m.shape != [b, l, l] {
            return Err(Error::Graph(format!(
                "bert: text_self_attention_mask must be bool [{b}, {l}, {l}], got {:?} {:?}",
                m.dtype, m.shape
            )));
        }
        Ok((b, l))
    }
}

/// BERT embeddings + encoder → `last_hidden_state [B, L, hidden]`. Taps `text.bert.embeddings`,
/// `text.bert.layer{i}` and `text.bert.last_hidden_state`.
/// Weights under `root`'s [`BertParams::prefix`].
pub fn bert(g: &mut Graph, root: &Scope<'_>, p: &BertParams, t: &TextInputs<'_>) -> Result<Value> {
    let (b, l) = t.validate()?;
    if p.heads == 0 || !p.hidden.is_multiple_of(p.heads) {
        return Err(Error::Graph(format!(
            "bert: hidden {} not divisible by {} heads",
            p.hidden, p.heads
        )));
    }
    let w = &root.pp(&p.prefix);
    g.scoped("bert", |g| {
        let x = embeddings(g, w, p, t)?;
        g.tap("text.bert.embeddings", &x)?;
        // Additive mask [B, 1, L, L]: 0 where allowed, f32::MIN where blocked (HF extended mask).
        let zero = g.scalar(0.0);
        let neg = g.scalar(f32::MIN);
        let add_mask = g.where_(t.self_attention_mask, &zero, &neg)?;
        let add_mask = g.reshape(&add_mask, &[b, 1, l, l])?;
        let mut x = x;
        for i in 0..p.layers {
            x = g.scoped(&format!("layer{i}"), |g| {
                bert_layer(g, &w.pp("encoder").pp("layer").pp(i), p, &x, &add_mask)
            })?;
            g.tap(&format!("text.bert.layer{i}"), &x)?;
        }
        g.tap("text.bert.last_hidden_state", &x)?;
        Ok(x)
    })
}

/// word(ids) + token_type(tt), then + position(pos), then LayerNorm — the transformers order.
fn embeddings(g: &mut Graph, w: &Scope<'_>, p: &BertParams, t: &TextInputs<'_>) -> Result<Value> {
    let e = w.pp("embeddings");
    let h = p.hidden;
    let word = g.weight(&e.pp("word_embeddings"), "weight", &[p.vocab, h])?;
    let tt = g.weight(&e.pp("token_type_embeddings"), "weight", &[p.type_vocab, h])?;
    let pos = g.weight(
        &e.pp("position_embeddings"),
        "weight",
        &[p.max_positions, h],
    )?;
    let ln = e.pp("LayerNorm");
    let e = g.gather(&word, t.input_ids, 0)?;
    let e_tt = g.gather(&tt, t.token_type_ids, 0)?;
    let e = g.add(&e, &e_tt)?;
    let e_pos = g.gather(&pos, t.position_ids, 0)?;
    let e = g.add(&e, &e_pos)?;
    g.layer_norm(&ln, &e, p.eps)
}

/// One post-LN encoder layer: `LN(x + SelfAttn(x))`, then `LN(h + W2·GELU(W1·h))`.
fn bert_layer(
    g: &mut Graph,
    w: &Scope<'_>,
    p: &BertParams,
    x: &Value,
    add_mask: &Value,
) -> Result<Value> {
    let (b, l, d) = (x.dim(0), x.dim(1), x.dim(2));
    let heads = p.heads;
    let dh = d / heads;
    let att = w.pp("attention");
    let split = |g: &mut Graph, name: &str| -> Result<Value> {
        let y = g.linear(&att.pp("self").pp(name), x, d, Bias::With)?;
        let y = g.reshape(&y, &[b, l, heads, dh])?;
        g.transpose(&y, &[0, 2, 1, 3])
    };
    let q = split(g, "query")?;
    let k = split(g, "key")?;
    let v = split(g, "value")?;
    let kt = g.transpose(&k, &[0, 1, 3, 2])?;
    let s = g.matmul(&q, &kt)?;
    let s = g.mul_scalar(&s, (dh as f64).powf(-0.5) as f32)?;
    let s = g.add(&s, add_mask)?;
    let pr = g.softmax(&s, -1)?;
    let o = g.matmul(&pr, &v)?;
    let o = g.transpose(&o, &[0, 2, 1, 3])?;
    let o = g.reshape(&o, &[b, l, d])?;
    let ao = att.pp("output");
    let o = g.linear(&ao.pp("dense"), &o, d, Bias::With)?;
    let o = g.add(&o, x)?;
    let h = g.layer_norm(&ao.pp("LayerNorm"), &o, p.eps)?;
    let f = g.linear(
        &w.pp("intermediate").pp("dense"),
        &h,
        p.intermediate,
        Bias::With,
    )?;
    let f = g.gelu(&f)?;
    let out = w.pp("output");
    let f = g.linear(&out.pp("dense"), &f, d, Bias::With)?;
    let f = g.add(&f, &h)?;
    g.layer_norm(&out.pp("LayerNorm"), &f, p.eps)
}

/// `feat_map` (under `root`'s [`BertParams::feat_map`]): Linear hidden → d_model on the BERT output.
/// Taps `text.encoded_text`.
pub fn feat_map(g: &mut Graph, root: &Scope<'_>, p: &BertParams, hidden: &Value) -> Result<Value> {
    let y = g.linear(&root.pp(&p.feat_map), hidden, p.d_model, Bias::With)?;
    g.tap("text.encoded_text", &y)?;
    Ok(y)
}

/// BERT followed by `feat_map`: the whole text engine, `encoded_text [B, L, d_model]`.
pub fn text_encoder(
    g: &mut Graph,
    root: &Scope<'_>,
    p: &BertParams,
    t: &TextInputs<'_>,
) -> Result<Value> {
    let h = bert(g, root, p, t)?;
    feat_map(g, root, p, &h)
}
