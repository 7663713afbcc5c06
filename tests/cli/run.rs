//! `referdino run` and `referdino demo` as a user runs them: synthetic source with
//! `--max-frames`, the bundled clip as a folder source with `--save-dir` overlays, JSON command replies
//! over stdin while frames stream, Ctrl-C, and clear errors for bad sources.

use crate::support::common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use referdino::tensor::Data;
use serde_json::Value;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_referdino"));
    c.env("RUST_LOG", "info");
    c
}

/// Writes the bundled fixture clip (3 frames, 118×70) as PNGs.
fn write_clip(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let inputs = common::tiny_inputs();
    let clip = &inputs["frames_uint8"];
    let (t, h, w) = (clip.shape()[0], clip.shape()[1], clip.shape()[2]);
    let Data::U8(px) = clip.data() else { panic!() };
    for f in 0..t {
        image::RgbImage::from_raw(
            w as u32,
            h as u32,
            px[f * h * w * 3..(f + 1) * h * w * 3].to_vec(),
        )
        .unwrap()
        .save(dir.join(format!("{f:05}.png")))
        .unwrap();
    }
}

#[test]
fn synthetic_source_stops_after_max_frames_with_a_summary() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("summary.json");
    let out = bin()
        .args([
            "run",
            "--source",
            "synthetic:118x70@30",
            "--short-side",
            "70",
            "--window",
            "4",
            "--prompt",
            "the moving square",
            "--max-frames",
            "3",
            "--no-stdin",
            "--summary-json",
        ])
        .arg(&json)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("summary: 3 frames processed"), "{err}");
    for stage in ["frame", "tracker", "temporal", "head", "post", "total"] {
        assert!(err.contains(&format!("  {stage}")), "no {stage} row: {err}");
    }
    assert!(err.contains("p95"), "{err}");
    // The same summary as JSON: counts, rate, each stage's percentiles in order.
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["frames_processed"], 3);
    assert!(v["fps"].as_f64().unwrap() > 0.0, "{v}");
    assert!(v["source"].as_str().unwrap().contains("synthetic"), "{v}");
    for stage in ["frame", "tracker", "temporal", "head", "post", "total"] {
        let l = &v["latency"][stage];
        assert_eq!(l["count"], 3, "{stage}: {l}");
        let (p50, p95, max) = (
            l["p50_ms"].as_f64().unwrap(),
            l["p95_ms"].as_f64().unwrap(),
            l["max_ms"].as_f64().unwrap(),
        );
        assert!(
            0.0 < p50 && p50 <= p95 && p95 <= max * 1.001,
            "{stage}: {l}"
        );
    }
    assert_eq!(v["streams"].as_array().unwrap().len(), 0);
    // Nothing but command replies goes to stdout.
    assert!(
        out.stdout.is_empty(),
        "stdout: {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn bundled_clip_folder_with_overlays_processes_every_frame() {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("clip");
    write_clip(&clip);
    let save = dir.path().join("overlays");
    let ring = dir.path().join("ring").to_string_lossy().into_owned();
    let out = bin()
        .args(["run", "--source"])
        .arg(&clip)
        .args([
            "--short-side",
            "70",
            "--prompt",
            "the red ball rolling to the left",
            "--keep-ring",
            "--ring",
            &ring,
            "--no-stdin",
            "--quiet",
            "--save-dir",
        ])
        .arg(&save)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("summary: 3 frames processed, 0 dropped, 3 captured"),
        "{err}"
    );
    for f in 0..3 {
        let p = save.join(format!("{f:05}.png"));
        let img = image::open(&p).unwrap();
        assert_eq!((img.width(), img.height()), (118, 70), "{}", p.display());
    }
    let gif = save.join("overlay.gif");
    assert!(std::fs::metadata(&gif).unwrap().len() > 100);
    // The ring file holds the three commits (kept at exit by `--keep-ring`).
    let reader = referdino::output::ring::MaskRingReader::open(&ring).unwrap();
    assert_eq!(reader.write_count(), 3);
    let mut copy = reader.new_copy();
    assert!(reader.read_latest(&mut copy).is_some());
    assert_eq!(copy.frame_id, 2);
    assert!(copy.tracks.len() == 1 && copy.mask.contains(&1));
}

/// Whoever reads stdout may stop reading: the replies to stdin commands then wait in a bounded
/// queue and the rest are dropped, while frames go on (before, the loop blocked writing a reply to
/// the full pipe and the run stood still).
#[test]
fn an_unread_stdout_does_not_stall_the_run() {
    let mut child = bin()
        .args([
            "run",
            "--source",
            "synthetic:118x70@30",
            "--short-side",
            "70",
            "--window",
            "3",
            "--max-text",
            "12",
            "--prompt",
            "the bright square",
            "--max-frames",
            "60",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // 5 000 status commands: about 2 MB of replies, far beyond a pipe's buffer; nobody reads them
    // until the run is over. Written from a thread: the child reads its stdin only as fast as its
    // loop takes commands.
    let mut stdin = child.stdin.take().unwrap();
    std::thread::spawn(move || {
        for _ in 0..5000 {
            if stdin.write_all(b"{\"cmd\": \"status\"}\n").is_err() {
                break;
            }
        }
    });
    let t = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("the run stood still behind an unread stdout");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(status.success(), "{err}");
    assert!(err.contains("summary: 60 frames processed"), "{err}");
    assert!(err.contains("stdout takes no replies"), "{err}");
    // What the pipe held arrives whole: one reply per line.
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().count() > 10, "{text}");
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert_eq!(v["ok"], true, "{line}");
    }
}

#[test]
fn commands_over_stdin_get_one_reply_each_while_running_and_ctrl_c_stops() {
    let mut child = bin()
        .args([
            "run",
            "--source",
            "synthetic:118x70@20",
            "--short-side",
            "70",
            "--window",
            "3",
            "--max-text",
            "12",
            "--max-frames",
            "100000",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(l) = line else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let mut stdin = child.stdin.take().unwrap();
    let mut ask = |line: &str| -> Value {
        stdin.write_all(line.as_bytes()).unwrap();
        stdin.write_all(b"\n").unwrap();
        stdin.flush().unwrap();
        let reply = rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("no reply to {line}"));
        serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{reply}: {e}"))
    };
    let r = ask(r#"{"prompt": "the bright square", "id": 1}"#);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["id"], 1);
    assert_eq!(r["settings"]["prompt"], "the bright square");
    // Let some frames through with the prompt set.
    std::thread::sleep(Duration::from_millis(1500));
    let r = ask(r#"{"cmd": "status", "id": "s1"}"#);
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["id"], "s1");
    let processed = r["stats"]["frames_processed"].as_u64().unwrap();
    assert!(processed > 0, "{r}");
    assert!(
        r["stats"]["latency_ms"]["frame"].as_f64().unwrap() > 0.0,
        "{r}"
    );
    // A prompt longer than the engines' 12 tokens: refused, the old prompt stays.
    let r = ask(&format!(
        r#"{{"prompt": "{}", "id": 2}}"#,
        "word ".repeat(30)
    ));
    assert_eq!(r["ok"], false, "{r}");
    assert!(r["error"].as_str().unwrap().contains("at most 12"), "{r}");
    let r = ask(r#"{"cmd": "mode", "mode": "multi", "threshold": 0.3}"#);
    assert_eq!(r["settings"]["mode"], "multi", "{r}");
    assert_eq!(r["settings"]["prompt"], "the bright square", "{r}");
    let r = ask("this is not json");
    assert_eq!(r["ok"], false, "{r}");
    let r = ask(r#"{"cmd": "pause"}"#);
    assert_eq!(r["settings"]["paused"], true, "{r}");
    let r = ask(r#"{"cmd": "resume"}"#);
    assert_eq!(r["settings"]["paused"], false, "{r}");
    let r = ask(r#"{"cmd": "clear"}"#);
    assert_eq!(r["ok"], true, "{r}");
    assert!(r["settings"]["prompt"].is_null(), "{r}");
    // Ctrl-C: clean shutdown with the summary.
    // SAFETY: plain kill(2) on our own child's pid.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGINT);
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    assert!(err.contains("summary: "), "{err}");
}

#[test]
fn bad_sources_are_clear_errors() {
    let out = bin()
        .args(["run", "--source", "/no/such/thing.xyz", "--no-stdin"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("does not exist"), "{err}");
    let out = bin()
        .args(["run", "--source", "synthetic:abc", "--no-stdin"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("expected WxH"), "{err}");
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .args(["run", "--no-stdin", "--source"])
        .arg(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("no .png/.jpg/.jpeg images"), "{err}");
}

/// An out-of-range flag is refused by name, with its value and range, before the checkpoint is read
/// (a missing one is never reached) and before `--out` is created.
#[test]
fn export_refuses_an_oversized_input_before_creating_out() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let out = bin()
        .args(["export", "--weights", "/no/such/weights.safetensors"])
        .args(["--height", "100000", "--width", "100000", "--out"])
        .arg(&out_dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("--height/--width 100000x100000") && err.contains("3840x2160"),
        "{err}"
    );
    assert!(!out_dir.exists());
}

/// `--backend` per engine on the live path: `auto` without ONNX Runtime's library (`ORT_DYLIB_PATH`
/// at a missing file) runs tract on every engine and says so in one line; a mix runs each engine on
/// its backend (when the library loads) and names them in one line; a bad mix is a clear error.
#[test]
fn backend_per_engine_on_the_live_path() {
    let run = |backend: &str, env: Option<(&str, &str)>| {
        let mut c = bin();
        c.args([
            "run",
            "--source",
            "synthetic:118x70@30",
            "--short-side",
            "70",
        ])
        .args(["--window", "2", "--prompt", "the moving square"])
        .args(["--max-frames", "2", "--threads", "1", "--no-stdin"])
        .args(["--backend", backend]);
        if let Some((k, v)) = env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let backend_lines = |err: &str| -> Vec<String> {
        err.lines()
            .filter(|l| l.contains("backend: "))
            .map(str::to_string)
            .collect()
    };
    let missing = (
        "ORT_DYLIB_PATH",
        "/nonexistent/referdino/libonnxruntime.so.1",
    );
    let (ok, err) = run("auto", Some(missing));
    assert!(ok, "{err}");
    let lines = backend_lines(&err);
    assert_eq!(lines.len(), 1, "one backend line: {err}");
    assert!(
        lines[0].contains("backend: text=cpu frame=cpu temporal=cpu head=cpu")
            && lines[0].contains("ONNX Runtime unavailable"),
        "{err}"
    );
    assert!(err.contains("summary: 2 frames processed"), "{err}");
    // Naming ONNX Runtime for an engine without the library is an error naming the engine.
    let (ok, err) = run("frame=ort", Some(missing));
    assert!(!ok);
    assert!(
        err.contains("the frame engine asks for ONNX Runtime"),
        "{err}"
    );
    let (ok, err) = run("frame=ort,head=gpu", None);
    assert!(!ok);
    assert!(
        err.contains("unknown backend `gpu` for the head engine"),
        "{err}"
    );
    if referdino::backend::ort_available() {
        let (ok, err) = run("text=ort,frame=cpu,temporal=ort,head=cpu", None);
        assert!(ok, "{err}");
        let lines = backend_lines(&err);
        assert_eq!(lines.len(), 1, "one backend line: {err}");
        assert!(
            lines[0].contains("backend: text=ort frame=cpu temporal=ort head=cpu"),
            "{err}"
        );
        assert!(err.contains("summary: 2 frames processed"), "{err}");
    } else {
        eprintln!("skipped the mix with ONNX Runtime: library not found");
    }
}

/// The README's first command: the bundled trained model on the generated clip, a prompt switch
/// half-way, every live mask scored against the ground truth of the object named at that frame.
#[test]
fn demo_runs_the_trained_model_with_a_prompt_switch_and_scores_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .args(["demo", "--threads", "2", "--backend", "cpu", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    let so = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{so}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(so.contains("prompt command"), "{so}");
    let scores: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("scores.json")).unwrap()).unwrap();
    assert_eq!(scores["frames"], 32, "{scores}");
    assert_eq!(
        (scores["width"].as_u64(), scores["height"].as_u64()),
        (Some(320), Some(192))
    );
    let seg = scores["segments"].as_array().unwrap();
    assert_eq!(seg.len(), 2, "{scores}");
    assert_eq!(seg[0]["frames"], serde_json::json!([0, 16]));
    assert_eq!(seg[1]["frames"], serde_json::json!([16, 32]));
    assert_ne!(
        seg[0]["object"], seg[1]["object"],
        "the two prompts name two objects"
    );
    assert_ne!(seg[0]["prompt"], seg[1]["prompt"]);
    // The masks follow the prompt: each part scores at least the issue's 0.8 on the object it names
    // and far better than on the other one (a text-blind model fails this). The bundled model scores
    // 0.939 and 0.846 here (tests/fixtures/referdino-synth/README.md).
    for s in seg {
        let jf = s["jf"].as_f64().unwrap();
        let other = s["jf_other"].as_f64().unwrap();
        assert!(jf >= 0.8 && jf >= other + 0.5, "{s}");
    }
    assert!(dir.path().join("overlay.gif").is_file());
    assert!(dir.path().join("00031.png").is_file());
    assert!(dir.path().join("input/00031.png").is_file());
}

/// `demo --int8` with the committed table of the bundled model (calib/referdino-synth.scales.json): the
/// INT8 engines on tract (our integer kernel) and on ONNX Runtime (its integer products) score within
/// 0.02 J&F of FP32 on both prompts, and the masks still follow the prompt. Measured: tract 0.939 /
/// 0.845, ONNX Runtime 0.939 / 0.846, FP32 0.939 / 0.846.
#[cfg(feature = "ort")]
#[test]
fn demo_int8_scores_like_fp32() {
    let table = Path::new(env!("CARGO_MANIFEST_DIR")).join("calib/referdino-synth.scales.json");
    // tract (our integer kernel where the CPU has one, its float Q/DQ otherwise), then ONNX Runtime.
    let mut backends = vec![(
        "cpu",
        match referdino::ops::qlinear::fast_kernel() {
            Some(_) => "integer kernel",
            None => "no integer kernel of ours",
        },
    )];
    if common::have_ort("INT8 on ONNX Runtime") {
        backends.push(("ort", "INT8 Q/DQ graph"));
    }
    for (backend, said) in backends {
        let dir = tempfile::tempdir().unwrap();
        let out = bin()
            .args(["demo", "--threads", "2", "--backend", backend, "--int8"])
            .arg(&table)
            .arg("--out")
            .arg(dir.path())
            .output()
            .unwrap();
        let so = String::from_utf8_lossy(&out.stdout);
        let se = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{so}\n{se}");
        assert!(se.contains(said), "{backend}: {se}");
        let scores: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("scores.json")).unwrap())
                .unwrap();
        assert!(scores["int8"].as_str().is_some(), "{scores}");
        let seg = scores["segments"].as_array().unwrap();
        assert_eq!(seg.len(), 2, "{scores}");
        // FP32 on this clip (demo_runs_the_trained_model_with_a_prompt_switch_and_scores_it, and
        // tests/fixtures/referdino-synth/README.md).
        for (s, fp32) in seg.iter().zip([0.939, 0.846]) {
            let jf = s["jf"].as_f64().unwrap();
            let other = s["jf_other"].as_f64().unwrap();
            eprintln!("{backend} int8: J&F {jf:.3} (fp32 {fp32}), other {other:.3}");
            assert!(jf >= fp32 - 0.02 && jf >= other + 0.5, "{backend}: {s}");
        }
    }
}

/// Two prompts as two objects on one stream with the trained model (`demo --together`): each
/// object's pixels of the label mask follow the object its prompt names, over the whole clip, and
/// stay off the other one.
#[test]
fn demo_together_two_objects_each_follow_their_own_target() {
    let dir = tempfile::tempdir().unwrap();
    let out = bin()
        .args([
            "demo",
            "--together",
            "--threads",
            "2",
            "--backend",
            "cpu",
            "--out",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    let so = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{so}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!so.contains("prompt command"), "no switch: {so}");
    let scores: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("scores.json")).unwrap()).unwrap();
    let seg = scores["segments"].as_array().unwrap();
    assert_eq!(seg.len(), 2, "{scores}");
    assert_ne!(seg[0]["object"], seg[1]["object"], "{scores}");
    for s in seg {
        assert_eq!(s["frames"], serde_json::json!([0, 32]), "{s}");
        // The bundled model scores 0.937 and 0.848 here (0.002 and 0.000 on the other object).
        let jf = s["jf"].as_f64().unwrap();
        let other = s["jf_other"].as_f64().unwrap();
        assert!(jf >= 0.8 && jf >= other + 0.5, "{s}");
    }
    // --together needs the generated clip and takes no switch.
    let bad = bin()
        .args(["demo", "--together", "--switch-at", "3", "--out"])
        .arg(dir.path().join("bad"))
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--together runs on the generated clip"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

/// `referdino export` of `weights` (the tiny fixture's model) at the test clip's size (118x70) into
/// `out`; its stdout.
fn export_tiny(weights: &Path, out: &Path, extra: &[&str]) -> String {
    let o = bin()
        .args(["export", "--weights"])
        .arg(weights)
        .arg("--config")
        .arg(common::fixture("referdino-tiny").join("config.json"))
        .args(["--height", "70", "--width", "118"])
        .args(extra)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `referdino run` on the 3-frame test clip `clip` (short side 70, the fixture caption, ring `ring`
/// kept) with `extra` flags: the last frame's label mask and tracks as a ring reader sees them, and
/// stderr.
fn last_ring_frame(clip: &Path, extra: &[&str], ring: &str) -> (Vec<u8>, Vec<(u32, f32)>, String) {
    let out = bin()
        .args(["run", "--source"])
        .arg(clip)
        .args([
            "--short-side",
            "70",
            "--prompt",
            "the red ball rolling to the left",
            "--no-stdin",
            "--quiet",
            "--keep-ring",
            "--ring",
            ring,
        ])
        .args(extra)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    let reader = referdino::output::ring::MaskRingReader::open(ring).unwrap();
    assert_eq!(reader.write_count(), 3, "{err}");
    let mut copy = reader.new_copy();
    reader.read_latest(&mut copy).unwrap();
    let tracks: Vec<(u32, f32)> = copy.tracks.iter().map(|t| (t.id, t.score)).collect();
    (copy.mask.clone(), tracks, err)
}

/// `run --engines DIR` (engines exported beforehand, as on a board) gives the same masks as building
/// them from the checkpoint at start-up; a directory for another geometry and a TensorRT request in a
/// CPU-only build are refused with what to do.
#[test]
fn prebuilt_engine_directory_matches_start_up_export() {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("clip");
    write_clip(&clip);
    let fx = common::fixture("referdino-tiny");
    let export =
        |out: &Path, extra: &[&str]| export_tiny(&fx.join("weights.safetensors"), out, extra);
    let engines = dir.path().join("engines");
    export(&engines, &[]);
    let last_mask = |extra: &[&str], ring: &str| {
        let (mask, tracks, _) = last_ring_frame(&clip, extra, ring);
        (mask, tracks)
    };
    let r1 = dir.path().join("r1").to_string_lossy().into_owned();
    let r2 = dir.path().join("r2").to_string_lossy().into_owned();
    let from_weights = last_mask(&[], &r1);
    let engines_arg = engines.to_string_lossy().into_owned();
    let from_dir = last_mask(&["--engines", &engines_arg], &r2);
    assert!(from_weights.0.contains(&1));
    assert_eq!(from_weights, from_dir);

    // With the object set (`export --objects`): image once per frame, cross / temporal / head at
    // `--cross-batch` objects per run, the same masks as the start-up export at that batch.
    let with_objects = dir.path().join("engines-objects");
    let stdout = export(&with_objects, &["--objects"]);
    assert!(stdout.contains("exported the object engines"), "{stdout}");
    assert!(with_objects.join("objects/cross.onnx").is_file());
    let objects_arg = with_objects.to_string_lossy().into_owned();
    let r3 = dir.path().join("r3").to_string_lossy().into_owned();
    let r4 = dir.path().join("r4").to_string_lossy().into_owned();
    let start_up_b2 = last_mask(&["--cross-batch", "2"], &r3);
    let objects_b2 = last_mask(&["--engines", &objects_arg, "--cross-batch", "2"], &r4);
    assert!(start_up_b2.0.contains(&1));
    // The default backend may be ONNX Runtime, which plans the fixed-batch graph (`-1` reshapes,
    // shapes computed from `Shape`) with other kernels: the last bits of a score may differ.
    let differ = start_up_b2
        .0
        .iter()
        .zip(&objects_b2.0)
        .filter(|(a, b)| a != b)
        .count();
    eprintln!(
        "B=2 tracks {:?} vs {:?}, {differ} pixels differ",
        start_up_b2.1, objects_b2.1
    );
    assert_eq!(start_up_b2.1.len(), objects_b2.1.len());
    for (a, b) in start_up_b2.1.iter().zip(&objects_b2.1) {
        assert_eq!(a.0, b.0, "track ids");
        assert!((a.1 - b.1).abs() < 1e-5, "scores {a:?} vs {b:?}");
    }
    assert!(differ * 500 < start_up_b2.0.len(), "{differ} pixels differ");

    // Frames resized to another size than the engines take.
    let out = bin()
        .args(["run", "--source"])
        .arg(&clip)
        .args([
            "--short-side",
            "60",
            "--no-stdin",
            "--engines",
            &engines_arg,
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("take 118x70 images"), "{err}");

    #[cfg(not(feature = "tensorrt"))]
    {
        let out = bin()
            .args(["run", "--source"])
            .arg(&clip)
            .args(["--short-side", "70", "--no-stdin", "--backend", "tensorrt"])
            .args(["--engines", &engines_arg])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains("built without TensorRT"), "{err}");
    }
    let out = bin()
        .args([
            "run",
            "--source",
            "synthetic",
            "--no-stdin",
            "--backend",
            "gpu",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("expected `cpu`, `ort`, `tensorrt` or `auto`"));
}

/// An engine directory whose files come from different exports is refused at load with the file
/// named: a `frame.onnx` copied in from another export, a damaged `text.onnx` of the right size, and an
/// `objects/` set left from an export of other weights (re-exported without `--objects`).
#[test]
fn engine_directory_refuses_files_from_another_export() {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("clip");
    write_clip(&clip);
    let fx = common::fixture("referdino-tiny");
    // The same model with one text-encoder weight changed: its text engine differs, shapes do not.
    let other = dir.path().join("other.safetensors");
    let mut st = std::fs::read(fx.join("weights.safetensors")).unwrap();
    let n = u64::from_le_bytes(st[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&st[8..8 + n]).unwrap();
    let start = header["bert.embeddings.LayerNorm.bias"]["data_offsets"][0]
        .as_u64()
        .unwrap() as usize;
    st[8 + n + start + 3] ^= 0x40;
    std::fs::write(&other, &st).unwrap();
    let export = |weights: &Path, out: &Path, extra: &[&str]| {
        export_tiny(weights, out, extra);
    };
    let run_err = |engines: &Path, extra: &[&str]| {
        let out = bin()
            .args(["run", "--source"])
            .arg(&clip)
            .args([
                "--short-side",
                "70",
                "--prompt",
                "the red ball",
                "--no-stdin",
            ])
            .arg("--engines")
            .arg(engines)
            .args(extra)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{err}");
        err
    };
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    export(&fx.join("weights.safetensors"), &a, &["--objects"]);
    export(&other, &b, &[]);
    assert_ne!(
        std::fs::read(a.join("text.onnx")).unwrap(),
        std::fs::read(b.join("text.onnx")).unwrap(),
        "the changed weight must reach the text engine"
    );

    // A damaged copy of the right size: only the checksum tells.
    let text = std::fs::read(a.join("text.onnx")).unwrap();
    let mut damaged = text.clone();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 1;
    std::fs::write(a.join("text.onnx"), &damaged).unwrap();
    let err = run_err(&a, &[]);
    assert!(
        err.contains("text.onnx") && err.contains("CRC-32") && err.contains("manifest.json"),
        "{err}"
    );
    std::fs::write(a.join("text.onnx"), &text).unwrap();

    // Settings the directory fixes are refused when they disagree, not silently overridden.
    let err = run_err(&a, &["--window", "8"]);
    assert!(err.contains("--window 8: the engines in"), "{err}");
    let err = run_err(&a, &["--max-text", "9"]);
    assert!(err.contains("--max-text 9: the engines in"), "{err}");
    let err = run_err(&a, &["--host-path"]);
    assert!(
        err.contains("--host-path") && err.contains("tensorrt"),
        "{err}"
    );

    // The object set of export `a` beside the whole-frame engines of `b` (`b` exported later into
    // the same directory without `--objects`).
    let stale = b.join("objects");
    std::fs::create_dir_all(&stale).unwrap();
    for f in std::fs::read_dir(a.join("objects")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, stale.join(f.file_name().unwrap())).unwrap();
    }
    let err = run_err(&b, &["--cross-batch", "2"]);
    assert!(
        err.contains("another text engine") && err.contains("--objects"),
        "{err}"
    );

    // A frame engine from a decomposed export copied over the native one (in `b` without its
    // object set: with one, the frame engine is not loaded at all).
    std::fs::remove_dir_all(&stale).unwrap();
    // Without an object set, --cross-batch would be ignored: refused.
    let err = run_err(&b, &["--cross-batch", "2"]);
    assert!(
        err.contains("--cross-batch 2") && err.contains("--objects"),
        "{err}"
    );
    let c = dir.path().join("c");
    export(
        &fx.join("weights.safetensors"),
        &c,
        &["--decompose-custom-ops"],
    );
    std::fs::copy(c.join("frame.onnx"), b.join("frame.onnx")).unwrap();
    let err = run_err(&b, &[]);
    assert!(
        err.contains("frame.onnx") && err.contains("another export"),
        "{err}"
    );
}

/// A ring that does not fit in its tmpfs (a container's small `/dev/shm`) is an error at start-up
/// naming the way out, not a SIGBUS at the first slot that finds no page. The tmpfs is a 1 MiB mount in
/// a mount namespace of the test's own (`unshare -m`, root); without it the test says so and passes,
/// unless `REFERDINO_REQUIRE_ORACLES=1` (CI runs as root).
#[test]
fn a_ring_too_large_for_its_tmpfs_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("shm");
    std::fs::create_dir(&mnt).unwrap();
    let ring = mnt.join("ring");
    // 8 slots of 160x96 masks: 8 x 15 808 bytes, about 124 KiB (fits); 64 slots of 640x360: 14.8 MiB.
    let script = format!(
        "mount -t tmpfs -o size=1m tmpfs {m} || exit 77; \
         \"$0\" run --source synthetic:160x96@30 --short-side 96 --max-frames 2 --no-stdin --quiet \
           --ring {r} --ring-slots 8 --keep-ring || exit 1; \
         exec \"$0\" run --source synthetic:640x360@30 --short-side 360 --max-frames 2 --no-stdin \
           --quiet --ring {r} --ring-slots 64",
        m = mnt.display(),
        r = ring.display()
    );
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .arg(env!("CARGO_BIN_EXE_referdino"))
        .output();
    let out = match out {
        Ok(o)
            if o.status.code() != Some(77)
                && !String::from_utf8_lossy(&o.stderr).contains("unshare failed") =>
        {
            o
        }
        other => {
            assert!(
                !crate::support::onnx_oracle::require_oracles(),
                "REFERDINO_REQUIRE_ORACLES=1 but no private tmpfs could be mounted: {other:?}"
            );
            eprintln!("skipped: no private tmpfs (unshare -m and mount need root): {other:?}");
            return;
        }
    };
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("do not fit") && err.contains("--ring-slots") && err.contains("shm-size"),
        "{err}"
    );
}

/// Starts `run` on the synthetic source with a ring and a socket in `dir`, waits until both exist
/// and a frame has been written, and returns the child.
// The child is returned to the caller, which waits for it (and is killed and waited for here when it
// never comes up); the lint cannot follow the return.
#[allow(clippy::zombie_processes)]
fn start_with_ring_and_socket(dir: &Path, extra: &[&str]) -> std::process::Child {
    let ring = dir.join("ring");
    let sock = dir.join("cmd.sock");
    let mut child = bin()
        .args([
            "run",
            "--source",
            "synthetic:118x70@20",
            "--short-side",
            "70",
            "--window",
            "3",
            "--prompt",
            "the moving square",
            "--no-stdin",
            "--quiet",
            "--ring",
        ])
        .arg(&ring)
        .arg("--socket")
        .arg(&sock)
        .args(extra)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    loop {
        let written = referdino::output::ring::MaskRingReader::open(ring.to_str().unwrap())
            .map(|r| r.write_count() > 0)
            .unwrap_or(false);
        if written && sock.exists() {
            return child;
        }
        if t0.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("ring/socket never appeared");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn signal(child: &std::process::Child, sig: i32) {
    // SAFETY: plain kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(child.id() as i32, sig) };
    assert_eq!(rc, 0);
}

#[test]
fn sigterm_and_sighup_stop_cleanly_and_published_files_are_owner_only_and_removed() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (ring, sock) = (dir.path().join("ring"), dir.path().join("cmd.sock"));

    // Default: owner-only files, removed when SIGTERM ends the run; exit 0 with the summary.
    let child = start_with_ring_and_socket(dir.path(), &[]);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&ring), 0o600);
    assert_eq!(mode(&sock), 0o600);
    signal(&child, libc::SIGTERM);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("summary: "), "{err}");
    assert!(!ring.exists(), "ring left behind");
    assert!(!sock.exists(), "socket left behind");

    // Group-readable modes on request, and `--keep-ring` leaves a consistent ring after SIGHUP.
    let child = start_with_ring_and_socket(
        dir.path(),
        &[
            "--ring-mode",
            "0640",
            "--socket-mode",
            "0660",
            "--keep-ring",
        ],
    );
    assert_eq!(mode(&ring), 0o640);
    assert_eq!(mode(&sock), 0o660);
    signal(&child, libc::SIGHUP);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("summary: "), "{err}");
    assert!(!sock.exists(), "socket left behind");
    let r = referdino::output::ring::MaskRingReader::open(ring.to_str().unwrap()).unwrap();
    let mut slot = r.new_copy();
    assert!(
        r.read_latest(&mut slot).is_some(),
        "no consistent slot left"
    );
    assert_eq!(slot.mask.len(), 118 * 70);

    // A mode with set-id bits and an unknown group are refused before anything is created.
    std::fs::remove_file(&ring).unwrap();
    for bad in [
        &["--ring-mode", "4755"][..],
        &["--access-group", "no-such-group-referdino"][..],
    ] {
        let out = bin()
            .args([
                "run",
                "--source",
                "synthetic:118x70",
                "--no-stdin",
                "--ring",
            ])
            .arg(&ring)
            .args(bad)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad:?}: {err}");
        assert!(
            err.contains("beyond 0777") || err.contains("unknown group"),
            "{bad:?}: {err}"
        );
        assert!(!ring.exists());
    }
}

#[test]
fn two_folder_sources_and_two_prompts_write_two_identical_rings() {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("clip");
    write_clip(&clip);
    let save = dir.path().join("overlays");
    let ring = dir.path().join("ring").to_string_lossy().into_owned();
    let out = bin()
        .args(["run", "--source"])
        .arg(&clip)
        .arg("--source")
        .arg(&clip)
        .args([
            "--short-side",
            "70",
            "--prompt",
            "the red ball rolling to the left",
            "--prompt",
            "the white block",
            "--keep-ring",
            "--ring",
            &ring,
            "--ring-slots",
            "4",
            "--no-stdin",
            "--quiet",
            "--save-dir",
        ])
        .arg(&save)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("summary: 3 frames processed"), "{err}");
    assert!(
        err.contains("stream 1: summary: 3 frames processed"),
        "{err}"
    );
    // Same frames, same objects, every frame in order: the streams (sharing the engines) must agree.
    let mut slots = Vec::new();
    for k in 0..2 {
        let reader = referdino::output::ring::MaskRingReader::open(&format!("{ring}-{k}")).unwrap();
        assert_eq!(reader.write_count(), 3, "stream {k}");
        let mut frames = Vec::new();
        for n in 0..3 {
            let mut copy = reader.new_copy();
            assert_eq!(
                reader.read(n, &mut copy),
                referdino::output::ring::ReadOutcome::Ok
            );
            let objs: Vec<u16> = copy.tracks.iter().map(|t| t.object).collect();
            assert_eq!(objs, [0, 1], "stream {k} commit {n}");
            frames.push((copy.tracks.clone(), copy.mask.clone()));
        }
        slots.push(frames);
        assert!(save.join(format!("stream-{k}/00002.png")).exists());
    }
    assert!(slots[0] == slots[1], "the two streams' rings differ");
}

/// An MP4 source is decoded in a child process by default: a clean run processes every frame; a
/// decoder that dies of a real SIGSEGV after 3 frames (fault injected into the worker) ends the
/// stream with the reason in the log and the summary, and the runtime itself does not crash: it
/// prints the summary of the 3 frames and exits with status 1 (the source failed, it did not end).
/// `--decode in-process` does not run the worker (the injected fault is never reached).
#[cfg(feature = "video")]
#[test]
fn video_source_decoded_in_a_child_process_survives_a_decoder_crash() {
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("clip.mp4");
    let (w, h) = (118u32, 70u32);
    let frames: Vec<Vec<u8>> = (0..6)
        .map(|i| {
            let mut v = vec![0u8; (w * h * 3) as usize];
            referdino::camera::synthetic::Synthetic::render(i, w, h, &mut v);
            v
        })
        .collect();
    referdino::camera::video::write_mp4(&clip, w, h, 10, &frames).unwrap();
    let run = |fault: Option<&str>, extra: &[&str]| {
        let mut c = bin();
        c.args([
            "run",
            "--short-side",
            "70",
            "--window",
            "4",
            "--no-stdin",
            "--quiet",
        ])
        .args(["--prompt", "the moving square", "--source"])
        .arg(&clip)
        .args(extra);
        if let Some(f) = fault {
            c.env("REFERDINO_DECODER_FAULT", f);
        }
        let out = c.output().unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (status, err) = run(None, &[]);
    assert!(status.success(), "{err}");
    assert!(err.contains("summary: 6 frames processed"), "{err}");

    let summary = dir.path().join("summary.json");
    let (status, err) = run(
        Some("segv@3"),
        &["--summary-json", summary.to_str().unwrap()],
    );
    assert!(
        err.contains("H.264 decoder process killed by signal 11 (SIGSEGV) after 3 frames"),
        "{err}"
    );
    // The run failed, and still says what it did and why where monitoring reads it.
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    assert_eq!(j["frames_processed"], 3, "{j}");
    assert!(
        j["ended_early"].as_str().unwrap().contains("source failed"),
        "{j}"
    );
    assert!(err.contains("clip.mp4"), "{err}");
    assert!(err.contains("summary: 3 frames processed"), "{err}");
    assert_eq!(status.code(), Some(1), "{err}");
    assert!(
        err.contains("the run ended early: stream 0: source failed"),
        "{err}"
    );

    let (status, err) = run(Some("segv@3"), &["--decode", "in-process"]);
    assert!(status.success(), "{err}");
    assert!(err.contains("summary: 6 frames processed"), "{err}");
}

/// `gst:` (the real gst-launch-1.0: CI installs it) and `raw:…:-` (frames on stdin, which then
/// carries no commands) as `run` sources: frames flow, the producer's end ends the run cleanly.
#[test]
fn gstreamer_and_stdin_raw_sources_run_live_and_end_with_their_producer() {
    let common_args = [
        "--short-side",
        "70",
        "--window",
        "4",
        "--prompt",
        "the moving ball",
    ];
    let gst = Command::new("gst-launch-1.0")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if gst {
        let out = bin()
            .args([
                "run",
                "--source",
                "gst:118x70:videotestsrc num-buffers=6 pattern=ball",
                "--no-stdin",
            ])
            .args(common_args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(
            err.contains("summary:") && !err.contains("summary: 0 frames"),
            "{err}"
        );
    } else {
        assert!(
            std::env::var("REFERDINO_REQUIRE_GST").as_deref() != Ok("1"),
            "gst-launch-1.0 is required here (REFERDINO_REQUIRE_GST=1: apt install gstreamer1.0-tools gstreamer1.0-plugins-base)"
        );
    }
    let mut child = bin()
        .args(["run", "--source", "raw:118x70:rgb:-"])
        .args(common_args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for i in 0..3 {
        let mut rgb = vec![0u8; 118 * 70 * 3];
        referdino::camera::synthetic::Synthetic::render(i, 118, 70, &mut rgb);
        stdin.write_all(&rgb).unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("stdin carries frames"), "{err}");
    assert!(
        err.contains("summary:") && !err.contains("summary: 0 frames"),
        "{err}"
    );
}

/// `board/smoke.sh` (the one report to bring back from a board) on the synthetic source: doctor's
/// checks and run's summary in one JSON file.
#[test]
fn board_smoke_script_reports_doctor_and_run_in_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let out_json = dir.path().join("smoke.json");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("board/smoke.sh");
    let out = Command::new("bash")
        .arg(&script)
        .args(["--source", "synthetic:118x70@30", "--frames", "3", "--out"])
        .arg(&out_json)
        .args(["--", "--short-side", "70", "--window", "4"])
        .env("REFERDINO", env!("CARGO_BIN_EXE_referdino"))
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{err}");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&out_json).unwrap()).unwrap();
    assert_eq!(v["run"]["frames_processed"], 3, "{v}");
    assert_eq!(v["run_exit"], 0);
    assert!(v["doctor"]["checks"].as_array().unwrap().len() >= 7, "{v}");
    assert!(
        stdout.contains("3 frames") && stdout.contains("fps"),
        "{stdout}"
    );
}

/// `referdino run` of two sources for 4 frames, the summary into `json`, with a fake
/// `gst-launch-1.0` in `dir` that runs `script` (shell) and then delivers 118x70 RGB frames (rows
/// padded to 356 bytes, as the real launcher's caps give them) until it is stopped.
#[cfg(unix)]
fn two_source_run(dir: &Path, script: &str, sources: [&str; 2], json: &Path) -> Command {
    use std::os::unix::fs::PermissionsExt;
    let launcher = dir.join("gst-launch");
    std::fs::write(
        &launcher,
        format!("#!/bin/sh\n{script}\nwhile head -c 24920 /dev/zero; do sleep 0.02; done\n"),
    )
    .unwrap();
    std::fs::set_permissions(&launcher, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut c = bin();
    c.env("REFERDINO_GST_LAUNCH", &launcher)
        .args(["run", "--source", sources[0], "--source", sources[1]])
        .args(["--short-side", "70", "--window", "4"])
        .args([
            "--prompt",
            "the moving square",
            "--max-frames",
            "4",
            "--no-stdin",
        ])
        .arg("--summary-json")
        .arg(json);
    c
}

/// Cameras are opened at the same time: each fake camera's launcher only delivers once the other one
/// has started (it gives up after 10 s, and the 15 s open timeout is longer), so opened one after
/// the other the first would fail its start and join late; opened together both start at once.
#[cfg(unix)]
#[test]
fn cameras_are_opened_together() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    // Arguments: -q CAMERA ! videoconvert ...
    let script = format!(
        "touch '{d}/'$2.started\n\
         case $2 in cama) other=camb;; *) other=cama;; esac\n\
         i=0\n\
         while [ ! -f '{d}/'$other.started ]; do\n\
           i=$((i+1)); [ $i -gt 200 ] && {{ echo \"$2 waited alone\" >&2; exit 1; }}\n\
           sleep 0.05\n\
         done"
    );
    let json = dir.path().join("summary.json");
    let out = two_source_run(
        dir.path(),
        &script,
        ["gst:118x70:cama", "gst:118x70:camb"],
        &json,
    )
    .output()
    .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(
        !text.contains("waited alone") && !text.contains("not there yet"),
        "{text}"
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["frames_processed"], 4, "{v}");
    assert_eq!(v["streams"][0]["frames_processed"], 4, "{v}");
}

/// A camera that is not there when the run starts (still enumerating at boot, unplugged) does not
/// stop the others: the run starts with the sources that opened, re-opens the missing one with
/// back-off, and its stream joins when it appears (here a `gst:` camera whose launcher fails until a
/// file exists), then runs its frames like the others. A missing recording still fails the start.
#[cfg(unix)]
#[test]
fn a_camera_missing_at_start_joins_the_run_when_it_appears() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("plugged-in");
    let script = format!(
        "[ -f '{}' ] || {{ echo 'no such camera' >&2; exit 1; }}",
        marker.display()
    );
    let json = dir.path().join("summary.json");
    let mut child = two_source_run(
        dir.path(),
        &script,
        ["synthetic:118x70@30", "gst:118x70:fakecamsrc"],
        &json,
    )
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut log = Vec::new();
    // The run starts without the camera, then the camera is plugged in.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !log.iter().any(|l: &String| l.contains("is not there yet")) {
        let l = rx
            .recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
            .unwrap_or_else(|_| panic!("no start without the camera: {log:#?}"));
        log.push(l);
    }
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(&marker, b"").unwrap();
    let status = child.wait().unwrap();
    log.extend(rx.try_iter());
    let text = log.join("\n");
    assert!(status.success(), "{text}");
    assert!(text.contains("stream 1 (gst:fakecamsrc"), "{text}");
    assert!(text.contains("joined the run after"), "{text}");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["frames_processed"], 4, "{v}");
    assert_eq!(v["streams"][0]["frames_processed"], 4, "{v}");
    assert_eq!(
        (&v["stream"], &v["streams"][0]["stream"]),
        (&0.into(), &1.into())
    );

    // A recording that is not there is still an error at once, camera or not beside it.
    let out = bin()
        .args([
            "run",
            "--source",
            "/no/such/clip.mp4",
            "--source",
            "synthetic:118x70@30",
            "--no-stdin",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("/no/such/clip.mp4")
            && !err.contains("not there yet"),
        "{err}"
    );
}

/// A terminal's Ctrl-C signals the whole foreground process group: a `--realtime` run of a video
/// decoded in a child process (the default) stops as a plain Ctrl-C does, with exit status 0 and
/// the summary, not with the decoder "killed by signal 2" as the source's failure.
#[cfg(feature = "video")]
#[test]
fn ctrl_c_to_the_process_group_stops_a_video_run_cleanly() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("long.mp4");
    let (w, h) = (118u32, 70u32);
    // 30 s at 10 fps: far longer than the test waits.
    let frames: Vec<Vec<u8>> = (0..300)
        .map(|i| {
            let mut v = vec![0u8; (w * h * 3) as usize];
            referdino::camera::synthetic::Synthetic::render(i, w, h, &mut v);
            v
        })
        .collect();
    referdino::camera::video::write_mp4(&clip, w, h, 10, &frames).unwrap();
    let ring = dir.path().join("ring");
    let mut child = bin()
        .args([
            "run",
            "--short-side",
            "70",
            "--window",
            "3",
            "--prompt",
            "the moving square",
            "--no-stdin",
            "--realtime",
            "--ring",
        ])
        .arg(&ring)
        .arg("--source")
        .arg(&clip)
        .stderr(Stdio::piped())
        // Its own group, as a shell gives a foreground job: the signal below reaches the run and
        // its decoder process, not this test.
        .process_group(0)
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut s);
        s
    });
    let t0 = std::time::Instant::now();
    while referdino::output::ring::MaskRingReader::open(ring.to_str().unwrap())
        .map(|r| r.write_count() < 3)
        .unwrap_or(true)
    {
        if t0.elapsed() > Duration::from_secs(120) || matches!(child.try_wait(), Ok(Some(_))) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no masks written: {}", log.join().unwrap());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: killpg(2) on the group made for the child above (its pid is the group's id, reserved
    // until the child is reaped below).
    let rc = unsafe { libc::killpg(child.id() as i32, libc::SIGINT) };
    assert_eq!(rc, 0);
    let status = child.wait().unwrap();
    let err = log.join().unwrap();
    assert!(status.success(), "{status}: {err}");
    assert!(err.contains("interrupted"), "{err}");
    assert!(err.contains("summary: "), "{err}");
    assert!(!err.contains("killed by signal"), "{err}");
}

/// INT8 on the CPU, as a user runs it: `export --precision int8 --scales TABLE` writes host-form
/// engines (manifest `precision` int8, `rest` host) with the object set, `run --engines` on ONNX
/// Runtime runs them, and `run --int8 TABLE` (INT8 engines exported at start-up, the object set's
/// scales carried over from the whole-frame table) gives the same tracks as that directory. Bad
/// combinations are refused with what to do.
#[cfg(feature = "ort")]
#[test]
fn int8_engines_from_a_directory_and_at_start_up() {
    if !common::have_ort("INT8 on ONNX Runtime") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let clip = dir.path().join("clip");
    write_clip(&clip);
    let fx = common::fixture("referdino-tiny");
    let table = Path::new(env!("CARGO_MANIFEST_DIR")).join("calib/referdino-tiny.scales.json");
    let table_arg = table.to_string_lossy().into_owned();
    let engines = dir.path().join("int8");
    let geometry = ["--max-text", "12", "--window", "3"];
    let stdout = export_tiny(
        &fx.join("weights.safetensors"),
        &engines,
        &[
            &geometry[..],
            &["--precision", "int8", "--scales", &table_arg, "--objects"],
        ]
        .concat(),
    );
    assert!(stdout.contains("int8 engines"), "{stdout}");
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(engines.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(manifest["precision"], "int8");
    assert_eq!(manifest["rest"], "host");
    assert!(engines.join("objects/cross.onnx").is_file());
    let last = |extra: &[&str], ring: &str| {
        last_ring_frame(&clip, &[&["--backend", "ort"], extra].concat(), ring)
    };
    let ring = |n: &str| dir.path().join(n).to_string_lossy().into_owned();
    let engines_arg = engines.to_string_lossy().into_owned();
    let from_dir = last(&["--engines", &engines_arg], &ring("r1"));
    assert!(
        from_dir.2.contains("INT8 Q/DQ graph"),
        "ONNX Runtime was not told: {}",
        from_dir.2
    );
    let at_start = last(
        &[&geometry[..], &["--int8", &table_arg]].concat(),
        &ring("r2"),
    );
    let fp32 = last(&geometry, &ring("r3"));
    let differ = |a: &[u8], b: &[u8]| a.iter().zip(b).filter(|(x, y)| x != y).count();
    let n = fp32.0.len();
    eprintln!(
        "tracks: directory {:?}, start-up {:?}, fp32 {:?}; pixels differing: directory vs start-up {}, \
         int8 vs fp32 {} of {n}",
        from_dir.1,
        at_start.1,
        fp32.1,
        differ(&from_dir.0, &at_start.0),
        differ(&at_start.0, &fp32.0)
    );
    assert!(fp32.0.contains(&1) && at_start.0.contains(&1));
    // The directory runs the whole-frame INT8 engines, the start-up export the object set (its
    // scales carried over node by node): the same quantization, other graphs, so the same track and
    // score and a few mask pixels at the threshold.
    assert_eq!(from_dir.1.len(), at_start.1.len());
    for (a, b) in from_dir.1.iter().zip(&at_start.1) {
        assert_eq!(a.0, b.0, "track ids");
        assert!((a.1 - b.1).abs() < 1e-3, "scores {a:?} vs {b:?}");
    }
    assert!(differ(&from_dir.0, &at_start.0) * 100 < n);
    // The same start-up export on tract: products on our integer kernel where the CPU has one
    // (ONNX Runtime's integers, bit for bit: tests/quant/int8_products.rs), the Q/DQ pairs in float
    // elsewhere. Its other ops round differently, which moves the odd activation across an int8
    // step, and this fixture's random weights then pick among near-equal tracks (measured: tract
    // int8 track 0, ONNX Runtime 8, tract's float Q/DQ 6; FP32 9 on both): the trained model's
    // scores are compared instead (`demo_int8_scores_like_fp32`).
    let on_tract = last_ring_frame(
        &clip,
        &[
            &["--backend", "cpu"][..],
            &geometry,
            &["--int8", &table_arg],
        ]
        .concat(),
        &ring("r4"),
    );
    let said = match referdino::ops::qlinear::fast_kernel() {
        Some(_) => "integer kernel",
        None => "no integer kernel of ours",
    };
    assert!(on_tract.2.contains(said), "{}", on_tract.2);
    assert!(on_tract.0.contains(&1) && !on_tract.1.is_empty());
    // How close INT8 stays to FP32 is measured on the trained model (`demo --int8`, tests/cli/run.rs
    // `demo_int8_scores_like_fp32`): this fixture's random weights pick among near-equal tracks.

    // A table for another frame size, and --int8 with an engine directory, are refused.
    let out = bin()
        .args(["run", "--source"])
        .arg(&clip)
        .args([
            "--short-side",
            "60",
            "--no-stdin",
            "--backend",
            "ort",
            "--int8",
            &table_arg,
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("calibrated at 70x118") && err.contains("referdino calibrate"),
        "{err}"
    );
    let out = bin()
        .args(["run", "--source"])
        .arg(&clip)
        .args([
            "--no-stdin",
            "--engines",
            &engines_arg,
            "--int8",
            &table_arg,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    // A table that is not one: refused at start-up, naming the file.
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"version\": 1, \"tensors\": ").unwrap();
    let out = bin()
        .args(["run", "--source"])
        .arg(&clip)
        .args([
            "--short-side",
            "70",
            "--no-stdin",
            "--backend",
            "ort",
            "--int8",
        ])
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("--int8") && err.contains("bad.json: scale table"),
        "{err}"
    );
}
