//! The live runtime driven as a library, without the CLI: a synthetic source, a prompt, frames
//! stepped one by one into a custom sink; every processed frame reaches the sink with the mask a
//! stream session computes on the same frame on its own, a prompt command takes effect from the next
//! frame, an empty prompt is refused without changing anything, and the stop flag ends the run with a
//! summary; a source the caller opened (`Runtime::with_source`, as the ROS 2 node's image topic)
//! drives it the same way.

use crate::support::common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::{synthetic, Late};

use referdino::camera::{open_source, Frame, FrameSource, Preprocessor, SourceOptions};
use referdino::config::ModelConfig;
use referdino::graph::engines::{ExportOptions, Geometry};
use referdino::output::ring::MaskRingReader;
use referdino::pipeline::commands::{Command, ObjectId, Reply, Request, SelectMode, Streams};
use referdino::pipeline::live::{FrameOutput, Runtime, RuntimeConfig, Sink, Step};
use referdino::pipeline::session::EngineSet;
use referdino::pipeline::stream::{StreamConfig, StreamSession};
use referdino::weights::Checkpoint;

const W: u32 = 118;
const H: u32 = 70;
const FIRST: &str = "the moving square";
const SECOND: &str = "the white block on the left";

/// What the sink saw of one frame.
#[derive(Clone)]
struct Seen {
    id: u64,
    rgb: Vec<u8>,
    mask: Vec<u8>,
    tracks: usize,
    caption: Option<String>,
}

#[derive(Default)]
struct Collected {
    frames: Vec<Seen>,
    replies: Vec<(Request, bool)>,
}

struct Collector(Arc<Mutex<Collected>>);

impl Sink for Collector {
    fn name(&self) -> &str {
        "collector"
    }

    fn frame(&mut self, out: &FrameOutput<'_>) -> anyhow::Result<()> {
        self.0.lock().unwrap().frames.push(Seen {
            id: out.frame_id,
            rgb: out.rgb.unwrap_or_default().to_vec(),
            mask: out.mask.to_vec(),
            tracks: out.result.tracks.len(),
            caption: out.caption.map(str::to_string),
        });
        Ok(())
    }

    fn reply(&mut self, request: &Request, reply: &Reply) {
        self.0
            .lock()
            .unwrap()
            .replies
            .push((request.clone(), reply.ok));
    }
}

fn config() -> RuntimeConfig {
    // Deserialised like a configuration file would be (fields left out take the defaults).
    let mut c: RuntimeConfig = serde_json::from_str(&format!(
        r#"{{"source": "synthetic:{W}x{H}@60", "short_side": {H}, "window": 4, "max_text": 16,
            "threads": 2}}"#
    ))
    .unwrap();
    c.prompt = Some(FIRST.into());
    c
}

/// Steps until `n` more frames were processed (bounded, so a stalled runtime fails instead of hanging).
fn frames(rt: &mut Runtime, n: u64) {
    let want = rt.frames_processed() + n;
    let mut steps = 0;
    while rt.frames_processed() < want {
        let s = rt.step();
        assert_ne!(s, Step::Ended, "the synthetic source does not end");
        assert_ne!(s, Step::Failed, "a frame failed");
        steps += 1;
        assert!(steps < 2000, "no frame after {steps} steps");
    }
}

fn prompt(id: u64, p: &str) -> Request {
    Request {
        id: Some(serde_json::json!(id)),
        stream: None,
        command: Command::Prompt { prompt: p.into() },
    }
}

#[test]
fn runtime_steps_into_a_custom_sink_takes_commands_and_stops_with_a_summary() {
    let mut rt = Runtime::new(config()).unwrap();
    assert_eq!(rt.frame_size(), (W, H));
    let seen = Arc::new(Mutex::new(Collected::default()));
    rt.add_sink(Box::new(Collector(seen.clone())));

    frames(&mut rt, 3);
    let first_caption = rt.caption().unwrap().to_string();
    assert!(first_caption.contains("moving square"), "{first_caption}");

    // An empty prompt is refused and changes nothing.
    let r = rt.command(&prompt(1, "  "));
    assert!(!r.ok, "an empty prompt must be refused");
    assert_eq!(rt.settings().prompt.as_deref(), Some(FIRST));
    assert_eq!(rt.caption(), Some(first_caption.as_str()));

    let r = rt.command(&prompt(2, SECOND));
    assert!(r.ok, "{:?}", r.error);
    assert_eq!(r.id, Some(serde_json::json!(2)));
    assert_eq!(rt.settings().prompt.as_deref(), Some(SECOND));
    frames(&mut rt, 3);

    rt.stop_flag().store(true, Ordering::SeqCst);
    assert_eq!(rt.step(), Step::Ended);
    assert_eq!(rt.step(), Step::Ended);
    let summary = rt.finish().unwrap();

    let got = seen.lock().unwrap();
    assert_eq!(got.frames.len(), 6, "one sink call per processed frame");
    assert_eq!(summary.frames_processed, 6);
    assert!(summary.frames_captured >= 6);
    assert!(summary.source.contains("synthetic"), "{}", summary.source);
    let last_caption = summary.caption.clone().unwrap();
    assert!(last_caption.contains("white block"), "{last_caption}");
    assert_eq!(got.replies.len(), 2, "the sink sees both replies");
    assert!(!got.replies[0].1 && got.replies[1].1);
    for w in got.frames.windows(2) {
        assert!(w[1].id > w[0].id, "frames arrive in capture order");
    }
    for (k, f) in got.frames.iter().enumerate() {
        let want = if k < 3 { &first_caption } else { &last_caption };
        assert_eq!(f.caption.as_ref(), Some(want), "frame {k}'s caption");
        assert_eq!(f.mask.len(), (W * H) as usize);
        assert!(f.tracks >= 1, "frame {k} reports a track");
        assert!(
            f.mask.iter().all(|&l| (l as usize) <= f.tracks),
            "labels name reported tracks"
        );
    }

    // The same frames through a stream session on its own give the masks the sink received.
    let ck = Checkpoint::load(&common::fixture("referdino-tiny/weights.safetensors")).unwrap();
    let cfg = ModelConfig::from_file(&common::fixture("referdino-tiny/config.json")).unwrap();
    let geo = Geometry {
        height: H as usize,
        width: W as usize,
        max_text: 16,
        window: 4,
    };
    let engines = EngineSet::cpu(&ck, &cfg, &geo, &ExportOptions::default()).unwrap();
    let mut s = StreamSession::new(
        engines,
        StreamConfig::for_model(&cfg),
        (H as usize, W as usize),
    )
    .unwrap();
    let mut pre = Preprocessor::new(W, H, H);
    let mut mask = vec![0u8; (W * H) as usize];
    s.set_prompt(FIRST).unwrap();
    for (k, f) in got.frames.iter().enumerate() {
        if k == 3 {
            s.set_prompt(SECOND).unwrap();
        }
        pre.run(&f.rgb, s.image_mut().unwrap()).unwrap();
        let r = s.step(&mut mask).unwrap();
        assert_eq!(r.tracks.len(), f.tracks, "frame {k}: tracks");
        // The runtime runs the split engines (image part, then the cross part) and this reference
        // the whole frame engine: the two graphs round differently, and the random-weight fixture's
        // mask logits sit within ~1e-5 of the threshold, so a few boundary pixels may flip (seen in
        // about one run in four). The split itself is checked numerically in tests/graph/split.rs.
        let differ = mask.iter().zip(&f.mask).filter(|(a, b)| a != b).count();
        if differ > 0 {
            eprintln!("frame {k}: {differ} of {} mask pixels differ", mask.len());
        }
        assert!(
            differ * 100 <= mask.len(),
            "frame {k}: {differ} of {} mask pixels differ from the stream session's",
            mask.len()
        );
    }
    assert_eq!(summary.last.tracks.len(), got.frames[5].tracks);
}

/// Where one frame's mask lay, the frame id, the mask and the number of tracks.
type MaskSeen = (usize, u64, Vec<u8>, usize);

/// Records where each frame's mask lies and what it holds.
struct MaskAt(Arc<Mutex<Vec<MaskSeen>>>);

impl Sink for MaskAt {
    fn name(&self) -> &str {
        "mask address"
    }

    fn frame(&mut self, out: &FrameOutput<'_>) -> anyhow::Result<()> {
        self.0.lock().unwrap().push((
            out.mask.as_ptr() as usize,
            out.frame_id,
            out.mask.to_vec(),
            out.result.tracks.len(),
        ));
        Ok(())
    }
}

#[test]
fn with_a_ring_the_step_writes_the_slot_and_the_sinks_read_it_in_place() {
    let name = format!("referdino-test-inplace-{}", std::process::id());
    let mut c = config();
    c.ring = Some(name.clone());
    c.ring_slots = 3;
    let dir = tempfile::tempdir().unwrap();
    c.save_dir = Some(dir.path().to_path_buf());
    let mut rt = Runtime::new(c).unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    rt.add_sink(Box::new(MaskAt(seen.clone())));
    let reader = MaskRingReader::open(&name).unwrap();
    let mut copy = reader.new_copy();
    let mut slots = std::collections::BTreeSet::new();
    for k in 0..4u64 {
        frames(&mut rt, 1);
        let ring = rt.streams()[0].ring().expect("the stream writes a ring");
        let newest = ring.newest_mask().unwrap();
        let got = seen.lock().unwrap();
        let (at, id, mask, tracks) = got.last().unwrap();
        // The sinks (overlays among them) got the committed slot itself, not a copy of it.
        assert_eq!(
            *at,
            newest.as_ptr() as usize,
            "frame {k}: the sinks' mask is the ring slot"
        );
        assert_eq!(rt.last_mask().as_ptr() as usize, *at);
        slots.insert(*at);
        // What another process reads is what the sinks saw.
        assert_eq!(reader.read_latest(&mut copy), Some(k));
        assert_eq!(copy.frame_id, *id);
        assert_eq!(&copy.mask, mask);
        assert_eq!(copy.tracks.len(), *tracks);
        assert!(*tracks >= 1, "frame {k} reports a track");
    }
    assert_eq!(slots.len(), 3, "frames go round the ring's three slots");
    drop(rt);
    let pngs = std::fs::read_dir(dir.path()).unwrap().count();
    assert_eq!(pngs, 4, "one overlay per frame");
}

#[test]
fn run_until_max_frames_returns_the_summary() {
    let mut c = config();
    c.max_frames = Some(2);
    c.collect_masks = true;
    let s = Runtime::new(c).unwrap().run().unwrap();
    assert_eq!(s.frames_processed, 2);
    assert_eq!(s.masks.len(), 2);
    assert!(s.masks.iter().all(|m| m.len() == (W * H) as usize));
    assert!(s.text().starts_with("summary: 2 frames processed"));
}

/// A source of the caller's own (as a ROS 2 image topic is): the synthetic pattern behind a
/// wrapper that counts the frames it delivered and ends after `limit`.
struct Counted {
    inner: Box<dyn FrameSource>,
    delivered: Arc<AtomicU64>,
    limit: u64,
}

impl FrameSource for Counted {
    fn describe(&self) -> String {
        "counted synthetic".into()
    }

    fn next_frame(&mut self) -> referdino::Result<Option<Frame<'_>>> {
        if self.delivered.load(Ordering::SeqCst) >= self.limit {
            return Ok(None);
        }
        self.delivered.fetch_add(1, Ordering::SeqCst);
        self.inner.next_frame()
    }
}

#[test]
fn with_source_runs_a_callers_source_and_reports_stats() {
    let delivered = Arc::new(AtomicU64::new(0));
    let opts = SourceOptions {
        realtime: true,
        fps: 60,
        ..SourceOptions::default()
    };
    let src = Counted {
        inner: open_source(&format!("synthetic:{W}x{H}@60"), &opts).unwrap(),
        delivered: delivered.clone(),
        limit: 10_000,
    };
    let mut c = config();
    c.source = "label only".into();
    c.max_frames = Some(3);
    let mut rt = Runtime::with_source(c, Box::new(src)).unwrap();
    assert_eq!(rt.frame_size(), (W, H));
    frames(&mut rt, 3);
    let st = rt.stats();
    assert_eq!(st.frames_processed, 3);
    assert!(
        st.frames_in >= 3 && st.source == "counted synthetic",
        "{st:?}"
    );
    assert!(st.latency_ms.contains_key("frame"), "{st:?}");
    assert_eq!(rt.step(), Step::Ended);
    let s = rt.finish().unwrap();
    assert_eq!(s.frames_processed, 3);
    assert!(delivered.load(Ordering::SeqCst) >= 3);
}

/// The synthetic pattern with an unusable frame now and then, ending in a failure.
struct Failing {
    inner: Box<dyn FrameSource>,
    n: u64,
}

impl FrameSource for Failing {
    fn describe(&self) -> String {
        "failing synthetic".into()
    }

    fn next_frame(&mut self) -> referdino::Result<Option<Frame<'_>>> {
        self.n += 1;
        match self.n {
            3 | 5 => Err(referdino::Error::Frame(format!(
                "frame {} is truncated",
                self.n
            ))),
            8.. => Err(referdino::Error::Source("the cable is cut".into())),
            _ => self.inner.next_frame(),
        }
    }
}

/// An unusable frame is skipped and counted, the stream goes on; a source that fails (rather than
/// reaching its end) ends its stream, and the run ends with its error (a non-zero exit for `run`).
#[test]
fn skipped_frames_go_on_and_a_failed_source_fails_the_run() {
    let opts = SourceOptions {
        realtime: false,
        ..SourceOptions::default()
    };
    let src = Failing {
        inner: open_source(&format!("synthetic:{W}x{H}@60"), &opts).unwrap(),
        n: 0,
    };
    let mut c = config();
    c.source = "label only".into();
    let mut rt = Runtime::with_source(c, Box::new(src)).unwrap();
    let mut steps = 0;
    while rt.step() != Step::Ended {
        steps += 1;
        assert!(steps < 4000, "the run did not end after its source failed");
    }
    let processed = rt.stats().frames_processed;
    assert!((1..=5).contains(&processed), "{processed}");
    let e = format!("{:#}", rt.finish().unwrap_err());
    assert!(
        e.contains("source failed") && e.contains("the cable is cut"),
        "{e}"
    );
}

#[test]
fn raw_frames_from_a_file_are_each_processed_and_stdin_takes_one_source_only() {
    use referdino::camera::synthetic::Synthetic;
    let dir = tempfile::tempdir().unwrap();
    // Three synthetic frames as I420 (what ffmpeg's rawvideo writes by default).
    let mut bytes = Vec::new();
    for i in 0..3 {
        let mut rgb = vec![0u8; (W * H * 3) as usize];
        Synthetic::render(i, W, H, &mut rgb);
        let (w, h) = (W as usize, H as usize);
        let luma = |p: &[u8]| {
            (16.0 + 0.257 * p[0] as f32 + 0.504 * p[1] as f32 + 0.098 * p[2] as f32).round() as u8
        };
        bytes.extend(rgb.chunks_exact(3).map(luma));
        bytes.extend(std::iter::repeat_n(128u8, w * h / 2));
    }
    let path = dir.path().join("clip.i420");
    std::fs::write(&path, &bytes).unwrap();
    let mut c = config();
    c.source = format!("raw:{W}x{H}:i420:{}", path.display());
    c.collect_masks = true;
    let s = Runtime::new(c).unwrap().run().unwrap();
    assert_eq!(
        s.frames_processed, 3,
        "a file's raw frames are each processed"
    );
    assert_eq!(s.masks.len(), 3);

    let mut c = config();
    c.source = format!("raw:{W}x{H}:rgb:-");
    c.sources = vec![format!("raw:{W}x{H}:bgr:-")];
    let e = Runtime::new(c).err().unwrap().to_string();
    assert!(
        e.contains("only one source can read its frames from stdin"),
        "{e}"
    );
}

/// A runtime on two caller sources: stream 1 delivers at once, stream 0 once the flag is raised.
fn late_and_live() -> (Runtime, Arc<std::sync::atomic::AtomicBool>) {
    let open = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let late = Late {
        inner: synthetic((W, H)),
        open: open.clone(),
    };
    let mut c = config();
    c.source = "label only".into();
    let rt = Runtime::with_caller_sources(c, vec![Box::new(late), synthetic((W, H))]).unwrap();
    (rt, open)
}

/// Of two sources the caller opened, the one that delivers first starts the run; the other stream
/// joins between two frames when its first frame arrives: until then commands addressed to it are
/// kept for when it joins (its status is refused with the reason), a sink added for it waits for
/// it, and once it joins it starts with what it was told and runs like the first one.
#[test]
fn a_stream_whose_source_comes_late_joins_the_run() {
    let (mut rt, open) = late_and_live();
    // Stream 1 delivered first; stream 0 waits.
    assert_eq!(rt.streams().len(), 1);
    assert_eq!(rt.streams()[0].index(), 1);
    assert_eq!(rt.waiting().collect::<Vec<_>>(), [(0, "late synthetic")]);
    let seen = Arc::new(Mutex::new(Collected::default()));
    rt.add_stream_sink(0, Box::new(Collector(seen.clone())))
        .unwrap();
    assert!(rt
        .add_stream_sink(2, Box::new(Collector(seen.clone())))
        .is_err());
    frames(&mut rt, 2);
    assert_eq!(rt.last_stream(), 1);
    // A prompt for the waiting stream is kept for when it joins; its status is not there yet.
    let r = rt.command(&Request {
        stream: Some(Streams::One(0)),
        ..prompt(1, SECOND)
    });
    assert!(r.ok, "{:?}", r.error);
    assert_eq!(r.stream, Some(0));
    assert_eq!(r.settings.unwrap().prompt.as_deref(), Some(SECOND));
    let r = rt.command(&Request {
        id: None,
        stream: Some(Streams::One(0)),
        command: Command::Status,
    });
    let e = r.error.unwrap_or_default();
    assert!(
        e.contains("stream 0 (late synthetic) is not open yet"),
        "{e}"
    );
    // What it was told itself wins over what joining streams start with.
    rt.set_join_prompt(Some("a cow")).unwrap();
    open.store(true, Ordering::SeqCst);
    let mut steps = 0;
    while rt.stream(0).is_none_or(|s| s.frames_processed() < 2) {
        assert_ne!(rt.step(), Step::Ended);
        steps += 1;
        assert!(steps < 4000, "stream 0 never joined");
    }
    assert_eq!(rt.waiting().count(), 0);
    let ids: Vec<usize> = rt.streams().iter().map(|s| s.index()).collect();
    assert_eq!(ids, [0, 1]);
    assert_eq!(
        rt.stream(0).unwrap().settings().prompt.as_deref(),
        Some(SECOND)
    );
    assert_eq!(
        rt.stream(1).unwrap().settings().prompt.as_deref(),
        Some(FIRST)
    );
    let got = seen.lock().unwrap().frames.len();
    assert!(
        got >= 2,
        "the sink added while stream 0 waited saw {got} frames"
    );
    let r = rt.command(&Request {
        stream: Some(Streams::One(0)),
        ..prompt(2, FIRST)
    });
    assert!(r.ok, "{:?}", r.error);
    let s = rt.finish().unwrap();
    assert_eq!(s.streams.len(), 1, "stream 0's summary, then stream 1's");
    assert_eq!((s.stream, s.streams[0].stream), (0, 1));

    // A camera that never comes: the summary says so in its place (stream 0), with no frames.
    let never = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let late = Late {
        inner: synthetic((W, H)),
        open: never.clone(),
    };
    let mut c = config();
    c.source = "label only".into();
    let mut rt = Runtime::with_caller_sources(c, vec![Box::new(late), synthetic((W, H))]).unwrap();
    frames(&mut rt, 2);
    let s = rt.finish().unwrap();
    // Lets the waiting thread end.
    never.store(true, Ordering::SeqCst);
    assert_eq!(s.stream, 0);
    assert!(s.source.contains("never opened"), "{}", s.source);
    assert_eq!((s.frames_processed, s.streams[0].frames_processed), (0, 2));
    assert!(s.text().contains("stream 1: "), "{}", s.text());
}

/// A command to every stream.
fn to_all(id: u64, command: Command) -> Request {
    Request {
        id: Some(serde_json::json!(id)),
        stream: Some(Streams::All),
        command,
    }
}

fn ids_and_prompts(rt: &Runtime, stream: usize) -> Vec<(ObjectId, String)> {
    let s = rt.stream(stream).unwrap().settings();
    s.objects.iter().map(|o| (o.id, o.prompt.clone())).collect()
}

/// Objects added, removed and the selection mode changed with `"stream": "all"` while a camera is
/// still missing reach it when it joins, with the ids the open camera gave them, so a later `add`
/// to all gives both the same new id; what one stream alone was told stays its own, the waiting
/// one included.
#[test]
fn commands_sent_to_all_reach_a_stream_that_joins_later() {
    let (mut rt, open) = late_and_live();
    assert_eq!(rt.waiting().count(), 1);
    frames(&mut rt, 1);
    let add = |prompt: &str, object| Command::Add {
        prompt: prompt.into(),
        object,
    };
    let r = rt.command(&to_all(1, add(SECOND, None)));
    assert!(r.ok, "{:?}", r.error);
    assert_eq!(r.added, [1]);
    assert!(rt.command(&to_all(2, add("a red ball", Some(5)))).ok);
    assert!(rt.command(&to_all(3, Command::Remove { object: 0 })).ok);
    // Stream 0 alone while it waits: kept for it, and the later commands to all reach it too.
    let mut only_0 = to_all(3, add("a toy", Some(3)));
    only_0.stream = Some(Streams::One(0));
    let r = rt.command(&only_0);
    assert!(r.ok, "{:?}", r.error);
    assert_eq!((r.stream, r.added.as_slice()), (Some(0), &[3][..]));
    let ids: Vec<ObjectId> = r.settings.unwrap().objects.iter().map(|o| o.id).collect();
    assert_eq!(ids, [1, 3, 5]);
    only_0.command = Command::Remove { object: 0 };
    let e = rt.command(&only_0).error.unwrap_or_default();
    assert!(
        e.contains("not open yet") && e.contains("no object 0"),
        "{e}"
    );
    assert!(rt.command(&to_all(3, add("a blue cup", Some(9)))).ok);
    assert!(rt.command(&to_all(3, Command::Remove { object: 9 })).ok);
    let r = rt.command(&to_all(
        4,
        Command::Mode {
            mode: SelectMode::Multi,
            threshold: Some(0.3),
        },
    ));
    assert!(r.ok, "{:?}", r.error);
    // Refused by the open stream: the joining one does not take it either.
    assert!(!rt.command(&to_all(5, Command::Remove { object: 9 })).ok);
    // Stream 1 alone: not for the stream that joins.
    let mut only_1 = to_all(
        6,
        Command::Replace {
            object: 5,
            prompt: "the dark ball".into(),
        },
    );
    only_1.stream = Some(Streams::One(1));
    assert!(rt.command(&only_1).ok);
    frames(&mut rt, 1);

    open.store(true, Ordering::SeqCst);
    let mut steps = 0;
    while rt.stream(0).is_none_or(|s| s.frames_processed() < 1) {
        assert_ne!(rt.step(), Step::Ended);
        steps += 1;
        assert!(steps < 4000, "stream 0 never joined");
    }
    assert_eq!(
        ids_and_prompts(&rt, 0),
        [
            (1, SECOND.to_string()),
            (3, "a toy".to_string()),
            (5, "a red ball".to_string())
        ]
    );
    assert_eq!(
        ids_and_prompts(&rt, 1),
        [(1, SECOND.to_string()), (5, "the dark ball".to_string())]
    );
    for k in [0, 1] {
        let s = rt.stream(k).unwrap().settings();
        assert_eq!(
            (s.mode, s.threshold, s.paused),
            (SelectMode::Multi, 0.3, false)
        );
        assert!(s.prompt_version >= 1, "stream {k}");
    }
    assert_eq!(
        rt.stream(0).unwrap().settings().prompt.as_deref(),
        Some("the white block on the left; a toy; a red ball")
    );
    // The next id assigned is the same on both (10: past every id given out, 9 included).
    let r = rt.command(&to_all(7, add("a green ball", None)));
    assert!(r.ok, "{:?}", r.error);
    assert_eq!(r.added, [10]);
    for (k, want) in [(0, &[1, 3, 5, 10][..]), (1, &[1, 5, 10][..])] {
        let ids: Vec<ObjectId> = ids_and_prompts(&rt, k).iter().map(|o| o.0).collect();
        assert_eq!(ids, want, "stream {k}");
    }
    assert_eq!(
        rt.join_template()
            .objects()
            .map(|o| o.0)
            .collect::<Vec<_>>(),
        [1, 5, 10]
    );
    // Both streams run their three objects.
    frames(&mut rt, 4);
    assert!(rt.stream(0).unwrap().frames_processed() >= 2);
    // A prompt set for joining streams alone leaves the open ones as they are.
    rt.set_join_prompt(Some(FIRST)).unwrap();
    assert_eq!(rt.join_template().next_id(), 1);
    assert_eq!(ids_and_prompts(&rt, 1).len(), 3);
    rt.finish().unwrap();
}

/// A folder whose first image is 1x11930466 (a small PNG) is refused by its true model input size,
/// 360x4294967760, before any preprocessing is built for it: the size used to wrap to a valid
/// looking 360x464 and the preprocessor to ask for 13 GB.
#[test]
fn a_frame_whose_model_input_overflows_is_refused_before_preprocessing() {
    let dir = tempfile::tempdir().unwrap();
    image::RgbImage::new(1, 11_930_466)
        .save(dir.path().join("0.png"))
        .unwrap();
    let mut c = RuntimeConfig::new(dir.path().to_str().unwrap());
    c.short_side = 360;
    let e = format!("{:#}", Runtime::new(c).err().expect("the size is refused"));
    assert!(
        e.contains("1x11930466 frames resize to 4294967760x360"),
        "{e}"
    );
}

/// A text engine that takes `delay` per run (a large one on a loaded machine).
struct SlowText {
    inner: Box<dyn referdino::backend::Engine>,
    delay: std::time::Duration,
}

impl referdino::backend::Engine for SlowText {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn inputs(&self) -> &[referdino::backend::TensorSpec] {
        self.inner.inputs()
    }
    fn outputs(&self) -> &[referdino::backend::TensorSpec] {
        self.inner.outputs()
    }
    fn run(
        &mut self,
        inputs: &[referdino::backend::View<'_>],
        outputs: &mut [referdino::backend::ViewMut<'_>],
    ) -> referdino::Result<()> {
        std::thread::sleep(self.delay);
        self.inner.run(inputs, outputs)
    }
}

/// A socket client sending new prompts as fast as it can (each a text-engine run) does not stop
/// the frames: they keep their turns while the flood is still being answered (before, frames ran
/// only once the command queue was empty, which a client refilling it never let happen).
#[test]
fn a_flood_of_new_prompts_does_not_stop_the_frames() {
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::AtomicUsize;
    const SENT: usize = 300;
    let ck = Checkpoint::load(&common::fixture("referdino-tiny/weights.safetensors")).unwrap();
    let cfg = ModelConfig::from_file(&common::fixture("referdino-tiny/config.json")).unwrap();
    let geo = Geometry {
        height: H as usize,
        width: W as usize,
        max_text: 16,
        window: 4,
    };
    let mut engines = EngineSet::cpu(&ck, &cfg, &geo, &ExportOptions::default()).unwrap();
    engines.text = Box::new(SlowText {
        inner: engines.text,
        delay: std::time::Duration::from_millis(20),
    });
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("cmd.sock");
    let mut c = config();
    c.socket = Some(sock.clone());
    let mut rt = Runtime::with_engines(c, engines, StreamConfig::for_model(&cfg)).unwrap();
    frames(&mut rt, 1);
    let conn = UnixStream::connect(&sock).unwrap();
    let mut w = conn.try_clone().unwrap();
    // Every prompt is new, so none comes from the text cache.
    let writer = std::thread::spawn(move || {
        for i in 0..SENT {
            let line = format!("{{\"prompt\":\"the object number {i}\"}}\n");
            if w.write_all(line.as_bytes()).is_err() {
                return;
            }
        }
    });
    // The client reads its replies (one that does not is disconnected).
    let answered = Arc::new(AtomicUsize::new(0));
    let reader = {
        let (answered, r) = (answered.clone(), conn.try_clone().unwrap());
        std::thread::spawn(move || {
            for line in BufReader::new(r).lines() {
                if line.is_err() {
                    return;
                }
                answered.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let mut commands = 0;
    let mut steps = 0;
    while commands == 0 {
        if rt.step() == Step::Command {
            commands += 1;
        }
        steps += 1;
        assert!(steps < 2000, "no command arrived");
    }
    let base = rt.frames_processed();
    while rt.frames_processed() < base + 3 {
        match rt.step() {
            Step::Command => commands += 1,
            Step::Ended | Step::Failed => panic!("the run ended"),
            _ => {}
        }
        assert!(
            commands < SENT,
            "no frame while {commands} of {SENT} commands ran"
        );
    }
    // Frames ran during the flood, not after it.
    assert!(commands < SENT, "{commands}");
    conn.shutdown(std::net::Shutdown::Both).unwrap();
    writer.join().unwrap();
    reader.join().unwrap();
    assert!(answered.load(Ordering::SeqCst) <= commands);
    rt.finish().unwrap();
}

/// A prompt the text engine refuses (more tokens than the engines take, though well under the
/// protocol's 1 KiB) is refused for a stream still waiting for its camera too, as the open
/// streams refuse it; before, it was accepted and the object silently left out when the camera
/// joined.
#[test]
fn a_prompt_the_text_engine_refuses_is_refused_for_a_waiting_stream() {
    let (mut rt, open) = late_and_live();
    assert_eq!(rt.waiting().count(), 1);
    let long =
        "the small red ball next to the big blue box on the left side of the table".repeat(2);
    assert!(long.len() < 1024);
    let open_one = rt.command(&Request {
        id: Some(1.into()),
        stream: Some(Streams::One(1)),
        command: Command::Add {
            prompt: long.clone(),
            object: None,
        },
    });
    assert!(!open_one.ok, "the open stream takes it");
    for (id, command) in [
        (
            2u64,
            Command::Add {
                prompt: long.clone(),
                object: None,
            },
        ),
        (
            3,
            Command::Prompt {
                prompt: format!("a cat; {long}"),
            },
        ),
    ] {
        let r = rt.command(&Request {
            id: Some(id.into()),
            stream: Some(Streams::One(0)),
            command,
        });
        let e = r.error.unwrap_or_default();
        assert!(
            !r.ok && e.contains("not open yet") && e.contains("tokens"),
            "{e}"
        );
    }
    // A prompt it takes is kept for it.
    let r = rt.command(&Request {
        id: Some(4.into()),
        stream: Some(Streams::One(0)),
        command: Command::Add {
            prompt: "a cat".into(),
            object: None,
        },
    });
    assert!(r.ok, "{:?}", r.error);
    open.store(true, Ordering::SeqCst);
    let mut steps = 0;
    while rt.stream(0).is_none() {
        assert_ne!(rt.step(), Step::Ended);
        steps += 1;
        assert!(steps < 4000, "stream 0 never joined");
    }
    let prompts: Vec<String> = rt
        .stream(0)
        .unwrap()
        .settings()
        .objects
        .iter()
        .map(|o| o.prompt.clone())
        .collect();
    assert_eq!(prompts, [FIRST, "a cat"]);
    rt.finish().unwrap();
}
