"""Depthwise Conv (group == channels, one filter per channel) as shifted-slice multiply-adds, for speed.

onnxruntime-training 1.19's CPU ConvGrad runs an im2col and a small GEMM per image and per group, so a depthwise
conv (C groups of one channel) is its worst case. With input X (N, C, H, W), weight W (C, 1, k_h, k_w), bias B,
strides (s_h, s_w), dilations (d_h, d_w) and pads (p_t, p_l, p_b, p_r):

    Y[n, c, i, j] = B[c] + sum_{u < k_h, v < k_w} W[c, 0, u, v] * P[n, c, s_h i + d_h u, s_w j + d_w v]

with P = X padded by zeros. Each (u, v) term is a Slice of P (start d u, step s, H_out or W_out entries) times
the column W[:, 0, u, v] broadcast as (1, C, 1, 1), and the terms are summed by Add. The column is a Gather of
W transposed to (k_h k_w, C) and reshaped to (k_h k_w, 1, C, 1, 1), so W (or its masked product W * T) stays a
direct input and receives the gradient through Gather; Pad (constant), Slice (step 1 or 2), Mul, Add, Transpose,
Reshape and Gather all have CPU gradients. H_out = floor((H + p_t + p_b - d_h (k_h - 1) - 1) / s_h) + 1, and
likewise W_out. auto_pad NOTSET or VALID, 2-D, a depth multiplier of 1 and strides of 1 or 2 are handled;
other nodes are skipped and keep the Conv.
"""

from __future__ import annotations

import onnx

from onnx_dns.graph import attribute
from onnx_dns.rewrites.emitter import Emitter, Skip, text_attribute

MAX_STRIDE = 2  # ORT 1.19's SliceGrad is measured right for steps 1 and 2 only


def _geometry(e: Emitter, node: onnx.NodeProto) -> tuple[int, list[int], list[int], list[int], list[int], list[int]]:
    """(channels, input sizes, kernel, strides, dilations, pads) of a depthwise 2-D Conv, or Skip."""
    x, w = node.input[0], node.input[1]
    if e.rank(x) != 4:
        raise Skip("only 2-D depthwise convolutions are rewritten")
    c, h, width = e.static_shape(x, (1, 2, 3))
    w_shape = e.static_shape(w, range(4))
    group = int(attribute(node, "group", 1))
    if group == 1 or group != c or w_shape[:2] != [c, 1]:
        raise Skip(f"it is not depthwise with one filter per channel (group {group}, weight {w_shape})")
    auto_pad = text_attribute(node, "auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "VALID"):
        raise Skip(f"auto_pad {auto_pad} is not rewritten")
    kernel = list(attribute(node, "kernel_shape", w_shape[2:]))
    strides = list(attribute(node, "strides", [1, 1]))
    dilations = list(attribute(node, "dilations", [1, 1]))
    pads = [0] * 4 if auto_pad == "VALID" else list(attribute(node, "pads", [0] * 4))
    if kernel != w_shape[2:] or max(strides) > MAX_STRIDE:
        raise Skip(f"kernel_shape {kernel} or strides {strides} are not rewritten")
    return c, [h, width], kernel, strides, dilations, pads


def depthwise_conv(e: Emitter, node: onnx.NodeProto) -> None:
    x, w = node.input[0], node.input[1]
    e.float_dtype(x)
    c, sizes, kernel, strides, dilations, pads = _geometry(e, node)
    padded = [n + pads[a] + pads[a + 2] for a, n in enumerate(sizes)]
    out = [(p - d * (k - 1) - 1) // s + 1 for p, d, k, s in zip(padded, dilations, kernel, strides)]
    if min(out) < 1:
        raise Skip(f"its output would be empty ({out})")
    if any(pads):
        pads_input = e.ints([0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]], "pads")
        x = e.op("Pad", [x, pads_input], "padded", mode="constant")
    taps = kernel[0] * kernel[1]
    columns = e.reshape(e.transpose(e.reshape(w, [c, taps], "taps"), [1, 0], "by_tap"), [taps, 1, c, 1, 1],
                        "columns")
    total = None
    for u in range(kernel[0]):
        for v in range(kernel[1]):
            t = u * kernel[1] + v
            starts = [dilations[0] * u, dilations[1] * v]
            ends = [s + st * (o - 1) + 1 for s, st, o in zip(starts, strides, out)]
            ins = [x, e.ints(starts, f"tap{t}_starts"), e.ints(ends, f"tap{t}_ends"), e.ints([2, 3], f"tap{t}_axes"),
                   e.ints(strides, f"tap{t}_steps")]
            shifted = e.op("Slice", ins, f"tap{t}")
            column = e.op("Gather", [columns, e.const(t, f"tap{t}_index")], f"tap{t}_weight", axis=0)
            term = e.op("Mul", [shifted, column], f"tap{t}_term")
            total = term if total is None else e.op("Add", [total, term], f"sum{t}")
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if bias is None:
        e.op("Identity", [total], "output", output=node.output[0])
    else:
        e.op("Add", [total, e.reshape(bias, [1, c, 1, 1], "bias")], "output", output=node.output[0])
