//! `referdino ros2` against a DDS implementation we did not write: the PyPI `cyclonedds` package
//! (Eclipse Cyclone DDS) driven by `tests/ros2/peer.py`, which speaks ROS 2's wire conventions
//! (type names `pkg::msg::dds_::Type_`, `rt/` topics, `rq/`/`rr/` services, little-endian CDR).
//!
//! Every test that starts DDS runs node and peer inside a network namespace of their own
//! (`unshare -n`, with only `lo`, brought up and multicast enabled): discovery multicast and data
//! never reach a real network. Without `unshare` rights or the `cyclonedds` module the tests say so
//! and pass, unless `REFERDINO_REQUIRE_ORACLES=1` (set by `.ci/run`), where they fail.
//!
//! * `interop_and_replay`: a service call before the engines exist, broken images, the first image
//!   (no prompt: empty outputs), service calls (empty / overlong prompts refused; two `;`-separated
//!   prompts become two objects whose detections carry ids 0 and 1 and their prompts; then one
//!   good prompt), the bundled
//!   clip as rgb8 / bgr8 / padded rgb8, a prompt on the topic, mono8 and YUYV frames, an image of
//!   another size, a burst faster than inference (latest wins), a silent topic; then the masks that came over DDS are compared with the library
//!   runtime's masks on the same frames (the `run` path), and with the shared-memory ring the node
//!   wrote beside DDS.
//! * `own_source`: the node on one of our own sources (synthetic frames) instead of the topic, renamed
//!   and moved with `-r __node:=` / `-r __ns:=`: masks and detections arrive under its topics with the
//!   configured frame id and the start-up prompts (two objects, `;`-separated), and the ROS 2 graph information (what
//!   `ros2 node list` reads, in the GID format of the build: Humble, or Iron+ with `ros2-jazzy`)
//!   names it.
//! * `publish_cost`: per-frame cost of publishing a 640x360 mono8 mask + detections (raw and PNG).
//! * `cameras`: two named cameras on one node (`--camera front --camera rear`): the node starts with
//!   the front camera alone, the rear one joins at its first image with the prompt set meanwhile (its
//!   own set_prompt service, called while it waits, keeps the prompt for when it joins); the
//!   masks of both (rgb8 and bgr8 frames) equal the library runtime's on the same frames; a camera's
//!   own prompt topic changes only it; status lists both.
//! * `interrupted_before_the_first_image`: SIGINT while the node waits for its first image (nobody
//!   publishes) ends it cleanly: exit status 0, "interrupted before the first image", no
//!   "delivered no frame" failure and no error of ours in the log.

#![cfg(feature = "ros2")]

#[path = "../support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Command;

use referdino::output::ring::MaskRingReader;
use referdino::pipeline::live::{Runtime, RuntimeConfig};
use referdino::tensor::Data;
use support::common;

const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ros2/peer.py");
const PROMPT: &str = "the red ball rolling to the left";

/// Cyclone DDS: use `lo` and allow multicast on it (inside the namespace it is the only interface).
const CYCLONE_LO: &str = r#"<CycloneDDS><Domain Id="any"><General><Interfaces><NetworkInterface name="lo" multicast="true"/></Interfaces></General></Domain></CycloneDDS>"#;

/// `None` when the peer can run here; otherwise why not (or a panic when oracles are required).
fn skip_reason() -> Option<String> {
    let py = Command::new("python3")
        .args(["-c", "import cyclonedds"])
        .output();
    let ns = Command::new("unshare")
        .args([
            "-n",
            "sh",
            "-c",
            "ip link set lo up && ip link set lo multicast on",
        ])
        .output();
    let why = match (py, ns) {
        (Ok(p), _) if !p.status.success() => {
            "python3 cannot import cyclonedds (pip install cyclonedds)".to_string()
        }
        (Err(e), _) => format!("python3: {e}"),
        (_, Ok(n)) if !n.status.success() => format!(
            "cannot create a network namespace (unshare -n; needs root): {}",
            String::from_utf8_lossy(&n.stderr).trim()
        ),
        (_, Err(e)) => format!("unshare: {e}"),
        _ => return None,
    };
    if support::onnx_oracle::require_oracles() {
        panic!("REFERDINO_REQUIRE_ORACLES=1 but {why}");
    }
    eprintln!("SKIPPED: {why}");
    Some(why)
}

/// Runs `script` with `sh` in a fresh network namespace (only `lo`, up, multicast on).
fn in_netns(script: &str) -> std::process::Output {
    Command::new("timeout")
        .args(["300", "unshare", "-n", "sh", "-c"])
        .arg(format!(
            "ip link set lo up && ip link set lo multicast on && {script}"
        ))
        .env("CYCLONEDDS_URI", CYCLONE_LO)
        .env("RUST_LOG", "info")
        .output()
        .expect("unshare")
}

/// Writes the bundled clip as raw RGB files (for the peer) and PNGs (for `referdino run`).
fn write_clip(dir: &Path) -> (usize, usize, usize) {
    let inputs = common::tiny_inputs();
    let clip = &inputs["frames_uint8"];
    let (t, h, w) = (clip.shape()[0], clip.shape()[1], clip.shape()[2]);
    let Data::U8(px) = clip.data() else {
        panic!("frames_uint8 is not u8")
    };
    let png = dir.join("png");
    std::fs::create_dir_all(&png).unwrap();
    for f in 0..t {
        let frame = &px[f * h * w * 3..(f + 1) * h * w * 3];
        std::fs::write(dir.join(format!("frame_{f}.rgb")), frame).unwrap();
        image::RgbImage::from_raw(w as u32, h as u32, frame.to_vec())
            .unwrap()
            .save(png.join(format!("{f:05}.png")))
            .unwrap();
    }
    (t, h, w)
}

/// What a node run beside the peer left: the node's log, the peer's report and all of it together
/// for assertion messages.
struct Session {
    log: String,
    report: serde_json::Value,
    ctx: String,
}

/// Runs `referdino ros2 NODE_ARGS` beside `peer.py MODE` on the clip in `d` (a namespace of their own),
/// stops the node with SIGINT once the peer is done, and checks both ended well.
fn node_and_peer(
    d: &Path,
    (t, h, w): (usize, usize, usize),
    node_args: &str,
    mode: &str,
) -> Session {
    let bin = env!("CARGO_BIN_EXE_referdino");
    let script = format!(
        "{bin} ros2 --service-mapping cyclone --short-side 70 --threads 2 --status-every 0.2 \
           --image-size {w}x{h} {node_args} 2> {log} & NODE=$!; \
         python3 {PEER} {mode} --frames-dir {dir} --frames {t} --width {w} --height {h} \
           --prompt '{PROMPT}' --out {dir} > {report}; RC=$?; \
         kill -INT $NODE; wait $NODE; echo node_rc=$?; exit $RC",
        log = d.join("node.log").display(),
        dir = d.display(),
        report = d.join("report.json").display(),
    );
    let out = in_netns(&script);
    let log = std::fs::read_to_string(d.join("node.log")).unwrap_or_default();
    let report = std::fs::read_to_string(d.join("report.json")).unwrap_or_default();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let ctx = format!(
        "peer report: {report}\nstdout: {stdout}\nstderr: {}\nnode log:\n{log}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{mode} failed\n{ctx}");
    assert!(stdout.contains("node_rc=0"), "{ctx}");
    let report = serde_json::from_str(report.trim()).expect("report json");
    Session { log, report, ctx }
}

/// The masks the library runtime (what `referdino run` drives) gives on the clip's frames with
/// `PROMPT`, checked to hold some foreground (an all-empty comparison proves little).
fn replayed_masks(d: &Path, t: usize) -> Vec<Vec<u8>> {
    let mut c = RuntimeConfig::new(d.join("png").to_str().unwrap());
    c.short_side = 70;
    c.threads = Some(2);
    c.prompt = Some(PROMPT.into());
    c.collect_masks = true;
    let s = Runtime::new(c).unwrap().run().unwrap();
    assert_eq!(s.masks.len(), t);
    assert!(
        s.masks.iter().any(|m| m.contains(&1)),
        "every mask is empty: the comparison proves little"
    );
    s.masks
}

/// A mask that came over DDS as 0/1 per pixel.
fn received01(path: &Path) -> Vec<u8> {
    std::fs::read(path)
        .unwrap()
        .iter()
        .map(|&l| (l != 0) as u8)
        .collect()
}

#[test]
fn interop_and_replay() {
    if skip_reason().is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (t, h, w) = write_clip(d);
    let ring = d.join("ring");
    let t0 = std::time::Instant::now();
    let Session {
        log,
        report: r,
        ctx,
        ..
    } = node_and_peer(
        d,
        (t, h, w),
        &format!("--silent-after 1 --ring {} --keep-ring", ring.display()),
        "interop",
    );
    let secs = t0.elapsed().as_secs_f64();
    let checks = r["checks"].as_array().unwrap();
    assert!(checks.len() >= 25, "{ctx}");
    eprintln!(
        "interop: {} checks passed in {secs:.1} s (discovery {:.2} s, first image {:.1} s)\n  \
         service: {}\n  masks: {}\n  burst answered: {}\n  status: {}",
        checks.len(),
        r["discovery_s"].as_f64().unwrap_or(-1.0),
        r["first_image_s"].as_f64().unwrap_or(-1.0),
        r["service"],
        r["masks"],
        r["burst_answered"],
        r["status"]
    );
    // Bad input was logged, the node went on and shut down cleanly. Frames processed: the first
    // image, the two-object frame, the clip, mono8 + YUYV, the one after the wrong-size image, and
    // of the burst of 10 at least the newest but not all.
    let processed: usize = log
        .split("summary: ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no summary in the node log\n{ctx}"));
    assert!(
        (t + 6..t + 5 + 10).contains(&processed),
        "{processed} frames processed\n{ctx}"
    );
    let wrong_size = format!("rejected: source: the node takes {w}x{h} images (--image-size)");
    for want in [
        "unsupported encoding 'bayer_rggb8'",
        "is shorter than a rgb8 row",
        "not ready: the engines are being built",
        "set_prompt \"\": success false",
        "success (prompt set: 2 objects: 0 \"the ball\", 1 \"the dog\")",
        "prompt topic: \"the object on the right\"",
        wrong_size.as_str(),
        "no image on /image for",
        "mask ring",
        "publish mask: mean",
    ] {
        assert!(log.contains(want), "node log lacks {want:?}\n{ctx}");
    }

    // Replay: the same frames through the library runtime (what `referdino run` drives) from a
    // folder give the same masks.
    for (f, want) in replayed_masks(d, t).iter().enumerate() {
        let got01 = received01(&d.join(format!("mask_{f}.raw")));
        assert_eq!(got01.len(), w * h);
        let differ = got01.iter().zip(want).filter(|(a, b)| a != b).count();
        assert_eq!(differ, 0, "frame {f}: {differ} pixels differ from `run`");
    }

    // The shared-memory ring worked beside DDS: every processed frame, the last one identical
    // to what DDS delivered, with the input image's stamp.
    let reader = MaskRingReader::open(ring.to_str().unwrap()).expect("ring left by the node");
    assert_eq!(reader.write_count(), processed as u64);
    let mut slot = reader.new_copy();
    reader.read_latest(&mut slot).expect("latest slot");
    assert_eq!(slot.timestamp_ns, 4009 * 1_000_000_000 + 123_456_789);
    let last = std::fs::read(d.join("mask_last.raw")).unwrap();
    assert_eq!(
        slot.mask, last,
        "ring and DDS masks of the last frame differ"
    );
}

#[test]
fn publish_cost() {
    if skip_reason().is_some() {
        return;
    }
    let bin = env!("CARGO_BIN_EXE_referdino");
    for extra in ["", "--mask-png"] {
        let script = format!(
            "{bin} ros2 --publish-bench 150 --bench-size 640x360 {extra} 2>&1 & NODE=$!; \
             python3 {PEER} sink --seconds 40; wait $NODE"
        );
        let out = in_netns(&script);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report = &text[text.find("publish-bench:").expect("bench report")..];
        eprintln!("{report}");
        let sink: serde_json::Value = text
            .lines()
            .filter(|l| l.starts_with("{\"masks\""))
            .find_map(|l| serde_json::from_str(l).ok())
            .expect("sink json");
        eprintln!("  Cyclone DDS subscriber (Python): {sink}");
        assert!(sink["masks"].as_u64().unwrap() > 10, "{text}");
        assert!(sink["detections"].as_u64().unwrap() > 100, "{text}");
    }
}

#[test]
fn own_source() {
    if skip_reason().is_some() {
        return;
    }
    let bin = env!("CARGO_BIN_EXE_referdino");
    let script = format!(
        "{bin} ros2 --source synthetic:118x70@30 --short-side 70 --threads 2 --max-frames 30 \
           --frame-id synth_cam --prompt 'the moving square; the white block' \
           -r __node:=seg -r __ns:=/robot \
           2>&1 & NODE=$!; \
         python3 {PEER} sink --seconds 60 --ns /robot/seg --gid-bytes {gid}; wait $NODE; \
         echo node_rc=$?",
        gid = if cfg!(feature = "ros2-jazzy") { 16 } else { 24 },
    );
    let out = in_netns(&script);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("node_rc=0"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sink: serde_json::Value = text
        .lines()
        .filter(|l| l.starts_with("{\"masks\""))
        .find_map(|l| serde_json::from_str(l).ok())
        .expect("sink json");
    eprintln!("own source: {sink}");
    assert!(sink["masks"].as_u64().unwrap() >= 5, "{text}");
    assert!(sink["detections"].as_u64().unwrap() >= 5, "{text}");
    assert_eq!(
        sink["frame_ids"],
        serde_json::json!(["synth_cam"]),
        "{text}"
    );
    assert_eq!(
        sink["class_ids"],
        serde_json::json!(["the moving square", "the white block"]),
        "{text}"
    );
    assert!(text.contains("summary: 30 frames processed"), "{text}");
    // The graph information names the renamed, moved node (`ros2 node list` would show it).
    assert_eq!(sink["nodes"], serde_json::json!(["/robot/seg"]), "{text}");
}

#[test]
fn interrupted_before_the_first_image() {
    if skip_reason().is_some() {
        return;
    }
    let bin = env!("CARGO_BIN_EXE_referdino");
    // The node is waiting well before 3 s (DDS start-up, no engines yet: they are built for the
    // first image's size).
    let script = format!(
        "{bin} ros2 --short-side 70 --threads 2 2>&1 & NODE=$!; sleep 3; kill -INT $NODE; \
         wait $NODE; echo node_rc=$?"
    );
    let out = in_netns(&script);
    let text = String::from_utf8_lossy(&out.stdout);
    let ctx = format!("{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("waiting for the first image on"), "{ctx}");
    assert!(text.contains("node_rc=0"), "{ctx}");
    assert!(text.contains("interrupted before the first image"), "{ctx}");
    // A stop is no fault: nothing of ours is logged as an error on the way out.
    assert!(!text.contains("ERROR referdino"), "{ctx}");
    assert!(!text.contains("delivered no frame"), "{ctx}");
}

#[test]
fn cameras() {
    if skip_reason().is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (t, h, w) = write_clip(d);
    let Session {
        log,
        report: r,
        ctx,
        ..
    } = node_and_peer(d, (t, h, w), "--camera front --camera rear", "cameras");
    eprintln!(
        "cameras: {} checks passed; after the rear camera's prompt: {}; status: {}",
        r["checks"].as_array().unwrap().len(),
        r["classes_after_rear_prompt"],
        r["status"]
    );
    for want in [
        "stream 0: source ROS 2 topic /front/image",
        "stream 1: ROS 2 topic /rear/image (sensor_msgs/Image) is not there yet",
        "stream 1: source ROS 2 topic /rear/image",
        "joined the run after",
        "prompt topic of camera rear: \"the object on the right\"",
        "set_prompt of camera front \"the object on the left\": success",
        "is not open yet: prompt kept for when it joins",
        "service /referdino/front/set_prompt",
        "publish mask (rear): mean",
    ] {
        assert!(log.contains(want), "node log lacks {want:?}\n{ctx}");
    }
    // Both cameras' masks are what the library runtime gives on the same frames (one set of engines
    // for the two streams changes nothing; the rear camera's frames came as bgr8).
    let want = replayed_masks(d, t);
    for cam in ["front", "rear"] {
        for (f, want) in want.iter().enumerate() {
            let got01 = received01(&d.join(format!("{cam}_mask_{f}.raw")));
            assert!(got01 == *want, "{cam} frame {f}: differs from `run`");
        }
    }
}

/// The launch file's camera arguments (without a ROS install: its `launch` imports are stubbed):
/// `cameras:="NAME:=TOPIC ..."` gives `--camera NAME -r NAME/image:=TOPIC` each, none the single
/// camera's remap, and a malformed pair is refused.
#[test]
fn launch_file_camera_arguments() {
    let script = format!(
        r#"
import importlib.util, json, sys, types
for m in ["launch", "launch.actions", "launch.substitutions"]:
    sys.modules[m] = types.ModuleType(m)
sys.modules["launch"].LaunchDescription = list
for n in ["DeclareLaunchArgument", "ExecuteProcess", "OpaqueFunction"]:
    setattr(sys.modules["launch.actions"], n, lambda *a, **k: None)
sys.modules["launch.substitutions"].LaunchConfiguration = lambda *a, **k: None
spec = importlib.util.spec_from_file_location("l", "{path}")
l = importlib.util.module_from_spec(spec)
spec.loader.exec_module(l)
out = [l.camera_args("", "/cam/image_raw"),
       l.camera_args("front:=/f/image_raw  rear:=/r/image_raw", "/unused")]
try:
    l.camera_args("front", "/x")
    out.append("accepted")
except ValueError as e:
    out.append(str(e))
print(json.dumps(out))
"#,
        path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/board/ros2/referdino.launch.py"
        )
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v,
        serde_json::json!([
            ["-r", "image:=/cam/image_raw"],
            [
                "--camera",
                "front",
                "-r",
                "front/image:=/f/image_raw",
                "--camera",
                "rear",
                "-r",
                "rear/image:=/r/image_raw"
            ],
            "cameras: 'front' is not NAME:=TOPIC"
        ])
    );
}
