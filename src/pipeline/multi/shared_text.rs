//! The text engine shared by every input size: [`SharedText`], bound to its buffers with the
//! tokenizer and a small cache of text features.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::buffers::shape_of;
use crate::backend::Engine;
use crate::error::{Error, Result};
use crate::graph::engines::names as n;
use crate::pipeline::session::{encode_caption, Bound, TextFeatures};
use crate::pipeline::timing::{Stage, StageTimes};
use crate::text::Tokenizer;

/// Prompts whose text features the shared engines keep (least recently used dropped first).
const TEXT_CACHE: usize = 16;

/// The text engine bound to its buffers, with the tokenizer and a small cache of text features (a
/// prompt used on several streams or re-added costs no text run). Cloning shares it: the engine
/// sets of several input sizes ([`SharedEngines::with_text`]) encode prompts with one text engine
/// and one cache, since text features do not depend on the image size.
///
/// [`SharedEngines::with_text`]: super::SharedEngines::with_text
#[derive(Clone)]
pub struct SharedText(Arc<Mutex<TextEncoder>>);

struct TextEncoder {
    text: Bound,
    /// The engine's text length (tokens).
    lm: usize,
    tokenizer: Tokenizer,
    max_text_len: usize,
    cache: crate::pipeline::mru::Mru<(String, TextFeatures)>,
}

impl SharedText {
    /// Binds the text engine; `max_text_len` is the tokenizer cut (prompts longer than the
    /// engine's text length are refused anyway).
    pub fn new(text: Box<dyn Engine>, max_text_len: usize) -> Result<Self> {
        let text = Bound::new(text);
        let lm = shape_of(&text.outputs[text.output_index(n::ENCODED_TEXT)?], 1);
        if lm == 0 {
            return Err(Error::Backend(
                "text engine: encoded_text has no tokens".into(),
            ));
        }
        Ok(SharedText(Arc::new(Mutex::new(TextEncoder {
            text,
            lm,
            tokenizer: Tokenizer::bundled()?,
            max_text_len,
            cache: crate::pipeline::mru::Mru::new(TEXT_CACHE),
        }))))
    }

    /// The text engine's length in tokens.
    pub fn text_len(&self) -> usize {
        self.lock().lm
    }

    /// Whether `self` and `other` are the same text engine.
    pub fn same(&self, other: &SharedText) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TextEncoder> {
        // Only a panic while encoding poisons the lock; the encoder holds nothing half-written a
        // later prompt could read (its buffers are rewritten per run, the cache per entry), so
        // prompts keep working rather than failing for the rest of the run.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// [`SharedEngines::encode_timed`].
    ///
    /// [`SharedEngines::encode_timed`]: super::SharedEngines::encode_timed
    pub(super) fn encode_timed(
        &self,
        prompt: &str,
        times: &mut StageTimes,
    ) -> Result<TextFeatures> {
        let mut guard = self.lock();
        let t = &mut *guard;
        if let Some((_, tf)) = t.cache.take(|(p, _)| p == prompt) {
            return Ok(tf.clone());
        }
        let t0 = Instant::now();
        let cap =
            crate::pipeline::session::tokenize(&t.tokenizer, prompt, false, t.max_text_len, t.lm)?;
        let tf = encode_caption(&mut t.text, t.lm, &cap)?;
        times.record(Stage::Text, t0.elapsed());
        Ok(t.cache.put((prompt.to_string(), tf)).1.clone())
    }
}
