#!/usr/bin/env bash
# Builds, on a machine with a Rust toolchain (no GPU needed), what the GPU check kit runs on a GPU machine
# without one: the plugin crate's GPU test binary (`gpu_kernels`) and bench (`cuda_kernels`), and the main
# crate's device-session test (`gpu_device`), feature `cuda`, stripped and xz-compressed into
# plugins/gpu-kit/bin/ (git-ignored), small enough that the tracked tree plus the kit stays under the
# 64 MiB a device call carries (the script says when it would not). Built with Cargo profile `gpu-kit`
# (Cargo.toml: size-optimised, whole-program LTO): 10.5 MB of xz against 16.4 MB as a test build
# (measured in session 9; the LTO build takes ~13 min on 2 cores). Then fetch_official.sh for the
# official kernel, and run.sh there.
#
# Built from the workspace root with the workspace's features (`--workspace --features ...`):
# `-p referdino-plugins` alone resolves shared dependencies' features differently and recompiles tract.
# Without the default features (video files, ONNX Runtime): the GPU tests use neither, and leaving out
# openh264 and ort keeps the kit small enough to carry beside the tracked tree with its trained model.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=plugins/gpu-kit/bin
rm -rf "$out"; mkdir -p "$out"
cargo test --workspace --profile gpu-kit --no-default-features --features referdino/cuda,referdino-plugins/cuda \
    --test gpu_kernels --test gpu_device --bench cuda_kernels --no-run --message-format=json |
    python3 -c '
import json, sys
for line in sys.stdin:
    try: m = json.loads(line)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] in ("gpu_kernels", "cuda_kernels", "gpu_device"):
        print(m["target"]["name"], m["executable"])' |
    while read -r name exe; do
        strip -o "$out/$name" "$exe"
        xz -T2 -9e "$out/$name"
        echo "gpu-kit: $out/$name.xz ($(du -h "$out/$name.xz" | cut -f1))"
    done
for b in gpu_kernels cuda_kernels gpu_device; do
    [ -f "$out/$b.xz" ] || { echo "gpu-kit: $b was not built" >&2; exit 1; }
done
tracked=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
# (official/ exists only after fetch_official.sh; du fails on a missing path)
kit=$(du -cb "$out" $(ls -d plugins/gpu-kit/official 2>/dev/null) | tail -1 | cut -f1)
echo "gpu-kit: tracked tree $((tracked / 1048576)) MiB + kit $((kit / 1048576)) MiB = $(((tracked + kit) / 1048576)) MiB to carry (limit 64)"
[ $((tracked + kit)) -lt $((64 * 1048576)) ] || echo "gpu-kit: WARNING: over the 64 MiB a device call carries" >&2
# What the binaries were built from: the commit (marked when the build inputs differed from it) and a
# hash of the build inputs as they were, which run.sh recomputes over the carried tree.
git ls-files Cargo.toml Cargo.lock build.rs src plugins ':!plugins/gpu-kit' ':!plugins/emu' tests/gpu_device.rs > "$out/FILES"
xargs -a "$out/FILES" -d '\n' sha256sum | sha256sum | cut -d' ' -f1 > "$out/TREE"
dirty=$(git status --porcelain -- $(cat "$out/FILES") | head -1)
echo "$(git rev-parse HEAD)${dirty:+ (built with uncommitted changes)}" > "$out/COMMIT"
(cd plugins && pwd) > "$out/MANIFEST_DIR"
