"""A hand-written PyTorch twin of PP-OCRv4's text-line recognizer (SVTR-LCNet), for the speed benchmark.

The architecture, read off the ONNX graph (paddle2onnx export of the reparameterized PPLCNetV3 + SVTR neck):
- stem: 3x3 conv stride 2 (no bias), BatchNorm;
- 14 blocks of depthwise conv + pointwise conv; each conv is a unit conv(w, b) -> a0 * y + a1 -> hardswish ->
  h0 * y + h1 (learnable scalars); blocks 11 and 12 put squeeze-excitation (GAP, 1x1, ReLU, 1x1, hardsigmoid)
  between their two convs;
- neck: 3x2 average pool; conv 1x3 + BN + swish; conv 1x1 + BN + swish; two pre-norm transformer blocks (8 heads
  of 15, MLP 240 with swish); LayerNorm; conv 1x1 + BN + swish; concat with the pooled input; conv 1x3 + BN +
  swish; conv 1x1 + BN + swish;
- head: linear 120 -> 6625 per position (the model's Softmax is left out: the loss reads its logits).
Weights are taken by name in the order the ONNX graph first reads them (speed_recognizer.graph_order), through
`DnsNet.w`, so masked tensors enter as W * T. Fused PyTorch kernels stand for the exporter's decompositions
(F.hardswish, F.layer_norm, F.silu, F.scaled_dot_product_attention), as a PyTorch engineer would write them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# (kernel, stride, squeeze-excitation, pointwise output channels) of the 14 depthwise + pointwise blocks
BLOCKS = ((3, 1, False, 32), (3, 1, False, 64), (3, 1, False, 64), (3, (2, 1), False, 128), (3, 1, False, 128),
          (3, (1, 2), False, 240), (5, 1, False, 240), (5, 1, False, 240), (5, 1, False, 240), (5, 1, False, 240),
          (5, (2, 1), True, 480), (5, 1, True, 480), (5, (2, 1), False, 480), (5, 1, False, 480))
HEADS = 8
EPS_BN, EPS_LN, EPS_LAST_LN = 1e-5, 1e-5, 1e-6


class Reader:
    """Hands out the model's tensors in graph order (masked ones as W * T)."""

    def __init__(self, net, training: bool) -> None:
        self.net = net
        self.training = training
        self.names = iter(net.spec["order"])

    def __call__(self) -> torch.Tensor:
        return self.net.w(next(self.names))

    def batch_norm(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = self(), self()
        mean, var = (self.net.params[next(self.names)] for _ in range(2))
        if self.training:  # the batch's statistics, running statistics left alone, as the ONNX training graph
            mean = var = None
        return F.batch_norm(x, mean, var, scale, shift, training=self.training, eps=EPS_BN)

    def layer_norm(self, x: torch.Tensor, eps: float) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], self(), self(), eps)

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        return torch.matmul(x, self()) + self()


def unit(read: Reader, x: torch.Tensor, stride=1, groups: int = 1) -> torch.Tensor:
    """conv(w, b), learnable affine, hardswish, learnable affine."""
    weight, bias = read(), read()
    x = F.conv2d(x, weight, bias, stride=stride, padding=weight.shape[-1] // 2, groups=groups)
    x = F.hardswish(read() * x + read())
    return read() * x + read()


def squeeze_excite(read: Reader, x: torch.Tensor) -> torch.Tensor:
    s = F.relu(F.conv2d(x.mean((2, 3), keepdim=True), read(), read()))
    return x * F.hardsigmoid(F.conv2d(s, read(), read()))


def conv_bn_swish(read: Reader, x: torch.Tensor, padding=0) -> torch.Tensor:
    return F.silu(read.batch_norm(F.conv2d(x, read(), None, padding=padding)))


def transformer_block(read: Reader, z: torch.Tensor) -> torch.Tensor:
    n, t, c = z.shape
    qkv = read.linear(read.layer_norm(z, EPS_LN)).reshape(n, t, 3, HEADS, c // HEADS).permute(2, 0, 3, 1, 4)
    attended = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
    z = z + read.linear(attended.transpose(1, 2).reshape(n, t, c))
    return z + read.linear(F.silu(read.linear(read.layer_norm(z, EPS_LN))))


def twin_forward(net, x: torch.Tensor, training: bool = True) -> torch.Tensor:
    """Logits [N, T, classes] of the recognizer for images [N, 3, 48, 320]."""
    read = Reader(net, training)
    x = read.batch_norm(F.conv2d(x, read(), None, stride=2, padding=1))
    for kernel, stride, se, out in BLOCKS:
        x = unit(read, x, stride, groups=x.shape[1])
        if se:
            x = squeeze_excite(read, x)
        x = unit(read, x)
    pooled = F.avg_pool2d(x, (3, 2), (3, 2))
    z = conv_bn_swish(read, conv_bn_swish(read, pooled, (0, 1)))
    n, c, h, w = z.shape
    z = z.flatten(2).transpose(1, 2)
    for _ in range(2):
        z = transformer_block(read, z)
    z = read.layer_norm(z, EPS_LAST_LN).reshape(n, h, w, c).permute(0, 3, 1, 2)
    z = torch.cat([pooled, conv_bn_swish(read, z)], 1)
    z = conv_bn_swish(read, conv_bn_swish(read, z, (0, 1)))
    return read.linear(z.squeeze(2).transpose(1, 2))


@torch.no_grad()
def reference_error(net, work: Path) -> float:
    """Largest absolute difference between the twin's probabilities (BatchNorm on running statistics) and
    onnxruntime's output of the real model on the same two images (reference.npz written by speed_recognizer)."""
    with np.load(work / "reference.npz") as data:
        x, expected = torch.from_numpy(data["x"]), data["y"]
    return float(np.abs(torch.softmax(twin_forward(net, x, training=False), -1).numpy() - expected).max())
