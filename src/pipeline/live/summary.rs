//! The end of a run: the summary, and the process-wide Ctrl-C flag.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use crate::pipeline::session::VideoResult;
use crate::pipeline::stream::FrameResult;
use crate::pipeline::timing::{Stage, StageTimes};

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunSummary {
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
}

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
        let mut s = format!(
            "summary: {} frames processed, {} dropped, {} captured from {}; {:.1} s, {:.2} fps\n",
            self.frames_processed,
            self.frames_dropped,
            self.frames_captured,
            self.source,
            self.seconds,
            self.fps()
        );
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
        s
    }
}

/// The process's Ctrl-C flag, with the handler installed on first use: the first Ctrl-C sets the
/// flag (a runtime given it stops after the current frame), a second one exits at once with status
/// 130 (an engine call can take seconds).
pub fn interrupt_flag() -> Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        let f = flag.clone();
        let r = ctrlc::set_handler(move || {
            if f.swap(true, Ordering::SeqCst) {
                eprintln!("\ninterrupted twice; exiting now");
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
