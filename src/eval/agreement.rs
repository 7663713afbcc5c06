//! Agreement mode: J and F of one of our runs measured against another (offline vs streaming,
//! FP32 vs INT8), so a setting's accuracy cost can be stated as J&F without ground truth.

use std::collections::BTreeMap;

use rayon::prelude::*;

use super::dataset::Dataset;
use super::metrics::score_sequence;
use super::report::{Report, SequenceReport};
use super::runner::{merge_objects, VideoPredictor};
use crate::{Error, Result};

/// The masks of one sequence from one run.
#[derive(Debug, Clone, PartialEq)]
pub struct MaskSequence {
    /// Mask width.
    pub width: usize,
    /// Mask height.
    pub height: usize,
    /// One 0/1 mask per frame.
    pub masks: Vec<Vec<u8>>,
}

/// Scores `candidate` against `reference` (the reference plays the ground truth). Both runs must
/// hold the same sequence keys with the same frame counts and sizes.
pub fn compare_runs(
    reference: &BTreeMap<String, MaskSequence>,
    candidate: &BTreeMap<String, MaskSequence>,
) -> Result<Report> {
    if let Some(k) = reference.keys().find(|k| !candidate.contains_key(*k)) {
        return Err(Error::Eval(format!("candidate run lacks sequence {k}")));
    }
    if let Some(k) = candidate.keys().find(|k| !reference.contains_key(*k)) {
        return Err(Error::Eval(format!("reference run lacks sequence {k}")));
    }
    let seqs = reference
        .par_iter()
        .map(|(k, r)| {
            let c = &candidate[k];
            if (c.width, c.height) != (r.width, r.height) {
                return Err(Error::Eval(format!(
                    "sequence {k}: candidate masks are {}x{}, reference {}x{}",
                    c.width, c.height, r.width, r.height
                )));
            }
            let frames = score_sequence(&c.masks, &r.masks, r.width, r.height)
                .map_err(|e| Error::Eval(format!("sequence {k}: {e}")))?;
            Ok((k.clone(), SequenceReport::new(frames)))
        })
        .collect::<Result<BTreeMap<_, _>>>()?;
    Ok(Report::new(seqs).with_videos())
}

/// Runs two predictors over the same expressions of `ds` (up to `limit`) and scores the candidate
/// against the reference. Needs no ground truth, so it works on any split.
pub fn compare_predictors(
    ds: &Dataset,
    reference: &mut dyn VideoPredictor,
    candidate: &mut dyn VideoPredictor,
    limit: Option<usize>,
) -> Result<Report> {
    let mut r_run = BTreeMap::new();
    let mut c_run = BTreeMap::new();
    let mut done = 0usize;
    'outer: for video in &ds.videos {
        let frames = ds.load_frames(video)?;
        let (w, h) = frames[0].dimensions();
        let (w, h) = (w as usize, h as usize);
        for expr in &video.expressions {
            if limit.is_some_and(|l| done >= l) {
                break 'outer;
            }
            let key = format!("{}/{}", video.name, expr.id);
            let r = merge_objects(&reference.predict(&frames, &expr.text)?, frames.len(), w, h)?;
            let c = merge_objects(&candidate.predict(&frames, &expr.text)?, frames.len(), w, h)?;
            r_run.insert(
                key.clone(),
                MaskSequence {
                    width: w,
                    height: h,
                    masks: r,
                },
            );
            c_run.insert(
                key,
                MaskSequence {
                    width: w,
                    height: h,
                    masks: c,
                },
            );
            done += 1;
        }
    }
    compare_runs(&r_run, &c_run)
}
