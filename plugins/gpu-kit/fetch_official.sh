#!/usr/bin/env bash
# Copies the official GroundingDINO MSDeformAttn CUDA extension sources out of a local clone (the
# repository is never vendored: plugins/gpu-kit/official/ is git-ignored) so that the GPU check kit can
# build them on the GPU machine with PyTorch's C++ extension loader and time them beside our kernel.
#
#   plugins/gpu-kit/fetch_official.sh [GIT_DIR]
#
# GIT_DIR defaults to the mirror the project's `fetch` tool makes of IDEA-Research/GroundingDINO. The
# copy gets four mechanical edits so that it compiles against a current PyTorch (the sources predate
# PyTorch 1.11): THC/THCAtomics.cuh -> ATen/cuda/Atomic.cuh, Tensor::type().is_cuda() -> is_cuda(),
# AT_DISPATCH on type() -> scalar_type(), Tensor::data<T>() -> data_ptr<T>(). The kernels are untouched.
set -euo pipefail
cd "$(dirname "$0")"
git_dir="${1:-/work/.mirror/IDEA-Research+GroundingDINO/repo}"
src=groundingdino/models/GroundingDINO/csrc
out=official
rm -rf "$out"; mkdir -p "$out"
for f in $(git --git-dir="$git_dir" ls-tree -r HEAD --name-only "$src"); do
    rel="${f#"$src"/}"
    mkdir -p "$out/$(dirname "$rel")"
    git --git-dir="$git_dir" show "HEAD:$f" > "$out/$rel"
done
find "$out" -type f \( -name '*.cu' -o -name '*.cuh' -o -name '*.h' -o -name '*.cpp' \) -print0 |
    xargs -0 sed -i \
        -e 's#<THC/THCAtomics.cuh>#<ATen/cuda/Atomic.cuh>#' \
        -e 's/\.type()\.is_cuda()/.is_cuda()/g' \
        -e 's/AT_DISPATCH_FLOATING_TYPES(\([a-z_]*\)\.type()/AT_DISPATCH_FLOATING_TYPES(\1.scalar_type()/g' \
        -e 's/\.data<\([a-z0-9_]*\)>()/.data_ptr<\1>()/g'
echo "IDEA-Research/GroundingDINO $(git --git-dir="$git_dir" rev-parse HEAD) $src (patched for current PyTorch)" > "$out/SOURCE"
echo "fetch_official: $(find "$out" -type f | wc -l) files in plugins/gpu-kit/$out ($(du -sh "$out" | cut -f1)); $(cat "$out/SOURCE")"
grep -rn "THC\|\.type()\|\.data<" "$out" || true
