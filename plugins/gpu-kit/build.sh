#!/usr/bin/env bash
# Builds, on a machine with a Rust toolchain (no GPU needed), what the GPU check kit runs on a GPU machine
# without one: the plugin crate's GPU test binary (`gpu_kernels`) and its bench (`cuda_kernels`), feature
# `cuda`, stripped and gzipped into plugins/gpu-kit/bin/ (git-ignored; about 16 MB, so that the tracked
# tree plus the kit stays under the 64 MiB a device call carries). Then fetch_official.sh for the official
# kernel, and run.sh there.
#
# Built from the workspace root with the workspace's features (`--workspace --features
# referdino-plugins/cuda`): `-p referdino-plugins` alone resolves shared dependencies' features
# differently and recompiles tract.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=plugins/gpu-kit/bin
rm -rf "$out"; mkdir -p "$out"
cargo test --workspace --features referdino-plugins/cuda --test gpu_kernels --bench cuda_kernels \
    --no-run --message-format=json 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    try: m = json.loads(line)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] in ("gpu_kernels", "cuda_kernels"):
        print(m["target"]["name"], m["executable"])' |
    while read -r name exe; do
        strip -o "$out/$name" "$exe"
        gzip -9 "$out/$name"
        echo "gpu-kit: $out/$name.gz ($(du -h "$out/$name.gz" | cut -f1))"
    done
[ -f "$out/gpu_kernels.gz" ] && [ -f "$out/cuda_kernels.gz" ] || { echo "gpu-kit: build failed" >&2; exit 1; }
git rev-parse HEAD > "$out/COMMIT"
(cd plugins && pwd) > "$out/MANIFEST_DIR"
