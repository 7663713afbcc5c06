//! `referdino calibrate --report` on the bundled fixture clip: FP16 and INT8 (the Q/DQ engines run by our
//! CPU backend) against FP32, as a user would run it.
//!
//! What is checked and why these bounds:
//! - the report exists, has both variants, one IoU per frame (3 frames × 2 prompts), every number finite;
//! - internal consistency between two independent implementations: the DAVIS J mean (src/eval) equals the
//!   mean of our per-frame mask IoU (src/quant), J&F = (J + F) / 2, the min is the smallest frame;
//! - ranges by construction: IoU, J, F in [0, 1]; score deltas compare sigmoids and box deltas normalised
//!   coordinates, so both lie in [0, 1];
//! - the report can fail: a table whose scales are 10^4 too large (every activation quantizes to 0) must
//!   agree clearly worse than the calibrated table. The fixture is a random-weight model whose query
//!   selection margins go down to 1e-5 (see tests/quant/precision.rs), so any precision change may pick
//!   other queries and exact agreement is not expected; the bound is relative to that broken control.

use referdino::calibration::agreement::AgreementReport;
use referdino::quant::{ScaleTable, TensorScale};
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn report(scales: &Path, out: &Path) -> AgreementReport {
    let fx = root().join("tests/fixtures/referdino-tiny");
    let o = Command::new(env!("CARGO_BIN_EXE_referdino"))
        .current_dir(root())
        .args([
            "calibrate",
            "--recipe",
            "calib/referdino-tiny.toml",
            "--weights",
        ])
        .arg(fx.join("weights.safetensors"))
        .arg("--config")
        .arg(fx.join("config.json"))
        .arg("--scales")
        .arg(scales)
        .arg("--report")
        .arg(out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(stdout.contains("agreement with FP32"), "{stdout}");
    serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap()
}

#[test]
fn agreement_report_on_the_fixture_clip() {
    let dir = tempfile::tempdir().unwrap();
    let table = root().join("calib/referdino-tiny.scales.json");
    let rep = report(&table, &dir.path().join("agreement.json"));
    assert_eq!(rep.variants.len(), 2);
    assert!(rep.variants[0].variant.starts_with("fp16"));
    assert!(rep.variants[1].variant.starts_with("int8"));
    for v in &rep.variants {
        eprintln!("{v}");
        assert_eq!(v.runs, 2, "1 clip × 2 prompts");
        assert_eq!(v.per_frame_iou.len(), 6, "3 frames × 2 prompts");
        let unit = |x: f64| x.is_finite() && (0.0..=1.0).contains(&x);
        assert!(v.per_frame_iou.iter().all(|&x| unit(x as f64)));
        let mean = v.per_frame_iou.iter().map(|&x| x as f64).sum::<f64>() / 6.0;
        assert!((v.mean_iou as f64 - mean).abs() < 1e-5);
        let min = v
            .per_frame_iou
            .iter()
            .cloned()
            .fold(f32::INFINITY, f32::min);
        assert_eq!(v.min_iou, min);
        assert!(
            (v.j_mean - mean).abs() < 1e-5,
            "DAVIS J {} vs mean IoU {mean}",
            v.j_mean
        );
        assert!(unit(v.f_mean) && (v.jf_mean - (v.j_mean + v.f_mean) / 2.0).abs() < 1e-9);
        for d in [
            v.max_score_delta,
            v.best_score_delta,
            v.max_box_delta,
            v.best_box_delta,
            v.best_track_agreement,
        ] {
            assert!(unit(d as f64), "{d}");
        }
        assert!(v.best_box_delta <= v.max_box_delta + 1e-6);
    }

    // Broken control: every activation scale 10^4 too large.
    let mut t = ScaleTable::load(&table).unwrap();
    for s in t.tensors.values_mut() {
        if let TensorScale::PerTensor { scale, amax } = s {
            *scale *= 1e4;
            *amax *= 1e4;
        }
    }
    let broken = dir.path().join("broken.json");
    t.save(&broken).unwrap();
    let bad = report(&broken, &dir.path().join("broken-agreement.json"));
    let (good, bad) = (&rep.variants[1], &bad.variants[1]);
    eprintln!("broken control: {bad}");
    assert!(
        good.jf_mean > bad.jf_mean + 0.1 && good.mean_iou > bad.mean_iou + 0.1,
        "calibrated INT8 J&F {} / IoU {} must beat the broken table's {} / {}",
        good.jf_mean,
        good.mean_iou,
        bad.jf_mean,
        bad.mean_iou
    );
}
