"""The network of a speed.py model description as plain tensors and functional ops, with DNS masks.

Each masked tensor W enters the forward pass as W * T through a straight-through function: the gradient of
W * T reaches every entry of W, pruned or not, as DNS wants. BatchNorm uses the batch's statistics.
"""

from __future__ import annotations

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
    """Parameters, masks and the forward pass of one model description (or of its hand-written twin)."""

    def __init__(self, spec: dict, weights: dict[str, np.ndarray], thresholds: dict[str, list[float]],
                 channels_last: bool = False) -> None:
        self.spec = spec
        self.params: dict[str, torch.Tensor] = {}
        self.masks: dict[str, torch.Tensor] = {}
        self.thresholds = {k: (float(a), float(b)) for k, (a, b) in thresholds.items()}
        for name, value in weights.items():
            tensor = torch.from_numpy(np.array(value, dtype=np.float32, copy=True))
            if channels_last and tensor.dim() == 4:
                tensor = tensor.contiguous(memory_format=torch.channels_last)
            frozen = name.endswith((".mean", ".var")) or name not in spec.get("trainable", (name,))
            self.params[name] = tensor if frozen else tensor.requires_grad_(True)
        for name in self.thresholds:
            self.masks[name] = (self.params[name].detach() != 0).to(torch.float32)
        if spec.get("twin"):
            from speed_torch_twin import twin_forward
            self._forward = lambda x: twin_forward(self, x)
        else:
            self._forward = self._layers

    def trainable(self) -> list[torch.Tensor]:
        return [p for p in self.params.values() if p.requires_grad]

    def w(self, name: str) -> torch.Tensor:
        """The tensor as the forward pass reads it: W * T when masked."""
        p = self.params[name]
        return masked(p, self.masks[name]) if name in self.masks else p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x)

    def _layers(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.spec["layers"]:
            op, n = layer["op"], layer.get("name", "")
            if op == "fc":
                x = F.linear(x, self.w(n + ".weight"), self.w(n + ".bias"))
            elif op == "conv":
                x = F.conv2d(x, self.w(n + ".weight"), self.w(n + ".bias"), stride=layer.get("stride", 1),
                             padding=layer.get("pad", 0), groups=layer.get("group", 1))
            elif op == "bn":
                x = F.batch_norm(x, None, None, self.params[n + ".scale"], self.params[n + ".shift"],
                                 training=True, eps=BATCH_NORM_EPS)
            elif op == "relu":
                x = F.relu(x)
            elif op == "maxpool":
                x = F.max_pool2d(x, layer["k"], layer["k"])
            elif op == "gap":
                x = x.mean((2, 3), keepdim=True)
            elif op == "flatten":
                x = torch.flatten(x, 1)
            else:
                raise ValueError(f"unknown op {op}")
        return x
