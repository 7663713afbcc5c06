#!/usr/bin/env bash
# The GPU check kit, run on an NVIDIA GPU machine that has no Rust toolchain (see plugins/README.md):
#   1. our CUDA kernels against the official fixtures and the CPU kernels (MSDeformAttn fp32/fp16,
#      QueryPrune, preprocessing from mapped memory, mask composition into a registered ring slot):
#      the prebuilt `gpu_kernels` test binary;
#   2. the official GroundingDINO MSDeformAttn CUDA extension (plugins/gpu-kit/official/, from
#      fetch_official.sh) built there with PyTorch, its output at the encoder shape checked against ours;
#   3. timings: our bench binary and the official op, one after the other, same shapes, same method;
#   4. one JSON report with the goals of issue #11 evaluated: $OUT/gpu-report.json (or ./gpu-report.json).
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
work=/tmp/gpu-kit
rm -rf "$work"; mkdir -p "$work"
for z in "$kit"/bin/*.gz; do
    b="$work/$(basename "$z" .gz)"
    gunzip -c "$z" > "$b" && chmod +x "$b"
done
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
nvrtc="$(for d in ${libs//:/ }; do ls "$d"/libnvrtc.so.[0-9]* 2>/dev/null; done | grep -v builtins | sort -V | tail -1)"
if [ -n "$nvrtc" ]; then
    mkdir -p "$work/nvrtc"
    ln -sfn "$nvrtc" "$work/nvrtc/libnvrtc.so"
    libs="$work/nvrtc:$(dirname "$nvrtc"):$libs"
fi
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
inc=""
for c in /usr/local/cuda/include /usr/local/cuda/targets/x86_64-linux/include $(python3 -c 'import glob,site; [print(p) for r in site.getsitepackages() for p in glob.glob(r+"/nvidia/*/include")]' 2>/dev/null); do
    [ -f "$c/cuda_fp16.h" ] && inc="${inc:+$inc:}$c"
done
export REFERDINO_CUDA_INCLUDE="$inc"
export REFERDINO_REQUIRE_GPU=1 REFERDINO_REQUIRE_NVRTC=1
gpu="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1)"
echo "gpu-kit: $gpu; NVRTC $nvrtc; headers $inc"

# 1. The official extension compiles on the CPUs while our correctness tests use the GPU.
official="$kit/official"
if [ -d "$official" ]; then
    ( cd "$work" && TORCH_CUDA_ARCH_LIST="$(python3 -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())' 2>/dev/null || echo 9.0)" \
        MAX_JOBS="$(nproc)" timeout 300 python3 "$kit/official_msda.py" --src "$official" \
        --json "$work/official-build.json" --build-only ) > "$out/official.log" 2>&1 &
    build_pid=$!
else
    echo "gpu-kit: $official missing (run fetch_official.sh before carrying): no official comparison" | tee "$out/official.log"
    build_pid=""
fi
timeout 200 "$work/gpu_kernels" --test-threads=1 > "$out/gpu_kernels.log" 2>&1
tests_rc=$?
echo "gpu-kit: gpu_kernels rc=$tests_rc $(grep -E '^test result' "$out/gpu_kernels.log" | tail -1) ($(( $(date +%s) - t0 )) s)"
[ -n "$build_pid" ] && wait "$build_pid"

# 2 + 3. Timings, one at a time on an otherwise idle GPU; then the official output against ours.
REFERDINO_BENCH_JSON="$work/bench.json" timeout 200 "$work/cuda_kernels" > "$out/bench.log" 2>&1
bench_rc=$?
echo "gpu-kit: bench rc=$bench_rc ($(( $(date +%s) - t0 )) s)"
official_rc=3
if [ -d "$official" ] && grep -q '"ok": true' "$work/official-build.json" 2>/dev/null; then
    ( cd "$work" && TORCH_CUDA_ARCH_LIST="$(python3 -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')" \
        timeout 200 python3 "$kit/official_msda.py" --src "$official" --json "$work/official.json" \
        --dump "$work/official-encoder.safetensors" ) >> "$out/official.log" 2>&1
    official_rc=$?
    REFERDINO_OFFICIAL_MSDA="$work/official-encoder.safetensors" timeout 60 "$work/gpu_kernels" \
        msda_matches_the_official_cuda_kernel --exact --nocapture > "$work/cross.log" 2>&1
    cross_rc=$?
    cat "$work/cross.log" >> "$out/gpu_kernels.log"
else
    cross_rc=3
fi
echo "gpu-kit: official rc=$official_rc, cross-check rc=$cross_rc ($(( $(date +%s) - t0 )) s)"

python3 - "$report" "$gpu" "$(cat "$kit/bin/COMMIT")" "$nvrtc" "$tests_rc" "$bench_rc" "$official_rc" "$cross_rc" \
    "$out/gpu_kernels.log" "$work/bench.json" "$work/official.json" "$work/official-build.json" "$work/cross.log" <<'PY'
import json, sys
path, gpu, commit, nvrtc, trc, brc, orc, crc, tlog, bjson, ojson, objson, clog = sys.argv[1:]
def load(p):
    try:
        return json.load(open(p))
    except Exception:
        return None
lines = open(tlog, errors="replace").read().splitlines()
tests = {
    "rc": int(trc),
    "passed": [l[5:].split(" ...")[0] for l in lines if l.startswith("test ") and l.rstrip().endswith(" ok")],
    "failed": [l[5:].split(" ...")[0] for l in lines if l.startswith("test ") and l.rstrip().endswith("FAILED")],
    "skipped": [l for l in lines if l.startswith("SKIPPED")],
    "measured": [l for l in lines if "max |diff|" in l or "identical" in l],
}
cross = [l for l in open(clog, errors="replace").read().splitlines()] if int(crc) != 3 else []
bench, official = load(bjson), load(ojson) or load(objson)
goals = {}
if bench and official and official.get("cases"):
    enc = bench["msdeform"][0]
    off = official["cases"][0]
    ref = off.get("kernel_f32_us") or off["op_f32_us"]
    goals["msda_encoder_f32_speedup_vs_official_kernel"] = ref / enc["opt_f32_us"]
    goals["msda_encoder_f16_speedup_vs_official_kernel"] = ref / enc["opt_f16_us"]
    goals["msda_encoder_f32_speedup_vs_official_op"] = off["op_f32_us"] / enc["opt_f32_us"]
    goals["msda_f32_goal_1_5x_met"] = goals["msda_encoder_f32_speedup_vs_official_kernel"] >= 1.5
    goals["msda_f16_goal_2x_met"] = goals["msda_encoder_f16_speedup_vs_official_kernel"] >= 2.0
if bench:
    p900 = next((r for r in bench["query_prune"] if r["n"] == 900), None)
    if p900:
        best = min(p900["gpu_us"], p900.get("spread_us", p900["gpu_us"]))
        goals["query_prune_900_us_single_block"] = p900["gpu_us"]
        goals["query_prune_900_us_spread"] = p900.get("spread_us")
        goals["query_prune_goal_20us_met"] = best < 20.0
rep = {
    "gpu": gpu, "commit": commit, "nvrtc_library": nvrtc,
    "tests": tests, "official_cross_check": {"rc": int(crc), "log": cross[-6:]},
    "bench_rc": int(brc), "bench": bench, "official_rc": int(orc), "official": official, "goals": goals,
    "ok": int(trc) == 0 and int(brc) == 0 and int(crc) in (0,),
}
json.dump(rep, open(path, "w"), indent=1)
print(json.dumps({"ok": rep["ok"], "goals": goals, "failed": tests["failed"]}, indent=1))
PY
echo "gpu-kit: report $report ($(( $(date +%s) - t0 )) s)"
