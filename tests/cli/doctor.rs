//! `referdino doctor` on this machine: every check reported (none crashes without a GPU, TensorRT or a
//! camera), the path `run` takes, and an engine directory checked: complete, incomplete (an error and
//! exit status 1), and TensorRT plans on a machine that cannot run them.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

use crate::support::common;

fn doctor(extra: &[&str], engines: Option<&Path>) -> (Output, Value) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_referdino"));
    c.env("RUST_LOG", "warn")
        .args(["doctor", "--json"])
        .args(extra);
    if let Some(e) = engines {
        c.arg("--engines").arg(e);
    }
    let o = c.output().unwrap();
    let v: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stdout)));
    (o, v)
}

fn check<'a>(v: &'a Value, name: &str) -> (&'a str, &'a str) {
    let c = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name}: {v}"));
    (c["status"].as_str().unwrap(), c["detail"].as_str().unwrap())
}

#[test]
fn doctor_reports_every_check_and_judges_an_engine_directory() {
    let (o, v) = doctor(&[], None);
    // What this machine has decides the statuses; the exit status follows them.
    let any_error = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["status"] == "error");
    assert_eq!(
        o.status.code(),
        Some(i32::from(any_error)),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    for name in [
        "build",
        "platform",
        "tensorrt",
        "onnxruntime",
        "cameras",
        "gstreamer",
        "mask-ring",
    ] {
        let (status, _) = check(&v, name);
        assert!(
            ["ok", "missing", "warn", "error"].contains(&status),
            "{name}: {status}"
        );
    }
    // Parts every build and machine here has.
    for name in ["build", "platform", "mask-ring"] {
        assert_eq!(check(&v, name).0, "ok", "{name}");
    }
    // The products' kernel: the detected one, or the one REFERDINO_CPU_KERNEL names where this
    // CPU runs it (an unknown name falls back to the detected one).
    let (_, platform) = check(&v, "platform");
    use referdino::ops::linear::{avx2_fma, Kernel, KERNEL_ENV};
    let want = |k: Kernel| {
        if avx2_fma() {
            format!("CPU backend products on its {} kernel", k.name())
        } else {
            "CPU backend products on tract's kernels".to_string()
        }
    };
    assert!(platform.contains(&want(Kernel::detected())), "{platform}");
    for (name, k) in [
        ("avx2", Kernel::Avx2),
        ("portable", Kernel::Portable),
        ("bogus", Kernel::detected()),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_referdino"))
            .env(KERNEL_ENV, name)
            .args(["doctor", "--json"])
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        let (_, platform) = check(&v, "platform");
        let k = if k.available() { k } else { Kernel::detected() };
        assert!(platform.contains(&want(k)), "{name}: {platform}");
    }
    let (_, build) = check(&v, "build");
    assert!(
        build.contains("referdino") && build.contains("with ["),
        "{build}"
    );
    // No TensorRT in this build: run takes a host path, and says which.
    assert!(
        v["path"]
            .as_str()
            .unwrap()
            .starts_with("the host path on the CPU"),
        "{v}"
    );
    // A launcher that is not there: gst: sources cannot run, said with the package to install.
    let mut c = Command::new(env!("CARGO_BIN_EXE_referdino"));
    let o = c
        .env("REFERDINO_GST_LAUNCH", "/nonexistent/gst-launch-1.0")
        .args(["doctor", "--json"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let (status, detail) = check(&v, "gstreamer");
    assert_eq!(status, "missing");
    assert!(detail.contains("gstreamer1.0-tools"), "{detail}");

    // Sources: one that delivers (its size reported), one that does not exist (an error, exit 1).
    let (_, v) = doctor(&["--source", "synthetic:64x48@30"], None);
    let (status, detail) = check(&v, "source");
    assert_eq!(status, "ok", "{detail}");
    assert!(detail.contains("of 64x48"), "{detail}");
    let (o, v) = doctor(&["--source", "/nonexistent/folder"], None);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(check(&v, "source").0, "error");

    // An exported engine directory: complete, then with an engine gone.
    let dir = tempfile::tempdir().unwrap();
    let engines = dir.path().join("engines");
    let fx = common::fixture("referdino-tiny");
    let o = Command::new(env!("CARGO_BIN_EXE_referdino"))
        .env("RUST_LOG", "warn")
        .args(["export", "--weights"])
        .arg(fx.join("weights.safetensors"))
        .arg("--config")
        .arg(fx.join("config.json"))
        .args(["--height", "70", "--width", "118", "--out"])
        .arg(&engines)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (_, v) = doctor(&["--no-compile"], Some(&engines));
    let (status, detail) = check(&v, "engines");
    assert_eq!(status, "ok", "{detail}");
    assert!(
        detail.contains("118x70") && detail.contains("4 of 4 ONNX engines present"),
        "{detail}"
    );
    // A damaged engine of the right size: the manifest's CRC-32 tells.
    let text = std::fs::read(engines.join("text.onnx")).unwrap();
    let mut damaged = text.clone();
    let last = damaged.len() - 1;
    damaged[last] ^= 0x10;
    std::fs::write(engines.join("text.onnx"), &damaged).unwrap();
    let (o, v) = doctor(&["--no-compile"], Some(&engines));
    assert_eq!(o.status.code(), Some(1), "a damaged engine fails");
    let (status, detail) = check(&v, "engines");
    assert_eq!(status, "error");
    assert!(
        detail.contains("text.onnx") && detail.contains("CRC-32"),
        "{detail}"
    );
    std::fs::write(engines.join("text.onnx"), &text).unwrap();
    std::fs::remove_file(engines.join("head.onnx")).unwrap();
    let (o, v) = doctor(&[], Some(&engines));
    assert_eq!(o.status.code(), Some(1), "an incomplete directory fails");
    let (status, detail) = check(&v, "engines");
    assert_eq!(status, "error");
    assert!(detail.contains("3 of 4"), "{detail}");

    // Plans on a machine without TensorRT or a GPU: a warning, not a pass.
    std::fs::write(engines.join("frame.plan"), b"not really a plan").unwrap();
    let (_, v) = doctor(&[], Some(&engines));
    let (status, detail) = check(&v, "engines");
    assert_eq!(status, "warn", "{detail}");
    assert!(detail.contains("plans cannot run here"), "{detail}");
    // No manifest at all.
    let (o, v) = doctor(&[], Some(dir.path()));
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(check(&v, "engines").0, "error");
}
