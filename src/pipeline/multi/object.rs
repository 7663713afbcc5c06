//! One referred object of a stream: its id, prompt and text features, its own tracker, window and
//! running scores, and (the first object, when asked) the per-frame features kept for finalize.

use crate::pipeline::commands::ObjectId;
use crate::pipeline::objects::Keyed;
use crate::pipeline::selector::RunningScores;
use crate::pipeline::session::TextFeatures;
use crate::pipeline::tracker::Tracker;
use crate::pipeline::window::{Rows, Window};

/// The per-frame features kept for [`MultiStream::finalize`] (first object only).
///
/// [`MultiStream::finalize`]: super::MultiStream::finalize
pub(super) struct Clip {
    pub(super) refs: Rows,
    pub(super) memory_text: Rows,
    pub(super) f_seg: Rows,
}

/// One referred object of a stream.
pub(super) struct Object {
    pub(super) id: ObjectId,
    pub(super) prompt: String,
    pub(super) text: TextFeatures,
    pub(super) tracker: Tracker,
    pub(super) window: Window,
    pub(super) scores: RunningScores,
    pub(super) objects: Vec<f32>,
    /// Row of the newest frame in this object's last temporal window.
    pub(super) newest: usize,
    pub(super) frames: u64,
    pub(super) clip: Option<Clip>,
}

impl Keyed for Object {
    fn id(&self) -> ObjectId {
        self.id
    }
}

impl Object {
    /// Tracking starts afresh: tracker, window, scores, frame count and clip.
    pub(super) fn restart(&mut self) {
        self.tracker.reset();
        self.window.clear();
        self.scores.reset();
        self.frames = 0;
        if let Some(c) = self.clip.as_mut() {
            c.refs.clear();
            c.memory_text.clear();
            c.f_seg.clear();
        }
    }
}
