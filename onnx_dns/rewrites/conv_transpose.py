"""ConvTranspose (ConvTransposeGrad is CUDA-only in ORT 1.19) as a Conv over a zero-inserted input.

Per spatial axis with input length n, stride s, dilation d, kernel size k, pads (p_b, p_e), output_padding a::

    Y = Conv(Z, W', B, dilations d, group g, strides 1, pads (d (k - 1) - p_b, d (k - 1) - p_e + a - (s - 1)))
    n_out = s (n - 1) + a + d (k - 1) + 1 - p_b - p_e

- Z: X with s - 1 zeros after every entry (length n s): Reshape X (N, C, n1, 1, n2, 1, ...) -> Pad the unit axes
  to s - 1 trailing zeros -> Reshape (N, C, n1 s1, n2 s2, ...). y[o] = sum_i x[i] w[o + p_b - s i] is then a
  correlation of Z, padded by d (k - 1) - p_b in front, with the flipped kernel. The last s - 1 zeros of Z are
  already part of the end padding, hence its - (s - 1). A negative padding crops Z (Slice) instead.
- W' (C_out, C_in / g, k...): W (C_in, C_out / g, k...) -> Reshape (g, C_in / g, C_out / g, k...) -> Transpose
  the two channel axes -> Reshape (C_out, C_in / g, k...) -> Gather with reversed indices on each kernel axis
  (the flip; a Slice with step -1 fails in ORT 1.19's SliceGrad, measured). W and B stay direct inputs under
  their own names, so they train and are written back.
- auto_pad SAME_UPPER / SAME_LOWER (n_out = n s) and output_shape: total padding
  t = s (n - 1) + a + d (k - 1) + 1 - n_out split as the ONNX spec and onnxruntime do: SAME_UPPER puts
  t // 2 in front, SAME_LOWER and output_shape without auto_pad t - t // 2 (checked against onnxruntime's kernel
  with odd t); VALID: no padding.
The input's channel and spatial sizes and W's shape must be known numbers (the batch may be symbolic).
"""

from __future__ import annotations

import numpy as np
import onnx

from onnx_dns.graph import attribute
from onnx_dns.rewrites.emitter import Emitter, Skip, text_attribute


def _pads(node: onnx.NodeProto, n: list[int], k: list[int], s: list[int], d: list[int],
          a: list[int]) -> tuple[list[int], list[int]]:
    """(begin, end) paddings of the spatial axes, as onnxruntime derives them."""
    rank = len(n)
    auto_pad = text_attribute(node, "auto_pad", "NOTSET")
    output_shape = attribute(node, "output_shape", None)
    if auto_pad == "VALID":
        return [0] * rank, [0] * rank
    if auto_pad in ("SAME_UPPER", "SAME_LOWER") or output_shape is not None:
        wanted = list(output_shape)[-rank:] if output_shape is not None else [ni * si for ni, si in zip(n, s)]
        total = [max(0, si * (ni - 1) + ai + di * (ki - 1) + 1 - oi)
                 for ni, ki, si, di, ai, oi in zip(n, k, s, d, a, wanted)]
        front = [t // 2 if auto_pad == "SAME_UPPER" else t - t // 2 for t in total]
        return front, [t - f for t, f in zip(total, front)]
    pads = list(attribute(node, "pads", [0] * 2 * rank))
    return pads[:rank], pads[rank:]


def _flipped_kernel(e: Emitter, w: str, shape: list[int], group: int) -> str:
    c_in, c_out_group, kernel = shape[0], shape[1], shape[2:]
    if group == 1:
        swapped = e.transpose(w, [1, 0, *range(2, len(shape))], "kernel_swapped")
    else:
        grouped = e.reshape(w, [group, c_in // group, c_out_group, *kernel], "kernel_grouped")
        moved = e.transpose(grouped, [0, 2, 1, *range(3, len(shape) + 1)], "kernel_moved")
        swapped = e.reshape(moved, [group * c_out_group, c_in // group, *kernel], "kernel_swapped")
    for i, size in enumerate(kernel):
        swapped = e.gather(swapped, np.arange(size - 1, -1, -1), 2 + i, f"kernel_flip{i}")
    return swapped


def _zero_inserted(e: Emitter, x: str, c: int, n: list[int], s: list[int]) -> str:
    if all(si == 1 for si in s):
        return x
    rank = len(n)
    unit = e.reshape(x, [0, c, *[v for ni in n for v in (ni, 1)]], "interleave")
    ends = [0, 0, *[v for si in s for v in (0, si - 1)]]
    pads = e.ints([0] * (2 + 2 * rank) + ends, "zeros_pads")
    spread = e.op("Pad", [unit, pads], "zeros", mode="constant")
    return e.reshape(spread, [0, c, *[ni * si for ni, si in zip(n, s)]], "zero_inserted")


def conv_transpose(e: Emitter, node: onnx.NodeProto) -> None:
    x, w = node.input[0], node.input[1]
    e.float_dtype(x)
    rank = e.rank(x) - 2
    if rank < 1:
        raise Skip("its input has no spatial axis")
    c, *n = e.static_shape(x, range(1, rank + 2))
    w_shape = e.static_shape(w, range(rank + 2))
    group = int(attribute(node, "group", 1))
    k = list(attribute(node, "kernel_shape", w_shape[2:]))
    s = list(attribute(node, "strides", [1] * rank))
    d = list(attribute(node, "dilations", [1] * rank))
    a = list(attribute(node, "output_padding", [0] * rank))
    if k != w_shape[2:] or c != w_shape[0] or c % group:
        raise Skip(f"its kernel_shape {k}, weight shape {w_shape} and group {group} do not fit its input")
    begin, end = _pads(node, n, k, s, d, a)
    z = _zero_inserted(e, x, c, n, s)
    front = [di * (ki - 1) - pb for di, ki, pb in zip(d, k, begin)]
    back = [di * (ki - 1) - pe + ai - (si - 1) for di, ki, pe, ai, si in zip(d, k, end, a, s)]
    if any(v < 0 for v in front + back):
        lengths = [ni * si for ni, si in zip(n, s)]
        starts = [max(0, -f) for f in front]
        stops = [length - max(0, -b) for length, b in zip(lengths, back)]
        z = e.slice(z, starts, stops, list(range(2, rank + 2)), "cropped")
    inputs = [z, _flipped_kernel(e, w, w_shape, group)] + ([node.input[2]] if len(node.input) > 2 and
                                                           node.input[2] else [])
    pads = [max(0, v) for v in front] + [max(0, v) for v in back]
    e.op("Conv", inputs, "conv", output=node.output[0], dilations=d, group=group, kernel_shape=k, pads=pads,
         strides=[1] * rank)
