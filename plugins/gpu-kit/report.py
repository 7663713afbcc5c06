"""Writes the GPU check kit's JSON report from whatever the steps of run.sh left so far.

run.sh calls it after every phase, so a step killed by the time budget still leaves a report of the
others. Return codes: 0 passed, 124 ran out of time, 125 not started (too little time left), 3 not
available (no official sources or build), anything else failed.
"""
import json
import sys

(path, gpu, commit, stale, host, nvrtc, trc, drc, brc, orc, crc, klog, dlog, bjson, ojson, objson, clog,
 elapsed) = sys.argv[1:]


def load(p):
    try:
        with open(p) as f:
            return json.load(f)
    except Exception:
        return None


def lines(p):
    try:
        with open(p, errors="replace") as f:
            return f.read().splitlines()
    except OSError:
        return []


def tests(p, rc):
    ls = lines(p)
    return {
        "rc": int(rc),
        "summary": next((l for l in reversed(ls) if l.startswith("test result")), None),
        "passed": [l[5:].split(" ...")[0] for l in ls if l.startswith("test ") and l.rstrip().endswith(" ok")],
        "failed": [l[5:].split(" ...")[0] for l in ls if l.startswith("test ") and l.rstrip().endswith("FAILED")],
        "skipped": [l for l in ls if l.startswith("SKIPPED")],
        "measured": [l.strip() for l in ls if "max |diff|" in l or "identical" in l],
    }


kernels, device = tests(klog, trc), tests(dlog, drc)
bench, official = load(bjson), load(ojson) or load(objson)
goals = {}
if bench and official and official.get("cases"):
    enc = bench["msdeform"][0]
    off = official["cases"][0]
    # The official kernel alone (PyTorch profiler) is the reference; without it the whole op, which
    # also allocates and zeroes its output, and the report says so.
    if off.get("kernel_f32_us"):
        ref, goals["reference"] = off["kernel_f32_us"], "official im2col kernel (profiler)"
    else:
        ref, goals["reference"] = off["op_f32_us"], "official op (kernel + output allocation): profiler failed"
    goals["msda_encoder_f32_speedup_vs_official_kernel"] = ref / enc["opt_f32_us"]
    goals["msda_encoder_f16_speedup_vs_official_kernel"] = ref / enc["opt_f16_us"]
    goals["msda_encoder_f32_speedup_vs_official_op"] = off["op_f32_us"] / enc["opt_f32_us"]
    goals["msda_f32_goal_1_5x_met"] = goals["msda_encoder_f32_speedup_vs_official_kernel"] >= 1.5
    goals["msda_f16_goal_2x_met"] = goals["msda_encoder_f16_speedup_vs_official_kernel"] >= 2.0
    # The launcher's channel vector (4 per thread at Dh = 32) against one channel per thread, same sitting.
    if enc.get("opt_f32_vec1_us"):
        goals["msda_encoder_f32_vec_speedup_vs_vec1"] = enc["opt_f32_vec1_us"] / enc["opt_f32_us"]
        goals["msda_encoder_f16_vec_speedup_vs_vec1"] = enc["opt_f16_vec1_us"] / enc["opt_f16_us"]
if bench:
    p900 = next((r for r in bench.get("query_prune", []) if r["n"] == 900), None)
    if p900:
        best = min(p900["gpu_us"], p900.get("spread_us") or p900["gpu_us"])
        goals["query_prune_900_us_single_block"] = p900["gpu_us"]
        goals["query_prune_900_us_spread"] = p900.get("spread_us")
        goals["query_prune_900_us_stats_kernel"] = p900.get("stats_us")
        goals["query_prune_900_us_select_kernel"] = p900.get("select_us")
        goals["query_prune_goal_20us_met"] = best < 20.0
cross = lines(clog) if int(crc) != 3 else []
rep = {
    "gpu": gpu,
    "host": host,
    "commit": commit,
    "binaries_stale": stale,
    "nvrtc_library": nvrtc,
    "elapsed_s": int(elapsed),
    "kernels": kernels,
    "device_session": device,
    "official_cross_check": {"rc": int(crc), "log": cross[-8:]},
    "bench_rc": int(brc),
    "bench": bench,
    "official_rc": int(orc),
    "official": official,
    "goals": goals,
    "ok": int(trc) == 0 and int(drc) == 0 and int(brc) == 0 and int(crc) == 0,
}
with open(path, "w") as f:
    json.dump(rep, f, indent=1)
print(json.dumps({"ok": rep["ok"], "goals": goals, "failed": kernels["failed"] + device["failed"]}, indent=1))
