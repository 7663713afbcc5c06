//! The offline session as a [`VideoPredictor`], so `referdino eval` runs the real model.

use crate::camera::Preprocessor;
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::eval::runner::VideoPredictor;
use crate::graph::engines::{ExportOptions, Geometry};
use crate::pipeline::post::Selection;
use crate::pipeline::session::{EngineSet, Session};
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
    session: Option<(Geometry, Session)>,
}

impl SessionPredictor {
    /// A predictor for a checkpoint and its configuration.
    pub fn new(weights: Checkpoint, cfg: ModelConfig, selection: Selection) -> Result<Self> {
        weights.validate(&cfg)?;
        Ok(SessionPredictor {
            weights,
            cfg,
            tokenizer: Tokenizer::bundled()?,
            short_side: 360,
            selection,
            session: None,
        })
    }

    /// Changes the resize target (360 in the official evaluation).
    pub fn with_short_side(mut self, s: u32) -> Self {
        self.short_side = s;
        self
    }
}

impl VideoPredictor for SessionPredictor {
    fn predict(&mut self, frames: &[RgbImage], prompt: &str) -> Result<Vec<Vec<Vec<u8>>>> {
        let first = frames
            .first()
            .ok_or_else(|| Error::Eval("video has no frames".into()))?;
        let (w0, h0) = first.dimensions();
        let mut pre = Preprocessor::new(w0, h0, self.short_side);
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
            let engines =
                EngineSet::cpu(&self.weights, &self.cfg, &need, &ExportOptions::default())?;
            self.session = Some((need, Session::new(engines, self.cfg.tracking_alpha)?));
        }
        let (_, session) = self.session.as_mut().expect("session built above");
        let r = session.run_video(&cap, &clip, (h0 as usize, w0 as usize), self.selection)?;
        Ok(r.masks.into_iter().map(|m| vec![m]).collect())
    }
}
