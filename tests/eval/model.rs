//! The synthetic benchmark run through the real model (tiny fixture checkpoint) on the CPU backend:
//! frames → session → masks → J&F report.

use crate::support::common;

use referdino::config::ModelConfig;
use referdino::eval::dataset::{Dataset, DatasetKind};
use referdino::eval::synth::{self, SynthSpec};
use referdino::eval::{run_dataset, RunOptions};
use referdino::pipeline::post::Selection;
use referdino::pipeline::predictor::SessionPredictor;
use referdino::weights::Checkpoint;

#[test]
fn synthetic_benchmark_through_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("bench");
    synth::write_ref_davis17(&root, &SynthSpec::default()).unwrap();
    let ds = Dataset::open(DatasetKind::RefDavis17, &root, "valid").unwrap();
    let ck = Checkpoint::load(&common::fixture("referdino-tiny/checkpoint.pth")).unwrap();
    let cfg = ModelConfig::from_file(&common::fixture("referdino-tiny/config.json")).unwrap();
    // 64-pixel short side keeps the debug-build test fast; the official evaluation uses 360.
    let mut p = SessionPredictor::new(ck, cfg, Selection::Single)
        .unwrap()
        .with_short_side(64);
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
    assert_eq!(r.sequences.len(), 3);
    for v in [r.overall.J_mean, r.overall.F_mean, r.overall.JF_mean] {
        assert!((0.0..=1.0).contains(&v), "score {v} out of range");
    }
    // Predicted masks were written at the original frame size in the server layout.
    assert!(out.predictions.is_dir());
}
