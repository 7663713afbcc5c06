//! Sources standing in for cameras: one that appears after start-up ([`Late`]) and the synthetic
//! pattern paced like a camera ([`synthetic`]), for the pipeline and allocation tests.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use referdino::camera::{open_source, Frame, FrameSource, SourceOptions};

/// A source that delivers nothing until `open` is raised (a camera that appears after start-up).
pub struct Late {
    /// The camera it becomes.
    pub inner: Box<dyn FrameSource>,
    /// Raised when the camera appears.
    pub open: Arc<AtomicBool>,
}

impl FrameSource for Late {
    fn describe(&self) -> String {
        "late synthetic".into()
    }

    fn next_frame(&mut self) -> referdino::Result<Option<Frame<'_>>> {
        while !self.open.load(Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        self.inner.next_frame()
    }
}

/// The synthetic pattern at `(w, h)`, 60 fps, paced like a camera.
pub fn synthetic((w, h): (u32, u32)) -> Box<dyn FrameSource> {
    let opts = SourceOptions {
        realtime: true,
        fps: 60,
        ..SourceOptions::default()
    };
    open_source(&format!("synthetic:{w}x{h}@60"), &opts).unwrap()
}
