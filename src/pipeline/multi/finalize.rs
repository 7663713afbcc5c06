//! [`MultiStream::finalize`]: the first object's frames since its prompt re-scored as one clip, as
//! the offline session would.

use super::buffers::{row0, set_bool_row};
use super::shared_engines::SharedEngines;
use super::stream::MultiStream;
use crate::error::{Error, Result};
use crate::pipeline::post::Selection;
use crate::pipeline::session::{Dims, VideoResult};
use crate::pipeline::stream::{bools_mut, clip_row, copy, part, pick3};

impl MultiStream {
    /// Re-scores the first object's frames since its prompt as one clip, as the offline session
    /// would (temporal engine over the whole window, heads for every frame, full-clip mean
    /// selection, 0/1 masks of the chosen tracks at `out_size`). Needs `keep_clip` and at most `W`
    /// frames.
    pub fn finalize(
        &mut self,
        eng: &mut SharedEngines,
        selection: Selection,
    ) -> Result<VideoResult> {
        let Dims {
            d,
            ns,
            lm,
            dm,
            h4,
            w4,
            window,
            ..
        } = self.dims;
        let at = eng.at;
        let Some(o) = self.objects.first() else {
            return Err(Error::Source("finalize: no object".into()));
        };
        let Some(clip) = o.clip.as_ref() else {
            return Err(Error::Config(
                "finalize needs keep_clip (and keeps the first object added to an empty stream)"
                    .into(),
            ));
        };
        let t =
            crate::pipeline::session::clip_frames(o.frames, clip.refs.len(), o.window.capacity())?;
        let [ob, sn, m] = pick3(
            &mut eng.temporal.inputs,
            [at.t_objects, at.t_sentence, at.t_mask],
        )?;
        // Row 0 of batched engines (the other rows' outputs are not read).
        o.window.write_chronological(
            &mut ob.f32s_mut()?[..window * ns * d],
            &mut sn.f32s_mut()?[..window * d],
            &mut bools_mut(m)?[..window],
        )?;
        eng.temporal.run()?;
        set_bool_row(&mut eng.head.inputs[at.h_token_mask], 0, &o.text.token_mask)?;
        let hw = h4 * w4;
        let mut logits = vec![0f32; t * ns];
        let mut boxes = vec![0f32; t * ns * 4];
        let mut mask_logits = vec![0f32; t * ns * hw];
        for f in 0..t {
            let ot = eng.temporal.outputs[at.t_out].f32s()?;
            let h = &mut eng.head;
            copy(
                row0(&mut h.inputs[at.h_objects], ns * d)?,
                part(ot, f * ns * d, ns * d, "objects_t")?,
                "objects_t",
            )?;
            copy(
                row0(&mut h.inputs[at.h_refs], ns * 4)?,
                clip_row(&clip.refs, f)?,
                "refs",
            )?;
            copy(
                row0(&mut h.inputs[at.h_memory_text], lm * d)?,
                clip_row(&clip.memory_text, f)?,
                "memory_text",
            )?;
            copy(
                row0(&mut h.inputs[at.h_seg], dm * hw)?,
                clip_row(&clip.f_seg, f)?,
                "f_seg",
            )?;
            h.run()?;
            logits[f * ns..(f + 1) * ns].copy_from_slice(part(
                h.outputs[at.h_logits].f32s()?,
                0,
                ns,
                "logits",
            )?);
            boxes[f * ns * 4..(f + 1) * ns * 4].copy_from_slice(part(
                h.outputs[at.h_boxes].f32s()?,
                0,
                ns * 4,
                "boxes",
            )?);
            mask_logits[f * ns * hw..(f + 1) * ns * hw].copy_from_slice(part(
                h.outputs[at.h_masks].f32s()?,
                0,
                ns * hw,
                "mask_logits",
            )?);
        }
        VideoResult::from_heads(
            logits,
            boxes,
            mask_logits,
            t,
            ns,
            (h4, w4),
            self.out_size,
            selection,
        )
    }
}
