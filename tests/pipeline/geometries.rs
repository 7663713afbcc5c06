//! Cameras of different aspect ratios in one live run: one engine set per input size, the text
//! engine shared. The independent expectation is a run of each source alone: with frames from
//! folders (every frame processed, in order), each stream of a mixed run must give, frame for
//! frame, the very masks that source gives in a run of its own (the same engines exported or
//! loaded at its size, the same backend, so bit for bit). Also: engine directories of two sizes
//! used by two sources, the refusals (a source matching no directory, directories that disagree, a
//! fifth input size), a camera joining later with a new aspect ratio, whose engines are exported in
//! the background while the other stream goes on, and `--image-batch` gathering frames of one size
//! only.

use crate::support::common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use super::{synthetic, Late};
use std::sync::Arc;

use referdino::camera::synthetic::Synthetic;
use referdino::config::ModelConfig;
use referdino::graph::engines::{ExportOptions, Geometry};
use referdino::graph::export::export_engines;
use referdino::pipeline::commands::InputSize;
use referdino::pipeline::live::{RunSummary, Runtime, RuntimeConfig, Step};
use referdino::weights::Checkpoint;

/// Shorter side of every input here; the frames are written at it, so nothing is resampled.
const SHORT: u32 = 70;
/// About 16:9 and 4:3 at shorter side 70.
const WIDE: (u32, u32) = (118, 70);
const NARROW: (u32, u32) = (94, 70);
const FRAMES: u64 = 4;
const PROMPT: &str = "the moving square";

/// `FRAMES` synthetic frames of `(w, h)` as PNGs in `dir` (`offset` shifts the pattern, so two
/// folders show different scenes).
fn folder(dir: &Path, (w, h): (u32, u32), offset: u64) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..FRAMES {
        let mut rgb = vec![0u8; (w * h * 3) as usize];
        Synthetic::render(i + offset, w, h, &mut rgb);
        image::RgbImage::from_raw(w, h, rgb)
            .unwrap()
            .save(dir.join(format!("{i:03}.png")))
            .unwrap();
    }
    dir.to_path_buf()
}

fn config(sources: &[&Path]) -> RuntimeConfig {
    let mut c = RuntimeConfig::new(sources[0].to_str().unwrap());
    c.sources = sources[1..]
        .iter()
        .map(|p| p.to_str().unwrap().to_string())
        .collect();
    c.short_side = SHORT;
    c.window = Some(4);
    c.max_text = Some(16);
    c.threads = Some(2);
    c.prompt = Some(PROMPT.into());
    c.collect_masks = true;
    c
}

fn size((width, height): (u32, u32)) -> Option<InputSize> {
    Some(InputSize { width, height })
}

/// The masks of every frame of a run's streams, stream 0 first.
fn masks(s: &RunSummary) -> Vec<&Vec<Vec<u8>>> {
    std::iter::once(&s.masks)
        .chain(s.streams.iter().map(|o| &o.masks))
        .collect()
}

/// Each stream's masks against those of its source run alone, bit for bit.
fn same_as_alone(mixed: &[Vec<u8>], alone: &[Vec<u8>], what: &str) {
    assert_eq!(
        mixed.len(),
        FRAMES as usize,
        "{what}: frames of the mixed run"
    );
    assert_eq!(
        alone.len(),
        FRAMES as usize,
        "{what}: frames of the run alone"
    );
    for (k, (m, a)) in mixed.iter().zip(alone).enumerate() {
        let differ = m.iter().zip(a).filter(|(x, y)| x != y).count();
        assert_eq!(differ, 0, "{what}, frame {k}: {differ} pixels differ");
    }
    assert!(
        alone.iter().any(|m| m.iter().any(|&v| v != 0)),
        "{what}: the masks are empty, so the comparison says nothing"
    );
}

/// Two folders of different aspect ratios in one run (engines exported at start-up at both sizes)
/// give each stream the masks of its source run alone, and the summary says each stream's input.
#[test]
fn two_aspect_ratios_in_one_run_give_each_stream_its_masks_alone() {
    let dir = tempfile::tempdir().unwrap();
    let wide = folder(&dir.path().join("wide"), WIDE, 0);
    let narrow = folder(&dir.path().join("narrow"), NARROW, 5);
    let rt = Runtime::new(config(&[&wide, &narrow])).unwrap();
    let sizes: Vec<(usize, usize)> = rt
        .engine_sets()
        .iter()
        .map(|e| (e.dims().width, e.dims().height))
        .collect();
    assert_eq!(
        sizes,
        [(118, 70), (94, 70)],
        "one engine set per input size"
    );
    let sets = rt.engine_sets();
    assert!(
        sets[0].text().same(sets[1].text()),
        "one text engine for both"
    );
    let inputs: Vec<InputSize> = rt.streams().iter().map(|s| s.input_size()).collect();
    assert_eq!(inputs, [size(WIDE).unwrap(), size(NARROW).unwrap()]);
    // The `status` reply of each stream carries its input size.
    let st = rt.streams()[1].stats();
    assert_eq!(st.input, size(NARROW));
    let status = serde_json::to_value(&st).unwrap();
    assert_eq!(
        status["input"],
        serde_json::json!({"width": 94, "height": 70})
    );
    let mixed = rt.run().unwrap();
    assert_eq!(
        (mixed.input, mixed.streams[0].input),
        (size(WIDE), size(NARROW))
    );
    let j = mixed.to_json();
    assert_eq!(j["input"], serde_json::json!({"width": 118, "height": 70}));
    assert_eq!(j["streams"][0]["input"]["width"], 94);
    assert!(
        mixed.text().contains("(model input 94x70)"),
        "{}",
        mixed.text()
    );

    let wide_alone = Runtime::new(config(&[&wide])).unwrap().run().unwrap();
    let narrow_alone = Runtime::new(config(&[&narrow])).unwrap().run().unwrap();
    assert_eq!(narrow_alone.input, size(NARROW));
    let m = masks(&mixed);
    same_as_alone(m[0], &wide_alone.masks, "the 16:9 stream");
    same_as_alone(m[1], &narrow_alone.masks, "the 4:3 stream");
}

fn model() -> (Checkpoint, ModelConfig) {
    let ck = Checkpoint::load(&common::fixture("referdino-tiny/weights.safetensors")).unwrap();
    let cfg = ModelConfig::from_file(&common::fixture("referdino-tiny/config.json")).unwrap();
    (ck, cfg)
}

/// An engine directory of `(w, h)` with window `window`, written by the library's export.
fn export(ck: &Checkpoint, cfg: &ModelConfig, out: &Path, (w, h): (u32, u32), window: usize) {
    let geo = Geometry {
        height: h as usize,
        width: w as usize,
        max_text: 16,
        window,
    };
    export_engines(ck, cfg, &geo, &ExportOptions::default(), out).unwrap();
}

fn with_dirs(sources: &[&Path], dirs: &[&Path]) -> RuntimeConfig {
    let mut c = config(sources);
    // An engine directory fixes window and text length: not given.
    c.window = None;
    c.max_text = None;
    c.engines = Some(dirs[0].to_path_buf());
    c.more_engines = dirs[1..].iter().map(|d| d.to_path_buf()).collect();
    c
}

fn start_error(c: RuntimeConfig) -> String {
    format!("{:#}", Runtime::new(c).err().expect("the run is refused"))
}

/// `--engines` given twice, one directory per input size: each source runs on the directory of its
/// size and gives the masks of its source run alone on that directory. A source of a third size is
/// refused at start-up naming it and the sizes there are, so are directories that disagree on the
/// window, two of one size and a fifth; a camera joining later with a size no directory takes
/// cannot join, and the other stream goes on.
#[test]
fn engine_directories_of_two_sizes_serve_the_sources_of_each() {
    let dir = tempfile::tempdir().unwrap();
    let (ck, cfg) = model();
    let (a, b, c4) = (
        dir.path().join("e-wide"),
        dir.path().join("e-narrow"),
        dir.path().join("e-narrow-w3"),
    );
    export(&ck, &cfg, &a, WIDE, 4);
    export(&ck, &cfg, &b, NARROW, 4);
    let wide = folder(&dir.path().join("wide"), WIDE, 0);
    let narrow = folder(&dir.path().join("narrow"), NARROW, 5);

    let mixed = Runtime::new(with_dirs(&[&narrow, &wide], &[&a, &b]))
        .unwrap()
        .run()
        .unwrap();
    assert_eq!(
        (mixed.input, mixed.streams[0].input),
        (size(NARROW), size(WIDE))
    );
    let narrow_alone = Runtime::new(with_dirs(&[&narrow], &[&b]))
        .unwrap()
        .run()
        .unwrap();
    let wide_alone = Runtime::new(with_dirs(&[&wide], &[&a]))
        .unwrap()
        .run()
        .unwrap();
    let m = masks(&mixed);
    same_as_alone(m[0], &narrow_alone.masks, "the 4:3 stream on its directory");
    same_as_alone(m[1], &wide_alone.masks, "the 16:9 stream on its directory");

    // A square camera: neither directory takes 70x70.
    let square = folder(&dir.path().join("square"), (70, 70), 0);
    let e = start_error(with_dirs(&[&wide, &square], &[&a, &b]));
    assert!(
        e.contains("source 1") && e.contains("resize to 70x70"),
        "{e}"
    );
    assert!(
        e.contains(&format!("118x70 ({})", a.display()))
            && e.contains(&format!("94x70 ({})", b.display())),
        "{e}"
    );
    // One directory keeps its message.
    let e = start_error(with_dirs(&[&square], &[&a]));
    assert!(e.contains("take 118x70 images"), "{e}");

    // Directories that disagree on the window, two of one size, one too many.
    export(&ck, &cfg, &c4, NARROW, 3);
    let e = start_error(with_dirs(&[&wide], &[&a, &c4]));
    assert!(e.contains("disagree on the window"), "{e}");
    // A window given is checked against the directory's even when it is the default (it was taken
    // as "not given" and silently replaced by the directory's 3).
    let mut c = with_dirs(&[&narrow], &[&c4]);
    c.window = Some(referdino::config::DEFAULT_WINDOW);
    let e = start_error(c);
    assert!(
        e.contains(&format!(
            "--window {}: the engines in",
            referdino::config::DEFAULT_WINDOW
        )),
        "{e}"
    );
    let e = start_error(with_dirs(&[&wide], &[&a, &a]));
    assert!(e.contains("both take 118x70 images"), "{e}");
    // Every pair is compared, not each directory with the first only.
    let e = start_error(with_dirs(&[&wide], &[&a, &b, &b]));
    assert!(
        e.contains("both take 94x70 images") && e.contains(&b.display().to_string()),
        "{e}"
    );
    let five: Vec<&Path> = vec![&a, &b, &c4, &a, &b];
    let e = start_error(with_dirs(&[&wide], &five));
    assert!(
        e.contains("--engines given 5 times") && e.contains("at most 4"),
        "{e}"
    );
    // The existing refusals stay.
    let mut batched = with_dirs(&[&wide, &narrow], &[&a, &b]);
    batched.image_batch = 2;
    let e = start_error(batched);
    assert!(e.contains("--image-batch 2 needs the image engine"), "{e}");

    // A camera that joins later with a size no directory takes: its stream cannot join, with the
    // reason; the other stream goes on.
    let open = Arc::new(AtomicBool::new(false));
    let late = Late {
        inner: synthetic(NARROW),
        open: open.clone(),
    };
    let mut c = with_dirs(&[&wide], &[&a]);
    c.source = "label only".into();
    let mut rt = Runtime::with_caller_sources(c, vec![Box::new(late), synthetic(WIDE)]).unwrap();
    open.store(true, Ordering::SeqCst);
    let mut steps = 0;
    while rt.waiting().count() > 0 || rt.stream(1).unwrap().frames_processed() < 3 {
        assert_ne!(rt.step(), Step::Ended);
        steps += 1;
        assert!(steps < 4000, "stream 0 neither joined nor left");
    }
    let gone: Vec<(usize, String)> = rt.gone().map(|(i, w)| (i, w.to_string())).collect();
    assert_eq!(gone.len(), 1, "{gone:?}");
    assert!(
        gone[0].0 == 0 && gone[0].1.contains("resize to 94x70") && gone[0].1.contains("118x70"),
        "{gone:?}"
    );
    assert!(rt.stream(0).is_none());
    rt.finish().unwrap();
}

/// At most four input sizes in a run: a fifth is refused at start-up, naming them all, before any
/// engine is exported.
#[test]
fn a_fifth_input_size_is_refused() {
    let sizes = [(118, 70), (94, 70), (70, 70), (70, 94), (140, 70)];
    let specs: Vec<String> = sizes
        .iter()
        .map(|(w, h)| format!("synthetic:{w}x{h}@30"))
        .collect();
    let mut c = RuntimeConfig::new(&specs[0]);
    c.sources = specs[1..].to_vec();
    c.short_side = SHORT;
    assert_eq!(referdino::limits::MAX_GEOMETRIES, 4);
    let e = start_error(c);
    assert!(
        e.contains("5 input sizes") && e.contains("more than the 4 engine sets"),
        "{e}"
    );
    assert!(e.contains("140x70 (stream 4, 140x70 frames)"), "{e}");
}

/// A 4:3 camera that appears after the run started on a 16:9 one: its engines are exported on a
/// thread of their own while the 16:9 stream keeps processing frames, then it joins and runs on
/// them, with the objects the others have.
#[test]
fn a_camera_joining_with_a_new_aspect_ratio_gets_engines_without_stalling_the_others() {
    let open = Arc::new(AtomicBool::new(false));
    let late = Late {
        inner: synthetic(NARROW),
        open: open.clone(),
    };
    let mut c = config(&[Path::new("label only")]);
    c.collect_masks = false;
    let mut rt = Runtime::with_caller_sources(c, vec![Box::new(late), synthetic(WIDE)]).unwrap();
    assert_eq!(rt.engine_sets().len(), 1);
    // The 16:9 stream warms up first (prompt encoded, first runs done): a stall during the export
    // is then told from the stream's own start-up.
    let mut steps = 0;
    while rt.stream(1).unwrap().frames_processed() < 3 {
        let s = rt.step();
        assert!(s != Step::Ended && s != Step::Failed, "{s:?}");
        steps += 1;
        assert!(steps < 20_000, "stream 1 never processed its first frames");
    }
    open.store(true, Ordering::SeqCst);
    let (mut steps, mut during, mut seen_export) = (0, 0u64, false);
    let mut export_started = None;
    while rt.stream(0).is_none() {
        if let Some((_, why)) = rt.gone().next() {
            panic!("stream 0 could not join: {why}");
        }
        let exporting = rt.exporting().count() > 0;
        seen_export |= exporting;
        if exporting {
            export_started.get_or_insert_with(std::time::Instant::now);
        }
        let before = rt.stream(1).unwrap().frames_processed();
        let s = rt.step();
        assert!(s != Step::Ended && s != Step::Failed, "{s:?}");
        if exporting {
            during += rt.stream(1).unwrap().frames_processed() - before;
        }
        if rt.exporting().count() > 0 {
            // While it waits for its engines, a command for it says so.
            let r = rt.command(&referdino::pipeline::commands::Request {
                id: None,
                stream: Some(referdino::pipeline::commands::Streams::One(0)),
                command: referdino::pipeline::commands::Command::Status,
            });
            let e = r.error.unwrap_or_default();
            assert!(
                e.contains("the engines of its 94x70 input are being exported"),
                "{e}"
            );
        }
        steps += 1;
        assert!(steps < 20_000, "stream 0 never joined");
    }
    assert!(
        seen_export,
        "the engines were not exported in the background"
    );
    let took = export_started.map_or(0.0, |t| t.elapsed().as_secs_f64());
    eprintln!(
        "the 16:9 stream processed {during} frames in the {took:.2} s the 4:3 engines took to export"
    );
    assert!(
        during >= 1,
        "the other stream stalled while the engines were exported"
    );
    assert_eq!(rt.exporting().count(), 0);
    let sizes: Vec<(usize, usize)> = rt
        .engine_sets()
        .iter()
        .map(|e| (e.dims().width, e.dims().height))
        .collect();
    assert_eq!(sizes, [(118, 70), (94, 70)]);
    let sets = rt.engine_sets();
    assert!(
        sets[0].text().same(sets[1].text()),
        "the new set shares the text engine"
    );
    while rt.stream(0).unwrap().frames_processed() < 2 {
        let s = rt.step();
        assert!(s != Step::Ended && s != Step::Failed, "{s:?}");
    }
    let joined = rt.stream(0).unwrap();
    assert_eq!(joined.input_size(), size(NARROW).unwrap());
    assert_eq!(joined.settings().prompt.as_deref(), Some(PROMPT));
    assert!(joined.last().tracks.len() == 1);
    let s = rt.finish().unwrap();
    assert_eq!((s.input, s.streams[0].input), (size(NARROW), size(WIDE)));
}

/// `--image-batch 2` over two 16:9 folders and a 4:3 one: the image engine of each size takes only
/// frames of its size (a 4:3 frame in a 16:9 batch would fail the frame), every frame of every stream
/// is processed, and each stream gives what its source gives alone at that batch (within the
/// batching noise of `multi::image_batch_over_two_streams_matches_each_stream_alone`: the batched
/// image engine rounds a row differently next to another stream's frame).
#[test]
fn image_batch_groups_only_streams_of_one_input_size() {
    let dir = tempfile::tempdir().unwrap();
    let wide = folder(&dir.path().join("wide"), WIDE, 0);
    let wide2 = folder(&dir.path().join("wide2"), WIDE, 9);
    let narrow = folder(&dir.path().join("narrow"), NARROW, 5);
    let batched = |sources: &[&Path]| {
        let mut c = config(sources);
        c.image_batch = 2;
        Runtime::new(c).unwrap().run().unwrap()
    };
    let mixed = batched(&[&wide, &narrow, &wide2]);
    let m = masks(&mixed);
    let all = std::iter::once(&mixed).chain(&mixed.streams);
    for (k, s) in all.enumerate() {
        assert_eq!(s.frames_failed, 0, "stream {k}: {}", mixed.text());
        assert_eq!(s.frames_processed, FRAMES, "stream {k}");
    }
    for (k, src) in [&wide, &narrow, &wide2].into_iter().enumerate() {
        let alone = batched(&[src]);
        assert_eq!(m[k].len(), alone.masks.len(), "stream {k}");
        for (f, (a, b)) in m[k].iter().zip(&alone.masks).enumerate() {
            let differ = a.iter().zip(b).filter(|(x, y)| x != y).count();
            assert!(
                differ * 200 < a.len(),
                "stream {k} frame {f}: {differ} pixels differ from its source alone"
            );
        }
    }
}

/// Library callers may give one set with a batched image engine and another without a separate
/// image engine (the whole-frame set): the second set's stream runs on its own instead of being
/// sent down the batched path (where every one of its frames failed), and every frame of every
/// stream is processed.
#[test]
fn a_whole_frame_set_beside_a_batched_one_runs_its_streams_alone() {
    use referdino::pipeline::multi::MultiEngineSet;
    use referdino::pipeline::session::EngineSet;
    use referdino::pipeline::stream::StreamConfig;
    let dir = tempfile::tempdir().unwrap();
    let wide = folder(&dir.path().join("wide"), WIDE, 0);
    let wide2 = folder(&dir.path().join("wide2"), WIDE, 9);
    let narrow = folder(&dir.path().join("narrow"), NARROW, 5);
    let (ck, cfg) = model();
    let geo = |(w, h): (u32, u32)| Geometry {
        height: h as usize,
        width: w as usize,
        max_text: 16,
        window: 4,
    };
    let backend = referdino::backend::HostBackend::Cpu(referdino::backend::cpu::CpuBackend::new());
    let opts = ExportOptions::default();
    let batched = MultiEngineSet::on_batched(&backend, &ck, &cfg, &geo(WIDE), &opts, 1, 2).unwrap();
    let whole: MultiEngineSet = EngineSet::cpu(&ck, &cfg, &geo(NARROW), &opts)
        .unwrap()
        .into();
    let mut c = config(&[&wide, &narrow, &wide2]);
    c.threads = None;
    let sum = Runtime::with_engine_sets(c, vec![batched, whole], StreamConfig::for_model(&cfg))
        .unwrap()
        .run()
        .unwrap();
    let all = std::iter::once(&sum).chain(&sum.streams);
    for (k, s) in all.enumerate() {
        assert_eq!(s.frames_failed, 0, "stream {k}: {}", sum.text());
        assert_eq!(s.frames_processed, FRAMES, "stream {k}: {}", sum.text());
    }
    assert!(
        masks(&sum)[1].iter().any(|m| m.iter().any(|&v| v != 0)),
        "the whole-frame stream's masks are empty"
    );
}
