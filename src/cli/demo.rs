//! `referdino demo`: the live runtime ([`crate::pipeline::live::Runtime`]) on a generated clip with
//! the bundled model that was trained on such clips, with a prompt switch half-way and overlays to
//! look at.
//!
//! The clip is drawn by the synthetic referring-video generator ([`crate::eval::synth::clips`]) from
//! a fixed seed: 32 frames of 320×192 with three or four moving objects and their ground-truth masks.
//! Its frames are written as PNG into `OUT/input/` and streamed as a folder source, so the demo
//! exercises exactly what `referdino run --source DIR` does. The first prompt names one object; after
//! half the frames a `prompt` command (the same one the socket and stdin take) names another. Every
//! live mask is scored against the ground truth of the object named at that frame (J&F, as
//! `referdino eval` computes it), and against the other named object too, so the output shows whether
//! the switch picked the other object. With `--together` the two prompts are two objects from the
//! first frame instead (each with its id and colour), and each object's pixels of the label mask are
//! scored against the object it names. The scores go to `OUT/scores.json`.
//!
//! The bundled model (`tests/fixtures/referdino-synth/`, its README says how it was trained and how
//! well it does) runs at its training scale, short side 192 (the demo clip's own size). Pass `--weights`/`--config` and
//! `--frames` (a folder of images) to run a real checkpoint the same way.

use super::run::RunArgs;
use crate::eval::metrics::FrameScorer;
use crate::eval::synth::clips::{make_clip, render, Clip, ClipSpec, Holdout};
use crate::pipeline::commands::{Command, Request};
use crate::pipeline::live::{FrameOutput, Runtime, Sink};
use crate::text::Tokenizer;
use anyhow::{anyhow, bail, Context};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The bundled trained model: `checkpoint.pth` with its `config.json`.
pub const DEMO_MODEL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/referdino-synth"
);

/// Shorter side the bundled model was last trained at (clips of 320×192).
pub const DEMO_SHORT_SIDE: u32 = 192;

/// The demo clip: fixed seed, three or four objects, every colour × shape pair the training set had.
pub fn demo_clip_spec() -> ClipSpec {
    ClipSpec {
        clips: 1,
        frames: 32,
        width: 320,
        height: 192,
        seed: 2026,
        min_objects: 3,
        max_objects: 4,
        expressions_per_object: 3,
        holdout: Holdout::Exclude,
        split: "demo".into(),
    }
}

/// Arguments of `referdino demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// The first referring expression (default: one of the demo clip's own expressions).
    #[arg(long)]
    pub prompt: Option<String>,
    /// The expression sent as a `prompt` command at `--switch-at` (default: one naming another
    /// object of the demo clip; with `--frames`, no switch unless given).
    #[arg(long)]
    pub then: Option<String>,
    /// Frame at which `--then` is sent (default: half the clip).
    #[arg(long)]
    pub switch_at: Option<u64>,
    /// Both prompts as two objects from the first frame instead of a switch: each object keeps its
    /// id, is drawn in its own colour, and its pixels of the label mask are scored against the object
    /// it names (generated clip only).
    #[arg(long)]
    pub together: bool,
    /// `--weights` (default: the bundled trained model), `--config`.
    #[command(flatten)]
    pub model: super::args::ModelArgs,
    /// A folder of frames to run instead of the generated clip (no ground truth then).
    #[arg(long)]
    pub frames: Option<PathBuf>,
    /// Shorter side of the model input (default: 192 for the bundled model, else 360).
    #[arg(long)]
    pub short_side: Option<u32>,
    /// Where overlays (PNG per frame + animated GIF), the input frames and `scores.json` go.
    #[arg(long, default_value = "demo-out")]
    pub out: PathBuf,
    /// Inference backend: auto (per engine, the faster of ONNX Runtime and tract), cpu (tract), ort,
    /// tensorrt, or a per-engine mix (`text=ort,frame=ort,temporal=cpu,head=cpu`).
    #[arg(long, default_value = "auto")]
    pub backend: String,
    /// Worker threads of the CPU backend (default: every available core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// INT8 engines from this scale table (`calib/referdino-synth.scales.json` for the bundled model;
    /// `referdino calibrate` for your own): integer products (ONNX Runtime; tract with AMX, AVX-512
    /// VNNI or the Arm dot product), scored like the FP32 run.
    #[arg(long, value_name = "TABLE")]
    pub int8: Option<PathBuf>,
}

/// One prompt's part of the run, scored against the ground truth.
#[derive(Debug, Clone, Serialize)]
pub struct Segment {
    /// The prompt.
    pub prompt: String,
    /// First frame (inclusive) and end (exclusive) of the part.
    pub frames: (usize, usize),
    /// The object the prompt names (palette id of the clip's annotations).
    pub object: u8,
    /// Mean J&F of the live masks against that object's ground truth.
    pub jf: f64,
    /// Mean J (IoU) against it.
    pub j: f64,
    /// Mean J&F against the object the other prompt names (low when the masks follow the prompt).
    pub jf_other: Option<f64>,
}

/// What `OUT/scores.json` holds.
#[derive(Debug, Clone, Serialize)]
pub struct DemoScores {
    /// Clip size and length.
    pub width: usize,
    /// Clip height.
    pub height: usize,
    /// Frames processed.
    pub frames: usize,
    /// The checkpoint that ran.
    pub weights: String,
    /// The INT8 scale table its engines were made with (absent: FP32).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub int8: Option<String>,
    /// One entry per prompt.
    pub segments: Vec<Segment>,
    /// Mean per-frame latency of the live loop in milliseconds.
    pub ms_per_frame: f64,
}

/// The generated clip with its two prompts.
struct Generated {
    spec: ClipSpec,
    clip: Clip,
    first: (String, u8),
    second: (String, u8),
}

/// Draws the demo clip and picks the two prompts: the most descriptive expression of the first
/// object that has one, then of another object.
fn generate(dir: &Path) -> anyhow::Result<Generated> {
    let spec = demo_clip_spec();
    let clip = make_clip(&spec, 0)?;
    let best_of = |skip: Option<u8>| {
        clip.expressions
            .iter()
            .filter(|(_, id)| Some(*id) != skip)
            .fold(None::<&(String, u8)>, |best, e| match best {
                // The first object listed wins; within it, the longest expression.
                Some(b) if b.1 != e.1 || b.0.split(' ').count() >= e.0.split(' ').count() => {
                    Some(b)
                }
                _ => Some(e),
            })
            .cloned()
    };
    let first = best_of(None).context("demo clip has no expression")?;
    let second = best_of(Some(first.1)).context("demo clip names only one object")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for t in 0..spec.frames {
        let (rgb, _) = render(&spec, &clip, t);
        let raw: Vec<u8> = rgb.iter().flatten().copied().collect();
        let img = image::RgbImage::from_raw(spec.width as u32, spec.height as u32, raw)
            .context("demo frame size")?;
        let p = dir.join(format!("{t:05}.png"));
        img.save(&p)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(Generated {
        spec,
        clip,
        first,
        second,
    })
}

/// Collects, per frame, the pixels of objects 0 and 1 in the label mask (0/1 each), for the scores
/// at the end (it keeps every frame, as `collect_masks` does: a demo's sink, not one for long runs).
struct ObjectMasks(Arc<Mutex<Vec<[Vec<u8>; 2]>>>);

impl Sink for ObjectMasks {
    fn name(&self) -> &str {
        "demo object masks"
    }

    fn frame(&mut self, out: &FrameOutput<'_>) -> anyhow::Result<()> {
        let entry = |object: u16| {
            out.result
                .tracks
                .iter()
                .position(|t| t.object == object)
                .map(|e| e as u8 + 1)
        };
        let of = |object: u16| -> Vec<u8> {
            match entry(object) {
                Some(e) => out.mask.iter().map(|&l| u8::from(l == e)).collect(),
                None => vec![0; out.mask.len()],
            }
        };
        let masks = [of(0), of(1)];
        self.0
            .lock()
            .map_err(|_| anyhow!("mask sink poisoned"))?
            .push(masks);
        Ok(())
    }
}

/// Mean (J&F, J) of `masks[range]` against object `id` of the generated clip.
fn score(
    g: &Generated,
    masks: &[Vec<u8>],
    range: (usize, usize),
    id: u8,
) -> anyhow::Result<(f64, f64)> {
    let mut scorer = FrameScorer::new(g.spec.width, g.spec.height)?;
    let (mut jf, mut j, mut n) = (0.0, 0.0, 0usize);
    for (t, mask) in masks.iter().enumerate().take(range.1).skip(range.0) {
        let (_, labels) = render(&g.spec, &g.clip, t);
        let gt: Vec<u8> = labels.iter().map(|&l| u8::from(l == id)).collect();
        let s = scorer.score(mask, &gt)?;
        jf += (s.j + s.f) / 2.0;
        j += s.j;
        n += 1;
    }
    if n == 0 {
        bail!("no frames in {range:?} to score");
    }
    Ok((jf / n as f64, j / n as f64))
}

/// Refuses flag values the run would refuse, before the clip is generated into `--out`: prompts
/// the command channel would refuse (`--then` is sent as a `prompt` command), `--short-side` and
/// `--threads` outside their ranges ([`crate::limits`]), and combinations that do not go together.
pub fn check_flags(a: &DemoArgs) -> anyhow::Result<()> {
    use crate::limits::{self as l, check_range};
    use crate::pipeline::live::config::check_cli_prompt;
    if let Some(p) = &a.prompt {
        check_cli_prompt("--prompt", p)?;
    }
    if let Some(p) = &a.then {
        check_cli_prompt("--then", p)?;
    }
    if let Some(s) = a.short_side {
        check_range("--short-side", s, l::MIN_SHORT_SIDE, l::MAX_SHORT_SIDE)?;
    }
    check_range("--threads", a.threads.unwrap_or(0), 0, l::MAX_THREADS)?;
    let frames = a.frames.is_some();
    if a.together && (frames || a.switch_at.is_some()) {
        bail!("--together runs on the generated clip, without --frames or --switch-at");
    }
    if frames && a.prompt.is_none() {
        bail!("--frames needs --prompt");
    }
    if frames && a.then.is_some() && a.switch_at.is_none() {
        bail!("--then with --frames needs --switch-at (the frame at which to send it)");
    }
    Ok(())
}

/// Runs the demo and returns its scores (empty segments with `--frames`).
pub fn run_demo(a: &DemoArgs) -> anyhow::Result<DemoScores> {
    check_flags(a)?;
    let generated = match &a.frames {
        Some(_) => None,
        None => Some(generate(&a.out.join("input"))?),
    };
    let source = match (&a.frames, &generated) {
        (Some(d), _) => d.clone(),
        _ => a.out.join("input"),
    };
    let first = match (&a.prompt, &generated) {
        (Some(p), _) => p.clone(),
        (None, Some(g)) => g.first.0.clone(),
        (None, None) => bail!("--frames needs --prompt"),
    };
    let then = match (&a.then, &generated) {
        (Some(p), _) => Some(p.clone()),
        (None, Some(g)) => Some(g.second.0.clone()),
        (None, None) => None,
    };
    let frames_in_clip = generated.as_ref().map(|g| g.spec.frames);
    let switch_at = match a.together {
        true => u64::MAX,
        false => a
            .switch_at
            .or(frames_in_clip.map(|n| n as u64 / 2))
            .unwrap_or(u64::MAX),
    };
    let tok = Tokenizer::bundled()?;
    for p in std::iter::once(&first).chain(then.as_ref()) {
        let cap = tok.encode_prompt(p, 256)?;
        println!("prompt     {p:?} → {} tokens", cap.len);
    }
    let weights = match &a.model.weights {
        Some(w) => w.clone(),
        None => {
            crate::pipeline::live::engines::bundled_model("referdino-synth")?.join("checkpoint.pth")
        }
    };
    println!("checkpoint {}", weights.display());
    if let Some(t) = &a.int8 {
        println!("int8       Q/DQ scales {}", t.display());
    }
    let mut args = RunArgs::new(&source.to_string_lossy());
    args.prompt = vec![first.clone()];
    if a.together {
        args.prompt.extend(then.clone());
    }
    args.model.weights = Some(weights.clone());
    args.model.config = a.model.config.clone();
    args.engine.backend = a.backend.clone();
    args.engine.short_side = a.short_side.unwrap_or(if a.model.weights.is_none() {
        DEMO_SHORT_SIDE
    } else {
        360
    });
    args.save_dir = Some(a.out.clone());
    args.no_stdin = true;
    args.fps = 8;
    args.engine.threads = a.threads;
    args.engine.int8 = a.int8.clone();
    let mut config = args.to_config();
    config.collect_masks = true;
    let mut rt = Runtime::new(config)?;
    // Per frame, each object's pixels of the label mask (objects 0 and 1 with --together).
    let per_object = Arc::new(Mutex::new(Vec::new()));
    if a.together {
        rt.add_sink(Box::new(ObjectMasks(per_object.clone())));
    }
    let mut switched = then.is_none() || a.together;
    loop {
        if !switched && rt.frames_processed() >= switch_at {
            let prompt = then.clone().unwrap_or_default();
            let reply = rt.command(&Request {
                id: None,
                stream: None,
                command: Command::Prompt { prompt },
            });
            println!(
                "frame {switch_at:<4} prompt command → {}",
                reply.to_line().trim()
            );
            switched = true;
        }
        if rt.step() == crate::pipeline::live::Step::Ended {
            break;
        }
    }
    let s = rt.finish()?;
    let ms = s.times.get(crate::pipeline::timing::Stage::Total).mean_ms();
    let (w, h) = (
        generated.as_ref().map_or(0, |g| g.spec.width),
        generated.as_ref().map_or(0, |g| g.spec.height),
    );
    println!(
        "clip       {} frames{}; {ms:.1} ms/frame (streaming, causal)",
        s.frames_processed,
        if w > 0 {
            format!(" of {w}×{h}")
        } else {
            String::new()
        }
    );
    let mut segments = Vec::new();
    if let (Some(g), true) = (&generated, a.together) {
        let frames = per_object
            .lock()
            .map_err(|_| anyhow!("mask sink poisoned"))?;
        let n = frames.len();
        for (k, ((prompt, id), other)) in [(&g.first, g.second.1), (&g.second, g.first.1)]
            .into_iter()
            .enumerate()
        {
            let masks: Vec<Vec<u8>> = frames.iter().map(|f: &[Vec<u8>; 2]| f[k].clone()).collect();
            let (jf, j) = score(g, &masks, (0, n), *id)?;
            let (jf_other, _) = score(g, &masks, (0, n), other)?;
            println!(
                "object {k} {prompt:?}: J&F {jf:.3} (J {j:.3}) on its object, {jf_other:.3} on the other (frames 0-{})",
                n.saturating_sub(1)
            );
            segments.push(Segment {
                prompt: prompt.clone(),
                frames: (0, n),
                object: *id,
                jf,
                j,
                jf_other: Some(jf_other),
            });
        }
    } else if let Some(g) = &generated {
        let n = s.masks.len();
        let cut = (switch_at as usize).min(n);
        let parts = [
            (&g.first, g.second.1, (0, cut)),
            (&g.second, g.first.1, (cut, n)),
        ];
        for ((prompt, id), other, range) in parts {
            if range.0 >= range.1 {
                continue;
            }
            let (jf, j) = score(g, &s.masks, range, *id)?;
            let (jf_other, _) = score(g, &s.masks, range, other)?;
            println!(
                "frames {:>2}-{:<2} {prompt:?}: J&F {jf:.3} (J {j:.3}) on its object, {jf_other:.3} on the other",
                range.0,
                range.1 - 1
            );
            segments.push(Segment {
                prompt: prompt.clone(),
                frames: range,
                object: *id,
                jf,
                j,
                jf_other: Some(jf_other),
            });
        }
    }
    if let Some(gif) = &s.gif {
        println!("overlays   {} (+ one PNG per frame)", gif.display());
    }
    eprint!("{}", s.text());
    let scores = DemoScores {
        width: w,
        height: h,
        frames: s.masks.len(),
        weights: weights.display().to_string(),
        int8: a.int8.as_ref().map(|p| p.display().to_string()),
        segments,
        ms_per_frame: ms,
    };
    let path = a.out.join("scores.json");
    std::fs::write(&path, serde_json::to_string_pretty(&scores)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(scores)
}

/// CLI entry.
pub fn run(a: DemoArgs) -> anyhow::Result<()> {
    let t0 = Instant::now();
    run_demo(&a)?;
    println!("done in {:.1} s", t0.elapsed().as_secs_f64());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_prompts_and_ranges_are_checked_before_anything_is_written() {
        #[derive(clap::Parser)]
        struct Only {
            #[command(flatten)]
            args: DemoArgs,
        }
        use clap::Parser;
        let out = tempfile::tempdir().unwrap();
        let out = out.path().join("demo-out");
        let parse = |extra: &[&str]| {
            let base = ["demo", "--out", out.to_str().unwrap()];
            Only::parse_from(base.iter().chain(extra)).args
        };
        assert!(check_flags(&parse(&["--prompt", "the dog", "--then", "the cat"])).is_ok());
        // Combinations the run refuses are refused before anything is written to --out.
        for (args, want) in [
            (&["--together", "--switch-at", "3"][..], "--together"),
            (
                &["--together", "--frames", "x", "--prompt", "p"][..],
                "--together",
            ),
            (&["--frames", "x"][..], "--frames needs --prompt"),
            (
                &["--frames", "x", "--prompt", "p", "--then", "q"][..],
                "--switch-at",
            ),
        ] {
            let e = check_flags(&parse(args)).unwrap_err().to_string();
            assert!(e.contains(want), "{args:?}: {e}");
        }
        for (extra, want) in [
            (
                &["--then", "a\u{1b}[2J"][..],
                "--then: prompt contains control characters",
            ),
            (
                &["--prompt", "..."][..],
                "--prompt: prompt \"...\" names nothing",
            ),
            (
                &["--short-side", "0"][..],
                "--short-side 0: must be between 16 and 2160",
            ),
            (
                &["--threads", "100000"][..],
                "--threads 100000: must be between 0 and 256",
            ),
        ] {
            let e = run_demo(&parse(extra)).unwrap_err().to_string();
            assert!(e.starts_with(want), "{extra:?}: {e}");
        }
        assert!(!out.exists());
    }

    /// The scoring the demo prints: the ground truth of the first prompt's object scores 1 on it and
    /// (the objects being distinct) nearly 0 on the other; the two prompts name different objects.
    #[test]
    fn demo_clip_prompts_and_scoring() {
        let dir = tempfile::tempdir().unwrap();
        let g = generate(dir.path()).unwrap();
        assert!(g.clip.objects.len() >= 3, "{:?}", g.clip.objects);
        assert_ne!(g.first.1, g.second.1);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            g.spec.frames
        );
        let gt_of = |id: u8| -> Vec<Vec<u8>> {
            (0..g.spec.frames)
                .map(|t| {
                    let (_, labels) = render(&g.spec, &g.clip, t);
                    labels.iter().map(|&l| u8::from(l == id)).collect()
                })
                .collect()
        };
        let masks = gt_of(g.first.1);
        let (jf, j) = score(&g, &masks, (0, 16), g.first.1).unwrap();
        assert!(
            (jf - 1.0).abs() < 1e-9 && (j - 1.0).abs() < 1e-9,
            "{jf} {j}"
        );
        let (other, _) = score(&g, &masks, (0, 16), g.second.1).unwrap();
        assert!(other < 0.2, "{other}");
        // A mask shifted by a few pixels scores in between.
        let shifted: Vec<Vec<u8>> = masks
            .iter()
            .map(|m| {
                let mut s = vec![0u8; m.len()];
                s[6..].copy_from_slice(&m[..m.len() - 6]);
                s
            })
            .collect();
        let (mid, _) = score(&g, &shifted, (0, 16), g.first.1).unwrap();
        assert!(mid > other && mid < 0.95, "{mid}");
        assert!(score(&g, &masks, (4, 4), g.first.1).is_err());
    }
}
