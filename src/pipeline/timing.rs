//! Per-stage latency counters for the streaming loop: the last value, mean and percentiles of each
//! stage from fixed-size log-scale histograms, so recording a sample never allocates.

use std::time::Duration;

/// The stages of one streamed frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Text engine (only when the prompt changes).
    Text = 0,
    /// Frame engine.
    Frame = 1,
    /// Host tracker.
    Tracker = 2,
    /// Window assembly + temporal engine.
    Temporal = 3,
    /// Head engine.
    Head = 4,
    /// Running scores, selection, upsampling and thresholding.
    Post = 5,
    /// The whole step (everything above for one frame).
    Total = 6,
}

impl Stage {
    /// Every stage, in report order.
    pub const ALL: [Stage; 7] = [
        Stage::Text,
        Stage::Frame,
        Stage::Tracker,
        Stage::Temporal,
        Stage::Head,
        Stage::Post,
        Stage::Total,
    ];

    /// Name used in logs, status replies and summaries.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Text => "text",
            Stage::Frame => "frame",
            Stage::Tracker => "tracker",
            Stage::Temporal => "temporal",
            Stage::Head => "head",
            Stage::Post => "post",
            Stage::Total => "total",
        }
    }
}

/// Buckets per doubling (each bucket spans a factor 2^(1/8) ≈ 9 %).
const PER_OCTAVE: f64 = 8.0;
/// Buckets: from 1 µs up to 2^32 µs (≈ 70 min).
const BUCKETS: usize = 256;

/// Latency distribution of one stage with bounded memory.
#[derive(Clone, Debug)]
pub struct Histogram {
    counts: [u64; BUCKETS],
    count: u64,
    sum_ms: f64,
    last_ms: f64,
    max_ms: f64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: [0; BUCKETS],
            count: 0,
            sum_ms: 0.0,
            last_ms: 0.0,
            max_ms: 0.0,
        }
    }
}

impl Histogram {
    /// Records one sample.
    pub fn record(&mut self, d: Duration) {
        let ms = d.as_secs_f64() * 1e3;
        let us = (ms * 1e3).max(1.0);
        let b = ((us.log2() * PER_OCTAVE) as usize).min(BUCKETS - 1);
        self.counts[b] += 1;
        self.count += 1;
        self.sum_ms += ms;
        self.last_ms = ms;
        self.max_ms = self.max_ms.max(ms);
    }

    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Mean in milliseconds (0 without samples).
    pub fn mean_ms(&self) -> f64 {
        if self.count == 0 {
            0.0
        } else {
            self.sum_ms / self.count as f64
        }
    }

    /// Sum of all samples in milliseconds.
    pub fn sum_ms(&self) -> f64 {
        self.sum_ms
    }

    /// The latest sample in milliseconds.
    pub fn last_ms(&self) -> f64 {
        self.last_ms
    }

    /// The largest sample in milliseconds.
    pub fn max_ms(&self) -> f64 {
        self.max_ms
    }

    /// The `p`-quantile (0..=1) in milliseconds, to the bucket's resolution (≈ 9 %): the geometric
    /// middle of the bucket holding it, capped at the largest sample.
    pub fn quantile_ms(&self, p: f64) -> f64 {
        if self.count == 0 {
            return 0.0;
        }
        let rank = ((p.clamp(0.0, 1.0) * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (b, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let us = 2f64.powf((b as f64 + 0.5) / PER_OCTAVE);
                return (us / 1e3).min(self.max_ms);
            }
        }
        self.max_ms
    }
}

/// One histogram per [`Stage`].
#[derive(Clone, Debug, Default)]
pub struct StageTimes {
    stages: [Histogram; 7],
}

impl StageTimes {
    /// Records a sample for `stage`.
    pub fn record(&mut self, stage: Stage, d: Duration) {
        self.stages[stage as usize].record(d);
    }

    /// The histogram of `stage`.
    pub fn get(&self, stage: Stage) -> &Histogram {
        &self.stages[stage as usize]
    }

    /// Forgets every sample.
    pub fn clear(&mut self) {
        *self = StageTimes::default();
    }

    /// A one-line summary: `frame 41.0 ms, tracker 0.1 ms, ...` of the last samples.
    pub fn last_line(&self) -> String {
        let mut s = String::new();
        for st in Stage::ALL {
            if st == Stage::Text {
                continue;
            }
            if !s.is_empty() {
                s.push_str(", ");
            }
            s.push_str(&format!("{} {:.1}", st.name(), self.get(st).last_ms()));
        }
        s.push_str(" ms");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_within_bucket_resolution() {
        let mut h = Histogram::default();
        for ms in 1..=100u64 {
            h.record(Duration::from_millis(ms));
        }
        assert_eq!(h.count(), 100);
        assert!((h.mean_ms() - 50.5).abs() < 1e-9);
        let p50 = h.quantile_ms(0.5);
        let p95 = h.quantile_ms(0.95);
        assert!((p50 / 50.0 - 1.0).abs() < 0.1, "p50 {p50}");
        assert!((p95 / 95.0 - 1.0).abs() < 0.1, "p95 {p95}");
        assert!(h.quantile_ms(1.0) <= 100.0);
        assert_eq!(Histogram::default().quantile_ms(0.5), 0.0);
    }
}
