"""Runs the OFFICIAL inference (``GroundingDINO.infer`` + the official demo's post-processing:
mean sigmoid score over frames, best query, bilinear upsampling, threshold 0.5) of a trained checkpoint
over a `referdino synth` split, and reports the region similarity J against the ground truth and,
with --runtime DIR (the --out of a `referdino eval` run over the same split), the agreement (IoU)
between the official masks and the runtime's.

    REFERDINO_SRC=... python tools/train/official_eval.py --data DATA --split valid \
        --weights OUT/checkpoint.pth [--runtime OUT/eval-valid] [--limit 30]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import config as configs  # noqa: E402
import official  # noqa: E402
from data import MEAN, STD, SynthClips  # noqa: E402


def iou(a, b):
    u = np.logical_or(a, b).sum()
    return 1.0 if u == 0 else np.logical_and(a, b).sum() / u


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="valid")
    p.add_argument("--weights", required=True)
    p.add_argument("--config", help="default: config.json next to --weights")
    p.add_argument("--runtime", help="a `referdino eval --out` folder over the same split")
    p.add_argument("--limit", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="write the per-expression figures here")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    cfg_path = Path(a.config) if a.config else Path(a.weights).parent / "config.json"
    cfg = configs.synth_small()
    cfg.update({k: v for k, v in json.loads(cfg_path.read_text()).items()})
    data = SynthClips(a.data, a.split)
    meta = json.loads((Path(a.data) / "meta_expressions" / a.split / "meta_expressions.json").read_text())
    misc = official.official()["misc"]
    rows = []
    with official.patches(cfg):
        model, _ = official.build(cfg)
        sd = torch.load(a.weights, map_location="cpu", weights_only=True)["model_state_dict"]
        model.load_state_dict({k: v.float() for k, v in sd.items()})
        model.eval()
        for video, v in sorted(meta["videos"].items()):
            frames = v["frames"]
            imgs, labels = [], []
            for f in frames:
                img, lab = data.load(video, f)
                x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
                imgs.append((x - MEAN) / STD)
                labels.append(lab)
            imgs = torch.stack(imgs)
            h, w = imgs.shape[-2:]
            samples = misc.nested_tensor_from_videos_list(imgs[None], size_divisibility=1)
            for eid, e in sorted(v["expressions"].items(), key=lambda kv: int(kv[0])):
                if a.limit and len(rows) >= a.limit:
                    break
                exp = " ".join(e["exp"].lower().split())
                with torch.no_grad():
                    out = model.infer(samples, [exp], [{"size": torch.as_tensor([h, w])}])
                scores = out["pred_logits"][0].sigmoid().mean(0).max(-1)[0]
                best = int(scores.argmax())
                m = out["pred_masks"][0][:, best][None, :, :h, :w]
                m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
                masks = (m.sigmoid() > 0.5)[0].numpy()
                obj = int(e["obj_id"])
                js = [iou(masks[t], labels[t] == obj) for t in range(len(frames))]
                row = {"video": video, "exp_id": eid, "exp": e["exp"], "J": float(np.mean(js)),
                       "best_query": best, "best_score": float(scores[best])}
                if a.runtime:
                    ag = []
                    for t, f in enumerate(frames):
                        pth = Path(a.runtime) / "Annotations" / video / eid / f"{f}.png"
                        ag.append(iou(masks[t], np.array(Image.open(pth)) > 0))
                    row["agreement_IoU"] = float(np.mean(ag))
                rows.append(row)
                print(json.dumps(row), flush=True)
    summary = {"expressions": len(rows), "official_J": float(np.mean([r["J"] for r in rows]))}
    if a.runtime:
        summary["runtime_vs_official_IoU"] = float(np.mean([r["agreement_IoU"] for r in rows]))
        summary["identical_within_1pct"] = sum(r["agreement_IoU"] >= 0.99 for r in rows)
    print(json.dumps(summary))
    if a.json:
        Path(a.json).write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
