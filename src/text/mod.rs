//! Text input: the BERT uncased WordPiece tokenizer (through the `tokenizers` crate) and the
//! GroundingDINO caption rules (docs/model.md: Text): the trailing-period rule, the sub-sentence self-attention
//! mask, the restarting position ids and the 256-token cut.

mod caption;

pub use caption::{demo_normalize, fed_caption, sub_sentence_mask, sub_sentence_mask_cut};

use crate::error::{Error, Result};
use crate::tensor::{Data, Tensor};
use std::path::Path;

/// The tokenizer bundled with the binary (bert-base-uncased, from `tests/fixtures/tokenizer`).
const BUNDLED_TOKENIZER_JSON: &[u8] =
    include_bytes!("../../tests/fixtures/tokenizer/tokenizer.json");

/// Tokens GroundingDINO treats as sub-sentence separators, in its order.
pub const SPECIAL_TOKENS: [&str; 4] = ["[CLS]", "[SEP]", ".", "?"];

/// The official text length cap (`max_text_len`).
pub const MAX_TEXT_LEN: usize = 256;

/// A BERT WordPiece tokenizer plus the ids GroundingDINO needs.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Ids of `[CLS]`, `[SEP]`, `.`, `?`.
    special_ids: [u32; 4],
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("special_ids", &self.special_ids)
            .finish_non_exhaustive()
    }
}

/// A caption ready for the text engine: everything the official `infer` derives from it, batch 1.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EncodedCaption {
    /// The caption as fed to the tokenizer (after the `'.'` rule).
    pub caption: String,
    /// WordPiece tokens, with `[CLS]`/`[SEP]`.
    pub tokens: Vec<String>,
    /// Token ids.
    pub input_ids: Vec<i64>,
    /// Tokenizer attention mask (all 1 for batch 1).
    pub attention_mask: Vec<i64>,
    /// Token type ids (all 0).
    pub token_type_ids: Vec<i64>,
    /// Position ids restarting at 0 after every special token.
    pub position_ids: Vec<i64>,
    /// `len × len` row-major sub-sentence mask; `true` = token `i` may attend token `j`.
    pub self_attention_mask: Vec<bool>,
    /// Number of tokens kept (≤ the `max_len` asked for).
    pub len: usize,
    /// Whether tokens were cut to `max_len`.
    pub truncated: bool,
}

impl EncodedCaption {
    /// `input_ids` as an i64 tensor `[1, len]`.
    pub fn input_ids_tensor(&self) -> Result<Tensor> {
        Tensor::from_i64(&[1, self.len], self.input_ids.clone())
    }

    /// `attention_mask` as an i64 tensor `[1, len]`.
    pub fn attention_mask_tensor(&self) -> Result<Tensor> {
        Tensor::from_i64(&[1, self.len], self.attention_mask.clone())
    }

    /// `token_type_ids` as an i64 tensor `[1, len]`.
    pub fn token_type_ids_tensor(&self) -> Result<Tensor> {
        Tensor::from_i64(&[1, self.len], self.token_type_ids.clone())
    }

    /// `position_ids` as an i64 tensor `[1, len]`.
    pub fn position_ids_tensor(&self) -> Result<Tensor> {
        Tensor::from_i64(&[1, self.len], self.position_ids.clone())
    }

    /// The sub-sentence mask as a bool tensor `[1, len, len]` (true = may attend).
    pub fn self_attention_mask_tensor(&self) -> Result<Tensor> {
        Tensor::new(
            vec![1, self.len, self.len],
            Data::Bool(self.self_attention_mask.clone()),
        )
    }

    /// Row `i` of the mask as a `'0'/'1'` string (the fixture notation).
    pub fn mask_row_string(&self, i: usize) -> String {
        self.self_attention_mask[i * self.len..(i + 1) * self.len]
            .iter()
            .map(|&b| if b { '1' } else { '0' })
            .collect()
    }
}

impl Tokenizer {
    /// The bert-base-uncased tokenizer embedded in the binary.
    pub fn bundled() -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_bytes(BUNDLED_TOKENIZER_JSON)
            .map_err(|e| Error::Text(format!("bundled tokenizer.json: {e}")))?;
        Self::from_inner(inner)
    }

    /// Loads a BERT uncased tokenizer: a `tokenizer.json` (HuggingFace `tokenizers` serialisation)
    /// or a WordPiece `vocab.txt` (one token per line), told apart by content.
    pub fn from_file(p: &Path) -> Result<Self> {
        let bytes = std::fs::read(p).map_err(|e| Error::io(p, e))?;
        let is_json = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
        if !is_json {
            return Self::from_vocab(&bytes)
                .map_err(|e| Error::Text(format!("{}: {e}", p.display())));
        }
        let inner = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| {
            Error::Text(format!("{}: not a valid tokenizer.json: {e}", p.display()))
        })?;
        Self::from_inner(inner)
    }

    /// Builds the `BertTokenizerFast(do_lower_case=True)` pipeline from a WordPiece vocabulary:
    /// BERT normaliser (clean text, CJK split, lower-case, strip accents), BERT pre-tokenizer,
    /// WordPiece with `##` and 100 characters per word, `[CLS] … [SEP]`.
    pub fn from_vocab(vocab_txt: &[u8]) -> Result<Self> {
        use tokenizers::models::wordpiece::WordPiece;
        use tokenizers::normalizers::bert::BertNormalizer;
        use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
        use tokenizers::processors::bert::BertProcessing;
        use tokenizers::AddedToken;
        if let Err(e) = std::str::from_utf8(vocab_txt) {
            return Err(Error::Text(format!(
                "vocabulary is not UTF-8 (at byte {})",
                e.valid_up_to()
            )));
        }
        let vocab = WordPiece::read_bytes(vocab_txt)
            .map_err(|e| Error::Text(format!("vocabulary: {e}")))?;
        let id = |t: &str| {
            vocab.get(t).copied().ok_or_else(|| {
                Error::Text(format!("vocabulary has no {t:?} (not a BERT vocab.txt?)"))
            })
        };
        let (cls, sep) = (id("[CLS]")?, id("[SEP]")?);
        let specials: Vec<AddedToken> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
            .iter()
            .filter(|t| vocab.contains_key(**t))
            .map(|t| AddedToken::from(t.to_string(), true))
            .collect();
        let wp = WordPiece::builder()
            .vocab(vocab)
            .unk_token("[UNK]".into())
            .continuing_subword_prefix("##".into())
            .max_input_chars_per_word(100)
            .build()
            .map_err(|e| Error::Text(format!("WordPiece: {e}")))?;
        let mut inner = tokenizers::Tokenizer::new(wp);
        inner
            .with_normalizer(Some(BertNormalizer::new(true, true, None, true)))
            .map_err(|e| Error::Text(format!("normalizer: {e}")))?;
        inner.with_pre_tokenizer(Some(BertPreTokenizer));
        inner.with_post_processor(Some(BertProcessing::new(
            ("[SEP]".into(), sep),
            ("[CLS]".into(), cls),
        )));
        inner
            .add_special_tokens(specials)
            .map_err(|e| Error::Text(format!("special tokens: {e}")))?;
        Self::from_inner(inner)
    }

    fn from_inner(mut inner: tokenizers::Tokenizer) -> Result<Self> {
        // The official call is `tokenizer(captions, padding="longest")` for batch 1, no truncation:
        // strip any padding/truncation a tokenizer.json may carry.
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| Error::Text(format!("tokenizer: cannot disable truncation: {e}")))?;
        let mut special_ids = [0u32; 4];
        for (slot, tok) in special_ids.iter_mut().zip(SPECIAL_TOKENS) {
            *slot = inner.token_to_id(tok).ok_or_else(|| {
                Error::Text(format!(
                    "tokenizer has no token {tok:?} (not a BERT vocabulary?)"
                ))
            })?;
        }
        Ok(Tokenizer { inner, special_ids })
    }

    /// Ids of `[CLS]`, `[SEP]`, `.`, `?` (101, 102, 1012, 1029 for bert-base-uncased).
    pub fn special_ids(&self) -> [u32; 4] {
        self.special_ids
    }

    /// Encodes a prompt exactly as the official `GroundingDINO.infer` does with a raw expression
    /// (the eval scripts): append `'.'` unless it already ends with one, tokenize (the tokenizer
    /// lower-cases and strips accents), build the sub-sentence mask and position ids on the full
    /// sequence, then keep the first `max_len` tokens (logged when it cuts).
    ///
    /// For the demo's normalisation (lower-case, collapse whitespace) call [`demo_normalize`] first.
    pub fn encode(&self, prompt: &str, max_len: usize) -> Result<EncodedCaption> {
        if max_len == 0 {
            return Err(Error::Text("max_len must be at least 1".into()));
        }
        let caption = fed_caption(prompt);
        let enc = self
            .inner
            .encode_fast(caption.as_str(), true)
            .map_err(|e| Error::Text(format!("tokenizing {:?}: {e}", short(&caption))))?;
        let ids = enc.get_ids();
        let full_len = ids.len();
        let special: Vec<bool> = ids.iter().map(|id| self.special_ids.contains(id)).collect();
        let len = full_len.min(max_len);
        let (self_attention_mask, position_ids) = sub_sentence_mask_cut(&special, len);
        let truncated = full_len > len;
        if truncated {
            log::warn!(
                "prompt has {full_len} tokens; keeping the first {len} (max_text_len) as the official model does"
            );
        }
        Ok(EncodedCaption {
            caption,
            // `encode_fast` skips offsets and leaves token strings empty: take them from the vocab.
            tokens: ids[..len]
                .iter()
                .map(|&id| self.inner.id_to_token(id).unwrap_or_else(|| "[UNK]".into()))
                .collect(),
            input_ids: ids[..len].iter().map(|&x| x as i64).collect(),
            attention_mask: enc.get_attention_mask()[..len]
                .iter()
                .map(|&x| x as i64)
                .collect(),
            token_type_ids: enc.get_type_ids()[..len]
                .iter()
                .map(|&x| x as i64)
                .collect(),
            position_ids,
            self_attention_mask,
            len,
            truncated,
        })
    }

    /// [`Tokenizer::encode`] for raw bytes (e.g. a prompt read from a file or socket): invalid UTF-8
    /// is an error naming the byte offset.
    pub fn encode_bytes(&self, prompt: &[u8], max_len: usize) -> Result<EncodedCaption> {
        let s = std::str::from_utf8(prompt).map_err(|e| {
            Error::Text(format!(
                "prompt is not valid UTF-8 (at byte {})",
                e.valid_up_to()
            ))
        })?;
        self.encode(s, max_len)
    }

    /// The user-facing entry: rejects an empty or whitespace-only prompt (it refers to nothing),
    /// then applies the demo normalisation and [`Tokenizer::encode`].
    pub fn encode_prompt(&self, prompt: &str, max_len: usize) -> Result<EncodedCaption> {
        let norm = demo_normalize(prompt);
        if norm.is_empty() {
            return Err(Error::Text(
                "prompt is empty: describe the object to segment, e.g. \"the person holding a red cup\"".into(),
            ));
        }
        self.encode(&norm, max_len)
    }
}

/// First 60 characters, for error messages.
fn short(s: &str) -> String {
    let mut out: String = s.chars().take(60).collect();
    if s.chars().nth(60).is_some() {
        out.push('…');
    }
    out
}
