//! Build script. Does nothing unless the `tensorrt` feature is on; then it compiles the TensorRT C++ shim
//! (`src/backend/tensorrt/shim/`) with `cc` when TensorRT and CUDA headers and the TensorRT libraries are
//! found, and sets `cfg(referdino_trt_shim)`. Without them it prints a warning and the backend reports
//! "built without the TensorRT shim" at runtime.
//!
//! Search order (first hit wins): `TENSORRT_INCLUDE_DIR`, `TENSORRT_LIB_DIR`, `CUDA_INCLUDE_DIR`, then the
//! JetPack / Debian-package locations. `REFERDINO_TRT_SHIM=off` skips the shim on purpose;
//! `REFERDINO_TRT_SHIM=compile-only` compiles it against headers without linking TensorRT (CI `cargo check`).

fn main() {
    // Without this line cargo re-runs the script (and rebuilds the crate) whenever any file of the
    // package changes, README included.
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rustc-check-cfg=cfg(referdino_trt_shim)");
    #[cfg(feature = "tensorrt")]
    tensorrt::build_shim();
}

#[cfg(feature = "tensorrt")]
mod tensorrt {
    use std::env;
    use std::path::{Path, PathBuf};

    fn find(var: &str, defaults: &[&str], file: &str) -> Option<PathBuf> {
        println!("cargo:rerun-if-env-changed={var}");
        let mut dirs: Vec<PathBuf> = env::var_os(var)
            .map(|v| env::split_paths(&v).collect())
            .unwrap_or_default();
        dirs.extend(defaults.iter().map(PathBuf::from));
        dirs.into_iter().find(|d| d.join(file).exists())
    }

    pub fn build_shim() {
        println!("cargo:rerun-if-changed=src/backend/tensorrt/shim/referdino_trt.cpp");
        println!("cargo:rerun-if-changed=src/backend/tensorrt/shim/referdino_trt.h");
        println!("cargo:rerun-if-env-changed=REFERDINO_TRT_SHIM");
        let mode = env::var("REFERDINO_TRT_SHIM").unwrap_or_default();
        if mode == "off" {
            println!("cargo:warning=REFERDINO_TRT_SHIM=off: building the tensorrt feature without the TensorRT shim");
            return;
        }
        let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
        let multiarch = format!("/usr/include/{arch}-linux-gnu");
        let libarch = format!("/usr/lib/{arch}-linux-gnu");
        let trt_inc = find(
            "TENSORRT_INCLUDE_DIR",
            &[
                &multiarch,
                "/usr/include",
                "/usr/local/tensorrt/include",
                "/opt/tensorrt/include",
            ],
            "NvInfer.h",
        );
        let cuda_inc = find(
            "CUDA_INCLUDE_DIR",
            &["/usr/local/cuda/include", "/usr/include"],
            "cuda_runtime_api.h",
        );
        let trt_lib = find(
            "TENSORRT_LIB_DIR",
            &[
                &libarch,
                "/usr/lib",
                "/usr/local/tensorrt/lib",
                "/opt/tensorrt/lib",
            ],
            "libnvinfer.so",
        );
        // `compile-only` (CI): compile the shim against headers without TensorRT libraries; enough for
        // `cargo check`, not for linking a binary.
        let compile_only = mode == "compile-only";
        let trt_lib = if compile_only {
            Some(PathBuf::new())
        } else {
            trt_lib
        };
        let (trt_inc, cuda_inc, trt_lib) = match (trt_inc, cuda_inc, trt_lib) {
            (Some(a), Some(b), Some(c)) => (a, b, c),
            (a, b, c) => {
                let missing: Vec<&str> = [
                    (
                        a.is_none(),
                        "TensorRT headers (NvInfer.h; set TENSORRT_INCLUDE_DIR)",
                    ),
                    (
                        b.is_none(),
                        "CUDA headers (cuda_runtime_api.h; set CUDA_INCLUDE_DIR)",
                    ),
                    (
                        c.is_none(),
                        "TensorRT libraries (libnvinfer.so; set TENSORRT_LIB_DIR)",
                    ),
                ]
                .iter()
                .filter(|(m, _)| *m)
                .map(|(_, s)| *s)
                .collect();
                println!(
                    "cargo:warning=feature tensorrt: TensorRT shim NOT compiled, missing {}. \
                     The TensorRT backend will return an error at runtime.",
                    missing.join(", ")
                );
                return;
            }
        };
        let shim = Path::new("src/backend/tensorrt/shim");
        // Every folder of CUDA_INCLUDE_DIR, not only the one holding cuda_runtime_api.h: pip's CUDA
        // wheels split the headers (crt/host_defines.h lives in the nvcc wheel). Given to our shim only,
        // so that no global CXXFLAGS changes, and rebuilds, the other C/C++ crates.
        let extra: Vec<PathBuf> = env::var_os("CUDA_INCLUDE_DIR")
            .map(|v| {
                env::split_paths(&v)
                    .filter(|d| d.is_dir() && *d != cuda_inc)
                    .collect()
            })
            .unwrap_or_default();
        cc::Build::new()
            .cpp(true)
            .std("c++17")
            .file(shim.join("referdino_trt.cpp"))
            .include(shim)
            .include(&trt_inc)
            .include(&cuda_inc)
            .includes(&extra)
            .flag_if_supported("-Wno-deprecated-declarations")
            .compile("referdino_trt_shim");
        if compile_only {
            println!(
                "cargo:warning=REFERDINO_TRT_SHIM=compile-only: shim compiled, TensorRT not linked"
            );
        } else {
            println!("cargo:rustc-link-search=native={}", trt_lib.display());
            println!("cargo:rustc-link-lib=dylib=nvinfer");
            println!("cargo:rustc-link-lib=dylib=nvonnxparser");
            // The shim looks one TensorRT symbol up with dlsym: libdl is part of libc from glibc 2.34
            // (JetPack 6 has 2.35) and a separate library before it.
            println!("cargo:rustc-link-lib=dylib=dl");
        }
        println!("cargo:rustc-cfg=referdino_trt_shim");
    }
}
