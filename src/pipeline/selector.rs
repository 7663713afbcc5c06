//! Streaming track selection: a running mean of each track's sigmoid score since the prompt was set,
//! and the same choice rule as the offline [`select_tracks`](crate::pipeline::post::select_tracks)
//! (best track, or every track over a threshold, best first). Fixed buffers; nothing allocates.

use crate::error::{Error, Result};
use crate::pipeline::post::{sigmoid, Selection};

/// Running-mean scores of `queries` tracks and the current choice.
#[derive(Clone, Debug)]
pub struct RunningScores {
    // f64 sums: a long stream adds ~10^5 values in [0, 1]; f32 would lose the small ones.
    sums: Vec<f64>,
    frames: u64,
    scores: Vec<f32>,
    chosen: Vec<usize>,
}

impl RunningScores {
    /// Buffers for `queries` tracks.
    pub fn new(queries: usize) -> Self {
        RunningScores {
            sums: vec![0.0; queries],
            frames: 0,
            scores: vec![0.0; queries],
            chosen: Vec::with_capacity(queries),
        }
    }

    /// Forgets every frame (new prompt).
    pub fn reset(&mut self) {
        self.sums.fill(0.0);
        self.scores.fill(0.0);
        self.frames = 0;
        self.chosen.clear();
    }

    /// Frames averaged so far.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Adds one frame's class logits `[queries]` (track order).
    pub fn update(&mut self, logits: &[f32]) -> Result<()> {
        if logits.len() != self.sums.len() {
            return Err(Error::Shape(format!(
                "running scores: {} logits for {} tracks",
                logits.len(),
                self.sums.len()
            )));
        }
        self.frames += 1;
        let n = self.frames as f64;
        for ((s, m), &l) in self.sums.iter_mut().zip(&mut self.scores).zip(logits) {
            *s += sigmoid(l) as f64;
            *m = (*s / n) as f32;
        }
        Ok(())
    }

    /// Current running-mean score per track.
    pub fn scores(&self) -> &[f32] {
        &self.scores
    }

    /// Chooses tracks by `sel` from the current scores; best first.
    pub fn select(&mut self, sel: Selection) -> &[usize] {
        choose(&self.scores, sel, &mut self.chosen);
        &self.chosen
    }

    /// The last choice.
    pub fn chosen(&self) -> &[usize] {
        &self.chosen
    }
}

pub use crate::pipeline::post::choose;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::post::select_tracks;

    #[test]
    fn running_mean_matches_the_offline_rule_on_the_same_frames() {
        // 3 frames × 4 tracks; the running choice after the last frame must equal the offline one.
        let logits = [
            0.5, -1.0, 2.0, 2.0, 1.5, 0.0, -2.0, 3.0, -0.5, 0.2, 1.0, -1.0,
        ];
        let mut r = RunningScores::new(4);
        for f in 0..3 {
            r.update(&logits[f * 4..(f + 1) * 4]).unwrap();
        }
        for sel in [Selection::Single, Selection::Multi { threshold: 0.5 }] {
            let mut s = [0f32; 4];
            let mut c = Vec::new();
            select_tracks(&logits, 3, 4, sel, &mut s, &mut c).unwrap();
            for (a, b) in s.iter().zip(r.scores()) {
                assert!((a - b).abs() < 1e-6);
            }
            assert_eq!(r.select(sel), &c[..], "{sel:?}");
        }
        assert!(r.update(&[0.0; 3]).is_err());
        r.reset();
        assert_eq!(r.frames(), 0);
    }

    #[test]
    fn multi_falls_back_to_the_best_track() {
        let mut c = Vec::with_capacity(3);
        choose(
            &[0.1, 0.3, 0.2],
            Selection::Multi { threshold: 0.9 },
            &mut c,
        );
        assert_eq!(c, vec![1]);
        choose(
            &[0.5, 0.5, 0.7],
            Selection::Multi { threshold: 0.4 },
            &mut c,
        );
        assert_eq!(c, vec![2, 0, 1]);
    }
}
