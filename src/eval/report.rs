//! Score reports: per sequence (or expression), per video and overall; JSON and CSV writers.

use std::collections::BTreeMap;
use std::path::Path;

use super::metrics::FrameScore;
use super::stats::{statistics, Stats};
use crate::{Error, Result};

/// J and F statistics of a group of frames or sequences.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[allow(non_snake_case)]
pub struct Summary {
    /// Mean J.
    pub J_mean: f64,
    /// J recall (fraction of frames with J > 0.5).
    pub J_recall: f64,
    /// J decay (first quarter minus last quarter).
    pub J_decay: f64,
    /// Mean F.
    pub F_mean: f64,
    /// F recall.
    pub F_recall: f64,
    /// F decay.
    pub F_decay: f64,
    /// (J_mean + F_mean) / 2.
    pub JF_mean: f64,
}

impl Summary {
    /// Statistics of one sequence from its per-frame scores.
    pub fn of_frames(frames: &[FrameScore]) -> Self {
        let j: Vec<f64> = frames.iter().map(|s| s.j).collect();
        let f: Vec<f64> = frames.iter().map(|s| s.f).collect();
        Self::from_stats(statistics(&j), statistics(&f))
    }

    fn from_stats(j: Stats, f: Stats) -> Self {
        Self {
            J_mean: j.mean,
            J_recall: j.recall,
            J_decay: j.decay,
            F_mean: f.mean,
            F_recall: f.recall,
            F_decay: f.decay,
            JF_mean: (j.mean + f.mean) / 2.0,
        }
    }

    /// The toolkit's overall figures: each statistic averaged over the sequences.
    pub fn average<'a>(items: impl IntoIterator<Item = &'a Summary>) -> Self {
        let mut acc = [0.0f64; 6];
        let mut n = 0usize;
        for s in items {
            for (a, v) in acc.iter_mut().zip([
                s.J_mean, s.J_recall, s.J_decay, s.F_mean, s.F_recall, s.F_decay,
            ]) {
                *a += v;
            }
            n += 1;
        }
        let d = if n == 0 { f64::NAN } else { n as f64 };
        let [jm, jr, jd, fm, fr, fd] = acc.map(|a| a / d);
        Self {
            J_mean: jm,
            J_recall: jr,
            J_decay: jd,
            F_mean: fm,
            F_recall: fr,
            F_decay: fd,
            JF_mean: (jm + fm) / 2.0,
        }
    }
}

/// Scores of one sequence (or one expression of a video).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SequenceReport {
    /// Per-frame J and F, in frame order.
    pub frames: Vec<FrameScore>,
    /// Statistics over `frames`.
    #[serde(flatten)]
    pub summary: Summary,
}

impl SequenceReport {
    /// Report of one sequence from its per-frame scores.
    pub fn new(frames: Vec<FrameScore>) -> Self {
        let summary = Summary::of_frames(&frames);
        Self { frames, summary }
    }
}

/// A whole evaluation: per sequence, optionally per video, and overall.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Report {
    /// Per sequence (for dataset runs: per expression, keyed `video/expression`).
    pub sequences: BTreeMap<String, SequenceReport>,
    /// Per video (dataset runs only): the average of its expressions.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub videos: BTreeMap<String, Summary>,
    /// Averages over all sequences.
    pub overall: Summary,
}

impl Report {
    /// Builds the report; the overall figures average the sequences.
    pub fn new(sequences: BTreeMap<String, SequenceReport>) -> Self {
        let overall = Summary::average(sequences.values().map(|s| &s.summary));
        Self {
            sequences,
            videos: BTreeMap::new(),
            overall,
        }
    }

    /// Adds per-video averages, grouping sequences by the part of their key before the first `/`.
    pub fn with_videos(mut self) -> Self {
        let mut groups: BTreeMap<String, Vec<Summary>> = BTreeMap::new();
        for (k, s) in &self.sequences {
            let video = k.split('/').next().unwrap_or(k).to_string();
            groups.entry(video).or_default().push(s.summary);
        }
        self.videos = groups
            .into_iter()
            .map(|(k, v)| (k, Summary::average(v.iter())))
            .collect();
        self
    }

    /// Writes `report.json` and `report.csv` into `dir` (created if missing).
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let json = serde_json::to_string_pretty(self)
            .map_err(|e| Error::Eval(format!("cannot serialise report: {e}")))?;
        let jp = dir.join("report.json");
        std::fs::write(&jp, json).map_err(|e| Error::io(&jp, e))?;
        let cp = dir.join("report.csv");
        std::fs::write(&cp, self.to_csv()).map_err(|e| Error::io(&cp, e))?;
        Ok(())
    }

    /// CSV with one row per sequence, then per video (`video:` prefix), then `overall`.
    pub fn to_csv(&self) -> String {
        let mut s =
            String::from("name,frames,J_mean,J_recall,J_decay,F_mean,F_recall,F_decay,JF_mean\n");
        let row = |s: &mut String, name: &str, n: usize, m: &Summary| {
            s.push_str(&format!(
                "{},{},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6}\n",
                csv_field(name),
                n,
                m.J_mean,
                m.J_recall,
                m.J_decay,
                m.F_mean,
                m.F_recall,
                m.F_decay,
                m.JF_mean
            ));
        };
        for (k, v) in &self.sequences {
            row(&mut s, k, v.frames.len(), &v.summary);
        }
        for (k, v) in &self.videos {
            row(&mut s, &format!("video:{k}"), 0, v);
        }
        let total = self.sequences.values().map(|v| v.frames.len()).sum();
        row(&mut s, "overall", total, &self.overall);
        s
    }

    /// Human-readable one-line summary.
    pub fn headline(&self) -> String {
        let o = &self.overall;
        format!(
            "{} sequences: J&F {:.4}  J {:.4} (recall {:.4}, decay {:.4})  F {:.4} (recall {:.4}, decay {:.4})",
            self.sequences.len(),
            o.JF_mean,
            o.J_mean,
            o.J_recall,
            o.J_decay,
            o.F_mean,
            o.F_recall,
            o.F_decay
        )
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}
