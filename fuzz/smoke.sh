#!/usr/bin/env bash
# Short fixed-time run of every fuzz target (default 30 s each) from its seed corpus.
# Usage: fuzz/smoke.sh [seconds-per-target]. Exits non-zero on the first crash, panic, hang over
# 1 s or allocation over 1 GiB; the reproducer is left in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-30}"
targets=(pth pickle safetensors model_config engine_dir profiles command_line image_frame ring_reader source_spec mask_rle)
cargo fuzz build -s none -O --target-dir target
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "artifacts/$t"
  echo "== $t (${secs}s)"
  nice -n 19 cargo fuzz run -s none -O --target-dir target "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$secs" -rss_limit_mb=1024 -malloc_limit_mb=1024 -timeout=1 \
    -artifact_prefix="artifacts/$t/" -print_final_stats=1 2>&1 | \
    grep -E "stat::number_of_executed_units|Done|ERROR|panicked|SUMMARY" || true
  # A crash leaves a file in artifacts/<target>/ and makes libFuzzer exit non-zero.
  if compgen -G "artifacts/$t/*" > /dev/null; then
    echo "FAIL: $t left $(ls "artifacts/$t")"; exit 1
  fi
done
echo "smoke: all targets clean"
