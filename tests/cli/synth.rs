//! `referdino synth` writes clips that `referdino eval --dataset ref-youtube-vos` reads and scores.

use std::process::Command;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_referdino"));
    c.env("RUST_LOG", "warn");
    c
}

fn run_ok(c: &mut Command) -> String {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn synth_clips_are_read_and_scored_by_eval() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("synth");
    for (split, holdout, seed) in [("valid", "exclude", "4"), ("heldout", "only", "5")] {
        let s = run_ok(bin().args([
            "synth",
            "--out",
            root.to_str().unwrap(),
            "--clips",
            "3",
            "--frames",
            "3",
            "--size",
            "64x48",
            "--split",
            split,
            "--holdout",
            holdout,
            "--seed",
            seed,
        ]));
        assert!(s.contains("3 clips"), "{s}");
        // The ground truth scores 1, a one-pixel shift less: the masks are where the metadata says.
        for (fake, perfect) in [("ground-truth", true), ("shifted", false)] {
            let out = dir.path().join(format!("eval-{split}-{fake}"));
            let s = run_ok(bin().args([
                "eval",
                "--dataset",
                "ref-youtube-vos",
                "--root",
                root.to_str().unwrap(),
                "--split",
                split,
                "--fake-predictor",
                fake,
                "--quiet",
                "--out",
                out.to_str().unwrap(),
            ]));
            assert!(s.contains("J&F"), "{s}");
            assert!(out.join("report.json").is_file());
            assert_eq!(s.contains("J&F 1.0000"), perfect, "{fake}: {s}");
        }
    }
}
