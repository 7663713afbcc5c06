//! Streaming session: frames arrive one at a time, the prompt may change at any moment, and a mask for
//! the referred object comes out for every frame (docs/architecture.md, "One frame, live").
//!
//! Per frame: frame engine → tracker (causal) → window of the last `W` frames → temporal engine over
//! the window (oldest → newest, padding masked) → the newest frame's temporally enhanced objects → head
//! engine for that frame only → running-mean sigmoid scores per track → selection → bilinear upsampling
//! and thresholding into the caller's mask buffer or straight into a [`MaskRing`] slot.
//!
//! The text engine runs once per prompt; the last few prompts' [`TextFeatures`] are cached, so toggling
//! between prompts costs no text-engine run. A prompt change takes effect on the next frame and resets
//! the tracker, the window and the running scores.
//!
//! Every buffer is allocated at construction. In steady state [`StreamSession::step`] allocates nothing
//! on the host side (engines' internals are the backend's business) and never panics: a failure is
//! returned and the next frame starts afresh. The head engine's enhanced-text and segmentation-feature
//! inputs are swapped with the frame engine's outputs instead of copied.
//!
//! **Offline equivalence.** With `keep_clip`, the session also keeps each frame's refs, enhanced text
//! and segmentation features (up to `W` frames), and [`StreamSession::finalize`] re-scores a stream of
//! `T ≤ W` frames as one clip: temporal engine over the whole window, heads for every frame, full-clip
//! mean selection. That reproduces the offline [`Session::run_video`] exactly (same engines, same
//! inputs in the same positions). What the live per-frame output loses against it (future frames in
//! the temporal attention, running instead of full-clip mean) is measured in `tests/pipeline/stream.rs`.

use std::time::Instant;

use crate::error::{Error, Result};
use crate::output::ring::{MaskRing, TrackEntry, MAX_TRACKS};
use crate::pipeline::labels::LabelUpsampler;
use crate::pipeline::post::{box4, track_entry, Selection};
use crate::pipeline::selector::RunningScores;
use crate::pipeline::session::{
    clip_frames, set_bool, set_f32, set_i64, tokenize, Dims, EngineSet, Session, TextFeatures,
    VideoResult,
};
use crate::pipeline::slots::Slots;
use crate::pipeline::timing::{Stage, StageTimes};
use crate::pipeline::window::{Rows, Window};
use crate::tensor::{Data, Tensor};
use crate::text::Tokenizer;

/// Settings of a [`StreamSession`].
#[derive(Clone, Copy, Debug)]
pub struct StreamConfig {
    /// Tracker momentum (`tracking_alpha`, 0.1 official).
    pub tracking_alpha: f32,
    /// Tokenizer cut (`max_text_len`); prompts longer than the engines' `Lm` are refused.
    pub max_text_len: usize,
    /// Prompts whose text features are kept (least recently used dropped first).
    pub text_cache: usize,
    /// Keep per-frame features of the first `W` frames so [`StreamSession::finalize`] can re-score
    /// the stream as one clip (costs `W × (dm·H4·W4 + Lm·d + 4·Ns)` floats).
    pub keep_clip: bool,
    /// Best track or every track over a threshold.
    pub selection: Selection,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            tracking_alpha: 0.1,
            max_text_len: 256,
            // A prompt may hold up to 16 objects (`--max-objects` ≤ MAX_TRACKS): checking it, then
            // applying it, must find all of them cached.
            text_cache: 16,
            keep_clip: false,
            selection: Selection::Single,
        }
    }
}

impl StreamConfig {
    /// Defaults with the model configuration's tracker momentum and text cut.
    pub fn for_model(cfg: &crate::config::ModelConfig) -> Self {
        StreamConfig {
            tracking_alpha: cfg.tracking_alpha,
            max_text_len: cfg.max_text_len,
            ..Default::default()
        }
    }
}

/// What one streamed frame produced.
#[derive(Clone, Debug, Default)]
pub struct FrameResult {
    /// False when no prompt is set (the mask is all background, no engine ran).
    pub active: bool,
    /// Reported tracks, best first; entry `k` is label `k + 1` in the mask. Boxes are
    /// `x0, y0, x1, y1` in mask pixels, scores the running means.
    pub tracks: heapless::Vec<TrackEntry, MAX_TRACKS>,
    /// Frames in the temporal window for this frame.
    pub window_len: usize,
    /// Frames processed since the prompt was set (this one included).
    pub prompt_frames: u64,
}

/// The per-frame features kept for [`StreamSession::finalize`].
struct Clip {
    refs: Rows,
    memory_text: Rows,
    f_seg: Rows,
}

/// The streaming session over an [`EngineSet`].
pub struct StreamSession {
    s: Session,
    dims: Dims,
    cfg: StreamConfig,
    tokenizer: Tokenizer,
    at: Slots,
    /// (raw expression?, text, features), most recently used first; `cache[0]` is the active prompt
    /// when `active`.
    cache: crate::pipeline::mru::Mru<(bool, String, TextFeatures)>,
    active: bool,
    text_loaded: bool,
    window: Window,
    scores: RunningScores,
    clip: Option<Clip>,
    objects: Vec<f32>,
    scratch_objects: Vec<f32>,
    scratch_refs: Vec<f32>,
    labels: LabelUpsampler,
    out_size: (usize, usize),
    times: StageTimes,
    prompt_frames: u64,
    frames_total: u64,
}

pub(crate) fn bools_mut(t: &mut Tensor) -> Result<&mut [bool]> {
    match t.data_mut() {
        Data::Bool(v) => Ok(v),
        _ => Err(Error::Shape("expected a bool buffer".into())),
    }
}

/// Copies `src` into `dst`, an error (not a panic) on a length mismatch.
pub(crate) fn copy(dst: &mut [f32], src: &[f32], what: &str) -> Result<()> {
    if dst.len() != src.len() {
        return Err(Error::Shape(format!(
            "{what}: {} values into a buffer of {}",
            src.len(),
            dst.len()
        )));
    }
    dst.copy_from_slice(src);
    Ok(())
}

/// `len` values of `v` from `start`, an error when out of range.
pub(crate) fn part<'a>(v: &'a [f32], start: usize, len: usize, what: &str) -> Result<&'a [f32]> {
    v.get(start..start + len)
        .ok_or_else(|| Error::Shape(format!("{what}: range {start}+{len} of {}", v.len())))
}

pub(crate) fn clip_row(r: &Rows, f: usize) -> Result<&[f32]> {
    r.row(f)
        .ok_or_else(|| Error::Shape(format!("clip row {f} of {}", r.len())))
}

/// Three distinct elements of `v` mutably.
pub(crate) fn pick3(v: &mut [Tensor], idx: [usize; 3]) -> Result<[&mut Tensor; 3]> {
    let mut out: [Option<&mut Tensor>; 3] = [None, None, None];
    for (i, t) in v.iter_mut().enumerate() {
        if let Some(k) = idx.iter().position(|&w| w == i) {
            out[k] = Some(t);
        }
    }
    match out {
        [Some(a), Some(b), Some(c)] => Ok([a, b, c]),
        _ => Err(Error::Backend("temporal engine bindings overlap".into())),
    }
}

impl StreamSession {
    /// Binds the engines and allocates every per-frame buffer; masks come out at `out_size`
    /// (height, width), normally the source frame's size.
    pub fn new(engines: EngineSet, cfg: StreamConfig, out_size: (usize, usize)) -> Result<Self> {
        let s = Session::new(engines, cfg.tracking_alpha)?;
        let dims = s.dims();
        let Dims {
            d,
            ns,
            lm,
            dm,
            height,
            width,
            h4,
            w4,
            window,
        } = dims;
        let at = Slots::resolve(None, s.frame.engine(), s.temporal.engine(), s.head.engine())?;
        // The swaps and copies of `step` rely on these sizes; check them once here.
        let want = [
            (&s.frame.inputs[at.image], 3 * height * width, "frame image"),
            (&s.frame.outputs[at.f_objects], ns * d, "frame objects"),
            (&s.frame.outputs[at.f_refs], ns * 4, "frame refs"),
            (
                &s.frame.outputs[at.f_memory_text],
                lm * d,
                "frame memory_text",
            ),
            (&s.frame.outputs[at.f_seg], dm * h4 * w4, "frame f_seg"),
            (
                &s.temporal.inputs[at.t_objects],
                window * ns * d,
                "temporal objects",
            ),
            (
                &s.temporal.outputs[at.t_out],
                window * ns * d,
                "temporal objects_t",
            ),
            (&s.head.inputs[at.h_objects], ns * d, "head objects_t"),
            (&s.head.inputs[at.h_refs], ns * 4, "head refs"),
            (&s.head.inputs[at.h_memory_text], lm * d, "head memory_text"),
            (&s.head.inputs[at.h_seg], dm * h4 * w4, "head f_seg"),
            (&s.head.outputs[at.h_logits], ns, "head logits"),
            (&s.head.outputs[at.h_boxes], ns * 4, "head boxes"),
            (
                &s.head.outputs[at.h_masks],
                ns * h4 * w4,
                "head mask_logits",
            ),
        ];
        for (t, len, what) in want {
            if t.numel() != len {
                return Err(Error::Backend(format!(
                    "{what}: engine buffer of {} elements, expected {len}",
                    t.numel()
                )));
            }
        }
        if s.frame.outputs[at.f_memory_text].dtype() != s.head.inputs[at.h_memory_text].dtype()
            || s.frame.outputs[at.f_seg].dtype() != s.head.inputs[at.h_seg].dtype()
        {
            return Err(Error::Backend(
                "frame outputs and head inputs differ in element type".into(),
            ));
        }
        let (oh, ow) = out_size;
        let clip = cfg.keep_clip.then(|| Clip {
            refs: Rows::new(window, ns * 4),
            memory_text: Rows::new(window, lm * d),
            f_seg: Rows::new(window, dm * h4 * w4),
        });
        Ok(StreamSession {
            dims,
            tokenizer: Tokenizer::bundled()?,
            at,
            cache: crate::pipeline::mru::Mru::new(cfg.text_cache),
            active: false,
            text_loaded: false,
            window: Window::new(window, ns * d, d)?,
            scores: RunningScores::new(ns),
            clip,
            objects: vec![0.0; ns * d],
            scratch_objects: vec![0.0; ns * d],
            scratch_refs: vec![0.0; ns * 4],
            labels: LabelUpsampler::new(h4, w4, oh, ow)?,
            out_size,
            times: StageTimes::default(),
            prompt_frames: 0,
            frames_total: 0,
            cfg,
            s,
        })
    }

    /// The engines' sizes (model input `height × width`, window `W`, …).
    pub fn dims(&self) -> Dims {
        self.dims
    }

    /// Mask size (height, width).
    pub fn out_size(&self) -> (usize, usize) {
        self.out_size
    }

    /// The active prompt.
    pub fn prompt(&self) -> Option<&str> {
        self.active.then(|| self.cache[0].1.as_str())
    }

    /// The caption the model sees for the active prompt (normalised, with the final '.').
    pub fn caption(&self) -> Option<&str> {
        self.active.then(|| self.cache[0].2.caption.as_str())
    }

    /// Current selection rule.
    pub fn selection(&self) -> Selection {
        self.cfg.selection
    }

    /// Changes the selection rule from the next frame on (running scores are kept).
    pub fn set_selection(&mut self, sel: Selection) {
        self.cfg.selection = sel;
    }

    /// Per-stage latency counters.
    pub fn times(&self) -> &StageTimes {
        &self.times
    }

    /// The latency counters, e.g. to clear them after a warm-up.
    pub fn times_mut(&mut self) -> &mut StageTimes {
        &mut self.times
    }

    /// Frames processed since the prompt was set.
    pub fn prompt_frames(&self) -> u64 {
        self.prompt_frames
    }

    /// Frames processed in total.
    pub fn frames_total(&self) -> u64 {
        self.frames_total
    }

    /// Running-mean score per track since the prompt was set.
    pub fn scores(&self) -> &[f32] {
        self.scores.scores()
    }

    /// Sets the referring expression; it takes effect on the next frame and resets the tracker, the
    /// window and the running scores. A cached prompt costs no text-engine run. An empty prompt or one
    /// longer than the engines' text length is an error and leaves the current prompt in place. The
    /// text gets the official demo's normalisation (lower-case, collapsed whitespace).
    pub fn set_prompt(&mut self, prompt: &str) -> Result<()> {
        self.set_text(prompt, false)
    }

    /// [`StreamSession::set_prompt`] for a benchmark expression, fed raw as the official evaluation
    /// scripts do (only the final '.' rule), so streaming and offline evaluation see the same tokens.
    pub fn set_expression(&mut self, expression: &str) -> Result<()> {
        self.set_text(expression, true)
    }

    fn set_text(&mut self, prompt: &str, raw: bool) -> Result<()> {
        if self
            .cache
            .take(|(k, p, _)| *k == raw && p == prompt)
            .is_none()
        {
            let t0 = Instant::now();
            let cap = tokenize(
                &self.tokenizer,
                prompt,
                raw,
                self.cfg.max_text_len,
                self.dims.lm,
            )?;
            let tf = self.s.encode_text(&cap)?;
            self.cache.put((raw, prompt.to_string(), tf));
            self.times.record(Stage::Text, t0.elapsed());
        }
        self.active = true;
        self.text_loaded = false;
        self.reset_stream();
        Ok(())
    }

    /// Drops the prompt: no engine runs and masks are empty until a new one is set.
    pub fn clear_prompt(&mut self) {
        self.active = false;
        self.reset_stream();
    }

    fn reset_stream(&mut self) {
        self.s.tracker.reset();
        self.window.clear();
        self.scores.reset();
        if let Some(c) = self.clip.as_mut() {
            c.refs.clear();
            c.memory_text.clear();
            c.f_seg.clear();
        }
        self.prompt_frames = 0;
    }

    /// The frame engine's image input `[3, H, W]` (normalised, channel-first): preprocess straight
    /// into it, then call [`StreamSession::step`].
    pub fn image_mut(&mut self) -> Result<&mut [f32]> {
        self.s.frame.inputs[self.at.image].f32s_mut()
    }

    /// Copies a normalised `[3, H, W]` frame into the image input and runs [`StreamSession::step`].
    pub fn step_image(&mut self, image_chw: &[f32], mask: &mut [u8]) -> Result<FrameResult> {
        copy(self.image_mut()?, image_chw, "image")?;
        self.step(mask)
    }

    /// Runs a frame through the engines, writes the mask into a new slot of `ring` in place and
    /// commits it (a failed frame leaves the slot uncommitted; the next frame reuses it).
    pub fn step_into_ring(
        &mut self,
        ring: &mut MaskRing,
        frame_id: u64,
        timestamp_ns: u64,
    ) -> Result<FrameResult> {
        let g = ring.geometry();
        if (g.height as usize, g.width as usize) != self.out_size {
            return Err(Error::Shape(format!(
                "ring masks are {}x{}, the session's {}x{}",
                g.width, g.height, self.out_size.1, self.out_size.0
            )));
        }
        let mut slot = ring.begin_write();
        let r = self.step(slot.mask())?;
        slot.frame_id = frame_id;
        slot.timestamp_ns = timestamp_ns;
        slot.tracks = r.tracks.clone();
        slot.commit();
        Ok(r)
    }

    fn load_text(&mut self) -> Result<()> {
        let Some((_, _, tf)) = self.cache.first() else {
            return Err(Error::Text("no prompt".into()));
        };
        let (f, at) = (&mut self.s.frame, self.at);
        set_f32(&mut f.inputs[at.f_text], &tf.encoded)?;
        set_bool(&mut f.inputs[at.f_token_mask], &tf.token_mask)?;
        set_bool(&mut f.inputs[at.f_sam], &tf.self_attention_mask)?;
        set_i64(&mut f.inputs[at.f_pos], &tf.position_ids)?;
        set_bool(&mut self.s.head.inputs[at.h_token_mask], &tf.token_mask)?;
        self.text_loaded = true;
        Ok(())
    }

    /// Runs the frame in the image input (see [`StreamSession::image_mut`]) and writes a label mask
    /// of `out_size` into `mask`: 0 = background, `k + 1` = reported track `k` (the first track wins
    /// where masks overlap). Without a prompt the mask is cleared and nothing runs.
    pub fn step(&mut self, mask: &mut [u8]) -> Result<FrameResult> {
        let start = Instant::now();
        let (oh, ow) = self.out_size;
        if mask.len() != oh * ow {
            return Err(Error::Shape(format!(
                "mask buffer of {} bytes for {ow}x{oh}",
                mask.len()
            )));
        }
        let mut res = FrameResult::default();
        if !self.active {
            mask.fill(0);
            return Ok(res);
        }
        if !self.text_loaded {
            self.load_text()?;
        }
        let Dims { d, ns, h4, w4, .. } = self.dims;
        let at = self.at;

        self.s.frame.run()?;
        let t_frame = Instant::now();
        self.times.record(Stage::Frame, t_frame - start);

        let fo = &self.s.frame.outputs;
        copy(&mut self.objects, fo[at.f_objects].f32s()?, "objects")?;
        let head_refs = self.s.head.inputs[at.h_refs].f32s_mut()?;
        copy(head_refs, fo[at.f_refs].f32s()?, "refs")?;
        let memory_text = fo[at.f_memory_text].f32s()?;
        self.s.tracker.step(
            &mut self.objects,
            head_refs,
            memory_text,
            &self.cache[0].2.token_mask,
            &mut self.scratch_objects,
            &mut self.scratch_refs,
        )?;
        let t_track = Instant::now();
        self.times.record(Stage::Tracker, t_track - t_frame);

        self.window
            .push(&self.objects, part(memory_text, 0, d, "sentence")?)?;
        let [o, sn, m] = pick3(
            &mut self.s.temporal.inputs,
            [at.t_objects, at.t_sentence, at.t_mask],
        )?;
        let newest =
            self.window
                .write_chronological(o.f32s_mut()?, sn.f32s_mut()?, bools_mut(m)?)?;
        self.s.temporal.run()?;
        let ot = self.s.temporal.outputs[at.t_out].f32s()?;
        copy(
            self.s.head.inputs[at.h_objects].f32s_mut()?,
            part(ot, newest * ns * d, ns * d, "objects_t")?,
            "objects_t",
        )?;
        let t_temporal = Instant::now();
        self.times.record(Stage::Temporal, t_temporal - t_track);

        if let Some(c) = self.clip.as_mut() {
            // Only the first W frames are kept: that is all finalize can re-score.
            c.refs.push(self.s.head.inputs[at.h_refs].f32s()?)?;
            c.memory_text.push(memory_text)?;
            c.f_seg.push(self.s.frame.outputs[at.f_seg].f32s()?)?;
        }
        // The head reads this frame's enhanced text and features: hand the buffers over.
        std::mem::swap(
            &mut self.s.frame.outputs[at.f_memory_text],
            &mut self.s.head.inputs[at.h_memory_text],
        );
        std::mem::swap(
            &mut self.s.frame.outputs[at.f_seg],
            &mut self.s.head.inputs[at.h_seg],
        );
        self.s.head.run()?;
        let t_head = Instant::now();
        self.times.record(Stage::Head, t_head - t_temporal);

        let ho = &self.s.head.outputs;
        self.scores.update(ho[at.h_logits].f32s()?)?;
        self.scores.select(self.cfg.selection);
        let (chosen, scores) = (self.scores.chosen(), self.scores.scores());
        let boxes = ho[at.h_boxes].f32s()?;
        let mask_logits = ho[at.h_masks].f32s()?;
        mask.fill(0);
        let hw = h4 * w4;
        for (k, &q) in chosen.iter().enumerate().take(MAX_TRACKS) {
            self.labels.label(
                part(mask_logits, q * hw, hw, "mask_logits")?,
                mask,
                k as u8 + 1,
            )?;
            let b = box4(part(boxes, q * 4, 4, "boxes")?)?;
            let _ = res
                .tracks
                .push(track_entry(q, 0, scores[q], b, self.out_size));
        }
        self.prompt_frames += 1;
        self.frames_total += 1;
        res.active = true;
        res.window_len = self.window.len();
        res.prompt_frames = self.prompt_frames;
        let end = Instant::now();
        self.times.record(Stage::Post, end - t_head);
        self.times.record(Stage::Total, end - start);
        Ok(res)
    }

    /// Re-scores the stream since the prompt as one clip, as the offline session would: temporal
    /// engine over the whole window, heads for every frame, full-clip mean selection, masks (0/1,
    /// union of the chosen tracks) at `out_size`. Needs `keep_clip` and at most `W` frames.
    pub fn finalize(&mut self, selection: Selection) -> Result<VideoResult> {
        let Dims { d, ns, h4, w4, .. } = self.dims;
        let at = self.at;
        let Some(clip) = self.clip.as_ref() else {
            return Err(Error::Config(
                "finalize needs a session built with keep_clip".into(),
            ));
        };
        let t = clip_frames(self.prompt_frames, clip.refs.len(), self.window.capacity())?;
        let [o, sn, m] = pick3(
            &mut self.s.temporal.inputs,
            [at.t_objects, at.t_sentence, at.t_mask],
        )?;
        self.window
            .write_chronological(o.f32s_mut()?, sn.f32s_mut()?, bools_mut(m)?)?;
        self.s.temporal.run()?;
        let hw = h4 * w4;
        let mut logits = vec![0f32; t * ns];
        let mut boxes = vec![0f32; t * ns * 4];
        let mut mask_logits = vec![0f32; t * ns * hw];
        for f in 0..t {
            let ot = self.s.temporal.outputs[at.t_out].f32s()?;
            let h = &mut self.s.head;
            set_f32(
                &mut h.inputs[at.h_objects],
                part(ot, f * ns * d, ns * d, "objects_t")?,
            )?;
            set_f32(&mut h.inputs[at.h_refs], clip_row(&clip.refs, f)?)?;
            set_f32(
                &mut h.inputs[at.h_memory_text],
                clip_row(&clip.memory_text, f)?,
            )?;
            set_f32(&mut h.inputs[at.h_seg], clip_row(&clip.f_seg, f)?)?;
            h.run()?;
            logits[f * ns..(f + 1) * ns].copy_from_slice(h.outputs[at.h_logits].f32s()?);
            boxes[f * ns * 4..(f + 1) * ns * 4].copy_from_slice(h.outputs[at.h_boxes].f32s()?);
            mask_logits[f * ns * hw..(f + 1) * ns * hw]
                .copy_from_slice(h.outputs[at.h_masks].f32s()?);
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
