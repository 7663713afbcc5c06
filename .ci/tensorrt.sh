#!/usr/bin/env bash
# Compile-check of the TensorRT backend without TensorRT or a GPU (CRATES.md §4):
#  1. TensorRT 11.4 headers from the crates.io crate trtx-sys (fetched through a throwaway manifest, located
#     with `cargo metadata`; never built, never committed);
#  2. CUDA 12.6 runtime headers from the PyPI wheels nvidia-cuda-runtime-cu12 (+ nvidia-cuda-nvcc-cu12 for
#     crt/host_defines.h);
#  3. g++ -std=c++17 -fsyntax-only -Werror on the shim; then a real object compile of it through build.rs
#     (REFERDINO_TRT_SHIM=compile-only) with a type check of `--features tensorrt` (.ci/typecheck: clippy,
#     no code generation), which also checks the Rust side against the real extern block; then the same
#     with no headers (the "built without the TensorRT shim" path).
# Self-contained: shares nothing with the plugins script. Caches under .whl/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
CACHE="$ROOT/.whl/tensorrt-ci"
mkdir -p "$CACHE"

# 1. TensorRT headers.
TRTX_VERSION="0.9.1"
HELPER="$CACHE/trtx-fetch"
mkdir -p "$HELPER/src"
cat > "$HELPER/Cargo.toml" <<TOML
[package]
name = "trtx-header-fetch"
version = "0.0.0"
edition = "2021"
publish = false
[dependencies]
trtx-sys = "=$TRTX_VERSION"
[workspace]
TOML
: > "$HELPER/src/lib.rs"
cargo fetch --quiet --manifest-path "$HELPER/Cargo.toml"
TRTX_MANIFEST="$(cargo metadata --format-version 1 --manifest-path "$HELPER/Cargo.toml" |
  python3 -c 'import json,sys; m=json.load(sys.stdin); print(next(p["manifest_path"] for p in m["packages"] if p["name"]=="trtx-sys"))')"
TRT_INC="$(dirname "$TRTX_MANIFEST")/TensorRT-Headers/TRT-Enterprise-11.4"
test -f "$TRT_INC/NvInfer.h" || { echo "NvInfer.h not found under $TRT_INC" >&2; exit 1; }
echo "TensorRT headers: $TRT_INC ($(grep -m1 'define TRT_MAJOR_ENTERPRISE' "$TRT_INC/NvInferVersion.h"))"

# 2. CUDA runtime headers.
CUDA_DIR="$CACHE/cuda-12.6"
if [ ! -f "$CUDA_DIR/nvidia/cuda_runtime/include/cuda_runtime_api.h" ] || [ ! -f "$CUDA_DIR/nvidia/cuda_nvcc/include/crt/host_defines.h" ]; then
  python3 -m pip download --quiet --disable-pip-version-check --no-deps -d "$CACHE/wheels" \
    'nvidia-cuda-runtime-cu12==12.6.*' 'nvidia-cuda-nvcc-cu12==12.6.*'
  mkdir -p "$CUDA_DIR"
  python3 - "$CACHE/wheels" "$CUDA_DIR" <<'PY'
import glob, sys, zipfile
src, dst = sys.argv[1], sys.argv[2]
for whl in glob.glob(src + "/nvidia_cuda_runtime_cu12-12.6*.whl") + glob.glob(src + "/nvidia_cuda_nvcc_cu12-12.6*.whl"):
    with zipfile.ZipFile(whl) as z:
        for n in z.namelist():
            if "/include/" in n:
                z.extract(n, dst)
PY
fi
CUDA_INC="$CUDA_DIR/nvidia/cuda_runtime/include"
CRT_INC="$CUDA_DIR/nvidia/cuda_nvcc/include"

# 3a. Syntax check of the shim, warnings are errors (TensorRT's own headers are system headers).
SHIM="src/backend/tensorrt/shim/referdino_trt.cpp"
g++ -std=c++17 -fsyntax-only -Wall -Wextra -Werror \
  -isystem "$TRT_INC" -isystem "$CUDA_INC" -isystem "$CRT_INC" -Isrc/backend/tensorrt/shim "$SHIM"
echo "shim: g++ -std=c++17 -fsyntax-only OK against TensorRT 11.4 + CUDA 12.6 headers"

# 3b. Real compile through build.rs + Rust type-check against the real extern block.
# (No CXXFLAGS: it would reach every C/C++ crate and rebuild openh264 here and again in later steps;
# build.rs hands every CUDA_INCLUDE_DIR folder to the shim alone.)
# `cargo build` under .ci/typecheck instead of `cargo check`: the same type check (and clippy's lints,
# warnings are errors) on the test build's dependencies, where `cargo check` would check them all again.
export RUSTC_WORKSPACE_WRAPPER="$ROOT/.ci/typecheck"
export CLIPPY_ARGS="${CLIPPY_ARGS:--D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__}"
TENSORRT_INCLUDE_DIR="$TRT_INC" CUDA_INCLUDE_DIR="$CUDA_INC:$CRT_INC" REFERDINO_TRT_SHIM=compile-only \
  cargo build --quiet --features tensorrt --lib
echo "type check + lints with --features tensorrt (shim compiled, compile-only) OK"

# 3c. No headers: the feature must still build, with the shim left out.
env -u TENSORRT_INCLUDE_DIR -u CUDA_INCLUDE_DIR REFERDINO_TRT_SHIM= cargo build --quiet --features tensorrt --lib
echo "type check + lints with --features tensorrt (no TensorRT) OK"
