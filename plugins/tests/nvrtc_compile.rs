//! Compiles every kernel with NVRTC for the CI architectures (sm_87 Orin, sm_90 Hopper); no GPU needed.
//!
//! Skips (with the reason printed) when libnvrtc is absent, unless `REFERDINO_REQUIRE_NVRTC=1`, which
//! `.ci/plugins.sh` sets: then a missing NVRTC, a compile error or a ptxas failure fails the test.
//! `ptxas -v` runs when `REFERDINO_PTXAS` (or `ptxas` on PATH) exists and its register/spill report is printed.
#![cfg(feature = "cuda")]

use std::path::PathBuf;
use std::process::Command;

use referdino_plugins::kernels::{compile, include_paths, nvrtc_available, nvrtc_version};
use referdino_plugins::sources::{ALL, CI_ARCHES};

fn required() -> bool {
    std::env::var("REFERDINO_REQUIRE_NVRTC").is_ok_and(|v| v == "1")
}

fn ptxas() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("REFERDINO_PTXAS") {
        return Some(PathBuf::from(p));
    }
    Command::new("ptxas")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| PathBuf::from("ptxas"))
}

#[test]
fn every_kernel_compiles_for_ci_arches() {
    if !nvrtc_available() {
        assert!(
            !required(),
            "REFERDINO_REQUIRE_NVRTC=1 but NVRTC cannot be loaded (LD_LIBRARY_PATH?)"
        );
        eprintln!(
            "SKIPPED every_kernel_compiles_for_ci_arches: NVRTC not found (set LD_LIBRARY_PATH)"
        );
        return;
    }
    let (major, minor) = nvrtc_version().expect("nvrtcVersion");
    eprintln!("NVRTC {major}.{minor}");
    let inc = include_paths();
    assert!(
        !inc.is_empty() || !required(),
        "REFERDINO_CUDA_INCLUDE must name the CUDA headers (cuda_fp16.h) when REFERDINO_REQUIRE_NVRTC=1"
    );
    let ptxas = ptxas();
    if ptxas.is_none() {
        assert!(!required() || std::env::var_os("REFERDINO_PTXAS").is_none());
        eprintln!("note: ptxas not found, register/spill report skipped");
    }
    let dir = std::env::temp_dir().join(format!("referdino-nvrtc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for src in ALL {
        for arch in CI_ARCHES {
            let t0 = std::time::Instant::now();
            let out = compile(&src, arch, &inc).unwrap_or_else(|e| panic!("{e}"));
            eprintln!(
                "{} -> {arch}: ptx {} B, cubin {} B, {:.2?}",
                src.name,
                out.ptx.len(),
                out.cubin.len(),
                t0.elapsed()
            );
            if !out.log.trim().is_empty() {
                eprintln!("NVRTC log:\n{}", out.log);
            }
            assert!(
                out.ptx.contains(&format!(".target {arch}")),
                "PTX not for {arch}"
            );
            assert_eq!(&out.cubin[..4], b"\x7fELF", "cubin is not an ELF image");
            for e in src.entries {
                assert!(
                    out.ptx.contains(&format!(".entry {e}(")),
                    "{e} missing from {} PTX",
                    src.name
                );
            }
            if let Some(ptxas) = &ptxas {
                let ptx_path = dir.join(format!("{}.{arch}.ptx", src.name));
                std::fs::write(&ptx_path, &out.ptx).unwrap();
                let o = Command::new(ptxas)
                    .args([
                        format!("-arch={arch}"),
                        "-v".into(),
                        "-o".into(),
                        "/dev/null".into(),
                    ])
                    .arg(&ptx_path)
                    .output()
                    .expect("run ptxas");
                let report = format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
                assert!(
                    o.status.success(),
                    "ptxas failed for {} {arch}:\n{report}",
                    src.name
                );
                for line in report.lines().filter(|l| {
                    l.contains("entry function") || l.contains("registers") || l.contains("spill")
                }) {
                    eprintln!("  {}", line.trim_start_matches("ptxas info    : "));
                }
                let spills: u64 = report
                    .split(',')
                    .filter_map(|part| part.trim().strip_suffix("bytes spill stores"))
                    .filter_map(|n| n.trim().parse::<u64>().ok())
                    .sum();
                assert_eq!(
                    spills, 0,
                    "register spills in {} {arch}:\n{report}",
                    src.name
                );
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn compile_errors_are_reported_not_panicked() {
    if !nvrtc_available() {
        assert!(
            !required(),
            "REFERDINO_REQUIRE_NVRTC=1 but NVRTC cannot be loaded"
        );
        eprintln!("SKIPPED compile_errors_are_reported_not_panicked: NVRTC not found");
        return;
    }
    let bad = referdino_plugins::sources::KernelSource {
        name: "bad.cu",
        src: "extern \"C\" __global__ void k(float* x) { x[0] = undefined_symbol; }",
        entries: &["k"],
    };
    let e = compile(&bad, "sm_87", &[]).unwrap_err().to_string();
    assert!(
        e.contains("undefined_symbol") && e.contains("bad.cu"),
        "{e}"
    );
}
