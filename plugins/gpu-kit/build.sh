#!/usr/bin/env bash
# Builds, on a machine with a Rust toolchain (no GPU needed), the GPU test binaries of the plugin crate
# (feature `cuda`) and puts them, stripped, in plugins/gpu-kit/bin/ (git-ignored) for carrying to a GPU
# machine that has no Rust toolchain. Then run plugins/gpu-kit/run.sh there.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=plugins/gpu-kit/bin
rm -rf "$out"; mkdir -p "$out"
cargo test -p referdino-plugins --features cuda --no-run --message-format=json 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    try: m = json.loads(line)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["target"]["name"], m["executable"])' |
    while read -r name exe; do
        cp "$exe" "$out/$name"
        strip "$out/$name"
        echo "gpu-kit: $out/$name ($(du -h "$out/$name" | cut -f1))"
    done
echo "$(git rev-parse HEAD)" > "$out/COMMIT"
echo "$(cd plugins && pwd)" > "$out/MANIFEST_DIR"
