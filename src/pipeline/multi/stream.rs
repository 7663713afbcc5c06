//! One stream's state: [`MultiStream`] (its image buffer, its objects and per-frame buffers) with its
//! settings ([`MultiConfig`]), its accessors and the object changes (add, remove, replace, set,
//! clear), and [`HostObjects`], through which object commands change a host stream.

use super::object::{Clip, Object};
use super::shared_engines::SharedEngines;
use crate::error::Result;
use crate::pipeline::commands::ObjectId;
use crate::pipeline::labels::LabelUpsampler;
use crate::pipeline::objects::ObjectTable;
use crate::pipeline::post::Selection;
use crate::pipeline::selector::RunningScores;
use crate::pipeline::session::{Dims, TextFeatures};
use crate::pipeline::timing::StageTimes;
use crate::pipeline::tracker::Tracker;
use crate::pipeline::window::{Rows, Window};
use crate::tensor::Tensor;

/// Objects per stream unless configured otherwise.
pub const DEFAULT_MAX_OBJECTS: usize = 8;

/// Settings of a [`MultiStream`].
#[derive(Clone, Copy, Debug)]
pub struct MultiConfig {
    /// Tracker momentum (0.1 official).
    pub tracking_alpha: f32,
    /// Best track or every track over a threshold, per object.
    pub selection: Selection,
    /// Objects this stream takes at most.
    pub max_objects: usize,
    /// Keep the first object's per-frame features for [`MultiStream::finalize`].
    pub keep_clip: bool,
}

impl Default for MultiConfig {
    fn default() -> Self {
        MultiConfig {
            tracking_alpha: 0.1,
            selection: Selection::Single,
            max_objects: DEFAULT_MAX_OBJECTS,
            keep_clip: false,
        }
    }
}

/// One stream's objects and per-frame buffers; the engines are lent to each call.
pub struct MultiStream {
    pub(super) cfg: MultiConfig,
    pub(super) dims: Dims,
    pub(super) objects: ObjectTable<Object>,
    pub(super) image: Tensor,
    pub(super) labels: LabelUpsampler,
    pub(super) owner: Vec<f32>,
    pub(super) scratch_objects: Vec<f32>,
    pub(super) scratch_refs: Vec<f32>,
    pub(super) out_size: (usize, usize),
    pub(super) times: StageTimes,
    pub(super) frames_total: u64,
    /// Objects whose tracking this frame has begun and not finished (a group between its tracker
    /// step and its labels): if the frame fails there, they restart ([`ObjectTable::restart_in_flight`]).
    pub(super) in_flight: std::ops::Range<usize>,
}

impl MultiStream {
    /// A stream without objects whose masks come out at `out_size` (height, width).
    pub fn new(eng: &SharedEngines, cfg: MultiConfig, out_size: (usize, usize)) -> Result<Self> {
        let objects = ObjectTable::new(cfg.max_objects)?;
        let dims = eng.dims;
        let (oh, ow) = out_size;
        let img = match &eng.image {
            Some(i) => &i.inputs[eng.at.image],
            None => &eng.front.inputs[eng.at.image],
        };
        // One frame, whatever the image engine's batch.
        let mut shape = img.shape().to_vec();
        if let Some(b) = shape.first_mut() {
            *b = 1;
        }
        Ok(MultiStream {
            cfg,
            dims,
            objects,
            image: Tensor::zeros(&shape, img.dtype()),
            labels: LabelUpsampler::new(dims.h4, dims.w4, oh, ow)?,
            owner: vec![f32::NEG_INFINITY; oh * ow],
            scratch_objects: vec![0.0; dims.ns * dims.d],
            scratch_refs: vec![0.0; dims.ns * 4],
            out_size,
            times: StageTimes::default(),
            frames_total: 0,
            in_flight: 0..0,
        })
    }

    /// The normalised `[3, H, W]` image input of the next [`MultiStream::step`]: preprocess into it.
    pub fn image_mut(&mut self) -> Result<&mut [f32]> {
        self.image.f32s_mut()
    }

    /// Mask size (height, width).
    pub fn out_size(&self) -> (usize, usize) {
        self.out_size
    }

    /// Most objects this stream takes.
    pub fn max_objects(&self) -> usize {
        self.cfg.max_objects
    }

    /// Current selection rule.
    pub fn selection(&self) -> Selection {
        self.cfg.selection
    }

    /// Changes the selection rule from the next frame on (running scores are kept).
    pub fn set_selection(&mut self, sel: Selection) {
        self.cfg.selection = sel;
    }

    /// Per-stage latency counters (the image and cross-modal parts count as `frame`).
    pub fn times(&self) -> &StageTimes {
        &self.times
    }

    /// The latency counters, e.g. to clear them after a warm-up.
    pub fn times_mut(&mut self) -> &mut StageTimes {
        &mut self.times
    }

    /// Frames processed in total.
    pub fn frames_total(&self) -> u64 {
        self.frames_total
    }

    /// The objects: id, prompt and caption (the normalised text the model sees), ascending id.
    pub fn objects(&self) -> impl Iterator<Item = (ObjectId, &str, &str)> {
        self.objects
            .iter()
            .map(|o| (o.id, o.prompt.as_str(), o.text.caption.as_str()))
    }

    /// The ids given out and where the automatic search starts.
    pub fn id_space(&self) -> &crate::pipeline::objects::IdSpace {
        self.objects.id_space()
    }

    /// Number of objects.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// True without objects.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Running-mean score per track of object `id`.
    pub fn scores(&self, id: ObjectId) -> Option<&[f32]> {
        self.objects.get(id).map(|o| o.scores.scores())
    }

    /// Frames processed since object `id`'s prompt was set.
    pub fn object_frames(&self, id: ObjectId) -> Option<u64> {
        self.objects.get(id).map(|o| o.frames)
    }

    /// A new object; `keep_clip` when it is the first of an empty stream (it keeps the clip for
    /// finalize).
    fn object(
        &self,
        id: ObjectId,
        prompt: &str,
        text: TextFeatures,
        keep_clip: bool,
    ) -> Result<Object> {
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
        let clip = (self.cfg.keep_clip && keep_clip).then(|| Clip {
            refs: Rows::new(window, ns * 4),
            memory_text: Rows::new(window, lm * d),
            f_seg: Rows::new(window, dm * h4 * w4),
        });
        Ok(Object {
            id,
            prompt: prompt.to_string(),
            text,
            tracker: Tracker::new(ns, d, self.cfg.tracking_alpha),
            window: Window::new(window, ns * d, d)?,
            scores: RunningScores::new(ns),
            objects: vec![0.0; ns * d],
            newest: 0,
            frames: 0,
            clip,
        })
    }

    /// Adds an object for `prompt` with id `id` (or one past the highest id given out so far, so
    /// ids of removed objects are not reused while others are free) and returns its id. It is
    /// tracked from the next frame; the other objects are untouched. Errors, changing nothing:
    /// the id is in use, the stream holds `max_objects` already, the prompt is empty or too long.
    pub fn add(
        &mut self,
        eng: &mut SharedEngines,
        id: Option<ObjectId>,
        prompt: &str,
    ) -> Result<ObjectId> {
        let id = self.objects.claim(id)?;
        let tf = eng.encode_timed(prompt, &mut self.times)?;
        let o = self.object(id, prompt, tf, self.objects.is_empty())?;
        self.objects.insert(o);
        Ok(id)
    }

    /// Removes object `id`; the others keep their ids, tracks and scores.
    pub fn remove(&mut self, id: ObjectId) -> Result<()> {
        self.objects.remove(id).map(|_| ())
    }

    /// Gives object `id` a new prompt; its tracker, window and scores start afresh, its id stays.
    pub fn replace(&mut self, eng: &mut SharedEngines, id: ObjectId, prompt: &str) -> Result<()> {
        self.objects.get_mut(id)?;
        let tf = eng.encode_timed(prompt, &mut self.times)?;
        let o = self.objects.get_mut(id)?;
        o.prompt = prompt.to_string();
        o.text = tf;
        o.restart();
        Ok(())
    }

    /// Replaces every object by one per prompt (ids 0, 1, …), all or nothing.
    pub fn set_prompts(&mut self, eng: &mut SharedEngines, prompts: &[&str]) -> Result<()> {
        self.objects.check_count(prompts.len())?;
        let mut objects = Vec::with_capacity(prompts.len());
        for (i, p) in prompts.iter().enumerate() {
            let tf = eng.encode_timed(p, &mut self.times)?;
            objects.push(self.object(i as ObjectId, p, tf, i == 0)?);
        }
        self.objects.replace_all(objects)
    }

    /// Drops every object: masks are empty and no engine runs until one is added.
    pub fn clear(&mut self) {
        self.objects.clear();
    }
}

/// A host stream's objects with the engines that encode their prompts: what object commands change
/// ([`crate::pipeline::objects::apply_command`]).
pub struct HostObjects<'a> {
    /// The stream.
    pub stream: &'a mut MultiStream,
    /// The engines its objects run on.
    pub engines: &'a mut SharedEngines,
}

impl crate::pipeline::objects::ObjectSet for HostObjects<'_> {
    fn len(&self) -> usize {
        self.stream.len()
    }
    fn max_objects(&self) -> usize {
        self.stream.max_objects()
    }
    fn ids(&self) -> Vec<ObjectId> {
        self.stream.objects().map(|o| o.0).collect()
    }
    fn id_space(&self) -> &crate::pipeline::objects::IdSpace {
        self.stream.objects.id_space()
    }
    fn check_prompt(&mut self, prompt: &str) -> Result<()> {
        self.engines
            .encode_timed(prompt, &mut self.stream.times)
            .map(|_| ())
    }
    fn set_prompts(&mut self, prompts: &[&str]) -> Result<()> {
        self.stream.set_prompts(self.engines, prompts)
    }
    fn clear(&mut self) -> Result<()> {
        self.stream.clear();
        Ok(())
    }
    fn add(&mut self, id: Option<ObjectId>, prompt: &str) -> Result<ObjectId> {
        self.stream.add(self.engines, id, prompt)
    }
    fn remove(&mut self, id: ObjectId) -> Result<()> {
        self.stream.remove(id)
    }
    fn replace(&mut self, id: ObjectId, prompt: &str) -> Result<()> {
        self.stream.replace(self.engines, id, prompt)
    }
    fn resume_ids(&mut self, from: &crate::pipeline::objects::IdSpace) {
        self.stream.objects.resume_ids(from);
    }
}
