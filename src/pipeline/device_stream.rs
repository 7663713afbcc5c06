//! Device-resident streaming session (feature `cuda`, engines from the TensorRT backend): the same
//! per-frame algorithm as [`StreamSession`](crate::pipeline::stream::StreamSession), with every tensor
//! between engines kept in device memory and only what the host truly needs crossing the bus.
//!
//! Per frame, on the engines' one CUDA stream:
//!
//! 1. the camera frame, written into page-locked mapped memory, becomes the frame engine's input by the
//!    preprocessing kernel (the CPU preprocessor's tables: identical input);
//! 2. frame engine, enqueued with device bindings; its text inputs hold the prompt's features, computed
//!    once per prompt, kept on the device in a small cache and copied device to device into the
//!    bindings only when the prompt there changes;
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
//! **Several objects.** A stream holds up to `max_objects` referred objects (ids and command rules
//! shared with the host path through [`ObjectTable`] and [`ObjectSet`]), each with its own device text
//! features, tracker, running scores and device window ring. The engines are either the whole-frame set
//! ([`EngineSet`]: steps 2-6 run once per object) or the object set ([`Front::Split`]: the image engine
//! (Swin + input projections) runs once per frame on the preprocessed image, then the cross-modal,
//! temporal and head engines run once per chunk of `B` objects, the engines' batch, each object in its
//! row). Every binding keeps its address: an object's text features are copied device to device into
//! its row of the text inputs when they differ from what the row holds (33 KB for a 32-token prompt),
//! so captured CUDA graphs stay valid frame after frame. Step 7 then composes every object's chosen
//! tracks into the slot in one kernel, the higher running score taking overlapping pixels (the host
//! path's rule). Per frame that is 2 synchronizations per chunk + 1.
//!
//! **Finalize.** With `keep_clip`, the first object added to an empty session keeps its first `W`
//! frames' tracked boxes (host) and enhanced text and segmentation features (device, copied device to
//! device after its frame engine: `W · dm·h4·w4` floats, 530 MB for Swin-T at W = 36 and 360×640), and
//! [`DeviceStreamSession::finalize`] re-scores them as one clip exactly as the host path's finalize
//! does: the temporal engine over the laid-out window, the head once per frame, the clip's selection.

use std::sync::Arc;
use std::time::Instant;

use referdino_plugins::dims::FrameFormat;
use referdino_plugins::kernels::{Kernels, TrackTable};

use crate::backend::{Engine, TensorSpec, View, ViewMut};
use crate::error::{Error, Result};
use crate::graph::engines::names as n;
use crate::output::ring::{MaskRing, MAX_TRACKS};
use crate::pipeline::commands::ObjectId;
use crate::pipeline::gpu::{
    self, DeviceBuffer, GpuMasks, GpuPreprocess, Pinned, RegisteredRing, Stream,
};
use crate::pipeline::multi::{Front, MultiEngineSet, DEFAULT_MAX_OBJECTS};
use crate::pipeline::objects::{IdSpace, Keyed, ObjectSet, ObjectTable};
use crate::pipeline::post::{box4, track_entry, Selection};
use crate::pipeline::selector::RunningScores;
use crate::pipeline::session::{
    binding_index, clip_frames, encode_caption, tokenize, Bound, Dims, EngineSet, VideoResult,
};
use crate::pipeline::slots::Slots;
use crate::pipeline::stream::{FrameResult, StreamConfig};
use crate::pipeline::timing::{Stage, StageTimes};
use crate::pipeline::tracker::Tracker;
use crate::pipeline::window::{Rows, Window};
use crate::tensor::DType;
use crate::text::Tokenizer;

/// One prompt's text features in device memory, copied into the engines' text inputs for its object.
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

/// Device buffers for `specs`, but a 1-byte placeholder at the positions in `elsewhere` (bindings
/// whose views point at another engine's buffers).
fn buffers_but(
    specs: &[TensorSpec],
    engine: &str,
    elsewhere: &[usize],
    stream: Stream,
) -> Result<Vec<DeviceBuffer>> {
    specs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let bytes = if elsewhere.contains(&i) { 1 } else { s.bytes() };
            DeviceBuffer::new(bytes, &format!("{engine}.{}", s.name), stream)
        })
        .collect()
}

fn unemulated(d: DType) -> Error {
    Error::Gpu(format!(
        "the host emulation has no host view of {d:?} bindings"
    ))
}

/// Runs `engine` on the session's bindings: enqueued on the CUDA stream, or under the host emulation
/// run at once on host views of the same buffers (made for the call, so no view outlives it).
fn enqueue(
    engine: &mut dyn Engine,
    inputs: &[View<'static>],
    outputs: &mut [ViewMut<'static>],
    stream: Stream,
) -> Result<()> {
    if !stream.is_host() {
        return engine.enqueue(inputs, outputs);
    }
    let addr = |v: &View<'_>| match v {
        View::Device(d) => Ok((d.ptr(), d.bytes())),
        _ => Err(Error::Gpu("a device binding holds a host view".into())),
    };
    let addr_mut = |v: &ViewMut<'_>| match v {
        ViewMut::Device(d) => Ok((d.ptr(), d.bytes())),
        _ => Err(Error::Gpu("a device binding holds a host view".into())),
    };
    let mut ins = Vec::with_capacity(inputs.len());
    for (v, spec) in inputs.iter().zip(engine.inputs()) {
        let (ptr, bytes) = addr(v)?;
        let n = spec.numel();
        if bytes < spec.bytes() {
            return Err(Error::Shape(format!("{}: {bytes} bytes bound", spec.name)));
        }
        let p = ptr as usize;
        // SAFETY: under the emulation every binding is a live, 8-byte aligned host allocation of the
        // session of at least `spec.bytes()` bytes (checked above); these views live for this call
        // only, during which the session touches no buffer, and one call's inputs and outputs are
        // distinct allocations. Bool buffers only ever hold 0 or 1 (uploaded from bools, or zeroed).
        ins.push(unsafe {
            match spec.dtype {
                DType::F32 => View::F32(std::slice::from_raw_parts(p as *const f32, n)),
                DType::F16 => View::F16(std::slice::from_raw_parts(p as *const half::f16, n)),
                DType::I64 => View::I64(std::slice::from_raw_parts(p as *const i64, n)),
                DType::U8 => View::U8(std::slice::from_raw_parts(p as *const u8, n)),
                DType::Bool => View::Bool(std::slice::from_raw_parts(p as *const bool, n)),
                other => return Err(unemulated(other)),
            }
        });
    }
    let mut outs = Vec::with_capacity(outputs.len());
    for (v, spec) in outputs.iter().zip(engine.outputs()) {
        let (ptr, bytes) = addr_mut(v)?;
        let n = spec.numel();
        if bytes < spec.bytes() {
            return Err(Error::Shape(format!("{}: {bytes} bytes bound", spec.name)));
        }
        let p = ptr as usize;
        // SAFETY: as for the inputs; each output is its own allocation, borrowed once.
        outs.push(unsafe {
            match spec.dtype {
                DType::F32 => ViewMut::F32(std::slice::from_raw_parts_mut(p as *mut f32, n)),
                DType::F16 => ViewMut::F16(std::slice::from_raw_parts_mut(p as *mut half::f16, n)),
                DType::I64 => ViewMut::I64(std::slice::from_raw_parts_mut(p as *mut i64, n)),
                DType::U8 => ViewMut::U8(std::slice::from_raw_parts_mut(p as *mut u8, n)),
                DType::Bool => ViewMut::Bool(std::slice::from_raw_parts_mut(p as *mut bool, n)),
                other => return Err(unemulated(other)),
            }
        });
    }
    engine.run(&ins, &mut outs)
}

fn dim(spec: &TensorSpec, i: usize) -> usize {
    spec.shape.get(i).copied().unwrap_or(0)
}

/// The object set's image engine: run once per frame; its outputs are the cross engine's inputs.
struct ImagePart {
    engine: Box<dyn Engine>,
    inputs: Vec<DeviceBuffer>,
    outputs: Vec<DeviceBuffer>,
    views: (Vec<View<'static>>, Vec<ViewMut<'static>>),
}

/// One referred object: its text features, tracking state and device window ring.
struct DeviceObject {
    id: ObjectId,
    text: Arc<DeviceText>,
    tracker: Tracker,
    /// The host window keeps the bookkeeping (which ring slot holds which frame).
    window: Window,
    scores: RunningScores,
    /// The last `W` frames' tracked objects `[W, Ns, d]` and sentence features `[W, d]`, in the
    /// host window's ring order.
    ring_objects: DeviceBuffer,
    ring_sentence: DeviceBuffer,
    /// Frames since its prompt.
    frames: u64,
    /// Its first frames' features, for finalize (`keep_clip`, first object of an empty session).
    clip: Option<DeviceClip>,
}

/// One object's first `W` frames since its prompt, as the head engine takes them.
struct DeviceClip {
    /// Tracked boxes `[T, Ns, 4]` (host: they go to the head through the pinned mirror).
    refs: Rows,
    /// Enhanced text `[W, Lm, d]`.
    memory_text: DeviceBuffer,
    /// Segmentation features `[W, dm, h4, w4]`.
    f_seg: DeviceBuffer,
}

impl Keyed for DeviceObject {
    fn id(&self) -> ObjectId {
        self.id
    }
}

/// The streaming session on the GPU; see the module documentation.
pub struct DeviceStreamSession {
    dims: Dims,
    cfg: StreamConfig,
    out_size: (usize, usize),
    at: Slots,
    /// Objects per run of the front (cross), temporal and head engines: 1 for the frame engine.
    batch: usize,
    tokenizer: Tokenizer,
    text: Bound,
    image: Option<ImagePart>,
    /// The frame engine, or the object set's cross engine.
    front: Box<dyn Engine>,
    temporal: Box<dyn Engine>,
    head: Box<dyn Engine>,
    stream: Stream,
    /// The stream's context, made current at every entry point.
    ctx: gpu::Context,
    /// `None` under the host emulation.
    kernels: Option<Arc<Kernels>>,
    /// One device buffer per binding (placeholders where a view points at another engine's output:
    /// the head's `memory_text` and `f_seg` inputs are the front's outputs, the cross engine's image
    /// inputs the image engine's outputs).
    front_in: Vec<DeviceBuffer>,
    front_out: Vec<DeviceBuffer>,
    temporal_in: Vec<DeviceBuffer>,
    temporal_out: Vec<DeviceBuffer>,
    head_in: Vec<DeviceBuffer>,
    head_out: Vec<DeviceBuffer>,
    /// Views handed to the engines, bound once: every binding keeps its address for the session's
    /// life (so a captured CUDA graph is replayed frame after frame, chunk after chunk).
    front_views: (Vec<View<'static>>, Vec<ViewMut<'static>>),
    temporal_views: (Vec<View<'static>>, Vec<ViewMut<'static>>),
    head_views: (Vec<View<'static>>, Vec<ViewMut<'static>>),
    objects: ObjectTable<DeviceObject>,
    /// Per row of the batched engines: the text whose features its text inputs hold.
    bound_text: Vec<Option<Arc<DeviceText>>>,
    /// Per row: rows of its temporal window an earlier layout left non-zero (a shorter window
    /// zeroes them: padding reads as zeros, as the host path writes it).
    laid: Vec<usize>,
    /// Per row of the current chunk: the frames its window holds.
    lens: Vec<usize>,
    /// Every object's mask logits `[objects, Ns, h4, w4]` when they take more than one chunk (one
    /// chunk's are read where the head left them).
    mask_logits: DeviceBuffer,
    /// Host mirrors of what the host reads or writes, one row per batch row.
    p_objects: Pinned<f32>,
    p_refs: Pinned<f32>,
    p_text: Pinned<f32>,
    p_logits: Pinned<f32>,
    p_boxes: Pinned<f32>,
    p_frame_mask: Pinned<u8>,
    scratch_objects: Vec<f32>,
    scratch_refs: Vec<f32>,
    /// Prompts' device features, most recently used first (objects hold their own reference).
    cache: crate::pipeline::mru::Mru<Arc<DeviceText>>,
    pre: Option<GpuPreprocess>,
    masks: GpuMasks,
    ring: Option<RegisteredRing>,
    /// The track table of the frame being composed: map, label and running score per track.
    maps: heapless::Vec<usize, MAX_TRACKS>,
    labels: heapless::Vec<u8, MAX_TRACKS>,
    track_scores: heapless::Vec<f32, MAX_TRACKS>,
    times: StageTimes,
    frames_total: u64,
    /// Objects between their tracker step and their labels in the frame being run: if it fails
    /// there, they restart ([`ObjectTable::restart_in_flight`]).
    in_flight: std::ops::Range<usize>,
}

impl DeviceObject {
    /// Tracking starts afresh: tracker, window, scores, frame count and clip.
    fn restart(&mut self) {
        self.tracker.reset();
        self.window.clear();
        self.scores.reset();
        self.frames = 0;
        if let Some(c) = self.clip.as_mut() {
            c.refs.clear();
        }
    }
}

impl DeviceStreamSession {
    /// Binds a whole-frame engine set (whose engines must run on one CUDA stream, as the TensorRT
    /// backend's do) and allocates every device buffer once, for up to [`DEFAULT_MAX_OBJECTS`]
    /// objects; masks come out at `out_size` (height, width).
    pub fn new(engines: EngineSet, cfg: StreamConfig, out_size: (usize, usize)) -> Result<Self> {
        Self::with_max_objects(engines, cfg, out_size, DEFAULT_MAX_OBJECTS)
    }

    /// [`DeviceStreamSession::new`] for up to `max_objects` objects, on a whole-frame set or an
    /// object set ([`Front::Split`] with an image engine of batch 1 and cross, temporal and head
    /// engines of one batch `B`). Each object holds `W·(Ns + 1)·d` floats of device memory (0.6 MB
    /// for Swin-T at W = 36), and `Ns·h4·w4` more (0.9 MB) when the objects take several chunks;
    /// all allocated here or when an object is added, never per frame.
    pub fn with_max_objects(
        engines: impl Into<MultiEngineSet>,
        cfg: StreamConfig,
        out_size: (usize, usize),
        max_objects: usize,
    ) -> Result<Self> {
        let engines: MultiEngineSet = engines.into();
        let (image, front) = match &engines.front {
            Front::Split { image, cross } => (Some(image), cross),
            Front::Frame(f) => (None, f),
        };
        let Some(stream) = front.cuda_stream() else {
            return Err(Error::Backend(
                "the device-resident session needs engines on a CUDA stream (TensorRT backend)"
                    .into(),
            ));
        };
        if engines.temporal.cuda_stream() != Some(stream)
            || engines.head.cuda_stream() != Some(stream)
            || image.is_some_and(|i| i.cuda_stream() != Some(stream))
        {
            return Err(Error::Backend(
                "the image, frame/cross, temporal and head engines must share one CUDA stream"
                    .into(),
            ));
        }
        // SAFETY: the TensorRT backend's stream lives as long as its engines, which this session owns
        // (and synchronizes on drop, before the engines go).
        let stream = unsafe { Stream::from_raw(stream as cudarc::driver::sys::CUstream) };
        Self::on_stream(engines, cfg, out_size, max_objects, stream)
    }

    /// The session under the host emulation ([`Stream::host`]): the same code on host memory, the
    /// engines run synchronously on host views of the buffers (any host engines: the CPU backend's,
    /// or test doubles), the kernels' CPU counterparts. It checks the orchestration (what is copied
    /// where, rows, windows, chunks, finalize) against the host sessions on machines without a GPU;
    /// CUDA itself only runs on a GPU. Frames must be packed RGB24.
    pub fn emulated(
        engines: impl Into<MultiEngineSet>,
        cfg: StreamConfig,
        out_size: (usize, usize),
        max_objects: usize,
    ) -> Result<Self> {
        Self::on_stream(engines.into(), cfg, out_size, max_objects, Stream::host())
    }

    fn on_stream(
        engines: MultiEngineSet,
        cfg: StreamConfig,
        out_size: (usize, usize),
        max_objects: usize,
        stream: Stream,
    ) -> Result<Self> {
        // Kernels, device buffers and pinned memory below belong to the stream's context: make it
        // current on this thread first (a fresh thread has none; another device's may be current).
        let ctx = stream.context()?;
        ctx.bind()?;
        let objects = ObjectTable::new(max_objects)?;
        let (image, front) = match engines.front {
            Front::Split { image, cross } => (Some(image), cross),
            Front::Frame(f) => (None, f),
        };
        let (temporal, head) = (engines.temporal, engines.head);
        let at = Slots::resolve(
            image.as_deref(),
            front.as_ref(),
            temporal.as_ref(),
            head.as_ref(),
        )?;
        let (fi, fo, ti, to, hi, ho) = (
            front.inputs(),
            front.outputs(),
            temporal.inputs(),
            temporal.outputs(),
            head.inputs(),
            head.outputs(),
        );
        let img = match &image {
            Some(i) => &i.inputs()[at.image],
            None => &fi[at.image],
        };
        let (fobj, fseg, tobj) = (&fo[at.f_objects], &fo[at.f_seg], &ti[at.t_objects]);
        let b = dim(fobj, 0);
        // A batched temporal engine has `[B, W, Ns, d]` bindings, the single one `[W, Ns, d]`.
        let (hb, window) = match tobj.shape.as_slice() {
            [hb, w, _, _] => (*hb, *w),
            s => (1, s.first().copied().unwrap_or(0)),
        };
        let text_spec = &engines.text.outputs()
            [binding_index(engines.text.outputs(), n::ENCODED_TEXT, engines.text.name())?];
        let dims = Dims {
            d: dim(fobj, 2),
            ns: dim(fobj, 1),
            lm: dim(text_spec, 1),
            dm: dim(fseg, 1),
            height: dim(img, 2),
            width: dim(img, 3),
            h4: dim(fseg, 2),
            w4: dim(fseg, 3),
            window,
        };
        if b == 0 || hb != b || (image.is_none() && b != 1) || dim(img, 0) != 1 {
            return Err(Error::Backend(format!(
                "the device path takes a frame engine of batch 1, or an image engine of batch 1 with cross, temporal and head engines of one batch; got image {:?}, front objects {:?}, temporal objects {:?}",
                img.shape, fobj.shape, tobj.shape
            )));
        }
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
        want(img, DType::F32, 3 * height * width, "image")?;
        want(&fi[at.f_text], DType::F32, b * lm * d, "front encoded_text")?;
        want(
            &fi[at.f_token_mask],
            DType::Bool,
            b * lm,
            "front token mask",
        )?;
        want(
            &fi[at.f_sam],
            DType::Bool,
            b * lm * lm,
            "front self-attention mask",
        )?;
        want(&fi[at.f_pos], DType::I64, b * lm, "front position ids")?;
        want(fobj, DType::F32, b * ns * d, "front objects")?;
        want(&fo[at.f_refs], DType::F32, b * ns * 4, "front refs")?;
        want(
            &fo[at.f_memory_text],
            DType::F32,
            b * lm * d,
            "front memory_text",
        )?;
        want(fseg, DType::F32, b * dm * h4 * w4, "front f_seg")?;
        want(tobj, DType::F32, b * window * ns * d, "temporal objects")?;
        want(
            &ti[at.t_sentence],
            DType::F32,
            b * window * d,
            "temporal sentence",
        )?;
        want(
            &ti[at.t_mask],
            DType::Bool,
            b * window,
            "temporal frame mask",
        )?;
        want(
            &to[at.t_out],
            DType::F32,
            b * window * ns * d,
            "temporal objects_t",
        )?;
        want(&hi[at.h_objects], DType::F32, b * ns * d, "head objects_t")?;
        want(&hi[at.h_refs], DType::F32, b * ns * 4, "head refs")?;
        want(&hi[at.h_token_mask], DType::Bool, b * lm, "head token mask")?;
        want(&ho[at.h_logits], DType::F32, b * ns, "head logits")?;
        want(&ho[at.h_boxes], DType::F32, b * ns * 4, "head boxes")?;
        want(
            &ho[at.h_masks],
            DType::F32,
            b * ns * h4 * w4,
            "head mask_logits",
        )?;
        let mut shared = vec![
            (&fo[at.f_memory_text], &hi[at.h_memory_text], "memory_text"),
            (fseg, &hi[at.h_seg], "f_seg"),
        ];
        if let Some(i) = &image {
            let io = i.outputs();
            shared.push((&io[at.i_tokens], &fi[at.c_tokens], "image tokens"));
            shared.push((&io[at.i_stride4], &fi[at.c_stride4], "stride4"));
        }
        for (a, c, what) in shared {
            if a.dtype != c.dtype || a.shape != c.shape {
                return Err(Error::Backend(format!(
                    "{what}: output {:?} {:?} and input {:?} {:?} differ, so they cannot share device memory",
                    a.dtype, a.shape, c.dtype, c.shape
                )));
            }
        }
        let kernels = if stream.is_host() {
            None
        } else {
            Some(gpu::kernels()?)
        };
        let (oh, ow) = out_size;
        let masks = GpuMasks::new(max_objects.max(b) * ns, h4, w4, oh, ow, stream)?;
        let image = match image {
            Some(engine) => {
                let (ii, io) = (engine.inputs(), engine.outputs());
                Some(ImagePart {
                    inputs: buffers_but(ii, "image", &[], stream)?,
                    outputs: buffers_but(io, "image", &[], stream)?,
                    views: (Vec::with_capacity(ii.len()), Vec::with_capacity(io.len())),
                    engine,
                })
            }
            None => None,
        };
        let cross_inputs = if image.is_some() {
            vec![at.c_tokens, at.c_stride4]
        } else {
            Vec::new()
        };
        let mut s = DeviceStreamSession {
            front_in: buffers_but(fi, "front", &cross_inputs, stream)?,
            front_out: buffers_but(fo, "front", &[], stream)?,
            temporal_in: buffers_but(ti, "temporal", &[], stream)?,
            temporal_out: buffers_but(to, "temporal", &[], stream)?,
            head_in: buffers_but(hi, "head", &[at.h_memory_text, at.h_seg], stream)?,
            head_out: buffers_but(ho, "head", &[], stream)?,
            front_views: (Vec::with_capacity(fi.len()), Vec::with_capacity(fo.len())),
            temporal_views: (Vec::with_capacity(ti.len()), Vec::with_capacity(to.len())),
            head_views: (Vec::with_capacity(hi.len()), Vec::with_capacity(ho.len())),
            objects,
            bound_text: vec![None; b],
            laid: vec![0; b],
            lens: vec![0; b],
            mask_logits: if max_objects > b {
                DeviceBuffer::new(
                    max_objects * ns * h4 * w4 * 4,
                    "every object's mask logits",
                    stream,
                )?
            } else {
                DeviceBuffer::new(1, "unused", stream)?
            },
            p_objects: Pinned::new(b * ns * d, "objects", stream)?,
            p_refs: Pinned::new(b * ns * 4, "refs", stream)?,
            p_text: Pinned::new(b * lm * d, "memory_text", stream)?,
            p_logits: Pinned::new(b * ns, "logits", stream)?,
            p_boxes: Pinned::new(b * ns * 4, "boxes", stream)?,
            p_frame_mask: Pinned::new(b * window, "frame mask", stream)?,
            scratch_objects: vec![0.0; ns * d],
            scratch_refs: vec![0.0; ns * 4],
            cache: crate::pipeline::mru::Mru::new(cfg.text_cache),
            pre: None,
            masks,
            ring: None,
            maps: heapless::Vec::new(),
            labels: heapless::Vec::new(),
            track_scores: heapless::Vec::new(),
            times: StageTimes::default(),
            frames_total: 0,
            in_flight: 0..0,
            tokenizer: Tokenizer::bundled()?,
            text: Bound::new(engines.text),
            image,
            front,
            temporal,
            head,
            stream,
            ctx,
            kernels,
            at,
            batch: b,
            dims,
            cfg,
            out_size,
        };
        s.bind_views();
        // Every binding starts zeroed, as the emulation's host allocations do: window padding must
        // read as zeros (the host path writes it so), and the rows of a chunk past its objects, which
        // the engines compute but nothing reads, then hold valid bools rather than whatever
        // `cuMemAlloc` left.
        for b in s
            .front_in
            .iter()
            .chain(&s.front_out)
            .chain(&s.temporal_in)
            .chain(&s.temporal_out)
            .chain(&s.head_in)
            .chain(&s.head_out)
            .chain(
                s.image
                    .iter()
                    .flat_map(|i| i.inputs.iter().chain(&i.outputs)),
            )
        {
            b.zero(stream)?;
        }
        gpu::sync(stream)?;
        Ok(s)
    }

    /// The engines' sizes.
    pub fn dims(&self) -> Dims {
        self.dims
    }

    /// Objects per run of the cross-modal, temporal and head engines (1 for the frame engine).
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// True when the image part runs once per frame, apart from the cross-modal part (object set).
    pub fn is_split(&self) -> bool {
        self.image.is_some()
    }

    /// Per-stage times.
    pub fn times(&self) -> &StageTimes {
        &self.times
    }

    /// Frames run with at least one object.
    pub fn frames_total(&self) -> u64 {
        self.frames_total
    }

    /// Running mean score per track of object `id` since its prompt.
    pub fn scores(&self, id: ObjectId) -> Option<&[f32]> {
        self.objects.get(id).map(|o| o.scores.scores())
    }

    /// Frames run since object `id`'s prompt.
    pub fn object_frames(&self, id: ObjectId) -> Option<u64> {
        self.objects.get(id).map(|o| o.frames)
    }

    /// The selection rule.
    pub fn selection(&self) -> Selection {
        self.cfg.selection
    }

    /// Best track or every track over a threshold, per object.
    pub fn set_selection(&mut self, sel: Selection) {
        self.cfg.selection = sel;
    }

    /// Most objects the session takes.
    pub fn max_objects(&self) -> usize {
        self.objects.max()
    }

    /// Number of objects.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// True without objects.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// The objects: id, prompt and caption (the normalised text the model sees), ascending id.
    pub fn objects(&self) -> impl Iterator<Item = (ObjectId, &str, &str)> {
        self.objects
            .iter()
            .map(|o| (o.id, o.text.prompt.as_str(), o.text.caption.as_str()))
    }

    /// Every binding's view, once: the text inputs are buffers of their own, filled per row; the
    /// head reads the front's `memory_text` and `f_seg`, the cross engine the image engine's outputs.
    fn bind_views(&mut self) {
        let at = self.at;
        let (ti, to) = &mut self.temporal_views;
        ti.clear();
        ti.extend(self.temporal_in.iter().map(DeviceBuffer::view));
        to.clear();
        to.extend(self.temporal_out.iter().map(DeviceBuffer::view_mut));
        let (hi, ho) = &mut self.head_views;
        hi.clear();
        hi.extend(self.head_in.iter().map(DeviceBuffer::view));
        hi[at.h_memory_text] = self.front_out[at.f_memory_text].view();
        hi[at.h_seg] = self.front_out[at.f_seg].view();
        ho.clear();
        ho.extend(self.head_out.iter().map(DeviceBuffer::view_mut));
        let (fi, fo) = &mut self.front_views;
        fi.clear();
        fi.extend(self.front_in.iter().map(DeviceBuffer::view));
        fo.clear();
        fo.extend(self.front_out.iter().map(DeviceBuffer::view_mut));
        if let Some(img) = self.image.as_mut() {
            fi[at.c_tokens] = img.outputs[at.i_tokens].view();
            fi[at.c_stride4] = img.outputs[at.i_stride4].view();
            let (ii, io) = &mut img.views;
            ii.clear();
            ii.extend(img.inputs.iter().map(DeviceBuffer::view));
            io.clear();
            io.extend(img.outputs.iter().map(DeviceBuffer::view_mut));
        }
    }

    /// One object tracking `prompt` (the official demo's normalisation): replaces every object.
    pub fn set_prompt(&mut self, prompt: &str) -> Result<()> {
        self.set_prompts(&[prompt])
    }

    /// [`DeviceStreamSession::set_prompt`] for a raw benchmark expression.
    pub fn set_expression(&mut self, expression: &str) -> Result<()> {
        let t = self.encode(expression, true)?;
        let o = self.object(0, t, true)?;
        self.objects.replace_all([o])
    }

    /// Drops every object: no engine runs and masks are empty until one is added.
    pub fn clear_prompt(&mut self) {
        // Their device buffers are freed in this stream's context, whatever thread calls.
        let _ = self.ctx.bind();
        self.objects.clear();
    }

    /// Replaces every object by one per prompt (ids 0, 1, …), all or nothing.
    pub fn set_prompts(&mut self, prompts: &[&str]) -> Result<()> {
        self.objects.check_count(prompts.len())?;
        let mut objects = Vec::with_capacity(prompts.len());
        for (i, p) in prompts.iter().enumerate() {
            let t = self.encode(p, false)?;
            objects.push(self.object(i as ObjectId, t, i == 0)?);
        }
        self.objects.replace_all(objects)
    }

    /// Adds an object for `prompt` with id `id` (or the next automatic one, as on the host path)
    /// and returns its id; it is tracked from the next frame, the others untouched.
    pub fn add(&mut self, id: Option<ObjectId>, prompt: &str) -> Result<ObjectId> {
        let id = self.objects.claim(id)?;
        let t = self.encode(prompt, false)?;
        let o = self.object(id, t, self.objects.is_empty())?;
        self.objects.insert(o);
        Ok(id)
    }

    /// Removes object `id`; the others keep their ids, tracks and scores.
    pub fn remove(&mut self, id: ObjectId) -> Result<()> {
        // Its device buffers are freed in this stream's context, whatever thread calls.
        self.ctx.bind()?;
        self.objects.remove(id).map(|_| ())
    }

    /// Gives object `id` a new prompt; its tracker, window and scores start afresh, its id stays.
    pub fn replace(&mut self, id: ObjectId, prompt: &str) -> Result<()> {
        self.objects.get_mut(id)?;
        let t = self.encode(prompt, false)?;
        let o = self.objects.get_mut(id)?;
        o.text = t;
        o.restart();
        Ok(())
    }

    /// A new object with its device window ring (allocated here, never per frame); `first` when it
    /// is the first of an empty session (which keeps the clip when the session keeps clips).
    fn object(&self, id: ObjectId, text: Arc<DeviceText>, first: bool) -> Result<DeviceObject> {
        // Allocated in this stream's context, whatever thread calls (a cached prompt skips
        // `encode`, which binds too).
        self.ctx.bind()?;
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
        let clip = if self.cfg.keep_clip && first {
            Some(DeviceClip {
                refs: Rows::new(window, ns * 4),
                memory_text: DeviceBuffer::new(window * lm * d * 4, "clip text", self.stream)?,
                f_seg: DeviceBuffer::new(window * dm * h4 * w4 * 4, "clip features", self.stream)?,
            })
        } else {
            None
        };
        Ok(DeviceObject {
            id,
            text,
            tracker: Tracker::new(ns, d, self.cfg.tracking_alpha),
            window: Window::new(window, ns * d, d)?,
            scores: RunningScores::new(ns),
            ring_objects: DeviceBuffer::new(window * ns * d * 4, "window objects", self.stream)?,
            ring_sentence: DeviceBuffer::new(window * d * 4, "window sentences", self.stream)?,
            frames: 0,
            clip,
        })
    }

    /// A prompt's device text features: from the cache, or computed once and kept for the next
    /// `text_cache` prompts.
    fn encode(&mut self, prompt: &str, raw: bool) -> Result<Arc<DeviceText>> {
        if let Some(e) = self.cache.take(|t| t.raw == raw && t.prompt == prompt) {
            return Ok(e.clone());
        }
        self.ctx.bind()?;
        let t0 = Instant::now();
        let cap = tokenize(
            &self.tokenizer,
            prompt,
            raw,
            self.cfg.max_text_len,
            self.dims.lm,
        )?;
        let tf = encode_caption(&mut self.text, self.dims.lm, &cap)?;
        let bools = |v: &[bool]| v.iter().map(|&b| b as u8).collect::<Vec<u8>>();
        let up = |bytes: &[u8], what: &str| gpu::upload(bytes, what, self.stream);
        let entry = Arc::new(DeviceText {
            raw,
            prompt: prompt.to_string(),
            caption: tf.caption.clone(),
            encoded: up(bytemuck::cast_slice(&tf.encoded), "prompt features")?,
            token_mask: up(&bools(&tf.token_mask), "prompt token mask")?,
            self_attention_mask: up(&bools(&tf.self_attention_mask), "prompt attention mask")?,
            position_ids: up(bytemuck::cast_slice(&tf.position_ids), "prompt positions")?,
            real: tf.token_mask.iter().rposition(|&m| m).map_or(0, |i| i + 1),
            mask: tf.token_mask,
        });
        self.cache.put(entry.clone());
        self.times.record(Stage::Text, t0.elapsed());
        Ok(entry)
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
        self.ctx.bind()?;
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
        self.ctx.bind()?;
        self.ring = None;
        self.ring = Some(RegisteredRing::new(ring, self.stream)?);
        Ok(())
    }

    /// Runs the frame last written into [`DeviceStreamSession::frame_mut`] for every object and
    /// writes its label mask into a new slot of `ring` (attached with
    /// [`DeviceStreamSession::attach_ring`]), then commits the slot: 0 = background, `k + 1` = track
    /// table entry `k`. Entries go object by object (ascending id), each object's tracks best first,
    /// at most `max(1, 16 / objects)` per object; where masks overlap the pixel goes to the entry
    /// with the higher running score (the earlier on a tie), as on the host path. A failed frame
    /// leaves the slot uncommitted (the next frame reuses it).
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
        self.ctx.bind()?;
        let mut slot = ring.begin_write();
        let mask_dev = reg.slot_mask(&mut slot)?;
        slot.frame_id = frame_id;
        slot.timestamp_ns = timestamp_ns;
        if self.objects.is_empty() {
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

    /// Step 1 (and the image engine), steps 2-6 per chunk of objects, then step 7 of the module
    /// documentation; the mask goes to device address `mask_dev`.
    fn run_frame(&mut self, mask_dev: u64) -> Result<FrameResult> {
        let start = Instant::now();
        let mut res = FrameResult::default();
        let Some(pre) = self.pre.as_mut() else {
            return Err(Error::Gpu(
                "no frame: write one with frame_mut first".into(),
            ));
        };
        let (at, st) = (self.at, self.stream);
        let k = self.kernels.as_deref();
        // 1. Preprocess into the image binding; the image engine runs once, whatever the objects.
        match self.image.as_mut() {
            Some(img) => {
                pre.launch(k, &img.inputs[at.image], st)?;
                let (ii, io) = &mut img.views;
                enqueue(img.engine.as_mut(), ii, io, st)?;
            }
            None => pre.launch(k, &self.front_in[at.image], st)?,
        }
        self.maps.clear();
        self.labels.clear();
        self.track_scores.clear();
        let n = self.objects.len();
        let per_object = (MAX_TRACKS / n).max(1);
        for c0 in (0..n).step_by(self.batch) {
            if let Err(e) = self.run_chunk(c0, per_object, &mut res, start) {
                self.objects
                    .restart_in_flight(&mut self.in_flight, DeviceObject::restart);
                return Err(e);
            }
        }
        // 7. Every object's chosen masks straight into the slot.
        let t_post = Instant::now();
        let table = TrackTable::chosen(&self.maps, &self.labels, Some(&self.track_scores))
            .map_err(|e| Error::Gpu(e.to_string()))?;
        let logits = if n > self.batch {
            &self.mask_logits
        } else {
            &self.head_out[at.h_masks]
        };
        self.masks
            .launch(self.kernels.as_deref(), logits, &table, mask_dev, st)?;
        gpu::sync(st)?;
        self.frames_total += 1;
        res.active = true;
        let end = Instant::now();
        self.times.record(Stage::Post, end - t_post);
        self.times.record(Stage::Total, end - start);
        Ok(res)
    }

    /// Steps 2-6 for the objects `c0..` (up to the batch), object `c0 + j` in row `j` of the
    /// batched engines: their chosen tracks go into the frame's track table, reading map
    /// `k·Ns + q` of object `k`'s query `q` (in the head's output for one chunk, in the buffer of
    /// every object's maps for several).
    fn run_chunk(
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
    fn load_text(&mut self, j: usize, text: &Arc<DeviceText>) -> Result<()> {
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
    fn lay_out(&mut self, k: usize, j: usize) -> Result<usize> {
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

/// Object commands on the device path, with the host path's ids and errors.
impl ObjectSet for DeviceStreamSession {
    fn len(&self) -> usize {
        self.objects.len()
    }
    fn max_objects(&self) -> usize {
        self.objects.max()
    }
    fn ids(&self) -> Vec<ObjectId> {
        self.objects.iter().map(|o| o.id).collect()
    }
    fn id_space(&self) -> &IdSpace {
        self.objects.id_space()
    }
    fn check_prompt(&mut self, prompt: &str) -> Result<()> {
        self.encode(prompt, false).map(|_| ())
    }
    fn set_prompts(&mut self, prompts: &[&str]) -> Result<()> {
        DeviceStreamSession::set_prompts(self, prompts)
    }
    fn clear(&mut self) -> Result<()> {
        self.clear_prompt();
        Ok(())
    }
    fn add(&mut self, id: Option<ObjectId>, prompt: &str) -> Result<ObjectId> {
        DeviceStreamSession::add(self, id, prompt)
    }
    fn remove(&mut self, id: ObjectId) -> Result<()> {
        DeviceStreamSession::remove(self, id)
    }
    fn replace(&mut self, id: ObjectId, prompt: &str) -> Result<()> {
        DeviceStreamSession::replace(self, id, prompt)
    }
    fn resume_ids(&mut self, from: &IdSpace) {
        self.objects.resume_ids(from);
    }
}

impl Drop for DeviceStreamSession {
    fn drop(&mut self) {
        // Nothing enqueued may outlive the buffers it uses.
        let _ = self.ctx.bind();
        let _ = gpu::sync(self.stream);
    }
}
