//! Offline session: a whole clip and one prompt in, per-frame masks out, exactly as the official `infer`
//! and demo post-processing (docs/model.md, "Selection, upsampling, thresholding").
//!
//! The engines are driven on buffers owned by the session; the tracker, selection and upsampling run on the
//! host. With tracing on (engines exported with taps), every intermediate tensor is collected under the
//! official fixture key names for the parity report.

use crate::backend::{Engine, TapFn, TensorSpec, View, ViewMut};
use crate::error::{Error, Result};
use crate::graph::engines::names as n;
use crate::pipeline::post::{select_tracks, Selection, Upsampler};
use crate::pipeline::tracker::Tracker;
use crate::tensor::{Data, Tensor};
use crate::text::EncodedCaption;
use std::collections::BTreeMap;

/// The four loaded engines.
pub struct EngineSet {
    /// BERT + feat_map.
    pub text: Box<dyn Engine>,
    /// Swin → decoder + FPN.
    pub frame: Box<dyn Engine>,
    /// Temporal decoder over a window.
    pub temporal: Box<dyn Engine>,
    /// Heads + mask decoder.
    pub head: Box<dyn Engine>,
}

/// Sizes read off the engines' bindings.
#[derive(Clone, Copy, Debug)]
pub struct Dims {
    /// Hidden size d.
    pub d: usize,
    /// Queries after pruning.
    pub ns: usize,
    /// Max text length.
    pub lm: usize,
    /// Mask feature channels.
    pub dm: usize,
    /// Model input height / width.
    pub height: usize,
    /// Model input width.
    pub width: usize,
    /// Stride-4 map height.
    pub h4: usize,
    /// Stride-4 map width.
    pub w4: usize,
    /// Temporal window.
    pub window: usize,
}

fn spec<'a>(specs: &'a [TensorSpec], name: &str, engine: &str) -> Result<&'a TensorSpec> {
    specs
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| Error::Backend(format!("engine `{engine}` has no binding `{name}`")))
}

impl Dims {
    /// Reads the sizes from the engines and checks that they agree with each other.
    pub fn from_engines(e: &EngineSet) -> Result<Self> {
        let fo = spec(e.frame.outputs(), n::OBJECTS, "frame")?;
        let fs = spec(e.frame.outputs(), n::F_SEG, "frame")?;
        let im = spec(e.frame.inputs(), n::IMAGE, "frame")?;
        let tx = spec(e.text.outputs(), n::ENCODED_TEXT, "text")?;
        let tw = spec(e.temporal.inputs(), n::OBJECTS, "temporal")?;
        let d = Dims {
            d: fo.shape[2],
            ns: fo.shape[1],
            lm: tx.shape[1],
            dm: fs.shape[1],
            height: im.shape[2],
            width: im.shape[3],
            h4: fs.shape[2],
            w4: fs.shape[3],
            window: tw.shape[0],
        };
        if tw.shape[1..] != [d.ns, d.d] || tx.shape[2] != d.d {
            return Err(Error::Backend(format!(
                "engines disagree: frame objects {:?}, temporal objects {:?}, text {:?}",
                fo.shape, tw.shape, tx.shape
            )));
        }
        Ok(d)
    }
}

/// Text features of one prompt, cached for as long as the prompt holds.
#[derive(Clone, Debug)]
pub struct TextFeatures {
    /// The caption as fed to the model.
    pub caption: String,
    /// `[Lm, d]` BERT + feat_map output.
    pub encoded: Vec<f32>,
    /// `[Lm]` real-token mask.
    pub token_mask: Vec<bool>,
    /// `[Lm, Lm]` sub-sentence mask.
    pub self_attention_mask: Vec<bool>,
    /// `[Lm]` position ids.
    pub position_ids: Vec<i64>,
}

/// Per-frame outputs of the frame engine.
#[derive(Clone, Debug, Default)]
pub struct FrameObjects {
    /// `[Ns, d]` object embeddings (then tracked in place).
    pub objects: Vec<f32>,
    /// `[Ns, 4]` reference boxes (then tracked in place).
    pub refs: Vec<f32>,
    /// `[Lm, d]` enhanced text of this frame.
    pub memory_text: Vec<f32>,
    /// `[dm, H4, W4]` segmentation features.
    pub f_seg: Vec<f32>,
}

/// Result of an offline run.
#[derive(Clone, Debug)]
pub struct VideoResult {
    /// Mean sigmoid score per track.
    pub scores: Vec<f32>,
    /// Chosen tracks, best first.
    pub chosen: Vec<usize>,
    /// `[T, Ns]` class logits.
    pub logits: Vec<f32>,
    /// `[T, Ns, 4]` boxes (cx, cy, w, h) normalised.
    pub boxes: Vec<f32>,
    /// `[T, Ns, H4, W4]` mask logits.
    pub mask_logits: Vec<f32>,
    /// Per frame, the union of the chosen tracks' masks at the output size, 0/1 bytes.
    pub masks: Vec<Vec<u8>>,
    /// Output mask size (h, w).
    pub mask_size: (usize, usize),
}

impl VideoResult {
    /// A clip's result from every frame's head outputs (`[T, Ns]` logits, `[T, Ns, 4]` boxes,
    /// `[T, Ns, h4, w4]` mask logits with `map = (h4, w4)`): the full-clip selection and, per frame,
    /// the union of the chosen tracks' masks at `out_size` (h, w). The streaming sessions' `finalize`
    /// ends here, on the host and on the device.
    #[allow(clippy::too_many_arguments)]
    pub fn from_heads(
        logits: Vec<f32>,
        boxes: Vec<f32>,
        mask_logits: Vec<f32>,
        t: usize,
        ns: usize,
        map: (usize, usize),
        out_size: (usize, usize),
        selection: Selection,
    ) -> Result<Self> {
        let hw = map.0 * map.1;
        if logits.len() != t * ns || boxes.len() != t * ns * 4 || mask_logits.len() != t * ns * hw {
            return Err(Error::Shape(format!(
                "clip of {t} frames x {ns} tracks: {} logits, {} boxes, {} mask logits",
                logits.len(),
                boxes.len(),
                mask_logits.len()
            )));
        }
        let mut scores = vec![0f32; ns];
        let mut chosen = Vec::new();
        select_tracks(&logits, t, ns, selection, &mut scores, &mut chosen)?;
        let (oh, ow) = out_size;
        let up = Upsampler::new(map.0, map.1, oh, ow)?;
        let mut scratch = vec![0f32; oh * ow];
        let mut masks = Vec::with_capacity(t);
        for f in 0..t {
            let mut mk = vec![0u8; oh * ow];
            for (k, &q) in chosen.iter().enumerate() {
                let o = (f * ns + q) * hw;
                up.run_mask(&mask_logits[o..o + hw], &mut scratch, &mut mk, k > 0)?;
            }
            masks.push(mk);
        }
        Ok(VideoResult {
            scores,
            chosen,
            logits,
            boxes,
            mask_logits,
            masks,
            mask_size: out_size,
        })
    }
}

/// Receives trace entries as the session produces them, instead of the trace holding them (streaming
/// consumers such as calibration statistics, whose memory must not grow with the clip).
pub trait TraceSink: Send {
    /// One tensor's values under `key`, lent for the duration of the call; entries of one key arrive
    /// in the order [`Trace::parts`] would hold them. Engine taps come straight from the engine
    /// ([`Engine::run_taps`]), never copied into the session's buffers.
    fn take(&mut self, key: &str, t: View<'_>);
}

/// Collected intermediate tensors (fixture keys → per-frame pieces).
#[derive(Default)]
pub struct Trace {
    /// Key → one tensor per frame (or one for whole-video stages). Stays empty while `sink` is set.
    pub parts: BTreeMap<String, Vec<Tensor>>,
    /// When set, every entry goes to the sink as soon as it exists and nothing is held.
    pub sink: Option<Box<dyn TraceSink>>,
}

impl Trace {
    fn push(&mut self, key: &str, t: Tensor) {
        match self.sink.as_mut() {
            Some(s) => s.take(key, view(&t)),
            None => self.parts.entry(key.to_string()).or_default().push(t),
        }
    }

    fn push_ref(&mut self, key: &str, t: &Tensor) {
        match self.sink.as_mut() {
            Some(s) => s.take(key, view(t)),
            None => self
                .parts
                .entry(key.to_string())
                .or_default()
                .push(t.clone()),
        }
    }
}

fn host_tensor(s: &TensorSpec) -> Tensor {
    Tensor::zeros(&s.shape, s.dtype)
}

/// Host tensors as engine views (one definition, in the backend layer).
pub use crate::backend::{host_view as view, host_view_mut as view_mut};

/// Bindings per side whose views [`Bound::run`] keeps on the stack.
pub const MAX_STACK_BINDINGS: usize = 16;

/// Owns one buffer per binding of an engine and runs it by name.
pub struct Bound {
    engine: Box<dyn Engine>,
    /// Input buffers in binding order.
    pub inputs: Vec<Tensor>,
    /// Output buffers in binding order.
    pub outputs: Vec<Tensor>,
}

/// Position of binding `name` among `specs` of engine `engine` (an error naming both when absent).
pub(crate) fn binding_index(specs: &[TensorSpec], name: &str, engine: &str) -> Result<usize> {
    specs
        .iter()
        .position(|s| s.name == name)
        .ok_or_else(|| Error::Backend(format!("engine `{engine}` has no binding `{name}`")))
}

impl Bound {
    /// Allocates the buffers once.
    pub fn new(engine: Box<dyn Engine>) -> Self {
        let inputs = engine.inputs().iter().map(host_tensor).collect();
        let outputs = engine.outputs().iter().map(host_tensor).collect();
        Bound {
            engine,
            inputs,
            outputs,
        }
    }

    fn index(specs: &[TensorSpec], name: &str, engine: &str) -> Result<usize> {
        binding_index(specs, name, engine)
    }

    /// The engine the buffers are bound to.
    pub(crate) fn engine(&self) -> &dyn Engine {
        self.engine.as_ref()
    }

    /// Mutable input buffer by name.
    pub fn input_mut(&mut self, name: &str) -> Result<&mut Tensor> {
        let i = Self::index(self.engine.inputs(), name, self.engine.name())?;
        Ok(&mut self.inputs[i])
    }

    /// Output buffer by name.
    pub fn output(&self, name: &str) -> Result<&Tensor> {
        let i = Self::index(self.engine.outputs(), name, self.engine.name())?;
        Ok(&self.outputs[i])
    }

    /// Output names (contract outputs first, then parity taps).
    pub fn output_names(&self) -> Vec<String> {
        self.engine
            .outputs()
            .iter()
            .map(|s| s.name.clone())
            .collect()
    }

    /// Index of an input binding (resolve once, then use `inputs[i]`).
    pub fn input_index(&self, name: &str) -> Result<usize> {
        Self::index(self.engine.inputs(), name, self.engine.name())
    }

    /// Index of an output binding (resolve once, then use `outputs[i]`).
    pub fn output_index(&self, name: &str) -> Result<usize> {
        Self::index(self.engine.outputs(), name, self.engine.name())
    }

    /// Runs the engine with only the first `n_contract` output buffers bound; every further output
    /// (a tap) is lent to `tap` with its index among the engine's outputs ([`Engine::run_taps`]) and
    /// never written to the buffers, whose pages therefore stay untouched (not resident). For trace
    /// sinks; allocates the binding lists.
    pub fn run_taps(&mut self, n_contract: usize, tap: &mut TapFn<'_>) -> Result<()> {
        let n = n_contract.min(self.outputs.len());
        let ins: Vec<View<'_>> = self.inputs.iter().map(view).collect();
        let mut outs: Vec<ViewMut<'_>> = self.outputs[..n].iter_mut().map(view_mut).collect();
        self.engine.run_taps(&ins, &mut outs, tap)
    }

    /// Runs the engine on the owned buffers. The binding views live on the stack (no heap allocation)
    /// unless an engine has more than [`MAX_STACK_BINDINGS`] bindings on a side (parity taps).
    pub fn run(&mut self) -> Result<()> {
        if self.inputs.len() <= MAX_STACK_BINDINGS && self.outputs.len() <= MAX_STACK_BINDINGS {
            let mut ins: heapless::Vec<View<'_>, MAX_STACK_BINDINGS> = heapless::Vec::new();
            let mut outs: heapless::Vec<ViewMut<'_>, MAX_STACK_BINDINGS> = heapless::Vec::new();
            for t in &self.inputs {
                let _ = ins.push(view(t));
            }
            for t in self.outputs.iter_mut() {
                let _ = outs.push(view_mut(t));
            }
            return self.engine.run(&ins, &mut outs);
        }
        let ins: Vec<View<'_>> = self.inputs.iter().map(view).collect();
        let mut outs: Vec<ViewMut<'_>> = self.outputs.iter_mut().map(view_mut).collect();
        self.engine.run(&ins, &mut outs)
    }
}

pub(crate) fn set_f32(t: &mut Tensor, v: &[f32]) -> Result<()> {
    let d = t.f32s_mut()?;
    if d.len() != v.len() {
        return Err(Error::Shape(format!(
            "buffer of {} for {} values",
            d.len(),
            v.len()
        )));
    }
    d.copy_from_slice(v);
    Ok(())
}

pub(crate) fn set_i64(t: &mut Tensor, v: &[i64]) -> Result<()> {
    match t.data_mut() {
        Data::I64(d) if d.len() == v.len() => {
            d.copy_from_slice(v);
            Ok(())
        }
        _ => Err(Error::Shape("i64 buffer mismatch".into())),
    }
}

pub(crate) fn set_bool(t: &mut Tensor, v: &[bool]) -> Result<()> {
    match t.data_mut() {
        Data::Bool(d) if d.len() == v.len() => {
            d.copy_from_slice(v);
            Ok(())
        }
        _ => Err(Error::Shape("bool buffer mismatch".into())),
    }
}

/// Tokenizes a prompt for the streaming sessions: the official demo's normalisation, or (`raw`) a
/// benchmark expression as given; cut at `max_text_len` tokens and refused when longer than the
/// engines' text length `lm` (or empty, for a raw expression).
pub(crate) fn tokenize(
    tokenizer: &crate::text::Tokenizer,
    prompt: &str,
    raw: bool,
    max_text_len: usize,
    lm: usize,
) -> Result<EncodedCaption> {
    let cap = if raw {
        if prompt.trim().is_empty() {
            return Err(Error::Text("expression is empty".into()));
        }
        tokenizer.encode(prompt, max_text_len)?
    } else {
        tokenizer.encode_prompt(prompt, max_text_len)?
    };
    if cap.len > lm {
        return Err(Error::Text(format!(
            "prompt has {} tokens but the engines take at most {lm}; shorten it or rebuild with a larger --max-text",
            cap.len
        )));
    }
    Ok(cap)
}

/// The frames a streaming session's `finalize` re-scores: `frames` since the prompt, each kept
/// (`kept` rows of the clip) and all inside the temporal window of `window` frames.
pub(crate) fn clip_frames(frames: u64, kept: usize, window: usize) -> Result<usize> {
    let t = frames as usize;
    if t == 0 {
        return Err(Error::Source("finalize: no frame since the prompt".into()));
    }
    if t > window || kept != t {
        return Err(Error::Config(format!(
            "finalize: {t} frames since the prompt but the window holds {window}; offline re-scoring needs T ≤ W"
        )));
    }
    Ok(t)
}

/// Runs the text engine `text` (text length `lm`) for a tokenized caption, padded to `lm`.
pub(crate) fn encode_caption(
    text: &mut Bound,
    lm: usize,
    c: &EncodedCaption,
) -> Result<TextFeatures> {
    let l = c.len;
    if l > lm {
        return Err(Error::Text(format!(
            "caption has {l} tokens but the engines take at most {lm}"
        )));
    }
    let mut ids = vec![0i64; lm];
    let mut tt = vec![0i64; lm];
    let mut pos = vec![0i64; lm];
    let mut mask = vec![false; lm];
    let mut sam = vec![false; lm * lm];
    ids[..l].copy_from_slice(&c.input_ids);
    tt[..l].copy_from_slice(&c.token_type_ids);
    pos[..l].copy_from_slice(&c.position_ids);
    for i in 0..lm {
        mask[i] = i < l;
        for j in 0..lm {
            sam[i * lm + j] = if i < l && j < l {
                c.self_attention_mask[i * l + j]
            } else {
                i == j // pads attend only to themselves
            };
        }
    }
    set_i64(text.input_mut(n::INPUT_IDS)?, &ids)?;
    set_i64(text.input_mut(n::TOKEN_TYPE_IDS)?, &tt)?;
    set_i64(text.input_mut(n::POSITION_IDS)?, &pos)?;
    set_bool(text.input_mut(n::TEXT_SELF_ATTENTION_MASK)?, &sam)?;
    text.run()?;
    Ok(TextFeatures {
        caption: c.caption.clone(),
        encoded: text.output(n::ENCODED_TEXT)?.f32s()?.to_vec(),
        token_mask: mask,
        self_attention_mask: sam,
        position_ids: pos,
    })
}

/// Drives the engines for offline (whole-clip) inference.
pub struct Session {
    pub(crate) text: Bound,
    pub(crate) frame: Bound,
    pub(crate) temporal: Bound,
    pub(crate) head: Bound,
    dims: Dims,
    pub(crate) tracker: Tracker,
    /// Collect parity taps.
    pub trace: Option<Trace>,
}

impl Session {
    /// Binds buffers for the engines; `tracking_alpha` is the tracker momentum (0.1 official).
    pub fn new(engines: EngineSet, tracking_alpha: f32) -> Result<Self> {
        let dims = Dims::from_engines(&engines)?;
        Ok(Session {
            text: Bound::new(engines.text),
            frame: Bound::new(engines.frame),
            temporal: Bound::new(engines.temporal),
            head: Bound::new(engines.head),
            tracker: Tracker::new(dims.ns, dims.d, tracking_alpha),
            dims,
            trace: None,
        })
    }

    /// The engines' sizes.
    pub fn dims(&self) -> Dims {
        self.dims
    }

    /// Runs `b` and collects its taps (the outputs after the first `n_contract`) into `trace`, if any.
    /// With a sink the taps go from the engine straight to the sink ([`Bound::run_taps`]), so neither
    /// the engine nor the session holds all of a run's taps; otherwise they are copied from the
    /// buffers. `frames` = (t, window): frame-major `[window, ...]` taps keep their first t frames.
    fn run_traced(
        b: &mut Bound,
        trace: &mut Option<Trace>,
        n_contract: usize,
        frames: Option<(usize, usize)>,
    ) -> Result<()> {
        if let Some(sink) = trace.as_mut().and_then(|t| t.sink.as_mut()) {
            let specs = b.engine().outputs().to_vec();
            return b.run_taps(n_contract, &mut |i, v| {
                let s = &specs[i];
                let v = match frames {
                    Some((t, window)) => crop_view(v, &s.shape, t, window),
                    None => v,
                };
                sink.take(&s.name, v);
                Ok(())
            });
        }
        b.run()?;
        match frames {
            None => Self::collect_taps(trace, b, n_contract),
            Some((t, window)) => {
                if let Some(tr) = trace.as_mut() {
                    for (i, name) in b.output_names().iter().enumerate().skip(n_contract) {
                        tr.push(name, crop_frames(&b.outputs[i], t, window)?);
                    }
                }
            }
        }
        Ok(())
    }

    fn collect_taps(trace: &mut Option<Trace>, b: &Bound, n_contract: usize) {
        if let Some(tr) = trace.as_mut() {
            for (i, name) in b.output_names().iter().enumerate().skip(n_contract) {
                tr.push_ref(name, &b.outputs[i]);
            }
        }
    }

    /// Runs the text engine for a tokenized caption (pads to `Lm`).
    pub fn encode_text(&mut self, c: &EncodedCaption) -> Result<TextFeatures> {
        let tf = encode_caption(&mut self.text, self.dims.lm, c)?;
        Self::collect_taps(&mut self.trace, &self.text, 1);
        Ok(tf)
    }

    /// Runs the frame engine on one normalised `[3,H,W]` image.
    pub fn run_frame(
        &mut self,
        text: &TextFeatures,
        image_chw: &[f32],
        out: &mut FrameObjects,
    ) -> Result<()> {
        set_f32(self.frame.input_mut(n::IMAGE)?, image_chw)?;
        set_f32(self.frame.input_mut(n::ENCODED_TEXT)?, &text.encoded)?;
        set_bool(self.frame.input_mut(n::TEXT_TOKEN_MASK)?, &text.token_mask)?;
        set_bool(
            self.frame.input_mut(n::TEXT_SELF_ATTENTION_MASK)?,
            &text.self_attention_mask,
        )?;
        set_i64(self.frame.input_mut(n::POSITION_IDS)?, &text.position_ids)?;
        Self::run_traced(&mut self.frame, &mut self.trace, 4, None)?;
        let copy = |dst: &mut Vec<f32>, t: &Tensor| -> Result<()> {
            let s = t.f32s()?;
            dst.clear();
            dst.extend_from_slice(s);
            Ok(())
        };
        copy(&mut out.objects, self.frame.output(n::OBJECTS)?)?;
        copy(&mut out.refs, self.frame.output(n::REFS)?)?;
        copy(&mut out.memory_text, self.frame.output(n::MEMORY_TEXT)?)?;
        copy(&mut out.f_seg, self.frame.output(n::F_SEG)?)?;
        Ok(())
    }

    /// Offline inference on a clip of normalised `[3,H,W]` frames, masks upsampled to `out_size`.
    pub fn run_video(
        &mut self,
        caption: &EncodedCaption,
        frames: &[Vec<f32>],
        out_size: (usize, usize),
        selection: Selection,
    ) -> Result<VideoResult> {
        let t = frames.len();
        let Dims {
            d,
            ns,
            lm,
            window,
            h4,
            w4,
            ..
        } = self.dims;
        if t == 0 {
            return Err(Error::bad_input("clip", "no frames"));
        }
        if t > window {
            return Err(Error::bad_input(
                "clip",
                format!(
                    "{t} frames is longer than the temporal engine's window {window}; export it with --window ≥ {t}"
                ),
            ));
        }
        let text = self.encode_text(caption)?;
        let mut per_frame = vec![FrameObjects::default(); t];
        for (f, img) in frames.iter().enumerate() {
            let mut fo = std::mem::take(&mut per_frame[f]);
            self.run_frame(&text, img, &mut fo)?;
            per_frame[f] = fo;
        }
        // Tracker, sequential over the clip.
        self.tracker.reset();
        let mut so = vec![0f32; ns * d];
        let mut sr = vec![0f32; ns * 4];
        for (f, fo) in per_frame.iter_mut().enumerate() {
            if let Some(tr) = self.trace.as_mut() {
                if f > 0 {
                    tr.push(
                        &format!("tracker.step{f}.memory_in"),
                        Tensor::from_f32(&[ns, d], self.tracker.memory().to_vec())?,
                    );
                }
            }
            let step = self.tracker.step(
                &mut fo.objects,
                &mut fo.refs,
                &fo.memory_text,
                &text.token_mask,
                &mut so,
                &mut sr,
            )?;
            if f > 0 {
                if let Some(tr) = self.trace.as_mut() {
                    let p: Vec<i64> = step.perm.iter().map(|&x| x as i64).collect();
                    tr.push(
                        &format!("tracker.step{f}.perm"),
                        Tensor::from_i64(&[ns], p)?,
                    );
                }
            }
            if let Some(tr) = self.trace.as_mut() {
                tr.push(
                    "tracker.hs",
                    Tensor::from_f32(&[1, ns, d], fo.objects.clone())?,
                );
                tr.push(
                    "tracker.ref",
                    Tensor::from_f32(&[1, ns, 4], fo.refs.clone())?,
                );
            }
        }
        // Temporal engine over the (padded) window.
        {
            let mut objs = vec![0f32; window * ns * d];
            let mut sent = vec![0f32; window * d];
            let mut fmask = vec![false; window];
            for (f, fo) in per_frame.iter().enumerate() {
                objs[f * ns * d..(f + 1) * ns * d].copy_from_slice(&fo.objects);
                sent[f * d..(f + 1) * d].copy_from_slice(&fo.memory_text[..d]);
                fmask[f] = true;
            }
            set_f32(self.temporal.input_mut(n::OBJECTS)?, &objs)?;
            set_f32(self.temporal.input_mut(n::SENTENCE)?, &sent)?;
            set_bool(self.temporal.input_mut(n::FRAME_MASK)?, &fmask)?;
            Self::run_traced(&mut self.temporal, &mut self.trace, 1, Some((t, window)))?;
            let ot = self.temporal.output(n::OBJECTS_T)?.f32s()?;
            for (f, fo) in per_frame.iter_mut().enumerate() {
                fo.objects
                    .copy_from_slice(&ot[f * ns * d..(f + 1) * ns * d]);
            }
        }
        // Heads per frame.
        let mut logits = vec![0f32; t * ns];
        let mut boxes = vec![0f32; t * ns * 4];
        let mut mask_logits = vec![0f32; t * ns * h4 * w4];
        for (f, fo) in per_frame.iter().enumerate() {
            set_f32(self.head.input_mut(n::OBJECTS_T)?, &fo.objects)?;
            set_f32(self.head.input_mut(n::REFS)?, &fo.refs)?;
            set_f32(self.head.input_mut(n::MEMORY_TEXT)?, &fo.memory_text)?;
            set_bool(self.head.input_mut(n::TEXT_TOKEN_MASK)?, &text.token_mask)?;
            set_f32(self.head.input_mut(n::F_SEG)?, &fo.f_seg)?;
            Self::run_traced(&mut self.head, &mut self.trace, 3, None)?;
            logits[f * ns..(f + 1) * ns].copy_from_slice(self.head.output(n::LOGITS)?.f32s()?);
            boxes[f * ns * 4..(f + 1) * ns * 4]
                .copy_from_slice(self.head.output(n::BOXES)?.f32s()?);
            mask_logits[f * ns * h4 * w4..(f + 1) * ns * h4 * w4]
                .copy_from_slice(self.head.output(n::MASK_LOGITS)?.f32s()?);
        }
        let _ = lm;
        // Selection and masks.
        let r = VideoResult::from_heads(
            logits,
            boxes,
            mask_logits,
            t,
            ns,
            (h4, w4),
            out_size,
            selection,
        )?;
        if let Some(tr) = self.trace.as_mut() {
            let up = Upsampler::new(h4, w4, out_size.0, out_size.1)?;
            let (best, boxes, mask_logits) = (r.chosen[0], &r.boxes, &r.mask_logits);
            tr.push("post.scores", Tensor::from_f32(&[ns], r.scores.clone())?);
            tr.push("post.best_index", Tensor::from_i64(&[], vec![best as i64])?);
            for f in 0..t {
                tr.push(
                    "post.boxes",
                    Tensor::from_f32(
                        &[1, 4],
                        boxes[(f * ns + best) * 4..(f * ns + best + 1) * 4].to_vec(),
                    )?,
                );
                let o = (f * ns + best) * h4 * w4;
                let ml = mask_logits[o..o + h4 * w4].to_vec();
                let mut upl = vec![0f32; out_size.0 * out_size.1];
                up.run(&ml, &mut upl)?;
                tr.push("post.mask_logits", Tensor::from_f32(&[1, h4, w4], ml)?);
                tr.push(
                    "post.mask_logits_upsampled",
                    Tensor::from_f32(&[1, out_size.0, out_size.1], upl)?,
                );
                tr.push(
                    "post.masks",
                    Tensor::new(
                        vec![1, out_size.0, out_size.1],
                        Data::Bool(r.masks[f].iter().map(|&b| b != 0).collect()),
                    )?,
                );
            }
        }
        Ok(r)
    }
}

/// [`crop_frames`] on a lent tap of shape `shape`.
fn crop_view<'a>(v: View<'a>, shape: &[usize], t: usize, window: usize) -> View<'a> {
    if shape.first() != Some(&window) || t == window || window == 0 {
        return v;
    }
    let keep = v.len() / window * t;
    match v {
        View::F32(x) => View::F32(&x[..keep]),
        View::F16(x) => View::F16(&x[..keep]),
        View::I64(x) => View::I64(&x[..keep]),
        View::U8(x) => View::U8(&x[..keep]),
        View::Bool(x) => View::Bool(&x[..keep]),
        View::Device(_) => v,
    }
}

/// Keeps the first `t` frames of a frame-major `[W, ...]` tap.
fn crop_frames(x: &Tensor, t: usize, window: usize) -> Result<Tensor> {
    if x.shape().first() != Some(&window) || t == window {
        return Ok(x.clone());
    }
    let per = x.numel() / window;
    let mut shape = x.shape().to_vec();
    shape[0] = t;
    let bytes = x.to_le_bytes();
    let sz = x.dtype().size();
    Tensor::from_le_bytes(&shape, x.dtype(), &bytes[..t * per * sz])
}

impl EngineSet {
    /// Exports the four engines in memory and loads them on the CPU backend (tract), every core.
    pub fn cpu(
        w: &dyn crate::onnx::Weights,
        cfg: &crate::config::ModelConfig,
        geo: &crate::graph::engines::Geometry,
        opts: &crate::graph::engines::ExportOptions,
    ) -> Result<Self> {
        let backend = crate::backend::HostBackend::Cpu(crate::backend::cpu::CpuBackend::new());
        Self::on(&backend, w, cfg, geo, opts)
    }

    /// Exports the four engines in memory and loads them on the host backends `kind` names (`cpu`,
    /// `ort`, `auto` or a per-engine mix), each engine on `threads` threads (`None`: every available
    /// core). Logs one line naming the backend of each engine.
    pub fn build(
        kind: crate::backend::kind::BackendKind,
        threads: Option<usize>,
        w: &dyn crate::onnx::Weights,
        cfg: &crate::config::ModelConfig,
        geo: &crate::graph::engines::Geometry,
        opts: &crate::graph::engines::ExportOptions,
    ) -> Result<Self> {
        Self::build_with(kind, threads, w, cfg, geo, opts, None)
    }

    /// Exports the four engines in memory and loads them on `backend`.
    pub fn on(
        backend: &crate::backend::HostBackend,
        w: &dyn crate::onnx::Weights,
        cfg: &crate::config::ModelConfig,
        geo: &crate::graph::engines::Geometry,
        opts: &crate::graph::engines::ExportOptions,
    ) -> Result<Self> {
        let backends = crate::backend::kind::HostBackends::uniform(backend.clone());
        Self::on_each(&backends, w, cfg, geo, opts)
    }

    /// [`EngineSet::build`] with INT8 engines (`int8`: a scale table, host form; see
    /// [`crate::quant::engines::HostInt8`]), or FP32 ones when `int8` is `None`.
    #[allow(clippy::too_many_arguments)]
    pub fn build_with(
        kind: crate::backend::kind::BackendKind,
        threads: Option<usize>,
        w: &dyn crate::onnx::Weights,
        cfg: &crate::config::ModelConfig,
        geo: &crate::graph::engines::Geometry,
        opts: &crate::graph::engines::ExportOptions,
        int8: Option<&crate::quant::engines::HostInt8>,
    ) -> Result<Self> {
        let precision = crate::backend::kind::Precision::int8_if(int8.is_some());
        let backends = kind.host_backends_for(threads, precision)?;
        Self::on_each_with(&backends, w, cfg, geo, opts, int8)
    }

    /// Exports the four engines in memory and loads each on its backend in `backends`.
    pub fn on_each(
        backends: &crate::backend::kind::HostBackends,
        w: &dyn crate::onnx::Weights,
        cfg: &crate::config::ModelConfig,
        geo: &crate::graph::engines::Geometry,
        opts: &crate::graph::engines::ExportOptions,
    ) -> Result<Self> {
        Self::on_each_with(backends, w, cfg, geo, opts, None)
    }

    /// [`EngineSet::on_each`] with each engine turned INT8 (host form) by `int8` before it loads
    /// (`None`: FP32).
    pub fn on_each_with(
        backends: &crate::backend::kind::HostBackends,
        w: &dyn crate::onnx::Weights,
        cfg: &crate::config::ModelConfig,
        geo: &crate::graph::engines::Geometry,
        opts: &crate::graph::engines::ExportOptions,
        int8: Option<&crate::quant::engines::HostInt8>,
    ) -> Result<Self> {
        use prost::Message;
        if let Some(q) = int8 {
            q.check(opts, geo)?;
            backends.warn_int8_on_tract();
        }
        let mut graphs = crate::graph::engines::build_engines(w, cfg, geo, opts)?.into_iter();
        let mut load = |name: &str| -> Result<Box<dyn Engine>> {
            let g = graphs
                .next()
                .ok_or_else(|| Error::Graph("missing engine graph".into()))?;
            let bytes = match int8 {
                Some(q) => q.apply(&g.into_model())?.encode_to_vec(),
                None => g.to_bytes(),
            };
            backends.load_bytes(name, &bytes)
        };
        Ok(EngineSet {
            text: load(n::TEXT)?,
            frame: load(n::FRAME)?,
            temporal: load(n::TEMPORAL)?,
            head: load(n::HEAD)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lent tap is cropped exactly as a buffered one: frame-major taps keep their first `t` frames,
    /// others are untouched.
    #[test]
    fn crop_view_matches_crop_frames() {
        let x = Tensor::from_f32(&[3, 2, 2], (0..12).map(|i| i as f32).collect()).unwrap();
        for (t, window) in [(2, 3), (1, 3), (3, 3), (2, 4)] {
            let buffered = crop_frames(&x, t, window).unwrap();
            let lent = crop_view(view(&x), x.shape(), t, window);
            match lent {
                View::F32(v) => assert_eq!(v, buffered.f32s().unwrap(), "t {t} window {window}"),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(crop_view(view(&x), x.shape(), 1, 3).len(), 4);
    }
}
