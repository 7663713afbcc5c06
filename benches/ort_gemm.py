#!/usr/bin/env python3
"""ONNX Runtime's Gemm (+ Relu) at the shapes of the `linear` cases of benches/ops.rs, for a side-by-side
with our kernel on the same machine in the same minutes (benches/README.md, "Linear layers").

    python3 benches/ort_gemm.py --threads 2
    RAYON_NUM_THREADS=2 cargo bench --bench ops -- --warm-up-time 1 --measurement-time 3 wall/linear

One Gemm node (weights and bias as initializers) per shape, intra-op threads as given, 3 warm-up and
15 timed runs; prints the median and the minimum in ms.
"""
import argparse
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

CASES = [
    ("encoder_ffn1_4820x256x2048_relu", 4820, 256, 2048, True),
    ("encoder_ffn2_4820x2048x256", 4820, 2048, 256, False),
    ("encoder_proj_4820x256x256", 4820, 256, 256, False),
    ("swin_qkv_1176x384x1152", 1176, 384, 1152, False),
]


def session(m, k, n, relu, threads):
    rng = np.random.default_rng(0)
    w = (rng.random((k, n), dtype=np.float32) - 0.5)
    b = (rng.random(n, dtype=np.float32) - 0.5)
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["g" if relu else "y"])]
    if relu:
        nodes.append(helper.make_node("Relu", ["g"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    for name, m, k, n, relu in CASES:
        s = session(m, k, n, relu, a.threads)
        x = np.random.default_rng(1).random((m, k), dtype=np.float32) - 0.5
        for _ in range(3):
            s.run(None, {"x": x})
        ts = []
        for _ in range(15):
            t = time.perf_counter()
            s.run(None, {"x": x})
            ts.append(time.perf_counter() - t)
        ts.sort()
        print(f"ort gemm {name}: median {ts[len(ts) // 2] * 1e3:.2f} ms, min {ts[0] * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
