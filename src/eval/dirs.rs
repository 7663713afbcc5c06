//! Scoring folders of PNG masks against folders of ground truth (`referdino eval --pred --gt`).
//!
//! A sequence is any folder under the ground-truth root that directly holds `.png` files; its key is
//! the path relative to the root (`bike` or `bike/0`), so both the flat one-folder-per-sequence
//! layout and the nested `VIDEO/EXPRESSION/` layout work. Frames are matched by file name; value 0
//! is background and anything else the object.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::metrics::FrameScorer;
use super::report::{Report, SequenceReport};
use crate::output::png::read_label_png;
use crate::{Error, Result};

/// Frame-name order: numeric when both stems are numbers, otherwise lexical.
fn frame_order(a: &str, b: &str) -> Ordering {
    let stem = |s: &str| s.trim_end_matches(".png").to_string();
    match (stem(a).parse::<u64>(), stem(b).parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y).then_with(|| a.cmp(b)),
        _ => a.cmp(b),
    }
}

/// Sequences under `root`: relative key -> sorted PNG file names.
pub fn find_sequences(root: &Path) -> Result<BTreeMap<String, Vec<String>>> {
    if !root.is_dir() {
        return Err(Error::Eval(format!(
            "{} is not a directory",
            root.display()
        )));
    }
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let dir = root.join(&rel);
        let mut pngs = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
            let entry = entry.map_err(|e| Error::io(&dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let ft = entry.file_type().map_err(|e| Error::io(entry.path(), e))?;
            if ft.is_dir() {
                stack.push(rel.join(&name));
            } else if name.to_ascii_lowercase().ends_with(".png") {
                pngs.push(name);
            }
        }
        if !pngs.is_empty() {
            pngs.sort_by(|a, b| frame_order(a, b));
            let key = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            out.insert(key, pngs);
        }
    }
    Ok(out)
}

fn read_binary(path: &Path) -> Result<(usize, usize, Vec<u8>)> {
    let lm = read_label_png(path)?;
    let m = lm.foreground();
    Ok((lm.width, lm.height, m))
}

/// Scores one sequence folder pair, frames matched by name and scored in parallel.
fn score_one(pred_dir: &Path, gt_dir: &Path, names: &[String]) -> Result<SequenceReport> {
    for n in names {
        let p = pred_dir.join(n);
        if !p.is_file() {
            return Err(Error::Eval(format!(
                "prediction {} is missing (ground truth has {})",
                p.display(),
                gt_dir.join(n).display()
            )));
        }
    }
    let frames = names
        .par_iter()
        .map_init(
            || None::<FrameScorer>,
            |scorer, n| {
                let (gw, gh, g) = read_binary(&gt_dir.join(n))?;
                let (pw, ph, p) = read_binary(&pred_dir.join(n))?;
                if (gw, gh) != (pw, ph) {
                    return Err(Error::Eval(format!(
                        "{} is {pw}x{ph} but {} is {gw}x{gh}",
                        pred_dir.join(n).display(),
                        gt_dir.join(n).display()
                    )));
                }
                let s = match scorer {
                    Some(s) if s.width() == gw && s.height() == gh => s,
                    _ => scorer.insert(FrameScorer::new(gw, gh)?),
                };
                s.score(&p, &g)
            },
        )
        .collect::<Result<Vec<_>>>()?;
    Ok(SequenceReport::new(frames))
}

/// Scores every sequence of `gt` against the folder of the same relative path under `pred`.
///
/// Errors name the missing sequence or frame, or the mismatched sizes. Extra predicted sequences
/// are ignored with a warning.
pub fn score_dirs(pred: &Path, gt: &Path) -> Result<Report> {
    let gt_seqs = find_sequences(gt)?;
    if gt_seqs.is_empty() {
        return Err(Error::Eval(format!(
            "no sequence folders with PNG masks under {}",
            gt.display()
        )));
    }
    if !pred.is_dir() {
        return Err(Error::Eval(format!(
            "{} is not a directory",
            pred.display()
        )));
    }
    let pred_seqs = find_sequences(pred)?;
    for k in pred_seqs.keys().filter(|k| !gt_seqs.contains_key(*k)) {
        log::warn!("prediction sequence {k} has no ground truth; ignored");
    }
    let mut missing: Vec<&String> = gt_seqs
        .keys()
        .filter(|k| !pred_seqs.contains_key(*k))
        .collect();
    if !missing.is_empty() {
        missing.truncate(5);
        return Err(Error::Eval(format!(
            "{} ground-truth sequences have no prediction folder under {} (first: {})",
            gt_seqs
                .keys()
                .filter(|k| !pred_seqs.contains_key(*k))
                .count(),
            pred.display(),
            missing
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let seqs = gt_seqs
        .par_iter()
        .map(|(k, names)| Ok((k.clone(), score_one(&pred.join(k), &gt.join(k), names)?)))
        .collect::<Result<BTreeMap<_, _>>>()?;
    Ok(Report::new(seqs))
}
