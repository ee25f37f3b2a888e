"""LRN and InstanceNormalization (no gradient builder in onnxruntime-training 1.19) as elementwise ops and means.

Notation: X is the node's input of shape (N, C, D1, ..., Dk), x one of its entries, r = rank(X).

LRN (size, alpha = 1e-4, beta = 0.75, bias = 1.0; same semantics in every opset)::

    y[n,c,.] = x[n,c,.] / (bias + alpha / size * sum_{i = c - lo}^{c + hi} x[n,i,.]^2) ^ beta
    lo = floor((size - 1) / 2), hi = ceil((size - 1) / 2) = size - 1 - lo   (channels outside [0, C) count 0)

  P = Pad(X * X, channels (lo, hi), constant 0) has C + size - 1 channels, the zeros standing for the channels
  outside [0, C); the window sum is sum_{i=0}^{size-1} P[:, i : i + C] (Slices with end i - (size - 1), or "to
  the end" for the last one, so C need not be known). Y = X / Pow(bias + alpha / size * window, beta).
  Every step keeps X's rank (known from shape inference, any r >= 2) and its sizes, so Y gets X's shape. An
  earlier form worked on Reshape(X, [0, 0, -1]) and reshaped back to Shape(X): with a symbolic batch Y's sizes
  were then unknown, and a MaxPool after the LRN (AlexNet's norm1 -> pool1) crashed the training step with
  SIGSEGV (measured).
  (An AveragePool over the channel axis would be shorter, but ORT's CPU AveragePool gradient is only right when
  every dimension of its input is static: a symbolic batch size crashes the training step with SIGFPE and
  symbolic spatial sizes give an all-zero gradient, measured; MaxPool's gradient is zero with symbolic spatial
  sizes too.) onnxruntime's own LRN kernel accepts only 4-D inputs and odd sizes; the rewrite follows the
  ONNX spec for any rank and size.

InstanceNormalization (epsilon = 1e-5; scale and B of shape (C,))::

    y[n,c,.] = scale[c] * (x[n,c,.] - mean[n,c]) / sqrt(var[n,c] + epsilon) + B[c]
    mean, var: over the spatial axes, var = mean((x - mean)^2) (biased)

  Over X3 = Reshape(X, [0, 0, -1]) (shape (N, C, M)): D = X3 - ReduceMean(X3, axis 2, keepdims);
  V = ReduceMean(D * D, axis 2, keepdims); Y3 = D / Sqrt(V + epsilon) * Reshape(scale, [-1, 1])
  + Reshape(B, [-1, 1]); Y = Reshape(Y3, Shape(X)). scale and B stay direct inputs under their own names.
  ReduceMean takes `axes` as an attribute up to opset 17 and as an input from opset 18; both are written.

LpNormalization (axis = -1, p = 2 or 1; no epsilon, as onnxruntime's kernel)::

    y = x / sqrt(sum_axis x^2)   (p = 2)        y = x / sum_axis |x|   (p = 1)

  with ReduceSum keeping the axis (its axes an attribute before opset 13, an input from 13). onnxruntime gives 0
  where the norm is 0 (measured), so the divisor is Where(norm == 0, 1, norm): x / 1 there, which is 0 (or, for
  p = 2, entries below 1e-19 whose squares underflow).
"""

from __future__ import annotations

import numpy as np
import onnx

from onnx_dns.graph import attribute
from onnx_dns.rewrites.emitter import Emitter, Skip


def lrn(e: Emitter, node: onnx.NodeProto) -> None:
    x, y = node.input[0], node.output[0]
    dtype = e.float_dtype(x)
    size = int(attribute(node, "size", 0))
    rank = e.rank(x)
    if size < 1 or rank < 2:
        raise Skip(f"its size {size} or input rank {rank} is invalid")
    alpha, beta, bias = attribute(node, "alpha", 1e-4), attribute(node, "beta", 0.75), attribute(node, "bias", 1.0)
    lo = (size - 1) // 2
    hi = size - 1 - lo
    square = e.op("Mul", [x, x], "square")
    rest = [0] * (rank - 2)
    pads = e.ints([0, lo, *rest, 0, hi, *rest], "pads")
    padded = e.op("Pad", [square, pads], "padded", mode="constant")  # (N, lo + C + hi, ...): zeros outside
    window = None
    for i in range(size):  # channels [c - lo + i] for c in [0, C): padded[:, i : i + C]
        end = i - (size - 1) if i < size - 1 else np.iinfo(np.int64).max
        piece = e.slice(padded, [i], [end], [1], f"shift{i}")
        window = piece if window is None else e.op("Add", [window, piece], f"window{i}")
    scaled = e.op("Mul", [window, e.const(np.array(alpha / size, dtype), "alpha_over_size")], "scaled")
    base = e.op("Add", [scaled, e.const(np.array(bias, dtype), "bias")], "base")
    denominator = e.op("Pow", [base, e.const(np.array(beta, dtype), "beta")], "denominator")
    e.op("Div", [x, denominator], "quotient", output=y)


def instance_norm(e: Emitter, node: onnx.NodeProto) -> None:
    x, scale, bias = node.input[0], node.input[1], node.input[2]
    dtype = e.float_dtype(x)
    epsilon = attribute(node, "epsilon", 1e-5)
    rows = e.reshape(x, [0, 0, -1], "rows")  # (N, C, M)
    centred = e.op("Sub", [rows, e.reduce_mean(rows, [2], "mean")], "centred")
    variance = e.reduce_mean(e.op("Mul", [centred, centred], "square"), [2], "variance")
    std = e.op("Sqrt", [e.op("Add", [variance, e.const(np.array(epsilon, dtype), "epsilon")], "var_eps")], "std")
    normalized = e.op("Div", [centred, std], "normalized")
    scaled = e.op("Mul", [normalized, e.reshape(scale, [-1, 1], "scale_column")], "scaled")
    shifted = e.op("Add", [scaled, e.reshape(bias, [-1, 1], "bias_column")], "shifted")
    e.reshape(shifted, e.op("Shape", [x], "shape"), "reshape", output=node.output[0])


def lp_norm(e: Emitter, node: onnx.NodeProto) -> None:
    x = node.input[0]
    dtype = e.float_dtype(x)
    p = int(attribute(node, "p", 2))
    if p not in (1, 2):
        raise Skip(f"its p = {p} is neither 1 nor 2")
    axis = int(attribute(node, "axis", -1))
    terms = e.op("Mul", [x, x], "square") if p == 2 else e.op("Abs", [x], "abs")
    total = e.over_axes("ReduceSum", terms, [axis], "sum", keepdims=1)
    norm = e.op("Sqrt", [total], "norm") if p == 2 else total
    zero, one = e.const(np.array(0, dtype), "zero"), e.const(np.array(1, dtype), "one")
    safe = e.op("Where", [e.op("Equal", [norm, zero], "is_zero"), one, norm], "divisor")
    e.op("Div", [x, safe], "normalized", output=node.output[0])
