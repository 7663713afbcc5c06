//! Streaming evaluation: the synthetic Ref-DAVIS17 benchmark run causally
//! through the streaming session (masks as produced live), scored against the ground truth, and the
//! agreement offline vs streaming reported as J&F for a window covering the clip and a shorter one.

use crate::support::common;

use std::process::Command;

use referdino::config::ModelConfig;
use referdino::eval::agreement::compare_predictors;
use referdino::eval::dataset::{Dataset, DatasetKind};
use referdino::eval::synth::{self, SynthSpec};
use referdino::eval::{run_dataset, RunOptions};
use referdino::pipeline::post::Selection;
use referdino::pipeline::predictor::{SessionPredictor, StreamPredictor};
use referdino::weights::Checkpoint;
use serde_json::Value;

fn model() -> (Checkpoint, ModelConfig) {
    (
        Checkpoint::load(&common::fixture("referdino-tiny/checkpoint.pth")).unwrap(),
        ModelConfig::from_file(&common::fixture("referdino-tiny/config.json")).unwrap(),
    )
}

fn streaming(window: usize) -> StreamPredictor {
    let (ck, cfg) = model();
    // 64-pixel short side keeps the debug-build test fast; the official evaluation uses 360.
    StreamPredictor::new(ck, cfg, Selection::Single, window)
        .unwrap()
        .with_short_side(64)
}

#[test]
fn synthetic_benchmark_streaming_and_agreement_with_offline() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("bench");
    let spec = SynthSpec::default();
    synth::write_ref_davis17(&root, &spec).unwrap();
    let ds = Dataset::open(DatasetKind::RefDavis17, &root, "valid").unwrap();

    let mut p = streaming(spec.frames);
    let out = run_dataset(
        &ds,
        &mut p,
        &RunOptions {
            out: dir.path().join("out"),
            limit: Some(3),
            progress: false,
        },
    )
    .unwrap();
    assert_eq!(out.expressions, 3);
    let r = out.report.expect("ground truth present");
    eprintln!(
        "RESULT streaming W={} vs ground truth: {}",
        spec.frames,
        r.headline()
    );
    for v in [r.overall.J_mean, r.overall.F_mean, r.overall.JF_mean] {
        assert!((0.0..=1.0).contains(&v), "score {v} out of range");
    }

    for window in [spec.frames, 2] {
        let (ck, cfg) = model();
        let mut offline = SessionPredictor::new(ck, cfg, Selection::Single)
            .unwrap()
            .with_short_side(64);
        let mut live = streaming(window);
        let a = compare_predictors(&ds, &mut offline, &mut live, Some(3)).unwrap();
        eprintln!(
            "RESULT agreement offline vs streaming W={window} (T={}): {}",
            spec.frames,
            a.headline()
        );
        assert_eq!(a.sequences.len(), 3);
        assert!((0.0..=1.0).contains(&a.overall.JF_mean));
    }
}

#[test]
fn eval_cli_streaming_mode_runs_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("bench");
    synth::write_ref_davis17(&root, &SynthSpec::default()).unwrap();
    let out = dir.path().join("out");
    let o = Command::new(env!("CARGO_BIN_EXE_referdino"))
        .args(["eval", "--dataset", "ref-davis17", "--root"])
        .arg(&root)
        .arg("--weights")
        .arg(common::fixture("referdino-tiny/checkpoint.pth"))
        .args(["--mode", "streaming", "--window", "3", "--limit", "2"])
        .args(["--quiet", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(r["sequences"].as_object().unwrap().len(), 2);
    let jf = r["overall"]["JF_mean"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&jf), "{jf}");
    let o = Command::new(env!("CARGO_BIN_EXE_referdino"))
        .args(["eval", "--dataset", "ref-davis17", "--root"])
        .arg(&root)
        .args(["--weights", "x.pth", "--mode", "streaming", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--mode streaming needs --window"));
}
