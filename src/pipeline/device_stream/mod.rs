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
//!    device copies per input (the host [`Window`](crate::pipeline::window::Window) keeps the bookkeeping);
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
//! shared with the host path through [`ObjectTable`] and [`ObjectSet`](crate::pipeline::objects::ObjectSet)), each with its own device text
//! features, tracker, running scores and device window ring. The engines are either the whole-frame set
//! ([`EngineSet`](crate::pipeline::session::EngineSet): steps 2-6 run once per object) or the object set ([`Front::Split`](crate::pipeline::multi::Front::Split): the image engine
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
//!
//! **Files.** The session's state and its accessors are here; `object` holds one referred object's
//! state (its text features, tracker, window ring and clip), `bindings` the engine bindings' checks,
//! allocation and enqueue (or host emulation), `setup` the constructors (binding the engines and
//! allocating every buffer), `prompts` the object commands and the prompts' device text features,
//! `frame` the frame buffer, the ring and a frame's run (steps 1 and 7), `chunk` steps 2-6 for one
//! chunk of objects, and `finalize` the clip's re-scoring.

mod bindings;
mod chunk;
mod finalize;
mod frame;
mod object;
mod prompts;
mod setup;

use std::sync::Arc;

use referdino_plugins::kernels::Kernels;

use crate::backend::{Engine, View, ViewMut};
use crate::output::ring::MAX_TRACKS;
use crate::pipeline::gpu::{
    self, DeviceBuffer, GpuMasks, GpuPreprocess, Pinned, RegisteredRing, Stream,
};
use crate::pipeline::objects::ObjectTable;
use crate::pipeline::post::Selection;
use crate::pipeline::session::{Bound, Dims};
use crate::pipeline::slots::Slots;
use crate::pipeline::stream::StreamConfig;
use crate::pipeline::timing::StageTimes;
use crate::text::Tokenizer;

use object::{DeviceObject, DeviceText};

/// The object set's image engine: run once per frame; its outputs are the cross engine's inputs.
struct ImagePart {
    engine: Box<dyn Engine>,
    inputs: Vec<DeviceBuffer>,
    outputs: Vec<DeviceBuffer>,
    views: (Vec<View<'static>>, Vec<ViewMut<'static>>),
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

impl DeviceStreamSession {
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

    /// The selection rule.
    pub fn selection(&self) -> Selection {
        self.cfg.selection
    }

    /// Best track or every track over a threshold, per object.
    pub fn set_selection(&mut self, sel: Selection) {
        self.cfg.selection = sel;
    }
}

impl Drop for DeviceStreamSession {
    fn drop(&mut self) {
        // Nothing enqueued may outlive the buffers it uses.
        let _ = self.ctx.bind();
        let _ = gpu::sync(self.stream);
    }
}
