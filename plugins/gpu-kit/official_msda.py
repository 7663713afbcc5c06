#!/usr/bin/env python3
"""Times the official GroundingDINO MSDeformAttn CUDA op at ReferDINO's shapes (GPU check kit).

Builds the official extension from plugins/gpu-kit/official/ (made by fetch_official.sh, never committed)
with PyTorch's C++ extension loader, then for each shape of our bench (same sizes, same input
distributions) measures, like our bench: CUDA events around back-to-back calls, median of 5 runs of about
50 ms. Two figures per shape: the op as the model calls it (`at::zeros` for the output + the im2col kernel)
and, from the PyTorch profiler, the im2col kernel alone. It also saves the encoder-shape inputs and the
official output to a safetensors file so that our kernel can be checked against the official CUDA kernel
at that shape (gpu_kernels test `msda_matches_the_official_cuda_kernel`).

    official_msda.py --src plugins/gpu-kit/official --json OUT.json --dump OUT.safetensors
"""
import argparse
import json
import os
import sys
import time
import traceback

# (name, levels, queries, points), heads 8, head dim 32: the cases of benches/cuda_kernels.rs.
ENCODER = [(45, 80), (23, 40), (12, 20), (6, 10)]
CASES = [
    ("encoder self-attn Q=4820 L=4 P=4", ENCODER, 4820, 4),
    ("decoder cross-attn Q=900 L=4 P=4", ENCODER, 900, 4),
    ("mask decoder Q=15 L=1 P=16", [(90, 160)], 15, 16),
]
HEADS, HEAD_DIM = 8, 32


def build(src, build_dir):
    import torch.utils.cpp_extension as ext

    os.makedirs(build_dir, exist_ok=True)
    sources = [
        os.path.join(src, "vision.cpp"),
        os.path.join(src, "cuda_version.cu"),
        os.path.join(src, "MsDeformAttn", "ms_deform_attn_cpu.cpp"),
        os.path.join(src, "MsDeformAttn", "ms_deform_attn_cuda.cu"),
    ]
    t0 = time.time()
    mod = ext.load(
        name="official_msda",
        sources=sources,
        extra_include_paths=[src],
        extra_cflags=["-O3", "-DWITH_CUDA"],
        extra_cuda_cflags=["-O3", "-DWITH_CUDA", "-DCUDA_HAS_FP16=1"],
        build_directory=build_dir,
        verbose=False,
    )
    return mod, time.time() - t0


def inputs(torch, levels, q, p, seed):
    g = torch.Generator(device="cpu").manual_seed(seed)
    shapes = torch.tensor(levels, dtype=torch.int64)
    areas = shapes[:, 0] * shapes[:, 1]
    starts = torch.cat([torch.zeros(1, dtype=torch.int64), areas.cumsum(0)[:-1]])
    s = int(areas.sum())
    nl = len(levels)
    value = torch.rand(1, s, HEADS, HEAD_DIM, generator=g) * 4 - 2
    loc = torch.rand(1, q, HEADS, nl, p, 2, generator=g) * 1.2 - 0.1
    w = (torch.rand(1, q, HEADS, nl * p, generator=g) * 4 - 2).exp()
    w = (w / w.sum(-1, keepdim=True)).view(1, q, HEADS, nl, p)
    return [t.cuda().contiguous() for t in (value, shapes, starts, loc, w)]


def events_us(torch, fn):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def run(n):
        start.record()
        for _ in range(n):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) * 1e3 / n

    run(3)
    one = max(run(5), 0.5)
    n = int(min(max(50_000 / one, 5), 20_000))
    return sorted(run(n) for _ in range(5))[2]


def kernel_only_us(torch, fn, iters=200):
    """Mean device time of the im2col kernel per call, from the PyTorch profiler (CUPTI)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    total, count = 0.0, 0
    for e in prof.events():
        if "im2col" in e.name:
            total += e.device_time
            count += 1
    return (total / count if count else None), count


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", required=True)
    ap.add_argument("--json", required=True)
    ap.add_argument("--dump")
    ap.add_argument("--build-dir", default="/tmp/official_msda_build")
    ap.add_argument("--build-only", action="store_true", help="compile the extension and stop")
    a = ap.parse_args()
    report = {"source": None, "cases": []}
    try:
        with open(os.path.join(a.src, "SOURCE")) as f:
            report["source"] = f.read().strip()
    except OSError:
        pass
    try:
        import torch

        report["torch"] = torch.__version__
        report["cuda"] = torch.version.cuda
        report["device"] = torch.cuda.get_device_name(0)
        mod, secs = build(a.src, a.build_dir)
        report["build_seconds"] = round(secs, 1)
        print(f"official_msda: built in {secs:.1f} s with torch {torch.__version__}", flush=True)
        if a.build_only:
            report["ok"] = True
            with open(a.json, "w") as f:
                json.dump(report, f, indent=1)
            return 0
        for i, (name, levels, q, p) in enumerate(CASES):
            value, shapes, starts, loc, w = inputs(torch, levels, q, p, 1000 + i)

            def op():
                return mod.ms_deform_attn_forward(value, shapes, starts, loc, w, 64)

            out = op()
            us = events_us(torch, op)
            try:
                kern, n = kernel_only_us(torch, op)
            except Exception as e:  # the profiler is optional
                kern, n = None, 0
                print(f"official_msda: profiler unavailable: {e}", file=sys.stderr)
            row = {"case": name, "num_query": q, "op_f32_us": us, "kernel_f32_us": kern, "profiled_kernels": n}
            print(f"official_msda: {name}: op {us:.2f} us, im2col kernel {kern} us", flush=True)
            report["cases"].append(row)
            if i == 0 and a.dump:
                from safetensors.torch import save_file

                save_file(
                    {
                        "value": value.cpu(),
                        "spatial_shapes": shapes.cpu(),
                        "level_start_index": starts.cpu(),
                        "sampling_locations": loc.cpu(),
                        "attention_weights": w.cpu(),
                        "output": out.cpu().contiguous(),
                    },
                    a.dump,
                )
        report["ok"] = True
    except Exception:
        report["ok"] = False
        report["error"] = traceback.format_exc()[-4000:]
        print(report["error"], file=sys.stderr)
    with open(a.json, "w") as f:
        json.dump(report, f, indent=1)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
