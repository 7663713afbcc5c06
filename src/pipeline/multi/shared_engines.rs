//! The engines every stream of one input size shares, bound to their buffers: [`SharedEngines`],
//! with their sizes checked against each other when bound, and the text engine beside them.

use super::buffers::shape_of;
use super::engine_set::{Front, GeometryEngines, MultiEngineSet};
use super::shared_text::SharedText;
use crate::error::{Error, Result};
use crate::pipeline::session::{Bound, Dims, TextFeatures};
use crate::pipeline::slots::Slots;
use crate::pipeline::timing::StageTimes;

/// The engines all streams of one input size share, bound to their buffers, with the text engine
/// ([`SharedText`], possibly shared with the engines of other input sizes).
pub struct SharedEngines {
    text: SharedText,
    pub(super) image: Option<Bound>,
    pub(super) front: Bound,
    pub(super) temporal: Bound,
    pub(super) head: Bound,
    pub(super) batch: usize,
    /// Objects the temporal and head engines take per run: 1 or `batch`.
    pub(super) head_batch: usize,
    pub(super) image_batch: usize,
    pub(super) dims: Dims,
    pub(super) at: Slots,
}

impl SharedEngines {
    /// Binds the engines; `max_text_len` is the tokenizer cut (prompts longer than the engines'
    /// text length are refused anyway).
    pub fn new(e: MultiEngineSet, max_text_len: usize) -> Result<Self> {
        let (text, rest) = e.split_text();
        Self::with_text(SharedText::new(text, max_text_len)?, rest)
    }

    /// Binds the engines of one input size beside `text`, a text engine shared with the engines of
    /// other sizes (its features must fit these engines: the same text length and hidden size).
    pub fn with_text(text: SharedText, e: GeometryEngines) -> Result<Self> {
        let lm = text.text_len();
        let temporal = Bound::new(e.temporal);
        let head = Bound::new(e.head);
        let (image, front) = match e.front {
            Front::Split { image, cross } => (Some(Bound::new(image)), Bound::new(cross)),
            Front::Frame(f) => (None, Bound::new(f)),
        };
        let at = Slots::resolve(
            image.as_ref().map(Bound::engine),
            front.engine(),
            temporal.engine(),
            head.engine(),
        )?;
        let img = match &image {
            Some(i) => &i.inputs[at.image],
            None => &front.inputs[at.image],
        };
        let fo = &front.outputs[at.f_objects];
        let fs = &front.outputs[at.f_seg];
        let tw = &temporal.inputs[at.t_objects];
        let batch = shape_of(fo, 0);
        let image_batch = shape_of(img, 0);
        // A batched temporal engine has `[B, W, Ns, d]` bindings, the single one `[W, Ns, d]`.
        let (head_batch, window) = match tw.shape() {
            [hb, w, _, _] => (*hb, *w),
            s => (1, s.first().copied().unwrap_or(0)),
        };
        let dims = Dims {
            d: shape_of(fo, 2),
            ns: shape_of(fo, 1),
            lm,
            dm: shape_of(fs, 1),
            height: shape_of(img, 2),
            width: shape_of(img, 3),
            h4: shape_of(fs, 2),
            w4: shape_of(fs, 3),
            window,
        };
        let Dims {
            d,
            ns,
            lm,
            dm,
            h4,
            w4,
            window,
            ..
        } = dims;
        if batch == 0 || (image.is_none() && batch != 1) {
            return Err(Error::Backend(format!(
                "front engine objects {:?}: expected a leading batch ≥ 1 (1 for the frame engine)",
                fo.shape()
            )));
        }
        let b = batch;
        if head_batch != 1 && head_batch != b {
            return Err(Error::Backend(format!(
                "temporal/head engines take {head_batch} objects per run; expected 1 or the cross engine's {b}"
            )));
        }
        let hb = head_batch;
        let mut want = vec![
            (&front.inputs[at.f_text], b * lm * d, "front encoded_text"),
            (&front.inputs[at.f_token_mask], b * lm, "front token mask"),
            (
                &front.inputs[at.f_sam],
                b * lm * lm,
                "front self-attention mask",
            ),
            (&front.inputs[at.f_pos], b * lm, "front position ids"),
            (fo, b * ns * d, "front objects"),
            (&front.outputs[at.f_refs], b * ns * 4, "front refs"),
            (
                &front.outputs[at.f_memory_text],
                b * lm * d,
                "front memory_text",
            ),
            (fs, b * dm * h4 * w4, "front f_seg"),
            (tw, hb * window * ns * d, "temporal objects"),
            (
                &temporal.outputs[at.t_out],
                hb * window * ns * d,
                "temporal objects_t",
            ),
            (
                &temporal.inputs[at.t_sentence],
                hb * window * d,
                "temporal sentence",
            ),
            (&temporal.inputs[at.t_mask], hb * window, "temporal mask"),
            (&head.inputs[at.h_objects], hb * ns * d, "head objects_t"),
            (&head.inputs[at.h_refs], hb * ns * 4, "head refs"),
            (
                &head.inputs[at.h_memory_text],
                hb * lm * d,
                "head memory_text",
            ),
            (&head.inputs[at.h_token_mask], hb * lm, "head token mask"),
            (&head.inputs[at.h_seg], hb * dm * h4 * w4, "head f_seg"),
            (&head.outputs[at.h_logits], hb * ns, "head logits"),
            (&head.outputs[at.h_boxes], hb * ns * 4, "head boxes"),
            (
                &head.outputs[at.h_masks],
                hb * ns * h4 * w4,
                "head mask_logits",
            ),
        ];
        if let Some(i) = &image {
            want.push((
                &i.outputs[at.i_tokens],
                image_batch * front.inputs[at.c_tokens].numel(),
                "image tokens",
            ));
            want.push((
                &i.outputs[at.i_stride4],
                image_batch * front.inputs[at.c_stride4].numel(),
                "image stride4",
            ));
        }
        if image_batch == 0 || (image.is_none() && image_batch != 1) {
            return Err(Error::Backend(format!(
                "image input {:?}: expected a leading batch ≥ 1 (1 for the frame engine)",
                img.shape()
            )));
        }
        for (t, len, what) in want {
            if t.numel() != len || len == 0 {
                return Err(Error::Backend(format!(
                    "{what}: engine buffer of {} elements, expected {len}",
                    t.numel()
                )));
            }
        }
        if let Some(i) = &image {
            if image_batch == 1
                && (i.outputs[at.i_tokens].shape() != front.inputs[at.c_tokens].shape()
                    || i.outputs[at.i_stride4].shape() != front.inputs[at.c_stride4].shape())
            {
                return Err(Error::Backend(
                    "image outputs and cross inputs differ in shape".into(),
                ));
            }
        }
        if hb == b && front.outputs[at.f_seg].dtype() != head.inputs[at.h_seg].dtype() {
            return Err(Error::Backend(
                "front f_seg and head f_seg differ in element type".into(),
            ));
        }
        Ok(SharedEngines {
            text,
            image,
            front,
            temporal,
            head,
            batch,
            head_batch,
            image_batch,
            dims,
            at,
        })
    }

    /// The engines' sizes.
    pub fn dims(&self) -> Dims {
        self.dims
    }

    /// Objects the cross-modal part takes per run (1 for the whole frame engine).
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Objects the temporal and head engines take per run (1, or [`SharedEngines::batch`]).
    pub fn head_batch(&self) -> usize {
        self.head_batch
    }

    /// True when the image part runs once per frame, separately from the cross-modal part.
    pub fn is_split(&self) -> bool {
        self.image.is_some()
    }

    /// Frames (of several streams) the image engine takes per run (1 for the frame engine).
    pub fn image_batch(&self) -> usize {
        self.image_batch
    }

    /// Whether the image part runs as an engine of its own (the object set), so that several
    /// streams' frames can share one run ([`SharedEngines::run_images`]).
    pub fn has_image_engine(&self) -> bool {
        self.image.is_some()
    }

    /// Runs the image engine on the rows loaded with [`MultiStream::load_image_row`]; then each
    /// of those streams calls [`MultiStream::step_from_row`] with its row.
    ///
    /// [`MultiStream::load_image_row`]: super::MultiStream::load_image_row
    /// [`MultiStream::step_from_row`]: super::MultiStream::step_from_row
    pub fn run_images(&mut self) -> Result<()> {
        match self.image.as_mut() {
            Some(i) => i.run(),
            None => Err(Error::Config(
                "the frame engine has no separate image part to run".into(),
            )),
        }
    }

    /// Text features of `prompt` (the official demo's normalisation), from the cache or the text
    /// engine. An empty prompt or one longer than the engines' text length is an error.
    pub fn encode(&mut self, prompt: &str) -> Result<TextFeatures> {
        self.encode_timed(prompt, &mut StageTimes::default())
    }

    /// [`SharedEngines::encode`], recording the text engine's time in `times` ([`Stage::Text`])
    /// when it runs (a prompt not in the cache): the stream whose command needed it reports it.
    ///
    /// [`Stage::Text`]: crate::pipeline::timing::Stage::Text
    pub fn encode_timed(&mut self, prompt: &str, times: &mut StageTimes) -> Result<TextFeatures> {
        self.text.encode_timed(prompt, times)
    }

    /// The text engine (with its cache), to bind the engines of another input size beside it
    /// ([`SharedEngines::with_text`]).
    pub fn text(&self) -> &SharedText {
        &self.text
    }
}
