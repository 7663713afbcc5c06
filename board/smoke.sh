#!/usr/bin/env bash
# One report of what this board does: `referdino doctor` (GPU, NVRTC, TensorRT, the plans against this
# TensorRT/GPU, the camera), then `referdino run` on the camera for N processed frames with the plans,
# its summary as JSON (fps, per-stage latency p50/p95/max, drops, the camera's health), both in one
# file with the power mode. The figures to quote for "how many FPS at what latency on this board".
#
#   board/smoke.sh --engines DIR [--source SRC] [--frames N] [--prompt TEXT] [--out FILE] [-- RUN ARGS...]
#
# Defaults: --source /dev/video0, --frames 300, --prompt "the person", --out smoke-<host>-<time>.json.
# Arguments after `--` go to `referdino run` as they are (e.g. `--max-objects 2 --cross-batch 2`);
# without --engines it runs what `run` does without them (start-up export on the CPU). The binary is
# $REFERDINO (default: referdino on PATH). Exit status: run's.
set -uo pipefail
bin="${REFERDINO:-referdino}"
source=/dev/video0 frames=300 prompt="the person" engines="" out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --engines) engines="$2"; shift 2 ;;
        --source) source="$2"; shift 2 ;;
        --frames) frames="$2"; shift 2 ;;
        --prompt) prompt="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --) shift; break ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "smoke: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
out="${out:-smoke-$(hostname)-$(date +%Y%m%d-%H%M%S).json}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

engine_args=()
[ -n "$engines" ] && engine_args=(--engines "$engines" --backend tensorrt)
doctor_args=(--json --source "$source")
[ -n "$engines" ] && doctor_args+=(--engines "$engines")
"$bin" doctor "${doctor_args[@]}" > "$tmp/doctor.json"
echo "smoke: doctor exit $? ($(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["path"])' "$tmp/doctor.json" 2>/dev/null))"

"$bin" run --source "$source" --prompt "$prompt" --max-frames "$frames" --no-stdin --quiet \
    --summary-json "$tmp/summary.json" "${engine_args[@]}" "$@" 2> "$tmp/run.log"
rc=$?
tail -n 12 "$tmp/run.log" >&2

power="$(nvpmodel -q 2>/dev/null | tr '\n' ' ')"
python3 - "$out" "$tmp/doctor.json" "$tmp/summary.json" "$rc" "$power" "$tmp/run.log" <<'PY'
import json, sys
out, doctor, summary, rc, power, log = sys.argv[1:]
def load(p):
    try:
        return json.load(open(p))
    except Exception:
        return None
rep = {"doctor": load(doctor), "run": load(summary), "run_exit": int(rc), "power_mode": power.strip(),
       "run_log_tail": open(log, errors="replace").read().splitlines()[-12:]}
json.dump(rep, open(out, "w"), indent=1)
r = rep["run"] or {}
lat = (r.get("latency") or {}).get("total") or {}
print(f"smoke: {out}: {r.get('frames_processed', 0)} frames, {r.get('fps', 0):.2f} fps, "
      f"total latency p50 {lat.get('p50_ms', 0):.1f} ms, p95 {lat.get('p95_ms', 0):.1f} ms, "
      f"{r.get('frames_dropped', 0)} dropped")
PY
exit "$rc"
