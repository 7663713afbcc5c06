#!/usr/bin/env bash
# CI for plugins/ (no GPU, no TensorRT needed): installs CUDA 12.6 NVRTC/ptxas/headers from PyPI and
# TensorRT 11.4 headers from the trtx-sys crate, then
#   1. cargo test -p referdino-plugins --features cuda   (NVRTC compile of every kernel for sm_87/sm_90 +
#      ptxas -v, plugin logic unit tests; GPU tests print SKIPPED without a GPU),
#   2. g++ -fsyntax-only of every shim file against the real TensorRT headers,
#   3. cargo test --no-run -p referdino-plugins --features tensorrt (shim compiled + cdylib linked), a check that
#      the library exports getCreators / setLoggerFinder,
#   4. a C++ program that dlopens the library like TensorRT and drives both plugins through IPluginV3.
# Nothing downloaded here is committed: everything lives under $REFERDINO_CI_CACHE.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never

CACHE="${REFERDINO_CI_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/referdino-ci}"
CUDA_DIR="$CACHE/cuda-12.6"
mkdir -p "$CACHE/wheels"
t0=$(date +%s)

# --- CUDA 12.6 (JetPack 6's minor) from PyPI: libnvrtc, cuda_fp16.h & co, ptxas -----------------------
if [ ! -f "$CUDA_DIR/.complete" ]; then
    python3 -m pip download --quiet --disable-pip-version-check --no-deps -d "$CACHE/wheels" \
        "nvidia-cuda-nvrtc-cu12==12.6.*" "nvidia-cuda-runtime-cu12==12.6.*" "nvidia-cuda-nvcc-cu12==12.6.*"
    rm -rf "$CUDA_DIR"
    mkdir -p "$CUDA_DIR"
    for pkg in nvrtc runtime nvcc; do
        wheel=$(ls "$CACHE"/wheels/nvidia_cuda_${pkg}_cu12-12.6.*.whl | sort -V | tail -n 1)
        python3 -m zipfile -e "$wheel" "$CUDA_DIR"
    done
    chmod +x "$CUDA_DIR"/nvidia/cuda_nvcc/bin/*  # zipfile drops the exec bit
    touch "$CUDA_DIR/.complete"
fi
NV="$CUDA_DIR/nvidia"
export LD_LIBRARY_PATH="$NV/cuda_nvrtc/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# NVRTC does not bundle cuda_fp16.h: hand it the runtime wheel's headers.
export REFERDINO_CUDA_INCLUDE="$NV/cuda_runtime/include"
export REFERDINO_PTXAS="$NV/cuda_nvcc/bin/ptxas"
export REFERDINO_REQUIRE_NVRTC=1

# --- TensorRT 11.4 headers (Apache-2.0) vendored by the trtx-sys crate: fetched, never built ------------
HELPER="$CACHE/trt-headers"
mkdir -p "$HELPER"
cat > "$HELPER/Cargo.toml" <<'TOML'
[package]
name = "referdino-trt-headers"
version = "0.0.0"
edition = "2021"
publish = false
[lib]
path = "lib.rs"
[dependencies]
trtx-sys = "=0.9.1"
[workspace]
TOML
touch "$HELPER/lib.rs"
cargo fetch --quiet --manifest-path "$HELPER/Cargo.toml"
TRTX_MANIFEST=$(cargo metadata --quiet --format-version 1 --manifest-path "$HELPER/Cargo.toml" |
    python3 -c 'import json,sys; print(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"]=="trtx-sys"))')
TRT_INC="$(dirname "$TRTX_MANIFEST")/TensorRT-Headers/TRT-Enterprise-11.4"
test -f "$TRT_INC/NvInferRuntime.h"
echo "plugins.sh: toolchains ready in $(( $(date +%s) - t0 )) s (NVRTC 12.6 from PyPI, TensorRT headers $TRT_INC)"

# --- 1. kernels: NVRTC compile + ptxas, unit tests, GPU tests (skip without GPU) -------------------------
cargo test -p referdino-plugins --features cuda

# --- 2. shim syntax/type check against the real TensorRT headers ----------------------------------------
for f in plugins/shim/*.cpp; do
    g++ -std=c++17 -fsyntax-only -Wall -Wextra -Werror -Iplugins/shim \
        -isystem "$TRT_INC" -isystem "$NV/cuda_runtime/include" -isystem "$NV/cuda_nvcc/include" "$f"
    echo "plugins.sh: $f compiles against TensorRT $(grep -m1 -o 'TRT_MAJOR_ENTERPRISE [0-9]*' "$TRT_INC/NvInferVersion.h" | awk '{print $2}').x headers"
done

# --- 3. full feature build (shim + Rust, linked) and the dynamic-loading exports -----------------------
# Through `cargo test --no-run`: the library is built (cdylib and rlib, into target/debug/deps/) for the
# crate's integration tests. `cargo build -p referdino-plugins` would resolve the dependencies' features
# without the dev-dependencies, unlike every other step, and rebuild ten of them (46 s of CI time).
TENSORRT_INCLUDE_DIR="$TRT_INC" REFERDINO_CUDA_INCLUDE="$NV/cuda_runtime/include:$NV/cuda_nvcc/include" \
    cargo test -p referdino-plugins --features tensorrt --no-run
SO="$(realpath "${CARGO_TARGET_DIR:-target}")/debug/deps/libreferdino_plugins.so"
for sym in getCreators setLoggerFinder referdino_plugins_register; do
    nm -D --defined-only "$SO" | grep -qw "$sym" || { echo "plugins.sh: $SO does not export $sym"; exit 1; }
done
echo "plugins.sh: $SO exports getCreators, setLoggerFinder, referdino_plugins_register"

# --- 4. drive both plugins through TensorRT's interfaces from C++ (dlopen + getCreators, no GPU) ---------
g++ -std=c++17 -O1 -Wall -Wextra -Werror -isystem "$TRT_INC" -isystem "$NV/cuda_runtime/include" \
    -isystem "$NV/cuda_nvcc/include" plugins/shim/smoke/loader_smoke.cpp -ldl -o "$CACHE/loader_smoke"
"$CACHE/loader_smoke" "$SO"
echo "plugins.sh: done in $(( $(date +%s) - t0 )) s"
