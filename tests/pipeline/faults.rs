//! Faults injected into the live runtime, not imagined: a source that fails on a schedule (EIO,
//! ENODEV with failed re-opens, a stall, an unsupported pixel format, end of stream, a resolution
//! change) recovers each time in under 2 s without a restart and the summary counts what happened;
//! an engine that fails for a few frames is reported and the loop goes on, one that keeps failing ends
//! the run with an error after the configured count; a full disk under the save directory (writes
//! into `/dev/full`, which fails every write with ENOSPC) is reported while the other outputs go on.

use crate::support::common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use referdino::backend::{Engine, TensorSpec, View, ViewMut};
use referdino::config::ModelConfig;
use referdino::graph::engines::{ExportOptions, Geometry};
use referdino::pipeline::live::{FrameOutput, Runtime, RuntimeConfig, Sink};
use referdino::pipeline::session::EngineSet;
use referdino::pipeline::stream::StreamConfig;
use referdino::weights::Checkpoint;

const W: u32 = 118;
const H: u32 = 70;

fn config(source: &str) -> RuntimeConfig {
    let mut c = RuntimeConfig::new(source);
    c.short_side = H;
    c.window = Some(4);
    c.max_text = Some(16);
    c.threads = Some(2);
    c.prompt = Some("the moving square".into());
    c
}

/// Records when each frame reached the sinks, and its size.
struct Clock(Arc<Mutex<Vec<(Instant, u32, u32)>>>);

impl Sink for Clock {
    fn name(&self) -> &str {
        "clock"
    }

    fn frame(&mut self, out: &FrameOutput<'_>) -> anyhow::Result<()> {
        self.0
            .lock()
            .unwrap()
            .push((Instant::now(), out.width, out.height));
        Ok(())
    }
}

#[test]
fn injected_source_faults_each_recover_within_two_seconds_and_are_counted() {
    // Six faults, 4 frames apart, on a 30 fps synthetic camera.
    let plan = "eio@4,enodev@8=2,stall@12=1200ms,format@16,eof@20,resize@24=96x54";
    let mut c = config(&format!("faulty:{plan}:synthetic:{W}x{H}@30"));
    c.max_frames = Some(32);
    let mut rt = Runtime::new(c).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    rt.add_sink(Box::new(Clock(seen.clone())));
    let t0 = Instant::now();
    let s = rt.run().unwrap();
    let text = s.text();

    assert_eq!(s.frames_processed, 32, "{text}");
    assert_eq!(s.frames_failed, 0, "{text}");
    let h = s.source_health;
    // eio, enodev + its 2 failed re-opens, stall, format, eof.
    assert_eq!(h.failures, 7, "{text}");
    assert_eq!(h.reconnects, 5, "{text}");
    assert!(
        h.longest_outage < Duration::from_secs(2),
        "longest time without frames {:?}\n{text}",
        h.longest_outage
    );
    assert!(s.frames_resized >= 4, "{text}");
    assert!(text.contains("7 failures, 5 re-opens"), "{text}");

    // The sinks saw every frame at the stream's size, never further apart than the longest outage
    // plus a few frames' processing. Processing is measured in this run (the median gap), not assumed:
    // on a loaded machine a debug-build frame can take a second.
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 32);
    assert!(seen.iter().all(|&(_, w, h)| (w, h) == (W, H)));
    let mut gaps: Vec<Duration> = seen.windows(2).map(|p| p[1].0 - p[0].0).collect();
    gaps.sort();
    let (gap, median) = (gaps[gaps.len() - 1], gaps[gaps.len() / 2]);
    let bound = h.longest_outage + median * 3 + Duration::from_millis(500);
    assert!(
        gap < bound,
        "largest gap {gap:?}, bound {bound:?} (outage {:?}, median gap {median:?})",
        h.longest_outage
    );
    assert!(t0.elapsed() < Duration::from_secs(120));
}

#[test]
fn a_source_that_keeps_failing_is_retried_until_stopped() {
    // ENODEV with 1000 failed re-opens: the camera stays away; the stop flag ends the back-off.
    let mut c = config(&format!("faulty:enodev@2=1000:synthetic:{W}x{H}@30"));
    c.max_frames = Some(100);
    let rt = Runtime::new(c).unwrap();
    let stop = rt.stop_flag();
    let t = std::thread::spawn(move || rt.run());
    std::thread::sleep(Duration::from_secs(3));
    let t_stop = Instant::now();
    stop.store(true, Ordering::SeqCst);
    let s = t.join().unwrap().unwrap();
    assert!(
        t_stop.elapsed() < Duration::from_secs(2),
        "stopping took {:?}",
        t_stop.elapsed()
    );
    assert!((1..=2).contains(&s.frames_processed), "{}", s.text());
    assert!(s.source_health.failures >= 3, "{}", s.text());
    assert_eq!(s.source_health.reconnects, 0);
}

#[test]
fn bad_fault_plans_are_clear_errors() {
    let e = Runtime::new(config("faulty:boom@3:synthetic"))
        .err()
        .expect("a bad plan is refused");
    assert!(format!("{e:#}").contains("bad fault `boom@3`"), "{e:#}");
}

/// Wraps an engine and fails the runs numbered in `fail` (counted from 0 over the engine's life).
struct Failing {
    inner: Box<dyn Engine>,
    runs: Arc<AtomicU64>,
    fail: fn(u64) -> bool,
}

impl Engine for Failing {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn inputs(&self) -> &[TensorSpec] {
        self.inner.inputs()
    }
    fn outputs(&self) -> &[TensorSpec] {
        self.inner.outputs()
    }
    fn run(&mut self, inputs: &[View<'_>], outputs: &mut [ViewMut<'_>]) -> referdino::Result<()> {
        let n = self.runs.fetch_add(1, Ordering::SeqCst);
        if (self.fail)(n) {
            return Err(referdino::Error::Backend(format!(
                "injected failure of run {n}"
            )));
        }
        self.inner.run(inputs, outputs)
    }
}

fn engines_failing(fail: fn(u64) -> bool) -> (EngineSet, StreamConfig, Arc<AtomicU64>) {
    let ck = Checkpoint::load(&common::fixture("referdino-tiny/weights.safetensors")).unwrap();
    let cfg = ModelConfig::from_file(&common::fixture("referdino-tiny/config.json")).unwrap();
    let geo = Geometry {
        height: H as usize,
        width: W as usize,
        max_text: 16,
        window: 4,
    };
    let mut e = EngineSet::cpu(&ck, &cfg, &geo, &ExportOptions::default()).unwrap();
    let runs = Arc::new(AtomicU64::new(0));
    e.frame = Box::new(Failing {
        inner: e.frame,
        runs: runs.clone(),
        fail,
    });
    (e, StreamConfig::for_model(&cfg), runs)
}

#[test]
fn engine_failures_are_reported_and_a_persistent_one_ends_the_run_with_an_error() {
    // Runs 3, 4 and 5 of the frame engine fail: three frames are lost, the run goes on.
    let (e, s, runs) = engines_failing(|n| (3..6).contains(&n));
    let mut c = config(&format!("synthetic:{W}x{H}@60"));
    c.max_frames = Some(8);
    let sum = Runtime::with_engines(c, e, s).unwrap().run().unwrap();
    assert_eq!(sum.frames_processed, 8, "{}", sum.text());
    assert_eq!(sum.frames_failed, 3, "{}", sum.text());
    assert_eq!(runs.load(Ordering::SeqCst), 11);
    assert!(sum.text().contains("3 frames failed"), "{}", sum.text());

    // From run 2 on every frame fails: the run ends after 5 in a row, with an error saying why.
    let (e, s, runs) = engines_failing(|n| n >= 2);
    let mut c = config(&format!("synthetic:{W}x{H}@60"));
    c.max_frames = Some(100);
    c.max_failed_frames = 5;
    let err = Runtime::with_engines(c, e, s)
        .unwrap()
        .run()
        .expect_err("a persistent failure is an error");
    let msg = format!("{err:#}");
    assert!(msg.contains("5 frames in a row failed"), "{msg}");
    assert!(msg.contains("injected failure of run 6"), "{msg}");
    assert_eq!(runs.load(Ordering::SeqCst), 7);
}

#[test]
fn a_full_disk_under_the_save_dir_is_reported_and_the_other_outputs_go_on() {
    let dir = tempfile::tempdir().unwrap();
    // Frames 2 and 3 are written into /dev/full: every write fails with ENOSPC, as on a full disk.
    for k in [2, 3] {
        std::os::unix::fs::symlink("/dev/full", dir.path().join(format!("{k:05}.png"))).unwrap();
    }
    let mut c = config(&format!("synthetic:{W}x{H}@60"));
    c.max_frames = Some(6);
    c.save_dir = Some(dir.path().to_path_buf());
    c.collect_masks = true;
    let s = Runtime::new(c).unwrap().run().unwrap();
    assert_eq!(s.frames_processed, 6, "{}", s.text());
    assert_eq!(s.masks.len(), 6, "the other sinks saw every frame");
    assert_eq!(s.sink_errors, 2, "{}", s.text());
    for k in [0, 1, 4, 5] {
        let p = dir.path().join(format!("{k:05}.png"));
        assert!(image::open(&p).is_ok(), "{} unreadable", p.display());
    }
    assert!(s.gif.is_some());

    // The GIF, written at the end, onto a full disk: the run still succeeds with its summary,
    // the failure counted like a frame's.
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("/dev/full", dir.path().join("overlay.gif")).unwrap();
    let mut c = config(&format!("synthetic:{W}x{H}@60"));
    c.max_frames = Some(3);
    c.save_dir = Some(dir.path().to_path_buf());
    let s = Runtime::new(c).unwrap().run().unwrap();
    assert_eq!(s.frames_processed, 3, "{}", s.text());
    assert_eq!(s.sink_errors, 1, "{}", s.text());
    assert!(s.gif.is_none());
}

/// A GIF whose last bytes cannot be written is an error, not a truncated file reported as written
/// (the encoder's buffered writer used to drop the error of its final flush).
#[test]
fn a_gif_write_that_fails_at_the_end_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("g.gif");
    std::os::unix::fs::symlink("/dev/full", &p).unwrap();
    let frames = [image::RgbImage::new(2, 2)];
    assert!(referdino::output::overlay::write_gif(&p, &frames, 100, 0).is_err());
    let p = dir.path().join("f.png");
    std::os::unix::fs::symlink("/dev/full", &p).unwrap();
    assert!(referdino::output::overlay::write_png(&p, &frames[0]).is_err());
}

/// A frame whose head engine fails after its objects' tracker stepped and their window and clip
/// took the frame: those objects restart their tracking, so the stream stays consistent: later
/// frames run, and the clip (what `finalize` re-scores) holds exactly the frames counted since.
#[test]
fn a_frame_that_fails_part_way_leaves_no_half_advanced_object() {
    use referdino::pipeline::multi::{MultiConfig, MultiEngineSet, MultiStream, SharedEngines};
    use referdino::pipeline::post::Selection;
    let (e, s, _) = engines_failing(|_| false);
    let runs = Arc::new(AtomicU64::new(0));
    let mut e = MultiEngineSet::from(e);
    // Head run 1 (the second frame's) fails.
    e.head = Box::new(Failing {
        inner: e.head,
        runs: runs.clone(),
        fail: |n| n == 1,
    });
    let mut eng = SharedEngines::new(e, 256).unwrap();
    let mc = MultiConfig {
        tracking_alpha: s.tracking_alpha,
        keep_clip: true,
        ..MultiConfig::default()
    };
    let mut st = MultiStream::new(&eng, mc, (H as usize, W as usize)).unwrap();
    st.set_prompts(&mut eng, &["the moving square"]).unwrap();
    let mut pre = referdino::camera::Preprocessor::new(W, H, H);
    let mut mask = vec![0u8; (W * H) as usize];
    let mut rgb = vec![0u8; (W * H * 3) as usize];
    let mut outcomes = Vec::new();
    for k in 0..4 {
        referdino::camera::synthetic::Synthetic::render(k, W, H, &mut rgb);
        pre.run(&rgb, st.image_mut().unwrap()).unwrap();
        outcomes.push(st.step(&mut eng, &mut mask).is_ok());
    }
    assert_eq!(outcomes, [true, false, true, true]);
    // Frames 2 and 3 since the restart: the clip holds those two, and re-scores.
    let v = st.finalize(&mut eng, Selection::Single).unwrap();
    assert_eq!(v.masks.len(), 2);
}

/// A frame whose pixels do not fill its size (a driver's short buffer) costs that frame, not the
/// stream, and not the process: the capture thread counts it as a source failure, logs it and reads
/// on, at the stream's size and when the source changed size (which resamples it).
#[test]
fn a_malformed_frame_is_skipped_and_counted() {
    use referdino::camera::latest::Take;
    use referdino::camera::{Frame, FrameSource};
    use referdino::pipeline::live::source::{Captured, OpenedSource};
    struct Short {
        n: u64,
        buf: Vec<u8>,
    }
    impl FrameSource for Short {
        fn describe(&self) -> String {
            "short frames".into()
        }
        fn next_frame(&mut self) -> referdino::Result<Option<Frame<'_>>> {
            let n = self.n;
            self.n += 1;
            // Frames 1 (stream size) and 3 (another size) are short; 4 has another size.
            let (w, h, len) = match n {
                0 | 2 => (4, 2, 24),
                1 => (4, 2, 23),
                3 => (2, 1, 5),
                4 => (2, 1, 6),
                _ => return Ok(None),
            };
            Ok(Some(Frame::rgb(n, n, w, h, &self.buf[..len])))
        }
    }
    let src = Short {
        n: 0,
        buf: (0..24).collect(),
    };
    let cap = OpenedSource::from_source(Box::new(src), Some(5), true)
        .unwrap()
        .start(true)
        .unwrap();
    let mut buf = Captured::default();
    let mut ids = Vec::new();
    loop {
        match cap.take(&mut buf, Duration::from_secs(5)) {
            Take::Fresh => {
                assert_eq!((buf.width, buf.height, buf.pixels.len()), (4, 2, 24));
                ids.push(buf.id);
            }
            Take::Closed => break,
            t => panic!("{t:?}"),
        }
    }
    assert_eq!(ids, [0, 2, 4]);
    let totals = cap.finish();
    assert_eq!(totals.health.failures, 2);
    assert_eq!(totals.resized, 1);
}
