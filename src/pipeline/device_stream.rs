//! Device-resident streaming session (feature `cuda`, engines from the TensorRT backend): the same
//! per-frame algorithm as [`StreamSession`](crate::pipeline::stream::StreamSession), with every tensor
//! between engines kept in device memory and only what the host truly needs crossing the bus.
//!
//! Per frame, on the engines' one CUDA stream:
//!
//! 1. the camera frame, written into page-locked mapped memory, becomes the frame engine's input by the
//!    preprocessing kernel (the CPU preprocessor's tables: identical input);
//! 2. frame engine, enqueued with device bindings; its text inputs are the device copies of the prompt's
//!    features, made once per prompt and kept in a small cache;
//! 3. **host needs:** tracked objects `[Ns, d]`, boxes `[Ns, 4]` and the real-token rows of the enhanced
//!    text (the tracker's Hungarian matching and relevance run on the host) → one synchronization;
//! 4. the tracked objects row and boxes go back; the sentence row is copied device to device into a
//!    device ring of the last `W` frames, and the temporal engine's inputs are laid out from it with two
//!    device copies per input (the host [`Window`] keeps the bookkeeping);
//! 5. temporal engine; its newest row is copied device to device to the head engine, which reads the
//!    frame engine's enhanced text and segmentation features from the same device buffers (no copy);
//! 6. **host needs:** class logits `[Ns]` and boxes `[Ns, 4]` (running scores and the choice of tracks)
//!    → the second synchronization;
//! 7. the chosen tracks' mask logits, where the head left them, are upsampled, thresholded and labelled
//!    by one kernel straight into the mask ring's slot (its memory is registered with CUDA); the slot
//!    is marked in progress before and committed after the kernel completes (third synchronization).
//!
//! What crosses per frame (Swin-T, Ns = 15, d = 256, W = 36, 12-token prompt): device → host 15.4 KB
//! objects + 240 B boxes + 12.3 KB text rows + 60 B logits + 240 B boxes; host → device 15.4 KB objects +
//! 240 B boxes + 36 B frame mask; the frame is read in place by the kernel and the mask written in
//! place, once each (on Jetson's shared memory no copy at all). Against the host path's every binding
//! both ways (F_seg alone is 14.7 MB each way) and a synchronization after each of four engines.
//!
//! Not covered here (host path only): `finalize` (re-scoring a short stream as a clip) and several
//! objects per stream ([`crate::pipeline::multi`]).

use std::sync::Arc;
use std::time::Instant;

use referdino_plugins::dims::FrameFormat;
use referdino_plugins::kernels::{Kernels, TrackTable};

use crate::backend::{Engine, TensorSpec, View, ViewMut};
use crate::error::{Error, Result};
use crate::output::ring::{MaskRing, TrackEntry, MAX_TRACKS};
use crate::pipeline::gpu::{
    self, DeviceBuffer, GpuMasks, GpuPreprocess, Pinned, RegisteredRing, Stream,
};
use crate::pipeline::post::Selection;
use crate::pipeline::selector::RunningScores;
use crate::pipeline::session::{encode_caption, Bound, Dims, EngineSet};
use crate::pipeline::stream::{FrameResult, Slots, StreamConfig};
use crate::pipeline::timing::{Stage, StageTimes};
use crate::pipeline::tracker::Tracker;
use crate::pipeline::window::Window;
use crate::tensor::DType;
use crate::text::Tokenizer;

/// One prompt's text features in device memory, bound directly as engine inputs.
struct DeviceText {
    raw: bool,
    prompt: String,
    /// The caption as the model sees it (the official demo's normalisation of the prompt).
    caption: String,
    /// `[Lm, d]` f32.
    encoded: DeviceBuffer,
    /// `[Lm]` bool.
    token_mask: DeviceBuffer,
    /// `[Lm, Lm]` bool.
    self_attention_mask: DeviceBuffer,
    /// `[Lm]` i64.
    position_ids: DeviceBuffer,
    /// Host copy of the token mask (the tracker's relevance reads it).
    mask: Vec<bool>,
    /// Real tokens: the enhanced-text rows the tracker reads.
    real: usize,
}

fn want(spec: &TensorSpec, dtype: DType, numel: usize, what: &str) -> Result<()> {
    if spec.dtype != dtype || spec.numel() != numel {
        return Err(Error::Backend(format!(
            "{what}: the device path needs {dtype:?} with {numel} elements, the engine has {:?} {:?}",
            spec.dtype, spec.shape
        )));
    }
    Ok(())
}

fn buffers(specs: &[TensorSpec], engine: &str) -> Result<Vec<DeviceBuffer>> {
    specs
        .iter()
        .map(|s| DeviceBuffer::new(s.bytes(), &format!("{engine}.{}", s.name)))
        .collect()
}

/// The streaming session on the GPU; see the module documentation.
pub struct DeviceStreamSession {
    dims: Dims,
    cfg: StreamConfig,
    out_size: (usize, usize),
    at: Slots,
    tokenizer: Tokenizer,
    text: Bound,
    frame: Box<dyn Engine>,
    temporal: Box<dyn Engine>,
    head: Box<dyn Engine>,
    stream: Stream,
    kernels: Arc<Kernels>,
    /// One device buffer per binding (the head's `memory_text` and `f_seg` inputs use the frame's).
    frame_in: Vec<DeviceBuffer>,
    frame_out: Vec<DeviceBuffer>,
    temporal_in: Vec<DeviceBuffer>,
    temporal_out: Vec<DeviceBuffer>,
    head_in: Vec<DeviceBuffer>,
    head_out: Vec<DeviceBuffer>,
    /// Views handed to the engines, rebuilt when a binding's address changes (prompt switch).
    frame_views: (Vec<View<'static>>, Vec<ViewMut<'static>>),
    temporal_views: (Vec<View<'static>>, Vec<ViewMut<'static>>),
    head_views: (Vec<View<'static>>, Vec<ViewMut<'static>>),
    /// The last `W` frames' tracked objects and sentence features, as the host window's ring.
    ring_objects: DeviceBuffer,
    ring_sentence: DeviceBuffer,
    window: Window,
    tracker: Tracker,
    scores: RunningScores,
    /// Host mirrors of what the host reads or writes.
    objects: Pinned<f32>,
    refs: Pinned<f32>,
    memory_text: Pinned<f32>,
    logits: Pinned<f32>,
    boxes: Pinned<f32>,
    frame_mask: Pinned<u8>,
    scratch_objects: Vec<f32>,
    scratch_refs: Vec<f32>,
    /// Prompts' device features, most recently used first.
    cache: Vec<DeviceText>,
    active: bool,
    pre: Option<GpuPreprocess>,
    masks: GpuMasks,
    ring: Option<RegisteredRing>,
    maps: heapless::Vec<usize, MAX_TRACKS>,
    labels: heapless::Vec<u8, MAX_TRACKS>,
    times: StageTimes,
    prompt_frames: u64,
    /// The object id the tracks are reported under (the live loop's id of the prompt's object).
    object: u16,
}

impl DeviceStreamSession {
    /// Binds the engines (which must run on one CUDA stream, as the TensorRT backend's do) and
    /// allocates every device buffer once; masks come out at `out_size` (height, width).
    pub fn new(engines: EngineSet, cfg: StreamConfig, out_size: (usize, usize)) -> Result<Self> {
        let dims = Dims::from_engines(&engines)?;
        let Some(stream) = engines.frame.cuda_stream() else {
            return Err(Error::Backend(
                "the device-resident session needs engines on a CUDA stream (TensorRT backend)"
                    .into(),
            ));
        };
        if engines.temporal.cuda_stream() != Some(stream)
            || engines.head.cuda_stream() != Some(stream)
        {
            return Err(Error::Backend(
                "the frame, temporal and head engines must share one CUDA stream".into(),
            ));
        }
        // SAFETY: the TensorRT backend's stream lives as long as its engines, which this session owns
        // (and synchronizes on drop, before the engines go).
        let stream = unsafe { Stream::from_raw(stream as cudarc::driver::sys::CUstream) };
        let (f, t, h) = (&engines.frame, &engines.temporal, &engines.head);
        let at = Slots::resolve(f.as_ref(), t.as_ref(), h.as_ref())?;
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
        // What the host reads, the kernels touch or two engines share must have the layout assumed.
        let (fi, fo, ti, to, hi, ho) = (
            f.inputs(),
            f.outputs(),
            t.inputs(),
            t.outputs(),
            h.inputs(),
            h.outputs(),
        );
        want(
            &fi[at.f_image],
            DType::F32,
            3 * height * width,
            "frame image",
        )?;
        want(&fi[at.f_text], DType::F32, lm * d, "frame encoded_text")?;
        want(&fi[at.f_token_mask], DType::Bool, lm, "frame token mask")?;
        want(
            &fi[at.f_sam],
            DType::Bool,
            lm * lm,
            "frame self-attention mask",
        )?;
        want(&fi[at.f_pos], DType::I64, lm, "frame position ids")?;
        want(&fo[at.f_objects], DType::F32, ns * d, "frame objects")?;
        want(&fo[at.f_refs], DType::F32, ns * 4, "frame refs")?;
        want(
            &fo[at.f_memory_text],
            DType::F32,
            lm * d,
            "frame memory_text",
        )?;
        want(
            &ti[at.t_objects],
            DType::F32,
            window * ns * d,
            "temporal objects",
        )?;
        want(
            &ti[at.t_sentence],
            DType::F32,
            window * d,
            "temporal sentence",
        )?;
        want(&ti[at.t_mask], DType::Bool, window, "temporal frame mask")?;
        want(
            &to[at.t_out],
            DType::F32,
            window * ns * d,
            "temporal objects_t",
        )?;
        want(&hi[at.h_objects], DType::F32, ns * d, "head objects_t")?;
        want(&hi[at.h_refs], DType::F32, ns * 4, "head refs")?;
        want(&hi[at.h_token_mask], DType::Bool, lm, "head token mask")?;
        want(&ho[at.h_logits], DType::F32, ns, "head logits")?;
        want(&ho[at.h_boxes], DType::F32, ns * 4, "head boxes")?;
        want(
            &ho[at.h_masks],
            DType::F32,
            ns * h4 * w4,
            "head mask_logits",
        )?;
        for (a, b, what) in [
            (&fo[at.f_memory_text], &hi[at.h_memory_text], "memory_text"),
            (&fo[at.f_seg], &hi[at.h_seg], "f_seg"),
        ] {
            if a.dtype != b.dtype || a.shape != b.shape {
                return Err(Error::Backend(format!(
                    "{what}: frame output {:?} {:?} and head input {:?} {:?} differ, so they cannot share device memory",
                    a.dtype, a.shape, b.dtype, b.shape
                )));
            }
        }
        if fo[at.f_seg].numel() != dm * h4 * w4 {
            return Err(Error::Backend("frame f_seg has an unexpected size".into()));
        }
        let kernels = gpu::kernels()?;
        let (oh, ow) = out_size;
        let masks = GpuMasks::new(ns, h4, w4, oh, ow, stream)?;
        let mut s = DeviceStreamSession {
            frame_in: buffers(fi, "frame")?,
            frame_out: buffers(fo, "frame")?,
            temporal_in: buffers(ti, "temporal")?,
            temporal_out: buffers(to, "temporal")?,
            head_in: buffers(hi, "head")?,
            head_out: buffers(ho, "head")?,
            frame_views: (Vec::with_capacity(fi.len()), Vec::with_capacity(fo.len())),
            temporal_views: (Vec::with_capacity(ti.len()), Vec::with_capacity(to.len())),
            head_views: (Vec::with_capacity(hi.len()), Vec::with_capacity(ho.len())),
            ring_objects: DeviceBuffer::new(window * ns * d * 4, "window objects")?,
            ring_sentence: DeviceBuffer::new(window * d * 4, "window sentences")?,
            window: Window::new(window, ns * d, d)?,
            tracker: Tracker::new(ns, d, cfg.tracking_alpha),
            scores: RunningScores::new(ns),
            objects: Pinned::new(ns * d, "objects")?,
            refs: Pinned::new(ns * 4, "refs")?,
            memory_text: Pinned::new(lm * d, "memory_text")?,
            logits: Pinned::new(ns, "logits")?,
            boxes: Pinned::new(ns * 4, "boxes")?,
            frame_mask: Pinned::new(window, "frame mask")?,
            scratch_objects: vec![0.0; ns * d],
            scratch_refs: vec![0.0; ns * 4],
            cache: Vec::with_capacity(cfg.text_cache.max(1) + 1),
            active: false,
            pre: None,
            masks,
            ring: None,
            maps: heapless::Vec::new(),
            labels: heapless::Vec::new(),
            times: StageTimes::default(),
            prompt_frames: 0,
            object: 0,
            tokenizer: Tokenizer::bundled()?,
            text: Bound::new(engines.text),
            frame: engines.frame,
            temporal: engines.temporal,
            head: engines.head,
            stream,
            kernels,
            at,
            dims,
            cfg,
            out_size,
        };
        s.bind_static_views();
        gpu::sync(stream)?;
        Ok(s)
    }

    /// The engines' sizes.
    pub fn dims(&self) -> Dims {
        self.dims
    }

    /// Per-stage times.
    pub fn times(&self) -> &StageTimes {
        &self.times
    }

    /// Running mean score per track since the prompt.
    pub fn scores(&self) -> &[f32] {
        self.scores.scores()
    }

    /// Best track or every track over a threshold.
    pub fn set_selection(&mut self, sel: Selection) {
        self.cfg.selection = sel;
    }

    /// Reports the tracks under object id `id` from the next frame (default 0).
    pub fn set_object_id(&mut self, id: u16) {
        self.object = id;
    }

    /// The active prompt and its caption (as the model sees it), if a prompt is set.
    pub fn prompt(&self) -> Option<(&str, &str)> {
        self.cache
            .first()
            .filter(|_| self.active)
            .map(|t| (t.prompt.as_str(), t.caption.as_str()))
    }

    /// Temporal and head views never change address; the frame's text inputs follow the prompt.
    fn bind_static_views(&mut self) {
        let at = self.at;
        let (ti, to) = &mut self.temporal_views;
        ti.clear();
        ti.extend(self.temporal_in.iter().map(DeviceBuffer::view));
        to.clear();
        to.extend(self.temporal_out.iter().map(DeviceBuffer::view_mut));
        let (hi, ho) = &mut self.head_views;
        hi.clear();
        hi.extend(self.head_in.iter().map(DeviceBuffer::view));
        hi[at.h_memory_text] = self.frame_out[at.f_memory_text].view();
        hi[at.h_seg] = self.frame_out[at.f_seg].view();
        ho.clear();
        ho.extend(self.head_out.iter().map(DeviceBuffer::view_mut));
        let (fi, fo) = &mut self.frame_views;
        fi.clear();
        fi.extend(self.frame_in.iter().map(DeviceBuffer::view));
        fo.clear();
        fo.extend(self.frame_out.iter().map(DeviceBuffer::view_mut));
    }

    /// Points the frame's and head's text inputs at the active prompt's device features.
    fn bind_text(&mut self) {
        let Some(t) = self.cache.first() else { return };
        let at = self.at;
        let fi = &mut self.frame_views.0;
        fi[at.f_text] = t.encoded.view();
        fi[at.f_token_mask] = t.token_mask.view();
        fi[at.f_sam] = t.self_attention_mask.view();
        fi[at.f_pos] = t.position_ids.view();
        self.head_views.0[at.h_token_mask] = t.token_mask.view();
    }

    /// Sets the prompt (the official demo's normalisation); its text features are computed once and
    /// kept on the device for the next `text_cache` prompts.
    pub fn set_prompt(&mut self, prompt: &str) -> Result<()> {
        self.set_text(prompt, false)
    }

    /// [`DeviceStreamSession::set_prompt`] for a raw benchmark expression.
    pub fn set_expression(&mut self, expression: &str) -> Result<()> {
        self.set_text(expression, true)
    }

    fn set_text(&mut self, prompt: &str, raw: bool) -> Result<()> {
        if let Some(pos) = self
            .cache
            .iter()
            .position(|t| t.raw == raw && t.prompt == prompt)
        {
            let e = self.cache.remove(pos);
            self.cache.insert(0, e);
        } else {
            let t0 = Instant::now();
            let cap = if raw {
                if prompt.trim().is_empty() {
                    return Err(Error::Text("expression is empty".into()));
                }
                self.tokenizer.encode(prompt, self.cfg.max_text_len)?
            } else {
                self.tokenizer
                    .encode_prompt(prompt, self.cfg.max_text_len)?
            };
            if cap.len > self.dims.lm {
                return Err(Error::Text(format!(
                    "prompt has {} tokens but the engines take at most {}; shorten it or rebuild with a larger --max-text",
                    cap.len, self.dims.lm
                )));
            }
            let tf = encode_caption(&mut self.text, self.dims.lm, &cap)?;
            let bools = |v: &[bool]| v.iter().map(|&b| b as u8).collect::<Vec<u8>>();
            let up = |bytes: &[u8], what: &str| gpu::upload(bytes, what, self.stream);
            let entry = DeviceText {
                raw,
                prompt: prompt.to_string(),
                caption: tf.caption.clone(),
                encoded: up(bytemuck::cast_slice(&tf.encoded), "prompt features")?,
                token_mask: up(&bools(&tf.token_mask), "prompt token mask")?,
                self_attention_mask: up(&bools(&tf.self_attention_mask), "prompt attention mask")?,
                position_ids: up(bytemuck::cast_slice(&tf.position_ids), "prompt positions")?,
                real: tf.token_mask.iter().rposition(|&m| m).map_or(0, |i| i + 1),
                mask: tf.token_mask,
            };
            self.cache.insert(0, entry);
            self.cache.truncate(self.cfg.text_cache.max(1));
            self.times.record(Stage::Text, t0.elapsed());
        }
        self.bind_text();
        self.active = true;
        self.reset_stream()
    }

    /// Drops the prompt: no engine runs and masks are empty until a new one is set.
    pub fn clear_prompt(&mut self) -> Result<()> {
        self.active = false;
        self.reset_stream()
    }

    fn reset_stream(&mut self) -> Result<()> {
        self.tracker.reset();
        self.window.clear();
        self.scores.reset();
        self.prompt_frames = 0;
        // Window padding must read as zeros, as the host path writes it.
        self.temporal_in[self.at.t_objects].zero(self.stream)?;
        self.temporal_in[self.at.t_sentence].zero(self.stream)?;
        Ok(())
    }

    /// The frame buffer (page-locked, mapped) for the next frame of this format and size, `stride ×
    /// height` bytes: write the camera's bytes here, then call [`DeviceStreamSession::step_into_ring`].
    /// A new geometry builds new tables once.
    pub fn frame_mut(
        &mut self,
        format: FrameFormat,
        width: u32,
        height: u32,
        stride: usize,
    ) -> Result<&mut [u8]> {
        let fits = self
            .pre
            .as_ref()
            .is_some_and(|p| p.fits(format, width, height, stride));
        if !fits {
            let (h, w) = (self.dims.height as u32, self.dims.width as u32);
            self.pre = Some(GpuPreprocess::new(
                format,
                width,
                height,
                stride,
                w,
                h,
                self.stream,
            )?);
            gpu::sync(self.stream)?;
        }
        Ok(self.pre.as_mut().expect("set above").frame_mut())
    }

    /// Registers `ring`'s memory with CUDA so that masks are written into its slots in place.
    pub fn attach_ring(&mut self, ring: &mut MaskRing) -> Result<()> {
        let g = ring.geometry();
        if (g.height as usize, g.width as usize) != self.out_size {
            return Err(Error::Shape(format!(
                "ring masks are {}x{}, the session's {}x{}",
                g.width, g.height, self.out_size.1, self.out_size.0
            )));
        }
        self.ring = None;
        self.ring = Some(RegisteredRing::new(ring)?);
        Ok(())
    }

    /// Runs the frame last written into [`DeviceStreamSession::frame_mut`] and writes its label mask
    /// (0 = background, `k + 1` = reported track `k`, the first track winning overlaps) into a new
    /// slot of `ring` (attached with [`DeviceStreamSession::attach_ring`]), then commits the slot. A
    /// failed frame leaves the slot uncommitted (the next frame reuses it).
    pub fn step_into_ring(
        &mut self,
        ring: &mut MaskRing,
        frame_id: u64,
        timestamp_ns: u64,
    ) -> Result<FrameResult> {
        let Some(reg) = self.ring.as_ref() else {
            return Err(Error::Gpu(
                "no ring attached: call attach_ring first".into(),
            ));
        };
        let mut slot = ring.begin_write();
        let mask_dev = reg.slot_mask(&mut slot)?;
        slot.frame_id = frame_id;
        slot.timestamp_ns = timestamp_ns;
        if !self.active {
            slot.mask().fill(0);
            slot.commit();
            return Ok(FrameResult::default());
        }
        match self.run_frame(mask_dev) {
            Ok(res) => {
                slot.tracks = res.tracks.clone();
                slot.commit();
                Ok(res)
            }
            Err(e) => {
                // Work enqueued before the failure may still read the frame buffer or write the slot:
                // let it finish before the caller writes the next frame (the slot stays uncommitted).
                let _ = gpu::sync(self.stream);
                Err(e)
            }
        }
    }

    /// Steps 1-7 of the module documentation; the mask goes to device address `mask_dev`.
    fn run_frame(&mut self, mask_dev: u64) -> Result<FrameResult> {
        let start = Instant::now();
        let mut res = FrameResult::default();
        let Some(pre) = self.pre.as_ref() else {
            return Err(Error::Gpu(
                "no frame: write one with frame_mut first".into(),
            ));
        };
        let Dims { d, ns, window, .. } = self.dims;
        let (at, st) = (self.at, self.stream);
        let (oh, ow) = self.out_size;

        // 1-2. Preprocess into the image binding, run the frame engine.
        pre.launch(&self.kernels, &self.frame_in[at.f_image], st)?;
        let (fi, fo) = &mut self.frame_views;
        self.frame.enqueue(fi, fo)?;
        // 3. What the tracker reads.
        let real = self.cache[0].real;
        self.objects
            .fetch(0..ns * d, self.frame_out[at.f_objects].ptr(), st)?;
        self.refs
            .fetch(0..ns * 4, self.frame_out[at.f_refs].ptr(), st)?;
        self.memory_text
            .fetch(0..real * d, self.frame_out[at.f_memory_text].ptr(), st)?;
        gpu::sync(st)?;
        let t_frame = Instant::now();
        self.times.record(Stage::Frame, t_frame - start);

        let mask = &self.cache[0].mask[..real];
        let text = &self.memory_text.as_slice()[..real * d];
        self.tracker.step(
            self.objects.as_mut_slice(),
            self.refs.as_mut_slice(),
            text,
            mask,
            &mut self.scratch_objects,
            &mut self.scratch_refs,
        )?;
        let t_track = Instant::now();
        self.times.record(Stage::Tracker, t_track - t_frame);

        // 4. Tracked boxes to the head; the frame into the device window, laid out oldest first.
        self.refs
            .send(0..ns * 4, self.head_in[at.h_refs].ptr(), st)?;
        self.window
            .push(self.objects.as_slice(), &self.memory_text.as_slice()[..d])?;
        let k = self.window.newest_slot().expect("pushed above");
        let (row_o, row_s) = (ns * d * 4, d * 4);
        self.objects
            .send(0..ns * d, self.ring_objects.at(k * row_o, row_o)?, st)?;
        gpu::copy_d2d(
            self.ring_sentence.at(k * row_s, row_s)?,
            self.frame_out[at.f_memory_text].at(0, row_s)?,
            row_s,
            st,
        )?;
        let (first_slot, first, len) = self.window.runs();
        for (ring, dst, row) in [
            (&self.ring_objects, &self.temporal_in[at.t_objects], row_o),
            (&self.ring_sentence, &self.temporal_in[at.t_sentence], row_s),
        ] {
            gpu::copy_d2d(
                dst.at(0, first * row)?,
                ring.at(first_slot * row, first * row)?,
                first * row,
                st,
            )?;
            let rest = len - first;
            gpu::copy_d2d(
                dst.at(first * row, rest * row)?,
                ring.at(0, rest * row)?,
                rest * row,
                st,
            )?;
        }
        for (i, m) in self.frame_mask.as_mut_slice().iter_mut().enumerate() {
            *m = (i < len) as u8;
        }
        self.frame_mask
            .send(0..window, self.temporal_in[at.t_mask].ptr(), st)?;

        // 5. Temporal engine; its newest row feeds the head, which reads the frame's features in place.
        let (ti, to) = &mut self.temporal_views;
        self.temporal.enqueue(ti, to)?;
        gpu::copy_d2d(
            self.head_in[at.h_objects].ptr(),
            self.temporal_out[at.t_out].at((len - 1) * row_o, row_o)?,
            row_o,
            st,
        )?;
        let (hi, ho) = &mut self.head_views;
        self.head.enqueue(hi, ho)?;
        // 6. What the choice of tracks reads.
        self.logits
            .fetch(0..ns, self.head_out[at.h_logits].ptr(), st)?;
        self.boxes
            .fetch(0..ns * 4, self.head_out[at.h_boxes].ptr(), st)?;
        gpu::sync(st)?;
        let t_head = Instant::now();
        self.times.record(Stage::Head, t_head - t_track);

        self.scores.update(self.logits.as_slice())?;
        self.scores.select(self.cfg.selection);
        let (chosen, scores) = (self.scores.chosen(), self.scores.scores());
        // 7. Masks straight into the slot.
        self.maps.clear();
        self.labels.clear();
        let boxes = self.boxes.as_slice();
        for (k, &q) in chosen.iter().enumerate().take(MAX_TRACKS) {
            let _ = self.maps.push(q);
            let _ = self.labels.push(k as u8 + 1);
            let b = &boxes[q * 4..q * 4 + 4];
            let (cx, cy, bw, bh) = (
                b[0] * ow as f32,
                b[1] * oh as f32,
                b[2] * ow as f32,
                b[3] * oh as f32,
            );
            let _ = res.tracks.push(TrackEntry {
                id: q as u32,
                object: self.object,
                score: scores[q],
                bbox: [cx - bw / 2.0, cy - bh / 2.0, cx + bw / 2.0, cy + bh / 2.0],
            });
        }
        let table = TrackTable::chosen(&self.maps, &self.labels, None)
            .map_err(|e| Error::Gpu(e.to_string()))?;
        self.masks.launch(
            &self.kernels,
            &self.head_out[at.h_masks],
            &table,
            mask_dev,
            st,
        )?;
        gpu::sync(st)?;
        self.prompt_frames += 1;
        res.active = true;
        res.window_len = len;
        res.prompt_frames = self.prompt_frames;
        let end = Instant::now();
        self.times.record(Stage::Post, end - t_head);
        self.times.record(Stage::Total, end - start);
        Ok(res)
    }
}

impl Drop for DeviceStreamSession {
    fn drop(&mut self) {
        // Nothing enqueued may outlive the buffers it uses.
        let _ = gpu::sync(self.stream);
    }
}
