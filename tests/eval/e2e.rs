//! End to end on the synthetic benchmark: frames -> predictor -> masks -> J&F report, with stand-in
//! predictors whose scores are derivable by hand (the inference session plugs in the same way).

use std::path::Path;

use referdino::eval::dataset::{Dataset, DatasetKind};
use referdino::eval::synth::{self, SynthSpec};
use referdino::eval::{
    compare_predictors, run_dataset, score_dirs, shift_predictor, RunOptions, ScriptedPredictor,
};
use referdino::output::png::read_label_png;

fn opts(out: &Path, limit: Option<usize>) -> RunOptions {
    RunOptions {
        out: out.to_path_buf(),
        limit,
        progress: false,
    }
}

// Synthetic frames are 96x64: r = ceil(0.008 * 115.4) = 1. A 12x12 square shifted one pixel right
// keeps 11x12 of 13x12 pixels (J = 11/13) and its boundary stays within 1 pixel (F = 1).
const J_SHIFT: f64 = 11.0 / 13.0;

#[test]
fn ground_truth_predictor_scores_one() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("bench");
    synth::write_ref_davis17(&root, &SynthSpec::default()).unwrap();
    let ds = Dataset::open(DatasetKind::RefDavis17, &root, "valid").unwrap();
    let mut p = shift_predictor(&ds, 0, 0).unwrap();
    let out = run_dataset(&ds, &mut p, &opts(&dir.path().join("out"), None)).unwrap();
    assert_eq!(out.expressions, 16);
    assert_eq!(p.remaining(), 0);
    let r = out.report.unwrap();
    assert_eq!(r.sequences.len(), 16);
    assert_eq!(
        (r.overall.J_mean, r.overall.F_mean, r.overall.JF_mean),
        (1.0, 1.0, 1.0)
    );
}

#[test]
fn shifted_predictor_gives_hand_derived_scores_and_official_layout() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("bench");
    let spec = SynthSpec::default();
    synth::write_ref_davis17(&root, &spec).unwrap();
    let ds = Dataset::open(DatasetKind::RefDavis17, &root, "valid").unwrap();
    let mut p = shift_predictor(&ds, 1, 0).unwrap();
    let out_dir = dir.path().join("out");
    let out = run_dataset(&ds, &mut p, &opts(&out_dir, None)).unwrap();
    let r = out.report.unwrap();
    for (k, s) in &r.sequences {
        assert_eq!(s.frames.len(), spec.frames, "{k}");
        for f in &s.frames {
            assert!((f.j - J_SHIFT).abs() < 1e-12 && f.f == 1.0, "{k}: {f:?}");
        }
        assert_eq!(
            (s.summary.J_recall, s.summary.J_decay, s.summary.F_recall),
            (1.0, 0.0, 1.0)
        );
    }
    assert!((r.overall.JF_mean - (J_SHIFT + 1.0) / 2.0).abs() < 1e-12);
    assert_eq!(r.videos.len(), 2);
    assert!(out_dir.join("report.json").is_file() && out_dir.join("report.csv").is_file());
    let csv = std::fs::read_to_string(out_dir.join("report.csv")).unwrap();
    assert!(csv.starts_with("name,frames,J_mean"), "{csv}");
    assert!(
        csv.lines()
            .last()
            .unwrap()
            .starts_with("overall,96,0.846154"),
        "{csv}"
    );

    // Official Ref-DAVIS17 layout: Annotations/anno_K/VIDEO/NNNNN.png, palette index = object.
    let lm = read_label_png(&out_dir.join("Annotations/anno_2/synth-01/00004.png")).unwrap();
    let shifted =
        |k| referdino::eval::shift_mask(&synth::square_mask(&spec, 1, k, 4), 96, 64, 1, 0);
    assert_eq!(lm.object(1), shifted(0));
    assert_eq!(lm.object(2), shifted(1));
    // Rescoring those files against the annotations gives the same figures: each frame holds both
    // objects, 2 x 11x12 of 2 x 13x12 pixels.
    let again = score_dirs(
        &out_dir.join("Annotations/anno_0"),
        &root.join("valid/Annotations"),
    )
    .unwrap();
    assert_eq!(again.sequences.len(), 2);
    assert!((again.overall.J_mean - J_SHIFT).abs() < 1e-12);
    assert_eq!(again.overall.F_mean, 1.0);
}

#[test]
fn limit_stops_early_and_youtube_vos_layout_is_per_expression() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("bench");
    synth::write_ref_davis17(&root, &SynthSpec::default()).unwrap();
    let ds = Dataset::open(DatasetKind::RefYoutubeVos, &root, "valid").unwrap();
    let mut p = shift_predictor(&ds, 0, 0).unwrap();
    let out_dir = dir.path().join("out");
    let out = run_dataset(&ds, &mut p, &opts(&out_dir, Some(3))).unwrap();
    assert_eq!(out.expressions, 3);
    assert_eq!(out.report.unwrap().sequences.len(), 3);
    let lm = read_label_png(&out_dir.join("Annotations/synth-00/2/00005.png")).unwrap();
    assert!(lm.data.iter().all(|&v| v == 0 || v == 255));
    assert!(lm.data.contains(&255));
    assert!(!out_dir.join("Annotations/synth-00/3").exists());
}

#[test]
fn mevis_multi_object_run() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("bench");
    synth::write_mevis(&root, &SynthSpec::default()).unwrap();
    let ds = Dataset::open(DatasetKind::Mevis, &root, "valid_u").unwrap();
    // Answer "all the squares" with the objects as separate masks, as a multi-object model would.
    let mut p = ScriptedPredictor::new();
    let spec = SynthSpec::default();
    for (v, video) in ds.videos.iter().enumerate() {
        for (i, e) in video.expressions.iter().enumerate() {
            let objs: Vec<usize> = if i < spec.objects {
                vec![i]
            } else {
                (0..spec.objects).collect()
            };
            let masks = (0..spec.frames)
                .map(|t| {
                    objs.iter()
                        .map(|&k| synth::square_mask(&spec, v, k, t))
                        .collect()
                })
                .collect();
            p.push(&e.text, masks);
        }
    }
    let out = run_dataset(&ds, &mut p, &opts(&dir.path().join("out"), None)).unwrap();
    let r = out.report.unwrap();
    assert_eq!(r.sequences.len(), 6);
    assert_eq!(r.overall.JF_mean, 1.0);
}

#[test]
fn predictor_errors_are_reported_with_context() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("bench");
    synth::write_ref_davis17(&root, &SynthSpec::default()).unwrap();
    let ds = Dataset::open(DatasetKind::RefDavis17, &root, "valid").unwrap();
    let mut p = ScriptedPredictor::new();
    p.push("the red square", vec![vec![vec![0u8; 10]]; 6]);
    let e = run_dataset(&ds, &mut p, &opts(&dir.path().join("out"), None))
        .unwrap_err()
        .to_string();
    assert!(e.contains("synth-00") && e.contains("10 bytes"), "{e}");
}

#[test]
fn agreement_between_two_runs() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("bench");
    synth::write_ref_davis17(&root, &SynthSpec::default()).unwrap();
    let ds = Dataset::open(DatasetKind::RefDavis17, &root, "valid").unwrap();
    let mut a = shift_predictor(&ds, 0, 0).unwrap();
    let mut b = shift_predictor(&ds, 1, 0).unwrap();
    let r = compare_predictors(&ds, &mut a, &mut b, None).unwrap();
    assert_eq!(r.sequences.len(), 16);
    assert!((r.overall.J_mean - J_SHIFT).abs() < 1e-12);
    assert_eq!(r.overall.F_mean, 1.0);
}
