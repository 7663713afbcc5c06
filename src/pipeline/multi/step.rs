//! One frame of a [`MultiStream`]: [`MultiStream::step`] (or, once a batched image engine ran several
//! streams' frames, [`MultiStream::step_from_row`]), the image part once, the cross-modal part over
//! chunks of objects, and per object its tracking, window, temporal and head runs and labels.

use std::time::Instant;

use super::buffers::{set_bool_row, set_i64_row};
use super::object::Object;
use super::shared_engines::SharedEngines;
use super::stream::MultiStream;
use crate::error::{Error, Result};
use crate::output::ring::MAX_TRACKS;
use crate::pipeline::post::{box4, track_entry};
use crate::pipeline::session::Dims;
use crate::pipeline::stream::{bools_mut, copy, part, pick3, FrameResult};
use crate::pipeline::timing::Stage;

impl MultiStream {
    /// Runs the frame in the image input (see [`MultiStream::image_mut`]) for every object and
    /// writes a label mask of `out_size` into `mask`: 0 = background, `k + 1` = track table entry
    /// `k` of the result. Entries go object by object (ascending id), each object's tracks best
    /// first, at most `max(1, 16 / objects)` per object. Where masks overlap the pixel goes to the
    /// entry with the higher running-mean score (the earlier entry on a tie). Without objects the
    /// mask is cleared and nothing runs.
    pub fn step(&mut self, eng: &mut SharedEngines, mask: &mut [u8]) -> Result<FrameResult> {
        let start = Instant::now();
        let (oh, ow) = self.out_size;
        if mask.len() != oh * ow {
            return Err(Error::Shape(format!(
                "mask buffer of {} bytes for {ow}x{oh}",
                mask.len()
            )));
        }
        let mut res = FrameResult::default();
        mask.fill(0);
        if self.objects.is_empty() {
            return Ok(res);
        }
        self.owner.fill(f32::NEG_INFINITY);
        let at = eng.at;
        // The stream's image goes into the engine's input for this frame and back afterwards, so
        // several streams share one engine without copying frames.
        let r = match eng.image.as_mut() {
            Some(_) if eng.image_batch > 1 => {
                // A lone frame through the batched image engine: row 0 (other rows are stale).
                self.load_image_row(eng, 0)
                    .and_then(|_| eng.run_images())
                    .and_then(|_| self.objects_from_row(eng, 0, mask, &mut res, start))
            }
            Some(img) => {
                std::mem::swap(&mut img.inputs[at.image], &mut self.image);
                let r = img.run();
                std::mem::swap(&mut img.inputs[at.image], &mut self.image);
                if r.is_ok() {
                    std::mem::swap(
                        &mut img.outputs[at.i_tokens],
                        &mut eng.front.inputs[at.c_tokens],
                    );
                    std::mem::swap(
                        &mut img.outputs[at.i_stride4],
                        &mut eng.front.inputs[at.c_stride4],
                    );
                    let r = self.objects_pass(eng, mask, &mut res, start);
                    if let Some(img) = eng.image.as_mut() {
                        std::mem::swap(
                            &mut img.outputs[at.i_tokens],
                            &mut eng.front.inputs[at.c_tokens],
                        );
                        std::mem::swap(
                            &mut img.outputs[at.i_stride4],
                            &mut eng.front.inputs[at.c_stride4],
                        );
                    }
                    r
                } else {
                    r
                }
            }
            None => {
                std::mem::swap(&mut eng.front.inputs[at.image], &mut self.image);
                let r = self.objects_pass(eng, mask, &mut res, start);
                std::mem::swap(&mut eng.front.inputs[at.image], &mut self.image);
                r
            }
        };
        if let Err(e) = r {
            self.objects
                .restart_in_flight(&mut self.in_flight, Object::restart);
            return Err(e);
        }
        self.frames_total += 1;
        res.active = true;
        self.times.record(Stage::Total, start.elapsed());
        Ok(res)
    }

    /// Copies this stream's image into row `row` of the batched image engine's input (for
    /// [`SharedEngines::run_images`]).
    pub fn load_image_row(&self, eng: &mut SharedEngines, row: usize) -> Result<()> {
        let Some(img) = eng.image.as_mut() else {
            return Err(Error::Config("no separate image engine".into()));
        };
        let src = self.image.f32s()?;
        let n = src.len();
        let dst = img.inputs[eng.at.image].f32s_mut()?;
        let len = dst.len();
        dst.get_mut(row * n..(row + 1) * n)
            .ok_or_else(|| Error::Shape(format!("image row {row} of {n} in {len}")))?
            .copy_from_slice(src);
        Ok(())
    }

    /// Like [`MultiStream::step`] once [`SharedEngines::run_images`] ran this stream's frame in
    /// row `row` of the image engine.
    pub fn step_from_row(
        &mut self,
        eng: &mut SharedEngines,
        row: usize,
        mask: &mut [u8],
    ) -> Result<FrameResult> {
        let start = Instant::now();
        let (oh, ow) = self.out_size;
        if mask.len() != oh * ow {
            return Err(Error::Shape(format!(
                "mask buffer of {} bytes for {ow}x{oh}",
                mask.len()
            )));
        }
        let mut res = FrameResult::default();
        mask.fill(0);
        if self.objects.is_empty() {
            return Ok(res);
        }
        self.owner.fill(f32::NEG_INFINITY);
        if let Err(e) = self.objects_from_row(eng, row, mask, &mut res, start) {
            self.objects
                .restart_in_flight(&mut self.in_flight, Object::restart);
            return Err(e);
        }
        self.frames_total += 1;
        res.active = true;
        self.times.record(Stage::Total, start.elapsed());
        Ok(res)
    }

    /// Copies row `row` of the image engine's outputs into the cross engine's image inputs and
    /// runs the objects.
    fn objects_from_row(
        &mut self,
        eng: &mut SharedEngines,
        row: usize,
        mask: &mut [u8],
        res: &mut FrameResult,
        start: Instant,
    ) -> Result<()> {
        let at = eng.at;
        let Some(img) = eng.image.as_ref() else {
            return Err(Error::Config("no separate image engine".into()));
        };
        for (o, i) in [(at.i_tokens, at.c_tokens), (at.i_stride4, at.c_stride4)] {
            let dst = eng.front.inputs[i].f32s_mut()?;
            let n = dst.len();
            copy(
                dst,
                part(img.outputs[o].f32s()?, row * n, n, "image row")?,
                "image row",
            )?;
        }
        self.objects_pass(eng, mask, res, start)
    }

    /// The cross-modal part over chunks of `batch` objects; then, per group of `head_batch` objects of
    /// a chunk, each object's tracking and window, one temporal run, one head run, and each object's
    /// labels.
    fn objects_pass(
        &mut self,
        eng: &mut SharedEngines,
        mask: &mut [u8],
        res: &mut FrameResult,
        start: Instant,
    ) -> Result<()> {
        let at = eng.at;
        let (b, hb) = (eng.batch, eng.head_batch);
        let Dims { lm, .. } = self.dims;
        let n_obj = self.objects.len();
        let per_object = (MAX_TRACKS / n_obj).max(1);
        for c0 in (0..n_obj).step_by(b) {
            let t0 = Instant::now();
            for j in 0..b {
                // Rows past the last object repeat the chunk's first (their outputs are unused).
                let o = &self.objects[if c0 + j < n_obj { c0 + j } else { c0 }];
                let fi = &mut eng.front.inputs;
                let d = self.dims.d;
                copy(
                    &mut fi[at.f_text].f32s_mut()?[j * lm * d..(j + 1) * lm * d],
                    &o.text.encoded,
                    "encoded text",
                )?;
                set_bool_row(&mut fi[at.f_token_mask], j, &o.text.token_mask)?;
                set_bool_row(&mut fi[at.f_sam], j, &o.text.self_attention_mask)?;
                set_i64_row(&mut fi[at.f_pos], j, &o.text.position_ids)?;
            }
            eng.front.run()?;
            let t1 = Instant::now();
            // The image engine's time is in the first chunk's share.
            self.times
                .record(Stage::Frame, t1 - if c0 == 0 { start } else { t0 });
            let count = b.min(n_obj - c0);
            for g0 in (0..count).step_by(hb) {
                let gn = hb.min(count - g0);
                let t0 = Instant::now();
                let first = c0 + g0;
                self.in_flight = first..first;
                for j in 0..gn {
                    // In flight from its tracker step (which may fail half-way) to its labels.
                    self.in_flight.end = first + j + 1;
                    self.track(eng, first + j, g0 + j, j)?;
                }
                let t1 = Instant::now();
                self.times.record(Stage::Tracker, t1 - t0);
                eng.temporal.run()?;
                for j in 0..gn {
                    self.head_inputs(eng, c0 + g0 + j, g0 + j, j)?;
                }
                let t2 = Instant::now();
                self.times.record(Stage::Temporal, t2 - t1);
                run_head(eng)?;
                self.times.record(Stage::Head, t2.elapsed());
                for j in 0..gn {
                    self.labels_of(eng, c0 + g0 + j, j, mask, res, per_object)?;
                    self.in_flight.start += 1;
                }
            }
        }
        Ok(())
    }

    /// Object `k` (row `row` of the cross engine's outputs): tracking, into row `slot` of the head's
    /// `refs`, and its window, into row `slot` of the temporal engine's inputs.
    fn track(&mut self, eng: &mut SharedEngines, k: usize, row: usize, slot: usize) -> Result<()> {
        let at = eng.at;
        let Dims {
            d, ns, lm, window, ..
        } = self.dims;
        let o = &mut self.objects[k];
        let fo = &eng.front.outputs;
        copy(
            &mut o.objects,
            part(fo[at.f_objects].f32s()?, row * ns * d, ns * d, "objects")?,
            "objects",
        )?;
        let head_refs = &mut eng.head.inputs[at.h_refs].f32s_mut()?[slot * ns * 4..][..ns * 4];
        copy(
            head_refs,
            part(fo[at.f_refs].f32s()?, row * ns * 4, ns * 4, "refs")?,
            "refs",
        )?;
        let memory_text = part(
            fo[at.f_memory_text].f32s()?,
            row * lm * d,
            lm * d,
            "memory_text",
        )?;
        o.tracker.step(
            &mut o.objects,
            head_refs,
            memory_text,
            &o.text.token_mask,
            &mut self.scratch_objects,
            &mut self.scratch_refs,
        )?;
        o.window
            .push(&o.objects, part(memory_text, 0, d, "sentence")?)?;
        let [ob, sn, m] = pick3(
            &mut eng.temporal.inputs,
            [at.t_objects, at.t_sentence, at.t_mask],
        )?;
        let wl = window * ns * d;
        o.newest = o.window.write_chronological(
            &mut ob.f32s_mut()?[slot * wl..][..wl],
            &mut sn.f32s_mut()?[slot * window * d..][..window * d],
            &mut bools_mut(m)?[slot * window..][..window],
        )?;
        Ok(())
    }

    /// Object `k`'s head inputs in row `slot`: its newest temporal output, text and token mask, and
    /// (when the head runs per object) its `f_seg` row `row` of the cross engine's outputs.
    fn head_inputs(
        &mut self,
        eng: &mut SharedEngines,
        k: usize,
        row: usize,
        slot: usize,
    ) -> Result<()> {
        let at = eng.at;
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
        let o = &mut self.objects[k];
        let ot = eng.temporal.outputs[at.t_out].f32s()?;
        copy(
            &mut eng.head.inputs[at.h_objects].f32s_mut()?[slot * ns * d..][..ns * d],
            part(ot, (slot * window + o.newest) * ns * d, ns * d, "objects_t")?,
            "objects_t",
        )?;
        let fo = &eng.front.outputs;
        let memory_text = part(
            fo[at.f_memory_text].f32s()?,
            row * lm * d,
            lm * d,
            "memory_text",
        )?;
        let seg_len = dm * h4 * w4;
        let f_seg = part(fo[at.f_seg].f32s()?, row * seg_len, seg_len, "f_seg")?;
        if let Some(c) = o.clip.as_mut() {
            c.refs
                .push(&eng.head.inputs[at.h_refs].f32s()?[slot * ns * 4..][..ns * 4])?;
            c.memory_text.push(memory_text)?;
            c.f_seg.push(f_seg)?;
        }
        copy(
            &mut eng.head.inputs[at.h_memory_text].f32s_mut()?[slot * lm * d..][..lm * d],
            memory_text,
            "memory_text",
        )?;
        set_bool_row(
            &mut eng.head.inputs[at.h_token_mask],
            slot,
            &o.text.token_mask,
        )?;
        if eng.head_batch != eng.batch {
            copy(eng.head.inputs[at.h_seg].f32s_mut()?, f_seg, "f_seg")?;
        }
        Ok(())
    }

    /// Object `k`'s scores, tracks and labels from row `slot` of the head's outputs.
    fn labels_of(
        &mut self,
        eng: &mut SharedEngines,
        k: usize,
        slot: usize,
        mask: &mut [u8],
        res: &mut FrameResult,
        per_object: usize,
    ) -> Result<()> {
        let at = eng.at;
        let Dims { ns, h4, w4, .. } = self.dims;
        let t3 = Instant::now();
        let o = &mut self.objects[k];
        let ho = &eng.head.outputs;
        o.scores
            .update(part(ho[at.h_logits].f32s()?, slot * ns, ns, "logits")?)?;
        o.scores.select(self.cfg.selection);
        o.frames += 1;
        let (chosen, scores) = (o.scores.chosen(), o.scores.scores());
        let hw = h4 * w4;
        let boxes = part(ho[at.h_boxes].f32s()?, slot * ns * 4, ns * 4, "boxes")?;
        let mask_logits = part(
            ho[at.h_masks].f32s()?,
            slot * ns * hw,
            ns * hw,
            "mask_logits",
        )?;
        for &q in chosen.iter().take(per_object) {
            if res.tracks.is_full() {
                break;
            }
            let label = res.tracks.len() as u8 + 1;
            self.labels.label_scored(
                part(mask_logits, q * hw, hw, "mask_logits")?,
                mask,
                &mut self.owner,
                label,
                scores[q],
            )?;
            let b = box4(part(boxes, q * 4, 4, "boxes")?)?;
            let _ = res
                .tracks
                .push(track_entry(q, o.id, scores[q], b, self.out_size));
        }
        res.window_len = res.window_len.max(o.window.len());
        res.prompt_frames = res.prompt_frames.max(o.frames);
        self.times.record(Stage::Post, t3.elapsed());
        Ok(())
    }
}

/// Runs the head engine on the rows its inputs hold. When it takes as many objects as the cross engine,
/// the cross engine's `f_seg` is its `f_seg` input as it stands (the buffers are handed over and back
/// instead of copied: a chunk is then one group); otherwise [`MultiStream::head_inputs`] copied the row.
fn run_head(eng: &mut SharedEngines) -> Result<()> {
    let at = eng.at;
    if eng.head_batch != eng.batch {
        return eng.head.run();
    }
    std::mem::swap(
        &mut eng.front.outputs[at.f_seg],
        &mut eng.head.inputs[at.h_seg],
    );
    let r = eng.head.run();
    std::mem::swap(
        &mut eng.front.outputs[at.f_seg],
        &mut eng.head.inputs[at.h_seg],
    );
    r
}
