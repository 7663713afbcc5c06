//! The run's export worker: the engines of an input size a live run has no set for (a camera that
//! joins later with another aspect ratio) are exported from the run's weights on one background
//! thread per runtime, started when a size first needs it, one size after another from a queue.
//!
//! The worker loads the checkpoint on its first size and keeps it (weights and model
//! configuration) for the sizes queued meanwhile, dropping it when the queue runs dry: a Swin-B
//! checkpoint is about 1 GB, and on a board whose CPU and GPU share memory one copy, only while it
//! is needed, is what a run can afford; one export at a time
//! also leaves the other CPUs to the running streams. A cancel flag, checked before each size and
//! before each engine, stops it when the run ends ([`Exporter::shutdown`], also on drop). A size
//! whose export failed is remembered with the reason, so a later camera of that size is refused at
//! once instead of exported again.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use anyhow::Context;

use super::config::RuntimeConfig;
use super::engines::{check_model_limits, export_geometry, load_model, SourceInput};
use crate::backend::kind::HostBackends;
use crate::config::ModelConfig;
use crate::pipeline::multi::GeometryEngines;
use crate::weights::Checkpoint;

/// What a run's export worker has done so far, readable from any thread, also once the runtime is
/// gone ([`super::Runtime::export_watch`]): whether the input sizes shared one worker and one
/// checkpoint load, and whether the worker ended with its runtime.
#[derive(Clone, Default)]
pub struct ExportWatch(Arc<Counts>);

#[derive(Default)]
struct Counts {
    started: AtomicU32,
    ended: AtomicU32,
    loads: AtomicU32,
    releases: AtomicU32,
    exported: AtomicU32,
    failed: AtomicU32,
    cancelled: AtomicBool,
}

impl ExportWatch {
    /// Worker threads started (one per runtime at most; none until a size needs exporting).
    pub fn workers_started(&self) -> u32 {
        self.0.started.load(Ordering::SeqCst)
    }

    /// Worker threads that have ended (each counts when its thread returns, or unwinds).
    pub fn workers_ended(&self) -> u32 {
        self.0.ended.load(Ordering::SeqCst)
    }

    /// Times a worker loaded the checkpoint.
    pub fn checkpoint_loads(&self) -> u32 {
        self.0.loads.load(Ordering::SeqCst)
    }

    /// Times a worker let the checkpoint go, its queue empty.
    pub fn checkpoint_releases(&self) -> u32 {
        self.0.releases.load(Ordering::SeqCst)
    }

    /// Input sizes whose engines were exported.
    pub fn exported(&self) -> u32 {
        self.0.exported.load(Ordering::SeqCst)
    }

    /// Input sizes whose export failed (each size at most once per run).
    pub fn failed(&self) -> u32 {
        self.0.failed.load(Ordering::SeqCst)
    }

    /// Whether a worker stopped on the cancel flag with a size still to export (queued or under
    /// way), rather than idle.
    pub fn cancelled(&self) -> bool {
        self.0.cancelled.load(Ordering::SeqCst)
    }

    fn count(&self, what: fn(&Counts) -> &AtomicU32) {
        what(&self.0).fetch_add(1, Ordering::SeqCst);
    }
}

/// Counts its worker as ended when dropped: when the thread returns, and when it unwinds.
struct Ended(ExportWatch);

impl Drop for Ended {
    fn drop(&mut self) {
        self.0.count(|c| &c.ended);
    }
}

/// A size the worker finished, as the runtime collects it.
pub struct Finished {
    /// Its input (width, height).
    pub input: (u32, u32),
    /// Since when it was queued.
    pub since: Instant,
    /// The engines, or why they could not be made (also remembered, [`Exporter::failed`]).
    pub engines: Result<GeometryEngines, String>,
}

/// What the worker sends back for a size.
struct Done {
    input: (u32, u32),
    engines: Result<GeometryEngines, String>,
}

/// A size queued or under way.
struct Pending {
    input: (u32, u32),
    since: Instant,
}

/// The worker thread and its two channels.
struct Worker {
    /// Sizes to export; dropped at shutdown, which wakes an idle worker to end.
    jobs: Option<Sender<SourceInput>>,
    done: Receiver<Done>,
    cancel: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// The export worker of one runtime (its thread started when the first size is queued), the sizes
/// queued or under way, and the sizes whose export failed.
pub struct Exporter {
    config: RuntimeConfig,
    /// Loading beside the running streams: optimising a graph must not hold the run gate that
    /// their every run takes (they would stall for the whole export).
    backends: HostBackends,
    watch: ExportWatch,
    worker: Option<Worker>,
    /// Queued or under way, in queue order (the first is the one under way).
    pending: Vec<Pending>,
    /// Input sizes whose export failed, with why.
    failed: Vec<((u32, u32), String)>,
}

impl Exporter {
    /// An exporter for the run configured by `config` on `backends`; no thread until a size is
    /// queued.
    pub fn new(config: &RuntimeConfig, backends: &HostBackends) -> Self {
        Exporter {
            config: config.clone(),
            backends: backends.loading_beside_runs(),
            watch: ExportWatch::default(),
            worker: None,
            pending: Vec::new(),
            failed: Vec::new(),
        }
    }

    /// What the worker has done so far.
    pub fn watch(&self) -> &ExportWatch {
        &self.watch
    }

    /// The input sizes queued or under way, queue order.
    pub fn pending(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.pending.iter().map(|p| p.input)
    }

    /// Whether a size is queued or under way.
    pub fn busy(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Whether `input` is queued or under way.
    pub fn is_pending(&self, input: (u32, u32)) -> bool {
        self.pending.iter().any(|p| p.input == input)
    }

    /// Why the export of `input` failed earlier in this run, if it did.
    pub fn failed(&self, input: (u32, u32)) -> Option<&str> {
        self.failed
            .iter()
            .find(|(i, _)| *i == input)
            .map(|(_, why)| why.as_str())
    }

    /// Queues the export of `s.input` (the caller checks it is not queued yet), starting the worker
    /// if it is not running.
    pub fn queue(&mut self, s: SourceInput) -> anyhow::Result<()> {
        let input = s.input;
        let worker = match &mut self.worker {
            Some(w) => w,
            None => self.worker.insert(self.start()?),
        };
        worker
            .jobs
            .as_ref()
            .and_then(|j| j.send(s).ok())
            .context("the export worker has ended")?;
        self.pending.push(Pending {
            input,
            since: Instant::now(),
        });
        Ok(())
    }

    fn start(&self) -> anyhow::Result<Worker> {
        let (jobs, job_rx) = channel();
        let (done_tx, done) = channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let (c, b, flag, watch) = (
            self.config.clone(),
            self.backends.clone(),
            cancel.clone(),
            self.watch.clone(),
        );
        let thread = std::thread::Builder::new()
            .name("export-worker".into())
            .spawn(move || work(&c, &b, &job_rx, &done_tx, &flag, watch))
            .context("cannot start a thread to export the engines")?;
        self.watch.count(|c| &c.started);
        Ok(Worker {
            jobs: Some(jobs),
            done,
            cancel,
            thread: Some(thread),
        })
    }

    /// A size the worker has finished since the last call, if any (a failure is remembered). Takes
    /// nothing and allocates nothing while none has arrived.
    pub fn poll(&mut self) -> Option<Finished> {
        let w = self.worker.as_ref()?;
        let done = match w.done.try_recv() {
            Ok(d) => d,
            Err(TryRecvError::Empty) => return None,
            // The worker catches a panicking export, so only a thread that could not go on gets
            // here: every size still pending fails, one per call.
            Err(TryRecvError::Disconnected) => match self.pending.first() {
                Some(p) => Done {
                    input: p.input,
                    engines: Err("the export worker ended without its engines".into()),
                },
                None => {
                    self.shutdown();
                    self.worker = None;
                    return None;
                }
            },
        };
        let k = self.pending.iter().position(|p| p.input == done.input)?;
        let p = self.pending.remove(k);
        if let Err(why) = &done.engines {
            self.failed.push((done.input, why.clone()));
        }
        Some(Finished {
            input: done.input,
            since: p.since,
            engines: done.engines,
        })
    }

    /// Asks the worker to stop (it stops before its next size or engine); does not wait.
    pub fn cancel(&self) {
        if let Some(w) = &self.worker {
            w.cancel.store(true, Ordering::SeqCst);
        }
    }

    /// Stops the worker and waits for its thread to end. The wait is bounded by the step under way:
    /// at most the engine being built and optimised (or the checkpoint being loaded, on the first
    /// size); the flag is checked before each engine and each size, and an idle worker wakes to
    /// end when its queue closes.
    pub fn shutdown(&mut self) {
        let Some(w) = &mut self.worker else {
            return;
        };
        w.cancel.store(true, Ordering::SeqCst);
        w.jobs = None;
        if !self.pending.is_empty() {
            let sizes: Vec<String> = self
                .pending
                .iter()
                .map(|p| format!("{}x{}", p.input.0, p.input.1))
                .collect();
            log::info!(
                "the run ends: the export of {} stops (after the engine under way)",
                sizes.join(", ")
            );
        }
        if let Some(t) = w.thread.take() {
            if t.join().is_err() {
                log::error!("the export worker panicked");
            }
        }
    }
}

impl Drop for Exporter {
    /// A runtime dropped without [`super::Runtime::finish`] (a library user's) stops its worker
    /// too: no export goes on after the runtime, its result dropped.
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The worker: exports the sizes `jobs` brings, one after another, until its queue closes or
/// `cancel` is set; each result (engines or why not) goes to `done`.
fn work(
    c: &RuntimeConfig,
    backends: &HostBackends,
    jobs: &Receiver<SourceInput>,
    done: &Sender<Done>,
    cancel: &AtomicBool,
    watch: ExportWatch,
) {
    let _ended = Ended(watch.clone());
    let stop = || cancel.load(Ordering::SeqCst);
    // Loaded for the first size, kept while more sizes are queued, dropped when the queue runs dry
    // (a Swin-B checkpoint held for the rest of a long run would cost a board's shared memory; a
    // camera of yet another size later loads it again).
    let mut model: Option<(Checkpoint, ModelConfig)> = None;
    loop {
        let s = match jobs.try_recv() {
            Ok(s) => s,
            Err(_) => {
                if model.take().is_some() {
                    watch.count(|c| &c.releases);
                }
                match jobs.recv() {
                    Ok(s) => s,
                    Err(_) => return,
                }
            }
        };
        let (iw, ih) = s.input;
        if stop() {
            log::info!("engines for {iw}x{ih}: not exported, the run ended");
            watch.0.cancelled.store(true, Ordering::SeqCst);
            return;
        }
        let t0 = Instant::now();
        let r = catch_unwind(AssertUnwindSafe(|| {
            export_one(c, backends, &mut model, &s, &stop, &watch)
        }))
        .unwrap_or_else(|_| Err(anyhow::anyhow!("the export panicked")));
        let engines = match r {
            Ok(Some(g)) => {
                log::info!(
                    "engines for {iw}x{ih} (stream {}) exported in {:.1} s",
                    s.stream,
                    t0.elapsed().as_secs_f64()
                );
                watch.count(|c| &c.exported);
                Ok(g)
            }
            Ok(None) => {
                log::info!(
                    "engines for {iw}x{ih}: export stopped after {:.1} s, the run ended",
                    t0.elapsed().as_secs_f64()
                );
                watch.0.cancelled.store(true, Ordering::SeqCst);
                return;
            }
            Err(e) => {
                log::error!("engines for {iw}x{ih} (stream {}): {e:#}", s.stream);
                watch.count(|c| &c.failed);
                Err(format!("{e:#}"))
            }
        };
        let input = s.input;
        if done.send(Done { input, engines }).is_err() {
            // The runtime is gone: nothing to export for.
            return;
        }
    }
}

/// Exports the engines of `s.input` with `model`, loading it first when the worker holds none (its
/// first size, a size queued after the queue ran dry, or the load failed before); `None` once `stop` says so.
fn export_one(
    c: &RuntimeConfig,
    backends: &HostBackends,
    model: &mut Option<(Checkpoint, ModelConfig)>,
    s: &SourceInput,
    stop: &dyn Fn() -> bool,
    watch: &ExportWatch,
) -> anyhow::Result<Option<GeometryEngines>> {
    let (ck, cfg) = match model {
        Some(m) => m,
        None => {
            let t0 = Instant::now();
            let m = load_model(c.weights.as_deref(), c.config.as_deref())?;
            watch.count(|c| &c.loads);
            log::info!(
                "export worker: checkpoint loaded in {:.1} s, kept while input sizes are queued",
                t0.elapsed().as_secs_f64()
            );
            model.insert(m)
        }
    };
    check_model_limits(c, cfg, std::slice::from_ref(s))?;
    export_geometry(c, backends, (ck, cfg), s, stop)
}
