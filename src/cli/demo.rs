//! `referdino demo`: the whole pipeline on the bundled clip and checkpoint, with overlays to look at.
//!
//! The bundled model is the tiny random-weight fixture produced by the official code, so the masks show
//! that every stage runs end to end, not a trained model's quality. Pass `--weights`/`--config` and
//! `--frames` (a folder of images) to run a real checkpoint the same way.

use crate::config::ModelConfig;
use crate::graph::engines::{ExportOptions, Geometry};
use crate::output::overlay::{render_video, OverlayStyle, Track};
use crate::pipeline::post::Selection;
use crate::pipeline::session::{EngineSet, Session};
use crate::tensor::{read_safetensors, Data};
use crate::text::Tokenizer;
use crate::weights::Checkpoint;
use anyhow::{bail, Context};
use image::RgbImage;
use std::path::PathBuf;
use std::time::Instant;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/referdino-tiny");

/// Arguments of `referdino demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// The referring expression.
    #[arg(long, default_value = "the red ball rolling to the left")]
    pub prompt: String,
    /// Checkpoint (default: the bundled tiny fixture).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Model configuration (default: the bundled fixture's config.json).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Where overlays (PNG per frame + animated GIF) go.
    #[arg(long, default_value = "demo-out")]
    pub out: PathBuf,
    /// Multi-object mode: every track whose mean score exceeds this threshold.
    #[arg(long)]
    pub multi: Option<f32>,
}

/// CLI entry.
pub fn run(a: DemoArgs) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let weights = a
        .weights
        .clone()
        .unwrap_or_else(|| PathBuf::from(FIXTURE).join("weights.safetensors"));
    let config = a
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(FIXTURE).join("config.json"));
    let cfg = ModelConfig::from_file(&config)?;
    let ck = Checkpoint::load(&weights)?;
    ck.validate(&cfg)
        .context("checkpoint does not fit the configuration")?;
    let (inputs, _) = read_safetensors(&PathBuf::from(FIXTURE).join("inputs.safetensors"))?;
    let clip = inputs.get("frames_uint8").context("bundled clip missing")?;
    let (t, h, w) = (clip.shape()[0], clip.shape()[1], clip.shape()[2]);
    let Data::U8(px) = clip.data() else {
        bail!("bundled clip is not uint8")
    };
    let frames_rgb: Vec<RgbImage> = (0..t)
        .map(|f| {
            RgbImage::from_raw(
                w as u32,
                h as u32,
                px[f * h * w * 3..(f + 1) * h * w * 3].to_vec(),
            )
            .expect("frame size")
        })
        .collect();
    let frames = super::parity::normalize_frames(clip)?;
    let tok = Tokenizer::bundled()?;
    let cap = tok.encode_prompt(&a.prompt, cfg.max_text_len)?;
    println!(
        "prompt     {:?} → {} tokens {:?}",
        cap.caption, cap.len, cap.tokens
    );
    println!(
        "checkpoint {} ({} tensors)",
        weights.display(),
        ck.keys().len()
    );
    let geo = Geometry {
        height: h,
        width: w,
        max_text: cap.len.max(8),
        window: t,
    };
    let t1 = Instant::now();
    let engines = EngineSet::cpu(&ck, &cfg, &geo, &ExportOptions::default())?;
    let export_ms = t1.elapsed().as_secs_f64() * 1e3;
    let mut session = Session::new(engines, cfg.tracking_alpha)?;
    let sel = match a.multi {
        Some(threshold) => Selection::Multi { threshold },
        None => Selection::Single,
    };
    let t2 = Instant::now();
    let r = session.run_video(&cap, &frames, (h, w), sel)?;
    let run_ms = t2.elapsed().as_secs_f64() * 1e3;
    println!(
        "clip       {t} frames of {w}×{h}; engines built in {export_ms:.0} ms; inference {run_ms:.0} ms ({:.1} ms/frame)",
        run_ms / t as f64
    );
    for &q in &r.chosen {
        println!("track {q:<3}  mean score {:.3}", r.scores[q]);
    }
    let ns = session.dims().ns;
    let tracks: Vec<Vec<Track<'_>>> = (0..t)
        .map(|f| {
            let q = r.chosen[0];
            let b = &r.boxes[(f * ns + q) * 4..(f * ns + q + 1) * 4];
            let (cx, cy, bw, bh) = (
                b[0] * w as f32,
                b[1] * h as f32,
                b[2] * w as f32,
                b[3] * h as f32,
            );
            vec![Track {
                id: q as u32,
                mask: &r.masks[f],
                score: Some(r.scores[q]),
                bbox: Some([cx - bw / 2.0, cy - bh / 2.0, cx + bw / 2.0, cy + bh / 2.0]),
            }]
        })
        .collect();
    for (f, m) in r.masks.iter().enumerate() {
        let cover = m.iter().filter(|&&v| v != 0).count() as f64 / m.len() as f64;
        println!(
            "frame {f}    mask covers {:.1} % of the frame",
            cover * 100.0
        );
    }
    let gif = render_video(
        &a.out,
        &frames_rgb,
        &tracks,
        &cap.caption,
        &OverlayStyle::default(),
        400,
    )?;
    println!("overlays   {} (+ one PNG per frame)", gif.display());
    println!("done in {:.1} s", t0.elapsed().as_secs_f64());
    Ok(())
}
