//! `referdino ros2`: the runtime as a ROS 2 node (feature `ros2`). See `board/README.md`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;

use super::args::{EngineArgs, ModelArgs};
use crate::pipeline::commands::Limits;
use crate::pipeline::live::{interrupt_flag, RuntimeConfig};
use crate::ros2::node::{self, parse_service_mapping, NodeConfig};

/// Arguments of `referdino ros2`.
#[derive(clap::Args, Debug, Clone)]
pub struct Ros2Args {
    /// Node name.
    #[arg(long = "node-name", default_value = "referdino")]
    pub node_name: String,
    /// Node namespace.
    #[arg(long, default_value = "/")]
    pub namespace: String,
    /// DDS domain id (default: $ROS_DOMAIN_ID, else 0).
    #[arg(long)]
    pub domain_id: Option<u16>,
    /// Topic/service remap `from:=to` (repeatable), e.g. `image:=/camera/color/image_raw`;
    /// `__node:=NAME` and `__ns:=/NAMESPACE` rename and move the node, as in ROS.
    #[arg(long = "remap", short = 'r')]
    pub remaps: Vec<String>,
    /// Input image topic (sensor_msgs/Image), before remapping.
    #[arg(long, default_value = "image")]
    pub image_topic: String,
    /// A named camera (repeat for several): camera NAME reads `NAME/image` (remap it, e.g.
    /// `-r front/image:=/cam_front/color/image_raw`) and publishes under `~/NAME/` (`mask`,
    /// `detections`, ...); cameras whose images resize to the same input size share one set of
    /// engines (other aspect ratios get a set of their own, the text engine shared), and the node's
    /// `prompt` topic and `set_prompt` service reach every camera, `~/NAME/prompt` only that one.
    #[arg(long = "camera", conflicts_with_all = ["image_topic", "source"])]
    pub cameras: Vec<String>,
    /// Read frames from one of our own sources instead of the image topic
    /// (`/dev/videoN`, a folder, a video file, `synthetic[:WxH[@fps]]`).
    #[arg(long)]
    pub source: Option<String>,
    /// Frame rate of synthetic sources (and of folders and files, which are paced like a camera).
    #[arg(long, default_value_t = 30)]
    pub fps: u32,
    /// Accept only WxH images from the topic (default: the first valid image sets the size the
    /// engines are built for; later images of another size are resampled to it by the runtime).
    #[arg(long, conflicts_with = "source")]
    pub image_size: Option<String>,
    /// Reliable QoS for images in and out (default: best effort, the sensor-data profile).
    #[arg(long)]
    pub image_qos_reliable: bool,
    /// Service request/reply mapping of the callers' middleware: `enhanced` (Fast DDS, the ROS 2
    /// default) or `cyclone` (rmw_cyclonedds).
    #[arg(long, default_value = "enhanced")]
    pub service_mapping: String,
    /// Also publish an annotated rgb8 image on `~/overlay`.
    #[arg(long)]
    pub overlay: bool,
    /// Also publish the mask as PNG on `~/mask/compressed` (sensor_msgs/CompressedImage).
    #[arg(long)]
    pub mask_png: bool,
    /// Initial referring expression; several objects separated by ';' ("the dog; the red ball"),
    /// ids 0, 1, ... in order.
    #[arg(long)]
    pub prompt: Option<String>,
    /// Most objects (prompts) at once (1..=16, the track table of a frame); a prompt with more is
    /// refused with an error.
    #[arg(long, default_value_t = crate::pipeline::multi::DEFAULT_MAX_OBJECTS)]
    pub max_objects: usize,
    /// Objects the cross-modal engine takes per run (static batch; engines exported at start-up
    /// only). 1 runs it once per object.
    #[arg(long, default_value_t = 1)]
    pub cross_batch: usize,
    /// Also write every frame's mask into this shared-memory ring (same-machine zero-copy readers).
    #[arg(long)]
    pub ring: Option<String>,
    /// Slots in the mask ring.
    #[arg(long, default_value_t = 8)]
    pub ring_slots: u32,
    /// Leave the ring file in place at exit (default: removed), as `referdino run --keep-ring`.
    #[arg(long)]
    pub keep_ring: bool,
    /// `--weights`, `--config`.
    #[command(flatten)]
    pub model: ModelArgs,
    /// `--backend`, `--engines`, `--plugins`, `--threads` and the input geometry.
    #[command(flatten)]
    pub engine: EngineArgs,
    /// Multi-object mode: every object whose running-mean score exceeds this threshold.
    #[arg(long)]
    pub multi: Option<f32>,
    /// Stop after this many processed frames.
    #[arg(long)]
    pub max_frames: Option<u64>,
    /// Warn when the image topic is silent this many seconds (0 = never).
    #[arg(long, default_value_t = 5.0, conflicts_with = "source")]
    pub silent_after: f64,
    /// Seconds a set_prompt call waits for the loop before it fails as busy.
    #[arg(long, default_value_t = 3.0)]
    pub service_timeout: f64,
    /// Seconds between status messages (at least 0.1).
    #[arg(long, default_value_t = 1.0, value_parser = status_period)]
    pub status_every: f64,
    /// frame_id of the outputs when frames come from `--source`.
    #[arg(long, default_value = "camera")]
    pub frame_id: String,
    /// Instead of running the model: publish this many synthetic masks + detections and report
    /// the publish cost per frame.
    #[arg(long)]
    pub publish_bench: Option<u64>,
    /// Mask size for `--publish-bench`, WxH.
    #[arg(long, default_value = "640x360")]
    pub bench_size: String,
}

/// Shortest `--status-every`: a shorter period (0 included) would publish status on every step.
const MIN_STATUS_EVERY: f64 = 0.1;

fn status_period(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    // NaN and infinity are refused with the short periods.
    if v.is_finite() && v >= MIN_STATUS_EVERY {
        Ok(v)
    } else {
        Err(format!(
            "{s} s: the status period must be at least {MIN_STATUS_EVERY} s"
        ))
    }
}

fn secs(s: f64, what: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s).with_context(|| format!("--{what} {s}: not a duration"))
}

fn size(s: &str, what: &str) -> anyhow::Result<(u32, u32)> {
    s.split_once('x')
        .and_then(|(w, h)| Some((w.parse().ok()?, h.parse().ok()?)))
        .filter(|&(w, h): &(u32, u32)| w > 0 && h > 0)
        .with_context(|| format!("--{what} {s}: expected WxH"))
}

/// CLI entry.
pub fn run(a: Ros2Args) -> anyhow::Result<()> {
    let domain_id = node::domain_id(a.domain_id, std::env::var("ROS_DOMAIN_ID").ok().as_deref())?;
    let mut cfg = NodeConfig {
        name: a.node_name.clone(),
        namespace: a.namespace.clone(),
        domain_id,
        remaps: Vec::new(),
        image_topic: a.image_topic.clone(),
        cameras: a.cameras.clone(),
        image_reliable: a.image_qos_reliable,
        service_mapping: parse_service_mapping(&a.service_mapping)?,
        overlay: a.overlay,
        mask_png: a.mask_png,
        silent_after: secs(a.silent_after, "silent-after")?,
        service_timeout: secs(a.service_timeout, "service-timeout")?,
        status_every: secs(a.status_every, "status-every")?,
        frame_id: a.frame_id.clone(),
        image_size: None,
        limits: Limits::default(),
    };
    cfg.add_remaps(a.remaps.iter().map(String::as_str))?;
    node::check_cameras(&cfg.cameras)?;
    cfg.image_size = a
        .image_size
        .as_deref()
        .map(|s| size(s, "image-size"))
        .transpose()?;
    if let Some(n) = a.publish_bench {
        let (w, h) = size(&a.bench_size, "bench-size")?;
        let report = node::publish_bench(&cfg, n, w, h, 30, Duration::from_secs(3))?;
        eprint!("{report}");
        return Ok(());
    }
    let limits = Limits::default();
    if let Some(p) = &a.prompt {
        crate::pipeline::commands::check_prompt(p, &limits)
            .map_err(|e| anyhow::anyhow!("--prompt {p:?}: {e}"))?;
    }
    let rc = RuntimeConfig {
        source: a.source.clone().unwrap_or_else(|| {
            if a.cameras.is_empty() {
                format!("ROS 2 topic {}", a.image_topic)
            } else {
                format!("ROS 2 cameras {}", a.cameras.join(", "))
            }
        }),
        prompt: a.prompt.as_deref().map(|p| p.trim().to_string()),
        max_objects: a.max_objects,
        cross_batch: a.cross_batch,
        weights: a.model.weights.clone(),
        config: a.model.config.clone(),
        backend: a.engine.backend.clone(),
        engines: a.engine.engines.first().cloned(),
        more_engines: a.engine.engines.iter().skip(1).cloned().collect(),
        plugins: a.engine.plugins.clone(),
        int8: a.engine.int8.clone(),
        threads: a.engine.threads,
        window: a.engine.window,
        max_text: a.engine.max_text,
        short_side: a.engine.short_side,
        ring: a.ring.clone(),
        ring_slots: a.ring_slots,
        keep_ring: a.keep_ring,
        max_frames: a.max_frames,
        multi: a.multi,
        realtime: true,
        fps: a.fps,
        // Video files decoded in a child process, as `referdino run` does by default.
        decoder_worker: std::env::current_exe().ok(),
        ..RuntimeConfig::default()
    };
    let stop = interrupt_flag();
    stop.store(false, Ordering::SeqCst);
    // None: interrupted before the first image, nothing to summarise.
    if let Some(s) = node::run(&cfg, rc, a.source.is_some(), stop)? {
        eprint!("{}", s.text());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        a: Ros2Args,
    }

    fn parse(args: &[&str]) -> Result<Ros2Args, String> {
        Cli::try_parse_from(std::iter::once("ros2").chain(args.iter().copied()))
            .map(|c| c.a)
            .map_err(|e| e.to_string())
    }

    /// Flags that only the image topic reads are refused beside `--source` instead of being
    /// ignored, and a status period under 0.1 s is refused.
    #[test]
    fn topic_only_flags_and_status_period_are_checked() {
        let src = ["--source", "synthetic"];
        for extra in [["--image-size", "64x48"], ["--silent-after", "2"]] {
            let e = parse(&[&src[..], &extra[..]].concat()).unwrap_err();
            assert!(
                e.contains("cannot be used with") && e.contains(extra[0]),
                "{e}"
            );
            // Without --source they are the topic's settings.
            parse(&extra).unwrap();
        }
        // Their defaults do not count as given.
        assert_eq!(parse(&src).unwrap().source.as_deref(), Some("synthetic"));
        for bad in ["0", "0.05", "-1", "NaN", "inf"] {
            let e = parse(&[&format!("--status-every={bad}")]).unwrap_err();
            assert!(
                e.contains("--status-every") && e.contains("at least 0.1 s"),
                "{bad}: {e}"
            );
        }
        assert_eq!(parse(&["--status-every", "0.1"]).unwrap().status_every, 0.1);
        assert_eq!(parse(&[]).unwrap().status_every, 1.0);
    }
}
