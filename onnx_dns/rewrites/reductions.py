"""Reductions without a CPU gradient in onnxruntime-training 1.19: maxima through TopK, sums through Add.

Sum and Mean (multidirectional broadcast, opsets 8/13)::

    Sum(x1, ..., xm) = (...((x1 + x2) + x3) + ...) + xm ; Sum(x1) = Identity(x1) ; Mean = Sum / m

  Add broadcasts the same way, and broadcasting is associative.

GlobalMaxPool, ReduceMax, ReduceMin (ReduceMax/Min have no gradient builder, TopK has, measured)::

    max over axes A of X  =  TopK(Reshape(Transpose(X, kept axes then A), [0, ..., 0, -1]), K=1, largest)

  The reduced axes are moved last and flattened into one, TopK takes the largest (ReduceMin: smallest) entry of
  each row, and Reshape drops the K axis; keepdims puts the reduced axes back as 1s with Unsqueeze. Kept sizes are
  copied (Reshape's 0), so a symbolic batch is fine. ReduceMax/Min take `axes` as an attribute up to opset 17 and
  as a constant input from 18 (no axes: every axis, unless noop_with_empty_axes, then Y = X).
  GlobalMaxPool is ReduceMax over the spatial axes with keepdims.

ReduceSumSquare::

    ReduceSumSquare(X, A) = ReduceSum(X * X, A)      (ReduceSum: axes an input from opset 13)
"""

from __future__ import annotations

import numpy as np
import onnx

from onnx_dns.graph import attribute, axes_are_input
from onnx_dns.rewrites.emitter import Emitter, Skip


def sum_(e: Emitter, node: onnx.NodeProto, output: str | None = None) -> str:
    inputs = list(node.input)
    for name in inputs:
        e.require_float_or_unknown(name)
    output = node.output[0] if output is None else output
    if len(inputs) == 1:
        return e.op("Identity", inputs, "identity", output=output)
    total = inputs[0]
    for i, term in enumerate(inputs[1:], start=1):
        last = i == len(inputs) - 1
        total = e.op("Add", [total, term], f"add{i}", output=output if last else None)
    return total


def mean(e: Emitter, node: onnx.NodeProto) -> None:
    dtype = e.float_dtype(node.input[0])
    total = sum_(e, node, output=e.name("sum"))
    e.op("Div", [total, e.const(np.array(len(node.input), dtype), "count")], "mean", output=node.output[0])


def global_max_pool(e: Emitter, node: onnx.NodeProto) -> None:
    x = node.input[0]
    e.require_float_or_unknown(x)
    rank = e.rank(x)
    if rank < 3:
        raise Skip(f"its input has rank {rank}, below 3")
    _reduce_extreme(e, x, list(range(2, rank)), rank, True, 1, node.output[0])


def reduce_max(e: Emitter, node: onnx.NodeProto) -> None:
    _reduce_node(e, node, largest=1)


def reduce_min(e: Emitter, node: onnx.NodeProto) -> None:
    _reduce_node(e, node, largest=0)


def _reduce_node(e: Emitter, node: onnx.NodeProto, largest: int) -> None:
    x = node.input[0]
    e.float_dtype(x)
    rank = e.rank(x)
    axes = _axes(e, node)
    if axes is None:
        e.op("Identity", [x], "identity", output=node.output[0])
        return
    axes = sorted({a % rank for a in axes} if axes else range(rank))
    _reduce_extreme(e, x, axes, rank, bool(attribute(node, "keepdims", 1)), largest, node.output[0])


def _axes(e: Emitter, node: onnx.NodeProto) -> list[int] | None:
    """The reduced axes ([] for all of them), or None when the node is the identity (noop_with_empty_axes)."""
    if not axes_are_input(node.op_type, e.opset):
        axes = attribute(node, "axes", [])
    else:
        given = e.constant(node.input[1]) if len(node.input) > 1 else None
        axes = [] if given is None else [int(a) for a in given.reshape(-1)]
    if not axes and attribute(node, "noop_with_empty_axes", 0):
        return None
    return list(axes)


def _reduce_extreme(e: Emitter, x: str, axes: list[int], rank: int, keepdims: bool, largest: int,
                    output: str) -> None:
    kept = [a for a in range(rank) if a not in axes]
    moved = e.transpose(x, kept + axes, "moved")
    rows = e.reshape(moved, [0] * len(kept) + [-1], "rows")
    values = e.max_over_last_axis(rows, "topk", largest)
    if not keepdims:
        e.reshape(values, [0] * len(kept), "reshape", output=output)
        return
    squeezed = e.reshape(values, [0] * len(kept), "squeeze")
    e.over_axes("Unsqueeze", squeezed, axes, "unsqueeze", output=output)


def reduce_sum_square(e: Emitter, node: onnx.NodeProto) -> None:
    x = node.input[0]
    e.require_float_or_unknown(x)
    square = e.op("Mul", [x, x], "square")
    keep = {"keepdims": attribute(node, "keepdims", 1)}
    if e.opset >= 18:
        keep["noop_with_empty_axes"] = attribute(node, "noop_with_empty_axes", 0)
    if not axes_are_input("ReduceSum", e.opset):
        axes = attribute(node, "axes", None)
        keep.update({} if axes is None else {"axes": axes})
        e.op("ReduceSum", [square], "sum", output=node.output[0], **keep)
        return
    axes = _axes(e, node)
    if axes is None:
        raise Skip("noop_with_empty_axes with no axes is not supported")
    inputs = [square] + ([e.ints(axes, "axes")] if axes else [])
    e.op("ReduceSum", inputs, "sum", output=node.output[0], **keep)
