#!/usr/bin/env python3
"""Independent checks of an ONNX file written by referdino.

usage: onnx_oracle.py check MODEL.onnx
       onnx_oracle.py run MODEL.onnx IN_DIR OUT_DIR
       onnx_oracle.py serve

`check` runs the ONNX checker (full check when the model has no custom-domain ops).
`run` feeds IN_DIR/<input name>.npy to ONNX Runtime (CPU) and writes OUT_DIR/<output name>.npy.
`serve` answers requests, one per stdin line (a JSON list of the arguments above), with one JSON line
each: {"code": the exit status the command line would give, "out": its stdout, "err": its stderr}; the
tests keep one such process instead of starting Python (and importing ONNX Runtime) for every call.
Exit status 3 means a required Python package is missing (the Rust test decides whether that is fatal).
"""
import contextlib
import io
import json
import os
import sys
import traceback

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


def dispatch(argv):
    if len(argv) == 2 and argv[0] == "check":
        check(argv[1])
    elif len(argv) == 4 and argv[0] == "run":
        run(argv[1], argv[2], argv[3])
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


def serve():
    real_out = sys.stdout
    for line in sys.stdin:
        out, err, code = io.StringIO(), io.StringIO(), 0
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                dispatch(json.loads(line))
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else 1
            except Exception:  # reported to the caller, the server goes on
                traceback.print_exc()
                code = 1
        real_out.write(json.dumps({"code": code, "out": out.getvalue(), "err": err.getvalue()}) + "\n")
        real_out.flush()


if __name__ == "__main__":
    if sys.argv[1:] == ["serve"]:
        serve()
    else:
        dispatch(sys.argv[1:])
