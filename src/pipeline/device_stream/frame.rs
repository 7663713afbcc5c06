//! A frame on the device path: the mapped frame buffer the camera writes, the mask ring registered
//! with CUDA, and one frame's run (step 1, the chunks of objects, then step 7 of the module
//! documentation).

use std::time::Instant;

use referdino_plugins::dims::FrameFormat;
use referdino_plugins::kernels::TrackTable;

use crate::error::{Error, Result};
use crate::output::ring::{MaskRing, MAX_TRACKS};
use crate::pipeline::gpu::{self, GpuPreprocess, RegisteredRing};
use crate::pipeline::stream::FrameResult;
use crate::pipeline::timing::Stage;

use super::bindings::enqueue;
use super::object::DeviceObject;
use super::DeviceStreamSession;

impl DeviceStreamSession {
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
}
