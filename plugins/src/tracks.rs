//! The track table of the mask composition kernel (`mask_labels` in `kernels/image.cu`, `RdTracks` there):
//! plain data with the kernel's C layout, built on the host per frame and passed by value. No CUDA here, so
//! the CPU emulation of the kernels (`plugins/emu`) uses it too.

use crate::dims::MAX_MASK_TRACKS;
use crate::error::{invalid, Result};

/// Labels and scores of the tracks of one mask composition call, passed to the kernel by value.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct TrackTable {
    n: i32,
    scored: i32,
    map: [i32; MAX_MASK_TRACKS],
    score: [f32; MAX_MASK_TRACKS],
    label: [u8; MAX_MASK_TRACKS],
}

impl TrackTable {
    /// The first track (in order) whose upsampled logit is > 0 labels a pixel, as
    /// `LabelUpsampler::label` called track by track on a cleared mask. Track `t` reads map `t`.
    pub fn first_wins(labels: &[u8]) -> Result<Self> {
        Self::build(labels, None, None)
    }

    /// The highest-scoring track whose upsampled logit is > 0 labels a pixel (the earlier one on a tie),
    /// as `LabelUpsampler::label_scored` called track by track on a cleared mask. Track `t` reads map `t`.
    pub fn best_score(labels: &[u8], scores: &[f32]) -> Result<Self> {
        Self::build(labels, None, Some(scores))
    }

    /// Like [`TrackTable::first_wins`] (no scores) or [`TrackTable::best_score`], with track `t`
    /// reading map `maps[t]` of the logits (the chosen queries of the head engine's output).
    pub fn chosen(maps: &[usize], labels: &[u8], scores: Option<&[f32]>) -> Result<Self> {
        Self::build(labels, Some(maps), scores)
    }

    fn build(labels: &[u8], maps: Option<&[usize]>, scores: Option<&[f32]>) -> Result<Self> {
        if labels.len() > MAX_MASK_TRACKS
            || scores.is_some_and(|s| s.len() != labels.len())
            || maps.is_some_and(|m| {
                m.len() != labels.len() || m.iter().any(|&q| q > i32::MAX as usize)
            })
        {
            return Err(invalid(format!(
                "mask labels: {} labels, {:?} maps and {:?} scores (at most {MAX_MASK_TRACKS}, one map and score per label)",
                labels.len(),
                maps.map(<[usize]>::len),
                scores.map(<[f32]>::len)
            )));
        }
        let mut t = TrackTable {
            n: labels.len() as i32,
            scored: scores.is_some() as i32,
            map: [0; MAX_MASK_TRACKS],
            score: [0.0; MAX_MASK_TRACKS],
            label: [0; MAX_MASK_TRACKS],
        };
        t.label[..labels.len()].copy_from_slice(labels);
        for (k, slot) in t.map.iter_mut().take(labels.len()).enumerate() {
            *slot = maps.map_or(k, |m| m[k]) as i32;
        }
        if let Some(s) = scores {
            t.score[..s.len()].copy_from_slice(s);
        }
        Ok(t)
    }

    /// The highest map index a track reads (the logits must hold at least this many + 1 maps).
    pub fn max_map(&self) -> Option<usize> {
        self.map[..self.len()].iter().map(|&m| m as usize).max()
    }

    /// Number of tracks.
    pub fn len(&self) -> usize {
        self.n as usize
    }

    /// Track `t`: the map it reads, its label and (for a score table) its score.
    pub fn track(&self, t: usize) -> Option<(usize, u8, Option<f32>)> {
        (t < self.len()).then(|| {
            (
                self.map[t] as usize,
                self.label[t],
                (self.scored != 0).then_some(self.score[t]),
            )
        })
    }

    /// Whether there are no tracks (the kernel then writes an all-background mask).
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
}
