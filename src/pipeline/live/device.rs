//! A live stream on the device-resident path (feature `cuda`; TensorRT plans need `tensorrt`, host
//! engines under the session's host emulation do not): the stream's own TensorRT plan set
//! driven by a [`DeviceStreamSession`] on its own CUDA stream, the frame (copied by the capture
//! thread, then once more into page-locked mapped memory) preprocessed by a kernel, and the label mask of every object written by a kernel
//! straight into the stream's ring slot (the ring is registered with CUDA; the loop's sinks read the
//! committed slot). Object commands have the host path's meaning
//! ([`crate::pipeline::objects::apply_command`]).

use crate::camera::Layout;
use crate::error::{Error, Result};
use crate::output::ring::MaskRing;
use crate::pipeline::commands::{Command, ObjectId};
use crate::pipeline::device_stream::DeviceStreamSession;
use crate::pipeline::multi::MultiEngineSet;
use crate::pipeline::objects::{apply_command_with_ids, check_command, IdSpace, ObjectSet};
use crate::pipeline::post::Selection;
use crate::pipeline::stream::{FrameResult, StreamConfig};
use crate::pipeline::timing::StageTimes;
use referdino_plugins::dims::FrameFormat;

/// One stream's device session and its objects.
pub(crate) struct DeviceLane {
    session: DeviceStreamSession,
}

impl DeviceLane {
    /// Binds `engines` (the whole-frame or the object set, its engines on one CUDA stream) for up to
    /// `max_objects` objects and masks of `out_size` (height, width), and registers `ring`, into
    /// whose slots the masks are written, with CUDA. The ring must outlive the lane.
    /// `emulated`: the session runs under the host emulation (host engines, no GPU).
    pub(crate) fn new(
        engines: MultiEngineSet,
        cfg: StreamConfig,
        out_size: (usize, usize),
        max_objects: usize,
        ring: &mut MaskRing,
        emulated: bool,
    ) -> Result<Self> {
        let mut session = if emulated {
            DeviceStreamSession::emulated(engines, cfg, out_size, max_objects)?
        } else {
            DeviceStreamSession::with_max_objects(engines, cfg, out_size, max_objects)?
        };
        session.attach_ring(ring)?;
        Ok(DeviceLane { session })
    }

    /// The objects: id, prompt and caption (as the model sees it), ascending id.
    pub(crate) fn objects(&self) -> impl Iterator<Item = (ObjectId, &str, &str)> {
        self.session.objects()
    }

    /// Per-stage latency counters.
    pub(crate) fn times(&self) -> &StageTimes {
        self.session.times()
    }

    /// Changes the selection rule from the next frame on.
    pub(crate) fn set_selection(&mut self, sel: Selection) {
        self.session.set_selection(sel);
    }

    /// Applies an object command with the host path's meaning (ids the command added come back;
    /// an `add` gives its objects `ids` when given); a refused command (too many objects, an empty
    /// or too long prompt, an unknown id) changes nothing.
    pub(crate) fn apply(
        &mut self,
        command: &Command,
        ids: Option<&[ObjectId]>,
    ) -> Result<Vec<ObjectId>> {
        apply_command_with_ids(&mut self.session, command, ids)
    }

    /// Whether [`DeviceLane::apply`] would take the command (its prompts encoded and cached).
    pub(crate) fn check(&mut self, command: &Command, ids: Option<&[ObjectId]>) -> Result<()> {
        check_command(&mut self.session, command, ids)
    }

    /// Encodes `prompt` with the lane's text engine (cached): whether a stream of this run's
    /// engines would take it.
    pub(crate) fn check_prompt(&mut self, prompt: &str) -> Result<()> {
        self.session.check_prompt(prompt)
    }

    /// The objects' ids, and the ids given out with where the automatic search starts.
    pub(crate) fn id_space(&self) -> (Vec<ObjectId>, &IdSpace) {
        (self.session.ids(), self.session.id_space())
    }

    /// Gives the session `t`'s objects with their ids (a stream joining late); the objects it
    /// refuses come back with the reason.
    pub(crate) fn restore(&mut self, t: &super::template::JoinTemplate) -> Vec<(ObjectId, Error)> {
        t.restore(&mut self.session)
    }

    /// Re-scores the first object's clip (`--finalize`; `None` without objects).
    pub(crate) fn finalize(&mut self) -> Result<Option<crate::pipeline::session::VideoResult>> {
        if self.session.is_empty() {
            return Ok(None);
        }
        let sel = self.session.selection();
        self.session.finalize(sel).map(Some)
    }

    /// Copies a tight frame (RGB, BGR, YUYV, RGBx or BGRx: the kernel decodes each) into the session's
    /// page-locked input, read in place by the preprocessing kernel.
    pub(crate) fn load_frame(
        &mut self,
        layout: Layout,
        pixels: &[u8],
        width: u32,
        height: u32,
    ) -> Result<()> {
        let format = match layout {
            Layout::Rgb => FrameFormat::Rgb24,
            Layout::Bgr => FrameFormat::Bgr24,
            Layout::Yuyv => FrameFormat::Yuyv,
            Layout::Rgbx => FrameFormat::Rgbx,
            Layout::Bgrx => FrameFormat::Bgrx,
        };
        let stride = width as usize * layout.bytes_per_pixel();
        let dst = self.session.frame_mut(format, width, height, stride)?;
        if dst.len() != pixels.len() {
            return Err(Error::Shape(format!(
                "frame of {} bytes for {width}x{height} {} ({} expected)",
                pixels.len(),
                layout.name(),
                dst.len()
            )));
        }
        dst.copy_from_slice(pixels);
        Ok(())
    }

    /// Runs the loaded frame; its mask goes into a new slot of `ring`, committed on success.
    pub(crate) fn step(
        &mut self,
        ring: &mut MaskRing,
        frame_id: u64,
        timestamp_ns: u64,
    ) -> Result<FrameResult> {
        self.session.step_into_ring(ring, frame_id, timestamp_ns)
    }
}
