"""Writes a stage-by-stage parity fixture for a trained checkpoint: the OFFICIAL inference
(``GroundingDINO.infer``) run on a few frames of a `referdino synth` clip with one of its
expressions, every stage recorded by the baseline harness (``../shared/baseline/capture.py``) under
the key names `referdino parity` compares.

    REFERDINO_SRC=... python tools/train/parity_fixture.py --weights OUT/checkpoint.pth \
        --clip DATA/valid/JPEGImages/clip00000 --caption "the red ball" --frames 4 --out FIXTURE
    target/release/referdino parity FIXTURE

The fixture folder gets ``config.json``, ``checkpoint.pth`` (a copy), ``inputs.safetensors`` (uint8
frames, normalised frames, token ids; the caption in the metadata) and ``outputs.safetensors``. The
harness lives outside the repository (``REFERDINO_BASELINE``, default ``../shared/baseline`` next to
the repository) and is imported as it is, like the official code.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[2]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, help="official-format checkpoint (train.py output)")
    p.add_argument("--config", help="default: config.json next to --weights")
    p.add_argument("--clip", required=True, help="a folder of frames (JPEGImages/<clip>)")
    p.add_argument("--caption", required=True)
    p.add_argument("--frames", type=int, default=4, help="first N frames of the clip")
    p.add_argument("--out", required=True)
    p.add_argument("--max-stage-bytes", type=int, default=0,
                   help="leave out stages larger than this (0: keep all); `parity` compares the stages "
                        "present, so a small fixture still checks every engine's outputs")
    p.add_argument("--no-float-frames", action="store_true",
                   help="store only the uint8 frames (the normalised ones are checked when present)")
    a = p.parse_args()

    baseline = Path(os.environ.get("REFERDINO_BASELINE", REPO.parent / "shared" / "baseline"))
    sys.path.insert(0, str(baseline))
    import capture  # noqa: E402  (the baseline harness)
    import common  # noqa: E402

    weights = Path(a.weights)
    cfg_path = Path(a.config) if a.config else weights.parent / "config.json"
    cfg = json.loads(cfg_path.read_text())
    torch.manual_seed(0)
    model = common.build_model(cfg)
    sd = torch.load(weights, map_location="cpu", weights_only=True)["model_state_dict"]
    missing, unexpected = model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=False)
    # Training-only buffers may be absent from an inference checkpoint; parameters may not.
    params = {k for k, _ in model.named_parameters()}
    bad = [k for k in missing if k in params]
    if bad or unexpected:
        sys.exit(f"checkpoint does not match the model: missing {bad[:5]}, unexpected {unexpected[:5]}")
    model.eval()

    files = sorted(f for f in Path(a.clip).iterdir() if f.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if len(files) < a.frames:
        sys.exit(f"{a.clip}: {len(files)} frames, {a.frames} asked")
    frames_u8 = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files[: a.frames]], 0)
    frames = capture.preprocess(frames_u8)
    samples, out, rec = capture.run_official_infer(model, cfg, frames, a.caption)
    cap, tok, tsam, pos_ids = capture.text_inputs(model, a.caption)
    outputs = capture.assemble(model, cfg, samples, out, rec, tok["input_ids"].shape[1])

    # The final masks stay whatever their size: they are what a user sees.
    keep = {"post.masks", "post.best_index", "post.scores"}
    if a.max_stage_bytes:
        omitted = [k for k, v in outputs.items()
                   if k not in keep and v.numel() * v.element_size() > a.max_stage_bytes]
        for k in omitted:
            del outputs[k]
    else:
        omitted = []
    dst = Path(a.out)
    dst.mkdir(parents=True, exist_ok=True)
    inputs = OrderedDict(
        frames_uint8=torch.from_numpy(frames_u8),
        input_ids=tok["input_ids"],
        attention_mask=tok["attention_mask"],
        text_self_attention_mask=tsam,
        position_ids=pos_ids,
    )
    if not a.no_float_frames:
        inputs["frames"] = frames[None]  # [1, T, 3, H, W], the official batch layout
    common.save_tensors(dst / "inputs.safetensors", inputs,
                        {"caption_raw": a.caption, "caption_fed": cap, "key_order": list(inputs),
                         "clip": str(a.clip), "frames": a.frames})
    common.save_tensors(dst / "outputs.safetensors", outputs,
                        {"key_order": list(outputs), "omitted": omitted})
    if cfg_path.resolve() != (dst / "config.json").resolve():
        shutil.copyfile(cfg_path, dst / "config.json")
    if weights.resolve() != (dst / "checkpoint.pth").resolve():
        shutil.copyfile(weights, dst / "checkpoint.pth")
    best = int(outputs["post.best_index"])
    print(f"{dst}: {len(outputs)} stages ({len(omitted)} left out), best query {best}, "
          f"mask covers {float(outputs['post.masks'].float().mean()) * 100:.1f} % of the frames")


if __name__ == "__main__":
    main()
