//! Several objects on one stream and several streams in one runtime, on the tiny
//! fixture. Its weights are random, so "each object follows its own target" is checked as: every
//! object's track and mask in the shared result are those of a stream session prompted with that
//! object alone (the same split engines at batch 1), frame by frame, including after
//! other objects were added or removed beside it; overlapping masks go to the higher score.
//!
//! Also: commands that must fail (unknown id, duplicate id, over the limit) fail with clear errors
//! while frames keep flowing; two synthetic streams write two rings at once with their own
//! objects; a source that fails beside a healthy one re-opens (or ends) on its own.

use crate::support::common;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use referdino::camera::reconnect::{Backoff, Reconnecting};
use referdino::camera::synthetic::Synthetic;
use referdino::camera::{Frame, FrameSource, Preprocessor};
use referdino::config::ModelConfig;
use referdino::graph::engines::{ExportOptions, Geometry};
use referdino::output::ring::{MaskRingReader, TrackEntry};
use referdino::pipeline::commands::{parse_line, split_prompts, Command, Limits, Request, Streams};
use referdino::pipeline::live::source::OpenedSource;
use referdino::pipeline::live::{FrameOutput, Runtime, RuntimeConfig, Sink, Step};
use referdino::pipeline::multi::MultiEngineSet;
use referdino::pipeline::stream::StreamConfig;
use referdino::weights::Checkpoint;

const W: u32 = 118;
const H: u32 = 70;
const A: &str = "the moving square";
const B: &str = "the white block on the left";
const C: &str = "a dark corner";

#[derive(Clone)]
struct Seen {
    /// The source's frame number (the realtime synthetic source drops frames while the loop is
    /// busy, so which ones arrive differs from run to run).
    id: u64,
    rgb: Vec<u8>,
    mask: Vec<u8>,
    tracks: Vec<TrackEntry>,
}

struct Collector(Arc<Mutex<Vec<Seen>>>);

impl Sink for Collector {
    fn name(&self) -> &str {
        "collector"
    }

    fn frame(&mut self, out: &FrameOutput<'_>) -> anyhow::Result<()> {
        self.0.lock().unwrap().push(Seen {
            id: out.frame_id,
            rgb: out.rgb.unwrap_or_default().to_vec(),
            mask: out.mask.to_vec(),
            tracks: out.result.tracks.to_vec(),
        });
        Ok(())
    }
}

fn config(prompt: &str) -> RuntimeConfig {
    let mut c = RuntimeConfig::new(&format!("synthetic:{W}x{H}@60"));
    c.short_side = H;
    c.window = Some(4);
    c.max_text = Some(16);
    c.threads = Some(2);
    c.prompt = Some(prompt.into());
    c
}

fn model() -> (Checkpoint, ModelConfig, Geometry) {
    let ck = Checkpoint::load(&common::fixture("referdino-tiny/weights.safetensors")).unwrap();
    let cfg = ModelConfig::from_file(&common::fixture("referdino-tiny/config.json")).unwrap();
    let geo = Geometry {
        height: H as usize,
        width: W as usize,
        max_text: 16,
        window: 4,
    };
    (ck, cfg, geo)
}

fn steps(rt: &mut Runtime, n: u64) {
    let want = rt.frames_processed() + n;
    let mut k = 0;
    while rt.frames_processed() < want {
        let s = rt.step();
        assert!(s != Step::Ended && s != Step::Failed, "{s:?}");
        k += 1;
        assert!(k < 5000, "no frame after {k} steps");
    }
}

fn req(id: u64, command: Command) -> Request {
    Request {
        id: Some(serde_json::json!(id)),
        stream: None,
        command,
    }
}

/// One object's expected result on a frame, from a stream prompted with it alone.
struct Alone {
    track: u32,
    score: f32,
    mask: Vec<u8>,
}

/// Runs `prompt` alone over `frames` on the engines the runtime loads (image part, then the
/// cross-modal part at batch 1): the comparison is then exact, and it isolates what the scenario is
/// about, objects not disturbing each other. The whole frame engine rounds differently from the
/// split (tests/graph/split.rs checks the split with tolerances), and the random-weight fixture's
/// mask logits sit within ~1e-6 of the threshold, so against it a boundary pixel can flip on some
/// frames: that is what made this comparison fail now and then while the realtime source delivered
/// different frames from run to run.
fn alone(prompt: &str, frames: &[&Seen]) -> Vec<Alone> {
    use referdino::pipeline::multi::{MultiConfig, MultiStream, SharedEngines};
    let (ck, cfg, geo) = model();
    let backend = referdino::backend::HostBackend::Cpu(referdino::backend::cpu::CpuBackend::new());
    let e = MultiEngineSet::on(&backend, &ck, &cfg, &geo, &ExportOptions::default(), 1).unwrap();
    let mut eng = SharedEngines::new(e, cfg.max_text_len).unwrap();
    let mc = MultiConfig {
        tracking_alpha: StreamConfig::for_model(&cfg).tracking_alpha,
        ..MultiConfig::default()
    };
    let mut s = MultiStream::new(&eng, mc, (H as usize, W as usize)).unwrap();
    s.set_prompts(&mut eng, &[prompt]).unwrap();
    let mut pre = Preprocessor::new(W, H, H);
    let mut mask = vec![0u8; (W * H) as usize];
    frames
        .iter()
        .map(|f| {
            pre.run(&f.rgb, s.image_mut().unwrap()).unwrap();
            let r = s.step(&mut eng, &mut mask).unwrap();
            assert_eq!(r.tracks.len(), 1);
            Alone {
                track: r.tracks[0].id,
                score: r.tracks[0].score,
                mask: mask.clone(),
            }
        })
        .collect()
}

/// Checks one frame of the shared result against each object's run alone.
fn check_frame(k: usize, f: &Seen, want: &[(u16, &Alone)]) {
    assert_eq!(
        f.tracks.len(),
        want.len(),
        "frame {k}: one track per object (single mode)"
    );
    let mut entry = Vec::new();
    for (id, a) in want {
        let (e, t) = f
            .tracks
            .iter()
            .enumerate()
            .find(|(_, t)| t.object == *id)
            .unwrap_or_else(|| panic!("frame {k}: no track of object {id}"));
        assert_eq!(t.id, a.track, "frame {k} object {id}: track");
        assert!(
            (t.score - a.score).abs() < 1e-6,
            "frame {k} object {id}: score {} alone {}",
            t.score,
            a.score
        );
        entry.push(e as u8 + 1);
    }
    // Entries go by ascending object id.
    let ids: Vec<u16> = f.tracks.iter().map(|t| t.object).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "frame {k}: {ids:?}");
    for p in 0..f.mask.len() {
        // The highest-scored object whose own mask covers the pixel owns it (earlier on a tie).
        let mut best: Option<(f32, u8)> = None;
        for ((_, a), &label) in want.iter().zip(&entry) {
            if a.mask[p] != 0 && best.is_none_or(|(s, _)| a.score > s) {
                best = Some((a.score, label));
            }
        }
        assert_eq!(
            f.mask[p],
            best.map_or(0, |b| b.1),
            "frame {k} pixel {p}: label"
        );
    }
}

/// Two objects, one removed, two added (one with an explicit id) over seven frames: the ids, the
/// listing and which objects each frame reports. Returns the frames the runtime delivered.
fn objects_come_and_go() -> Vec<Seen> {
    let mut rt = Runtime::new(config(&format!("{A}; {B}"))).unwrap();
    assert!(
        rt.engines().unwrap().is_split(),
        "exported engines split the image part off"
    );
    let seen = Arc::new(Mutex::new(Vec::new()));
    rt.add_sink(Box::new(Collector(seen.clone())));
    let ids: Vec<u16> = rt.settings().objects.iter().map(|o| o.id).collect();
    assert_eq!(ids, [0, 1]);

    steps(&mut rt, 3);
    let r = rt.command(&req(1, Command::Remove { object: 0 }));
    assert!(r.ok, "{:?}", r.error);
    steps(&mut rt, 2);
    // A removed object's id is not handed out again (the next assigned id is one past the highest
    // given out); an explicit id is kept.
    let r = rt.command(&req(
        2,
        Command::Add {
            prompt: C.into(),
            object: None,
        },
    ));
    assert!(r.ok, "{:?}", r.error);
    assert_eq!(r.added, [2]);
    let r = rt.command(&req(
        3,
        Command::Add {
            prompt: A.into(),
            object: Some(7),
        },
    ));
    assert!(r.ok, "{:?}", r.error);
    assert_eq!(r.added, [7]);
    let listed: Vec<(u16, String)> = rt
        .command(&req(4, Command::List))
        .settings
        .unwrap()
        .objects
        .into_iter()
        .map(|o| (o.id, o.prompt))
        .collect();
    assert_eq!(
        listed,
        [(1, B.to_string()), (2, C.to_string()), (7, A.to_string())]
    );
    steps(&mut rt, 2);
    let summary = rt.finish().unwrap();
    assert_eq!(summary.frames_processed, 7);
    let got = seen.lock().unwrap().clone();
    for (k, f) in got.iter().enumerate() {
        let ids: Vec<u16> = f.tracks.iter().map(|t| t.object).collect();
        let want: &[u16] = match k {
            0..=2 => &[0, 1],
            3 | 4 => &[1],
            _ => &[1, 2, 7],
        };
        assert_eq!(
            ids, want,
            "frame {k}: one track per object, by ascending id"
        );
    }
    got
}

#[test]
fn objects_keep_ids_and_tracks_when_others_come_and_go() {
    objects_come_and_go();
}

/// The same run, frame by frame against each object run alone (tracks, scores, label masks).
#[test]
fn objects_match_their_prompt_alone_when_others_come_and_go() {
    let got = objects_come_and_go();
    // Reported with any failure: which frames the realtime source delivered.
    eprintln!("frames {:?}", got.iter().map(|f| f.id).collect::<Vec<_>>());
    let frames: Vec<&Seen> = got.iter().collect();
    let a = alone(A, &frames[..3]);
    // Object 1 never restarted: one session over all seven frames.
    let b = alone(B, &frames);
    let c = alone(C, &frames[5..]);
    let a2 = alone(A, &frames[5..]);
    for k in 0..7 {
        let mut want: Vec<(u16, &Alone)> = Vec::new();
        if k < 3 {
            want.push((0, &a[k]));
        }
        want.push((1, &b[k]));
        if k >= 5 {
            want.push((2, &c[k - 5]));
            want.push((7, &a2[k - 5]));
        }
        check_frame(k, &got[k], &want);
    }
}

#[test]
fn bad_object_commands_get_clear_errors_and_the_loop_goes_on() {
    let mut c = config(A);
    c.max_objects = 2;
    let mut rt = Runtime::new(c).unwrap();
    steps(&mut rt, 1);
    let bad = [
        (Command::Remove { object: 9 }, "no object 9"),
        (
            Command::Replace {
                object: 4,
                prompt: B.into(),
            },
            "no object 4",
        ),
        (
            Command::Add {
                prompt: B.into(),
                object: Some(0),
            },
            "object 0 already exists",
        ),
        (
            Command::Add {
                prompt: format!("{B}; {C}"),
                object: None,
            },
            "object limit reached",
        ),
        (
            Command::Add {
                prompt: "  ; ".into(),
                object: None,
            },
            "prompt is empty",
        ),
    ];
    for (k, (cmd, msg)) in bad.into_iter().enumerate() {
        let r = rt.command(&req(k as u64, cmd));
        assert!(!r.ok, "{msg}: accepted");
        let e = r.error.unwrap();
        assert!(e.contains(msg), "{e:?} should say {msg:?}");
        assert_eq!(
            rt.settings().objects.len(),
            1,
            "a refused command changes nothing"
        );
        steps(&mut rt, 1);
    }
    let r = rt.command(&req(
        10,
        Command::Add {
            prompt: B.into(),
            object: Some(3),
        },
    ));
    assert!(r.ok, "{:?}", r.error);
    let r = rt.command(&req(
        11,
        Command::Add {
            prompt: C.into(),
            object: None,
        },
    ));
    assert!(!r.ok && r.error.unwrap().contains("at most 2 objects"));
    let r = rt.command(&Request {
        id: None,
        stream: Some(Streams::One(3)),
        command: Command::List,
    });
    assert!(!r.ok && r.error.unwrap().contains("no stream 3"));
    steps(&mut rt, 2);
    let objs: Vec<u16> = rt.last().tracks.iter().map(|t| t.object).collect();
    assert_eq!(objs, [0, 3]);
}

#[test]
fn object_commands_parse_from_json_lines() {
    let l = Limits::default();
    let p = |s: &str| parse_line(s.as_bytes(), &l);
    assert_eq!(
        p(r#"{"cmd":"add","prompt":" the cup ","object":7,"stream":1,"id":"x"}"#)
            .unwrap()
            .unwrap(),
        Request {
            id: Some(serde_json::json!("x")),
            stream: Some(Streams::One(1)),
            command: Command::Add {
                prompt: "the cup".into(),
                object: Some(7)
            },
        }
    );
    assert_eq!(
        p(r#"{"cmd":"remove","object":3}"#)
            .unwrap()
            .unwrap()
            .command,
        Command::Remove { object: 3 }
    );
    assert_eq!(
        p(r#"{"cmd":"replace","object":3,"prompt":"b"}"#)
            .unwrap()
            .unwrap()
            .command,
        Command::Replace {
            object: 3,
            prompt: "b".into()
        }
    );
    assert_eq!(
        p(r#"{"cmd":"list"}"#).unwrap().unwrap().command,
        Command::List
    );
    for (line, msg) in [
        (r#"{"cmd":"remove"}"#, "bad \"remove\" command"),
        (
            r#"{"cmd":"remove","object":70000}"#,
            "bad \"remove\" command",
        ),
        (
            r#"{"cmd":"remove","object":1,"prompt":"x"}"#,
            "unknown field",
        ),
        (r#"{"cmd":"add","prompt":";;"}"#, "prompt is empty"),
        (r#"{"cmd":"list","stream":-1}"#, "\"stream\" must be"),
    ] {
        let e = p(line).unwrap_err().error;
        assert!(e.contains(msg), "{line}: {e}");
    }
    let parts: Vec<&str> = split_prompts(" the dog ;; the red ball; ").collect();
    assert_eq!(parts, ["the dog", "the red ball"]);
}

#[test]
fn two_synthetic_streams_write_two_rings_with_their_own_objects() {
    let dir = tempfile::tempdir().unwrap();
    let name = dir.path().join("ring").to_str().unwrap().to_string();
    let mut c = config(A);
    c.sources = vec![format!("synthetic:{W}x{H}@30")];
    c.ring = Some(name.clone());
    let mut rt = Runtime::new(c).unwrap();
    assert_eq!(rt.streams().len(), 2);
    let r = rt.command(&Request {
        id: None,
        stream: Some(Streams::One(1)),
        command: Command::Add {
            prompt: B.into(),
            object: Some(5),
        },
    });
    assert!(r.ok, "{:?}", r.error);
    assert_eq!(r.stream, Some(1));
    while rt.streams().iter().any(|s| s.frames_processed() < 3) {
        let s = rt.step();
        assert!(s != Step::Ended && s != Step::Failed, "{s:?}");
    }
    for (k, want) in [(0usize, vec![0u16]), (1, vec![0, 5])] {
        let reader = MaskRingReader::open(&format!("{name}-{k}")).unwrap();
        assert!(reader.write_count() >= 3, "stream {k}");
        let mut copy = reader.new_copy();
        assert!(reader.read_latest(&mut copy).is_some());
        let objs: Vec<u16> = copy.tracks.iter().map(|t| t.object).collect();
        assert_eq!(objs, want, "stream {k}'s ring");
        assert!(copy.mask.iter().all(|&l| (l as usize) <= copy.tracks.len()));
        assert_eq!(copy.mask, rt.streams()[k].last_mask().to_vec());
    }
    // `"stream": "all"`: one request for every stream; a refusal names the stream it stopped at.
    let all = |id: u64, command: Command| Request {
        id: Some(id.into()),
        stream: Some(Streams::All),
        command,
    };
    let r = rt.command(&all(1, Command::Prompt { prompt: C.into() }));
    assert!(r.ok && r.stream.is_none(), "{r:?}");
    for k in 0..2 {
        let objects = &rt.streams()[k].settings().objects;
        assert_eq!(objects.len(), 1, "stream {k}");
        assert_eq!((objects[0].id, objects[0].prompt.as_str()), (0, C));
    }
    let add = |object| Command::Add {
        prompt: B.into(),
        object: Some(object),
    };
    let r = rt.command(&Request {
        stream: Some(Streams::One(1)),
        ..all(2, add(9))
    });
    assert!(r.ok, "{:?}", r.error);
    // Stream 1 already has object 9: refused, and stream 0 does not take it either.
    let r = rt.command(&all(3, add(9)));
    let e = r.error.unwrap_or_default();
    assert!(!r.ok && e.starts_with("stream 1: "), "{e}");
    let ids: Vec<u16> = rt.streams()[0]
        .settings()
        .objects
        .iter()
        .map(|o| o.id)
        .collect();
    assert_eq!(ids, [0]);
    let parsed = parse_line(br#"{"cmd":"list","stream":"all"}"#, &Limits::default())
        .unwrap()
        .unwrap();
    assert_eq!(parsed.stream, Some(Streams::All));
    let s = rt.finish().unwrap();
    assert_eq!(s.streams.len(), 1);
    assert!(s.frames_processed >= 3 && s.streams[0].frames_processed >= 3);
}

/// Synthetic frames that fail after `left` frames, like an unplugged camera.
struct Flaky {
    inner: Synthetic,
    left: u32,
}

impl FrameSource for Flaky {
    fn describe(&self) -> String {
        "flaky camera".into()
    }

    fn next_frame(&mut self) -> referdino::Result<Option<Frame<'_>>> {
        if self.left == 0 {
            return Err(referdino::Error::Source("device unplugged".into()));
        }
        self.left -= 1;
        self.inner.next_frame()
    }
}

fn flaky(left: u32) -> Flaky {
    Flaky {
        inner: Synthetic::new(W, H, 60, 0, true).unwrap(),
        left,
    }
}

fn backoff(max_attempts: u32) -> Backoff {
    Backoff {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(40),
        factor: 2.0,
        max_attempts,
        stop: Arc::new(AtomicBool::new(false)),
    }
}

fn runtime_with(second: Box<dyn FrameSource>) -> Runtime {
    let (ck, cfg, geo) = model();
    let c = config(A);
    let engines = MultiEngineSet::on(
        &referdino::backend::HostBackend::Cpu(referdino::backend::cpu::CpuBackend::new()),
        &ck,
        &cfg,
        &geo,
        &ExportOptions::default(),
        1,
    )
    .unwrap();
    let healthy = OpenedSource::open(&c.source, 60, false).unwrap();
    let second = OpenedSource::from_source(second, None, false).unwrap();
    Runtime::with_sources(
        c,
        engines,
        StreamConfig::for_model(&cfg),
        vec![healthy, second],
    )
    .unwrap()
}

#[test]
fn a_failing_camera_reopens_while_the_healthy_stream_goes_on() {
    let opens = Arc::new(AtomicU32::new(0));
    let o2 = opens.clone();
    let src = Reconnecting::new(
        flaky(3),
        move || {
            o2.fetch_add(1, Ordering::SeqCst);
            Ok(flaky(3))
        },
        backoff(0),
    );
    let mut rt = runtime_with(Box::new(src));
    let mut k = 0;
    while rt.streams()[1].frames_processed() < 8 || rt.streams()[0].frames_processed() < 8 {
        let s = rt.step();
        assert!(s != Step::Ended && s != Step::Failed, "{s:?}");
        k += 1;
        assert!(k < 20_000, "stalled");
    }
    assert!(
        opens.load(Ordering::SeqCst) >= 2,
        "the camera was re-opened"
    );
    assert!(!rt.streams()[1].ended());
    rt.finish().unwrap();
}

/// A camera that cannot be re-opened ends its own stream; the others go on, and the run ends with
/// its error once they are done.
#[test]
fn a_camera_that_stays_dead_ends_its_stream_only() {
    let src = Reconnecting::new(
        flaky(2),
        || -> referdino::Result<Flaky> { Err(referdino::Error::Source("no such device".into())) },
        backoff(2),
    );
    let mut rt = runtime_with(Box::new(src));
    let mut k = 0;
    while !rt.streams()[1].ended() {
        let s = rt.step();
        assert!(s != Step::Ended && s != Step::Failed, "{s:?}");
        k += 1;
        assert!(k < 20_000, "the dead stream never ended");
    }
    let before = rt.streams()[0].frames_processed();
    steps(&mut rt, 3);
    assert_eq!(rt.streams()[0].frames_processed(), before + 3);
    assert!(rt.streams()[1].frames_processed() <= 2);
    // The others ran on; the run still reports the camera it lost (a non-zero exit for `run`).
    let e = format!("{:#}", rt.finish().unwrap_err());
    assert!(
        e.contains("stream 1: source failed") && e.contains("gave up re-opening"),
        "{e}"
    );
}

/// Runs `prompts` as objects of one stream on the fixture clip with the cross-modal engine at
/// `batch`; per frame the tracks and the label mask.
fn clip_objects(batch: usize, prompts: &[&str]) -> Vec<(Vec<TrackEntry>, Vec<u8>)> {
    let (ck, cfg, _) = model();
    let backend = referdino::backend::HostBackend::Cpu(referdino::backend::cpu::CpuBackend::new());
    let e = MultiEngineSet::on(
        &backend,
        &ck,
        &cfg,
        &clip_geometry(),
        &ExportOptions::default(),
        batch,
    )
    .unwrap();
    clip_objects_on(e, batch, prompts)
}

/// The fixture clip's geometry with the text length and window of these tests.
fn clip_geometry() -> Geometry {
    let inputs = common::tiny_inputs();
    let s = inputs["frames_uint8"].shape().to_vec();
    Geometry {
        height: s[1],
        width: s[2],
        max_text: 16,
        window: 4,
    }
}

/// [`clip_objects`] on given engines.
fn clip_objects_on(
    e: MultiEngineSet,
    batch: usize,
    prompts: &[&str],
) -> Vec<(Vec<TrackEntry>, Vec<u8>)> {
    use referdino::pipeline::multi::{MultiConfig, MultiStream, SharedEngines};
    use referdino::tensor::Data;
    let inputs = common::tiny_inputs();
    let clip = &inputs["frames_uint8"];
    let (t, h, w) = (clip.shape()[0], clip.shape()[1], clip.shape()[2]);
    let Data::U8(px) = clip.data() else { panic!() };
    let (_, cfg, _) = model();
    let mut eng = SharedEngines::new(e, cfg.max_text_len).unwrap();
    assert_eq!(eng.batch(), batch);
    assert_eq!(
        eng.head_batch(),
        batch,
        "temporal and heads batched like the cross engine"
    );
    let mut s = MultiStream::new(&eng, MultiConfig::default(), (h, w)).unwrap();
    s.set_prompts(&mut eng, prompts).unwrap();
    let mut pre = Preprocessor::new(w as u32, h as u32, h.min(w) as u32);
    let mut mask = vec![0u8; h * w];
    (0..t)
        .map(|f| {
            pre.run(
                &px[f * h * w * 3..(f + 1) * h * w * 3],
                s.image_mut().unwrap(),
            )
            .unwrap();
            let r = s.step(&mut eng, &mut mask).unwrap();
            (r.tracks.to_vec(), mask.clone())
        })
        .collect()
}

#[test]
fn cross_batch_two_over_three_objects_matches_batch_one() {
    // Three objects at B = 2: one full batch and one padded.
    let prompts = [A, B, C];
    let one = clip_objects(1, &prompts);
    let two = clip_objects(2, &prompts);
    for (f, ((t1, m1), (t2, m2))) in one.iter().zip(&two).enumerate() {
        assert_eq!(t1.len(), 3, "frame {f}");
        for (a, b) in t1.iter().zip(t2) {
            assert_eq!((a.object, a.id), (b.object, b.id), "frame {f}");
            assert!(
                (a.score - b.score).abs() < 1e-4,
                "frame {f}: {a:?} vs {b:?}"
            );
        }
        // Batched kernels may sum in another order: a logit at 0 may flip a pixel, no more.
        let differ = m1.iter().zip(m2).filter(|(x, y)| x != y).count();
        assert!(differ * 200 < m1.len(), "frame {f}: {differ} pixels differ");
    }
}

/// An engine directory with the object set (`export --objects`) loads on the host backend at any
/// batch (`load_object_onnx`, the symbolic axis fixed at load) and gives what the in-memory engines
/// of that batch give: bit for bit at B = 2, within batching noise at B = 1 (where the in-memory set
/// uses the unbatched temporal engine).
#[test]
fn exported_object_set_matches_the_in_memory_engines() {
    use referdino::graph::engines::NetParams;
    use referdino::graph::export::export_engines;
    use referdino::graph::object_engines::{build_object_engines, write_object_engines};
    use referdino::pipeline::engine_dir::{has_object_onnx, load_object_onnx, BackendKind};
    let (ck, cfg, _) = model();
    let geo = clip_geometry();
    let dir = tempfile::tempdir().unwrap();
    let opts = ExportOptions::default();
    let whole = export_engines(&ck, &cfg, &geo, &opts, dir.path()).unwrap();
    assert!(!has_object_onnx(dir.path()));
    let p = NetParams::new(&cfg, &geo).unwrap();
    let es = build_object_engines(&ck, &p, &geo, &opts).unwrap();
    write_object_engines(&es, &geo, &whole, &dir.path().join("objects")).unwrap();
    assert!(has_object_onnx(dir.path()));
    let prompts = [A, B, C];
    for batch in [2, 1] {
        let (loaded, m) = load_object_onnx(dir.path(), BackendKind::Cpu, Some(2), batch).unwrap();
        assert_eq!(m.geometry, geo);
        let got = clip_objects_on(loaded, batch, &prompts);
        let want = clip_objects(batch, &prompts);
        for (f, ((t1, m1), (t2, m2))) in want.iter().zip(&got).enumerate() {
            assert_eq!(t1.len(), t2.len(), "B={batch} frame {f}");
            for (a, b) in t1.iter().zip(t2) {
                assert_eq!((a.object, a.id), (b.object, b.id), "B={batch} frame {f}");
                if batch == 2 {
                    assert_eq!(a.score, b.score, "B=2 frame {f}: {a:?} vs {b:?}");
                } else {
                    assert!(
                        (a.score - b.score).abs() < 1e-4,
                        "frame {f}: {a:?} vs {b:?}"
                    );
                }
            }
            let differ = m1.iter().zip(m2).filter(|(x, y)| x != y).count();
            if batch == 2 {
                assert_eq!(differ, 0, "B=2 frame {f}: masks differ");
            } else {
                assert!(differ * 200 < m1.len(), "frame {f}: {differ} pixels differ");
            }
        }
    }
    // A batch of 0 is refused with a clear error, not a panic.
    let e = load_object_onnx(dir.path(), BackendKind::Cpu, Some(1), 0)
        .err()
        .expect("batch 0 refused")
        .to_string();
    assert!(e.contains("at least 1"), "{e}");
}

#[test]
fn image_batch_over_two_streams_matches_each_stream_alone() {
    use referdino::pipeline::multi::{MultiConfig, MultiStream, SharedEngines};
    use referdino::tensor::Data;
    let inputs = common::tiny_inputs();
    let clip = &inputs["frames_uint8"];
    let (t, h, w) = (clip.shape()[0], clip.shape()[1], clip.shape()[2]);
    let Data::U8(px) = clip.data() else { panic!() };
    let (ck, cfg, _) = model();
    let geo = Geometry {
        height: h,
        width: w,
        max_text: 16,
        window: 4,
    };
    let backend = referdino::backend::HostBackend::Cpu(referdino::backend::cpu::CpuBackend::new());
    let engines = |image_batch| {
        let e = MultiEngineSet::on_batched(
            &backend,
            &ck,
            &cfg,
            &geo,
            &ExportOptions::default(),
            1,
            image_batch,
        )
        .unwrap();
        SharedEngines::new(e, cfg.max_text_len).unwrap()
    };
    let mut pre = Preprocessor::new(w as u32, h as u32, h.min(w) as u32);
    let frame = |f: usize| &px[f * h * w * 3..(f + 1) * h * w * 3];
    // Stream 0 sees the clip forwards with one object, stream 1 backwards with two: rows differ.
    let order = [[0usize, 1, 2], [2, 1, 0]];
    let prompts: [&[&str]; 2] = [&[A], &[B, C]];
    let mut alone = Vec::new();
    let mut single = engines(1);
    for k in 0..2 {
        let mut s = MultiStream::new(&single, MultiConfig::default(), (h, w)).unwrap();
        s.set_prompts(&mut single, prompts[k]).unwrap();
        let mut mask = vec![0u8; h * w];
        let mut out = Vec::new();
        for &f in &order[k][..t] {
            pre.run(frame(f), s.image_mut().unwrap()).unwrap();
            let r = s.step(&mut single, &mut mask).unwrap();
            out.push((r.tracks.to_vec(), mask.clone()));
        }
        alone.push(out);
    }
    let mut batched = engines(2);
    assert_eq!(batched.image_batch(), 2);
    let mut ss: Vec<MultiStream> = (0..2)
        .map(|k| {
            let mut s = MultiStream::new(&batched, MultiConfig::default(), (h, w)).unwrap();
            s.set_prompts(&mut batched, prompts[k]).unwrap();
            s
        })
        .collect();
    let mut mask = vec![0u8; h * w];
    for i in 0..t {
        for (k, s) in ss.iter_mut().enumerate() {
            pre.run(frame(order[k][i]), s.image_mut().unwrap()).unwrap();
            s.load_image_row(&mut batched, k).unwrap();
        }
        batched.run_images().unwrap();
        for (k, s) in ss.iter_mut().enumerate() {
            let r = s.step_from_row(&mut batched, k, &mut mask).unwrap();
            let (tracks, want) = &alone[k][i];
            assert_eq!(r.tracks.len(), tracks.len(), "stream {k} frame {i}");
            for (a, b) in r.tracks.iter().zip(tracks) {
                assert_eq!((a.object, a.id), (b.object, b.id), "stream {k} frame {i}");
                assert!((a.score - b.score).abs() < 1e-4, "stream {k} frame {i}");
            }
            let differ = mask.iter().zip(want).filter(|(x, y)| x != y).count();
            assert!(
                differ * 200 < mask.len(),
                "stream {k} frame {i}: {differ} pixels"
            );
        }
    }
}

#[test]
fn runtime_with_image_batch_two_serves_both_streams() {
    let mut c = config(A);
    c.sources = vec![format!("synthetic:{W}x{H}@60")];
    c.image_batch = 2;
    let mut rt = Runtime::new(c).unwrap();
    assert_eq!(rt.engines().unwrap().image_batch(), 2);
    let mut k = 0;
    while rt.streams().iter().any(|s| s.frames_processed() < 4) {
        let s = rt.step();
        assert!(s != Step::Ended && s != Step::Failed, "{s:?}");
        k += 1;
        assert!(k < 5000, "stalled");
    }
    for st in rt.streams() {
        assert_eq!(st.last().tracks.len(), 1);
        assert_eq!(st.frames_failed(), 0);
    }
    rt.finish().unwrap();
}

fn ids_of(rt: &Runtime, k: usize) -> Vec<(u16, String)> {
    rt.streams()[k]
        .settings()
        .objects
        .iter()
        .map(|o| (o.id, o.prompt.clone()))
        .collect()
}

/// A command sent to all streams changes every open stream or none: one refused by a stream (an
/// unknown id, one object too many, a prompt the text engine refuses) leaves the others as they
/// were and names the stream. An `add` to all gives every stream the same new ids, and the reply
/// says which.
#[test]
fn commands_to_all_change_every_stream_or_none() {
    let mut c = config(A);
    c.sources = vec![format!("synthetic:{W}x{H}@30")];
    c.max_objects = 3;
    let mut rt = Runtime::new(c).unwrap();
    assert_eq!(rt.streams().len(), 2);
    let to = |id: u64, stream, command| Request {
        id: Some(id.into()),
        stream: Some(stream),
        command,
    };
    // Stream 0 alone gets a cat as object 1; removing object 1 from all is refused by stream 1.
    let r = rt.command(&to(
        1,
        Streams::One(0),
        Command::Add {
            prompt: "cat".into(),
            object: Some(1),
        },
    ));
    assert!(r.ok, "{:?}", r.error);
    let r = rt.command(&to(2, Streams::All, Command::Remove { object: 1 }));
    let e = r.error.unwrap_or_default();
    assert!(
        !r.ok && e.starts_with("stream 1: ") && e.contains("no object 1"),
        "{e}"
    );
    assert_eq!(ids_of(&rt, 0), [(0, A.to_string()), (1, "cat".to_string())]);
    assert_eq!(ids_of(&rt, 1), [(0, A.to_string())]);

    // Stream 0 back to one object (its next id 2), stream 1 given a cow as object 5 (next id 6).
    assert!(
        rt.command(&to(3, Streams::One(0), Command::Remove { object: 1 }))
            .ok
    );
    let cow = Command::Add {
        prompt: "a cow".into(),
        object: Some(5),
    };
    assert!(rt.command(&to(4, Streams::One(1), cow)).ok);
    // Two more are one too many for stream 1 (max 3): stream 0, which has room, takes none either.
    let r = rt.command(&to(
        5,
        Streams::All,
        Command::Add {
            prompt: "a dog; a hen".into(),
            object: None,
        },
    ));
    let e = r.error.unwrap_or_default();
    assert!(
        !r.ok && e.starts_with("stream 1: ") && e.contains("limit"),
        "{e}"
    );
    assert_eq!(ids_of(&rt, 0), [(0, A.to_string())]);
    assert_eq!(ids_of(&rt, 1).len(), 2);
    // A new prompt for all that the text engine refuses changes no stream.
    let long = "the small red ball next to the big blue box on the left".repeat(2);
    let r = rt.command(&to(
        6,
        Streams::All,
        Command::Replace {
            object: 0,
            prompt: long,
        },
    ));
    assert!(!r.ok);
    assert_eq!(ids_of(&rt, 0), [(0, A.to_string())]);

    // An add to all: the same new id on both, past the highest id either gave out (5).
    let r = rt.command(&to(
        7,
        Streams::All,
        Command::Add {
            prompt: B.into(),
            object: None,
        },
    ));
    assert!(r.ok, "{:?}", r.error);
    assert_eq!(r.added, [6]);
    assert_eq!(ids_of(&rt, 0), [(0, A.to_string()), (6, B.to_string())]);
    let ids: Vec<u16> = ids_of(&rt, 1).iter().map(|o| o.0).collect();
    assert_eq!(ids, [0, 5, 6]);
    // Several at once, each the same on both.
    assert!(
        rt.command(&to(8, Streams::One(1), Command::Remove { object: 5 }))
            .ok
    );
    assert!(
        rt.command(&to(9, Streams::All, Command::Remove { object: 6 }))
            .ok
    );
    let r = rt.command(&to(
        10,
        Streams::All,
        Command::Add {
            prompt: format!("{B}; {C}"),
            object: None,
        },
    ));
    assert!(r.ok, "{:?}", r.error);
    assert_eq!(r.added, [7, 8]);
    for k in 0..2 {
        let ids: Vec<u16> = ids_of(&rt, k).iter().map(|o| o.0).collect();
        assert_eq!(ids, [0, 7, 8], "stream {k}");
    }
    steps(&mut rt, 2);
    rt.finish().unwrap();
}

/// The host path records the text engine's time when a prompt is encoded (not when it comes from
/// the cache), so `status` reports latency_ms.text (before, it was always 0 on this path).
#[test]
fn a_new_prompt_records_its_text_time() {
    use referdino::pipeline::multi::{MultiConfig, MultiStream, SharedEngines};
    use referdino::pipeline::timing::Stage;
    let (ck, cfg, geo) = model();
    let backend = referdino::backend::HostBackend::Cpu(referdino::backend::cpu::CpuBackend::new());
    let e = MultiEngineSet::on(&backend, &ck, &cfg, &geo, &ExportOptions::default(), 1).unwrap();
    let mut eng = SharedEngines::new(e, cfg.max_text_len).unwrap();
    let mut s = MultiStream::new(&eng, MultiConfig::default(), (H as usize, W as usize)).unwrap();
    let text = |s: &MultiStream| s.times().get(Stage::Text).count();
    s.set_prompts(&mut eng, &[A]).unwrap();
    assert_eq!(text(&s), 1);
    s.add(&mut eng, None, B).unwrap();
    assert_eq!(text(&s), 2);
    assert!(s.times().get(Stage::Text).mean_ms() > 0.0);
    // From the cache: no text run, nothing recorded.
    s.add(&mut eng, None, A).unwrap();
    s.replace(&mut eng, 0, B).unwrap();
    assert_eq!(text(&s), 2);

    // Through the runtime: a stream's status reports it.
    let mut rt = Runtime::new(config(A)).unwrap();
    steps(&mut rt, 1);
    let r = rt.command(&req(
        1,
        Command::Add {
            prompt: C.into(),
            object: None,
        },
    ));
    assert!(r.ok, "{:?}", r.error);
    let ms = rt.stats().latency_ms["text"];
    assert!(ms > 0.0, "{ms}");
    rt.finish().unwrap();
}
