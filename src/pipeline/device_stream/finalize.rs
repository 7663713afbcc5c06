//! Finalize on the device path: the first object's kept frames re-scored as one clip, as the host
//! path's finalize does.

use crate::error::{Error, Result};
use crate::pipeline::gpu::{self, Pinned};
use crate::pipeline::post::Selection;
use crate::pipeline::session::{clip_frames, Dims, VideoResult};

use super::bindings::enqueue;
use super::DeviceStreamSession;

impl DeviceStreamSession {
    /// Re-scores the first object's frames since its prompt as one clip, as the host path's
    /// finalize does (temporal engine over the whole window, the head for every frame, full-clip
    /// selection, 0/1 masks of the chosen tracks at the output size). Needs `keep_clip` and at most
    /// `W` frames; the stream goes on afterwards as before.
    pub fn finalize(&mut self, selection: Selection) -> Result<VideoResult> {
        let Dims { d, ns, h4, w4, .. } = self.dims;
        let (at, st) = (self.at, self.stream);
        let Some(o) = self.objects.first() else {
            return Err(Error::Source("finalize: no object".into()));
        };
        let Some(clip) = o.clip.as_ref() else {
            return Err(Error::Config(
                "finalize needs keep_clip (and keeps the first object added to an empty stream)"
                    .into(),
            ));
        };
        let t = clip_frames(o.frames, clip.refs.len(), o.window.capacity())?;
        self.ctx.bind()?;
        let text = o.text.clone();
        let hw = h4 * w4;
        // One-off: finalize runs once, at the end of a clip. Declared outside the work below so that
        // it outlives anything enqueued there (synchronized before it is dropped).
        let mut p_masks = Pinned::<f32>::new(ns * hw, "clip mask logits", st)?;
        // Row 0 of the batched engines (the other rows' outputs are not read).
        let result = (|| {
            self.load_text(0, &text)?;
            self.lay_out(0, 0)?;
            let (ti, to) = &mut self.temporal_views;
            enqueue(self.temporal.as_mut(), ti, to, st)?;
            let mut logits = vec![0f32; t * ns];
            let mut boxes = vec![0f32; t * ns * 4];
            let mut mask_logits = vec![0f32; t * ns * hw];
            let row_o = ns * d * 4;
            for f in 0..t {
                let clip = self.objects[0].clip.as_ref().expect("checked above");
                gpu::copy_d2d(
                    self.head_in[at.h_objects].ptr(),
                    self.temporal_out[at.t_out].at(f * row_o, row_o)?,
                    row_o,
                    st,
                )?;
                let refs = clip
                    .refs
                    .row(f)
                    .ok_or_else(|| Error::Shape(format!("clip row {f} missing")))?;
                self.p_refs.as_mut_slice()[..ns * 4].copy_from_slice(refs);
                self.p_refs
                    .send(0..ns * 4, self.head_in[at.h_refs].ptr(), st)?;
                // The head reads these two from the front's outputs.
                for (src, dst) in [
                    (&clip.memory_text, &self.front_out[at.f_memory_text]),
                    (&clip.f_seg, &self.front_out[at.f_seg]),
                ] {
                    let row = dst.bytes() / self.batch;
                    gpu::copy_d2d(dst.ptr(), src.at(f * row, row)?, row, st)?;
                }
                let (hi, ho) = &mut self.head_views;
                enqueue(self.head.as_mut(), hi, ho, st)?;
                self.p_logits
                    .fetch(0..ns, self.head_out[at.h_logits].ptr(), st)?;
                self.p_boxes
                    .fetch(0..ns * 4, self.head_out[at.h_boxes].ptr(), st)?;
                p_masks.fetch(0..ns * hw, self.head_out[at.h_masks].ptr(), st)?;
                gpu::sync(st)?;
                logits[f * ns..(f + 1) * ns].copy_from_slice(&self.p_logits.as_slice()[..ns]);
                boxes[f * ns * 4..(f + 1) * ns * 4]
                    .copy_from_slice(&self.p_boxes.as_slice()[..ns * 4]);
                mask_logits[f * ns * hw..(f + 1) * ns * hw].copy_from_slice(p_masks.as_slice());
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
        })();
        if result.is_err() {
            // Nothing enqueued may still write the pinned buffer once it is dropped.
            let _ = gpu::sync(st);
        }
        drop(p_masks);
        result
    }
}
