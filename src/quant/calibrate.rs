//! Choosing the clipping threshold (amax) of one tensor from its histogram.
//!
//! - **Entropy** (TensorRT's entropy calibration): try every threshold from 128 bins up to all bins;
//!   for each, fold the clipped tail into the last kept bin (P), quantize the kept bins into 128 levels
//!   and expand them back (Q), and keep the threshold with the smallest KL(P‖Q). It clips long tails and
//!   keeps short ones.
//! - **Percentile**: the smallest threshold below which `p` percent of |x| lies.
//! - **Max**: the largest |x| seen (no clipping).

use super::histogram::Histogram;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

/// Number of positive INT8 levels the entropy method quantizes into (symmetric int8: 0..=127).
pub const INT8_LEVELS: usize = 128;

/// How a tensor's amax is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "method")]
pub enum CalibMethod {
    /// Minimum KL divergence (TensorRT entropy calibration).
    Entropy,
    /// Percentile of |x| (e.g. 99.99).
    Percentile {
        /// Percent of values that must lie at or below the threshold, in (0, 100].
        percentile: f64,
    },
    /// Largest |x|.
    Max,
}

impl CalibMethod {
    /// Short name for reports (`entropy`, `percentile-99.99`, `max`).
    pub fn label(&self) -> String {
        match self {
            CalibMethod::Entropy => "entropy".into(),
            CalibMethod::Percentile { percentile } => format!("percentile-{percentile}"),
            CalibMethod::Max => "max".into(),
        }
    }

    /// Applies the method to a histogram. An empty or all-zero histogram gives 0 (callers map that to a
    /// harmless scale).
    pub fn amax(&self, h: &Histogram) -> Result<f32> {
        match *self {
            CalibMethod::Entropy => Ok(entropy_amax(h)),
            CalibMethod::Percentile { percentile } => percentile_amax(h, percentile),
            CalibMethod::Max => Ok(h.max_abs()),
        }
    }
}

/// Threshold minimizing KL(P‖Q) between the clipped reference distribution and its 128-level
/// quantization. Returns the upper edge of the last kept bin, capped at the largest value seen.
pub fn entropy_amax(h: &Histogram) -> f32 {
    let counts = h.counts();
    let n = counts.len();
    if h.total() == 0 || h.range() == 0.0 {
        return 0.0;
    }
    // The search never needs to look past the last non-empty bin.
    let last = counts.iter().rposition(|&c| c > 0).unwrap_or(0) + 1;
    let stop = last.max(INT8_LEVELS).min(n);
    let mut tail: u64 = counts[stop..].iter().sum();
    let mut best = (f64::INFINITY, stop);
    let mut p = vec![0f64; n];
    let mut q = vec![0f64; n];
    // Walk thresholds from the top down so the clipped tail is a running sum.
    for i in (INT8_LEVELS..=stop).rev() {
        if i < stop {
            tail += counts[i];
        }
        let kl = kl_for_threshold(&counts[..i], tail, &mut p[..i], &mut q[..i]);
        // `<=` prefers the smaller threshold on exact ties (walking downwards).
        if kl <= best.0 {
            best = (kl, i);
        }
    }
    if !best.0.is_finite() {
        return h.max_abs();
    }
    (best.1 as f32 * h.bin_width()).min(h.max_abs())
}

/// KL(P‖Q) for keeping `kept` bins with `tail` clipped values folded into the last one.
fn kl_for_threshold(kept: &[u64], tail: u64, p: &mut [f64], q: &mut [f64]) -> f64 {
    let i = kept.len();
    for (pj, &c) in p.iter_mut().zip(kept) {
        *pj = c as f64;
    }
    p[i - 1] += tail as f64;
    // Quantize the kept bins (without the tail) into 128 groups, then spread each group's mass evenly
    // over the bins that are non-empty in P: empty bins stay empty in Q, as they are in P.
    for g in 0..INT8_LEVELS {
        let start = g * i / INT8_LEVELS;
        let end = (g + 1) * i / INT8_LEVELS;
        let mass: u64 = kept[start..end].iter().sum();
        let nonzero = p[start..end].iter().filter(|&&c| c > 0.0).count();
        for j in start..end {
            q[j] = if p[j] > 0.0 {
                mass as f64 / nonzero as f64
            } else {
                0.0
            };
        }
    }
    let sp: f64 = p.iter().sum();
    let sq: f64 = q.iter().sum();
    if sp == 0.0 || sq == 0.0 {
        return f64::INFINITY;
    }
    let mut kl = 0.0;
    for (&pj, &qj) in p.iter().zip(q.iter()) {
        if pj > 0.0 {
            if qj == 0.0 {
                // A group whose only mass is the folded tail has no support in Q.
                return f64::INFINITY;
            }
            let (pn, qn) = (pj / sp, qj / sq);
            kl += pn * (pn / qn).ln();
        }
    }
    kl
}

/// Percentile threshold from a histogram: the upper edge of the first bin at which the cumulative count
/// reaches `percentile`% of all values, capped at the largest value seen.
pub fn percentile_amax(h: &Histogram, percentile: f64) -> Result<f32> {
    check_percentile(percentile)?;
    if h.total() == 0 {
        return Ok(0.0);
    }
    let target = nearest_rank(percentile, h.total());
    let mut acc = 0u64;
    for (b, &c) in h.counts().iter().enumerate() {
        acc += c;
        if acc >= target {
            return Ok(((b + 1) as f32 * h.bin_width()).min(h.max_abs()));
        }
    }
    Ok(h.max_abs())
}

/// Exact percentile of |x| (nearest-rank: the smallest |x| with at least `percentile`% of values at or
/// below it). Used for small tensors and as the reference for [`percentile_amax`].
pub fn percentile_exact(values: &[f32], percentile: f64) -> Result<f32> {
    check_percentile(percentile)?;
    let mut a: Vec<f32> = values
        .iter()
        .filter(|v| v.is_finite())
        .map(|v| v.abs())
        .collect();
    if a.is_empty() {
        return Ok(0.0);
    }
    a.sort_by(f32::total_cmp);
    let rank = nearest_rank(percentile, a.len() as u64) as usize;
    Ok(a[rank.clamp(1, a.len()) - 1])
}

/// The nearest rank `ceil(p/100 · n)`, robust to the rounding of `p/100 · n`: 99.9/100 · 1000 is
/// 999.0000000000001 in f64, whose ceiling would be rank 1000 instead of 999.
fn nearest_rank(percentile: f64, n: u64) -> u64 {
    let r = percentile * n as f64 / 100.0;
    (r - 1e-9 * r.max(1.0)).ceil().max(0.0) as u64
}

fn check_percentile(p: f64) -> Result<()> {
    if p.is_finite() && p > 0.0 && p <= 100.0 {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "calibration percentile must be in (0, 100], got {p}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_exact_on_small_data() {
        let v: Vec<f32> = (1..=100).map(|i| i as f32).collect();
        assert_eq!(percentile_exact(&v, 99.0).unwrap(), 99.0);
        assert_eq!(percentile_exact(&v, 100.0).unwrap(), 100.0);
        assert_eq!(percentile_exact(&v, 50.0).unwrap(), 50.0);
        assert_eq!(percentile_exact(&v, 0.5).unwrap(), 1.0);
        // Signs do not matter: |x| is what symmetric INT8 clips.
        assert_eq!(
            percentile_exact(&[-4.0, 1.0, -2.0, 3.0], 75.0).unwrap(),
            3.0
        );
        assert!(percentile_exact(&v, 0.0).is_err());
        assert!(percentile_exact(&v, 100.5).is_err());
        // 99.9 % of 1000 values is rank 999 exactly; f64 makes p/100 · n 999.0000000000001.
        let v: Vec<f32> = (1..=1000).map(|i| i as f32).collect();
        assert_eq!(percentile_exact(&v, 99.9).unwrap(), 999.0);
        assert_eq!(percentile_exact(&v, 99.99).unwrap(), 1000.0);
        let v: Vec<f32> = (1..=10000).map(|i| i as f32).collect();
        assert_eq!(percentile_exact(&v, 99.99).unwrap(), 9999.0);
        assert_eq!(percentile_exact(&v, 99.999).unwrap(), 10000.0);
    }

    #[test]
    fn empty_histogram_gives_zero() {
        let h = Histogram::new(2048).unwrap();
        assert_eq!(entropy_amax(&h), 0.0);
        assert_eq!(percentile_amax(&h, 99.9).unwrap(), 0.0);
    }
}
