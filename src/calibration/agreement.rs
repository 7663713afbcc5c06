//! Agreement between a reference (FP32) run and a reduced-precision (fake-quantized or FP16) run:
//! mask IoU, score deltas and box deltas, accumulated frame by frame.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// IoU of two binary masks (non-zero = foreground). Two empty masks agree perfectly (IoU 1).
pub fn mask_iou(a: &[u8], b: &[u8]) -> Result<f32> {
    if a.len() != b.len() {
        return Err(Error::Shape(format!(
            "mask IoU: masks have {} and {} pixels",
            a.len(),
            b.len()
        )));
    }
    let (mut inter, mut union) = (0u64, 0u64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x != 0, y != 0);
        inter += (x && y) as u64;
        union += (x || y) as u64;
    }
    Ok(if union == 0 {
        1.0
    } else {
        inter as f32 / union as f32
    })
}

/// Running agreement statistics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Agreement {
    /// Frames compared.
    pub frames: usize,
    /// Sum of per-frame mask IoU (mean = sum / frames).
    pub iou_sum: f64,
    /// Worst per-frame mask IoU.
    pub min_iou: f32,
    /// Largest |score_ref − score_test|.
    pub max_score_delta: f32,
    /// Largest |box_ref − box_test| over all coordinates (normalised cx, cy, w, h).
    pub max_box_delta: f32,
}

/// The larger of two deltas, NaN if either is: `f32::max` drops NaN, which would report a variant
/// whose outputs overflowed to NaN as agreeing exactly.
fn nan_max(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else {
        a.max(b)
    }
}

impl Agreement {
    /// Empty statistics.
    pub fn new() -> Self {
        Self {
            min_iou: 1.0,
            ..Default::default()
        }
    }

    /// Adds one frame: binary masks, per-query scores and boxes `[n, 4]` of both runs.
    pub fn add_frame(
        &mut self,
        mask_ref: &[u8],
        mask_test: &[u8],
        scores_ref: &[f32],
        scores_test: &[f32],
        boxes_ref: &[f32],
        boxes_test: &[f32],
    ) -> Result<()> {
        if scores_ref.len() != scores_test.len() || boxes_ref.len() != boxes_test.len() {
            return Err(Error::Shape(format!(
                "agreement: score/box lengths differ ({} vs {} scores, {} vs {} box values)",
                scores_ref.len(),
                scores_test.len(),
                boxes_ref.len(),
                boxes_test.len()
            )));
        }
        let iou = mask_iou(mask_ref, mask_test)?;
        let max_delta = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, nan_max)
        };
        self.frames += 1;
        self.iou_sum += iou as f64;
        self.min_iou = self.min_iou.min(iou);
        self.max_score_delta = nan_max(self.max_score_delta, max_delta(scores_ref, scores_test));
        self.max_box_delta = nan_max(self.max_box_delta, max_delta(boxes_ref, boxes_test));
        Ok(())
    }

    /// Mean mask IoU (1 when no frame was added).
    pub fn mean_iou(&self) -> f32 {
        if self.frames == 0 {
            1.0
        } else {
            (self.iou_sum / self.frames as f64) as f32
        }
    }
}

impl std::fmt::Display for Agreement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} frames: mask IoU mean {:.4} min {:.4}; max |Δscore| {:.4}; max |Δbox| {:.4}",
            self.frames,
            self.mean_iou(),
            self.min_iou,
            self.max_score_delta,
            self.max_box_delta
        )
    }
}

/// Agreement of one reduced-precision variant with the FP32 reference over a set of clips.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VariantAgreement {
    /// `fp16` or `int8` (with the form of the engines, e.g. `int8 (Q/DQ, native)`).
    pub variant: String,
    /// Clip × prompt runs compared.
    pub runs: usize,
    /// Mask IoU per frame, in run order (reference masks vs variant masks, best track).
    pub per_frame_iou: Vec<f32>,
    /// Mean of `per_frame_iou`.
    pub mean_iou: f32,
    /// Smallest of `per_frame_iou`.
    pub min_iou: f32,
    /// J (region similarity) mean, DAVIS definition, the FP32 masks playing the ground truth.
    pub j_mean: f64,
    /// F (boundary accuracy) mean.
    pub f_mean: f64,
    /// (J + F) / 2.
    pub jf_mean: f64,
    /// Largest |Δ sigmoid(logit)| over every query and frame.
    pub max_score_delta: f32,
    /// Largest |Δ mean score| of the reference's best track.
    pub best_score_delta: f32,
    /// Largest |Δ box coordinate| (normalised cx, cy, w, h) over every query and frame.
    pub max_box_delta: f32,
    /// Largest |Δ box coordinate| of the reference's best track over its frames.
    pub best_box_delta: f32,
    /// Fraction of runs whose best track is the same query as in the reference.
    pub best_track_agreement: f32,
}

/// Accumulates [`VariantAgreement`] run by run.
#[derive(Debug, Clone)]
pub struct VariantAccumulator {
    variant: String,
    stats: Agreement,
    per_frame: Vec<f32>,
    best_score: f32,
    best_box: f32,
    same_best: usize,
    runs: usize,
    reference: std::collections::BTreeMap<String, crate::eval::agreement::MaskSequence>,
    candidate: std::collections::BTreeMap<String, crate::eval::agreement::MaskSequence>,
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

impl VariantAccumulator {
    /// An empty accumulator for `variant`.
    pub fn new(variant: impl Into<String>) -> Self {
        Self {
            variant: variant.into(),
            stats: Agreement::new(),
            per_frame: Vec::new(),
            best_score: 0.0,
            best_box: 0.0,
            same_best: 0,
            runs: 0,
            reference: Default::default(),
            candidate: Default::default(),
        }
    }

    /// Adds one run (same clip, prompt and selection in both), `ns` queries per frame.
    pub fn add_run(
        &mut self,
        key: &str,
        reference: &crate::pipeline::session::VideoResult,
        test: &crate::pipeline::session::VideoResult,
        ns: usize,
    ) -> Result<()> {
        let t = reference.masks.len();
        if test.masks.len() != t
            || reference.mask_size != test.mask_size
            || reference.logits.len() != t * ns
            || test.logits.len() != t * ns
            || reference.boxes.len() != t * ns * 4
            || test.boxes.len() != t * ns * 4
        {
            return Err(Error::Shape(format!(
                "agreement run {key}: the two runs have different frame counts or sizes"
            )));
        }
        let best = *reference
            .chosen
            .first()
            .ok_or_else(|| Error::Shape(format!("agreement run {key}: no track chosen")))?;
        let mut sr = vec![0f32; ns];
        let mut st = vec![0f32; ns];
        for f in 0..t {
            for q in 0..ns {
                sr[q] = sigmoid(reference.logits[f * ns + q]);
                st[q] = sigmoid(test.logits[f * ns + q]);
            }
            let b = f * ns * 4..(f + 1) * ns * 4;
            self.stats.add_frame(
                &reference.masks[f],
                &test.masks[f],
                &sr,
                &st,
                &reference.boxes[b.clone()],
                &test.boxes[b],
            )?;
            self.per_frame
                .push(mask_iou(&reference.masks[f], &test.masks[f])?);
            let o = (f * ns + best) * 4;
            for k in o..o + 4 {
                self.best_box = nan_max(self.best_box, (reference.boxes[k] - test.boxes[k]).abs());
            }
        }
        self.best_score = nan_max(
            self.best_score,
            (reference.scores[best] - test.scores[best]).abs(),
        );
        self.same_best += (test.chosen.first() == Some(&best)) as usize;
        self.runs += 1;
        let (h, w) = reference.mask_size;
        let seq =
            |r: &crate::pipeline::session::VideoResult| crate::eval::agreement::MaskSequence {
                width: w,
                height: h,
                masks: r
                    .masks
                    .iter()
                    .map(|m| m.iter().map(|&v| (v != 0) as u8).collect())
                    .collect(),
            };
        self.reference.insert(key.to_string(), seq(reference));
        self.candidate.insert(key.to_string(), seq(test));
        Ok(())
    }

    /// The summary, with J&F from [`crate::eval::agreement::compare_runs`].
    pub fn finish(&self) -> Result<VariantAgreement> {
        let rep = crate::eval::agreement::compare_runs(&self.reference, &self.candidate)?;
        Ok(VariantAgreement {
            variant: self.variant.clone(),
            runs: self.runs,
            per_frame_iou: self.per_frame.clone(),
            mean_iou: self.stats.mean_iou(),
            min_iou: self.stats.min_iou,
            j_mean: rep.overall.J_mean,
            f_mean: rep.overall.F_mean,
            jf_mean: rep.overall.JF_mean,
            max_score_delta: self.stats.max_score_delta,
            best_score_delta: self.best_score,
            max_box_delta: self.stats.max_box_delta,
            best_box_delta: self.best_box,
            best_track_agreement: if self.runs == 0 {
                1.0
            } else {
                self.same_best as f32 / self.runs as f32
            },
        })
    }
}

impl std::fmt::Display for VariantAgreement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:<24} {:>4} runs {:>5} frames  IoU mean {:.4} min {:.4}  J {:.4} F {:.4} J&F {:.4}  \
             |Δscore| max {:.4} best {:.4}  |Δbox| max {:.4} best {:.4}  same best track {:.0} %",
            self.variant,
            self.runs,
            self.per_frame_iou.len(),
            self.mean_iou,
            self.min_iou,
            self.j_mean,
            self.f_mean,
            self.jf_mean,
            self.max_score_delta,
            self.best_score_delta,
            self.max_box_delta,
            self.best_box_delta,
            self.best_track_agreement * 100.0
        )
    }
}

/// The agreement report of `referdino calibrate --report`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgreementReport {
    /// Checkpoint.
    pub weights: String,
    /// Scale table used by the INT8 variant.
    pub scales: String,
    /// Geometry label (`HxW, text L, window W`).
    pub geometry: String,
    /// One entry per variant.
    pub variants: Vec<VariantAgreement>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iou_of_hand_made_masks() {
        // 4 pixels fg in a, 2 of them in b plus 1 extra → inter 2, union 5.
        let a = [1, 1, 1, 1, 0, 0];
        let b = [1, 1, 0, 0, 1, 0];
        assert_eq!(mask_iou(&a, &b).unwrap(), 0.4);
        assert_eq!(mask_iou(&[0, 0], &[0, 0]).unwrap(), 1.0);
        assert!(mask_iou(&[0], &[0, 0]).is_err());
    }

    #[test]
    fn accumulates_worst_cases() {
        let mut ag = Agreement::new();
        ag.add_frame(&[1, 0], &[1, 0], &[0.9], &[0.8], &[0.5; 4], &[0.5; 4])
            .unwrap();
        ag.add_frame(
            &[1, 1],
            &[1, 0],
            &[0.1],
            &[0.1],
            &[0.5; 4],
            &[0.25, 0.5, 0.5, 0.5],
        )
        .unwrap();
        assert_eq!(ag.frames, 2);
        assert!((ag.mean_iou() - 0.75).abs() < 1e-6);
        assert_eq!(ag.min_iou, 0.5);
        assert!((ag.max_score_delta - 0.1).abs() < 1e-6);
        assert_eq!(ag.max_box_delta, 0.25);
    }

    #[test]
    fn a_nan_output_is_reported_not_dropped() {
        let mut ag = Agreement::new();
        ag.add_frame(&[1], &[1], &[0.5], &[f32::NAN], &[0.5; 4], &[0.5; 4])
            .unwrap();
        // A later frame that agrees exactly must not wash the NaN out.
        ag.add_frame(&[1], &[1], &[0.5], &[0.5], &[0.5; 4], &[0.5; 4])
            .unwrap();
        assert!(ag.max_score_delta.is_nan());
        assert_eq!(ag.max_box_delta, 0.0);
        ag.add_frame(&[1], &[1], &[0.5], &[0.5], &[0.5; 4], &[f32::NAN; 4])
            .unwrap();
        assert!(ag.max_box_delta.is_nan());
    }

    fn result(masks: Vec<Vec<u8>>, logits: Vec<f32>, boxes: Vec<f32>, best: usize) -> VideoResult {
        VideoResult {
            scores: vec![0.5, 0.7],
            chosen: vec![best],
            logits,
            boxes,
            mask_logits: Vec::new(),
            masks,
            mask_size: (2, 2),
        }
    }

    use crate::pipeline::session::VideoResult;

    #[test]
    fn a_run_agrees_with_itself_and_a_shifted_one_by_hand() {
        // Two frames, two queries, 2x2 masks.
        let r = result(
            vec![vec![1, 1, 0, 0], vec![1, 0, 0, 0]],
            vec![0.0, 1.0, 0.0, 1.0],
            vec![0.5; 16],
            1,
        );
        let mut acc = VariantAccumulator::new("same");
        acc.add_run("a", &r, &r, 2).unwrap();
        let v = acc.finish().unwrap();
        assert_eq!((v.mean_iou, v.min_iou, v.j_mean), (1.0, 1.0, 1.0));
        assert_eq!((v.max_score_delta, v.max_box_delta), (0.0, 0.0));
        assert_eq!(v.best_track_agreement, 1.0);
        // Frame 0: IoU 1/2; frame 1: 1; query 1's logit 1 → 0 (Δσ = σ(1) − ½); its box moves by 0.25.
        let mut boxes = vec![0.5; 16];
        boxes[4] = 0.75;
        let mut t = result(
            vec![vec![1, 0, 0, 0], vec![1, 0, 0, 0]],
            vec![0.0, 0.0, 0.0, 1.0],
            boxes,
            0,
        );
        t.scores[1] = 0.6;
        let mut acc = VariantAccumulator::new("shifted");
        acc.add_run("a", &r, &t, 2).unwrap();
        let v = acc.finish().unwrap();
        assert_eq!(v.per_frame_iou, vec![0.5, 1.0]);
        assert!(
            (v.j_mean - 0.75).abs() < 1e-9,
            "DAVIS J is the mean IoU: {}",
            v.j_mean
        );
        assert!((v.max_score_delta - (sigmoid(1.0) - 0.5)).abs() < 1e-6);
        assert!((v.best_score_delta - 0.1).abs() < 1e-6);
        assert_eq!((v.max_box_delta, v.best_box_delta), (0.25, 0.25));
        assert_eq!(v.best_track_agreement, 0.0);
    }
}
