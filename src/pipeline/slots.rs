//! Binding positions of the streaming engines (image, frame or cross, temporal, head), resolved once
//! by name: shared by the host sessions ([`crate::pipeline::stream`], [`crate::pipeline::multi`]) and,
//! with feature `cuda`, the device-resident session.

use crate::backend::Engine;
use crate::error::Result;
use crate::graph::engines::names as n;
use crate::pipeline::session::binding_index;

/// Binding positions of the streaming engines, resolved once.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Slots {
    /// The image input: of the image engine (object set) or of the frame engine.
    pub(crate) image: usize,
    /// Object set only: the image engine's outputs and the cross engine's inputs they are.
    pub(crate) i_tokens: usize,
    pub(crate) i_stride4: usize,
    pub(crate) c_tokens: usize,
    pub(crate) c_stride4: usize,
    /// Of the front engine (frame, or cross).
    pub(crate) f_text: usize,
    pub(crate) f_token_mask: usize,
    pub(crate) f_sam: usize,
    pub(crate) f_pos: usize,
    pub(crate) f_objects: usize,
    pub(crate) f_refs: usize,
    pub(crate) f_memory_text: usize,
    pub(crate) f_seg: usize,
    pub(crate) t_objects: usize,
    pub(crate) t_sentence: usize,
    pub(crate) t_mask: usize,
    pub(crate) t_out: usize,
    pub(crate) h_objects: usize,
    pub(crate) h_refs: usize,
    pub(crate) h_memory_text: usize,
    pub(crate) h_token_mask: usize,
    pub(crate) h_seg: usize,
    pub(crate) h_logits: usize,
    pub(crate) h_boxes: usize,
    pub(crate) h_masks: usize,
}

impl Slots {
    /// Resolves every binding by name: `image` is the object set's image engine (`None`: the
    /// image input is the front engine's), `f` the frame or cross engine.
    pub(crate) fn resolve(
        image: Option<&dyn Engine>,
        f: &dyn Engine,
        t: &dyn Engine,
        h: &dyn Engine,
    ) -> Result<Self> {
        let ix = binding_index;
        let (image_at, i_tokens, i_stride4, c_tokens, c_stride4) = match image {
            Some(i) => (
                ix(i.inputs(), n::IMAGE, i.name())?,
                ix(i.outputs(), n::IMAGE_TOKENS, i.name())?,
                ix(i.outputs(), n::STRIDE4, i.name())?,
                ix(f.inputs(), n::IMAGE_TOKENS, f.name())?,
                ix(f.inputs(), n::STRIDE4, f.name())?,
            ),
            None => (ix(f.inputs(), n::IMAGE, f.name())?, 0, 0, 0, 0),
        };
        Ok(Slots {
            image: image_at,
            i_tokens,
            i_stride4,
            c_tokens,
            c_stride4,
            f_text: ix(f.inputs(), n::ENCODED_TEXT, f.name())?,
            f_token_mask: ix(f.inputs(), n::TEXT_TOKEN_MASK, f.name())?,
            f_sam: ix(f.inputs(), n::TEXT_SELF_ATTENTION_MASK, f.name())?,
            f_pos: ix(f.inputs(), n::POSITION_IDS, f.name())?,
            f_objects: ix(f.outputs(), n::OBJECTS, f.name())?,
            f_refs: ix(f.outputs(), n::REFS, f.name())?,
            f_memory_text: ix(f.outputs(), n::MEMORY_TEXT, f.name())?,
            f_seg: ix(f.outputs(), n::F_SEG, f.name())?,
            t_objects: ix(t.inputs(), n::OBJECTS, t.name())?,
            t_sentence: ix(t.inputs(), n::SENTENCE, t.name())?,
            t_mask: ix(t.inputs(), n::FRAME_MASK, t.name())?,
            t_out: ix(t.outputs(), n::OBJECTS_T, t.name())?,
            h_objects: ix(h.inputs(), n::OBJECTS_T, h.name())?,
            h_refs: ix(h.inputs(), n::REFS, h.name())?,
            h_memory_text: ix(h.inputs(), n::MEMORY_TEXT, h.name())?,
            h_token_mask: ix(h.inputs(), n::TEXT_TOKEN_MASK, h.name())?,
            h_seg: ix(h.inputs(), n::F_SEG, h.name())?,
            h_logits: ix(h.outputs(), n::LOGITS, h.name())?,
            h_boxes: ix(h.outputs(), n::BOXES, h.name())?,
            h_masks: ix(h.outputs(), n::MASK_LOGITS, h.name())?,
        })
    }
}
