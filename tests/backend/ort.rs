//! ONNX Runtime backend (feature `ort`): the tiny fixture through ONNX Runtime against the official
//! reference outputs and against the tract backend, and what happens when the library is missing.
//!
//! ONNX Runtime comes from `ORT_DYLIB_PATH` or the `onnxruntime` Python wheel. Where neither is present
//! the ONNX Runtime parts are skipped with a message, unless `REFERDINO_REQUIRE_ORACLES=1` (CI) makes
//! that a failure.
#![cfg(feature = "ort")]

use crate::support::common;

use referdino::backend::kind::{EnginePlan, HostKind, AUTO_PLAN};
use referdino::backend::ort::{ort_available, OrtBackend};
use referdino::cli::parity::{parity_on, ParityArgs};
use referdino::pipeline::engine_dir::BackendKind;
use referdino::tensor::Data;

fn required() -> bool {
    std::env::var("REFERDINO_REQUIRE_ORACLES").is_ok_and(|v| v == "1")
}

/// True when ONNX Runtime loads; otherwise skips (or fails under `REFERDINO_REQUIRE_ORACLES=1`).
fn have_ort(test: &str) -> bool {
    if std::env::var_os(CHILD).is_some() {
        return false;
    }
    if ort_available() {
        return true;
    }
    let msg = format!(
        "{test}: ONNX Runtime library not found (set ORT_DYLIB_PATH or `pip install onnxruntime`)"
    );
    assert!(!required(), "{msg}");
    eprintln!("skipped: {msg}");
    false
}

fn args() -> ParityArgs {
    ParityArgs {
        dir: common::fixture("referdino-tiny"),
        dump: None,
        weights: None,
        max_text: None,
        decomposed: false,
    }
}

/// Every stage of the tiny fixture through ONNX Runtime within the parity tolerance of the official
/// outputs, and the same final masks as the tract backend on our native kernels.
#[test]
fn tiny_fixture_on_ort_matches_reference_and_tract() {
    if !have_ort("tiny_fixture_on_ort_matches_reference_and_tract") {
        return;
    }
    let (rows, ours) = parity_on(&args(), BackendKind::Ort, Some(2)).unwrap();
    for r in &rows {
        eprintln!(
            "{:<44} {:>10.3e} {:>10.3e} {}",
            r.key,
            r.error,
            r.tolerance,
            if r.ok { "ok" } else { "FAIL" }
        );
    }
    assert!(rows.len() >= 113, "only {} keys compared", rows.len());
    let bad: Vec<_> = rows.iter().filter(|r| !r.ok).map(|r| &r.key).collect();
    assert!(bad.is_empty(), "ONNX Runtime outside tolerance: {bad:?}");

    let (_, tract) = parity_on(&args(), BackendKind::Cpu, Some(2)).unwrap();
    let (a, b) = (&ours["post.masks"], &tract["post.masks"]);
    assert_eq!(a.shape(), b.shape());
    let ones = |d: &Data| match d {
        Data::Bool(v) => v.iter().filter(|&&x| x).count(),
        Data::U8(v) => v.iter().filter(|&&x| x != 0).count(),
        Data::F32(v) => v.iter().filter(|&&x| x > 0.5).count(),
        other => panic!("post.masks of type {other:?}"),
    };
    assert!(ones(a.data()) > 0, "empty masks prove nothing");
    assert_eq!(
        a.data(),
        b.data(),
        "final masks differ between ONNX Runtime and tract"
    );
}

/// The auto choice loads ONNX Runtime when it is present, for the engines its rule gives it.
#[test]
fn auto_picks_ort_when_present() {
    if !have_ort("auto_picks_ort_when_present") {
        return;
    }
    let b = BackendKind::Auto.host_backends(Some(1)).unwrap();
    assert_eq!(b.plan(), AUTO_PLAN);
    assert_eq!(b.for_engine("frame").unwrap().name(), "ort");
    assert_eq!(b.threads(), 1);
    let b = BackendKind::Ort.host_backend(Some(1)).unwrap();
    assert_eq!(b.name(), "ort");
}

/// A library path that does not exist is a clear error naming the path.
#[test]
fn missing_library_is_a_clear_error() {
    let missing = std::path::Path::new("/nonexistent/referdino/libonnxruntime.so.1");
    let msg = match OrtBackend::from_library(missing, 1) {
        Err(e) => e.to_string(),
        // Another test of this process loaded a library first (it cannot be unloaded), so the path is
        // not consulted again; the child process below checks the missing path on its own.
        Ok(b) => {
            assert_ne!(b.library(), missing);
            return;
        }
    };
    assert!(
        msg.contains("/nonexistent/referdino/libonnxruntime.so.1")
            && msg.contains("does not exist"),
        "{msg}"
    );
}

const CHILD: &str = "REFERDINO_ORT_FALLBACK_CHILD";

/// The fallback, checked in a fresh process (a loaded library cannot be unloaded) with
/// `ORT_DYLIB_PATH` at a missing file: `ort` (and a mix naming `ort`) fails naming the file, `auto`
/// (and a mix's `auto` engines) runs tract on every engine.
#[test]
fn missing_library_falls_back_with_auto() {
    // The test's full name depends on the module the file is mounted as in its binary.
    let name = format!(
        "{}::fallback_child",
        module_path!().split_once("::").map_or("", |(_, m)| m)
    );
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            name.trim_start_matches("::"),
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .env(
            "ORT_DYLIB_PATH",
            "/nonexistent/referdino/libonnxruntime.so.1",
        )
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "child failed:\n{text}");
    assert!(
        text.contains("fallback child ran"),
        "child did not run:\n{text}"
    );
}

/// Runs only inside [`missing_library_falls_back_with_auto`]'s child process.
#[test]
fn fallback_child() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let err = BackendKind::Ort
        .host_backend(Some(1))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("/nonexistent/referdino/libonnxruntime.so.1"),
        "error does not name the library: {err}"
    );
    let b = BackendKind::Auto.host_backends(Some(1)).unwrap();
    assert_eq!(b.plan(), EnginePlan::uniform(HostKind::Cpu));
    for e in ["text", "frame", "image", "cross", "temporal", "head"] {
        assert_eq!(b.for_engine(e).unwrap().name(), "cpu", "{e}");
    }
    let (plan, why) = BackendKind::Auto.plan().unwrap();
    assert_eq!(plan, EnginePlan::uniform(HostKind::Cpu));
    assert!(
        why.is_some_and(|w| w.contains("/nonexistent/referdino/libonnxruntime.so.1")),
        "the fallback says why"
    );
    let (plan, _) = BackendKind::parse("frame=auto,head=cpu")
        .unwrap()
        .plan()
        .unwrap();
    assert_eq!(plan, EnginePlan::uniform(HostKind::Cpu));
    let err = BackendKind::parse("text=cpu,frame=ort")
        .unwrap()
        .host_backends(Some(1))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("the frame engine asks for ONNX Runtime")
            && err.contains("/nonexistent/referdino/libonnxruntime.so.1"),
        "{err}"
    );
    // A set built with `auto` runs on tract and works.
    let cfg =
        referdino::config::ModelConfig::from_file(&common::fixture("referdino-tiny/config.json"))
            .unwrap();
    let ck = referdino::weights::Checkpoint::load(&common::fixture(
        "referdino-tiny/weights.safetensors",
    ))
    .unwrap();
    let geo = referdino::graph::engines::Geometry {
        height: 70,
        width: 118,
        max_text: 16,
        window: 2,
    };
    let set = referdino::pipeline::session::EngineSet::build(
        BackendKind::Auto,
        Some(1),
        &ck,
        &cfg,
        &geo,
        &Default::default(),
    )
    .unwrap();
    assert!(set
        .frame
        .inputs()
        .iter()
        .any(|s| s.shape == [1, 3, 70, 118]));
    assert!(!ort_available());
    eprintln!("fallback child ran");
}

const SPIN_CHILD: &str = "REFERDINO_ORT_SPIN_CHILD";

/// `REFERDINO_ORT_SPIN=0` (intra-op workers that sleep instead of spinning) loads and runs the tiny
/// fixture within the parity tolerance; checked in a child process, since the variable is read when
/// each engine loads and other tests of this process load engines meanwhile.
#[test]
fn workers_that_never_spin_run_the_fixture() {
    if !have_ort("workers_that_never_spin_run_the_fixture") {
        return;
    }
    let name = format!(
        "{}::spin_child",
        module_path!().split_once("::").map_or("", |(_, m)| m)
    );
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            name.trim_start_matches("::"),
            "--nocapture",
            "--test-threads=1",
        ])
        .env(SPIN_CHILD, "1")
        .env(referdino::backend::ort::SPIN_ENV, "0")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "child failed:\n{text}");
    assert!(
        text.contains("spin child ran"),
        "child did not run:\n{text}"
    );
}

/// Runs only inside [`workers_that_never_spin_run_the_fixture`]'s child process.
#[test]
fn spin_child() {
    if std::env::var_os(SPIN_CHILD).is_none() {
        return;
    }
    let (rows, _) = parity_on(&args(), BackendKind::Ort, Some(2)).unwrap();
    let bad: Vec<_> = rows.iter().filter(|r| !r.ok).map(|r| &r.key).collect();
    assert!(rows.len() >= 113 && bad.is_empty(), "{bad:?}");
    eprintln!("spin child ran");
}
