//! Steps 2-6 of the module documentation for one chunk of objects (text rows, front engine, tracker,
//! device windows, temporal and head engines, choice of tracks), and the row loading they share with
//! finalize: an object's text features into its row, its window laid out into the temporal inputs.

use std::sync::Arc;
use std::time::Instant;

use crate::error::{Error, Result};
use crate::pipeline::gpu;
use crate::pipeline::post::{box4, track_entry};
use crate::pipeline::session::Dims;
use crate::pipeline::stream::FrameResult;
use crate::pipeline::timing::Stage;

use super::bindings::enqueue;
use super::object::DeviceText;
use super::DeviceStreamSession;

impl DeviceStreamSession {
    /// Steps 2-6 for the objects `c0..` (up to the batch), object `c0 + j` in row `j` of the
    /// batched engines: their chosen tracks go into the frame's track table, reading map
    /// `k·Ns + q` of object `k`'s query `q` (in the head's output for one chunk, in the buffer of
    /// every object's maps for several).
    pub(super) fn run_chunk(
        &mut self,
        c0: usize,
        per_object: usize,
        res: &mut FrameResult,
        start: Instant,
    ) -> Result<()> {
        let t0 = Instant::now();
        let Dims {
            d, ns, lm, h4, w4, ..
        } = self.dims;
        let (at, st, b) = (self.at, self.stream, self.batch);
        let n = self.objects.len();
        let count = b.min(n - c0);
        let (row_o, row_r, row_t) = (ns * d, ns * 4, lm * d);

        // 2. Each row's text (rows past the chunk repeat its first object: their outputs go unread),
        // then the frame or cross engine.
        for j in 0..b {
            let k = if j < count { c0 + j } else { c0 };
            let text = self.objects[k].text.clone();
            self.load_text(j, &text)?;
        }
        let (fi, fo) = &mut self.front_views;
        enqueue(self.front.as_mut(), fi, fo, st)?;
        // 3. What the tracker reads: every row's objects and boxes, each row's real text tokens.
        self.p_objects
            .fetch(0..count * row_o, self.front_out[at.f_objects].ptr(), st)?;
        self.p_refs
            .fetch(0..count * row_r, self.front_out[at.f_refs].ptr(), st)?;
        for j in 0..count {
            let real = self.objects[c0 + j].text.real;
            self.p_text.fetch(
                j * row_t..j * row_t + real * d,
                self.front_out[at.f_memory_text].at(j * row_t * 4, real * d * 4)?,
                st,
            )?;
        }
        gpu::sync(st)?;
        let t_frame = Instant::now();
        // The preprocessing's and image engine's time is in the first chunk's share.
        self.times
            .record(Stage::Frame, t_frame - if c0 == 0 { start } else { t0 });

        self.in_flight = c0..c0;
        for j in 0..count {
            // In flight from its tracker step (which may fail half-way) to its labels.
            self.in_flight.end = c0 + j + 1;
            let o = &mut self.objects[c0 + j];
            let real = o.text.real;
            o.tracker.step(
                &mut self.p_objects.as_mut_slice()[j * row_o..(j + 1) * row_o],
                &mut self.p_refs.as_mut_slice()[j * row_r..(j + 1) * row_r],
                &self.p_text.as_slice()[j * row_t..j * row_t + real * d],
                &o.text.mask[..real],
                &mut self.scratch_objects,
                &mut self.scratch_refs,
            )?;
        }
        let t_track = Instant::now();
        self.times.record(Stage::Tracker, t_track - t_frame);

        // 4. Per row: tracked boxes to the head (and, while it has room, the clip); the frame into
        // the object's device window, laid out oldest first into its row of the temporal inputs.
        for j in 0..count {
            let o = &mut self.objects[c0 + j];
            self.p_refs.send(
                j * row_r..(j + 1) * row_r,
                self.head_in[at.h_refs].at(j * row_r * 4, row_r * 4)?,
                st,
            )?;
            if let Some(c) = o.clip.as_mut() {
                let f = c.refs.len();
                if c.refs
                    .push(&self.p_refs.as_slice()[j * row_r..(j + 1) * row_r])?
                {
                    for (dst, src) in [
                        (&c.memory_text, &self.front_out[at.f_memory_text]),
                        (&c.f_seg, &self.front_out[at.f_seg]),
                    ] {
                        let row = src.bytes() / b;
                        gpu::copy_d2d(dst.at(f * row, row)?, src.at(j * row, row)?, row, st)?;
                    }
                }
            }
            o.window.push(
                &self.p_objects.as_slice()[j * row_o..(j + 1) * row_o],
                &self.p_text.as_slice()[j * row_t..j * row_t + d],
            )?;
            let slot = o.window.newest_slot().expect("pushed above");
            self.p_objects.send(
                j * row_o..(j + 1) * row_o,
                o.ring_objects.at(slot * row_o * 4, row_o * 4)?,
                st,
            )?;
            gpu::copy_d2d(
                o.ring_sentence.at(slot * d * 4, d * 4)?,
                self.front_out[at.f_memory_text].at(j * row_t * 4, d * 4)?,
                d * 4,
                st,
            )?;
            self.lens[j] = self.lay_out(c0 + j, j)?;
        }

        // 5. Temporal engine; each row's newest frame feeds the head, which reads the front's
        // features in place.
        let (ti, to) = &mut self.temporal_views;
        enqueue(self.temporal.as_mut(), ti, to, st)?;
        let window = self.dims.window;
        for j in 0..count {
            gpu::copy_d2d(
                self.head_in[at.h_objects].at(j * row_o * 4, row_o * 4)?,
                self.temporal_out[at.t_out]
                    .at((j * window + self.lens[j] - 1) * row_o * 4, row_o * 4)?,
                row_o * 4,
                st,
            )?;
        }
        let (hi, ho) = &mut self.head_views;
        enqueue(self.head.as_mut(), hi, ho, st)?;
        let maps_bytes = ns * h4 * w4 * 4;
        if n > b {
            gpu::copy_d2d(
                self.mask_logits.at(c0 * maps_bytes, count * maps_bytes)?,
                self.head_out[at.h_masks].ptr(),
                count * maps_bytes,
                st,
            )?;
        }
        // 6. What the choice of tracks reads.
        self.p_logits
            .fetch(0..count * ns, self.head_out[at.h_logits].ptr(), st)?;
        self.p_boxes
            .fetch(0..count * row_r, self.head_out[at.h_boxes].ptr(), st)?;
        gpu::sync(st)?;
        let t_head = Instant::now();
        self.times.record(Stage::Head, t_head - t_track);

        for j in 0..count {
            let k = c0 + j;
            let o = &mut self.objects[k];
            o.scores
                .update(&self.p_logits.as_slice()[j * ns..(j + 1) * ns])?;
            o.scores.select(self.cfg.selection);
            o.frames += 1;
            let (chosen, scores) = (o.scores.chosen(), o.scores.scores());
            let boxes = &self.p_boxes.as_slice()[j * row_r..(j + 1) * row_r];
            for &q in chosen.iter().take(per_object) {
                if res.tracks.is_full() {
                    break;
                }
                let label = res.tracks.len() as u8 + 1;
                let _ = self.maps.push(k * ns + q);
                let _ = self.labels.push(label);
                let _ = self.track_scores.push(scores[q]);
                let b = box4(&boxes[q * 4..q * 4 + 4])?;
                let _ = res
                    .tracks
                    .push(track_entry(q, o.id, scores[q], b, self.out_size));
            }
            res.window_len = res.window_len.max(self.lens[j]);
            res.prompt_frames = res.prompt_frames.max(o.frames);
            self.in_flight.start += 1;
        }
        Ok(())
    }

    /// Makes row `j` of the front's and head's text inputs hold `text`'s features (copied device to
    /// device unless they already do).
    pub(super) fn load_text(&mut self, j: usize, text: &Arc<DeviceText>) -> Result<()> {
        if self.bound_text[j]
            .as_ref()
            .is_some_and(|t| Arc::ptr_eq(t, text))
        {
            return Ok(());
        }
        let (at, fi) = (self.at, &self.front_in);
        for (dst, src) in [
            (&fi[at.f_text], &text.encoded),
            (&fi[at.f_token_mask], &text.token_mask),
            (&fi[at.f_sam], &text.self_attention_mask),
            (&fi[at.f_pos], &text.position_ids),
            (&self.head_in[at.h_token_mask], &text.token_mask),
        ] {
            let row = src.bytes();
            gpu::copy_d2d(dst.at(j * row, row)?, src.ptr(), row, self.stream)?;
        }
        self.bound_text[j] = Some(text.clone());
        Ok(())
    }

    /// Object `k`'s window laid out oldest first into row `j` of the temporal engine's inputs with
    /// two device copies per input, rows past it zeroed where an earlier layout left data, and its
    /// frame mask sent; returns the frames it holds (at least 1).
    pub(super) fn lay_out(&mut self, k: usize, j: usize) -> Result<usize> {
        let Dims { d, ns, window, .. } = self.dims;
        let (at, st) = (self.at, self.stream);
        let o = &self.objects[k];
        let (first_slot, first, len) = o.window.runs();
        if len == 0 {
            return Err(Error::Source("the object's window holds no frame".into()));
        }
        for (ring, dst, row) in [
            (&o.ring_objects, &self.temporal_in[at.t_objects], ns * d * 4),
            (&o.ring_sentence, &self.temporal_in[at.t_sentence], d * 4),
        ] {
            let base = j * window * row;
            gpu::copy_d2d(
                dst.at(base, first * row)?,
                ring.at(first_slot * row, first * row)?,
                first * row,
                st,
            )?;
            let rest = len - first;
            gpu::copy_d2d(
                dst.at(base + first * row, rest * row)?,
                ring.at(0, rest * row)?,
                rest * row,
                st,
            )?;
            if self.laid[j] > len {
                // A longer window of another object (or of this one before its prompt changed).
                dst.zero_range(base + len * row, (self.laid[j] - len) * row, st)?;
            }
        }
        self.laid[j] = len;
        let rows = j * window..(j + 1) * window;
        for (i, m) in self.p_frame_mask.as_mut_slice()[rows.clone()]
            .iter_mut()
            .enumerate()
        {
            *m = (i < len) as u8;
        }
        self.p_frame_mask.send(
            rows,
            self.temporal_in[at.t_mask].at(j * window, window)?,
            st,
        )?;
        Ok(len)
    }
}
