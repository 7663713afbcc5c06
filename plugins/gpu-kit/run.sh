#!/usr/bin/env bash
# The GPU check kit: runs the prebuilt GPU test binaries (plugins/gpu-kit/build.sh) on an NVIDIA GPU
# machine without a Rust toolchain and writes one JSON report ($OUT/gpu-report.json, or ./gpu-report.json).
# Without a GPU it says so and exits 2, running nothing.
set -uo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
kit="$root/plugins/gpu-kit/bin"
out="${OUT:-$root}"
report="$out/gpu-report.json"
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu-kit: no NVIDIA GPU here (nvidia-smi absent or failing): nothing run" >&2
    exit 2
fi
[ -d "$kit" ] || { echo "gpu-kit: $kit missing: run plugins/gpu-kit/build.sh and carry it" >&2; exit 3; }
# The binaries read the fixtures through the absolute path they were built at.
want="$(cat "$kit/MANIFEST_DIR")"
if [ ! -d "$want" ]; then
    mkdir -p "$(dirname "$(dirname "$want")")"
    ln -sfn "$root" "$(dirname "$want")"
fi
# NVRTC and libcuda: the CUDA toolkit, then any pip-installed NVIDIA/PyTorch libraries.
libs="/usr/local/cuda/lib64:/usr/local/cuda/targets/x86_64-linux/lib"
for d in $(python3 - <<'PY' 2>/dev/null
import glob, os, site
roots = site.getsitepackages()
for r in roots:
    for p in glob.glob(os.path.join(r, "nvidia", "*", "lib")) + glob.glob(os.path.join(r, "torch", "lib")):
        print(p)
PY
); do libs="$libs:$d"; done
export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
inc=""
for c in /usr/local/cuda/include /usr/local/cuda/targets/x86_64-linux/include; do
    [ -f "$c/cuda_fp16.h" ] && inc="${inc:+$inc:}$c"
done
export REFERDINO_CUDA_INCLUDE="$inc"
export REFERDINO_REQUIRE_GPU=1 REFERDINO_REQUIRE_NVRTC=1
gpu="$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1)"
echo "gpu-kit: $gpu; NVRTC from LD_LIBRARY_PATH; headers $inc"
results=()
for b in "$kit"/*; do
    [ -x "$b" ] && [ -f "$b" ] || continue
    name="$(basename "$b")"
    log="$out/$name.log"
    start=$(date +%s.%N)
    timeout 240 "$b" --nocapture --test-threads=1 >"$log" 2>&1
    rc=$?
    secs=$(python3 -c "import time; print(round(time.time()-$start,2))")
    summary="$(grep -E '^test result' "$log" | tail -1)"
    echo "gpu-kit: $name rc=$rc $summary ($secs s)"
    results+=("$(python3 -c 'import json,sys; print(json.dumps({"binary":sys.argv[1],"rc":int(sys.argv[2]),"summary":sys.argv[3],"seconds":float(sys.argv[4]),"failed":[l[5:].split(" ...")[0] for l in open(sys.argv[5], errors="replace") if l.startswith("test ") and l.rstrip().endswith("FAILED")]}))' "$name" "$rc" "$summary" "$secs" "$log")")
done
python3 - "$report" "$gpu" "$(cat "$kit/COMMIT")" "${results[@]}" <<'PY'
import json, sys
path, gpu, commit, *rs = sys.argv[1:]
runs = [json.loads(r) for r in rs]
json.dump({"gpu": gpu, "commit": commit, "runs": runs, "ok": all(r["rc"] == 0 for r in runs) and bool(runs)},
          open(path, "w"), indent=1)
print(open(path).read())
PY
