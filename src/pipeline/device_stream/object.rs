//! One referred object of a [`DeviceStreamSession`](super::DeviceStreamSession): its prompt's device
//! text features, its tracker, running scores and device window ring, and the first frames it keeps
//! for finalize.

use std::sync::Arc;

use crate::pipeline::commands::ObjectId;
use crate::pipeline::gpu::DeviceBuffer;
use crate::pipeline::objects::Keyed;
use crate::pipeline::selector::RunningScores;
use crate::pipeline::tracker::Tracker;
use crate::pipeline::window::{Rows, Window};

/// One prompt's text features in device memory, copied into the engines' text inputs for its object.
pub(super) struct DeviceText {
    pub(super) raw: bool,
    pub(super) prompt: String,
    /// The caption as the model sees it (the official demo's normalisation of the prompt).
    pub(super) caption: String,
    /// `[Lm, d]` f32.
    pub(super) encoded: DeviceBuffer,
    /// `[Lm]` bool.
    pub(super) token_mask: DeviceBuffer,
    /// `[Lm, Lm]` bool.
    pub(super) self_attention_mask: DeviceBuffer,
    /// `[Lm]` i64.
    pub(super) position_ids: DeviceBuffer,
    /// Host copy of the token mask (the tracker's relevance reads it).
    pub(super) mask: Vec<bool>,
    /// Real tokens: the enhanced-text rows the tracker reads.
    pub(super) real: usize,
}

/// One referred object: its text features, tracking state and device window ring.
pub(super) struct DeviceObject {
    pub(super) id: ObjectId,
    pub(super) text: Arc<DeviceText>,
    pub(super) tracker: Tracker,
    /// The host window keeps the bookkeeping (which ring slot holds which frame).
    pub(super) window: Window,
    pub(super) scores: RunningScores,
    /// The last `W` frames' tracked objects `[W, Ns, d]` and sentence features `[W, d]`, in the
    /// host window's ring order.
    pub(super) ring_objects: DeviceBuffer,
    pub(super) ring_sentence: DeviceBuffer,
    /// Frames since its prompt.
    pub(super) frames: u64,
    /// Its first frames' features, for finalize (`keep_clip`, first object of an empty session).
    pub(super) clip: Option<DeviceClip>,
}

/// One object's first `W` frames since its prompt, as the head engine takes them.
pub(super) struct DeviceClip {
    /// Tracked boxes `[T, Ns, 4]` (host: they go to the head through the pinned mirror).
    pub(super) refs: Rows,
    /// Enhanced text `[W, Lm, d]`.
    pub(super) memory_text: DeviceBuffer,
    /// Segmentation features `[W, dm, h4, w4]`.
    pub(super) f_seg: DeviceBuffer,
}

impl Keyed for DeviceObject {
    fn id(&self) -> ObjectId {
        self.id
    }
}

impl DeviceObject {
    /// Tracking starts afresh: tracker, window, scores, frame count and clip.
    pub(super) fn restart(&mut self) {
        self.tracker.reset();
        self.window.clear();
        self.scores.reset();
        self.frames = 0;
        if let Some(c) = self.clip.as_mut() {
            c.refs.clear();
        }
    }
}
