//! The official Ref-DAVIS17 protocol: the DAVIS 2017 *unsupervised* evaluation run once per
//! annotator on `anno_K/VIDEO/NNNNN.png` label maps, and the four annotators' tables averaged.
//!
//! Per sequence (as the toolkit does): ground truth from
//! `DAVIS/Annotations_unsupervised/480p/SEQ/*.png` (label 255 is void and is ignored by J and F;
//! the object count is the largest label in the first frame); predictions from
//! `RESULTS/SEQ/<same frame name>.png` (object count = largest label over all frames, at most 20,
//! padded with empty objects up to the ground-truth count). Every predicted object is scored against
//! every ground-truth object, the pairing maximising mean (J + F) / 2 is chosen by optimal
//! assignment, and each ground-truth object contributes its matched per-frame J and F statistics.
//! The global table averages those over all objects of all sequences.

use std::collections::BTreeMap;
use std::path::Path;

use rayon::prelude::*;

use super::assign::max_assignment;
use super::metrics::FrameScorer;
use super::report::{SequenceReport, Summary};
use crate::output::png::read_label_png;
use crate::{Error, Result};

/// Largest number of predicted objects the toolkit accepts per sequence.
pub const MAX_PROPOSALS: usize = 20;

/// Result of one unsupervised evaluation (one annotator).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProtocolTable {
    /// Per ground-truth object, keyed `SEQ_N` (N from 1), with its matched per-frame scores.
    pub objects: BTreeMap<String, SequenceReport>,
    /// Averages over the objects.
    pub global: Summary,
}

/// The Ref-DAVIS17 result: one table per annotator and their average.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RefDavisReport {
    /// Tables for `anno_0` .. `anno_3`.
    pub annotators: Vec<ProtocolTable>,
    /// Mean of the annotators' global figures (what papers report).
    pub average: Summary,
}

fn err(m: impl Into<String>) -> Error {
    Error::Eval(m.into())
}

fn sorted_pngs(dir: &Path) -> Result<Vec<String>> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".png"))
        .collect();
    v.sort();
    Ok(v)
}

/// Scores one sequence; returns the matched per-frame scores of each ground-truth object.
fn evaluate_sequence(gt_dir: &Path, res_dir: &Path, seq: &str) -> Result<Vec<SequenceReport>> {
    let names = sorted_pngs(gt_dir)?;
    if names.is_empty() {
        return Err(err(format!("{}: no annotation PNGs", gt_dir.display())));
    }
    let read_pair = |n: &String| -> Result<(Vec<u8>, Vec<u8>, usize, usize)> {
        let g = read_label_png(&gt_dir.join(n))?;
        let rp = res_dir.join(n);
        if !rp.is_file() {
            return Err(err(format!(
                "sequence {seq}: result frame {} not found (the frames have to be indexed PNGs named like the annotations)",
                rp.display()
            )));
        }
        let r = read_label_png(&rp)?;
        if (r.width, r.height) != (g.width, g.height) {
            return Err(err(format!(
                "{} is {}x{} but the annotation is {}x{}",
                rp.display(),
                r.width,
                r.height,
                g.width,
                g.height
            )));
        }
        Ok((g.data, r.data, g.width, g.height))
    };
    let frames: Vec<(Vec<u8>, Vec<u8>, usize, usize)> =
        names.par_iter().map(read_pair).collect::<Result<_>>()?;
    let (w, h) = (frames[0].2, frames[0].3);
    if let Some(f) = frames.iter().find(|f| (f.2, f.3) != (w, h)) {
        return Err(err(format!(
            "sequence {seq}: annotations change size ({}x{} vs {w}x{h})",
            f.2, f.3
        )));
    }
    let n_gt = frames[0]
        .0
        .iter()
        .filter(|&&v| v != 255)
        .max()
        .copied()
        .unwrap_or(0) as usize;
    let n_res = frames
        .iter()
        .map(|f| f.1.iter().max().copied().unwrap_or(0) as usize)
        .max()
        .unwrap_or(0);
    if n_res > MAX_PROPOSALS {
        return Err(err(format!(
            "sequence {seq}: results hold object index {n_res}, more than the {MAX_PROPOSALS} proposals allowed"
        )));
    }
    if n_gt == 0 {
        return Ok(vec![]);
    }
    let n_rows = n_res.max(n_gt);
    // scores[t][r * n_gt + g]
    let proto = FrameScorer::new(w, h)?;
    let scores: Vec<Vec<(f64, f64)>> = frames
        .par_iter()
        .map_init(
            || {
                (
                    proto.clone(),
                    vec![0u8; w * h],
                    vec![0u8; w * h],
                    vec![0u8; w * h],
                )
            },
            |(sc, void, gm, rm), (g, r, _, _)| {
                for (v, &x) in void.iter_mut().zip(g) {
                    *v = (x == 255) as u8;
                }
                let mut out = Vec::with_capacity(n_rows * n_gt);
                for ri in 1..=n_rows {
                    for (m, &x) in rm.iter_mut().zip(r) {
                        *m = (ri <= n_res && x as usize == ri) as u8;
                    }
                    for gi in 1..=n_gt {
                        for (m, &x) in gm.iter_mut().zip(g) {
                            *m = (x as usize == gi) as u8;
                        }
                        let s = sc.score_with_void(rm, gm, void)?;
                        out.push((s.j, s.f));
                    }
                }
                Ok(out)
            },
        )
        .collect::<Result<_>>()?;
    let nf = frames.len() as f64;
    let mean_jf: Vec<f64> = (0..n_rows * n_gt)
        .map(|k| {
            let (j, f) = scores
                .iter()
                .fold((0.0, 0.0), |(a, b), s| (a + s[k].0, b + s[k].1));
            (j / nf + f / nf) / 2.0
        })
        .collect();
    let pairs = max_assignment(&mean_jf, n_rows, n_gt);
    Ok(pairs
        .into_iter()
        .map(|(r, g)| {
            let per_frame = scores
                .iter()
                .map(|s| super::metrics::FrameScore {
                    j: s[r * n_gt + g].0,
                    f: s[r * n_gt + g].1,
                })
                .collect();
            SequenceReport::new(per_frame)
        })
        .collect())
}

/// Runs the DAVIS 2017 unsupervised evaluation of `results` (one folder of label PNGs per
/// sequence) against `davis_root` for the sequences listed in `ImageSets/2017/SUBSET.txt`.
pub fn evaluate_unsupervised(
    davis_root: &Path,
    results: &Path,
    subset: &str,
) -> Result<ProtocolTable> {
    let list = davis_root
        .join("ImageSets/2017")
        .join(format!("{subset}.txt"));
    let text = std::fs::read_to_string(&list).map_err(|e| Error::io(&list, e))?;
    let seqs: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if seqs.is_empty() {
        return Err(err(format!(
            "{} lists no sequences: nothing to score",
            list.display()
        )));
    }
    // Names join the annotation and result folders: `..` or an absolute path would read elsewhere.
    for s in &seqs {
        super::dataset::check_component("sequence", s)?;
    }
    let ann = davis_root.join("Annotations_unsupervised/480p");
    if !ann.is_dir() {
        return Err(err(format!(
            "{} is missing (unzip DAVIS-2017-Unsupervised-trainval-480p.zip into the DAVIS folder)",
            ann.display()
        )));
    }
    let per_seq = seqs
        .par_iter()
        .map(|s| evaluate_sequence(&ann.join(s), &results.join(s), s).map(|v| (s.to_string(), v)))
        .collect::<Result<Vec<_>>>()?;
    let mut objects = BTreeMap::new();
    for (s, objs) in per_seq {
        for (i, o) in objs.into_iter().enumerate() {
            objects.insert(format!("{s}_{}", i + 1), o);
        }
    }
    let global = Summary::average(objects.values().map(|o| &o.summary));
    Ok(ProtocolTable { objects, global })
}

/// The Ref-DAVIS17 figure: [`evaluate_unsupervised`] on `results_root/anno_0..3`, averaged.
pub fn evaluate_ref_davis(
    davis_root: &Path,
    results_root: &Path,
    subset: &str,
) -> Result<RefDavisReport> {
    let annotators = (0..4)
        .map(|k| {
            let dir = results_root.join(format!("anno_{k}"));
            if !dir.is_dir() {
                return Err(err(format!("{} is missing", dir.display())));
            }
            evaluate_unsupervised(davis_root, &dir, subset)
                .map_err(|e| err(format!("annotator {k}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let globals: Vec<Summary> = annotators.iter().map(|a| a.global).collect();
    let mut average = Summary::average(globals.iter());
    // Papers average each column, J&F included, over annotators; equal to (J + F) / 2 of the means.
    average.JF_mean = globals.iter().map(|g| g.JF_mean).sum::<f64>() / globals.len() as f64;
    Ok(RefDavisReport {
        annotators,
        average,
    })
}
