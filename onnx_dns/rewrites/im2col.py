"""A dense 2-D Conv with a small kernel as im2col and one MatMul, for speed: its training step runs faster than
onnxruntime-training 1.19's CPU ConvGrad, which unfolds and multiplies image by image.

With input X (N, C, H, W), weight W (O, C, k_h, k_w), bias B, strides s, dilations d and pads p (as in the
depthwise note of `benchmarks/results/im2col_conv.md`), P = X padded by zeros:

    Y[n, o, i, j] = B[o] + sum_{u, v, c} W[o, c, u, v] * P[n, c, s_h i + d_h u, s_w j + d_w v]

Each tap (u, v) is a Slice of P (start d u, step s, H_out or W_out entries); the k_h k_w slices, concatenated on
the channel axis, are the columns (N, k_h k_w C, H_out W_out) in (u, v, c) order, and Y is the MatMul of W laid
out the same way, (O, k_h k_w C), with them. W (or its masked product W * T) stays a direct input; Pad, Slice,
Concat, Reshape, Transpose and MatMul all have CPU gradients. Only where it was measured faster is a node
rewritten: at least MIN_CHANNELS input channels, a kernel larger than 1x1, strides of 1 or 2, and columns of at
most MAX_COLUMN_BYTES a sample (they take k_h k_w times the input's memory). Others keep the Conv.
"""

from __future__ import annotations

import onnx

from onnx_dns.graph import attribute
from onnx_dns.rewrites.emitter import Emitter, Skip, text_attribute

MIN_CHANNELS = 32  # measured slower below: LeNet-5's 1 and 20 channels at 5x5 (0.86x, 0.88x), equal at 3
MAX_STRIDE = 2  # ORT 1.19's SliceGrad is measured right for steps 1 and 2 only
MAX_COLUMN_BYTES = 4 << 20  # per sample; a 64-channel 32x32 input at 3x3 takes 2.4 MB


def _geometry(e: Emitter, node: onnx.NodeProto) -> tuple[int, int, list[int], list[int], list[int], list[int],
                                                          list[int]]:
    """(input channels, output channels, input sizes, kernel, strides, dilations, pads), or Skip."""
    x, w = node.input[0], node.input[1]
    if e.rank(x) != 4:
        raise Skip("only 2-D convolutions are rewritten")
    c, h, width = e.static_shape(x, (1, 2, 3))
    w_shape = e.static_shape(w, range(4))
    if int(attribute(node, "group", 1)) != 1:
        raise Skip("grouped convolutions keep onnxruntime's ConvGrad")
    if c < MIN_CHANNELS or w_shape[2] * w_shape[3] == 1:
        raise Skip(f"{c} input channels at {w_shape[2]}x{w_shape[3]} train as fast with onnxruntime's ConvGrad")
    auto_pad = text_attribute(node, "auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "VALID"):
        raise Skip(f"auto_pad {auto_pad} is not rewritten")
    kernel = list(attribute(node, "kernel_shape", w_shape[2:]))
    strides = list(attribute(node, "strides", [1, 1]))
    dilations = list(attribute(node, "dilations", [1, 1]))
    pads = [0] * 4 if auto_pad == "VALID" else list(attribute(node, "pads", [0] * 4))
    if kernel != w_shape[2:] or max(strides) > MAX_STRIDE:
        raise Skip(f"kernel_shape {kernel} or strides {strides} are not rewritten")
    return c, w_shape[0], [h, width], kernel, strides, dilations, pads


def im2col_conv(e: Emitter, node: onnx.NodeProto) -> None:
    x, w = node.input[0], node.input[1]
    itemsize = e.float_dtype(x).itemsize
    c, o, sizes, kernel, strides, dilations, pads = _geometry(e, node)
    padded = [n + pads[a] + pads[a + 2] for a, n in enumerate(sizes)]
    out = [(p - d * (k - 1) - 1) // s + 1 for p, d, k, s in zip(padded, dilations, kernel, strides)]
    if min(out) < 1:
        raise Skip(f"its output would be empty ({out})")
    taps = kernel[0] * kernel[1]
    if taps * c * out[0] * out[1] * itemsize > MAX_COLUMN_BYTES:
        raise Skip(f"its columns would take {taps * c * out[0] * out[1] * itemsize / 2**20:.0f} MB a sample")
    if any(pads):
        pads_input = e.ints([0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]], "pads")
        x = e.op("Pad", [x, pads_input], "padded", mode="constant")
    shifted = []
    for u in range(kernel[0]):
        for v in range(kernel[1]):
            t = u * kernel[1] + v
            starts = [dilations[0] * u, dilations[1] * v]
            ends = [s + st * (n - 1) + 1 for s, st, n in zip(starts, strides, out)]
            ins = [x, e.ints(starts, f"tap{t}_starts"), e.ints(ends, f"tap{t}_ends"), e.ints([2, 3], f"tap{t}_axes"),
                   e.ints(strides, f"tap{t}_steps")]
            shifted.append(e.op("Slice", ins, f"tap{t}"))
    stacked = e.op("Concat", shifted, "stacked", axis=1) if taps > 1 else shifted[0]
    columns = e.reshape(stacked, [0, taps * c, out[0] * out[1]], "columns")
    rows = e.reshape(e.transpose(w, [0, 2, 3, 1], "by_tap"), [o, taps * c], "rows")
    product = e.op("MatMul", [rows, columns], "product")
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if bias is None:
        e.reshape(product, [0, o, out[0], out[1]], "output", output=node.output[0])
    else:
        image = e.reshape(product, [0, o, out[0], out[1]], "image")
        e.op("Add", [image, e.reshape(bias, [1, o, 1, 1], "bias")], "output", output=node.output[0])
