//! Memory-augmented tracker (docs/model.md: Memory-augmented tracker): aligns each frame's surviving queries to a running memory with an
//! exact linear assignment, so that query `i` is the same object in every frame.
//!
//! Host code between the frame engine and the temporal engine; causal by construction, so streaming and
//! offline use the same tracker. All buffers are sized at construction: [`Tracker::step`] allocates nothing.
//!
//! **Zero-range relevance.** The official min-max normalisation of the relevance `c` has no epsilon and
//! yields NaN when every query scores the same (the memory then becomes NaN for the rest of the video).
//! We define `c = 0` for all queries in that case: nothing is distinguishably relevant, so the memory is
//! kept unchanged for that frame. This is the only deviation from the reference and it only triggers where
//! the reference would produce NaN.

use crate::error::{Error, Result};
use crate::ops::hungarian::Hungarian;

/// Tracker state for `queries` tracks of width `dim`.
pub struct Tracker {
    queries: usize,
    dim: usize,
    alpha: f32,
    memory: Vec<f32>,
    frames_seen: u64,
    cost: Vec<f32>,
    mem_unit: Vec<f32>,
    cur_unit: Vec<f32>,
    relevance: Vec<f32>,
    perm: Vec<usize>,
    hungarian: Hungarian,
}

/// What one tracker step produced (views into the tracker's buffers).
pub struct TrackStep<'a> {
    /// `perm[i]` = the current query assigned to track `i`.
    pub perm: &'a [usize],
}

impl Tracker {
    /// A tracker for `queries × dim` object embeddings with momentum `alpha` (0.1 official).
    pub fn new(queries: usize, dim: usize, alpha: f32) -> Self {
        Tracker {
            queries,
            dim,
            alpha,
            memory: vec![0.0; queries * dim],
            frames_seen: 0,
            cost: vec![0.0; queries * queries],
            mem_unit: vec![0.0; queries * dim],
            cur_unit: vec![0.0; queries * dim],
            relevance: vec![0.0; queries],
            perm: (0..queries).collect(),
            hungarian: Hungarian::new(queries),
        }
    }

    /// Forgets all tracks (new video or new prompt).
    pub fn reset(&mut self) {
        self.frames_seen = 0;
    }

    /// The running memory `[queries, dim]` that the next frame will be matched against.
    pub fn memory(&self) -> &[f32] {
        &self.memory
    }

    /// Number of frames processed since the last reset.
    pub fn frames_seen(&self) -> u64 {
        self.frames_seen
    }

    /// Aligns one frame in place.
    ///
    /// `objects [Q,d]` and `refs [Q,4]` are permuted into track order; `text [L,d]` with `text_mask [L]`
    /// (true = real token) gives the relevance that weights the memory update. Padded tokens are ignored
    /// (the reference never has any at batch 1).
    pub fn step(
        &mut self,
        objects: &mut [f32],
        refs: &mut [f32],
        text: &[f32],
        text_mask: &[bool],
        scratch_objects: &mut [f32],
        scratch_refs: &mut [f32],
    ) -> Result<TrackStep<'_>> {
        let (q, d) = (self.queries, self.dim);
        let l = text_mask.len();
        if objects.len() != q * d
            || refs.len() != q * 4
            || text.len() != l * d
            || scratch_objects.len() != q * d
            || scratch_refs.len() != q * 4
        {
            return Err(Error::Shape(format!(
                "tracker: objects {} refs {} text {} (L={l}) for {q} queries × {d}",
                objects.len(),
                refs.len(),
                text.len()
            )));
        }
        if self.frames_seen == 0 {
            self.memory.copy_from_slice(objects);
            for (i, p) in self.perm.iter_mut().enumerate() {
                *p = i;
            }
            self.frames_seen = 1;
            return Ok(TrackStep { perm: &self.perm });
        }
        // Cost 1 − cos(memory_i, current_j), both sides L2-normalised. Rows are normalised once (the
        // same f32 quotients the reference forms inside its product), not once per pair.
        for i in 0..q {
            let r = i * d..(i + 1) * d;
            unit(&self.memory[r.clone()], &mut self.mem_unit[r.clone()]);
            unit(&objects[r.clone()], &mut self.cur_unit[r]);
        }
        for i in 0..q {
            let m = &self.mem_unit[i * d..(i + 1) * d];
            for j in 0..q {
                let c = &self.cur_unit[j * d..(j + 1) * d];
                let mut dot = 0f32;
                for k in 0..d {
                    dot += m[k] * c[k];
                }
                self.cost[i * q + j] = 1.0 - dot;
            }
        }
        self.hungarian.solve(&self.cost, &mut self.perm)?;
        // Gather into track order.
        for i in 0..q {
            let j = self.perm[i];
            scratch_objects[i * d..(i + 1) * d].copy_from_slice(&objects[j * d..(j + 1) * d]);
            scratch_refs[i * 4..(i + 1) * 4].copy_from_slice(&refs[j * 4..(j + 1) * 4]);
        }
        objects.copy_from_slice(scratch_objects);
        refs.copy_from_slice(scratch_refs);
        // Relevance: max over real tokens of the raw dot product, min-max normalised over queries.
        let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
        for i in 0..q {
            let o = &objects[i * d..(i + 1) * d];
            let mut best = f32::NEG_INFINITY;
            for (k, &real) in text_mask.iter().enumerate() {
                if real {
                    let t = &text[k * d..(k + 1) * d];
                    let dot: f32 = o.iter().zip(t).map(|(a, b)| a * b).sum();
                    best = best.max(dot);
                }
            }
            self.relevance[i] = best;
            lo = lo.min(best);
            hi = hi.max(best);
        }
        let range = hi - lo;
        for r in self.relevance.iter_mut() {
            *r = if range > 0.0 && range.is_finite() {
                (*r - lo) / range
            } else {
                0.0
            };
        }
        // Momentum update M = (1 − α·c)·M + α·c·Ô.
        for i in 0..q {
            let ac = self.alpha * self.relevance[i];
            let (m, o) = (
                &mut self.memory[i * d..(i + 1) * d],
                &objects[i * d..(i + 1) * d],
            );
            for k in 0..d {
                m[k] = (1.0 - ac) * m[k] + ac * o[k];
            }
        }
        self.frames_seen += 1;
        Ok(TrackStep { perm: &self.perm })
    }
}

/// `out = v / max(‖v‖₂, 1e-12)`.
fn unit(v: &[f32], out: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    for (o, x) in out.iter_mut().zip(v) {
        *o = x / n;
    }
}
