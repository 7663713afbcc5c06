"""Reads clips written by `referdino synth` (Ref-YouTube-VOS layout) into the batches the official
ReferDINO training forward and criterion take: a NestedTensor of videos [B, T, 3, H, W] and one
target dict per video (binary labels, normalised cxcywh boxes, masks, per-frame validity)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


class SynthClips:
    """Every (video, expression) of one split."""

    def __init__(self, root: str, split: str = "train"):
        self.root = Path(root)
        self.split = split
        meta = json.loads((self.root / "meta_expressions" / split / "meta_expressions.json").read_text())
        self.items = []
        self.frames = {}
        for video, v in sorted(meta["videos"].items()):
            self.frames[video] = list(v["frames"])
            for eid, e in sorted(v["expressions"].items(), key=lambda kv: int(kv[0])):
                self.items.append((video, e["exp"], int(e["obj_id"])))
        if not self.items:
            raise SystemExit(f"{root} split {split}: no expressions")

    def __len__(self):
        return len(self.items)

    def load(self, video: str, frame: str):
        img = Image.open(self.root / self.split / "JPEGImages" / video / f"{frame}.jpg").convert("RGB")
        lab = np.array(Image.open(self.root / self.split / "Annotations" / video / f"{frame}.png"))
        return img, lab

    def sample(self, index: int, num_frames: int, rng: random.Random):
        """One training video: `num_frames` distinct frames of the clip in temporal order. As the
        official loader does, a draw where the target is visible in none of the frames is replaced
        by another random expression (the official matcher needs one valid frame)."""
        while True:
            imgs, target, text = self._sample(index, num_frames, rng)
            if target["valid"].any():
                return imgs, target, text
            index = rng.randrange(len(self.items))

    def _sample(self, index: int, num_frames: int, rng: random.Random):
        video, text, obj = self.items[index]
        names = self.frames[video]
        picks = sorted(rng.sample(range(len(names)), min(num_frames, len(names))))
        while len(picks) < num_frames:  # short clips: repeat frames, still in order
            picks = sorted(picks + [rng.choice(picks)])
        imgs, masks, boxes, valid = [], [], [], []
        for i in picks:
            img, lab = self.load(video, names[i])
            w, h = img.size
            x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
            imgs.append((x - MEAN) / STD)
            m = torch.from_numpy((lab == obj).astype(np.float32))
            masks.append(m)
            if m.any():
                ys, xs = torch.where(m > 0)
                x0, y0 = xs.min().float(), ys.min().float()
                x1, y1 = xs.max().float() + 1, ys.max().float() + 1
                boxes.append(torch.stack([(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h]))
                valid.append(1)
            else:
                boxes.append(torch.zeros(4))
                valid.append(0)
        target = {
            "labels": torch.zeros(num_frames, dtype=torch.long),
            "boxes": torch.stack(boxes),
            "masks": torch.stack(masks),
            "valid": torch.tensor(valid),
            "orig_size": torch.as_tensor([h, w]),
            "size": torch.as_tensor([h, w]),
            "frames_idx": torch.tensor(picks),
        }
        return torch.stack(imgs), target, text
