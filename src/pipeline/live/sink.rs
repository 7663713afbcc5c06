//! Where a stream's results go. Every processed frame is handed to each [`Sink`] of the stream with
//! the label mask the step produced (when the stream has a shared-memory mask ring, the ring's newly
//! committed slot itself: the step wrote the mask there in place); sinks also see the periodic
//! status, every command reply, and the end of the run. Built in: overlays ([`OverlaySink`]), the
//! collected masks of the summary ([`MaskCollector`]) and the stderr status ([`StderrStatus`]). Command replies themselves go back where each command came from
//! (stdout, its socket connection, or the caller of [`super::Runtime::command`]).

use std::path::PathBuf;

use anyhow::Context;
use image::RgbImage;

use super::status::Status;
use super::RunSummary;
use crate::output::overlay::{
    draw_overlay_on, gif_frame, write_gif, write_png, OverlayStyle, Track,
};
use crate::output::ring::MAX_TRACKS;
use crate::pipeline::commands::{ObjectInfo, Reply, Request};
use crate::pipeline::stream::FrameResult;

/// One processed frame, as the sinks see it.
#[derive(Debug, Clone, Copy)]
pub struct FrameOutput<'a> {
    /// The stream (source) the frame came from, 0 in single-source runs.
    pub stream: usize,
    /// Frame number from the source.
    pub frame_id: u64,
    /// Capture time.
    pub timestamp_ns: u64,
    /// Frame width in pixels.
    pub width: u32,
    /// Frame height in pixels.
    pub height: u32,
    /// The frame, packed RGB. `None` when it arrived in another layout (a device stream takes YUYV
    /// and BGR as the camera delivers them) and no sink asked for RGB ([`Sink::needs_rgb`]).
    pub rgb: Option<&'a [u8]>,
    /// Label mask at frame size: 0 = background, `k + 1` = reported track `k`. With a mask ring,
    /// this is the bitmap of the slot just committed for this frame (read in place, not a copy).
    pub mask: &'a [u8],
    /// The reported tracks (each names its object).
    pub result: &'a FrameResult,
    /// The objects' captions joined by `"; "`, if there is any object.
    pub caption: Option<&'a str>,
    /// The stream's objects (id and prompt), ascending id.
    pub objects: &'a [ObjectInfo],
}

/// A consumer of a stream's results. `frame` runs on the loop's thread for every processed frame:
/// implementations that sit on the per-frame path must not allocate in steady state.
pub trait Sink: Send {
    /// Short name for logs (`ring`, `overlay`, ...).
    fn name(&self) -> &str;
    /// One processed frame. An error is logged and the run goes on.
    fn frame(&mut self, out: &FrameOutput<'_>) -> anyhow::Result<()>;
    /// Whether [`Sink::frame`] reads [`FrameOutput::rgb`] (it then always gets the frame as RGB,
    /// converted once per frame for all sinks when the stream took another layout).
    fn needs_rgb(&self) -> bool {
        false
    }
    /// A periodic status report.
    fn status(&mut self, _status: &Status) {}
    /// A command was applied (the reply has already been sent to where the command came from).
    fn reply(&mut self, _request: &Request, _reply: &Reply) {}
    /// The run ended; the sink may add what it produced to the summary.
    fn finish(&mut self, _summary: &mut RunSummary) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Writes each reported track's label ("id: prompt") into `labels` (kept from frame to frame, so
/// the strings' buffers are reused).
pub(crate) fn track_labels(out: &FrameOutput<'_>, labels: &mut Vec<String>) {
    use std::fmt::Write;
    let tracks = &out.result.tracks;
    if labels.len() < tracks.len() {
        labels.resize_with(tracks.len(), String::new);
    }
    for (s, t) in labels.iter_mut().zip(tracks.iter()) {
        s.clear();
        let p = out
            .objects
            .iter()
            .find(|o| o.id == t.object)
            .map_or("", |o| o.prompt.as_str());
        let _ = write!(s, "{}: {p}", t.object);
    }
}

/// The frame's tracks as an overlay draws them: each object in its own colour (its id picks it),
/// labelled by `labels` ([`track_labels`]), its pixels those of the label mask equal to its place
/// + 1 (one shared mask, drawn in one pass; nothing allocated).
pub(crate) fn overlay_tracks<'a>(
    out: &FrameOutput<'a>,
    labels: &'a [String],
) -> heapless::Vec<Track<'a>, MAX_TRACKS> {
    let mut v = heapless::Vec::new();
    for (k, (t, l)) in out.result.tracks.iter().zip(labels).enumerate() {
        // At most MAX_TRACKS tracks (the result's own capacity), so the push always fits.
        let _ = v.push(Track {
            id: t.object as u32,
            mask: out.mask,
            mask_label: Some(k as u8 + 1),
            score: Some(t.score),
            bbox: Some(t.bbox),
            label: Some(l.as_str()),
        });
    }
    v
}

/// Width of the overlay GIF's frames (taller frames keep their aspect).
const GIF_WIDTH: u32 = 640;

/// Overlays for a save directory: one PNG per frame, and an animated GIF of the first frames at the
/// end.
pub struct OverlaySink {
    dir: PathBuf,
    /// The frame being drawn, reused.
    canvas: RgbImage,
    /// Each track's label text, reused.
    labels: Vec<String>,
    gif_frames: Vec<RgbImage>,
    gif_delay_ms: u32,
    written: usize,
}

impl OverlaySink {
    /// Creates `dir`; the GIF plays at `fps`.
    pub fn create(dir: PathBuf, fps: u32) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(OverlaySink {
            dir,
            canvas: RgbImage::new(0, 0),
            labels: Vec::new(),
            gif_frames: Vec::new(),
            gif_delay_ms: 1000 / fps.max(1),
            written: 0,
        })
    }
}

impl Sink for OverlaySink {
    fn name(&self) -> &str {
        "overlay"
    }

    fn needs_rgb(&self) -> bool {
        true
    }

    fn frame(&mut self, out: &FrameOutput<'_>) -> anyhow::Result<()> {
        let caption = out.caption.unwrap_or("(no prompt)");
        let rgb = out.rgb.context("the frame could not be had as RGB")?;
        // One canvas reused frame after frame (re-made only when the frame size changes).
        if self.canvas.dimensions() != (out.width, out.height) {
            self.canvas = RgbImage::new(out.width, out.height);
        }
        if rgb.len() != self.canvas.len() {
            anyhow::bail!(
                "overlay frame size: {} bytes for {}x{} RGB",
                rgb.len(),
                out.width,
                out.height
            );
        }
        self.canvas.copy_from_slice(rgb);
        track_labels(out, &mut self.labels);
        let tracks = overlay_tracks(out, &self.labels);
        draw_overlay_on(&mut self.canvas, &tracks, caption, &OverlayStyle::default())?;
        let drawn = &self.canvas;
        // Numbered by frame even when a write fails (a full disk), so later frames do not retry
        // the same name.
        let p = self.dir.join(format!("{:05}.png", self.written));
        self.written += 1;
        // Written through an explicitly flushed writer: `save` drops its buffer unflushed and so
        // loses the error of the last write (a full disk).
        let saved = write_png(&p, drawn).with_context(|| format!("writing {}", p.display()));
        // Kept at the GIF's width, not the camera's: 300 full-HD frames would hold 1.8 GB.
        if self.gif_frames.len() < crate::limits::GIF_FRAMES {
            self.gif_frames.push(gif_frame(drawn, GIF_WIDTH));
        }
        saved
    }

    fn finish(&mut self, summary: &mut RunSummary) -> anyhow::Result<()> {
        if self.gif_frames.is_empty() {
            return Ok(());
        }
        let p = self.dir.join("overlay.gif");
        write_gif(&p, &self.gif_frames, self.gif_delay_ms, GIF_WIDTH)?;
        self.gif_frames.clear();
        summary.gif = Some(p);
        Ok(())
    }
}

/// Keeps every frame's 0/1 mask for [`RunSummary::masks`] (allocates per frame: for short clips).
#[derive(Default)]
pub struct MaskCollector {
    masks: Vec<Vec<u8>>,
}

impl Sink for MaskCollector {
    fn name(&self) -> &str {
        "masks"
    }

    fn frame(&mut self, out: &FrameOutput<'_>) -> anyhow::Result<()> {
        self.masks
            .push(out.mask.iter().map(|&l| (l != 0) as u8).collect());
        Ok(())
    }

    fn finish(&mut self, summary: &mut RunSummary) -> anyhow::Result<()> {
        summary.masks = std::mem::take(&mut self.masks);
        Ok(())
    }
}

/// Progress bar / status line / log line on stderr (the CLI's presentation).
pub struct StderrStatus {
    bar: Option<indicatif::ProgressBar>,
    tty: bool,
    prefix: String,
}

impl StderrStatus {
    /// A progress bar over `len` frames (capped at `max_frames`) when the length is known, else a
    /// status line (terminal) or log lines.
    pub fn new(len: Option<u64>, max_frames: Option<u64>) -> Self {
        let bar = len.map(|n| {
            let n = max_frames.map_or(n, |m| m.min(n));
            let pb = indicatif::ProgressBar::new(n);
            pb.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} frames {elapsed_precise} eta {eta} {msg}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            pb
        });
        StderrStatus {
            bar,
            tty: super::status::stderr_is_tty(true),
            prefix: String::new(),
        }
    }

    /// Log lines prefixed with the stream, for runs with several sources (no bar or redrawn line,
    /// which several streams would overwrite).
    pub fn for_stream(index: usize) -> Self {
        StderrStatus {
            bar: None,
            tty: false,
            prefix: format!("stream {index}: "),
        }
    }
}

impl Sink for StderrStatus {
    fn name(&self) -> &str {
        "status"
    }

    fn frame(&mut self, _out: &FrameOutput<'_>) -> anyhow::Result<()> {
        if let Some(pb) = &self.bar {
            pb.inc(1);
        }
        Ok(())
    }

    fn status(&mut self, status: &Status) {
        let line = status.line();
        if let Some(pb) = &self.bar {
            pb.set_message(line);
        } else if self.tty {
            eprint!("\r\x1b[2K{line}");
        } else {
            log::info!("{}{} frames | {line}", self.prefix, status.processed);
        }
    }

    fn finish(&mut self, _summary: &mut super::RunSummary) -> anyhow::Result<()> {
        if let Some(pb) = self.bar.take() {
            pb.finish_and_clear();
        } else if self.tty {
            eprintln!();
        }
        Ok(())
    }
}
