//! Construction of a [`DeviceStreamSession`]: the engines checked and bound on one CUDA stream (or the
//! host emulation), every device buffer and pinned mirror allocated once, and the views handed to the
//! engines bound once.

use crate::error::{Error, Result};
use crate::graph::engines::names as n;
use crate::pipeline::gpu::{self, DeviceBuffer, GpuMasks, Pinned, Stream};
use crate::pipeline::multi::{Front, MultiEngineSet, DEFAULT_MAX_OBJECTS};
use crate::pipeline::objects::ObjectTable;
use crate::pipeline::session::{binding_index, Bound, Dims, EngineSet};
use crate::pipeline::slots::Slots;
use crate::pipeline::stream::StreamConfig;
use crate::pipeline::timing::StageTimes;
use crate::tensor::DType;
use crate::text::Tokenizer;

use super::bindings::{buffers_but, dim, want};
use super::{DeviceStreamSession, ImagePart};

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
}
