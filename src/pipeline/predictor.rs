//! The offline and streaming sessions as [`VideoPredictor`]s, so `referdino eval` runs the real model
//! in either mode.

use crate::camera::Preprocessor;
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::eval::runner::VideoPredictor;
use crate::graph::engines::{ExportOptions, Geometry};
use crate::pipeline::engine_dir::BackendKind;
use crate::pipeline::post::Selection;
use crate::pipeline::session::{EngineSet, Session};
use crate::pipeline::stream::{StreamConfig, StreamSession};
use crate::quant::engines::HostInt8;
use crate::text::Tokenizer;
use crate::weights::Checkpoint;
use image::RgbImage;

/// Runs each video through the offline session on the CPU backend, exactly as the official evaluation:
/// shorter side resized to `short_side` (PIL bilinear), raw expression with the '.' rule, whole-clip
/// temporal decoder, best track (or every track over the threshold), masks at the original size.
pub struct SessionPredictor {
    weights: Checkpoint,
    cfg: ModelConfig,
    tokenizer: Tokenizer,
    short_side: u32,
    selection: Selection,
    backend: BackendKind,
    threads: Option<usize>,
    int8: Option<HostInt8>,
    session: Option<(Geometry, Session)>,
}

impl SessionPredictor {
    /// Runs the engines on the host backends `kind` names (`cpu`, `ort`, `auto`, a per-engine mix;
    /// default `cpu`) with `threads` threads per engine (`None`: every core).
    pub fn with_backend(mut self, kind: BackendKind, threads: Option<usize>) -> Self {
        self.backend = kind;
        self.threads = threads;
        self
    }

    /// A predictor for a checkpoint and its configuration.
    pub fn new(weights: Checkpoint, cfg: ModelConfig, selection: Selection) -> Result<Self> {
        weights.validate(&cfg)?;
        Ok(SessionPredictor {
            weights,
            cfg,
            tokenizer: Tokenizer::bundled()?,
            short_side: 360,
            selection,
            backend: BackendKind::Cpu,
            threads: None,
            int8: None,
            session: None,
        })
    }

    /// Changes the resize target (360 in the official evaluation).
    pub fn with_short_side(mut self, s: u32) -> Self {
        self.short_side = s;
        self
    }

    /// Runs INT8 engines made with this scale table (host form; `None`: FP32).
    pub fn with_int8(mut self, int8: Option<HostInt8>) -> Self {
        self.int8 = int8;
        self
    }
}

impl VideoPredictor for SessionPredictor {
    fn predict(&mut self, frames: &[RgbImage], prompt: &str) -> Result<Vec<Vec<Vec<u8>>>> {
        let first = frames
            .first()
            .ok_or_else(|| Error::Eval("video has no frames".into()))?;
        let (w0, h0) = first.dimensions();
        let mut pre = Preprocessor::try_new(w0, h0, self.short_side)?;
        let (w, h) = pre.out_size();
        let mut clip = Vec::with_capacity(frames.len());
        for f in frames {
            if f.dimensions() != (w0, h0) {
                return Err(Error::Eval("frames of one video differ in size".into()));
            }
            let mut buf = vec![0f32; pre.out_len()];
            pre.run(f.as_raw(), &mut buf)?;
            clip.push(buf);
        }
        let cap = self.tokenizer.encode(prompt, self.cfg.max_text_len)?;
        // Engines are static-shaped: rebuilt only when the geometry grows or changes.
        let need = Geometry {
            height: h as usize,
            width: w as usize,
            max_text: cap.len.max(16),
            window: frames.len().next_multiple_of(8),
        };
        let fits = matches!(&self.session, Some((g, _)) if g.height == need.height
            && g.width == need.width && g.max_text >= cap.len && g.window >= frames.len());
        if !fits {
            let engines = EngineSet::build_with(
                self.backend,
                self.threads,
                &self.weights,
                &self.cfg,
                &need,
                &ExportOptions::default(),
                self.int8.as_ref(),
            )?;
            self.session = Some((need, Session::new(engines, self.cfg.tracking_alpha)?));
        }
        let (_, session) = self.session.as_mut().expect("session built above");
        let r = session.run_video(&cap, &clip, (h0 as usize, w0 as usize), self.selection)?;
        Ok(r.masks.into_iter().map(|m| vec![m]).collect())
    }
}

/// Runs each expression through the streaming session on the CPU backend, frame by frame and causally:
/// the mask of frame `t` is what the live runtime would have produced at `t` (temporal window of the
/// last `window` frames, running-mean selection). Same preprocessing and expression feeding as
/// [`SessionPredictor`], so the two can be compared with `eval::agreement`.
pub struct StreamPredictor {
    weights: Checkpoint,
    cfg: ModelConfig,
    tokenizer: Tokenizer,
    short_side: u32,
    selection: Selection,
    window: usize,
    backend: BackendKind,
    threads: Option<usize>,
    int8: Option<HostInt8>,
    session: Option<(Geometry, (usize, usize), StreamSession)>,
}

impl StreamPredictor {
    /// Runs the engines on the host backends `kind` names (`cpu`, `ort`, `auto`, a per-engine mix;
    /// default `cpu`) with `threads` threads per engine (`None`: every core).
    pub fn with_backend(mut self, kind: BackendKind, threads: Option<usize>) -> Self {
        self.backend = kind;
        self.threads = threads;
        self
    }

    /// A predictor with a temporal window of `window` frames.
    pub fn new(
        weights: Checkpoint,
        cfg: ModelConfig,
        selection: Selection,
        window: usize,
    ) -> Result<Self> {
        weights.validate(&cfg)?;
        if window == 0 {
            return Err(Error::Config(
                "temporal window must be at least 1 frame".into(),
            ));
        }
        Ok(StreamPredictor {
            weights,
            cfg,
            tokenizer: Tokenizer::bundled()?,
            short_side: 360,
            selection,
            window,
            backend: BackendKind::Cpu,
            threads: None,
            int8: None,
            session: None,
        })
    }

    /// Changes the resize target (360 in the official evaluation).
    pub fn with_short_side(mut self, s: u32) -> Self {
        self.short_side = s;
        self
    }

    /// Runs INT8 engines made with this scale table (host form; `None`: FP32).
    pub fn with_int8(mut self, int8: Option<HostInt8>) -> Self {
        self.int8 = int8;
        self
    }
}

impl VideoPredictor for StreamPredictor {
    fn predict(&mut self, frames: &[RgbImage], prompt: &str) -> Result<Vec<Vec<Vec<u8>>>> {
        let first = frames
            .first()
            .ok_or_else(|| Error::Eval("video has no frames".into()))?;
        let (w0, h0) = first.dimensions();
        let out = (h0 as usize, w0 as usize);
        let mut pre = Preprocessor::try_new(w0, h0, self.short_side)?;
        let (w, h) = pre.out_size();
        let cap = self.tokenizer.encode(prompt, self.cfg.max_text_len)?;
        let need = Geometry {
            height: h as usize,
            width: w as usize,
            max_text: cap.len.max(16),
            window: self.window,
        };
        let fits = matches!(&self.session, Some((g, o, _)) if g.height == need.height
            && g.width == need.width && g.max_text >= cap.len && *o == out);
        if !fits {
            let engines = EngineSet::build_with(
                self.backend,
                self.threads,
                &self.weights,
                &self.cfg,
                &need,
                &ExportOptions::default(),
                self.int8.as_ref(),
            )?;
            let scfg = StreamConfig {
                selection: self.selection,
                ..StreamConfig::for_model(&self.cfg)
            };
            self.session = Some((need, out, StreamSession::new(engines, scfg, out)?));
        }
        let (_, _, session) = self.session.as_mut().expect("session built above");
        session.set_expression(prompt)?;
        let mut mask = vec![0u8; out.0 * out.1];
        let mut masks = Vec::with_capacity(frames.len());
        for f in frames {
            if f.dimensions() != (w0, h0) {
                return Err(Error::Eval("frames of one video differ in size".into()));
            }
            pre.run(f.as_raw(), session.image_mut()?)?;
            session.step(&mut mask)?;
            masks.push(vec![mask.iter().map(|&l| (l != 0) as u8).collect()]);
        }
        Ok(masks)
    }
}
