//! `referdino synth`: seeded synthetic referring-video clips (shapes moving and occluding over
//! textured backgrounds, ground-truth masks, unambiguous expressions) in the Ref-YouTube-VOS layout,
//! for training a small model (`tools/train/`) and scoring it with `referdino eval`. The grammar and
//! the held-out pairs are documented in `src/eval/synth/clips.rs`.

use std::path::PathBuf;

use anyhow::{bail, Context};

use crate::eval::synth::clips::{write_clips, ClipSpec, Holdout};

/// Arguments of `referdino synth`.
#[derive(Debug, Clone, clap::Args)]
pub struct SynthArgs {
    /// Dataset root (created): ROOT/SPLIT/{JPEGImages,Annotations}, ROOT/meta_expressions/SPLIT.
    #[arg(long)]
    pub out: PathBuf,
    /// Number of clips.
    #[arg(long, default_value_t = 8)]
    pub clips: usize,
    /// Seed (the same arguments write the same files).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Frames per clip.
    #[arg(long, default_value_t = 8)]
    pub frames: usize,
    /// Frame size WxH.
    #[arg(long, default_value = "160x96")]
    pub size: String,
    /// Split folder name (`referdino eval --split` reads it).
    #[arg(long, default_value = "train")]
    pub split: String,
    /// Held-out colour × shape pairs: `none` (all pairs), `exclude` (training sets: never), `only`
    /// (held-out sets: every target has one, named in full).
    #[arg(long, value_enum, default_value = "none")]
    pub holdout: Holdout,
    /// Fewest objects per clip (2..=4).
    #[arg(long, default_value_t = 2)]
    pub min_objects: usize,
    /// Most objects per clip (2..=4).
    #[arg(long, default_value_t = 4)]
    pub max_objects: usize,
    /// Most expressions per object.
    #[arg(long, default_value_t = 2)]
    pub expressions_per_object: usize,
}

/// Parses `WxH`.
pub fn parse_size(s: &str) -> anyhow::Result<(usize, usize)> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .with_context(|| format!("--size {s:?}: expected WxH, e.g. 160x96"))?;
    let w: usize = w
        .trim()
        .parse()
        .with_context(|| format!("--size {s:?}: width"))?;
    let h: usize = h
        .trim()
        .parse()
        .with_context(|| format!("--size {s:?}: height"))?;
    if w == 0 || h == 0 {
        bail!("--size {s:?}: width and height must be positive");
    }
    let max = crate::limits::MAX_INPUT_PIXELS;
    if w as u64 * h as u64 > max {
        bail!(
            "--size {s:?}: {} pixels, more than the limit of {max} (3840x2160)",
            w as u64 * h as u64
        );
    }
    Ok((w, h))
}

/// Runs the command.
pub fn run(a: SynthArgs) -> anyhow::Result<()> {
    let (width, height) = parse_size(&a.size)?;
    let spec = ClipSpec {
        clips: a.clips,
        frames: a.frames,
        width,
        height,
        seed: a.seed,
        min_objects: a.min_objects,
        max_objects: a.max_objects,
        expressions_per_object: a.expressions_per_object,
        holdout: a.holdout,
        split: a.split.clone(),
    };
    let t0 = std::time::Instant::now();
    let w = write_clips(&a.out, &spec)?;
    println!(
        "{} clips ({} objects, {} expressions) of {} frames at {width}x{height}, split {}, holdout {:?}, in {:.1} s: {}",
        w.clips,
        w.objects,
        w.expressions,
        a.frames,
        a.split,
        a.holdout,
        t0.elapsed().as_secs_f64(),
        a.out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("160x96").unwrap(), (160, 96));
        assert_eq!(parse_size("320X180").unwrap(), (320, 180));
        assert!(parse_size("160").is_err());
        assert!(parse_size("0x5").is_err());
        assert!(parse_size("3840x2160").is_ok());
        assert!(parse_size("200000x200000").is_err());
    }
}
