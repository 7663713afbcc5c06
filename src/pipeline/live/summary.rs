//! The end of a run: the summary, and the process-wide Ctrl-C flag.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use crate::camera::SourceHealth;
use crate::pipeline::commands::InputSize;
use crate::pipeline::session::VideoResult;
use crate::pipeline::stream::FrameResult;
use crate::pipeline::timing::{Stage, StageTimes};

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    /// The stream's index (its place among the configured sources).
    pub stream: usize,
    /// Source description.
    pub source: String,
    /// Frames the source delivered.
    pub frames_captured: u64,
    /// Frames run through the session.
    pub frames_processed: u64,
    /// Frames dropped because inference was busy (latest frame wins).
    pub frames_dropped: u64,
    /// Wall time of the loop.
    pub seconds: f64,
    /// Per-stage latencies.
    pub times: StageTimes,
    /// The caption of the active prompt at the end.
    pub caption: Option<String>,
    /// The last frame's reported tracks.
    pub last: FrameResult,
    /// The stream re-scored as one clip (offline-equivalent), when asked for and `T ≤ W`.
    pub finalized: Option<VideoResult>,
    /// Overlay GIF, with a save directory.
    pub gif: Option<PathBuf>,
    /// Live 0/1 masks per frame, when asked for.
    pub masks: Vec<Vec<u8>>,
    /// Runs with several sources: the other streams' summaries, ascending index (this one is the
    /// lowest index's; a stream whose source never opened has an entry saying so, with no frames).
    pub streams: Vec<RunSummary>,
    /// Frames whose processing failed (logged; the loop went on).
    pub frames_failed: u64,
    /// Frames a sink failed to take (e.g. a full disk under the save directory).
    pub sink_errors: u64,
    /// Re-opens, failures and outages of the source.
    pub source_health: SourceHealth,
    /// Frames resampled to the stream's size after the source changed resolution.
    pub frames_resized: u64,
    /// The model input the stream's frames resized to (its engine set's input size; `None` for a
    /// stream that never opened).
    pub input: Option<InputSize>,
}

/// The error of a run that ended early (a source failed, too many frames failed): why, and what
/// the run did until then (the CLI still writes it as `--summary-json`, with the reason).
#[derive(Debug)]
pub struct EndedEarly {
    /// Why the run ended.
    pub why: String,
    /// The summary up to the end, as a run that ended normally returns it.
    pub summary: Box<RunSummary>,
}

impl std::fmt::Display for EndedEarly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the run ended early: {}", self.why)
    }
}

impl std::error::Error for EndedEarly {}

impl RunSummary {
    /// Processed frames per second over the run.
    pub fn fps(&self) -> f64 {
        if self.seconds > 0.0 {
            self.frames_processed as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// The human-readable summary (frames, dropped, fps, per-stage latency mean/p50/p95).
    pub fn text(&self) -> String {
        let input = match self.input {
            Some(i) => format!(" (model input {}x{})", i.width, i.height),
            None => String::new(),
        };
        let mut s = format!(
            "summary: {} frames processed, {} dropped, {} captured from {}{input}; {:.1} s, {:.2} fps\n",
            self.frames_processed,
            self.frames_dropped,
            self.frames_captured,
            self.source,
            self.seconds,
            self.fps()
        );
        let h = &self.source_health;
        if h.failures > 0 || self.frames_resized > 0 {
            s.push_str(&format!(
                "source: {} failures, {} re-opens, longest outage {:.0} ms, {:.0} ms in all; {} frames resampled after a resolution change\n",
                h.failures,
                h.reconnects,
                h.longest_outage.as_secs_f64() * 1e3,
                h.total_outage.as_secs_f64() * 1e3,
                self.frames_resized
            ));
        }
        if self.frames_failed > 0 || self.sink_errors > 0 {
            s.push_str(&format!(
                "errors: {} frames failed, {} sink errors\n",
                self.frames_failed, self.sink_errors
            ));
        }
        s.push_str("latency ms        mean      p50      p95      max    count\n");
        for st in Stage::ALL {
            let h = self.times.get(st);
            s.push_str(&format!(
                "  {:<10} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8}\n",
                st.name(),
                h.mean_ms(),
                h.quantile_ms(0.5),
                h.quantile_ms(0.95),
                h.max_ms(),
                h.count()
            ));
        }
        for other in &self.streams {
            s.push_str(&format!("stream {}: {}", other.stream, other.text()));
        }
        s
    }

    /// The summary as JSON for scripts and monitoring (`run --summary-json`): counts, rate, per-stage
    /// latency (mean, p50, p95, max in ms), the source's health, the model input size (`input`:
    /// `{"width", "height"}`, `null` for a stream that never opened), the last frame's caption, and the
    /// other streams' summaries under `streams` (masks and the finalized clip are left out).
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        let mut latency = serde_json::Map::new();
        for st in Stage::ALL {
            let h = self.times.get(st);
            latency.insert(
                st.name().to_string(),
                json!({
                    "mean_ms": h.mean_ms(),
                    "p50_ms": h.quantile_ms(0.5),
                    "p95_ms": h.quantile_ms(0.95),
                    "max_ms": h.max_ms(),
                    "count": h.count(),
                }),
            );
        }
        let h = &self.source_health;
        json!({
            "stream": self.stream,
            "source": self.source,
            "input": self.input.map(|i| json!({"width": i.width, "height": i.height})),
            "frames_captured": self.frames_captured,
            "frames_processed": self.frames_processed,
            "frames_dropped": self.frames_dropped,
            "frames_failed": self.frames_failed,
            "frames_resized": self.frames_resized,
            "sink_errors": self.sink_errors,
            "seconds": self.seconds,
            "fps": self.fps(),
            "latency": latency,
            "source_health": {
                "failures": h.failures,
                "reconnects": h.reconnects,
                "longest_outage_ms": h.longest_outage.as_secs_f64() * 1e3,
                "total_outage_ms": h.total_outage.as_secs_f64() * 1e3,
            },
            "caption": self.caption,
            "streams": self.streams.iter().map(RunSummary::to_json).collect::<Vec<_>>(),
        })
    }
}

/// The process's stop flag, with the handler installed on first use: the first SIGINT (Ctrl-C),
/// SIGTERM or SIGHUP sets the flag (a runtime given it stops after the current frame, so the ring
/// stays consistent, the socket file is removed and the summary printed); a second one exits at once
/// with status 130 (an engine call can take seconds).
pub fn interrupt_flag() -> Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        let f = flag.clone();
        let r = ctrlc::set_handler(move || {
            if f.swap(true, Ordering::SeqCst) {
                eprintln!("\nsignalled twice; exiting now");
                std::process::exit(130);
            }
        });
        if let Err(e) = r {
            log::warn!("Ctrl-C handler not installed: {e}");
        }
        flag
    })
    .clone()
}
