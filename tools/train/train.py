"""Trains a small ReferDINO (the official network and losses, imported from REFERDINO_SRC) on clips
written by `referdino synth`. See README.md next to this file for the commands.

Writes into --out:
  config.json       the model configuration (official format + tiny_overrides; the runtime reads it
                    from the checkpoint's folder)
  loss.csv          one row per logged step: seconds of training (across resumes), learning rate,
                    weighted total and each final-layer loss term
  last.pth          full training state (fp32 weights, optimizer, step) for --resume
  checkpoint.pth    official-format checkpoint {"model_state_dict", "epoch"} of the latest weights
                    (float16 unless --fp32-checkpoint, which halves its size; the runtime and the
                    official code both load it as float32)
  step-NNNNNN.pth   the same every --save-every steps
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import config as configs  # noqa: E402
import official  # noqa: E402
from data import SynthClips  # noqa: E402


def parse():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="root written by `referdino synth`")
    p.add_argument("--split", default="train")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=4000, help="optimizer steps (schedule length)")
    p.add_argument("--max-minutes", type=float, default=0,
                   help="stop (and save) after this wall time even before --steps (0: no limit)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--frames", type=int, default=3, help="frames per training video (T)")
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--clip-max-norm", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--save-every", type=int, default=500)
    p.add_argument("--resume", help="a last.pth to continue from")
    p.add_argument("--init", help="an official-format checkpoint whose weights start the run (fine-tuning: "
                   "fresh optimizer and schedule; not with --resume)")
    p.add_argument("--fp32-checkpoint", action="store_true")
    return p.parse_args()


def lr_at(step, args):
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    f = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, f))))


def save_official(model, path: Path, step: int, fp32: bool):
    sd = model.state_dict()
    if not fp32:
        # keep storage sharing (the per-layer aliases of shared modules) in the half copy
        halves = {}
        out = {}
        for k, v in sd.items():
            if v.is_floating_point():
                key = (v.data_ptr(), tuple(v.shape), tuple(v.stride()))
                if key not in halves:
                    halves[key] = v.detach().half()
                out[k] = halves[key]
            else:
                out[k] = v
        sd = out
    tmp = path.with_suffix(".tmp")
    torch.save({"model_state_dict": sd, "epoch": step}, tmp)
    os.replace(tmp, path)


def main():
    args = parse()
    cfg = configs.synth_small()
    # The sine-width patches (official.py) must be in place for the forward passes too.
    with official.patches(cfg):
        train(args)


def train(args):
    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    cfg = configs.synth_small()
    cfg["seed"] = args.seed
    cfg["num_frames"] = args.frames
    cfg["lr"] = args.lr
    cfg["clip_max_norm"] = args.clip_max_norm
    model, criterion = official.build(cfg)
    model.train()
    criterion.train()
    runtime_cfg = {k: v for k, v in cfg.items() if k not in ("lr", "weight_decay", "clip_max_norm",
                                                             "enable_amp", "seed", "num_frames")}
    (out / "config.json").write_text(json.dumps(runtime_cfg, indent=1))

    data = SynthClips(args.data, args.split)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=cfg["weight_decay"])
    rng = random.Random(args.seed)
    step = 0
    elapsed = 0.0
    if args.init and args.resume:
        sys.exit("--init starts a new run from weights; --resume continues one: give one of them")
    if args.init:
        st = torch.load(args.init, map_location="cpu", weights_only=False)
        sd = {k: v.float() for k, v in st.get("model_state_dict", st).items()}
        missing, unexpected = model.load_state_dict(sd, strict=False)
        if missing or unexpected:
            sys.exit(f"--init {args.init}: {len(missing)} missing keys (e.g. {missing[:3]}), "
                     f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        print(f"weights from {args.init} (step {st.get('epoch', '?')})", flush=True)
    if args.resume:
        st = torch.load(args.resume, map_location="cpu", weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        step = st["step"]
        rng.setstate(st["rng"])
        torch.set_rng_state(st["torch_rng"])
        elapsed = st.get("elapsed", 0.0)
    n_params = sum(p.numel() for p in params)
    print(f"{len(data)} expressions in {args.data}/{args.split}; {n_params:,} trainable parameters; "
          f"batch {args.batch} x {args.frames} frames; {args.steps} steps", flush=True)
    misc = official.official()["misc"]
    weights = criterion.weight_dict
    log_path = out / "loss.csv"
    fresh = not log_path.exists() or not args.resume
    logf = open(log_path, "w" if fresh else "a", newline="")
    log = csv.writer(logf)
    terms = ["loss_ce", "loss_bbox", "loss_giou", "loss_mask", "loss_dice", "loss_proj"]
    if fresh:
        log.writerow(["step", "seconds", "lr", "loss"] + terms)
    t0 = time.time() - elapsed  # seconds of training, across resumes
    t_start = time.time()
    acc = {k: 0.0 for k in ["loss"] + terms}
    n_acc = 0

    def checkpoint(final=False):
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                    "rng": rng.getstate(), "torch_rng": torch.get_rng_state(),
                    "elapsed": time.time() - t0}, out / "last.pth.tmp")
        os.replace(out / "last.pth.tmp", out / "last.pth")
        save_official(model, out / "checkpoint.pth", step, args.fp32_checkpoint)
        if not final:
            save_official(model, out / f"step-{step:06d}.pth", step, args.fp32_checkpoint)

    # SIGTERM / SIGINT end the run after the current step, saving like --max-minutes does, so a
    # run on a shared machine can be stopped at any time without losing its progress.
    stop = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.append(1))
    while step < args.steps:
        if args.max_minutes and time.time() - t_start > args.max_minutes * 60:
            print(f"time limit reached at step {step}", flush=True)
            break
        if stop:
            print(f"stopped by a signal at step {step}", flush=True)
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args)
        videos, targets, texts = [], [], []
        for _ in range(args.batch):
            v, t, c = data.sample(rng.randrange(len(data)), args.frames, rng)
            videos.append(v)
            targets.append(t)
            texts.append(c)
        samples = misc.nested_tensor_from_videos_list(videos, size_divisibility=32)
        outputs = model(samples, texts, targets)
        loss_dict = criterion(outputs, targets)
        loss = sum(loss_dict[k] * weights[k] for k in loss_dict if k in weights)
        if not torch.isfinite(loss):
            print(f"step {step}: loss is {loss.item()}, stopping", flush=True)
            break
        opt.zero_grad()
        loss.backward()
        if args.clip_max_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, args.clip_max_norm)
        opt.step()
        step += 1
        acc["loss"] += loss.item()
        for k in terms:
            acc[k] += (loss_dict[k] * weights[k]).item()
        n_acc += 1
        if step % args.log_every == 0 or step == args.steps:
            row = [step, round(time.time() - t0, 1), f"{lr_at(step - 1, args):.3g}"]
            row += [f"{acc[k] / n_acc:.4f}" for k in ["loss"] + terms]
            log.writerow(row)
            logf.flush()
            print(" ".join(f"{h}={v}" for h, v in zip(["step", "s", "lr", "loss"] + terms, row)),
                  flush=True)
            acc = {k: 0.0 for k in acc}
            n_acc = 0
        if step % args.save_every == 0:
            checkpoint()
    checkpoint(final=True)
    print(f"done: {step} steps, {time.time() - t0:.0f} s of training; {out / 'checkpoint.pth'}", flush=True)


if __name__ == "__main__":
    main()
