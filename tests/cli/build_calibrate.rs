//! The `build` and `calibrate` subcommands, run as a user would.

use referdino::quant::ScaleTable;
use std::path::Path;
use std::process::Command;

fn referdino() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_referdino"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

#[test]
fn build_dry_run_prints_and_writes_the_trtexec_commands() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("engines");
    let o = referdino()
        .args([
            "build",
            "--profile",
            "engines/profiles/orin-nano-swin-t-fp16.toml",
            "--dry-run",
            "--onnx",
        ])
        .arg(dir.path().join("onnx"))
        .arg("--out")
        .arg(&out)
        .args(["--plugins", "/opt/referdino/libreferdino_plugins.so"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8(o.stdout).unwrap();
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.starts_with("trtexec --onnx="))
            .count(),
        4
    );
    assert!(stdout.contains("--memPoolSize=workspace:1024M"), "{stdout}");
    let script = std::fs::read_to_string(out.join("trtexec.sh")).unwrap();
    assert!(
        script.starts_with("#!/bin/sh")
            && script.contains("--dynamicPlugins=/opt/referdino/libreferdino_plugins.so")
    );
}

#[test]
fn build_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    // A dry run from a checkpoint that does not exist fails instead of writing a script.
    let o = referdino()
        .args([
            "build",
            "--profile",
            "engines/profiles/orin-nano-swin-t-fp16.toml",
            "--dry-run",
            "--weights",
            "/nonexistent/ckpt.pth",
        ])
        .arg("--out")
        .arg(dir.path().join("dry"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("/nonexistent/ckpt.pth"), "{err}");
    assert!(!dir.path().join("dry").exists());
    // A folder is not a checkpoint either.
    let o = referdino()
        .args([
            "build",
            "--profile",
            "engines/profiles/orin-nano-swin-t-fp16.toml",
            "--dry-run",
            "--weights",
        ])
        .arg(dir.path())
        .arg("--out")
        .arg(dir.path().join("dry"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("not a file"), "{err}");
    // Missing exported engines.
    let o = referdino()
        .args([
            "build",
            "--profile",
            "engines/profiles/agx-orin-swin-t-fp16.toml",
            "--onnx",
        ])
        .arg(dir.path())
        .arg("--out")
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("text.onnx, frame.onnx, temporal.onnx, head.onnx"),
        "{err}"
    );
    // A profile that does not parse names the file and the problem.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "name='x'\nboard='xavier'\n").unwrap();
    let o = referdino()
        .args(["build", "--dry-run", "--onnx", "x", "--out"])
        .arg(dir.path().join("o"))
        .arg("--profile")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("bad.toml") && err.contains("xavier"), "{err}");
    // An INT8 profile whose scale table does not exist is refused before any work.
    let o = referdino()
        .args([
            "build",
            "--profile",
            "engines/profiles/agx-orin-swin-t-int8.toml",
            "--weights",
            "w.pth",
        ])
        .arg("--out")
        .arg(dir.path().join("o2"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("calib/swin-t.scales.json") && err.contains("referdino calibrate"),
        "{err}"
    );
}

#[cfg(not(feature = "tensorrt"))]
#[test]
fn build_without_the_tensorrt_feature_says_so() {
    let dir = tempfile::tempdir().unwrap();
    for k in ["text", "frame", "temporal", "head"] {
        std::fs::write(dir.path().join(format!("{k}.onnx")), b"not really onnx").unwrap();
    }
    std::fs::write(dir.path().join("manifest.json"), b"{\"the\": \"export's\"}").unwrap();
    let o = referdino()
        .args([
            "build",
            "--profile",
            "engines/profiles/orin-nx-swin-b-fp16.toml",
            "--onnx",
        ])
        .arg(dir.path())
        .arg("--out")
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("without the `tensorrt` feature"), "{err}");
    // The plans go to another directory than the ONNX: the manifest `run --engines` reads is copied
    // there (the trtexec lines printed above write their plans there too).
    assert_eq!(
        std::fs::read(dir.path().join("out/manifest.json")).unwrap(),
        b"{\"the\": \"export's\"}"
    );
}

#[test]
fn calibrate_the_example_recipe() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tiny.scales.json");
    let fx = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/referdino-tiny");
    let o = referdino()
        .args([
            "calibrate",
            "--recipe",
            "calib/referdino-tiny.toml",
            "--weights",
        ])
        .arg(format!("{fx}/weights.safetensors"))
        .arg("--config")
        .arg(format!("{fx}/config.json"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8(o.stdout).unwrap();
    assert!(stdout.contains("SQNR dB"), "{stdout}");
    let t = ScaleTable::load(&out).unwrap();
    // Engine tensor names (what insert_qdq consumes), not PyTorch module names.
    assert!(t.tensors.len() > 100, "{} tensors", t.tensors.len());
    assert!(t.tensors.keys().any(|k| k.starts_with("swin/")));
    assert_eq!(t.custom_ops.as_deref(), Some("native"));
    assert!(Path::new(&out).exists());
}

#[test]
fn calibrate_without_weights_explains_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let recipe = dir.path().join("r.toml");
    let root = env!("CARGO_MANIFEST_DIR");
    std::fs::write(
        &recipe,
        format!(
            "name='r'\nmodel='m'\noutput='{}/o.json'\nmethod='max'\n[[samples]]\n\
             frames='{root}/tests/fixtures/referdino-tiny/inputs.safetensors#frames_uint8'\nprompts=['a cat']\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let o = referdino()
        .args(["calibrate", "--recipe"])
        .arg(&recipe)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("3 frame×prompt runs") && err.contains("--weights"),
        "{err}"
    );
    // A frame source that does not exist is reported as such.
    std::fs::write(&recipe, "name='r'\nmodel='m'\noutput='o.json'\nmethod='max'\n[[samples]]\nframes='/nonexistent/dir'\nprompts=['a']\n").unwrap();
    let o = referdino()
        .args(["calibrate", "--recipe"])
        .arg(&recipe)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("/nonexistent/dir"),
        "{err}"
    );
}
