//! Building a [`LiveStream`] on its opened source, the same at start-up (`startup.rs`) and for a
//! stream that joins later (`admission.rs`): the engine sets streams run on (`Sets`: the host sets
//! by input size, or the device path's pool), what a stream needs besides its source
//! (`StreamPlan`), the model input its frames resize to (`source_input`), and `build_stream`
//! itself (preprocessing, mask target, objects, sinks, capture thread).

use anyhow::Context;

use super::config::RuntimeConfig;
use super::engines::{model_input, no_set_for, MoreGeometries, SourceInput};
use super::live_stream::{Lane, LiveStream};
use super::masks::MaskTarget;
use super::sink::StderrStatus;
use super::sink::{MaskCollector, OverlaySink, Sink};
use super::source::{Captured, OpenedSource};
use super::status::{status_interval, StatusMeter};
#[cfg(feature = "cuda")]
use crate::camera::Layout;
use crate::camera::{LayoutSet, Preprocessor};
use crate::output::ring::RingOptions;
#[cfg(feature = "cuda")]
use crate::pipeline::commands::Command;
use crate::pipeline::commands::{split_prompts, Controller, SelectMode};
#[cfg(feature = "cuda")]
use crate::pipeline::multi::MultiEngineSet;
use crate::pipeline::multi::{MultiConfig, MultiStream, SharedEngines};
use crate::pipeline::stream::{FrameResult, StreamConfig};

/// A device stream's lane: its engine set, its ring registered with CUDA, its objects (one per
/// prompt); `emulated`: under the device session's host emulation.
#[cfg(feature = "cuda")]
fn device_lane(
    set: crate::pipeline::multi::MultiEngineSet,
    masks: &mut MaskTarget,
    cfg: StreamConfig,
    out_size: (usize, usize),
    (max_objects, emulated): (usize, bool),
    prompts: &[&str],
) -> anyhow::Result<Lane> {
    let ring = masks
        .ring_mut()
        .context("a device stream writes its masks into a ring")?;
    let mut lane = super::device::DeviceLane::new(set, cfg, out_size, max_objects, ring, emulated)?;
    if !prompts.is_empty() {
        lane.apply(
            &Command::Prompt {
                prompt: prompts.join("; "),
            },
            None,
        )?;
    }
    Ok(Lane::Device(Box::new(lane)))
}

/// Without the `cuda` feature every run has host engines, so this is never reached.
#[cfg(not(feature = "cuda"))]
fn device_lane(
    set: std::convert::Infallible,
    _masks: &mut MaskTarget,
    _cfg: StreamConfig,
    _out_size: (usize, usize),
    _objects: (usize, bool),
    _prompts: &[&str],
) -> anyhow::Result<Lane> {
    match set {}
}

/// What building a stream needs besides its source; kept for streams that join later.
#[derive(Clone, Copy)]
pub(super) struct StreamPlan {
    /// This runtime among the process's (names the private rings of device streams, so that two
    /// runtimes of one process never take each other's).
    pub(super) run: u64,
    /// Streams run on the device-resident path (each on a set of its own, taken from the pool).
    pub(super) device: bool,
    pub(super) mcfg: MultiConfig,
    pub(super) scfg: StreamConfig,
    pub(super) ring_access: crate::access::Access,
    pub(super) emulated: bool,
    /// Configured streams (open and waiting).
    pub(super) streams: usize,
    pub(super) tty: bool,
}

/// A device stream's engine set (device-resident path; nothing without the `cuda` feature).
#[cfg(feature = "cuda")]
type DeviceSet = MultiEngineSet;
/// A device stream's engine set (device-resident path; nothing without the `cuda` feature).
#[cfg(not(feature = "cuda"))]
type DeviceSet = std::convert::Infallible;
/// The device path's pool of engine sets (always empty without the `cuda` feature).
pub(super) type DevicePool = super::pool::SetPool<DeviceSet>;

/// The engine sets streams run on.
pub(super) struct Sets {
    /// Host path: one bound set per input size, the text engine shared; empty on the device path.
    pub(super) host: Vec<SharedEngines>,
    /// Device path: the sets streams take, one each of its input size (given ready, or made when
    /// taken).
    pub(super) device: DevicePool,
    /// Where the set of another input size comes from (a camera joining later with it).
    pub(super) more: MoreGeometries,
}

impl Sets {
    /// The host set of input (width, height) `input`.
    pub(super) fn host_index(&self, (w, h): (u32, u32)) -> Option<usize> {
        self.host.iter().position(|e| {
            let d = e.dims();
            (d.width, d.height) == (w as usize, h as usize)
        })
    }

    /// Takes (or makes) a device set for stream `s` from the pool: an error naming the sizes there
    /// are when none is of its size, or saying why making one failed.
    fn take_device(&mut self, s: &SourceInput, short_side: u32) -> anyhow::Result<DeviceSet> {
        match self.device.take(s.input) {
            Some(set) => set.with_context(|| {
                format!(
                    "source {} ({}): cannot make an engine set of its {}x{} input (execution \
                     contexts of the plans, on a CUDA stream of its own)",
                    s.stream, s.description, s.input.0, s.input.1
                )
            }),
            None => Err(self.none_for(s, short_side, true)),
        }
    }

    /// The input sizes the sets take, each with where it came from when known (a directory).
    pub(super) fn available(&self) -> Vec<((u32, u32), String)> {
        let mut sizes: Vec<(u32, u32)> = Vec::new();
        let all = self.host.iter().map(|e| {
            let d = e.dims();
            (d.width as u32, d.height as u32)
        });
        for size in all.chain(self.device.sizes()) {
            if !sizes.contains(&size) {
                sizes.push(size);
            }
        }
        let from = |size: (u32, u32)| match &self.more {
            MoreGeometries::Fixed { sizes, .. } => sizes
                .iter()
                .find(|(s, _)| *s == size)
                .map(|(_, from)| from.clone())
                .unwrap_or_default(),
            MoreGeometries::Export(_) => String::new(),
        };
        sizes.into_iter().map(|s| (s, from(s))).collect()
    }

    /// The error for a stream of input size `s.input` no set takes.
    pub(super) fn none_for(&self, s: &SourceInput, short_side: u32, device: bool) -> anyhow::Error {
        let what = match (&self.more, device) {
            (_, true) => "the device engine sets left (one per stream)",
            (MoreGeometries::Fixed { what, .. }, false) => what.as_str(),
            (MoreGeometries::Export(_), false) => "the engines exported",
        };
        anyhow::anyhow!(no_set_for(s, short_side, what, &self.available()))
    }
}

/// `src`'s frame size and the model input its frames resize to, refused beyond the input limits
/// ([`model_input`]) with the source named.
pub(super) fn source_input(
    c: &RuntimeConfig,
    index: usize,
    src: &OpenedSource,
) -> anyhow::Result<SourceInput> {
    let frame = src.frame_size();
    let input = model_input(c.short_side, frame)
        .with_context(|| format!("source {index} ({})", src.description))?;
    Ok(SourceInput {
        stream: index,
        description: src.description.clone(),
        frame,
        input,
    })
}

/// Builds stream `index` on its opened source `src`, whose frames resize to `si.input`: the engine
/// set of that size (the host set, or a device set taken from the pool; none is an error naming the
/// sizes there are), preprocessing for its frame size, its mask target (ring), its objects
/// (`prompt`), its sinks, and starts its capture thread.
pub(super) fn build_stream(
    c: &RuntimeConfig,
    plan: &StreamPlan,
    sets: &mut Sets,
    (src, si): (OpenedSource, SourceInput),
    ring: Option<String>,
    prompt: Option<&str>,
) -> anyhow::Result<LiveStream> {
    let index = si.stream;
    let mcfg = plan.mcfg;
    let (fw, fh) = src.frame_size();
    let short = c.short_side.max(1);
    // Found before the preprocessor is built: a frame of another stream may be far beyond what
    // the engines (already sized) take, and its preprocessing buffers with it.
    let geo = match plan.device {
        true => {
            if !sets.device.takes(si.input) {
                return Err(sets.none_for(&si, c.short_side, true));
            }
            0
        }
        false => match sets.host_index(si.input) {
            Some(g) => g,
            None => return Err(sets.none_for(&si, c.short_side, false)),
        },
    };
    let pre = Preprocessor::try_new(fw, fh, short)
        .with_context(|| format!("source {index} ({})", src.description))?;
    log::info!(
        "stream {index}: source {}: {fw}x{fh}, model input {}x{}",
        src.description,
        si.input.0,
        si.input.1
    );
    let prompts: Vec<&str> = prompt.map(split_prompts).into_iter().flatten().collect();
    let mut ctl = Controller::default();
    if let Some(t) = c.multi {
        ctl.settings.mode = SelectMode::Multi;
        ctl.settings.threshold = t;
    }
    if !prompts.is_empty() {
        ctl.settings.prompt_version = 1;
    }
    let ring_opts = |keep: bool| RingOptions {
        access: plan.ring_access,
        keep,
    };
    let mut masks = match (&ring, plan.device) {
        (Some(name), _) => {
            MaskTarget::create_ring(name, fw, fh, c.ring_slots, &ring_opts(c.keep_ring))?
        }
        (None, false) => MaskTarget::host(fw, fh),
        // The device path writes masks into a ring (registered with CUDA); without --ring the
        // stream gets a private one, removed at exit.
        (None, true) => MaskTarget::create_ring(
            &format!("referdino-{}-{}-{index}", std::process::id(), plan.run),
            fw,
            fh,
            c.ring_slots,
            &ring_opts(false),
        )?,
    };
    let prompt_error = || format!("--prompt {:?}", prompt.unwrap_or(""));
    let lane = match plan.device {
        false => {
            let eng = sets
                .host
                .get_mut(geo)
                .context("a host stream without its engine set")?;
            let mut multi = MultiStream::new(eng, mcfg, (fh as usize, fw as usize))?;
            multi
                .set_prompts(eng, &prompts)
                .with_context(prompt_error)?;
            Lane::Host(Box::new(multi))
        }
        true => device_lane(
            sets.take_device(&si, c.short_side)?,
            &mut masks,
            StreamConfig {
                selection: mcfg.selection,
                keep_clip: c.finalize,
                ..plan.scfg
            },
            (fh as usize, fw as usize),
            (c.max_objects, plan.emulated),
            &prompts,
        )
        .with_context(prompt_error)?,
    };
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    if c.collect_masks {
        sinks.push(Box::<MaskCollector>::default());
    }
    if let Some(d) = &c.save_dir {
        let dir = if plan.streams > 1 {
            d.join(format!("stream-{index}"))
        } else {
            d.clone()
        };
        sinks.push(Box::new(OverlaySink::create(dir, c.fps)?));
    }
    let lockstep = src.is_file && !c.realtime;
    let len = src.len;
    let description = src.description.clone();
    // A device lane's preprocessing kernel reads BGR, YUYV, RGBx and BGRx itself: the capture
    // thread hands those over as the camera delivers them (no conversion; a third fewer bytes for
    // YUYV; a Jetson CSI camera's BGRx as nvvidconv wrote it). The host preprocessor reads RGB,
    // converted on the capture thread.
    let accepted = match &lane {
        Lane::Host(_) => LayoutSet::RGB,
        #[cfg(feature = "cuda")]
        Lane::Device(_) => LayoutSet::of(&[Layout::Bgr, Layout::Yuyv, Layout::Rgbx, Layout::Bgrx]),
    };
    let capture = src.start_accepting(lockstep, accepted)?;
    if c.progress {
        sinks.push(Box::new(if plan.streams == 1 {
            StderrStatus::new(len, c.max_frames)
        } else {
            StderrStatus::for_stream(index)
        }));
    }
    let mut st = LiveStream {
        index,
        description,
        frame_size: (fw, fh),
        input: si.input,
        geo,
        capture,
        pre,
        lane,
        ctl,
        sinks,
        cur: Captured {
            pixels: Vec::with_capacity(fw as usize * fh as usize * 3),
            ..Default::default()
        },
        rgb: Vec::new(),
        masks,
        last: FrameResult::default(),
        objects: Vec::new(),
        caption: String::new(),
        processed: 0,
        errors: 0,
        consecutive_errors: 0,
        max_failed: c.max_failed_frames,
        fatal: None,
        sink_errors: 0,
        skipped: 0,
        ended: false,
        meter: StatusMeter::new(status_interval(plan.tty)),
    };
    st.sync_objects();
    Ok(st)
}
