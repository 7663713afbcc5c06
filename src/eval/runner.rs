//! Running a predictor over a benchmark: predictions in the servers' layout, scores, report.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};

use super::dataset::{Dataset, DatasetKind, Expression, Video};
use super::metrics::score_sequence;
use super::report::{Report, SequenceReport};
use crate::output::png::{write_binary_png, write_palette_png};
use crate::{Error, Result};

/// Anything that segments the object a prompt refers to across a whole video.
pub trait VideoPredictor {
    /// frames: RGB8 frames of one video (each `width*height*3`), prompt: the referring expression.
    /// Returns one mask per frame per object (multi-object mode may return several), `width*height` bytes 0/1.
    ///
    /// Indexing is `result[frame][object]`; a frame may have no object (empty list). The expression's
    /// predicted region is the union of the frame's objects.
    fn predict(
        &mut self,
        frames: &[image::RgbImage],
        prompt: &str,
    ) -> crate::Result<Vec<Vec<Vec<u8>>>>;
}

/// Options of [`run_dataset`].
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Output folder: `Annotations/` (server layout), `report.json`, `report.csv`.
    pub out: PathBuf,
    /// Stop after this many expressions.
    pub limit: Option<usize>,
    /// Show a progress bar on stderr.
    pub progress: bool,
}

/// What [`run_dataset`] produced.
#[derive(Debug, Clone)]
pub struct RunOutput {
    /// Expressions run.
    pub expressions: usize,
    /// Folder with the predicted masks in the server layout.
    pub predictions: PathBuf,
    /// Scores, when the split has ground truth.
    pub report: Option<Report>,
    /// Ref-DAVIS17 only: the official protocol's figures, when `ROOT/DAVIS` holds the unsupervised
    /// annotations and every expression was run.
    pub official: Option<super::davis_protocol::RefDavisReport>,
}

/// Checks a prediction's shape and merges each frame's objects into one 0/1 mask.
pub fn merge_objects(
    pred: &[Vec<Vec<u8>>],
    frames: usize,
    width: usize,
    height: usize,
) -> Result<Vec<Vec<u8>>> {
    if pred.len() != frames {
        return Err(Error::Eval(format!(
            "predictor returned masks for {} frames, the video has {frames}",
            pred.len()
        )));
    }
    pred.iter()
        .enumerate()
        .map(|(t, objs)| {
            let mut m = vec![0u8; width * height];
            for (k, o) in objs.iter().enumerate() {
                if o.len() != width * height {
                    return Err(Error::Eval(format!(
                        "predictor mask for frame {t} object {k} has {} bytes, expected {width}x{height}",
                        o.len()
                    )));
                }
                for (a, &b) in m.iter_mut().zip(o) {
                    *a |= (b != 0) as u8;
                }
            }
            Ok(m)
        })
        .collect()
}

/// Writes one expression's masks as `DIR/VIDEO/EXP_ID/FRAME.png` (0 / 255), the Ref-YouTube-VOS and
/// MeViS submission layout.
pub fn write_expression_masks(
    dir: &Path,
    video: &Video,
    expr: &Expression,
    masks: &[Vec<u8>],
    width: usize,
    height: usize,
) -> Result<()> {
    use rayon::prelude::*;
    video
        .frames
        .par_iter()
        .zip(masks.par_iter())
        .try_for_each(|(f, m)| {
            write_binary_png(
                &dir.join(&video.name)
                    .join(&expr.id)
                    .join(format!("{f}.png")),
                width,
                height,
                m,
            )
        })
}

/// Writes a Ref-DAVIS17 video in the official per-annotator layout
/// `DIR/anno_K/VIDEO/NNNNN.png`: expression `i` is object `i / 4` of annotator `i % 4`, and each
/// frame's palette index is the first object (1-based) whose mask covers the pixel.
pub fn write_davis_annotators(
    dir: &Path,
    video: &Video,
    masks: &[Vec<Vec<u8>>],
    width: usize,
    height: usize,
) -> Result<()> {
    let n = masks.len();
    if !n.is_multiple_of(4) {
        return Err(Error::Eval(format!(
            "video {}: {n} expressions, not 4 annotators x objects",
            video.name
        )));
    }
    for anno in 0..4 {
        for (t, _) in video.frames.iter().enumerate() {
            let mut labels = vec![0u8; width * height];
            for obj in (0..n / 4).rev() {
                let m = &masks[obj * 4 + anno][t];
                let id = (obj + 1) as u8;
                for (l, &v) in labels.iter_mut().zip(m) {
                    if v != 0 {
                        *l = id;
                    }
                }
            }
            let p = dir
                .join(format!("anno_{anno}"))
                .join(&video.name)
                .join(format!("{t:05}.png"));
            write_palette_png(&p, width, height, &labels)?;
        }
    }
    Ok(())
}

fn progress_bar(total: usize, show: bool) -> indicatif::ProgressBar {
    if !show {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(total as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{elapsed_precise} [{bar:30}] {pos}/{len} expressions  {msg}",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb
}

/// Runs `predictor` over every expression of `ds` (up to `opts.limit`), writes the predicted masks in
/// the layout the evaluation servers accept under `opts.out/Annotations`, and, when the split has
/// ground truth, scores each expression and writes `report.json` / `report.csv` to `opts.out`.
pub fn run_dataset(
    ds: &Dataset,
    predictor: &mut dyn VideoPredictor,
    opts: &RunOptions,
) -> Result<RunOutput> {
    let total = opts
        .limit
        .map_or(ds.num_expressions(), |l| l.min(ds.num_expressions()));
    let pred_dir = opts.out.join("Annotations");
    std::fs::create_dir_all(&pred_dir).map_err(|e| Error::io(&pred_dir, e))?;
    let pb = progress_bar(total, opts.progress);
    let mut done = 0usize;
    let mut scores: BTreeMap<String, SequenceReport> = BTreeMap::new();
    let score = ds.has_ground_truth();
    'videos: for video in &ds.videos {
        if done >= total {
            break;
        }
        pb.set_message(video.name.clone());
        let frames = ds.load_frames(video)?;
        let (w, h) = frames[0].dimensions();
        let (w, h) = (w as usize, h as usize);
        let mut video_masks: Vec<Vec<Vec<u8>>> = Vec::with_capacity(video.expressions.len());
        for expr in &video.expressions {
            if done >= total {
                if ds.kind == DatasetKind::RefDavis17 {
                    write_partial_davis(&pred_dir, video, &video_masks, w, h)?;
                }
                break 'videos;
            }
            let raw = predictor.predict(&frames, &expr.text).map_err(|e| {
                Error::Eval(format!(
                    "video {} expression {} ({:?}): {e}",
                    video.name, expr.id, expr.text
                ))
            })?;
            let masks = merge_objects(&raw, frames.len(), w, h).map_err(|e| {
                Error::Eval(format!("video {} expression {}: {e}", video.name, expr.id))
            })?;
            if score {
                if let Some(gt) = ds.ground_truth(video, expr, w, h)? {
                    let frames = score_sequence(&masks, &gt, w, h)?;
                    scores.insert(
                        format!("{}/{}", video.name, expr.id),
                        SequenceReport::new(frames),
                    );
                }
            }
            if ds.kind != DatasetKind::RefDavis17 {
                write_expression_masks(&pred_dir, video, expr, &masks, w, h)?;
            }
            video_masks.push(masks);
            done += 1;
            pb.inc(1);
        }
        if ds.kind == DatasetKind::RefDavis17 {
            write_partial_davis(&pred_dir, video, &video_masks, w, h)?;
        }
    }
    pb.finish_and_clear();
    let report = if score {
        let r = Report::new(scores).with_videos();
        r.write(&opts.out)?;
        log::info!("{}", r.headline());
        Some(r)
    } else {
        log::info!(
            "{} has no ground truth for split {}: predictions written to {} for the evaluation server",
            ds.kind.name(),
            ds.split,
            pred_dir.display()
        );
        None
    };
    let davis = ds.root.join("DAVIS");
    let official = if ds.kind == DatasetKind::RefDavis17
        && done == ds.num_expressions()
        && davis.join("Annotations_unsupervised").is_dir()
    {
        let r = super::davis_protocol::evaluate_ref_davis(&davis, &pred_dir, "val")?;
        let p = opts.out.join("davis_report.json");
        let json = serde_json::to_string_pretty(&r).map_err(|e| Error::Eval(e.to_string()))?;
        std::fs::write(&p, json).map_err(|e| Error::io(&p, e))?;
        log::info!(
            "official Ref-DAVIS17 protocol (4 annotators): J&F {:.4}  J {:.4}  F {:.4}",
            r.average.JF_mean,
            r.average.J_mean,
            r.average.F_mean
        );
        Some(r)
    } else {
        None
    };
    Ok(RunOutput {
        expressions: done,
        predictions: pred_dir,
        report,
        official,
    })
}

/// Ref-DAVIS17 videos go in the per-annotator layout when complete; a video cut short by `--limit`
/// or with an unusual expression count falls back to per-expression folders.
fn write_partial_davis(
    dir: &Path,
    video: &Video,
    masks: &[Vec<Vec<u8>>],
    w: usize,
    h: usize,
) -> Result<()> {
    if masks.len() == video.expressions.len() && masks.len().is_multiple_of(4) && !masks.is_empty()
    {
        write_davis_annotators(dir, video, masks, w, h)
    } else {
        log::warn!(
            "video {}: {} of {} expressions, writing per-expression folders instead of anno_K",
            video.name,
            masks.len(),
            video.expressions.len()
        );
        for (e, m) in video.expressions.iter().zip(masks) {
            write_expression_masks(dir, video, e, m, w, h)?;
        }
        Ok(())
    }
}

/// A predictor that replays prepared answers in order, checking each prompt: for tests and for
/// scoring masks produced elsewhere through the same pipeline.
#[derive(Debug, Default)]
pub struct ScriptedPredictor {
    answers: VecDeque<(String, Vec<Vec<Vec<u8>>>)>,
}

impl ScriptedPredictor {
    /// Empty script.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues the answer for the next call, which must carry `prompt`.
    pub fn push(&mut self, prompt: &str, masks: Vec<Vec<Vec<u8>>>) {
        self.answers.push_back((prompt.to_string(), masks));
    }

    /// A script answering every expression of `ds` (in run order) with its ground truth passed
    /// through `transform` (frame size, mask) -> mask.
    pub fn from_ground_truth(
        ds: &Dataset,
        mut transform: impl FnMut(usize, usize, &[u8]) -> Vec<u8>,
    ) -> Result<Self> {
        let mut s = Self::new();
        for video in &ds.videos {
            let first = ds.frame_path(video, &video.frames[0]);
            let (w, h) = image::image_dimensions(&first)
                .map_err(|e| Error::Eval(format!("{}: {e}", first.display())))?;
            let (w, h) = (w as usize, h as usize);
            for expr in &video.expressions {
                let gt = ds.ground_truth(video, expr, w, h)?.ok_or_else(|| {
                    Error::Eval(format!("{} split has no ground truth", ds.split))
                })?;
                s.push(
                    &expr.text,
                    gt.iter().map(|m| vec![transform(w, h, m)]).collect(),
                );
            }
        }
        Ok(s)
    }

    /// Answers not yet consumed.
    pub fn remaining(&self) -> usize {
        self.answers.len()
    }
}

impl VideoPredictor for ScriptedPredictor {
    fn predict(
        &mut self,
        _frames: &[image::RgbImage],
        prompt: &str,
    ) -> crate::Result<Vec<Vec<Vec<u8>>>> {
        let (p, m) = self
            .answers
            .pop_front()
            .ok_or_else(|| Error::Eval("scripted predictor has no answer left".into()))?;
        if p != prompt {
            return Err(Error::Eval(format!(
                "scripted predictor expected prompt {p:?}, got {prompt:?}"
            )));
        }
        Ok(m)
    }
}

/// Shifts a mask by `(dx, dy)` pixels, filling uncovered pixels with background.
pub fn shift_mask(mask: &[u8], width: usize, height: usize, dx: isize, dy: isize) -> Vec<u8> {
    let mut out = vec![0u8; width * height];
    for y in 0..height {
        let sy = y as isize - dy;
        if sy < 0 || sy >= height as isize {
            continue;
        }
        for x in 0..width {
            let sx = x as isize - dx;
            if sx >= 0 && sx < width as isize {
                out[y * width + x] = mask[sy as usize * width + sx as usize];
            }
        }
    }
    out
}

/// A [`ScriptedPredictor`] answering every expression of `ds` with its ground truth shifted by
/// `(dx, dy)` pixels (`(0, 0)`: the ground truth itself).
pub fn shift_predictor(ds: &Dataset, dx: isize, dy: isize) -> Result<ScriptedPredictor> {
    ScriptedPredictor::from_ground_truth(ds, |w, h, m| shift_mask(m, w, h, dx, dy))
}
