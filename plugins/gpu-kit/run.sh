#!/usr/bin/env bash
# The GPU check kit, run on an NVIDIA GPU machine that has no Rust toolchain (see plugins/README.md):
#   1. our CUDA kernels against the official fixtures and the CPU kernels (MSDeformAttn fp32/fp16,
#      QueryPrune, preprocessing from mapped memory, mask composition into a registered ring slot):
#      the prebuilt `gpu_kernels` test binary; then `gpu_device`: the device-resident session against the
#      host session on copy engines (no TensorRT needed), masks and tracks identical;
#   2. the official GroundingDINO MSDeformAttn CUDA extension (plugins/gpu-kit/official/, from
#      fetch_official.sh) built there with PyTorch, its output at the encoder shape checked against ours;
#   3. timings: our bench binary and the official op, one after the other, same shapes, same method;
#   4. one JSON report with the goals of issue #11 evaluated: $OUT/gpu-report.json (or ./gpu-report.json),
#      rewritten after each phase (report.py), so a step that hangs past the budget leaves the rest.
# Exit status 0 when every check passed, 1 otherwise (the report says which).
# Without a GPU it says so and exits 2, running nothing. Carry plugins/gpu-kit/bin and
# plugins/gpu-kit/official (both git-ignored) with the working tree.
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
kit="$root/plugins/gpu-kit"
out="${OUT:-$root}"
report="$out/gpu-report.json"
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu-kit: no NVIDIA GPU here (nvidia-smi absent or failing): nothing run" >&2
    exit 2
fi
[ -f "$kit/bin/COMMIT" ] || { echo "gpu-kit: $kit/bin missing: run plugins/gpu-kit/build.sh here and carry it" >&2; exit 3; }
t0=$(date +%s)
# One device call is limited (~540 s): every step runs under what is left of this budget, and the
# report is rewritten after each phase, so a hang or a kill still leaves the results so far.
deadline=$((t0 + ${GPU_KIT_BUDGET:-460}))
work=/tmp/gpu-kit
rm -rf "$work"; mkdir -p "$work"
# step CAP CMD...: runs CMD under min(CAP, time left) seconds (SIGKILL 5 s after SIGTERM); 124 when it
# ran out, 125 when too little time was left to start it.
step() {
    local cap=$1 left=$((deadline - $(date +%s)))
    shift
    if [ "$left" -lt 20 ]; then echo "gpu-kit: skipped, ${left} s left: $*" >&2; return 125; fi
    [ "$cap" -gt "$left" ] && cap=$left
    timeout -k 5 "$cap" "$@"
}
for z in "$kit"/bin/*.xz; do
    b="$work/$(basename "$z" .xz)"
    { python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$z" "$b" 2>/dev/null \
        || xz -dc "$z" > "$b"; } && chmod +x "$b"
done
# Whether the binaries were built from this tree (build.sh hashes the files the build reads).
stale="unknown"
if [ -f "$kit/bin/FILES" ] && [ -f "$kit/bin/TREE" ]; then
    if [ "$(cd "$root" && xargs -a "$kit/bin/FILES" -d '\n' sha256sum 2>/dev/null | sha256sum | cut -d' ' -f1)" = "$(cat "$kit/bin/TREE")" ]; then
        stale="no"
    else
        stale="yes"
        echo "gpu-kit: WARNING: the binaries were built from another tree than this one (rebuild with build.sh)" >&2
    fi
fi
# The binaries read the fixtures through the absolute path they were built at.
want="$(cat "$kit/bin/MANIFEST_DIR")"
if [ ! -d "$want" ]; then
    mkdir -p "$(dirname "$(dirname "$want")")"
    ln -sfn "$root" "$(dirname "$want")"
fi

# NVRTC: the toolkit's, else PyTorch's pip packages'. cudarc (built for CUDA 12) asks for libnvrtc.so,
# libnvrtc.so.12, .11 ...: a CUDA 13 machine has libnvrtc.so.13, so a private folder offers it under the
# unversioned name (NVRTC finds its builtins library next to the real file, whose folder is on the path).
libs=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib $(python3 - <<'PY' 2>/dev/null
import glob, os, site
for r in site.getsitepackages():
    for p in glob.glob(os.path.join(r, "nvidia", "*", "lib")) + glob.glob(os.path.join(r, "nvidia", "cu*", "lib")) + glob.glob(os.path.join(r, "torch", "lib")):
        print(p)
PY
); do [ -d "$d" ] && libs="${libs:+$libs:}$d"; done
nvrtc="$(for d in ${libs//:/ }; do for f in "$d"/libnvrtc.so.[0-9]*; do [ -e "$f" ] && echo "$(basename "$f") $f"; done; done |
    grep -v builtins | sort -V | tail -1 | cut -d' ' -f2-)"
if [ -n "$nvrtc" ]; then
    mkdir -p "$work/nvrtc"
    ln -sfn "$nvrtc" "$work/nvrtc/libnvrtc.so"
    libs="$work/nvrtc:$(dirname "$nvrtc"):$libs"
fi
# Only for our binaries: PyTorch must keep loading its own CUDA libraries (its RUNPATH), not these.
rust_libs="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
inc=""
for c in /usr/local/cuda/include /usr/local/cuda/targets/x86_64-linux/include $(python3 -c 'import glob,site; [print(p) for r in site.getsitepackages() for p in glob.glob(r+"/nvidia/*/include")]' 2>/dev/null); do
    [ -f "$c/cuda_fp16.h" ] && inc="${inc:+$inc:}$c"
done
export REFERDINO_CUDA_INCLUDE="$inc"
export REFERDINO_REQUIRE_GPU=1 REFERDINO_REQUIRE_NVRTC=1
gpu="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1)"
host="$(uname -srm)"
echo "gpu-kit: $gpu; $host; NVRTC $nvrtc; headers $inc; binaries stale: $stale"
tests_rc=125 device_rc=125 bench_rc=125 official_rc=3 cross_rc=3
: > "$out/gpu_kernels.log"; : > "$out/gpu_device.log"; : > "$work/cross.log"
report() {
    python3 "$kit/report.py" "$report" "$gpu" "$(cat "$kit/bin/COMMIT")" "$stale" "$host" "$nvrtc" \
        "$tests_rc" "$device_rc" "$bench_rc" "$official_rc" "$cross_rc" "$out/gpu_kernels.log" \
        "$out/gpu_device.log" "$work/bench.json" "$work/official.json" "$work/official-build.json" \
        "$work/cross.log" "$(( $(date +%s) - t0 ))"
}
report > /dev/null

# 1. The official extension compiles on the CPUs while our correctness tests use the GPU.
official="$kit/official"
if [ -d "$official" ]; then
    ( cd "$work" && TORCH_CUDA_ARCH_LIST="$(python3 -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())' 2>/dev/null || echo 9.0)" \
        MAX_JOBS="$(nproc)" step 240 python3 "$kit/official_msda.py" --src "$official" \
        --json "$work/official-build.json" --build-only ) > "$out/official.log" 2>&1 &
    build_pid=$!
else
    echo "gpu-kit: $official missing (run fetch_official.sh before carrying): no official comparison" | tee "$out/official.log"
    build_pid=""
fi
# --show-output: every test's own lines (max |diff|, SKIPPED, identical) in the log, the
# `test NAME ... ok` lines intact.
LD_LIBRARY_PATH="$rust_libs" step 150 "$work/gpu_kernels" --test-threads=1 --show-output > "$out/gpu_kernels.log" 2>&1
tests_rc=$?
echo "gpu-kit: gpu_kernels rc=$tests_rc $(grep -E '^test result' "$out/gpu_kernels.log" | tail -1) ($(( $(date +%s) - t0 )) s)"
report > /dev/null
LD_LIBRARY_PATH="$rust_libs" step 60 "$work/gpu_device" --test-threads=1 --show-output > "$out/gpu_device.log" 2>&1
device_rc=$?
echo "gpu-kit: gpu_device rc=$device_rc $(grep -E '^test result' "$out/gpu_device.log" | tail -1) ($(( $(date +%s) - t0 )) s)"
report > /dev/null
[ -n "$build_pid" ] && wait "$build_pid"

# 2 + 3. Timings, one at a time on an otherwise idle GPU; then the official output against ours.
REFERDINO_BENCH_JSON="$work/bench.json" LD_LIBRARY_PATH="$rust_libs" step 120 "$work/cuda_kernels" > "$out/bench.log" 2>&1
bench_rc=$?
echo "gpu-kit: bench rc=$bench_rc ($(( $(date +%s) - t0 )) s)"
report > /dev/null
if [ -d "$official" ] && grep -q '"ok": true' "$work/official-build.json" 2>/dev/null; then
    ( cd "$work" && TORCH_CUDA_ARCH_LIST="$(python3 -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')" \
        step 150 python3 "$kit/official_msda.py" --src "$official" --json "$work/official.json" \
        --dump "$work/official-encoder.safetensors" ) >> "$out/official.log" 2>&1
    official_rc=$?
    REFERDINO_OFFICIAL_MSDA="$work/official-encoder.safetensors" LD_LIBRARY_PATH="$rust_libs" step 45 "$work/gpu_kernels" \
        msda_matches_the_official_cuda_kernel --exact --show-output > "$work/cross.log" 2>&1
    cross_rc=$?
    cp "$work/cross.log" "$out/cross.log"
fi
echo "gpu-kit: official rc=$official_rc, cross-check rc=$cross_rc ($(( $(date +%s) - t0 )) s)"

report
ok=$(python3 -c 'import json,sys; print(int(json.load(open(sys.argv[1]))["ok"]))' "$report" 2>/dev/null || echo 0)
echo "gpu-kit: report $report ($(( $(date +%s) - t0 )) s)"
[ "$ok" = 1 ]
