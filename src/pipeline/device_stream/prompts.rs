//! The objects of a [`DeviceStreamSession`]: what they are, the object commands (prompts set, added,
//! removed, replaced; [`ObjectSet`] with the host path's ids and errors), and the prompts' device text
//! features, computed once per prompt and cached.

use std::sync::Arc;
use std::time::Instant;

use crate::error::Result;
use crate::pipeline::commands::ObjectId;
use crate::pipeline::gpu::{self, DeviceBuffer};
use crate::pipeline::objects::{IdSpace, ObjectSet};
use crate::pipeline::selector::RunningScores;
use crate::pipeline::session::{encode_caption, tokenize, Dims};
use crate::pipeline::timing::Stage;
use crate::pipeline::tracker::Tracker;
use crate::pipeline::window::{Rows, Window};

use super::object::{DeviceClip, DeviceObject, DeviceText};
use super::DeviceStreamSession;

impl DeviceStreamSession {
    /// Running mean score per track of object `id` since its prompt.
    pub fn scores(&self, id: ObjectId) -> Option<&[f32]> {
        self.objects.get(id).map(|o| o.scores.scores())
    }

    /// Frames run since object `id`'s prompt.
    pub fn object_frames(&self, id: ObjectId) -> Option<u64> {
        self.objects.get(id).map(|o| o.frames)
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
