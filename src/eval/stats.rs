//! Sequence statistics of per-frame scores, as the DAVIS 2017 toolkit computes them.

/// Mean, recall and decay of one metric over a sequence.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    /// Mean over frames (NaN frames skipped).
    pub mean: f64,
    /// Fraction of frames scoring strictly above 0.5.
    pub recall: f64,
    /// Mean of the first quarter of the frames minus mean of the last quarter.
    pub decay: f64,
}

fn nanmean(v: &[f64]) -> f64 {
    let (s, n) = v
        .iter()
        .filter(|x| !x.is_nan())
        .fold((0.0, 0usize), |(s, n), &x| (s + x, n + 1));
    if n == 0 {
        f64::NAN
    } else {
        s / n as f64
    }
}

/// Mean, recall (> 0.5) and decay over four bins of a sequence's per-frame values.
///
/// The bins follow the toolkit: five edges `round(linspace(1, n, 5)) - 1` (halves round up), bin `i`
/// spans edges `i..=i+1` inclusive (neighbouring bins share their edge frame). Decay is
/// `mean(bin 0) - mean(bin 3)`. An empty sequence gives NaN everywhere.
///
/// The toolkit stores the edges as `uint8`, which wraps for sequences longer than 256 frames; we
/// keep exact indices there (DAVIS sequences are at most 104 frames, so results agree).
pub fn statistics(values: &[f64]) -> Stats {
    let n = values.len();
    if n == 0 {
        return Stats {
            mean: f64::NAN,
            recall: f64::NAN,
            decay: f64::NAN,
        };
    }
    let mean = nanmean(values);
    // NaN > 0.5 is false and still counts in the denominator, as with numpy booleans.
    let recall = values.iter().filter(|&&x| x > 0.5).count() as f64 / n as f64;
    let step = (n as f64 - 1.0) / 4.0;
    let edges: Vec<usize> = (0..5)
        .map(|k| {
            let v = if k == 4 {
                n as f64
            } else {
                1.0 + k as f64 * step
            };
            ((v + 1e-10).round() as usize).saturating_sub(1)
        })
        .collect();
    let bin = |i: usize| nanmean(&values[edges[i]..=edges[i + 1]]);
    let decay = bin(0) - bin(3);
    Stats {
        mean,
        recall,
        decay,
    }
}
