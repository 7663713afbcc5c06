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
                .fold(0f32, f32::max)
        };
        self.frames += 1;
        self.iou_sum += iou as f64;
        self.min_iou = self.min_iou.min(iou);
        self.max_score_delta = self.max_score_delta.max(max_delta(scores_ref, scores_test));
        self.max_box_delta = self.max_box_delta.max(max_delta(boxes_ref, boxes_test));
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
}
