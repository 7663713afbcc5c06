//! Compiles the CUDA kernel sources of `plugins/kernels/` as C++ for the CPU, with `csrc/cuda_emu.h`
//! standing in for the CUDA language and `csrc/include/cuda_fp16.h` for CUDA's half type.

fn main() {
    // Fibers (ucontext) and guard pages (mmap): Unix only; elsewhere the crate is empty.
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_CFG_UNIX").is_none() {
        return;
    }
    let kernels = ["msdeform", "prune", "image"];
    for k in kernels {
        println!("cargo:rerun-if-changed=../kernels/{k}.cu");
        println!("cargo:rerun-if-changed=csrc/{k}.cpp");
    }
    for f in [
        "cuda_emu.h",
        "include/cuda_fp16.h",
        "runtime.cpp",
        "fp16.cpp",
    ] {
        println!("cargo:rerun-if-changed=csrc/{f}");
    }
    let mut b = cc::Build::new();
    b.cpp(true)
        .std("c++17")
        .opt_level(2)
        .include("csrc/include")
        .include("csrc")
        .flag("-include")
        .flag("cuda_emu.h")
        // a + b and a * b round once each, as on the GPU with the _rn intrinsics; no FMA contraction.
        .flag("-ffp-contract=off")
        // The kernels read vectors of halves through other types (uint2 -> __half2), as CUDA code does.
        .flag("-fno-strict-aliasing")
        .flag_if_supported("-Wno-unknown-pragmas")
        .flag_if_supported("-Wno-unused-parameter")
        .file("csrc/runtime.cpp")
        .file("csrc/fp16.cpp")
        .file("csrc/selftest.cpp");
    for k in kernels {
        b.file(format!("csrc/{k}.cpp"));
    }
    b.compile("referdino_kernel_emu");
}
