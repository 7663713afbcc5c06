#!/usr/bin/env python3
"""Independent checks of an ONNX file written by referdino.

usage: onnx_oracle.py check MODEL.onnx
       onnx_oracle.py run MODEL.onnx IN_DIR OUT_DIR

`check` runs the ONNX checker (full check when the model has no custom-domain ops).
`run` feeds IN_DIR/<input name>.npy to ONNX Runtime (CPU) and writes OUT_DIR/<output name>.npy.
Exit status 3 means a required Python package is missing (the Rust test decides whether that is fatal).
"""
import os
import sys

try:
    import numpy as np
    import onnx
except ImportError as e:  # pragma: no cover
    print(f"missing python package: {e}", file=sys.stderr)
    sys.exit(3)


def check(path):
    model = onnx.load(path)
    custom = any(op.domain not in ("", "ai.onnx") for op in model.opset_import)
    onnx.checker.check_model(model, full_check=not custom)
    print(f"ok: {path} ({len(model.graph.node)} nodes, custom ops: {custom})")


def run(path, in_dir, out_dir):
    try:
        import onnxruntime as ort
    except ImportError as e:
        print(f"missing python package: {e}", file=sys.stderr)
        sys.exit(3)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    feeds = {i.name: np.load(os.path.join(in_dir, i.name.replace("/", "_") + ".npy")) for i in sess.get_inputs()}
    names = [o.name for o in sess.get_outputs()]
    outs = sess.run(names, feeds)
    os.makedirs(out_dir, exist_ok=True)
    for n, v in zip(names, outs):
        np.save(os.path.join(out_dir, n.replace("/", "_") + ".npy"), v)
    print(f"ok: {len(names)} outputs")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "check":
        check(sys.argv[2])
    elif len(sys.argv) == 5 and sys.argv[1] == "run":
        run(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
