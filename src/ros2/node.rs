//! The ROS 2 node: name, namespace, topic remapping, QoS, and the wiring around the library
//! runtime ([`Runtime`]): an [`ImageTopicSource`] (or one of our own sources) feeds it, a
//! [`RosSink`] publishes every processed frame, the prompt topic and the `set_prompt` service reach
//! it through [`control`], and the loop publishes `status`. The runtime's other sinks (the
//! shared-memory mask ring, overlays on disk) work beside the node as in `referdino run`.
//!
//! Names resolve the way ROS resolves them: `/abs` stays, `~/x` becomes `<namespace>/<node>/x`,
//! `x` becomes `<namespace>/x`; then `from:=to` remaps (either side in any of those forms) replace
//! a resolved name. Defaults: input `image`, outputs and control under the node's private
//! namespace (`~/mask`, `~/mask/compressed`, `~/detections`, `~/overlay`, `~/status`, `~/prompt`,
//! service `~/set_prompt`), so a node named `referdino` in `/` publishes `/referdino/detections`.
//!
//! QoS: images in and out use the sensor-data profile (best effort, keep last 5, volatile); the
//! prompt topic, the service, detections and status are reliable (keep last 10, volatile). A
//! reliable subscriber (e.g. `ros2 topic echo` with default settings) does not match a best-effort
//! publisher: echo the mask with `--qos-reliability best_effort`, or start the node with
//! `--image-qos reliable`.
//!
//! The service mapping (how requests and replies are matched on the wire) depends on the peer's
//! middleware: `enhanced` for Fast DDS (the ROS 2 default), `cyclone` for rmw_cyclonedds.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use ros2_client::qos::{Durability, History, Reliability, WhenFull};
use ros2_client::{
    Context, ContextOptions, Name, Node, NodeName, NodeOptions, Publisher, QosProfile, Server,
    ServiceMapping, Subscription,
};

use crate::output::ring::TrackEntry;
use crate::pipeline::commands::{Limits, ObjectInfo, RuntimeStats};
use crate::pipeline::live::{FrameOutput, RunSummary, Runtime, RuntimeConfig, Step};
use crate::pipeline::stream::FrameResult;
use crate::ros2::control::{self, Control, ControlThread};
use crate::ros2::image_in::{ImageTopicSource, InputStats};
use crate::ros2::msgs::{
    types, Detection2DArray, Header, Image, SetPromptRequest, SetPromptResponse, StringMsg, Time,
};
use crate::ros2::publish::{wall_clock_ns, Outputs, RosSink, Timings};

/// Node settings (the CLI fills them).
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Node name.
    pub name: String,
    /// Namespace (`/` = root).
    pub namespace: String,
    /// DDS domain (`ROS_DOMAIN_ID`).
    pub domain_id: u16,
    /// `from:=to` remaps.
    pub remaps: Vec<(String, String)>,
    /// Input image topic (before remapping) of the single-camera node.
    pub image_topic: String,
    /// Named cameras (several streams on one set of engines): camera `NAME` reads `NAME/image` and
    /// publishes under `~/NAME/`. Empty: one camera on [`NodeConfig::image_topic`], outputs under `~/`.
    pub cameras: Vec<String>,
    /// Reliable instead of best-effort QoS for images in and out.
    pub image_reliable: bool,
    /// Service request/reply matching.
    pub service_mapping: ServiceMapping,
    /// Publish `overlay`.
    pub overlay: bool,
    /// Publish `mask/compressed` (PNG).
    pub mask_png: bool,
    /// Warn when no image arrives for this long (0 = never).
    pub silent_after: Duration,
    /// How long a service call waits for the loop.
    pub service_timeout: Duration,
    /// Status message period.
    pub status_every: Duration,
    /// `frame_id` for frames from our own sources.
    pub frame_id: String,
    /// Accept only images of this width and height from the topic (`None`: the first image's size).
    pub image_size: Option<(u32, u32)>,
    /// Prompt limits (the command protocol's).
    pub limits: Limits,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            name: "referdino".into(),
            namespace: "/".into(),
            domain_id: 0,
            remaps: Vec::new(),
            image_topic: "image".into(),
            cameras: Vec::new(),
            image_reliable: false,
            service_mapping: ServiceMapping::Enhanced,
            overlay: false,
            mask_png: false,
            silent_after: Duration::from_secs(5),
            service_timeout: Duration::from_secs(3),
            status_every: Duration::from_secs(1),
            frame_id: "camera".into(),
            image_size: None,
            limits: Limits::default(),
        }
    }
}

/// Largest DDS domain id ROS 2 allows: DDS derives its UDP ports as `7400 + 250 × domain + …`,
/// which past 232 leave the 16-bit port range (RustDDS computes them in `u16`: an overflow panic
/// in debug builds, wrong ports in release ones).
pub const MAX_DOMAIN_ID: u16 = 232;

/// The DDS domain id: `flag` (`--domain-id`), else `env` (`ROS_DOMAIN_ID`; blank counts as
/// unset), else 0. A value that is not a number or is above [`MAX_DOMAIN_ID`] is refused, naming
/// where it came from.
pub fn domain_id(flag: Option<u16>, env: Option<&str>) -> anyhow::Result<u16> {
    let (id, from) = match (flag, env.map(str::trim).filter(|v| !v.is_empty())) {
        (Some(d), _) => (d, format!("--domain-id {d}")),
        (None, Some(v)) => {
            let d = v.parse().map_err(|e| {
                anyhow!("ROS_DOMAIN_ID={v}: {e} (expected a domain id, 0..={MAX_DOMAIN_ID})")
            })?;
            (d, format!("ROS_DOMAIN_ID={v}"))
        }
        (None, None) => (0, String::new()),
    };
    check_domain_id(id).map_err(|e| anyhow!("{from}: {e}"))?;
    Ok(id)
}

fn check_domain_id(id: u16) -> anyhow::Result<()> {
    if id > MAX_DOMAIN_ID {
        bail!(
            "domain id {id} is out of range: ROS 2 domain ids go up to {MAX_DOMAIN_ID} (DDS port \
             numbers leave the 16-bit range above it)"
        );
    }
    Ok(())
}

/// Parses `enhanced`, `cyclone` or `basic`.
pub fn parse_service_mapping(s: &str) -> anyhow::Result<ServiceMapping> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "enhanced" | "fastdds" | "fastrtps" => ServiceMapping::Enhanced,
        "cyclone" | "cyclonedds" => ServiceMapping::Cyclone,
        "basic" => ServiceMapping::Basic,
        _ => bail!("service mapping '{s}': expected enhanced (Fast DDS), cyclone or basic"),
    })
}

/// Parses a `from:=to` remap.
pub fn parse_remap(s: &str) -> anyhow::Result<(String, String)> {
    let (a, b) = s
        .split_once(":=")
        .ok_or_else(|| anyhow!("remap '{s}': expected from:=to"))?;
    if a.is_empty() || b.is_empty() {
        bail!("remap '{s}': both sides must be names");
    }
    Ok((a.to_string(), b.to_string()))
}

impl NodeConfig {
    /// Adds `from:=to` remaps the ROS way: `__node:=name` and `__ns:=/namespace` rename the node
    /// and move it (as `ros2 run ... --ros-args -r __node:=x` does); others remap topic and service
    /// names.
    pub fn add_remaps<'a>(
        &mut self,
        remaps: impl IntoIterator<Item = &'a str>,
    ) -> anyhow::Result<()> {
        for r in remaps {
            let (from, to) = parse_remap(r)?;
            match from.as_str() {
                "__node" | "__name" => self.name = to,
                "__ns" => self.namespace = to,
                _ => self.remaps.push((from, to)),
            }
        }
        Ok(())
    }
}

fn join(ns: &str, rest: &str) -> String {
    let ns = ns.trim_end_matches('/');
    format!("{ns}/{rest}")
}

/// Resolves a topic or service name against the node's namespace and name.
pub fn resolve(name: &str, namespace: &str, node: &str) -> String {
    let ns = if namespace.starts_with('/') {
        namespace.to_string()
    } else {
        format!("/{namespace}")
    };
    if name.starts_with('/') {
        name.to_string()
    } else if name == "~" {
        join(&ns, node)
    } else if let Some(rest) = name.strip_prefix("~/") {
        join(&join(&ns, node), rest)
    } else {
        join(&ns, name)
    }
}

/// [`resolve`], then the first matching remap.
pub fn resolve_remapped(name: &str, c: &NodeConfig) -> String {
    let r = resolve(name, &c.namespace, &c.name);
    for (from, to) in &c.remaps {
        if resolve(from, &c.namespace, &c.name) == r {
            return resolve(to, &c.namespace, &c.name);
        }
    }
    r
}

/// Checks camera names: ROS name tokens (a letter or `_`, then letters, digits, `_`), each once.
pub fn check_cameras(cameras: &[String]) -> anyhow::Result<()> {
    for (i, c) in cameras.iter().enumerate() {
        let mut chars = c.chars();
        let ok = chars
            .next()
            .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
            && chars.all(|x| x.is_ascii_alphanumeric() || x == '_');
        if !ok {
            bail!("camera name '{c}': a ROS name token (a letter or _, then letters, digits or _)");
        }
        if cameras[..i].contains(c) {
            bail!("camera '{c}' named twice");
        }
    }
    if cameras.len() > crate::limits::MAX_CONNECTIONS * 2 {
        bail!(
            "{} cameras: at most {} streams share one node's engines",
            cameras.len(),
            crate::limits::MAX_CONNECTIONS * 2
        );
    }
    Ok(())
}

impl NodeConfig {
    /// The node's cameras as `(name, input topic before remapping)`: `(None, image_topic)` for the
    /// single-camera node.
    pub fn inputs(&self) -> Vec<(Option<&str>, String)> {
        if self.cameras.is_empty() {
            return vec![(None, self.image_topic.clone())];
        }
        self.cameras
            .iter()
            .map(|c| (Some(c.as_str()), format!("{c}/image")))
            .collect()
    }
}

/// A camera's private name `leaf`: `~/leaf` for the single-camera node, `~/NAME/leaf` for camera
/// `NAME`.
pub fn camera_name(camera: Option<&str>, leaf: &str) -> String {
    match camera {
        Some(c) => format!("~/{c}/{leaf}"),
        None => format!("~/{leaf}"),
    }
}

/// Best effort, keep last 5, volatile.
pub fn sensor_qos() -> QosProfile {
    QosProfile::subscription_default()
        .reliability(Reliability::BestEffort)
        .durability(Durability::Volatile)
        .history(History::KeepLast { depth: 5 })
}

/// Reliable, keep last 10, volatile.
pub fn control_qos() -> QosProfile {
    QosProfile::publisher_default()
        .reliability_reliable(WhenFull::DEFAULT)
        .durability(Durability::Volatile)
        .history(History::KeepLast { depth: 10 })
}

fn image_qos(c: &NodeConfig) -> QosProfile {
    if c.image_reliable {
        control_qos().history(History::KeepLast { depth: 5 })
    } else {
        sensor_qos()
    }
}

fn name(full: &str) -> anyhow::Result<Name> {
    Name::parse(full).map_err(|e| anyhow!("bad ROS name '{full}': {e:?}"))
}

/// One camera's entities.
pub struct CameraIo {
    /// Its name (`None`: the single-camera node).
    pub name: Option<String>,
    /// Per-frame publishers.
    pub outputs: Outputs,
    /// The input subscription (when the node reads images from topics).
    pub images: Option<Subscription<Image>>,
    /// Resolved input topic.
    pub image_topic: String,
    /// The camera's own `prompt` topic (named cameras only; the node's `prompt` reaches all).
    pub prompts: Option<Subscription<StringMsg>>,
    /// The camera's own `set_prompt` service (named cameras only; the node's reaches all).
    pub server: Option<Server<SetPromptRequest, SetPromptResponse>>,
}

/// The node's entities.
pub struct RosNode {
    /// The ROS node (kept alive for the entities' lifetime).
    pub node: Node,
    /// The cameras, stream `i` on `cameras[i]`.
    pub cameras: Vec<CameraIo>,
    /// `status` (std_msgs/String, one JSON object).
    pub status: Publisher<StringMsg>,
    /// The node's `prompt` topic (every camera).
    pub prompts: Subscription<StringMsg>,
    /// The `set_prompt` service (every camera).
    pub server: Server<SetPromptRequest, SetPromptResponse>,
}

impl RosNode {
    /// Creates the node, each camera's publishers (and image subscription when `with_image_input`,
    /// and prompt topic when the cameras are named), the node's prompt subscription, status and
    /// service.
    pub fn create(c: &NodeConfig, with_image_input: bool) -> anyhow::Result<Self> {
        // Before DDS computes its ports from it (the CLI checks too; this guards other callers).
        check_domain_id(c.domain_id)?;
        let ctx = Context::with_options(ContextOptions::new().domain_id(c.domain_id))
            .map_err(|e| anyhow!("starting DDS: {e:?}"))?;
        let ns = if c.namespace.starts_with('/') {
            c.namespace.clone()
        } else {
            format!("/{}", c.namespace)
        };
        let mut node = ctx
            .new_node(
                NodeName::new(&ns, &c.name).map_err(|e| anyhow!("node name: {e:?}"))?,
                NodeOptions::new().enable_rosout(true),
            )
            .map_err(|e| anyhow!("creating node: {e:?}"))?;
        let r = |n: &str| resolve_remapped(n, c);
        let iq = image_qos(c);
        let cq = control_qos();
        let topic = |node: &Node, n: &str, t, q: &QosProfile| -> anyhow::Result<_> {
            let full = r(n);
            log::info!("topic {full}");
            node.create_topic(&name(&full)?, t, q)
                .map_err(|e| anyhow!("topic {full}: {e:?}"))
        };
        let e = |what: &str, e: &dyn std::fmt::Debug| anyhow!("creating {what}: {e:?}");
        let mut cameras = Vec::new();
        for (cam, input) in c.inputs() {
            let n = |leaf: &str| camera_name(cam, leaf);
            let t_mask = topic(&node, &n("mask"), types::image(), &iq)?;
            let mask = node
                .create_publisher::<Image>(&t_mask, Some(iq.clone()))
                .map_err(|x| e("mask publisher", &x))?;
            let mask_png = match c.mask_png {
                true => {
                    let t = topic(&node, &n("mask/compressed"), types::compressed_image(), &iq)?;
                    Some(
                        node.create_publisher(&t, Some(iq.clone()))
                            .map_err(|x| e("mask/compressed publisher", &x))?,
                    )
                }
                false => None,
            };
            let t_det = topic(&node, &n("detections"), types::detection2d_array(), &cq)?;
            let detections = node
                .create_publisher::<Detection2DArray>(&t_det, Some(cq.clone()))
                .map_err(|x| e("detections publisher", &x))?;
            let overlay = match c.overlay {
                true => {
                    let t = topic(&node, &n("overlay"), types::image(), &iq)?;
                    Some(
                        node.create_publisher::<Image>(&t, Some(iq.clone()))
                            .map_err(|x| e("overlay publisher", &x))?,
                    )
                }
                false => None,
            };
            let images = match with_image_input {
                true => {
                    let t = topic(&node, &input, types::image(), &iq)?;
                    Some(
                        node.create_subscription::<Image>(&t, Some(iq.clone()))
                            .map_err(|x| e("image subscription", &x))?,
                    )
                }
                false => None,
            };
            let prompts = match cam {
                Some(_) => {
                    let t = topic(&node, &n("prompt"), types::string(), &cq)?;
                    Some(
                        node.create_subscription::<StringMsg>(&t, Some(cq.clone()))
                            .map_err(|x| e("prompt subscription", &x))?,
                    )
                }
                None => None,
            };
            let server = match cam {
                Some(_) => {
                    let service = r(&n("set_prompt"));
                    log::info!("service {service}");
                    Some(
                        node.create_server::<SetPromptRequest, SetPromptResponse>(
                            c.service_mapping,
                            &name(&service)?,
                            &types::set_prompt(),
                            cq.clone(),
                            cq.clone(),
                        )
                        .map_err(|x| e("set_prompt service", &x))?,
                    )
                }
                None => None,
            };
            cameras.push(CameraIo {
                name: cam.map(str::to_string),
                outputs: Outputs::new(mask, detections, mask_png, overlay),
                images,
                image_topic: r(&input),
                prompts,
                server,
            });
        }
        let t_status = topic(&node, "~/status", types::string(), &cq)?;
        let t_prompt = topic(&node, "~/prompt", types::string(), &cq)?;
        let status = node
            .create_publisher::<StringMsg>(&t_status, Some(cq.clone()))
            .map_err(|x| e("status publisher", &x))?;
        let prompts = node
            .create_subscription::<StringMsg>(&t_prompt, Some(cq.clone()))
            .map_err(|x| e("prompt subscription", &x))?;
        let service = r("~/set_prompt");
        log::info!("service {service} ({:?} mapping)", c.service_mapping);
        let server = node
            .create_server::<SetPromptRequest, SetPromptResponse>(
                c.service_mapping,
                &name(&service)?,
                &types::set_prompt(),
                cq.clone(),
                cq,
            )
            .map_err(|x| e("set_prompt service", &x))?;
        Ok(RosNode {
            node,
            cameras,
            status,
            prompts,
            server,
        })
    }
}

/// Process CPU time (user + system) in milliseconds, from `/proc/self/stat`; `None` elsewhere.
pub fn process_cpu_ms() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the file (utime, stime) in USER_HZ ticks (100 per second on Linux).
    let ut: f64 = f.get(11)?.parse().ok()?;
    let st: f64 = f.get(12)?.parse().ok()?;
    Some((ut + st) * 10.0)
}

fn timing_line(what: &str, t: &Timings) -> String {
    format!(
        "{what}: mean {:.3} ms, p50 {:.3}, p95 {:.3}, max {:.3} over {} frames",
        t.mean_ms(),
        t.quantile_ms(0.5),
        t.quantile_ms(0.95),
        t.max_ms,
        t.count
    )
}

/// What the status reports of one camera.
struct CameraStatus {
    name: Option<String>,
    input: Option<Arc<InputStats>>,
    outputs: Arc<Mutex<Outputs>>,
}

/// Publishes `status` once a period: frames per second since the last report, mean latency per
/// stage, the runtime's counters, the image topics' counters and the publish times, over all
/// cameras; with named cameras also each camera's own counters and prompt.
struct StatusReporter {
    publisher: Publisher<StringMsg>,
    every: Duration,
    last: Instant,
    at_processed: u64,
    cameras: Vec<CameraStatus>,
}

/// Publishes `{"state": "waiting", ...}` on the status topic every `every` until `done`, while the
/// runtime waits for its first image and builds its engines; hands the publisher back.
struct WaitingStatus {
    publisher: Publisher<StringMsg>,
    every: Duration,
    /// Each camera's name (named cameras) and input counters (topic inputs).
    waiting_for: Vec<(Option<String>, Option<Arc<InputStats>>)>,
    done: Arc<AtomicBool>,
}

impl WaitingStatus {
    fn run(self) -> Publisher<StringMsg> {
        let t0 = Instant::now();
        let mut next = Instant::now();
        while !self.done.load(Ordering::SeqCst) {
            if Instant::now() >= next {
                next += self.every.max(Duration::from_millis(100));
                let (mut received, mut rejected, mut undecodable) = (0, 0, 0);
                for s in self.waiting_for.iter().filter_map(|(_, s)| s.as_deref()) {
                    let c = s.counts();
                    (received, rejected, undecodable) = (
                        received + c.received,
                        rejected + c.rejected,
                        undecodable + c.undecodable,
                    );
                }
                let json = serde_json::json!({
                    "state": "waiting",
                    "waiting_s": t0.elapsed().as_secs_f64(),
                    "images_received": received,
                    "images_rejected": rejected,
                    "images_undecodable": undecodable,
                    "cameras": self.waiting_for.iter().filter_map(|(n, _)| n.clone()).collect::<Vec<_>>(),
                });
                if let Err(e) = self.publisher.publish(StringMsg {
                    data: json.to_string(),
                }) {
                    log::error!("publishing status: {e:?}");
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.publisher
    }
}

/// Mean of several cameras' mean times, weighted by their counts.
fn pooled_mean_ms(t: &[(f64, u64)]) -> f64 {
    let n: u64 = t.iter().map(|x| x.1).sum();
    if n == 0 {
        return 0.0;
    }
    t.iter().map(|(m, c)| m * *c as f64).sum::<f64>() / n as f64
}

impl StatusReporter {
    fn poll(&mut self, rt: &Runtime) {
        let since = self.last.elapsed();
        if since < self.every {
            return;
        }
        // Counters over every camera; the latency per stage a mean weighted by frames processed.
        // Each open stream's counters, computed once (by stream index) for the totals and the cameras.
        let stats: Vec<(usize, RuntimeStats)> = rt
            .streams()
            .iter()
            .map(|s| (s.index(), s.stats()))
            .collect();
        let processed: u64 = stats.iter().map(|s| s.1.frames_processed).sum();
        let frames_in: u64 = stats.iter().map(|s| s.1.frames_in).sum();
        let dropped: u64 = stats.iter().map(|s| s.1.frames_dropped).sum();
        let mut latency_ms = std::collections::BTreeMap::new();
        for (_, s) in &stats {
            for (stage, ms) in &s.latency_ms {
                *latency_ms.entry(stage.clone()).or_insert(0.0) +=
                    ms * s.frames_processed as f64 / processed.max(1) as f64;
            }
        }
        let fps = (processed - self.at_processed.min(processed)) as f64 / since.as_secs_f64();
        self.last = Instant::now();
        self.at_processed = processed;
        let (mut received, mut rejected, mut superseded, mut errors) = (0, 0, 0, 0);
        let mut undecodable = 0;
        let (mut mask_t, mut det_t) = (Vec::new(), Vec::new());
        let mut per_camera = Vec::new();
        for (k, c) in self.cameras.iter().enumerate() {
            let counts = c
                .input
                .as_deref()
                .map(InputStats::counts)
                .unwrap_or_default();
            let (r, j, d, u) = (
                counts.received,
                counts.rejected,
                counts.dropped,
                counts.undecodable,
            );
            undecodable += u;
            let e = {
                let o = c.outputs.lock().unwrap_or_else(|p| p.into_inner());
                mask_t.push((o.mask_times.mean_ms(), o.mask_times.count));
                det_t.push((o.detection_times.mean_ms(), o.detection_times.count));
                o.publish_errors()
            };
            (received, rejected, superseded, errors) =
                (received + r, rejected + j, superseded + d, errors + e);
            let stream = rt.stream(k);
            if let (Some(name), None) = (&c.name, stream) {
                // Not open: waiting for its first image, or gone (its source ended first).
                let gone = rt.gone().find(|g| g.0 == k).map(|g| g.1.to_string());
                per_camera.push(serde_json::json!({
                    "name": name,
                    "state": if gone.is_some() { "gone" } else { "waiting" },
                    "error": gone,
                    "images_received": r,
                    "images_rejected": j,
                    "images_undecodable": u,
                }));
            }
            let st = stats.iter().find(|s| s.0 == k).map(|s| &s.1);
            if let (Some(name), Some(stream), Some(st)) = (&c.name, stream, st) {
                per_camera.push(serde_json::json!({
                    "name": name,
                    "state": "open",
                    "input": st.input,
                    "fps": st.fps,
                    "latency_ms": st.latency_ms,
                    "frames_in": st.frames_in,
                    "processed": st.frames_processed,
                    "failed": stream.frames_failed(),
                    "dropped": st.frames_dropped + d,
                    "images_received": r,
                    "images_rejected": j,
                    "images_undecodable": u,
                    "publish_errors": e,
                    "objects": stream.last().tracks.len(),
                    "prompt": stream.settings().prompt,
                }));
            }
        }
        let mut json = serde_json::json!({
            "fps": fps,
            "latency_ms": latency_ms,
            "frames_in": frames_in,
            "processed": processed,
            "dropped": dropped + superseded,
            "images_received": received,
            "images_rejected": rejected,
            "images_undecodable": undecodable,
            "publish_mask_ms": pooled_mean_ms(&mask_t),
            "publish_detections_ms": pooled_mean_ms(&det_t),
            "publish_errors": errors,
            "objects": rt.last().tracks.len(),
            "prompt": rt.settings().prompt,
        });
        if !per_camera.is_empty() {
            json["cameras"] = serde_json::Value::Array(per_camera);
        }
        if let Err(e) = self.publisher.publish(StringMsg {
            data: json.to_string(),
        }) {
            log::error!("publishing status: {e:?}");
        }
    }
}

/// Runs the node: the runtime of `rc` with one stream per camera and the node's sink on each, fed
/// from the image topics (or from `rc.source` when `own_source`), prompts from the topics and the
/// service, until the sources end, `rc.max_frames`, or `stop`. `None`: `stop` came while the node
/// waited for its first image (nothing ran, and that is no failure).
pub fn run(
    c: &NodeConfig,
    mut rc: RuntimeConfig,
    own_source: bool,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Option<RunSummary>> {
    check_cameras(&c.cameras)?;
    // Before the node exists: a bad flag (--max-objects 100) fails at once, not after the wait
    // for a first image.
    rc.check_ranges()?;
    if own_source && !c.cameras.is_empty() {
        bail!("--camera names image topics; --source replaces the topic of the single camera");
    }
    let RosNode {
        node: _node,
        mut cameras,
        status,
        prompts,
        server,
    } = RosNode::create(c, !own_source)?;
    let (tx, rx) = sync_channel::<Control>(crate::limits::COMMAND_QUEUE);
    let ready = Arc::new(AtomicBool::new(false));
    let ctl_stop = Arc::new(AtomicBool::new(false));
    // Named cameras' own prompt topics and services, to the control thread.
    let (mut camera_prompts, mut camera_servers) = (Vec::new(), Vec::new());
    for (k, cam) in cameras.iter_mut().enumerate() {
        let Some(name) = &cam.name else { continue };
        if let Some(sub) = cam.prompts.take() {
            camera_prompts.push((k, format!("prompt topic of camera {name}"), sub));
        }
        if let Some(server) = cam.server.take() {
            camera_servers.push((k, format!("set_prompt of camera {name}"), server));
        }
    }
    let ctl = ControlThread {
        prompts,
        camera_prompts,
        server,
        camera_servers,
        tx,
        stop: ctl_stop.clone(),
        ready: ready.clone(),
        timeout: c.service_timeout,
        limits: c.limits,
        waiting_for: if own_source {
            rc.source.clone()
        } else {
            cameras
                .iter()
                .map(|cam| cam.image_topic.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        },
    };
    let ctl = std::thread::Builder::new()
        .name("ros2-control".into())
        .spawn(move || ctl.run())?;
    let res = run_with_control(
        c,
        &mut rc,
        own_source,
        stop.clone(),
        cameras,
        status,
        rx,
        &ready,
    );
    stop.store(true, Ordering::SeqCst);
    ctl_stop.store(true, Ordering::SeqCst);
    if ctl.join().is_err() {
        log::error!("control thread panicked");
    }
    res
}

#[allow(clippy::too_many_arguments)]
fn run_with_control(
    c: &NodeConfig,
    rc: &mut RuntimeConfig,
    own_source: bool,
    stop: Arc<AtomicBool>,
    cameras: Vec<CameraIo>,
    status: Publisher<StringMsg>,
    rx: Receiver<Control>,
    ready: &AtomicBool,
) -> anyhow::Result<Option<RunSummary>> {
    // The runtime's own command inputs stay off: commands come from ROS.
    rc.stdin_commands = false;
    let mut books = Vec::new();
    let mut statuses = Vec::new();
    let mut sources: Vec<Box<dyn crate::camera::FrameSource>> = Vec::new();
    let mut outputs = Vec::new();
    // Prebuilt engines fix the input sizes (one per directory): an image that resizes to none of
    // them is rejected at the topic (and the camera keeps waiting) instead of ending its stream.
    let engine_inputs = rc
        .engine_dirs()
        .into_iter()
        .map(|dir| {
            let g = crate::graph::export::Manifest::read(dir)?.geometry;
            Ok((g.width as u32, g.height as u32))
        })
        .collect::<crate::Result<Vec<_>>>()?;
    for cam in cameras {
        let out = Arc::new(Mutex::new(cam.outputs));
        let mut input = None;
        match cam.images {
            Some(sub) if !own_source => {
                let src =
                    ImageTopicSource::new(sub, &cam.image_topic, stop.clone(), c.silent_after)
                        .with_size(c.image_size)
                        .with_engine_input(rc.short_side, engine_inputs.clone());
                books.push(Some(src.headers()));
                input = Some(src.stats());
                log::info!("waiting for the first image on {}", cam.image_topic);
                sources.push(Box::new(src));
            }
            _ => books.push(None),
        }
        statuses.push(CameraStatus {
            name: cam.name,
            input,
            outputs: out.clone(),
        });
        outputs.push(out);
    }
    // Building the runtime waits for a first image (and builds the engines): meanwhile the status
    // topic says so, so monitoring tells "node up, no camera image yet" from "node dead".
    let waiting = WaitingStatus {
        publisher: status,
        every: c.status_every,
        waiting_for: statuses
            .iter()
            .map(|cam| (cam.name.clone(), cam.input.clone()))
            .collect(),
        done: Arc::new(AtomicBool::new(false)),
    };
    let done = waiting.done.clone();
    let waiter = std::thread::Builder::new()
        .name("ros2-status-wait".into())
        .spawn(move || waiting.run())?;
    let built = if sources.is_empty() {
        Runtime::new(rc.clone())
    } else {
        Runtime::with_caller_sources(rc.clone(), sources)
    };
    done.store(true, Ordering::SeqCst);
    let status = waiter
        .join()
        .map_err(|_| anyhow::anyhow!("the status thread panicked"))?;
    let mut rt = match built {
        Ok(rt) => rt,
        Err(e) => return failed_wait(e, &stop).map(|()| None),
    };
    rt.set_stop_flag(stop.clone());
    for (k, (out, book)) in outputs.iter().zip(books).enumerate() {
        let sink = RosSink::new(out.clone(), book, &c.frame_id, rc.multi.is_some());
        rt.add_stream_sink(k, Box::new(sink))?;
    }
    let (w, h) = rt.frame_size();
    let from = if own_source {
        rc.source.clone()
    } else {
        statuses
            .iter()
            .enumerate()
            .map(|(k, cam)| {
                let what = rt
                    .stream(k)
                    .map_or("(waiting for its first image)", |s| s.description());
                match &cam.name {
                    Some(n) => format!("{what} (camera {n})"),
                    None => what.to_string(),
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    log::info!(
        "node {} ready: {w}x{h} frames from {from}",
        resolve("~", &c.namespace, &c.name),
    );
    ready.store(true, Ordering::SeqCst);
    let mut reporter = StatusReporter {
        publisher: status,
        every: c.status_every,
        last: Instant::now(),
        at_processed: 0,
        cameras: statuses,
    };
    loop {
        while let Ok(req) = rx.try_recv() {
            control::apply(&mut rt, req);
        }
        match rt.step() {
            Step::Ended => break,
            // Also while the topic is silent, so `status` shows the rate dropping to 0.
            _ => reporter.poll(&rt),
        }
    }
    // Dropping the queue drops the requests still in it, and with them their reply channels: a
    // service caller waiting on one is told at once that the node is shutting down (instead of
    // "busy" after its whole timeout), and the control thread is free to end.
    drop(rx);
    // Ends a source still waiting for an image, then the capture thread can be joined.
    stop.store(true, Ordering::SeqCst);
    let summary = rt.finish()?;
    for (cam, out) in reporter.cameras.iter().zip(&outputs) {
        let o = out.lock().unwrap_or_else(|p| p.into_inner());
        let of = cam
            .name
            .as_ref()
            .map_or(String::new(), |n| format!(" ({n})"));
        log::info!(
            "{}",
            timing_line(&format!("publish mask{of}"), &o.mask_times)
        );
        log::info!(
            "{}",
            timing_line(&format!("publish detections{of}"), &o.detection_times)
        );
        if o.mask_png.is_some() {
            log::info!(
                "{}",
                timing_line(&format!("publish mask png{of}"), &o.png_times)
            );
        }
    }
    Ok(Some(summary))
}

/// The end of a wait for the first image that failed: when `stop` was requested meanwhile
/// (SIGINT, SIGTERM), the sources ended for that reason and the start-up failed with them; that is
/// a clean exit, not an error.
fn failed_wait(e: anyhow::Error, stop: &AtomicBool) -> anyhow::Result<()> {
    if !stop.load(Ordering::SeqCst) {
        return Err(e);
    }
    log::info!("interrupted before the first image");
    log::debug!("the wait ended with: {e:#}");
    Ok(())
}

/// Publishes `frames` synthetic `width x height` masks (a moving disc) plus one detection each at
/// `fps`, after `warmup` for discovery, and reports the publish latency and the process CPU time
/// per frame against an equally long idle stretch.
pub fn publish_bench(
    c: &NodeConfig,
    frames: u64,
    width: u32,
    height: u32,
    fps: u32,
    warmup: Duration,
) -> anyhow::Result<String> {
    let mut rn = RosNode::create(c, false)?;
    let period = Duration::from_secs_f64(1.0 / fps.max(1) as f64);
    let run_for = period * frames as u32;
    std::thread::sleep(warmup);
    // Idle baseline: DDS threads running, nothing published.
    let c0 = process_cpu_ms();
    std::thread::sleep(run_for);
    let c1 = process_cpu_ms();
    let (w, h) = (width as usize, height as usize);
    let mut labels = vec![0u8; w * h];
    let mut header = Header {
        stamp: Time::default(),
        frame_id: c.frame_id.clone(),
    };
    let mut result = FrameResult {
        active: true,
        ..Default::default()
    };
    let objects = [ObjectInfo {
        id: 0,
        prompt: "a moving disc".into(),
    }];
    let start = Instant::now();
    for i in 0..frames {
        let (cx, cy, r) = ((i as usize * 7) % w, h / 2, h / 4);
        for (y, row) in labels.chunks_exact_mut(w).enumerate() {
            for (x, p) in row.iter_mut().enumerate() {
                let (dx, dy) = (x as i64 - cx as i64, y as i64 - cy as i64);
                *p = (dx * dx + dy * dy <= (r * r) as i64) as u8;
            }
        }
        result.tracks.clear();
        // One track; the capacity is MAX_TRACKS, so this never fails.
        let _ = result.tracks.push(TrackEntry {
            id: 1,
            object: 0,
            score: 0.9,
            bbox: [
                cx.saturating_sub(r) as f32,
                (cy - r) as f32,
                (cx + r) as f32,
                (cy + r) as f32,
            ],
        });
        // Wall clock just before publishing: the subscriber reads the delivery latency off it.
        header.stamp = Time::from_nanos(wall_clock_ns());
        let f = FrameOutput {
            stream: 0,
            frame_id: i,
            timestamp_ns: i,
            width,
            height,
            rgb: None,
            mask: &labels,
            result: &result,
            caption: Some("a moving disc"),
            objects: &objects,
        };
        rn.cameras[0].outputs.publish_frame(&header, &f, false);
        let due = start + period * (i as u32 + 1);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
    }
    let c2 = process_cpu_ms();
    // Let the last samples leave before the node goes away.
    std::thread::sleep(Duration::from_millis(500));
    let o = &rn.cameras[0].outputs;
    let cpu = match (c0, c1, c2) {
        (Some(a), Some(b), Some(d)) => {
            let idle = b - a;
            let busy = d - b;
            format!(
                "process CPU {busy:.0} ms publishing vs {idle:.0} ms idle over the same {:.1} s: {:.3} ms CPU per frame above idle",
                run_for.as_secs_f64(),
                (busy - idle).max(0.0) / frames.max(1) as f64
            )
        }
        _ => "process CPU time unavailable".into(),
    };
    let mut out = format!(
        "publish-bench: {frames} frames of {width}x{height} mono8 mask + 1 detection at {fps} fps\n"
    );
    out.push_str(&format!(
        "  {}\n",
        timing_line("mask publish", &o.mask_times)
    ));
    out.push_str(&format!(
        "  {}\n",
        timing_line("detections publish", &o.detection_times)
    ));
    if o.mask_png.is_some() {
        out.push_str(&format!(
            "  {}\n",
            timing_line("png encode + publish", &o.png_times)
        ));
    }
    out.push_str(&format!("  {cpu}\n"));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_like_ros() {
        assert_eq!(resolve("image", "/", "referdino"), "/image");
        assert_eq!(resolve("~/mask", "/", "referdino"), "/referdino/mask");
        assert_eq!(resolve("~/mask", "/robot", "rd"), "/robot/rd/mask");
        assert_eq!(resolve("cam/image", "robot", "rd"), "/robot/cam/image");
        assert_eq!(resolve("/abs", "/robot", "rd"), "/abs");
        let c = NodeConfig {
            remaps: vec![
                parse_remap("image:=/camera/color/image_raw").unwrap(),
                parse_remap("~/detections:=/objects").unwrap(),
            ],
            ..Default::default()
        };
        assert_eq!(resolve_remapped("image", &c), "/camera/color/image_raw");
        assert_eq!(resolve_remapped("~/detections", &c), "/objects");
        assert_eq!(resolve_remapped("~/mask", &c), "/referdino/mask");
        assert!(parse_remap("nope").is_err());
        let mut c = NodeConfig::default();
        c.add_remaps(["__node:=seg", "__ns:=/robot", "image:=/cam/image_raw"])
            .unwrap();
        assert_eq!((c.name.as_str(), c.namespace.as_str()), ("seg", "/robot"));
        assert_eq!(
            resolve_remapped("~/detections", &c),
            "/robot/seg/detections"
        );
        assert_eq!(resolve_remapped("image", &c), "/cam/image_raw");
        assert!(parse_service_mapping("cyclone").is_ok());
        assert!(parse_service_mapping("zeroc").is_err());
    }

    /// Named cameras read `NAME/image` (remappable) and publish under `~/NAME/`; the single camera
    /// keeps `image` and `~/`; bad or repeated names are refused.
    #[test]
    fn cameras_name_their_topics() {
        let mut c = NodeConfig::default();
        assert_eq!(c.inputs(), [(None, "image".to_string())]);
        assert_eq!(camera_name(None, "mask"), "~/mask");
        c.cameras = vec!["front".into(), "rear_1".into()];
        check_cameras(&c.cameras).unwrap();
        c.add_remaps(["front/image:=/cam_front/color/image_raw"])
            .unwrap();
        let inputs = c.inputs();
        assert_eq!(
            inputs,
            [
                (Some("front"), "front/image".to_string()),
                (Some("rear_1"), "rear_1/image".to_string())
            ]
        );
        assert_eq!(
            resolve_remapped(&inputs[0].1, &c),
            "/cam_front/color/image_raw"
        );
        assert_eq!(resolve_remapped(&inputs[1].1, &c), "/rear_1/image");
        assert_eq!(
            resolve_remapped(&camera_name(Some("rear_1"), "mask/compressed"), &c),
            "/referdino/rear_1/mask/compressed"
        );
        for bad in [&["front", "front"][..], &["1st"], &["a/b"], &[""], &["x-y"]] {
            let names: Vec<String> = bad.iter().map(|s| s.to_string()).collect();
            assert!(check_cameras(&names).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn domain_ids_above_232_are_refused() {
        assert_eq!(domain_id(None, None).unwrap(), 0);
        assert_eq!(domain_id(None, Some("  ")).unwrap(), 0);
        assert_eq!(domain_id(None, Some(" 42 ")).unwrap(), 42);
        assert_eq!(domain_id(Some(232), Some("7")).unwrap(), 232);
        assert_eq!(domain_id(Some(3), Some("999")).unwrap(), 3);
        let e = domain_id(Some(233), None).unwrap_err().to_string();
        assert!(
            e.contains("--domain-id 233") && e.contains("up to 232"),
            "{e}"
        );
        let e = domain_id(None, Some("65535")).unwrap_err().to_string();
        assert!(
            e.contains("ROS_DOMAIN_ID=65535") && e.contains("up to 232"),
            "{e}"
        );
        let e = domain_id(None, Some("seven")).unwrap_err().to_string();
        assert!(e.contains("ROS_DOMAIN_ID=seven"), "{e}");
        // The node itself refuses one before DDS computes ports from it.
        let c = NodeConfig {
            domain_id: 250,
            ..Default::default()
        };
        let e = RosNode::create(&c, false).err().unwrap().to_string();
        assert!(
            e.contains("domain id 250") && e.contains("up to 232"),
            "{e}"
        );
    }

    /// A stop requested during the wait for the first image makes the wait's failure a clean end;
    /// without one the failure stays an error.
    #[test]
    fn a_stop_during_the_first_wait_is_no_failure() {
        let stop = AtomicBool::new(false);
        let e = failed_wait(anyhow!("source 'x' delivered no frame"), &stop).unwrap_err();
        assert!(e.to_string().contains("delivered no frame"), "{e}");
        stop.store(true, Ordering::SeqCst);
        assert!(failed_wait(anyhow!("source 'x' delivered no frame"), &stop).is_ok());
    }

    #[test]
    fn cpu_time_reads() {
        let a = process_cpu_ms().unwrap();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        std::hint::black_box(x);
        assert!(process_cpu_ms().unwrap() >= a);
    }
}
