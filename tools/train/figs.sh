#!/usr/bin/env bash
# The figures of a trained checkpoint, as tests/fixtures/referdino-synth/README.md reports them:
# J&F on `valid` and `heldout` (offline), `heldout` streaming at W = 36, 8, 2, the demo's two prompts,
# and FP16 / INT8 agreement with FP32 on held-out frames (INT8 table calibrated on training clips).
#
# Usage (from anywhere): tools/train/figs.sh CKPT_DIR DATA OUT
#   CKPT_DIR holds checkpoint.pth + config.json; DATA is the `referdino synth` root with the `valid`,
#   `heldout` and `train` splits; OUT receives eval reports, the demo and calibration files.
#   REFERDINO (default target/release/referdino), THREADS (default 2) and SHORT_SIDE (the model's
#   training scale: the shorter side of the clips it was trained on, default 96 for 160x96) may be set.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
[ $# -eq 3 ] || { sed -n '6,9p' "$0"; exit 2; }
C=$(realpath "$1"); D=$(realpath "$2"); mkdir -p "$3"; O=$(realpath "$3")
B=$(realpath "${REFERDINO:-$root/target/release/referdino}")
T=${THREADS:-2}
S=${SHORT_SIDE:-96}
ev() { # split mode window
  local extra=()
  [ "$2" = streaming ] && extra=(--mode streaming --window "$3")
  "$B" eval --dataset ref-youtube-vos --root "$D" --split "$1" --weights "$C/checkpoint.pth" \
    --short-side "$S" --backend cpu --threads "$T" "${extra[@]}" --out "$O/eval-$1-$2$3" >/dev/null 2>&1
  python3 -c "import json,sys; r=json.load(open(sys.argv[1]))['overall']; print('%s J&F %.3f J %.3f F %.3f' % (sys.argv[2], r['JF_mean'], r['J_mean'], r['F_mean']))" \
    "$O/eval-$1-$2$3/report.json" "$1 $2$3"
}
ev valid offline ""
ev heldout offline ""
for w in 36 8 2; do ev heldout streaming $w; done
"$B" demo --weights "$C/checkpoint.pth" --short-side "$S" --threads "$T" --backend cpu --out "$O/demo" 2>&1 | grep "^frames"
"$B" demo --weights "$C/checkpoint.pth" --short-side "$S" --threads "$T" --backend cpu --together --out "$O/demo-together" 2>&1 | grep "^object"
for r in train heldout; do
  sed -e "s|@DATA@|$D|g" -e "s|@OUT@|$O|g" -e "s|@HEIGHT@|$S|g" -e "s|@WIDTH@|$((S * 5 / 3))|g" "$root/tools/train/recipes/$r.toml" > "$O/recipe-$r.toml"
done
(cd "$root" && "$B" calibrate --weights "$C/checkpoint.pth" --recipe "$O/recipe-train.toml" --out "$O/synth.scales.json" >"$O/calib.log" 2>&1)
tail -2 "$O/calib.log"
(cd "$root" && "$B" calibrate --weights "$C/checkpoint.pth" --recipe "$O/recipe-heldout.toml" --scales "$O/synth.scales.json" \
  --report "$O/agreement-heldout.json" >"$O/agree.log" 2>&1)
grep -A8 "agreement" "$O/agree.log" | head -12
