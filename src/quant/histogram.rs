//! Histograms of absolute activation values, gathered batch by batch.
//!
//! Symmetric INT8 only needs |x|, so the histogram covers `[0, range)` in `bins` equal bins. The range is
//! fixed by the first batch and doubled (by merging neighbouring bins pairwise) whenever a later batch
//! holds a larger value, so no value is ever dropped and no second pass over the data is needed. Doubling
//! keeps every bin edge of the old histogram an edge of the new one, so merging is exact.

use crate::error::{Error, Result};

/// Default number of bins (the TensorRT entropy calibrator uses 2048).
pub const DEFAULT_BINS: usize = 2048;

/// Histogram of |x| over `[0, range)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    counts: Vec<u64>,
    range: f32,
    max_abs: f32,
    total: u64,
    non_finite: u64,
}

/// Most histogram bins a recipe may ask for.
pub const MAX_BINS: usize = 65536;

impl Histogram {
    /// An empty histogram with `bins` bins; `bins` must be an even number ≥ 128 (the entropy method
    /// quantizes into 128 levels, and range doubling merges bins in pairs).
    pub fn new(bins: usize) -> Result<Self> {
        // The entropy search is quadratic in the bins (each candidate threshold re-bins the kept
        // part): 65536 bins already cost ~2e9 steps per tensor.
        if !(128..=MAX_BINS).contains(&bins) || !bins.is_multiple_of(2) {
            return Err(Error::Config(format!(
                "histogram bins must be an even number between 128 and {MAX_BINS}, got {bins}"
            )));
        }
        Ok(Self {
            counts: vec![0; bins],
            range: 0.0,
            max_abs: 0.0,
            total: 0,
            non_finite: 0,
        })
    }

    /// Builds a histogram directly from counts over `[0, range)` (used by tests and by tools that
    /// store histograms).
    pub fn from_counts(counts: Vec<u64>, range: f32) -> Result<Self> {
        let mut h = Self::new(counts.len())?;
        if !(range.is_finite() && range > 0.0) {
            return Err(Error::Config(format!(
                "histogram range must be > 0, got {range}"
            )));
        }
        let last = counts.iter().rposition(|&c| c > 0).unwrap_or(0);
        h.total = counts.iter().sum();
        h.max_abs = range * (last + 1) as f32 / counts.len() as f32;
        h.counts = counts;
        h.range = range;
        Ok(h)
    }

    /// Adds a batch of values. NaN and ±inf are counted in [`Histogram::non_finite`] and otherwise ignored
    /// (an infinite activation cannot be represented by any scale; the caller decides whether to warn).
    pub fn add(&mut self, values: &[f32]) {
        let mut batch_max = 0.0f32;
        for &v in values {
            if v.is_finite() {
                batch_max = batch_max.max(v.abs());
            }
        }
        if batch_max > 0.0 {
            if self.range == 0.0 {
                self.range = batch_max;
            }
            while batch_max > self.range {
                self.double_range();
            }
        }
        self.max_abs = self.max_abs.max(batch_max);
        let n = self.counts.len();
        let inv = if self.range > 0.0 {
            n as f32 / self.range
        } else {
            0.0
        };
        for &v in values {
            if !v.is_finite() {
                self.non_finite += 1;
                continue;
            }
            // |x| == range lands in the last bin.
            let b = ((v.abs() * inv) as usize).min(n - 1);
            self.counts[b] += 1;
            self.total += 1;
        }
    }

    fn double_range(&mut self) {
        let n = self.counts.len();
        for i in 0..n / 2 {
            self.counts[i] = self.counts[2 * i] + self.counts[2 * i + 1];
        }
        for c in &mut self.counts[n / 2..] {
            *c = 0;
        }
        self.range *= 2.0;
    }

    /// Bin counts.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }
    /// Upper edge of the last bin.
    pub fn range(&self) -> f32 {
        self.range
    }
    /// Width of one bin.
    pub fn bin_width(&self) -> f32 {
        self.range / self.counts.len() as f32
    }
    /// Largest finite |x| seen.
    pub fn max_abs(&self) -> f32 {
        self.max_abs
    }
    /// Number of finite values counted.
    pub fn total(&self) -> u64 {
        self.total
    }
    /// Number of NaN / ±inf values skipped.
    pub fn non_finite(&self) -> u64 {
        self.non_finite
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubling_keeps_counts_and_places_values() {
        let mut h = Histogram::new(128).unwrap();
        h.add(&[0.5, -1.0]);
        assert_eq!(h.range(), 1.0);
        // 0.5 → bin 64; 1.0 == range → last bin.
        assert_eq!(h.counts()[64], 1);
        assert_eq!(h.counts()[127], 1);
        h.add(&[3.0]);
        assert_eq!(h.range(), 4.0);
        assert_eq!(h.total(), 3);
        // After two doublings 0.5 sits in bin 16 and 1.0 in bin 31 (merged from 127 → 63 → 31).
        assert_eq!(h.counts()[16], 1);
        assert_eq!(h.counts()[31], 1);
        assert_eq!(h.counts()[96], 1);
        assert_eq!(h.max_abs(), 3.0);
    }

    #[test]
    fn non_finite_values_are_counted_not_binned() {
        let mut h = Histogram::new(128).unwrap();
        h.add(&[f32::NAN, f32::INFINITY, 1.0]);
        assert_eq!(h.total(), 1);
        assert_eq!(h.non_finite(), 2);
        assert_eq!(h.range(), 1.0);
    }

    #[test]
    fn rejects_bad_bin_counts() {
        assert!(Histogram::new(100).is_err());
        assert!(Histogram::new(129).is_err());
        // An absurd count is refused before its counts are allocated.
        assert!(Histogram::new(1 << 40).is_err());
        assert!(Histogram::new(MAX_BINS).is_ok());
    }
}
