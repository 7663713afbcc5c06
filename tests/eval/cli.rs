//! `referdino eval` as a user runs it.

use std::path::Path;
use std::process::Command;

use referdino::eval::synth::{self, SynthSpec};
use referdino::output::png::write_palette_png;
use serde_json::Value;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_referdino"));
    c.env("RUST_LOG", "warn");
    c
}

fn write_square(path: &Path, w: usize, h: usize, x0: usize, side: usize, value: u8) {
    let mut m = vec![0u8; w * h];
    for y in 20..20 + side {
        for x in x0..x0 + side {
            m[y * w + x] = value;
        }
    }
    write_palette_png(path, w, h, &m).unwrap();
}

#[test]
fn pred_gt_writes_the_report_fields() {
    let dir = tempfile::tempdir().unwrap();
    let (pred, gt, out) = (
        dir.path().join("pred"),
        dir.path().join("gt"),
        dir.path().join("out"),
    );
    // Sequence "a": frame 0 exact, frame 1 shifted by one pixel (J = 9/11, F = 1 at r = 2).
    // Sequence "b": a prediction with object id 3 against id 1 (any non-zero is the object).
    write_square(&gt.join("a/00000.png"), 100, 100, 20, 10, 1);
    write_square(&gt.join("a/00001.png"), 100, 100, 20, 10, 1);
    write_square(&pred.join("a/00000.png"), 100, 100, 20, 10, 1);
    write_square(&pred.join("a/00001.png"), 100, 100, 21, 10, 1);
    write_square(&gt.join("b/00000.png"), 100, 100, 20, 10, 1);
    write_square(&pred.join("b/00000.png"), 100, 100, 20, 10, 3);
    let st = bin()
        .args(["eval", "--pred"])
        .arg(&pred)
        .arg("--gt")
        .arg(&gt)
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success());
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let a = &r["sequences"]["a"];
    assert_eq!(a["frames"].as_array().unwrap().len(), 2);
    assert_eq!(a["frames"][0]["J"], 1.0);
    assert!((a["frames"][1]["J"].as_f64().unwrap() - 9.0 / 11.0).abs() < 1e-12);
    assert_eq!(a["frames"][1]["F"], 1.0);
    for k in [
        "J_mean", "J_recall", "J_decay", "F_mean", "F_recall", "F_decay", "JF_mean",
    ] {
        assert!(a[k].is_number(), "sequence field {k}");
        assert!(r["overall"][k].is_number(), "overall field {k}");
    }
    // Two frames: bin edges round(linspace(1, 2, 5)) - 1 = [0, 0, 1, 1, 1], so bin 0 is frame 0 and
    // bin 3 is frame 1: decay = 1 - 9/11.
    assert!((a["J_mean"].as_f64().unwrap() - (1.0 + 9.0 / 11.0) / 2.0).abs() < 1e-12);
    assert!((a["J_decay"].as_f64().unwrap() - 2.0 / 11.0).abs() < 1e-12);
    assert_eq!(a["F_decay"], 0.0);
    assert_eq!(r["sequences"]["b"]["JF_mean"], 1.0);
    let overall_j = (1.0 + (1.0 + 9.0 / 11.0) / 2.0) / 2.0;
    assert!((r["overall"]["J_mean"].as_f64().unwrap() - overall_j).abs() < 1e-12);
    assert!(out.join("report.csv").is_file());
}

#[test]
fn bad_flags_and_inputs_leave_no_output_folder() {
    let dir = tempfile::tempdir().unwrap();
    let pred = dir.path().join("pred");
    write_square(&pred.join("a/00000.png"), 50, 50, 20, 10, 1);
    let out = dir.path().join("out");
    let fails = |args: &[&str], want: &str| {
        let o = bin().args(args).arg("--out").arg(&out).output().unwrap();
        assert!(!o.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!out.exists(), "{args:?} made {}", out.display());
    };
    let p = pred.to_str().unwrap();
    let missing = dir.path().join("no-davis");
    let missing = missing.to_str().unwrap();
    fails(&["eval", "--pred", p, "--davis-root", missing], "no-davis");
    let root = dir.path().to_str().unwrap();
    let ds = ["eval", "--dataset", "ref-davis17", "--root", root];
    fails(
        &[&ds[..], &["--short-side", "100000"]].concat(),
        "--short-side",
    );
    fails(&[&ds[..], &["--limit", "0"]].concat(), "--limit");
    fails(&[&ds[..], &["--threads", "100000"]].concat(), "--threads");
    fails(
        &[&ds[..], &["--mode", "streaming", "--window", "100000"]].concat(),
        "--window",
    );
}

#[test]
fn missing_prediction_frame_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (pred, gt) = (dir.path().join("pred"), dir.path().join("gt"));
    write_square(&gt.join("a/00000.png"), 50, 50, 20, 10, 1);
    write_square(&gt.join("a/00001.png"), 50, 50, 20, 10, 1);
    write_square(&pred.join("a/00000.png"), 50, 50, 20, 10, 1);
    let o = bin()
        .args(["eval", "--pred"])
        .arg(&pred)
        .arg("--gt")
        .arg(&gt)
        .arg("--out")
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("00001.png") && err.contains("missing"),
        "{err}"
    );
}

#[test]
fn dataset_run_with_stand_in_predictor_and_unwired_model() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("bench");
    synth::write_ref_davis17(&root, &SynthSpec::default()).unwrap();
    let out = dir.path().join("out");
    let o = bin()
        .args(["eval", "--dataset", "ref-davis17", "--root"])
        .arg(&root)
        .args(["--fake-predictor", "ground-truth", "--quiet", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(r["overall"]["JF_mean"], 1.0);
    assert_eq!(r["sequences"].as_object().unwrap().len(), 16);

    let o = bin()
        .args(["eval", "--dataset", "ref-davis17", "--root"])
        .arg(&root)
        .args([
            "--weights",
            "w.safetensors",
            "--mode",
            "streaming",
            "--window",
            "8",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    // Streaming mode runs the real model too: the missing checkpoint is named.
    assert!(err.contains("w.safetensors"), "{err}");

    // Offline mode runs the real model: a missing checkpoint is a clear error naming the file.
    let o = bin()
        .args(["eval", "--dataset", "ref-davis17", "--root"])
        .arg(&root)
        .args(["--weights", "no-such-checkpoint.pth", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no-such-checkpoint.pth"), "{err}");
}
