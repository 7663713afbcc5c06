//! Several referred objects per stream, several streams per process, and the text-independent work
//! done once per frame.
//!
//! [`SharedEngines`] holds the engines every stream of one input size uses: the text engine
//! ([`SharedText`], one for every input size of the process: text features do not depend on the
//! image), the *front* (either the split `image` engine, Swin + input projections run once per frame
//! whatever the number of objects, followed by the `cross` engine, enhancer → query selection →
//! decoder → FPN, at a static batch `B` over the objects; or, for engine directories without the
//! split, the whole `frame` engine once per object), the temporal engine and the head engine (both
//! once per object).
//!
//! [`MultiStream`] is one stream's state: its image buffer and its objects, each with a stable
//! [`ObjectId`], its prompt's text features, its own tracker, window and running scores. Per frame
//! the image part runs once, the cross part runs `ceil(N / B)` times, and each object's tracks go
//! into one label mask and one track table (see [`MultiStream::step`]).
//!
//! Every per-frame buffer is allocated when the stream is built or an object is added; in steady
//! state [`MultiStream::step`] allocates nothing on the host side and never panics.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::backend::Engine;
use crate::error::{Error, Result};
use crate::graph::engines::names as n;
use crate::output::ring::MAX_TRACKS;
use crate::pipeline::commands::ObjectId;
use crate::pipeline::labels::LabelUpsampler;
use crate::pipeline::objects::{Keyed, ObjectTable};
use crate::pipeline::post::{box4, track_entry, Selection};
use crate::pipeline::selector::RunningScores;
use crate::pipeline::session::{encode_caption, Bound, Dims, EngineSet, TextFeatures, VideoResult};
use crate::pipeline::slots::Slots;
use crate::pipeline::stream::{bools_mut, clip_row, copy, part, pick3, FrameResult};
use crate::pipeline::timing::{Stage, StageTimes};
use crate::pipeline::tracker::Tracker;
use crate::pipeline::window::{Rows, Window};
use crate::tensor::Tensor;
use crate::text::Tokenizer;

/// Objects per stream unless configured otherwise.
pub const DEFAULT_MAX_OBJECTS: usize = 8;

/// Prompts whose text features the shared engines keep (least recently used dropped first).
const TEXT_CACHE: usize = 16;

/// The engines before binding: the part before the temporal engine either split or whole.
pub enum Front {
    /// `image` (once per frame) and `cross` (static batch over objects).
    Split {
        /// Swin + input projections.
        image: Box<dyn Engine>,
        /// Enhancer, query selection, decoder, FPN; its leading batch is read off its bindings.
        cross: Box<dyn Engine>,
    },
    /// The whole frame engine, run once per object (engine directories without the split).
    Frame(Box<dyn Engine>),
}

/// The engines a [`SharedEngines`] binds.
pub struct MultiEngineSet {
    /// BERT + feat_map.
    pub text: Box<dyn Engine>,
    /// Image and cross-modal part.
    pub front: Front,
    /// Temporal decoder: batch 1 (`[W, Ns, d]` bindings) or the cross engine's batch
    /// (`[B, W, Ns, d]`, one window per object).
    pub temporal: Box<dyn Engine>,
    /// Heads: batch 1 or the cross engine's batch, like the temporal engine.
    pub head: Box<dyn Engine>,
}

/// The engines of one input geometry: every engine of a [`MultiEngineSet`] but the text engine,
/// which does not depend on the image size (the sets of several input sizes share one,
/// [`SharedEngines::with_text`]).
pub struct GeometryEngines {
    /// Image and cross-modal part.
    pub front: Front,
    /// Temporal decoder (see [`MultiEngineSet::temporal`]).
    pub temporal: Box<dyn Engine>,
    /// Heads (see [`MultiEngineSet::head`]).
    pub head: Box<dyn Engine>,
}

impl From<EngineSet> for MultiEngineSet {
    fn from(e: EngineSet) -> Self {
        MultiEngineSet {
            text: e.text,
            front: Front::Frame(e.frame),
            temporal: e.temporal,
            head: e.head,
        }
    }
}

/// The image input's (height, width) of `front`: of the image engine, or of the frame engine.
fn front_input_size(front: &Front) -> Result<(usize, usize)> {
    let e = match front {
        Front::Split { image, .. } => image,
        Front::Frame(f) => f,
    };
    let i = crate::pipeline::session::binding_index(e.inputs(), n::IMAGE, e.name())?;
    match e.inputs()[i].shape.as_slice() {
        [_, _, h, w] => Ok((*h, *w)),
        s => Err(Error::Backend(format!(
            "engine {}: image input {s:?}, expected [B, 3, H, W]",
            e.name()
        ))),
    }
}

/// Exports the text engine in memory and loads it on `backends`' text backend. It depends on the
/// text length only: one serves the engine sets of every input size.
pub fn text_engine_on(
    backends: &crate::backend::kind::HostBackends,
    w: &dyn crate::onnx::Weights,
    cfg: &crate::config::ModelConfig,
    geo: &crate::graph::engines::Geometry,
    opts: &crate::graph::engines::ExportOptions,
) -> Result<Box<dyn Engine>> {
    use crate::graph::engines as ge;
    let go = crate::onnx::builder::GraphOptions {
        taps: false,
        decompose_custom_ops: opts.decompose_custom_ops,
    };
    let p = ge::NetParams::new(cfg, geo)?;
    let g = ge::build_text(w, &p.bert, geo, &go)?;
    backends.load_bytes(n::TEXT, &g.to_bytes())
}

impl MultiEngineSet {
    /// The image input's (height, width): of the image engine, or of the frame engine.
    pub fn input_size(&self) -> Result<(usize, usize)> {
        front_input_size(&self.front)
    }

    /// The text engine and the engines of the set's input geometry, apart (so that sets of other
    /// input sizes can share the text engine).
    pub fn split_text(self) -> (Box<dyn Engine>, GeometryEngines) {
        (
            self.text,
            GeometryEngines {
                front: self.front,
                temporal: self.temporal,
                head: self.head,
            },
        )
    }

    /// Exports text, image, cross, temporal and head engines in memory and loads them on `backend`;
    /// the cross-modal, temporal and head engines take `cross_batch` objects per run.
    pub fn on(
        backend: &crate::backend::HostBackend,
        w: &dyn crate::onnx::Weights,
        cfg: &crate::config::ModelConfig,
        geo: &crate::graph::engines::Geometry,
        opts: &crate::graph::engines::ExportOptions,
        cross_batch: usize,
    ) -> Result<Self> {
        Self::on_batched(backend, w, cfg, geo, opts, cross_batch, 1)
    }

    /// [`MultiEngineSet::on`] with the image engine over `image_batch` frames (of several streams
    /// whose frames are ready together, see [`load_image_row`](MultiStream::load_image_row)).
    pub fn on_batched(
        backend: &crate::backend::HostBackend,
        w: &dyn crate::onnx::Weights,
        cfg: &crate::config::ModelConfig,
        geo: &crate::graph::engines::Geometry,
        opts: &crate::graph::engines::ExportOptions,
        cross_batch: usize,
        image_batch: usize,
    ) -> Result<Self> {
        let backends = crate::backend::kind::HostBackends::uniform(backend.clone());
        Self::on_each(&backends, w, cfg, geo, opts, cross_batch, image_batch)
    }

    /// [`MultiEngineSet::on_batched`] with each engine on its backend in `backends` (the image and
    /// cross engines on the frame engine's).
    pub fn on_each(
        backends: &crate::backend::kind::HostBackends,
        w: &dyn crate::onnx::Weights,
        cfg: &crate::config::ModelConfig,
        geo: &crate::graph::engines::Geometry,
        opts: &crate::graph::engines::ExportOptions,
        cross_batch: usize,
        image_batch: usize,
    ) -> Result<Self> {
        let text = text_engine_on(backends, w, cfg, geo, opts)?;
        let g = GeometryEngines::on_each(backends, w, cfg, geo, opts, cross_batch, image_batch)?;
        Ok(MultiEngineSet {
            text,
            front: g.front,
            temporal: g.temporal,
            head: g.head,
        })
    }

    /// [`MultiEngineSet::on_batched`] on the host backends `kind` names (`cpu`, `ort`, `auto` or a
    /// per-engine mix) with `threads` threads per engine. Logs one line naming each engine's backend.
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        kind: crate::backend::kind::BackendKind,
        threads: Option<usize>,
        w: &dyn crate::onnx::Weights,
        cfg: &crate::config::ModelConfig,
        geo: &crate::graph::engines::Geometry,
        opts: &crate::graph::engines::ExportOptions,
        cross_batch: usize,
        image_batch: usize,
    ) -> Result<Self> {
        let backends = kind.host_backends(threads)?;
        Self::on_each(&backends, w, cfg, geo, opts, cross_batch, image_batch)
    }
}

impl GeometryEngines {
    /// [`MultiEngineSet::on_each`] without the text engine: image, cross, temporal and head engines
    /// exported in memory for `geo` and loaded on their backends in `backends`.
    pub fn on_each(
        backends: &crate::backend::kind::HostBackends,
        w: &dyn crate::onnx::Weights,
        cfg: &crate::config::ModelConfig,
        geo: &crate::graph::engines::Geometry,
        opts: &crate::graph::engines::ExportOptions,
        cross_batch: usize,
        image_batch: usize,
    ) -> Result<Self> {
        let set = Self::on_each_until(
            backends,
            w,
            cfg,
            geo,
            opts,
            (cross_batch, image_batch),
            &|| false,
        )?;
        set.ok_or_else(|| Error::Graph("the export stopped without being asked to".into()))
    }

    /// [`GeometryEngines::on_each`] (`batches`: cross batch, image batch) that gives up, with
    /// `None`, once `stop` says so: asked before each engine is built, so a stop waits for the
    /// engine being built and optimised at most (a background export the run no longer needs).
    pub fn on_each_until(
        backends: &crate::backend::kind::HostBackends,
        w: &dyn crate::onnx::Weights,
        cfg: &crate::config::ModelConfig,
        geo: &crate::graph::engines::Geometry,
        opts: &crate::graph::engines::ExportOptions,
        (cross_batch, image_batch): (usize, usize),
        stop: &dyn Fn() -> bool,
    ) -> Result<Option<Self>> {
        use crate::graph::engines as ge;
        use crate::onnx::builder::{Graph, GraphOptions};
        let go = GraphOptions {
            taps: false,
            decompose_custom_ops: opts.decompose_custom_ops,
        };
        let p = ge::NetParams::new(cfg, geo)?;
        let load =
            |name: &str, build: &dyn Fn() -> Result<Graph>| -> Result<Option<Box<dyn Engine>>> {
                if stop() {
                    return Ok(None);
                }
                backends.load_bytes(name, &build()?.to_bytes()).map(Some)
            };
        let Some(image) = load(n::IMAGE_PART, &|| {
            ge::build_image_batched(w, &p, geo, image_batch, &go)
        })?
        else {
            return Ok(None);
        };
        let Some(cross) = load(n::CROSS, &|| ge::build_cross(w, &p, geo, cross_batch, &go))? else {
            return Ok(None);
        };
        let Some(temporal) = load(n::TEMPORAL, &|| {
            if cross_batch == 1 {
                ge::build_temporal(w, &p.temporal, p.queries_out, geo, &go)
            } else {
                ge::build_temporal_batched(w, &p.temporal, p.queries_out, geo, cross_batch, &go)
            }
        })?
        else {
            return Ok(None);
        };
        let Some(head) = load(n::HEAD, &|| {
            ge::build_head_batched(w, &p.head, geo, cross_batch, &go)
        })?
        else {
            return Ok(None);
        };
        Ok(Some(GeometryEngines {
            front: Front::Split { image, cross },
            temporal,
            head,
        }))
    }
}

/// The text engine bound to its buffers, with the tokenizer and a small cache of text features (a
/// prompt used on several streams or re-added costs no text run). Cloning shares it: the engine
/// sets of several input sizes ([`SharedEngines::with_text`]) encode prompts with one text engine
/// and one cache, since text features do not depend on the image size.
#[derive(Clone)]
pub struct SharedText(Arc<Mutex<TextEncoder>>);

struct TextEncoder {
    text: Bound,
    /// The engine's text length (tokens).
    lm: usize,
    tokenizer: Tokenizer,
    max_text_len: usize,
    cache: crate::pipeline::mru::Mru<(String, TextFeatures)>,
}

impl SharedText {
    /// Binds the text engine; `max_text_len` is the tokenizer cut (prompts longer than the
    /// engine's text length are refused anyway).
    pub fn new(text: Box<dyn Engine>, max_text_len: usize) -> Result<Self> {
        let text = Bound::new(text);
        let lm = shape_of(&text.outputs[text.output_index(n::ENCODED_TEXT)?], 1);
        if lm == 0 {
            return Err(Error::Backend(
                "text engine: encoded_text has no tokens".into(),
            ));
        }
        Ok(SharedText(Arc::new(Mutex::new(TextEncoder {
            text,
            lm,
            tokenizer: Tokenizer::bundled()?,
            max_text_len,
            cache: crate::pipeline::mru::Mru::new(TEXT_CACHE),
        }))))
    }

    /// The text engine's length in tokens.
    pub fn text_len(&self) -> usize {
        self.lock().lm
    }

    /// Whether `self` and `other` are the same text engine.
    pub fn same(&self, other: &SharedText) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, TextEncoder> {
        // Only a panic while encoding poisons the lock; the encoder holds nothing half-written a
        // later prompt could read (its buffers are rewritten per run, the cache per entry), so
        // prompts keep working rather than failing for the rest of the run.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// [`SharedEngines::encode_timed`].
    fn encode_timed(&self, prompt: &str, times: &mut StageTimes) -> Result<TextFeatures> {
        let mut guard = self.lock();
        let t = &mut *guard;
        if let Some((_, tf)) = t.cache.take(|(p, _)| p == prompt) {
            return Ok(tf.clone());
        }
        let t0 = Instant::now();
        let cap =
            crate::pipeline::session::tokenize(&t.tokenizer, prompt, false, t.max_text_len, t.lm)?;
        let tf = encode_caption(&mut t.text, t.lm, &cap)?;
        times.record(Stage::Text, t0.elapsed());
        Ok(t.cache.put((prompt.to_string(), tf)).1.clone())
    }
}

/// The engines all streams of one input size share, bound to their buffers, with the text engine
/// ([`SharedText`], possibly shared with the engines of other input sizes).
pub struct SharedEngines {
    text: SharedText,
    image: Option<Bound>,
    front: Bound,
    temporal: Bound,
    head: Bound,
    batch: usize,
    /// Objects the temporal and head engines take per run: 1 or `batch`.
    head_batch: usize,
    image_batch: usize,
    dims: Dims,
    at: Slots,
}

fn shape_of(t: &Tensor, i: usize) -> usize {
    t.shape().get(i).copied().unwrap_or(0)
}

impl SharedEngines {
    /// Binds the engines; `max_text_len` is the tokenizer cut (prompts longer than the engines'
    /// text length are refused anyway).
    pub fn new(e: MultiEngineSet, max_text_len: usize) -> Result<Self> {
        let (text, rest) = e.split_text();
        Self::with_text(SharedText::new(text, max_text_len)?, rest)
    }

    /// Binds the engines of one input size beside `text`, a text engine shared with the engines of
    /// other sizes (its features must fit these engines: the same text length and hidden size).
    pub fn with_text(text: SharedText, e: GeometryEngines) -> Result<Self> {
        let lm = text.text_len();
        let temporal = Bound::new(e.temporal);
        let head = Bound::new(e.head);
        let (image, front) = match e.front {
            Front::Split { image, cross } => (Some(Bound::new(image)), Bound::new(cross)),
            Front::Frame(f) => (None, Bound::new(f)),
        };
        let at = Slots::resolve(
            image.as_ref().map(Bound::engine),
            front.engine(),
            temporal.engine(),
            head.engine(),
        )?;
        let img = match &image {
            Some(i) => &i.inputs[at.image],
            None => &front.inputs[at.image],
        };
        let fo = &front.outputs[at.f_objects];
        let fs = &front.outputs[at.f_seg];
        let tw = &temporal.inputs[at.t_objects];
        let batch = shape_of(fo, 0);
        let image_batch = shape_of(img, 0);
        // A batched temporal engine has `[B, W, Ns, d]` bindings, the single one `[W, Ns, d]`.
        let (head_batch, window) = match tw.shape() {
            [hb, w, _, _] => (*hb, *w),
            s => (1, s.first().copied().unwrap_or(0)),
        };
        let dims = Dims {
            d: shape_of(fo, 2),
            ns: shape_of(fo, 1),
            lm,
            dm: shape_of(fs, 1),
            height: shape_of(img, 2),
            width: shape_of(img, 3),
            h4: shape_of(fs, 2),
            w4: shape_of(fs, 3),
            window,
        };
        let Dims {
            d,
            ns,
            lm,
            dm,
            h4,
            w4,
            window,
            ..
        } = dims;
        if batch == 0 || (image.is_none() && batch != 1) {
            return Err(Error::Backend(format!(
                "front engine objects {:?}: expected a leading batch ≥ 1 (1 for the frame engine)",
                fo.shape()
            )));
        }
        let b = batch;
        if head_batch != 1 && head_batch != b {
            return Err(Error::Backend(format!(
                "temporal/head engines take {head_batch} objects per run; expected 1 or the cross engine's {b}"
            )));
        }
        let hb = head_batch;
        let mut want = vec![
            (&front.inputs[at.f_text], b * lm * d, "front encoded_text"),
            (&front.inputs[at.f_token_mask], b * lm, "front token mask"),
            (
                &front.inputs[at.f_sam],
                b * lm * lm,
                "front self-attention mask",
            ),
            (&front.inputs[at.f_pos], b * lm, "front position ids"),
            (fo, b * ns * d, "front objects"),
            (&front.outputs[at.f_refs], b * ns * 4, "front refs"),
            (
                &front.outputs[at.f_memory_text],
                b * lm * d,
                "front memory_text",
            ),
            (fs, b * dm * h4 * w4, "front f_seg"),
            (tw, hb * window * ns * d, "temporal objects"),
            (
                &temporal.outputs[at.t_out],
                hb * window * ns * d,
                "temporal objects_t",
            ),
            (
                &temporal.inputs[at.t_sentence],
                hb * window * d,
                "temporal sentence",
            ),
            (&temporal.inputs[at.t_mask], hb * window, "temporal mask"),
            (&head.inputs[at.h_objects], hb * ns * d, "head objects_t"),
            (&head.inputs[at.h_refs], hb * ns * 4, "head refs"),
            (
                &head.inputs[at.h_memory_text],
                hb * lm * d,
                "head memory_text",
            ),
            (&head.inputs[at.h_token_mask], hb * lm, "head token mask"),
            (&head.inputs[at.h_seg], hb * dm * h4 * w4, "head f_seg"),
            (&head.outputs[at.h_logits], hb * ns, "head logits"),
            (&head.outputs[at.h_boxes], hb * ns * 4, "head boxes"),
            (
                &head.outputs[at.h_masks],
                hb * ns * h4 * w4,
                "head mask_logits",
            ),
        ];
        if let Some(i) = &image {
            want.push((
                &i.outputs[at.i_tokens],
                image_batch * front.inputs[at.c_tokens].numel(),
                "image tokens",
            ));
            want.push((
                &i.outputs[at.i_stride4],
                image_batch * front.inputs[at.c_stride4].numel(),
                "image stride4",
            ));
        }
        if image_batch == 0 || (image.is_none() && image_batch != 1) {
            return Err(Error::Backend(format!(
                "image input {:?}: expected a leading batch ≥ 1 (1 for the frame engine)",
                img.shape()
            )));
        }
        for (t, len, what) in want {
            if t.numel() != len || len == 0 {
                return Err(Error::Backend(format!(
                    "{what}: engine buffer of {} elements, expected {len}",
                    t.numel()
                )));
            }
        }
        if let Some(i) = &image {
            if image_batch == 1
                && (i.outputs[at.i_tokens].shape() != front.inputs[at.c_tokens].shape()
                    || i.outputs[at.i_stride4].shape() != front.inputs[at.c_stride4].shape())
            {
                return Err(Error::Backend(
                    "image outputs and cross inputs differ in shape".into(),
                ));
            }
        }
        if hb == b && front.outputs[at.f_seg].dtype() != head.inputs[at.h_seg].dtype() {
            return Err(Error::Backend(
                "front f_seg and head f_seg differ in element type".into(),
            ));
        }
        Ok(SharedEngines {
            text,
            image,
            front,
            temporal,
            head,
            batch,
            head_batch,
            image_batch,
            dims,
            at,
        })
    }

    /// The engines' sizes.
    pub fn dims(&self) -> Dims {
        self.dims
    }

    /// Objects the cross-modal part takes per run (1 for the whole frame engine).
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Objects the temporal and head engines take per run (1, or [`SharedEngines::batch`]).
    pub fn head_batch(&self) -> usize {
        self.head_batch
    }

    /// True when the image part runs once per frame, separately from the cross-modal part.
    pub fn is_split(&self) -> bool {
        self.image.is_some()
    }

    /// Frames (of several streams) the image engine takes per run (1 for the frame engine).
    pub fn image_batch(&self) -> usize {
        self.image_batch
    }

    /// Whether the image part runs as an engine of its own (the object set), so that several
    /// streams' frames can share one run ([`SharedEngines::run_images`]).
    pub fn has_image_engine(&self) -> bool {
        self.image.is_some()
    }

    /// Runs the image engine on the rows loaded with [`MultiStream::load_image_row`]; then each
    /// of those streams calls [`MultiStream::step_from_row`] with its row.
    pub fn run_images(&mut self) -> Result<()> {
        match self.image.as_mut() {
            Some(i) => i.run(),
            None => Err(Error::Config(
                "the frame engine has no separate image part to run".into(),
            )),
        }
    }

    /// Text features of `prompt` (the official demo's normalisation), from the cache or the text
    /// engine. An empty prompt or one longer than the engines' text length is an error.
    pub fn encode(&mut self, prompt: &str) -> Result<TextFeatures> {
        self.encode_timed(prompt, &mut StageTimes::default())
    }

    /// [`SharedEngines::encode`], recording the text engine's time in `times` ([`Stage::Text`])
    /// when it runs (a prompt not in the cache): the stream whose command needed it reports it.
    pub fn encode_timed(&mut self, prompt: &str, times: &mut StageTimes) -> Result<TextFeatures> {
        self.text.encode_timed(prompt, times)
    }

    /// The text engine (with its cache), to bind the engines of another input size beside it
    /// ([`SharedEngines::with_text`]).
    pub fn text(&self) -> &SharedText {
        &self.text
    }
}

/// The per-frame features kept for [`MultiStream::finalize`] (first object only).
struct Clip {
    refs: Rows,
    memory_text: Rows,
    f_seg: Rows,
}

/// One referred object of a stream.
struct Object {
    id: ObjectId,
    prompt: String,
    text: TextFeatures,
    tracker: Tracker,
    window: Window,
    scores: RunningScores,
    objects: Vec<f32>,
    /// Row of the newest frame in this object's last temporal window.
    newest: usize,
    frames: u64,
    clip: Option<Clip>,
}

impl Keyed for Object {
    fn id(&self) -> ObjectId {
        self.id
    }
}

impl Object {
    /// Tracking starts afresh: tracker, window, scores, frame count and clip.
    fn restart(&mut self) {
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
    cfg: MultiConfig,
    dims: Dims,
    objects: ObjectTable<Object>,
    image: Tensor,
    labels: LabelUpsampler,
    owner: Vec<f32>,
    scratch_objects: Vec<f32>,
    scratch_refs: Vec<f32>,
    out_size: (usize, usize),
    times: StageTimes,
    frames_total: u64,
    /// Objects whose tracking this frame has begun and not finished (a group between its tracker
    /// step and its labels): if the frame fails there, they restart ([`ObjectTable::restart_in_flight`]).
    in_flight: std::ops::Range<usize>,
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

    /// Runs the frame in the image input (see [`MultiStream::image_mut`]) for every object and
    /// writes a label mask of `out_size` into `mask`: 0 = background, `k + 1` = track table entry
    /// `k` of the result. Entries go object by object (ascending id), each object's tracks best
    /// first, at most `max(1, 16 / objects)` per object. Where masks overlap the pixel goes to the
    /// entry with the higher running-mean score (the earlier entry on a tie). Without objects the
    /// mask is cleared and nothing runs.
    pub fn step(&mut self, eng: &mut SharedEngines, mask: &mut [u8]) -> Result<FrameResult> {
        let start = Instant::now();
        let (oh, ow) = self.out_size;
        if mask.len() != oh * ow {
            return Err(Error::Shape(format!(
                "mask buffer of {} bytes for {ow}x{oh}",
                mask.len()
            )));
        }
        let mut res = FrameResult::default();
        mask.fill(0);
        if self.objects.is_empty() {
            return Ok(res);
        }
        self.owner.fill(f32::NEG_INFINITY);
        let at = eng.at;
        // The stream's image goes into the engine's input for this frame and back afterwards, so
        // several streams share one engine without copying frames.
        let r = match eng.image.as_mut() {
            Some(_) if eng.image_batch > 1 => {
                // A lone frame through the batched image engine: row 0 (other rows are stale).
                self.load_image_row(eng, 0)
                    .and_then(|_| eng.run_images())
                    .and_then(|_| self.objects_from_row(eng, 0, mask, &mut res, start))
            }
            Some(img) => {
                std::mem::swap(&mut img.inputs[at.image], &mut self.image);
                let r = img.run();
                std::mem::swap(&mut img.inputs[at.image], &mut self.image);
                if r.is_ok() {
                    std::mem::swap(
                        &mut img.outputs[at.i_tokens],
                        &mut eng.front.inputs[at.c_tokens],
                    );
                    std::mem::swap(
                        &mut img.outputs[at.i_stride4],
                        &mut eng.front.inputs[at.c_stride4],
                    );
                    let r = self.objects_pass(eng, mask, &mut res, start);
                    if let Some(img) = eng.image.as_mut() {
                        std::mem::swap(
                            &mut img.outputs[at.i_tokens],
                            &mut eng.front.inputs[at.c_tokens],
                        );
                        std::mem::swap(
                            &mut img.outputs[at.i_stride4],
                            &mut eng.front.inputs[at.c_stride4],
                        );
                    }
                    r
                } else {
                    r
                }
            }
            None => {
                std::mem::swap(&mut eng.front.inputs[at.image], &mut self.image);
                let r = self.objects_pass(eng, mask, &mut res, start);
                std::mem::swap(&mut eng.front.inputs[at.image], &mut self.image);
                r
            }
        };
        if let Err(e) = r {
            self.objects
                .restart_in_flight(&mut self.in_flight, Object::restart);
            return Err(e);
        }
        self.frames_total += 1;
        res.active = true;
        self.times.record(Stage::Total, start.elapsed());
        Ok(res)
    }

    /// Copies this stream's image into row `row` of the batched image engine's input (for
    /// [`SharedEngines::run_images`]).
    pub fn load_image_row(&self, eng: &mut SharedEngines, row: usize) -> Result<()> {
        let Some(img) = eng.image.as_mut() else {
            return Err(Error::Config("no separate image engine".into()));
        };
        let src = self.image.f32s()?;
        let n = src.len();
        let dst = img.inputs[eng.at.image].f32s_mut()?;
        let len = dst.len();
        dst.get_mut(row * n..(row + 1) * n)
            .ok_or_else(|| Error::Shape(format!("image row {row} of {n} in {len}")))?
            .copy_from_slice(src);
        Ok(())
    }

    /// Like [`MultiStream::step`] once [`SharedEngines::run_images`] ran this stream's frame in
    /// row `row` of the image engine.
    pub fn step_from_row(
        &mut self,
        eng: &mut SharedEngines,
        row: usize,
        mask: &mut [u8],
    ) -> Result<FrameResult> {
        let start = Instant::now();
        let (oh, ow) = self.out_size;
        if mask.len() != oh * ow {
            return Err(Error::Shape(format!(
                "mask buffer of {} bytes for {ow}x{oh}",
                mask.len()
            )));
        }
        let mut res = FrameResult::default();
        mask.fill(0);
        if self.objects.is_empty() {
            return Ok(res);
        }
        self.owner.fill(f32::NEG_INFINITY);
        if let Err(e) = self.objects_from_row(eng, row, mask, &mut res, start) {
            self.objects
                .restart_in_flight(&mut self.in_flight, Object::restart);
            return Err(e);
        }
        self.frames_total += 1;
        res.active = true;
        self.times.record(Stage::Total, start.elapsed());
        Ok(res)
    }

    /// Copies row `row` of the image engine's outputs into the cross engine's image inputs and
    /// runs the objects.
    fn objects_from_row(
        &mut self,
        eng: &mut SharedEngines,
        row: usize,
        mask: &mut [u8],
        res: &mut FrameResult,
        start: Instant,
    ) -> Result<()> {
        let at = eng.at;
        let Some(img) = eng.image.as_ref() else {
            return Err(Error::Config("no separate image engine".into()));
        };
        for (o, i) in [(at.i_tokens, at.c_tokens), (at.i_stride4, at.c_stride4)] {
            let dst = eng.front.inputs[i].f32s_mut()?;
            let n = dst.len();
            copy(
                dst,
                part(img.outputs[o].f32s()?, row * n, n, "image row")?,
                "image row",
            )?;
        }
        self.objects_pass(eng, mask, res, start)
    }

    /// The cross-modal part over chunks of `batch` objects; then, per group of `head_batch` objects of
    /// a chunk, each object's tracking and window, one temporal run, one head run, and each object's
    /// labels.
    fn objects_pass(
        &mut self,
        eng: &mut SharedEngines,
        mask: &mut [u8],
        res: &mut FrameResult,
        start: Instant,
    ) -> Result<()> {
        let at = eng.at;
        let (b, hb) = (eng.batch, eng.head_batch);
        let Dims { lm, .. } = self.dims;
        let n_obj = self.objects.len();
        let per_object = (MAX_TRACKS / n_obj).max(1);
        for c0 in (0..n_obj).step_by(b) {
            let t0 = Instant::now();
            for j in 0..b {
                // Rows past the last object repeat the chunk's first (their outputs are unused).
                let o = &self.objects[if c0 + j < n_obj { c0 + j } else { c0 }];
                let fi = &mut eng.front.inputs;
                let d = self.dims.d;
                copy(
                    &mut fi[at.f_text].f32s_mut()?[j * lm * d..(j + 1) * lm * d],
                    &o.text.encoded,
                    "encoded text",
                )?;
                set_bool_row(&mut fi[at.f_token_mask], j, &o.text.token_mask)?;
                set_bool_row(&mut fi[at.f_sam], j, &o.text.self_attention_mask)?;
                set_i64_row(&mut fi[at.f_pos], j, &o.text.position_ids)?;
            }
            eng.front.run()?;
            let t1 = Instant::now();
            // The image engine's time is in the first chunk's share.
            self.times
                .record(Stage::Frame, t1 - if c0 == 0 { start } else { t0 });
            let count = b.min(n_obj - c0);
            for g0 in (0..count).step_by(hb) {
                let gn = hb.min(count - g0);
                let t0 = Instant::now();
                let first = c0 + g0;
                self.in_flight = first..first;
                for j in 0..gn {
                    // In flight from its tracker step (which may fail half-way) to its labels.
                    self.in_flight.end = first + j + 1;
                    self.track(eng, first + j, g0 + j, j)?;
                }
                let t1 = Instant::now();
                self.times.record(Stage::Tracker, t1 - t0);
                eng.temporal.run()?;
                for j in 0..gn {
                    self.head_inputs(eng, c0 + g0 + j, g0 + j, j)?;
                }
                let t2 = Instant::now();
                self.times.record(Stage::Temporal, t2 - t1);
                run_head(eng)?;
                self.times.record(Stage::Head, t2.elapsed());
                for j in 0..gn {
                    self.labels_of(eng, c0 + g0 + j, j, mask, res, per_object)?;
                    self.in_flight.start += 1;
                }
            }
        }
        Ok(())
    }

    /// Object `k` (row `row` of the cross engine's outputs): tracking, into row `slot` of the head's
    /// `refs`, and its window, into row `slot` of the temporal engine's inputs.
    fn track(&mut self, eng: &mut SharedEngines, k: usize, row: usize, slot: usize) -> Result<()> {
        let at = eng.at;
        let Dims {
            d, ns, lm, window, ..
        } = self.dims;
        let o = &mut self.objects[k];
        let fo = &eng.front.outputs;
        copy(
            &mut o.objects,
            part(fo[at.f_objects].f32s()?, row * ns * d, ns * d, "objects")?,
            "objects",
        )?;
        let head_refs = &mut eng.head.inputs[at.h_refs].f32s_mut()?[slot * ns * 4..][..ns * 4];
        copy(
            head_refs,
            part(fo[at.f_refs].f32s()?, row * ns * 4, ns * 4, "refs")?,
            "refs",
        )?;
        let memory_text = part(
            fo[at.f_memory_text].f32s()?,
            row * lm * d,
            lm * d,
            "memory_text",
        )?;
        o.tracker.step(
            &mut o.objects,
            head_refs,
            memory_text,
            &o.text.token_mask,
            &mut self.scratch_objects,
            &mut self.scratch_refs,
        )?;
        o.window
            .push(&o.objects, part(memory_text, 0, d, "sentence")?)?;
        let [ob, sn, m] = pick3(
            &mut eng.temporal.inputs,
            [at.t_objects, at.t_sentence, at.t_mask],
        )?;
        let wl = window * ns * d;
        o.newest = o.window.write_chronological(
            &mut ob.f32s_mut()?[slot * wl..][..wl],
            &mut sn.f32s_mut()?[slot * window * d..][..window * d],
            &mut bools_mut(m)?[slot * window..][..window],
        )?;
        Ok(())
    }

    /// Object `k`'s head inputs in row `slot`: its newest temporal output, text and token mask, and
    /// (when the head runs per object) its `f_seg` row `row` of the cross engine's outputs.
    fn head_inputs(
        &mut self,
        eng: &mut SharedEngines,
        k: usize,
        row: usize,
        slot: usize,
    ) -> Result<()> {
        let at = eng.at;
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
        let o = &mut self.objects[k];
        let ot = eng.temporal.outputs[at.t_out].f32s()?;
        copy(
            &mut eng.head.inputs[at.h_objects].f32s_mut()?[slot * ns * d..][..ns * d],
            part(ot, (slot * window + o.newest) * ns * d, ns * d, "objects_t")?,
            "objects_t",
        )?;
        let fo = &eng.front.outputs;
        let memory_text = part(
            fo[at.f_memory_text].f32s()?,
            row * lm * d,
            lm * d,
            "memory_text",
        )?;
        let seg_len = dm * h4 * w4;
        let f_seg = part(fo[at.f_seg].f32s()?, row * seg_len, seg_len, "f_seg")?;
        if let Some(c) = o.clip.as_mut() {
            c.refs
                .push(&eng.head.inputs[at.h_refs].f32s()?[slot * ns * 4..][..ns * 4])?;
            c.memory_text.push(memory_text)?;
            c.f_seg.push(f_seg)?;
        }
        copy(
            &mut eng.head.inputs[at.h_memory_text].f32s_mut()?[slot * lm * d..][..lm * d],
            memory_text,
            "memory_text",
        )?;
        set_bool_row(
            &mut eng.head.inputs[at.h_token_mask],
            slot,
            &o.text.token_mask,
        )?;
        if eng.head_batch != eng.batch {
            copy(eng.head.inputs[at.h_seg].f32s_mut()?, f_seg, "f_seg")?;
        }
        Ok(())
    }

    /// Object `k`'s scores, tracks and labels from row `slot` of the head's outputs.
    fn labels_of(
        &mut self,
        eng: &mut SharedEngines,
        k: usize,
        slot: usize,
        mask: &mut [u8],
        res: &mut FrameResult,
        per_object: usize,
    ) -> Result<()> {
        let at = eng.at;
        let Dims { ns, h4, w4, .. } = self.dims;
        let t3 = Instant::now();
        let o = &mut self.objects[k];
        let ho = &eng.head.outputs;
        o.scores
            .update(part(ho[at.h_logits].f32s()?, slot * ns, ns, "logits")?)?;
        o.scores.select(self.cfg.selection);
        o.frames += 1;
        let (chosen, scores) = (o.scores.chosen(), o.scores.scores());
        let hw = h4 * w4;
        let boxes = part(ho[at.h_boxes].f32s()?, slot * ns * 4, ns * 4, "boxes")?;
        let mask_logits = part(
            ho[at.h_masks].f32s()?,
            slot * ns * hw,
            ns * hw,
            "mask_logits",
        )?;
        for &q in chosen.iter().take(per_object) {
            if res.tracks.is_full() {
                break;
            }
            let label = res.tracks.len() as u8 + 1;
            self.labels.label_scored(
                part(mask_logits, q * hw, hw, "mask_logits")?,
                mask,
                &mut self.owner,
                label,
                scores[q],
            )?;
            let b = box4(part(boxes, q * 4, 4, "boxes")?)?;
            let _ = res
                .tracks
                .push(track_entry(q, o.id, scores[q], b, self.out_size));
        }
        res.window_len = res.window_len.max(o.window.len());
        res.prompt_frames = res.prompt_frames.max(o.frames);
        self.times.record(Stage::Post, t3.elapsed());
        Ok(())
    }

    /// Re-scores the first object's frames since its prompt as one clip, as the offline session
    /// would (temporal engine over the whole window, heads for every frame, full-clip mean
    /// selection, 0/1 masks of the chosen tracks at `out_size`). Needs `keep_clip` and at most `W`
    /// frames.
    pub fn finalize(
        &mut self,
        eng: &mut SharedEngines,
        selection: Selection,
    ) -> Result<VideoResult> {
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
        let at = eng.at;
        let Some(o) = self.objects.first() else {
            return Err(Error::Source("finalize: no object".into()));
        };
        let Some(clip) = o.clip.as_ref() else {
            return Err(Error::Config(
                "finalize needs keep_clip (and keeps the first object added to an empty stream)"
                    .into(),
            ));
        };
        let t =
            crate::pipeline::session::clip_frames(o.frames, clip.refs.len(), o.window.capacity())?;
        let [ob, sn, m] = pick3(
            &mut eng.temporal.inputs,
            [at.t_objects, at.t_sentence, at.t_mask],
        )?;
        // Row 0 of batched engines (the other rows' outputs are not read).
        o.window.write_chronological(
            &mut ob.f32s_mut()?[..window * ns * d],
            &mut sn.f32s_mut()?[..window * d],
            &mut bools_mut(m)?[..window],
        )?;
        eng.temporal.run()?;
        set_bool_row(&mut eng.head.inputs[at.h_token_mask], 0, &o.text.token_mask)?;
        let hw = h4 * w4;
        let mut logits = vec![0f32; t * ns];
        let mut boxes = vec![0f32; t * ns * 4];
        let mut mask_logits = vec![0f32; t * ns * hw];
        for f in 0..t {
            let ot = eng.temporal.outputs[at.t_out].f32s()?;
            let h = &mut eng.head;
            copy(
                row0(&mut h.inputs[at.h_objects], ns * d)?,
                part(ot, f * ns * d, ns * d, "objects_t")?,
                "objects_t",
            )?;
            copy(
                row0(&mut h.inputs[at.h_refs], ns * 4)?,
                clip_row(&clip.refs, f)?,
                "refs",
            )?;
            copy(
                row0(&mut h.inputs[at.h_memory_text], lm * d)?,
                clip_row(&clip.memory_text, f)?,
                "memory_text",
            )?;
            copy(
                row0(&mut h.inputs[at.h_seg], dm * hw)?,
                clip_row(&clip.f_seg, f)?,
                "f_seg",
            )?;
            h.run()?;
            logits[f * ns..(f + 1) * ns].copy_from_slice(part(
                h.outputs[at.h_logits].f32s()?,
                0,
                ns,
                "logits",
            )?);
            boxes[f * ns * 4..(f + 1) * ns * 4].copy_from_slice(part(
                h.outputs[at.h_boxes].f32s()?,
                0,
                ns * 4,
                "boxes",
            )?);
            mask_logits[f * ns * hw..(f + 1) * ns * hw].copy_from_slice(part(
                h.outputs[at.h_masks].f32s()?,
                0,
                ns * hw,
                "mask_logits",
            )?);
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
    }
}

/// Runs the head engine on the rows its inputs hold. When it takes as many objects as the cross engine,
/// the cross engine's `f_seg` is its `f_seg` input as it stands (the buffers are handed over and back
/// instead of copied: a chunk is then one group); otherwise [`MultiStream::head_inputs`] copied the row.
fn run_head(eng: &mut SharedEngines) -> Result<()> {
    let at = eng.at;
    if eng.head_batch != eng.batch {
        return eng.head.run();
    }
    std::mem::swap(
        &mut eng.front.outputs[at.f_seg],
        &mut eng.head.inputs[at.h_seg],
    );
    let r = eng.head.run();
    std::mem::swap(
        &mut eng.front.outputs[at.f_seg],
        &mut eng.head.inputs[at.h_seg],
    );
    r
}

/// The first `len` values of an f32 buffer (row 0 of a batched binding).
fn row0(t: &mut Tensor, len: usize) -> Result<&mut [f32]> {
    t.f32s_mut()?
        .get_mut(..len)
        .ok_or_else(|| Error::Shape(format!("buffer shorter than {len}")))
}

/// Writes `v` into row `row` of a `[B, ...]` bool buffer.
fn set_bool_row(t: &mut Tensor, row: usize, v: &[bool]) -> Result<()> {
    let d = bools_mut(t)?;
    let (n, len) = (v.len(), d.len());
    let dst = d
        .get_mut(row * n..(row + 1) * n)
        .ok_or_else(|| Error::Shape(format!("bool row {row} of {n} in {len}")))?;
    dst.copy_from_slice(v);
    Ok(())
}

/// Writes `v` into row `row` of a `[B, ...]` i64 buffer.
fn set_i64_row(t: &mut Tensor, row: usize, v: &[i64]) -> Result<()> {
    match t.data_mut() {
        crate::tensor::Data::I64(d) => {
            let n = v.len();
            let len = d.len();
            let dst = d
                .get_mut(row * n..(row + 1) * n)
                .ok_or_else(|| Error::Shape(format!("i64 row {row} of {n} in {len}")))?;
            dst.copy_from_slice(v);
            Ok(())
        }
        _ => Err(Error::Shape("expected an i64 buffer".into())),
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
