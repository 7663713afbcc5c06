//! The periodic status of a stream (frames per second, drops, per-stage latency since the last
//! status) and its stderr presentation: a progress bar for sources of known length, a status line
//! redrawn in place on a terminal, a log line otherwise.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use crate::pipeline::timing::{Stage, StageTimes};

/// One status report.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Status {
    /// Frames processed so far.
    pub processed: u64,
    /// Frames per second since the previous report.
    pub fps: f64,
    /// Frames dropped so far (latest frame wins).
    pub dropped: u64,
    /// Mean latency in ms of each stage since the previous report, in [`Stage::ALL`] order.
    pub stage_ms: [f64; 7],
}

impl Status {
    /// `12.3 fps | dropped 4 | frame 50.1 tracker 0.2 … ms` (every stage but the text engine).
    pub fn line(&self) -> String {
        let mut line = format!("{:.1} fps | dropped {} |", self.fps, self.dropped);
        for (k, st) in Stage::ALL.iter().enumerate().skip(1) {
            line.push_str(&format!(" {} {:.1}", st.name(), self.stage_ms[k]));
        }
        line.push_str(" ms");
        line
    }
}

/// Produces a [`Status`] every interval from the session's stage times.
#[derive(Debug)]
pub struct StatusMeter {
    every: Duration,
    since: Instant,
    at_processed: u64,
    prev_sums: [(f64, u64); 7],
    fps: f64,
}

impl StatusMeter {
    /// A meter reporting every `every`.
    pub fn new(every: Duration) -> Self {
        StatusMeter {
            every,
            since: Instant::now(),
            at_processed: 0,
            prev_sums: [(0.0, 0); 7],
            fps: 0.0,
        }
    }

    /// Frames per second at the last report (0 before the first).
    pub fn fps(&self) -> f64 {
        self.fps
    }

    /// A report when the interval has passed since the last one.
    pub fn poll(&mut self, processed: u64, dropped: u64, times: &StageTimes) -> Option<Status> {
        let since = self.since.elapsed();
        if since < self.every {
            return None;
        }
        self.fps = (processed - self.at_processed) as f64 / since.as_secs_f64();
        let mut stage_ms = [0.0; 7];
        for (k, st) in Stage::ALL.iter().enumerate().skip(1) {
            let h = times.get(*st);
            let (s0, c0) = self.prev_sums[k];
            let n = h.count() - c0;
            stage_ms[k] = if n > 0 {
                (h.sum_ms() - s0) / n as f64
            } else {
                0.0
            };
            self.prev_sums[k] = (h.sum_ms(), h.count());
        }
        self.since = Instant::now();
        self.at_processed = processed;
        Some(Status {
            processed,
            fps: self.fps,
            dropped,
            stage_ms,
        })
    }
}

/// Whether status goes to an interactive terminal (`progress` on and stderr is a terminal).
pub fn stderr_is_tty(progress: bool) -> bool {
    std::io::stderr().is_terminal() && progress
}

/// Status interval: twice a second on a terminal, every five seconds in logs.
pub fn status_interval(tty: bool) -> Duration {
    if tty {
        Duration::from_millis(500)
    } else {
        Duration::from_secs(5)
    }
}
