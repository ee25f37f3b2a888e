"""The PyTorch side of benchmarks/speed.py: a plain PyTorch implementation of one DNS training step.

Runs in its own virtual environment (benchmarks/.torch-venv, made by speed.py); torch is never a dependency
of onnx-dns. Reads the model description, weights, thresholds and batches that speed.py wrote into WORK, and
prints one JSON object on stdout.

The step, the same as the onnx-dns side:
    forward with W * T (straight-through: the gradient of W * T reaches every entry of W), cross-entropy,
    backward, torch.optim.SGD (momentum 0.9, weight decay 5e-4, lr 0.01) on every entry,
    then the surgery rule on every masked tensor with fixed thresholds: T = 0 where |w| < a, T = 1 where |w| > b.
BatchNorm uses the batch's statistics (training mode) and leaves running statistics alone, as the ONNX
training graph does.

    python speed_torch.py WORK --threads 2 --warmup 3 --min-steps 20 --min-seconds 3
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

BATCH_NORM_EPS = 1e-5


class StraightThroughMask(torch.autograd.Function):
    """W * T forward; the gradient passes to W unmasked (DNS's straight-through rule)."""

    @staticmethod
    def forward(ctx, weight, mask):
        return weight * mask

    @staticmethod
    def backward(ctx, grad):
        return grad, None


masked = StraightThroughMask.apply


class DnsNet:
    """The network of a speed.py model description, as plain tensors and functional ops."""

    def __init__(self, spec: dict, weights: dict[str, np.ndarray], thresholds: dict[str, list[float]]) -> None:
        self.spec = spec
        self.params: dict[str, torch.Tensor] = {}
        self.masks: dict[str, torch.Tensor] = {}
        self.thresholds = {k: (float(a), float(b)) for k, (a, b) in thresholds.items()}
        for name, value in weights.items():
            tensor = torch.from_numpy(np.array(value, dtype=np.float32, copy=True))
            if name.endswith((".mean", ".var")):
                self.params[name] = tensor  # BatchNorm statistics: frozen
            else:
                self.params[name] = tensor.requires_grad_(True)
        for name in self.thresholds:
            self.masks[name] = (self.params[name].detach() != 0).to(torch.float32)

    def trainable(self) -> list[torch.Tensor]:
        return [p for p in self.params.values() if p.requires_grad]

    def _w(self, name: str) -> torch.Tensor:
        p = self.params[name]
        return masked(p, self.masks[name]) if name in self.masks else p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.spec["layers"]:
            op = layer["op"]
            if op == "fc":
                x = F.linear(x, self._w(layer["name"] + ".weight"), self._w(layer["name"] + ".bias"))
            elif op == "conv":
                x = F.conv2d(x, self._w(layer["name"] + ".weight"), self._w(layer["name"] + ".bias"),
                             padding=layer.get("pad", 0))
            elif op == "bn":
                n = layer["name"]
                x = F.batch_norm(x, None, None, self.params[n + ".scale"], self.params[n + ".shift"],
                                 training=True, eps=BATCH_NORM_EPS)
            elif op == "relu":
                x = F.relu(x)
            elif op == "maxpool":
                x = F.max_pool2d(x, layer["k"], layer["k"])
            elif op == "flatten":
                x = torch.flatten(x, 1)
            else:
                raise ValueError(f"unknown op {op}")
        return x

    @torch.no_grad()
    def update_masks(self) -> None:
        for name, (low, high) in self.thresholds.items():
            magnitude = self.params[name].abs()
            mask = self.masks[name]
            mask.masked_fill_(magnitude < low, 0.0)
            mask.masked_fill_(magnitude > high, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("work", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--min-steps", type=int, default=20)
    parser.add_argument("--max-steps", type=int, default=100000)
    parser.add_argument("--min-seconds", type=float, default=3.0)
    parser.add_argument("--lr", type=float, default=0.01)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    spec = json.loads((args.work / "spec.json").read_text())
    thresholds = json.loads((args.work / "thresholds.json").read_text())
    with np.load(args.work / "weights.npz") as data:
        weights = {k: data[k] for k in data.files}
    with np.load(args.work / "data.npz") as data:
        xs = [torch.from_numpy(np.ascontiguousarray(x)) for x in data["x"]]
        ys = [torch.from_numpy(y.astype(np.int64)) for y in data["y"]]
    net = DnsNet(spec, weights, thresholds)
    del weights
    optimizer = torch.optim.SGD(net.trainable(), lr=args.lr, momentum=0.9, weight_decay=5e-4)

    rows, losses = [], []
    started = None
    i = 0
    while True:
        t0 = time.perf_counter()
        x, y = xs[i % len(xs)], ys[i % len(ys)]
        t1 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net.forward(x), y)
        loss.backward()
        t2 = time.perf_counter()
        optimizer.step()
        t3 = time.perf_counter()
        net.update_masks()
        t4 = time.perf_counter()
        losses.append(float(loss.detach()))  # after the step: as the onnx side, which reads the loss each step
        t5 = time.perf_counter()
        if i >= args.warmup:
            if started is None:
                started = t0
            rows.append((t5 - t0, t1 - t0 + t5 - t4, t2 - t1, t3 - t2, t4 - t3))
        i += 1
        if started is not None and len(rows) >= args.min_steps and (
                t5 - started >= args.min_seconds or len(rows) >= args.max_steps):
            break
    loop_seconds = time.perf_counter() - started
    a = np.array(rows)
    batch = int(xs[0].shape[0])
    kept = sum(int(m.count_nonzero()) for m in net.masks.values())
    total = sum(m.numel() for m in net.masks.values())
    print(json.dumps({
        "side": "torch", "torch": torch.__version__, "threads": torch.get_num_threads(),
        "steps": len(rows), "batch": batch, "images_per_second": batch * len(rows) / loop_seconds,
        "median_step_ms": 1000 * float(np.median(a[:, 0])),
        "ms": {"step": 1000 * float(a[:, 0].mean()), "data_other": 1000 * float(a[:, 1].mean()),
               "forward_backward": 1000 * float(a[:, 2].mean()), "optimizer": 1000 * float(a[:, 3].mean()),
               "mask_update": 1000 * float(a[:, 4].mean())},
        "first_loss": losses[0], "last_loss": losses[-1], "kept_fraction": kept / total,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
