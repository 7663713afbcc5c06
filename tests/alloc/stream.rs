//! Budget check: the streaming session's per-frame host path (preprocessing into the
//! frame engine's input, tracker, window, engine hand-offs, running scores, selection, upsampling,
//! thresholding, mask-ring write) allocates nothing in steady state.
//!
//! The engines are replaced by replay engines that write back the outputs the real tiny engines
//! produced on the fixture clip (recorded first), so what is counted is the host side only. The replayed
//! session is also checked to give exactly the real session's masks on the recorded frames.

use crate::support::common;

use referdino::backend::{Engine, TensorSpec};
use referdino::camera::Preprocessor;
use referdino::config::ModelConfig;
use referdino::graph::engines::{ExportOptions, Geometry};
use referdino::output::ring::{MaskRing, RingGeometry};
use referdino::pipeline::post::Selection;
use referdino::pipeline::replay::{Recorder, Recording, ReplayEngine, ReplayMode};
use referdino::pipeline::session::EngineSet;
use referdino::pipeline::stream::{StreamConfig, StreamSession};
use referdino::tensor::Data;
use referdino::weights::Checkpoint;

use crate::counter::counted;

const PROMPT: &str = "the red ball rolling to the left";

struct Specs(Vec<TensorSpec>, Vec<TensorSpec>, String);

fn specs(e: &dyn Engine) -> Specs {
    Specs(
        e.inputs().to_vec(),
        e.outputs().to_vec(),
        e.name().to_string(),
    )
}

fn replay(s: &Specs, r: &Recording) -> Box<dyn Engine> {
    let calls = r.lock().unwrap().clone();
    Box::new(ReplayEngine::new(&s.2, s.0.clone(), s.1.clone(), calls, ReplayMode::Cycle).unwrap())
}

/// Steps `rt` until each of its two streams has processed `n` more frames (runs inside counted
/// regions: it allocates nothing itself).
fn both_until(rt: &mut referdino::pipeline::live::Runtime, n: u64) {
    use referdino::pipeline::live::Step;
    // An array, not a Vec.
    let st = rt.streams();
    let want = [st[0].frames_processed() + n, st[1].frames_processed() + n];
    let mut steps = 0u32;
    while rt
        .streams()
        .iter()
        .zip(&want)
        .any(|(s, &w)| s.frames_processed() < w)
        && steps < 100_000
    {
        let st = rt.step();
        assert!(st != Step::Ended && st != Step::Failed, "{st:?}");
        steps += 1;
    }
}

/// A split engine set (text, image, cross, temporal, head) whose engines record every run, and the
/// recordings, which replay the runs as engines that allocate nothing.
struct SplitRecording {
    specs: [Specs; 5],
    runs: [Recording; 5],
}

impl SplitRecording {
    const IMAGE: usize = 1;
    const CROSS: usize = 2;
    const HEAD: usize = 4;

    /// `real` (exported split) with each engine wrapped in a recorder, ready for streams.
    fn wrap(
        real: referdino::pipeline::multi::MultiEngineSet,
        max_text_len: usize,
    ) -> (referdino::pipeline::multi::SharedEngines, Self) {
        use referdino::pipeline::multi::{Front, MultiEngineSet, SharedEngines};
        let Front::Split { image, cross } = real.front else {
            panic!("exported engines are split")
        };
        let engines = [real.text, image, cross, real.temporal, real.head];
        let specs = engines.each_ref().map(|e| specs(e.as_ref()));
        let [text, image, cross, temporal, head] = engines.map(|e| {
            let (e, r) = Recorder::new(e);
            (Box::new(e) as Box<dyn Engine>, r)
        });
        let runs = [text.1, image.1, cross.1, temporal.1, head.1];
        let set = MultiEngineSet {
            text: text.0,
            front: Front::Split {
                image: image.0,
                cross: cross.0,
            },
            temporal: temporal.0,
            head: head.0,
        };
        let eng = SharedEngines::new(set, max_text_len).unwrap();
        (eng, SplitRecording { specs, runs })
    }

    /// Runs recorded so far by engine `k` (the order of [`SplitRecording::wrap`]).
    fn runs(&self, k: usize) -> usize {
        self.runs[k].lock().unwrap().len()
    }

    /// The recorded runs as a set of replay engines.
    fn replay(&self) -> referdino::pipeline::multi::MultiEngineSet {
        use referdino::pipeline::multi::{Front, MultiEngineSet};
        let r = |k: usize| replay(&self.specs[k], &self.runs[k]);
        MultiEngineSet {
            text: r(0),
            front: Front::Split {
                image: r(Self::IMAGE),
                cross: r(Self::CROSS),
            },
            temporal: r(3),
            head: r(Self::HEAD),
        }
    }
}

#[test]
fn steady_state_stream_step_allocates_nothing() {
    let ck = Checkpoint::load(&common::fixture("referdino-tiny/weights.safetensors")).unwrap();
    let cfg = ModelConfig::from_file(&common::fixture("referdino-tiny/config.json")).unwrap();
    let inputs = common::tiny_inputs();
    let clip = &inputs["frames_uint8"];
    let (t, h, w) = (clip.shape()[0], clip.shape()[1], clip.shape()[2]);
    let Data::U8(px) = clip.data() else { panic!() };
    let rgb: Vec<&[u8]> = (0..t)
        .map(|f| &px[f * h * w * 3..(f + 1) * h * w * 3])
        .collect();
    // Window 2 < T = 3, so the counted loop also wraps the ring window.
    let geo = Geometry {
        height: h,
        width: w,
        max_text: 16,
        window: 2,
    };
    let real = EngineSet::cpu(&ck, &cfg, &geo, &ExportOptions::default()).unwrap();
    let sp = [
        specs(real.text.as_ref()),
        specs(real.frame.as_ref()),
        specs(real.temporal.as_ref()),
        specs(real.head.as_ref()),
    ];
    let (text, rt) = Recorder::new(real.text);
    let (frame, rf) = Recorder::new(real.frame);
    let (temporal, rtm) = Recorder::new(real.temporal);
    let (head, rh) = Recorder::new(real.head);
    let scfg = StreamConfig::for_model(&cfg);
    let mut pre = Preprocessor::new(w as u32, h as u32, h.min(w) as u32);
    let mut real_session = StreamSession::new(
        EngineSet {
            text: Box::new(text),
            frame: Box::new(frame),
            temporal: Box::new(temporal),
            head: Box::new(head),
        },
        scfg,
        (h, w),
    )
    .unwrap();
    real_session.set_prompt(PROMPT).unwrap();
    let mut want = Vec::new();
    for f in &rgb {
        pre.run(f, real_session.image_mut().unwrap()).unwrap();
        let mut m = vec![0u8; h * w];
        real_session.step(&mut m).unwrap();
        want.push(m);
    }
    assert_eq!(rf.lock().unwrap().len(), t);

    let mut s = StreamSession::new(
        EngineSet {
            text: replay(&sp[0], &rt),
            frame: replay(&sp[1], &rf),
            temporal: replay(&sp[2], &rtm),
            head: replay(&sp[3], &rh),
        },
        scfg,
        (h, w),
    )
    .unwrap();
    s.set_prompt(PROMPT).unwrap();
    let mut mask = vec![0u8; h * w];
    // The replayed session reproduces the real one on the recorded frames.
    for (f, wm) in rgb.iter().zip(&want) {
        pre.run(f, s.image_mut().unwrap()).unwrap();
        s.step(&mut mask).unwrap();
        assert_eq!(&mask, wm);
    }
    let dir = tempfile::tempdir().unwrap();
    let mut ring = MaskRing::create(
        dir.path().join("ring").to_str().unwrap(),
        RingGeometry {
            width: w as u32,
            height: h as u32,
            slots: 4,
        },
    )
    .unwrap();
    // Warm-up covers both selection modes and the ring path.
    for k in 0..6 {
        if k == 3 {
            s.set_selection(Selection::Multi { threshold: 0.3 });
        }
        pre.run(rgb[k % t], s.image_mut().unwrap()).unwrap();
        s.step_into_ring(&mut ring, k as u64, 0).unwrap();
    }
    let (res, n) = counted(|| -> referdino::Result<usize> {
        let mut tracks = 0usize;
        for k in 0..60 {
            if k == 30 {
                s.set_selection(Selection::Single);
            }
            let img = s.image_mut()?;
            pre.run(rgb[k % t], img)?;
            let r = if k % 2 == 0 {
                s.step(&mut mask)?
            } else {
                s.step_into_ring(&mut ring, k as u64, k as u64)?
            };
            tracks += r.tracks.len();
        }
        Ok(tracks)
    });
    let tracks = res.unwrap();
    assert!(tracks >= 60, "every frame reports at least one track");
    assert_eq!(n, 0, "{n} heap allocations in 60 steady-state frames");
    eprintln!(
        "RESULT 60 steady-state frames (window 2, single + multi, mask buffer + ring): {n} allocations"
    );
}

/// The live runtime's step (frame hand-off from the capture thread, preprocessing, session, the
/// mask-ring sink, status bookkeeping, the command inbox poll) allocates nothing in steady state.
#[test]
fn steady_state_runtime_step_allocates_nothing() {
    use referdino::pipeline::live::{Runtime, RuntimeConfig, Step};

    let ck = Checkpoint::load(&common::fixture("referdino-tiny/weights.safetensors")).unwrap();
    let cfg = ModelConfig::from_file(&common::fixture("referdino-tiny/config.json")).unwrap();
    let inputs = common::tiny_inputs();
    let clip = &inputs["frames_uint8"];
    let (t, h, w) = (clip.shape()[0], clip.shape()[1], clip.shape()[2]);
    let Data::U8(px) = clip.data() else { panic!() };
    let geo = Geometry {
        height: h,
        width: w,
        max_text: 16,
        window: 2,
    };
    // Record the real engines on the fixture clip, then replay them under the runtime.
    let real = EngineSet::cpu(&ck, &cfg, &geo, &ExportOptions::default()).unwrap();
    let sp = [
        specs(real.text.as_ref()),
        specs(real.frame.as_ref()),
        specs(real.temporal.as_ref()),
        specs(real.head.as_ref()),
    ];
    let (text, rt) = Recorder::new(real.text);
    let (frame, rf) = Recorder::new(real.frame);
    let (temporal, rtm) = Recorder::new(real.temporal);
    let (head, rh) = Recorder::new(real.head);
    let scfg = StreamConfig::for_model(&cfg);
    let mut pre = Preprocessor::new(w as u32, h as u32, h.min(w) as u32);
    let mut s = StreamSession::new(
        EngineSet {
            text: Box::new(text),
            frame: Box::new(frame),
            temporal: Box::new(temporal),
            head: Box::new(head),
        },
        scfg,
        (h, w),
    )
    .unwrap();
    s.set_prompt(PROMPT).unwrap();
    let mut m = vec![0u8; h * w];
    for f in 0..t {
        pre.run(
            &px[f * h * w * 3..(f + 1) * h * w * 3],
            s.image_mut().unwrap(),
        )
        .unwrap();
        s.step(&mut m).unwrap();
    }
    let engines = EngineSet {
        text: replay(&sp[0], &rt),
        frame: replay(&sp[1], &rf),
        temporal: replay(&sp[2], &rtm),
        head: replay(&sp[3], &rh),
    };
    let dir = tempfile::tempdir().unwrap();
    let mut c = RuntimeConfig::new(&format!("synthetic:{w}x{h}@1000"));
    c.short_side = h.min(w) as u32;
    c.window = Some(2);
    c.prompt = Some(PROMPT.into());
    c.ring = Some(dir.path().join("ring").to_str().unwrap().to_string());
    let mut runtime = Runtime::with_engines(c, engines, scfg).unwrap();
    let until = |rt: &mut Runtime, n: u64| {
        let want = rt.frames_processed() + n;
        let mut steps = 0u32;
        while rt.frames_processed() < want && steps < 100_000 {
            let st = rt.step();
            assert!(st != Step::Ended && st != Step::Failed, "{st:?}");
            steps += 1;
        }
    };
    // Warm-up: first-use allocations (thread-locals, the hand-off's first waits) happen here.
    until(&mut runtime, 8);
    let ((), n) = counted(|| until(&mut runtime, 40));
    assert_eq!(runtime.frames_processed(), 48);
    let summary = runtime.finish().unwrap();
    assert_eq!(summary.frames_processed, 48);
    assert_eq!(
        n, 0,
        "{n} heap allocations in 40 steady-state runtime steps"
    );
    eprintln!(
        "RESULT 40 steady-state runtime frames (replayed engines, ring sink): {n} allocations"
    );
}

/// The runtime's step with several objects per stream and several streams (image engine once per
/// frame, cross-modal engine at batch 2 over three objects, so one padded run, per-object temporal
/// and head engines, label mask by score, two rings) allocates nothing in steady state.
#[test]
fn steady_state_runtime_with_objects_and_streams_allocates_nothing() {
    use referdino::backend::HostBackend;
    use referdino::pipeline::live::{Runtime, RuntimeConfig};
    use referdino::pipeline::multi::{MultiConfig, MultiEngineSet, MultiStream};

    const PROMPTS: [&str; 3] = [PROMPT, "the white block", "a dark corner"];
    let ck = Checkpoint::load(&common::fixture("referdino-tiny/weights.safetensors")).unwrap();
    let cfg = ModelConfig::from_file(&common::fixture("referdino-tiny/config.json")).unwrap();
    let inputs = common::tiny_inputs();
    let clip = &inputs["frames_uint8"];
    let (t, h, w) = (clip.shape()[0], clip.shape()[1], clip.shape()[2]);
    let Data::U8(px) = clip.data() else { panic!() };
    let geo = Geometry {
        height: h,
        width: w,
        max_text: 16,
        window: 2,
    };
    let backend = HostBackend::Cpu(referdino::backend::cpu::CpuBackend::new());
    let real = MultiEngineSet::on(&backend, &ck, &cfg, &geo, &ExportOptions::default(), 2).unwrap();
    let (mut eng, rec) = SplitRecording::wrap(real, cfg.max_text_len);
    let mut s = MultiStream::new(&eng, MultiConfig::default(), (h, w)).unwrap();
    s.set_prompts(&mut eng, &PROMPTS).unwrap();
    let mut pre = Preprocessor::new(w as u32, h as u32, h.min(w) as u32);
    let mut m = vec![0u8; h * w];
    for f in 0..t {
        pre.run(
            &px[f * h * w * 3..(f + 1) * h * w * 3],
            s.image_mut().unwrap(),
        )
        .unwrap();
        s.step(&mut eng, &mut m).unwrap();
    }
    assert_eq!(
        rec.runs(SplitRecording::IMAGE),
        t,
        "the image engine runs once per frame"
    );
    assert_eq!(
        rec.runs(SplitRecording::CROSS),
        2 * t,
        "three objects at batch 2: two runs"
    );
    assert_eq!(
        rec.runs(SplitRecording::HEAD),
        2 * t,
        "the heads are batched like the cross engine: two runs"
    );
    let engines = rec.replay();
    let dir = tempfile::tempdir().unwrap();
    let mut c = RuntimeConfig::new(&format!("synthetic:{w}x{h}@1000"));
    c.sources = vec![format!("synthetic:{w}x{h}@1000")];
    c.short_side = h.min(w) as u32;
    c.window = Some(2);
    c.prompt = Some(PROMPTS.join("; "));
    c.ring = Some(dir.path().join("ring").to_str().unwrap().to_string());
    let mut runtime = Runtime::with_engines(c, engines, StreamConfig::for_model(&cfg)).unwrap();
    both_until(&mut runtime, 8);
    let ((), n) = counted(|| both_until(&mut runtime, 20));
    for st in runtime.streams() {
        assert!(st.frames_processed() >= 28);
        assert_eq!(st.last().tracks.len(), 3, "one track per object");
    }
    runtime.finish().unwrap();
    assert_eq!(
        n, 0,
        "{n} heap allocations in 20 steady-state frames per stream (2 streams x 3 objects)"
    );
    eprintln!("RESULT 2 streams x 3 objects, 20 steady-state frames each: {n} allocations");
}

/// The tiny engines at `(h, w)` (cross-modal batch 1, window 2) recorded while a stream runs three
/// synthetic frames with `PROMPT`, as replay engines.
fn recorded_split_set(
    ck: &Checkpoint,
    cfg: &ModelConfig,
    (h, w): (usize, usize),
) -> referdino::pipeline::multi::MultiEngineSet {
    use referdino::backend::HostBackend;
    use referdino::camera::synthetic::Synthetic;
    use referdino::pipeline::multi::{MultiConfig, MultiEngineSet, MultiStream};
    let geo = Geometry {
        height: h,
        width: w,
        max_text: 16,
        window: 2,
    };
    let backend = HostBackend::Cpu(referdino::backend::cpu::CpuBackend::new());
    let real = MultiEngineSet::on(&backend, ck, cfg, &geo, &ExportOptions::default(), 1).unwrap();
    let (mut eng, rec) = SplitRecording::wrap(real, cfg.max_text_len);
    let mut s = MultiStream::new(&eng, MultiConfig::default(), (h, w)).unwrap();
    s.set_prompts(&mut eng, &[PROMPT]).unwrap();
    let mut pre = Preprocessor::new(w as u32, h as u32, h.min(w) as u32);
    let (mut rgb, mut m) = (vec![0u8; h * w * 3], vec![0u8; h * w]);
    for f in 0..3 {
        Synthetic::render(f, w as u32, h as u32, &mut rgb);
        pre.run(&rgb, s.image_mut().unwrap()).unwrap();
        s.step(&mut eng, &mut m).unwrap();
    }
    rec.replay()
}

/// Two streams of different aspect ratios, each on the engine set of its input size (the text
/// engine shared): the runtime's step allocates nothing in steady state, as with one size.
#[test]
fn steady_state_runtime_with_two_input_sizes_allocates_nothing() {
    use referdino::pipeline::live::{Runtime, RuntimeConfig};
    let ck = Checkpoint::load(&common::fixture("referdino-tiny/weights.safetensors")).unwrap();
    let cfg = ModelConfig::from_file(&common::fixture("referdino-tiny/config.json")).unwrap();
    // About 16:9 and 4:3 at shorter side 70 (the synthetic frames are made at those sizes).
    let (wide, narrow) = ((70usize, 118usize), (70usize, 94usize));
    let sets = vec![
        recorded_split_set(&ck, &cfg, narrow),
        recorded_split_set(&ck, &cfg, wide),
    ];
    let dir = tempfile::tempdir().unwrap();
    let mut c = RuntimeConfig::new(&format!("synthetic:{}x{}@1000", wide.1, wide.0));
    c.sources = vec![format!("synthetic:{}x{}@1000", narrow.1, narrow.0)];
    c.short_side = 70;
    c.window = Some(2);
    c.prompt = Some(PROMPT.into());
    c.ring = Some(dir.path().join("ring").to_str().unwrap().to_string());
    let mut runtime = Runtime::with_engine_sets(c, sets, StreamConfig::for_model(&cfg)).unwrap();
    assert_eq!(runtime.engine_sets().len(), 2);
    both_until(&mut runtime, 8);
    let ((), n) = counted(|| both_until(&mut runtime, 20));
    let sizes: Vec<(u32, u32)> = runtime
        .streams()
        .iter()
        .map(|s| (s.input_size().width, s.input_size().height))
        .collect();
    assert_eq!(sizes, [(118, 70), (94, 70)]);
    for st in runtime.streams() {
        assert!(st.frames_processed() >= 28);
        assert_eq!(st.last().tracks.len(), 1);
    }
    runtime.finish().unwrap();
    assert_eq!(
        n, 0,
        "{n} heap allocations in 20 steady-state frames per stream (two input sizes)"
    );
    eprintln!("RESULT 2 streams of two input sizes, 20 steady-state frames each: {n} allocations");
}

/// A camera joining with an input size the run has no engines for waits, opened, while the run's
/// export worker makes them: a step that polls the worker and finds nothing arrived allocates
/// nothing (the running stream is paused, so such a step does nothing else).
#[test]
fn polling_the_export_worker_while_a_stream_waits_allocates_nothing() {
    use crate::support::cameras::{synthetic, Late};
    use referdino::pipeline::commands::{Command, Request, Streams};
    use referdino::pipeline::live::{Runtime, RuntimeConfig, Step};
    use std::sync::atomic::{AtomicBool, Ordering};
    let open = std::sync::Arc::new(AtomicBool::new(false));
    let late = Late {
        inner: synthetic((94, 70)),
        open: open.clone(),
    };
    let mut c = RuntimeConfig::new("label only");
    c.short_side = 70;
    c.window = Some(2);
    c.max_text = Some(16);
    c.threads = Some(2);
    c.prompt = Some(PROMPT.into());
    let mut rt =
        Runtime::with_caller_sources(c, vec![Box::new(late), synthetic((118, 70))]).unwrap();
    let r = rt.command(&Request {
        id: None,
        stream: Some(Streams::One(1)),
        command: Command::Pause,
    });
    assert!(r.ok, "{r:?}");
    // The first blocking wait for a command sets up this thread's channel context.
    assert_eq!(rt.step(), Step::Idle);
    open.store(true, Ordering::SeqCst);
    let mut steps = 0;
    while rt.exporting().count() == 0 {
        assert!(rt.gone().next().is_none() && rt.stream(0).is_none());
        assert_ne!(rt.step(), Step::Ended);
        steps += 1;
        assert!(steps < 1000, "the late camera never waited for its engines");
    }
    let (mut polled, mut allocs) = (0u32, 0u64);
    while rt.exporting().count() == 1 {
        let (s, n) = counted(|| rt.step());
        assert_ne!(s, Step::Ended);
        // A step in which the engines arrived binds them and builds the stream: not counted.
        if rt.exporting().count() == 1 {
            polled += 1;
            allocs += n;
        }
        steps += 1;
        assert!(steps < 10_000, "the engines never arrived");
    }
    assert!(rt.stream(0).is_some(), "{:?}", rt.gone().next());
    rt.finish().unwrap();
    assert!(
        polled >= 1,
        "no step polled the worker while the export was under way"
    );
    assert_eq!(
        allocs, 0,
        "{allocs} heap allocations in {polled} steps polling the export worker"
    );
    eprintln!("RESULT {polled} steps polling the export worker: {allocs} allocations");
}
