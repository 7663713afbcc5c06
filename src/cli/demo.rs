//! `referdino demo`: the live runtime ([`crate::pipeline::live::Runtime`]) on the bundled clip and
//! checkpoint, with overlays to look at.
//!
//! The bundled clip is written as PNG frames into `OUT/input/` and streamed as a folder source, so the
//! demo exercises exactly what `referdino run --source DIR` does. At the end the stream is re-scored as
//! one clip (what the offline session computes) and both results are printed.
//!
//! The bundled model is the tiny random-weight fixture produced by the official code, so the masks show
//! that every stage runs end to end, not a trained model's quality. Pass `--weights`/`--config` and
//! `--frames` (a folder of images) to run a real checkpoint the same way.

use super::run::{run_config, RunArgs, FIXTURE};
use crate::tensor::{read_safetensors, Data};
use crate::text::Tokenizer;
use anyhow::{bail, Context};
use std::path::PathBuf;
use std::time::Instant;

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
    /// A folder of frames to run instead of the bundled clip.
    #[arg(long)]
    pub frames: Option<PathBuf>,
    /// Where overlays (PNG per frame + animated GIF) go.
    #[arg(long, default_value = "demo-out")]
    pub out: PathBuf,
    /// Multi-object mode: every track whose mean score exceeds this threshold.
    #[arg(long)]
    pub multi: Option<f32>,
    /// Worker threads of the CPU backend (default: every available core).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Writes the bundled clip's frames as `dir/NNNNN.png`; returns (frames, height, width).
fn write_bundled_clip(dir: &std::path::Path) -> anyhow::Result<(usize, usize, usize)> {
    let (inputs, _) = read_safetensors(&PathBuf::from(FIXTURE).join("inputs.safetensors"))?;
    let clip = inputs.get("frames_uint8").context("bundled clip missing")?;
    let s = clip.shape();
    if s.len() != 4 || s[3] != 3 {
        bail!("bundled clip is {s:?}, expected [T,H,W,3]");
    }
    let (t, h, w) = (s[0], s[1], s[2]);
    let Data::U8(px) = clip.data() else {
        bail!("bundled clip is not uint8")
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for f in 0..t {
        let img = image::RgbImage::from_raw(
            w as u32,
            h as u32,
            px[f * h * w * 3..(f + 1) * h * w * 3].to_vec(),
        )
        .context("bundled frame size")?;
        let p = dir.join(format!("{f:05}.png"));
        img.save(&p)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok((t, h, w))
}

/// CLI entry.
pub fn run(a: DemoArgs) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let source = match &a.frames {
        Some(d) => d.clone(),
        None => {
            let dir = a.out.join("input");
            write_bundled_clip(&dir)?;
            dir
        }
    };
    let first = std::fs::read_dir(&source)
        .with_context(|| format!("reading {}", source.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|x| x == "png" || x == "jpg" || x == "jpeg")
        })
        .min()
        .with_context(|| format!("{}: no frames", source.display()))?;
    let (w, h) =
        image::image_dimensions(&first).with_context(|| format!("reading {}", first.display()))?;
    let tok = Tokenizer::bundled()?;
    let cap = tok.encode_prompt(&a.prompt, 256)?;
    println!(
        "prompt     {:?} → {} tokens {:?}",
        cap.caption, cap.len, cap.tokens
    );
    let weights = a
        .weights
        .clone()
        .unwrap_or_else(|| PathBuf::from(FIXTURE).join("weights.safetensors"));
    println!("checkpoint {}", weights.display());
    let mut args = RunArgs::new(&source.to_string_lossy());
    args.prompt = vec![a.prompt.clone()];
    args.weights = a.weights.clone();
    args.config = a.config.as_ref().map(|c| c.to_string_lossy().into_owned());
    // The bundled clip runs at its own size, as the official demo fixture did.
    args.short_side = if a.frames.is_some() { 360 } else { w.min(h) };
    args.save_dir = Some(a.out.clone());
    args.multi = a.multi;
    args.no_stdin = true;
    args.fps = 3;
    args.threads = a.threads;
    let mut config = args.to_config();
    config.finalize = true;
    config.collect_masks = true;
    let s = run_config(config)?;
    let t = s.frames_processed;
    let total_ms = s.times.get(crate::pipeline::timing::Stage::Total).mean_ms();
    println!("clip       {t} frames of {w}×{h}; {total_ms:.1} ms/frame (streaming, causal)");
    for tr in &s.last.tracks {
        println!(
            "track {:<3}  running mean score {:.3} (live, last frame)",
            tr.id, tr.score
        );
    }
    if let Some(off) = &s.finalized {
        for &q in &off.chosen {
            println!(
                "track {q:<3}  mean score {:.3} (whole clip re-scored = offline session)",
                off.scores[q]
            );
        }
    }
    for (f, m) in s.masks.iter().enumerate() {
        let cover = |m: &[u8]| m.iter().filter(|&&v| v != 0).count() as f64 / m.len() as f64;
        let off = s
            .finalized
            .as_ref()
            .and_then(|o| o.masks.get(f))
            .map(|o| format!(" (offline {:.1} %)", cover(o) * 100.0))
            .unwrap_or_default();
        println!(
            "frame {f}    mask covers {:.1} % of the frame{off}",
            cover(m) * 100.0
        );
    }
    if let Some(g) = &s.gif {
        println!("overlays   {} (+ one PNG per frame)", g.display());
    }
    eprint!("{}", s.text());
    println!("done in {:.1} s", t0.elapsed().as_secs_f64());
    Ok(())
}
