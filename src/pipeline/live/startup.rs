//! Making a [`Runtime`]: its constructors (sources opened from the configuration or given by the
//! caller, engines loaded from the configuration or given) and `assemble`, which binds the engine
//! sets, builds the streams whose source opened, and sets up the command inbox; with the steps only
//! start-up takes (checking the configuration, opening the sources side by side, reading the
//! caller's sources' first frames). Each stream is built by `building.rs`, as one that joins later
//! is.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use super::building::{build_stream, source_input, DevicePool, Sets, StreamPlan};
use super::config::RuntimeConfig;
use super::engines::{backend_kind, load_engines, MoreGeometries, RunEngines, SourceInput};
use super::exporter::Exporter;
use super::joining::{may_appear_later, Joining, Polled};
#[cfg(feature = "cuda")]
use super::pool::DeviceSets;
#[cfg(feature = "cuda")]
use super::runtime::DeviceTurn;
use super::runtime::Runtime;
use super::source::OpenedSource;
use super::status::stderr_is_tty;
use super::template::JoinTemplate;
use crate::camera::FrameSource;
use crate::pipeline::commands::{CommandHub, Limits};
use crate::pipeline::multi::{MultiConfig, MultiEngineSet, SharedEngines, SharedText};
use crate::pipeline::post::Selection;
use crate::pipeline::stream::StreamConfig;

impl Runtime {
    /// Opens the sources, loads the engines (exported from the weights at every input size among
    /// the sources, or from the engine directories, one per input size), creates the sinks the
    /// configuration names and starts capturing.
    pub fn new(config: RuntimeConfig) -> anyhow::Result<Self> {
        let backend = backend_kind(&config)?;
        validate(&config)?;
        let starts = open_sources(&config)?;
        first_opened(&starts).context("no source")?;
        let inputs = opened_inputs(&config, &starts)?;
        let loaded = load_engines(&config, backend, &inputs, starts.len())?;
        Self::assemble(config, starts, loaded.engines, loaded.stream, loaded.more)
    }

    /// Like [`Runtime::new`] with one source the caller opened (a ROS 2 image topic) instead of the
    /// configuration's sources (then only labels): its first frame, read here (waiting as long as
    /// the source does), sizes the engines; later frames are taken latest-wins.
    pub fn with_source(
        config: RuntimeConfig,
        source: Box<dyn FrameSource>,
    ) -> anyhow::Result<Self> {
        Self::with_caller_sources(config, vec![source])
    }

    /// [`Runtime::with_source`] for several sources the caller opened (a ROS 2 node's cameras),
    /// stream `i` on `sources[i]`. Their first frames are read in parallel: the first source to
    /// deliver one sizes the engines and the run starts; each other stream joins when its first
    /// frame arrives (one of another input size once its engines are exported in the background, or
    /// with engine directories when one takes that size). A
    /// source that ends before its first frame never opens ([`Runtime::gone`]); the start-up fails
    /// only when every one does. A source still waiting for its first frame keeps its thread until
    /// it delivers or ends: give it a way to stop (the ROS 2 image source watches the node's stop
    /// flag).
    pub fn with_caller_sources(
        config: RuntimeConfig,
        sources: Vec<Box<dyn FrameSource>>,
    ) -> anyhow::Result<Self> {
        let backend = backend_kind(&config)?;
        validate(&config)?;
        let starts = caller_starts(sources)?;
        let inputs = opened_inputs(&config, &starts)?;
        let loaded = load_engines(&config, backend, &inputs, starts.len())?;
        Self::assemble(config, starts, loaded.engines, loaded.stream, loaded.more)
    }

    /// Like [`Runtime::new`] with engines the caller loaded (they must take the preprocessed frame
    /// size: a source of another input size is refused, there being no weights to export its
    /// engines from): an [`crate::pipeline::session::EngineSet`] (its frame engine runs once per
    /// object) or a [`MultiEngineSet`]. `stream` gives the model's stream settings
    /// ([`StreamConfig::for_model`]). The engine fields of the configuration are ignored.
    pub fn with_engines(
        config: RuntimeConfig,
        engines: impl Into<MultiEngineSet>,
        stream: StreamConfig,
    ) -> anyhow::Result<Self> {
        Self::with_engine_sets(config, vec![engines.into()], stream)
    }

    /// [`Runtime::with_engines`] with one engine set per input size (cameras of different aspect
    /// ratios), each stream on the set its frames resize to: the first set's text engine serves
    /// all (the others' are dropped), so every set must come from the same model and text length.
    /// Two sets of one size are refused.
    pub fn with_engine_sets(
        config: RuntimeConfig,
        sets: Vec<MultiEngineSet>,
        stream: StreamConfig,
    ) -> anyhow::Result<Self> {
        validate(&config)?;
        let starts = open_sources(&config)?;
        Self::assemble(
            config,
            starts,
            host_engines(sets)?,
            stream,
            MoreGeometries::given(),
        )
    }

    /// The device-resident path under the device session's host emulation: host engine sets for the
    /// streams to take (each stream, when it opens, the first set left of the input size its frames
    /// resize to, or one made then by the pool's maker of that size; a stream with none is refused),
    /// each stream a device lane (its own session, masks written into its ring slot) whose device
    /// memory is host memory and whose kernels are their CPU counterparts. For testing the runtime's
    /// device lanes on machines without a GPU; `--backend tensorrt` runs the real thing.
    #[cfg(feature = "cuda")]
    pub fn emulating_the_device(
        config: RuntimeConfig,
        sets: impl Into<DeviceSets>,
        stream: StreamConfig,
    ) -> anyhow::Result<Self> {
        validate(&config)?;
        let starts = open_sources(&config)?;
        Self::emulated(config, starts, sets.into(), stream)
    }

    /// [`Runtime::emulating_the_device`] on sources the caller opened, as
    /// [`Runtime::with_caller_sources`] takes them (a source still waiting for its first frame
    /// joins when it delivers one, taking its set then).
    #[cfg(feature = "cuda")]
    pub fn emulating_the_device_on(
        config: RuntimeConfig,
        sets: impl Into<DeviceSets>,
        stream: StreamConfig,
        sources: Vec<Box<dyn FrameSource>>,
    ) -> anyhow::Result<Self> {
        validate(&config)?;
        let starts = caller_starts(sources)?;
        Self::emulated(config, starts, sets.into(), stream)
    }

    #[cfg(feature = "cuda")]
    fn emulated(
        config: RuntimeConfig,
        starts: Vec<Start>,
        sets: DeviceSets,
        stream: StreamConfig,
    ) -> anyhow::Result<Self> {
        let engines = RunEngines::Device {
            sets,
            emulated: true,
        };
        let more = MoreGeometries::Fixed {
            what: "the device engine sets given".into(),
            sizes: Vec::new(),
        };
        Self::assemble(config, starts, engines, stream, more)
    }

    /// Like [`Runtime::with_engines`] on sources the caller opened ([`OpenedSource::from_source`]),
    /// stream `i` on `sources[i]`; the configuration's source fields are ignored.
    pub fn with_sources(
        config: RuntimeConfig,
        engines: impl Into<MultiEngineSet>,
        stream: StreamConfig,
        sources: Vec<OpenedSource>,
    ) -> anyhow::Result<Self> {
        validate(&config)?;
        if sources.is_empty() {
            bail!("no source");
        }
        let starts = sources.into_iter().map(Start::Opened).collect();
        let set: MultiEngineSet = engines.into();
        Self::assemble(config, starts, set.into(), stream, MoreGeometries::given())
    }

    fn assemble(
        c: RuntimeConfig,
        starts: Vec<Start>,
        engines: RunEngines,
        scfg: StreamConfig,
        more: MoreGeometries,
    ) -> anyhow::Result<Self> {
        let n = starts.len();
        let (mut sets, emulated) = match engines {
            RunEngines::Host { text, sets } => {
                let text = SharedText::new(text, scfg.max_text_len)?;
                let mut host: Vec<SharedEngines> = Vec::with_capacity(sets.len());
                for g in sets {
                    let e = SharedEngines::with_text(text.clone(), g)?;
                    let d = e.dims();
                    if host.iter().any(|h| {
                        let hd = h.dims();
                        (hd.width, hd.height) == (d.width, d.height)
                    }) {
                        bail!(
                            "two engine sets take {}x{} images: give one per input size",
                            d.width,
                            d.height
                        );
                    }
                    host.push(e);
                }
                if host.is_empty() {
                    bail!("no engine set to run the streams on");
                }
                let sets = Sets {
                    host,
                    device: DevicePool::default(),
                    more,
                };
                (sets, false)
            }
            #[cfg(feature = "cuda")]
            RunEngines::Device { sets, emulated } => {
                if sets.is_empty() {
                    bail!("no device engine set to run the streams on");
                }
                let sets = Sets {
                    host: Vec::new(),
                    device: sets,
                    more,
                };
                (sets, emulated)
            }
        };
        let rings = c.ring_names(n)?;
        let (ring_access, socket_access) = c.access()?;
        // Runtimes made in this process so far.
        static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let plan = StreamPlan {
            run: RUNS.fetch_add(1, Ordering::Relaxed),
            device: sets.host.is_empty(),
            mcfg: MultiConfig {
                tracking_alpha: scfg.tracking_alpha,
                selection: match c.multi {
                    Some(threshold) => Selection::Multi { threshold },
                    None => Selection::Single,
                },
                max_objects: c.max_objects,
                keep_clip: c.finalize,
            },
            scfg,
            ring_access,
            emulated,
            streams: n,
            tty: stderr_is_tty(c.progress) && n == 1,
        };
        let mut streams = Vec::with_capacity(n);
        let mut joining = Vec::new();
        let mut gone = Vec::new();
        for (index, (start, ring)) in starts.into_iter().zip(rings).enumerate() {
            match start {
                Start::Opened(src) => {
                    let si = source_input(&c, index, &src)?;
                    streams.push(build_stream(
                        &c,
                        &plan,
                        &mut sets,
                        (src, si),
                        ring,
                        c.prompt.as_deref(),
                    )?)
                }
                Start::Gone(why) => gone.push((index, why)),
                Start::Waiting(mut j) => {
                    j.index = index;
                    log::warn!(
                        "stream {index}: {} is not there yet; the run starts without it, and it joins when it opens",
                        j.label
                    );
                    j.ring = ring;
                    joining.push(j);
                }
            }
        }
        let mut hub = CommandHub::new(crate::limits::COMMAND_QUEUE, Limits::default());
        // A `raw:…:-` source reads its frames from stdin, so commands cannot.
        let stdin_frames = c
            .all_sources()
            .iter()
            .any(|s| crate::camera::reads_stdin(s));
        if c.stdin_commands && stdin_frames {
            log::info!("stdin carries frames (a raw:…:- source): commands only on the socket");
        } else if c.stdin_commands {
            hub.spawn_stdin();
        }
        if let Some(p) = &c.socket {
            hub.listen_unix_with(p, crate::limits::MAX_CONNECTIONS, &socket_access)?;
        }
        let exporter = match &sets.more {
            MoreGeometries::Export(backends) => Some(Exporter::new(&c, backends)),
            MoreGeometries::Fixed { .. } => None,
        };
        Ok(Runtime {
            join: JoinTemplate::new(c.prompt.as_deref(), c.max_objects, c.multi)
                .with_context(|| format!("--prompt {:?}", c.prompt.as_deref().unwrap_or("")))?,
            config: c,
            hub,
            stop: Arc::new(AtomicBool::new(false)),
            sets,
            streams,
            joining,
            gone,
            plan,
            next: 0,
            last_stream: 0,
            burst: None,
            #[cfg(feature = "cuda")]
            turn: DeviceTurn {
                lanes: super::lanes::LaneThreads::new("referdino-lane"),
                picks: Vec::new(),
                steps: Vec::new(),
            },
            started: Instant::now(),
            ended: false,
            exporter,
        })
    }
}

fn validate(c: &RuntimeConfig) -> anyhow::Result<()> {
    c.check_ranges()?;
    if c.all_sources()
        .iter()
        .filter(|s| crate::camera::reads_stdin(s))
        .count()
        > 1
    {
        bail!("only one source can read its frames from stdin (raw:WxH:FORMAT:-)");
    }
    if let Some(t) = c.multi {
        if !(0.0..=1.0).contains(&t) {
            bail!("--multi {t}: the threshold is a score in [0, 1]");
        }
    }
    Ok(())
}

/// Opens the configured sources. A camera that cannot be opened now (still enumerating,
/// unplugged) is re-opened in the background and joins later, as long as another source opened;
/// any other source that fails fails the start-up.
fn open_sources(c: &RuntimeConfig) -> anyhow::Result<Vec<Start>> {
    let decode = match &c.decoder_worker {
        Some(w) => crate::camera::VideoDecode::Isolated(crate::camera::IsolatedDecode::new(w)),
        None => crate::camera::VideoDecode::InProcess,
    };
    let specs = c.all_sources();
    let mut starts = Vec::with_capacity(specs.len());
    let mut first_error = None;
    // All at once: a camera slow to open (a GStreamer pipeline negotiating an RTSP stream, one that
    // hangs until its open timeout) delays the start by its own time only, not the others' too.
    let opened: Vec<anyhow::Result<OpenedSource>> = std::thread::scope(|scope| {
        let handles: Vec<_> = specs
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let decode = &decode;
                std::thread::Builder::new()
                    .name(format!("open-{i}"))
                    .spawn_scoped(scope, move || {
                        OpenedSource::open_with(spec, c.fps, c.realtime, decode)
                    })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h {
                Ok(h) => h
                    .join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("opening the source panicked"))),
                Err(e) => Err(anyhow::anyhow!("cannot start a thread to open it: {e}")),
            })
            .collect()
    });
    for ((i, spec), opened) in specs.iter().enumerate().zip(opened) {
        match opened {
            Ok(src) => starts.push(Start::Opened(src)),
            Err(e) if specs.len() > 1 && may_appear_later(spec) => {
                log::warn!("stream {i}: {e:#}");
                first_error.get_or_insert(e);
                let j = Joining::reopen(
                    i,
                    spec,
                    (c.fps, c.realtime),
                    decode.clone(),
                    Default::default(),
                )?;
                starts.push(Start::Waiting(j));
            }
            Err(e) => return Err(e),
        }
    }
    match (first_error, first_opened(&starts)) {
        (Some(e), None) => Err(e.context("no source could be opened")),
        _ => Ok(starts),
    }
}

/// The first source that opened (a run starts with at least one).
fn first_opened(starts: &[Start]) -> Option<&OpenedSource> {
    starts.iter().find_map(|s| match s {
        Start::Opened(o) => Some(o),
        Start::Waiting(_) | Start::Gone(_) => None,
    })
}

/// The host path's engines from whole sets: the first set's text engine serves all (the others'
/// are dropped).
fn host_engines(sets: Vec<MultiEngineSet>) -> anyhow::Result<RunEngines> {
    let mut text = None;
    let mut out = Vec::with_capacity(sets.len());
    for e in sets {
        let (t, g) = e.split_text();
        text.get_or_insert(t);
        out.push(g);
    }
    Ok(RunEngines::Host {
        text: text.context("no engine set to run the streams on")?,
        sets: out,
    })
}

/// A configured source at start-up: open, still to come, or failed for good (why).
enum Start {
    Opened(OpenedSource),
    Waiting(Joining),
    Gone(String),
}

/// The frame and input sizes of the sources open at start-up.
fn opened_inputs(c: &RuntimeConfig, starts: &[Start]) -> anyhow::Result<Vec<SourceInput>> {
    starts
        .iter()
        .enumerate()
        .filter_map(|(i, s)| match s {
            Start::Opened(src) => Some(source_input(c, i, src)),
            Start::Waiting(_) | Start::Gone(_) => None,
        })
        .collect()
}

/// The starts of the caller's sources: their first frames read in parallel until one delivers
/// (that one opened; the others wait for theirs, or, ended before their first frame, are gone);
/// an error when every one ends first.
fn caller_starts(sources: Vec<Box<dyn FrameSource>>) -> anyhow::Result<Vec<Start>> {
    if sources.is_empty() {
        bail!("no source");
    }
    let waiting = sources
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let label = s.describe();
            Joining::first_frame(i, &label, s)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Sources that ended before their first frame stay in their place (indices are the
    // caller's); they never join. A source's failure is logged once another source has opened (the
    // run goes on without it); when every source fails, the error goes to the caller alone, who
    // knows whether it is one (a node stopped before its first image is not).
    let mut failed: Vec<Option<anyhow::Error>> = waiting.iter().map(|_| None).collect();
    let mut first = None;
    while first.is_none() {
        if failed.iter().all(Option::is_some) {
            return Err(failed
                .into_iter()
                .flatten()
                .next()
                .unwrap_or_else(|| anyhow::anyhow!("no source"))
                .context("no source delivered a first frame"));
        }
        for (i, j) in waiting.iter().enumerate() {
            if failed[i].is_some() {
                continue;
            }
            match j.wait(Duration::from_millis(20)) {
                Polled::Waiting => {}
                Polled::Opened(src) => {
                    first = Some((i, src));
                    break;
                }
                Polled::Failed(e) => failed[i] = Some(e),
            }
        }
    }
    for (i, e) in failed.iter().enumerate() {
        if let Some(e) = e {
            log::error!("stream {i} ({}): {e:#}", waiting[i].label);
        }
    }
    let (k, src) = first.context("no source")?;
    let mut src = Some(src);
    let starts: Vec<Start> = waiting
        .into_iter()
        .enumerate()
        .map(|(i, j)| match src.take_if(|_| i == k) {
            Some(s) => Start::Opened(s),
            None if failed[i].is_some() => {
                Start::Gone(format!("{} ended before its first frame", j.label))
            }
            None => Start::Waiting(j),
        })
        .collect();
    Ok(starts)
}
