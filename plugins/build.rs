//! Builds the TensorRT C++ shim (feature `tensorrt` only).
//!
//! Headers: `TENSORRT_INCLUDE_DIR`, else `$TENSORRT_ROOT/include`, else the JetPack / Debian-package
//! locations. CUDA runtime headers (`cuda_runtime_api.h`, included by TensorRT's headers):
//! `CUDA_INCLUDE_DIR`, `REFERDINO_CUDA_INCLUDE` (`:`-separated), `$CUDA_HOME/include`, `/usr/local/cuda/include`.
//! Nothing is linked from TensorRT or CUDA: the shim only uses TensorRT's interfaces (virtual calls) and
//! the kernels go through the CUDA driver API loaded at run time by cudarc.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    #[cfg(feature = "tensorrt")]
    shim::build();
}

#[cfg(feature = "tensorrt")]
mod shim {
    use std::path::{Path, PathBuf};

    fn env_path(var: &str) -> Option<PathBuf> {
        println!("cargo:rerun-if-env-changed={var}");
        std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    }

    fn find_dir(candidates: Vec<PathBuf>, header: &str) -> Option<PathBuf> {
        candidates.into_iter().find(|d| d.join(header).is_file())
    }

    pub fn build() {
        let mut trt = Vec::new();
        trt.extend(env_path("TENSORRT_INCLUDE_DIR"));
        trt.extend(env_path("TENSORRT_ROOT").map(|r| r.join("include")));
        trt.extend(
            [
                "/usr/include/aarch64-linux-gnu",
                "/usr/include/x86_64-linux-gnu",
                "/usr/include",
                "/usr/local/tensorrt/include",
            ]
            .map(PathBuf::from),
        );
        let Some(trt_inc) = find_dir(trt, "NvInferRuntime.h") else {
            panic!(
                "feature `tensorrt`: NvInferRuntime.h not found. Set TENSORRT_INCLUDE_DIR (or TENSORRT_ROOT) to a \
                 TensorRT 10.3+ installation; on JetPack 6 the headers are in /usr/include/aarch64-linux-gnu."
            )
        };
        let mut cuda = Vec::new();
        cuda.extend(env_path("CUDA_INCLUDE_DIR"));
        // Every listed directory is also added to the include path: the PyPI wheels split the CUDA headers
        // (cuda_runtime_api.h in one, crt/host_defines.h in another).
        let extra: Vec<PathBuf> = std::env::var_os("REFERDINO_CUDA_INCLUDE")
            .map(|l| std::env::split_paths(&l).collect())
            .unwrap_or_default();
        cuda.extend(extra.iter().cloned());
        println!("cargo:rerun-if-env-changed=REFERDINO_CUDA_INCLUDE");
        cuda.extend(env_path("CUDA_HOME").map(|r| r.join("include")));
        cuda.push(PathBuf::from("/usr/local/cuda/include"));
        let Some(cuda_inc) = find_dir(cuda, "cuda_runtime_api.h") else {
            panic!(
                "feature `tensorrt`: cuda_runtime_api.h not found. Set CUDA_INCLUDE_DIR (or CUDA_HOME) to the CUDA \
                 toolkit's include directory (JetPack: /usr/local/cuda/include)."
            )
        };
        let shim_dir = Path::new("shim");
        for f in ["plugin_shim.cpp", "rdp_ffi.h"] {
            println!("cargo:rerun-if-changed={}", shim_dir.join(f).display());
        }
        cc::Build::new()
            .cpp(true)
            .std("c++17")
            .file(shim_dir.join("plugin_shim.cpp"))
            .include(shim_dir)
            .include(&trt_inc)
            .include(&cuda_inc)
            .includes(&extra)
            .warnings(true)
            .extra_warnings(true)
            .flag_if_supported("-Wno-unused-parameter")
            .flag_if_supported("-Wno-deprecated-declarations")
            .compile("referdino_plugin_shim");
    }
}
