//! The run's export worker (engines for cameras that join later with an input size the run has no
//! set for), on the tiny model. The evidence is the worker's own account ([`ExportWatch`]), not
//! timing: two new sizes are exported by one worker thread that loads the checkpoint once; a size
//! whose export failed is refused for a later camera of that size without a second export; and
//! the worker has ended by the time the runtime is dropped or finished with an export under way.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{synthetic, Late};

use referdino::camera::FrameSource;
use referdino::pipeline::live::{ExportWatch, Runtime, RuntimeConfig, Step};

/// The running camera, about 16:9 at shorter side 70; the late ones are 4:3 and square.
const WIDE: (u32, u32) = (118, 70);
const NARROW: (u32, u32) = (94, 70);
const SQUARE: (u32, u32) = (70, 70);

fn config(short_side: u32) -> RuntimeConfig {
    let mut c = RuntimeConfig::new("label only");
    c.short_side = short_side;
    c.window = Some(4);
    c.max_text = Some(16);
    c.threads = Some(2);
    c.prompt = Some("the moving square".into());
    c
}

/// A camera of `size` that delivers frames once its flag (returned) is raised.
fn late(size: (u32, u32)) -> (Box<dyn FrameSource>, Arc<AtomicBool>) {
    let open = Arc::new(AtomicBool::new(false));
    let src = Late {
        inner: synthetic(size),
        open: open.clone(),
    };
    (Box::new(src), open)
}

/// Steps `rt` until `done` says so (the run must go on meanwhile), at most `limit` steps.
fn step_until(rt: &mut Runtime, what: &str, mut done: impl FnMut(&Runtime) -> bool) {
    let mut steps = 0;
    while !done(rt) {
        let s = rt.step();
        assert!(s != Step::Ended, "the run ended while waiting for {what}");
        steps += 1;
        assert!(steps < 20_000, "never saw {what}");
    }
}

/// Why stream `index` left the run, if it did.
fn gone(rt: &Runtime, index: usize) -> Option<String> {
    rt.gone()
        .find(|(i, _)| *i == index)
        .map(|(_, w)| w.to_string())
}

/// A run on a 16:9 camera with a 4:3 and a square camera joining later: the worker starts with
/// the first of them (not at start-up), both sizes are listed while queued and under way, both are
/// exported by that one worker, which loads the checkpoint once and lets it go when both are done,
/// and both cameras join and run.
#[test]
fn two_new_sizes_are_exported_by_one_worker_loading_the_checkpoint_once() {
    let (narrow, open_narrow) = late(NARROW);
    let (square, open_square) = late(SQUARE);
    let mut rt =
        Runtime::with_caller_sources(config(70), vec![narrow, square, synthetic(WIDE)]).unwrap();
    let watch = rt.export_watch().expect("a run exported from the weights");
    assert_eq!(
        watch.workers_started(),
        0,
        "no worker before a size needs one"
    );
    open_narrow.store(true, Ordering::SeqCst);
    open_square.store(true, Ordering::SeqCst);
    let mut most = 0;
    step_until(&mut rt, "both late cameras joining", |rt| {
        for k in [0, 1] {
            if let Some(why) = gone(rt, k) {
                panic!("stream {k} could not join: {why}");
            }
        }
        most = most.max(rt.exporting().count());
        rt.stream(0).is_some() && rt.stream(1).is_some()
    });
    assert_eq!(
        most, 2,
        "the size waiting behind the other was not listed as being exported"
    );
    assert_eq!(rt.exporting().count(), 0);
    assert_eq!(
        (
            watch.workers_started(),
            watch.checkpoint_loads(),
            watch.exported(),
            watch.failed()
        ),
        (1, 1, 2, 0),
        "workers, checkpoint loads, sizes exported, failed"
    );
    let mut sizes: Vec<(usize, usize)> = rt
        .engine_sets()
        .iter()
        .map(|e| (e.dims().width, e.dims().height))
        .collect();
    sizes.sort_unstable();
    assert_eq!(sizes, [(70, 70), (94, 70), (118, 70)]);
    // Nothing left to export: the worker lets the checkpoint go (and would load it again).
    step_until(&mut rt, "the checkpoint released", |_| {
        watch.checkpoint_releases() == 1
    });
    step_until(&mut rt, "frames of both joined streams", |rt| {
        [0, 1]
            .iter()
            .all(|&k| rt.stream(k).is_some_and(|s| s.frames_processed() >= 1))
    });
    rt.finish().unwrap();
    assert_eq!(watch.workers_ended(), 1, "the worker outlived its run");
    assert!(!watch.cancelled(), "nothing was left to export");
}

/// At shorter side 40 a square camera (40x40, 39 feature tokens) is too small for the tiny model's
/// 50 queries, while the 2:1 camera the run starts on (80x40) is not: the first square camera's
/// export fails and it leaves the run with the reason; a second square camera joining later is
/// refused at once with the remembered reason, without a second export; the run goes on.
#[test]
fn a_size_whose_export_failed_is_refused_later_without_a_second_export() {
    let (first, open_first) = late((40, 40));
    let (second, open_second) = late((40, 40));
    let mut rt =
        Runtime::with_caller_sources(config(40), vec![first, second, synthetic((80, 40))]).unwrap();
    let watch = rt.export_watch().unwrap();
    open_first.store(true, Ordering::SeqCst);
    step_until(&mut rt, "the first square camera leaving", |rt| {
        gone(rt, 0).is_some()
    });
    let why = gone(&rt, 0).unwrap();
    assert!(
        why.contains("40x40 engines could not be made") && why.contains("50 queries"),
        "{why}"
    );
    assert_eq!((watch.failed(), watch.checkpoint_loads()), (1, 1));

    let before = rt.stream(2).unwrap().frames_processed();
    open_second.store(true, Ordering::SeqCst);
    let mut exported_again = false;
    step_until(&mut rt, "the second square camera leaving", |rt| {
        exported_again |= rt.exporting().count() > 0;
        gone(rt, 1).is_some()
    });
    let why = gone(&rt, 1).unwrap();
    assert!(
        why.contains("resize to 40x40")
            && why.contains("export failed earlier in this run")
            && why.contains("50 queries"),
        "{why}"
    );
    assert!(!exported_again, "the failed size was queued again");
    assert_eq!(
        (
            watch.workers_started(),
            watch.checkpoint_loads(),
            watch.failed()
        ),
        (1, 1, 1),
        "workers, checkpoint loads, failed exports"
    );
    step_until(&mut rt, "the running camera going on", |rt| {
        rt.stream(2).unwrap().frames_processed() > before
    });
    rt.finish().unwrap();
    assert_eq!(watch.workers_ended(), 1);
}

/// A run whose two late cameras (4:3, square) have opened and whose worker is exporting the first
/// of their sizes (the checkpoint loaded): both sizes take it several tenths of a second on the
/// tiny model, so the caller ends the run in the middle of that work.
fn exporting_two_sizes() -> (Runtime, ExportWatch) {
    let (narrow, open_narrow) = late(NARROW);
    let (square, open_square) = late(SQUARE);
    let mut rt =
        Runtime::with_caller_sources(config(70), vec![narrow, square, synthetic(WIDE)]).unwrap();
    let watch = rt.export_watch().unwrap();
    open_narrow.store(true, Ordering::SeqCst);
    open_square.store(true, Ordering::SeqCst);
    step_until(&mut rt, "the worker loading the checkpoint", |_| {
        watch.checkpoint_loads() == 1
    });
    (rt, watch)
}

/// Dropping the runtime (as a library user does) or finishing it while an export is under way
/// stops the worker early and waits for it: its thread has ended when the drop or `finish`
/// returns, with the sizes left unexported.
#[test]
fn ending_the_run_stops_and_joins_the_export_worker() {
    let (rt, watch) = exporting_two_sizes();
    let t = Instant::now();
    drop(rt);
    let took = t.elapsed();
    eprintln!("dropping the runtime with an export under way took {took:?}");
    assert_eq!(
        watch.workers_ended(),
        1,
        "the worker outlived the dropped runtime"
    );
    assert!(
        watch.cancelled() && watch.exported() < 2,
        "the worker was not stopped ({} sizes exported)",
        watch.exported()
    );
    // Generous: the worker stops after the engine it is on (a fraction of a second here).
    assert!(took < Duration::from_secs(60), "{took:?}");

    let (rt, watch) = exporting_two_sizes();
    let s = rt.finish().unwrap();
    assert_eq!(
        watch.workers_ended(),
        1,
        "the worker outlived the finished run"
    );
    assert!(watch.cancelled() && watch.exported() < 2);
    assert!(
        s.streams
            .iter()
            .chain([&s])
            .any(|o| o.source.contains("engines were still being exported")),
        "{}",
        s.text()
    );
}
