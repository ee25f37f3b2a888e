"""An independent, minimal PyTorch DNS loop: the check on speed_torch.py (same first loss, never faster).

Written apart from speed_torch.py on purpose: torch.nn modules, the classic DNS trick for the straight-through
gradient (the parameter holds W * T during forward and backward, then W is put back and the optimizer applies
that gradient to W), the default torch.optim.SGD, and the mask rule by boolean indexing.

    python speed_torch_minimal.py WORK --threads 2 --warmup 3 --min-steps 20 --min-seconds 3
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn


def build(spec: dict, weights: dict) -> tuple[nn.Sequential, dict[str, nn.Parameter]]:
    mods, named = [], {}
    for layer in spec["layers"]:
        op, n = layer["op"], layer.get("name")
        if op == "fc":
            mod = nn.Linear(layer["in"], layer["out"])
        elif op == "conv":
            mod = nn.Conv2d(layer["in"], layer["out"], layer["k"], layer.get("stride", 1), layer.get("pad", 0),
                            groups=layer.get("group", 1))
        elif op == "bn":
            mod = nn.BatchNorm2d(layer["c"], eps=1e-5, track_running_stats=False)
        else:
            mod = {"relu": nn.ReLU(), "flatten": nn.Flatten(), "gap": nn.AdaptiveAvgPool2d(1),
                   "maxpool": nn.MaxPool2d(layer.get("k", 2))}[op]
        for attr, suffix in (("weight", ".weight" if op != "bn" else ".scale"), ("bias", ".bias" if op != "bn"
                                                                                else ".shift")):
            if n is not None:
                getattr(mod, attr).data.copy_(torch.from_numpy(weights[n + suffix]))
                named[n + suffix] = getattr(mod, attr)
        mods.append(mod)
    return nn.Sequential(*mods), named


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("work", type=Path)
    for flag, kind, default in (("--threads", int, 2), ("--warmup", int, 3), ("--min-steps", int, 20),
                                ("--max-steps", int, 100000), ("--min-seconds", float, 3.0), ("--lr", float, 0.01)):
        p.add_argument(flag, type=kind, default=default)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    spec = json.loads((args.work / "spec.json").read_text())
    thresholds = json.loads((args.work / "thresholds.json").read_text())
    weights = dict(np.load(args.work / "weights.npz"))
    data = np.load(args.work / "data.npz")
    xs, ys = torch.from_numpy(data["x"]), torch.from_numpy(data["y"].astype(np.int64))
    model, named = build(spec, weights)
    masks = {n: (named[n].data != 0).float() for n in thresholds}
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    losses, times, i = [], [], 0
    while len(times) < args.min_steps or (sum(times) < args.min_seconds and len(times) < args.max_steps):
        t0 = time.perf_counter()
        kept = {n: named[n].data.clone() for n in masks}
        for n, m in masks.items():
            named[n].data.mul_(m)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(xs[i % len(xs)]), ys[i % len(ys)])
        loss.backward()
        for n, w in kept.items():
            named[n].data.copy_(w)
        opt.step()
        with torch.no_grad():
            for n, m in masks.items():
                (low, high), w = thresholds[n], named[n].abs()
                m[w < low], m[w > high] = 0.0, 1.0
        losses.append(loss.item())
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
        i += 1
    print(json.dumps({"side": "torch-minimal", "steps": len(times), "images_per_second": len(xs[0]) * len(
        times) / sum(times), "median_step_ms": 1000 * float(np.median(times)), "first_loss": losses[0], "last_loss": losses[-1],
        "losses": losses[:5]}))


if __name__ == "__main__":
    main()
