//! The engines before binding: [`MultiEngineSet`] (text, front, temporal, head), the
//! [`GeometryEngines`] of one input size without the text engine, the [`Front`] (split image + cross
//! engines, or the whole frame engine), and their export in memory ([`text_engine_on`],
//! [`MultiEngineSet::on`] and its variants, [`GeometryEngines::on_each_until`]).

use crate::backend::Engine;
use crate::error::{Error, Result};
use crate::graph::engines::names as n;
use crate::pipeline::session::EngineSet;

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
///
/// [`SharedEngines`]: super::SharedEngines
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
///
/// [`SharedEngines::with_text`]: super::SharedEngines::with_text
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
    int8: Option<&crate::quant::engines::HostInt8>,
) -> Result<Box<dyn Engine>> {
    use crate::graph::engines as ge;
    use prost::Message;
    let go = crate::onnx::builder::GraphOptions {
        taps: false,
        decompose_custom_ops: opts.decompose_custom_ops,
    };
    let p = ge::NetParams::new(cfg, geo)?;
    let g = ge::build_text(w, &p.bert, geo, &go)?;
    match int8 {
        None => backends.load_bytes(n::TEXT, &g.to_bytes()),
        Some(q) => backends.load_bytes(n::TEXT, &q.apply(&g.into_model())?.encode_to_vec()),
    }
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
    /// whose frames are ready together, see
    /// [`load_image_row`](super::MultiStream::load_image_row)).
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
        let text = text_engine_on(backends, w, cfg, geo, opts, None)?;
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
            None,
            &|| false,
        )?;
        set.ok_or_else(|| Error::Graph("the export stopped without being asked to".into()))
    }

    /// [`GeometryEngines::on_each`] (`batches`: cross batch, image batch) that gives up, with
    /// `None`, once `stop` says so: asked before each engine is built, so a stop waits for the
    /// engine being built and optimised at most (a background export the run no longer needs).
    #[allow(clippy::too_many_arguments)]
    pub fn on_each_until(
        backends: &crate::backend::kind::HostBackends,
        w: &dyn crate::onnx::Weights,
        cfg: &crate::config::ModelConfig,
        geo: &crate::graph::engines::Geometry,
        opts: &crate::graph::engines::ExportOptions,
        (cross_batch, image_batch): (usize, usize),
        int8: Option<&crate::quant::engines::HostInt8>,
        stop: &dyn Fn() -> bool,
    ) -> Result<Option<Self>> {
        use crate::graph::engines as ge;
        use crate::onnx::builder::{Graph, GraphOptions};
        use prost::Message;
        let go = GraphOptions {
            taps: false,
            decompose_custom_ops: opts.decompose_custom_ops,
        };
        let p = ge::NetParams::new(cfg, geo)?;
        // INT8: the table holds the whole-frame engines' activations; each object engine takes them
        // node by node from the FP32 whole-frame graphs (`HostInt8::apply_object`).
        let whole = match int8 {
            Some(q) => {
                q.check(opts, geo)?;
                backends.warn_int8_on_tract();
                Some(crate::quant::engines::fp32_structure(w, cfg, geo, opts)?)
            }
            None => None,
        };
        let load =
            |name: &str, build: &dyn Fn() -> Result<Graph>| -> Result<Option<Box<dyn Engine>>> {
                if stop() {
                    return Ok(None);
                }
                match (int8, &whole) {
                    (Some(q), Some(whole)) => {
                        let m = q.apply_object(whole, &build()?.into_model())?;
                        backends.load_bytes(name, &m.encode_to_vec()).map(Some)
                    }
                    _ => backends.load_bytes(name, &build()?.to_bytes()).map(Some),
                }
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
