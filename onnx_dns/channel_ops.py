"""How pruning a channel propagates through each operator kind: one small handler per kind.

A handler reads the layouts of a node's inputs (None: no channels tracked) and returns its outputs' layouts,
recording on the walk the initializers sliced with the channels (`slot`), the attributes the fold rewrites
(`edit`) and the groups it cannot prove safe (`refuse`). See `onnx_dns.channel_groups` for the model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np
import onnx

from onnx_dns.channel_joins import JOIN_HANDLERS
from onnx_dns.channel_layout import Layout, Walk
from onnx_dns.graph import attribute

Outs = list[Layout | None]
Handler = Callable[[Walk, onnx.NodeProto, list[Layout | None]], Outs]

ZERO_KEEPING = {"Relu", "LeakyRelu", "Tanh", "Gelu", "Identity", "Dropout", "Neg", "Abs", "Elu", "Selu", "Celu",
                "HardSwish", "Mish", "Softsign", "Erf", "Sign", "Sin", "Atan", "Asinh", "Sinh", "Tan", "Relu6"}
ZERO_BREAKING = {"Sigmoid", "HardSigmoid", "Exp", "Cos", "Softplus", "Cosh"}
POOLS = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool"}


def refuse_unknown(walk: Walk, node: onnx.NodeProto, ins: list[Layout | None]) -> Outs:
    for layout in ins:
        walk.refuse(layout, f"{node.op_type} has no channel rule")
    return [None] * len(node.output)


def _read(walk: Walk, layout: Layout | None, weight: str, axis: int, want_axis: int) -> None:
    """A layer reads `layout` as its input channels: slice `weight` along `axis` when the layout fits."""
    if layout is None:
        return
    if layout.axis != want_axis or not layout.zero:
        walk.refuse(layout, "reads channels that are not zero where pruned" if layout.axis == want_axis
                    else f"reads channels on axis {want_axis}, not {layout.axis}")
        return
    walk.slot(weight, axis, layout, masked=False)


def _produce(walk: Walk, out_axis: int, rank: int, size: int, tensors: list[tuple[str, int]]) -> Layout:
    """A new group of `size` channels whose producing tensors are masked."""
    gid = walk.new_group(size)
    layout = Layout(out_axis, rank, ((gid, 0, size),))
    for tensor, axis in tensors:
        if not walk.can_mask(tensor):
            walk.refuse(layout, f"{tensor!r} is not trained")
        walk.slot(tensor, axis, layout, masked=True)
    return layout


def _bias(walk: Walk, node: onnx.NodeProto, index: int, size: int) -> list[tuple[str, int]] | None:
    """The bias input as a producing tensor; None when it exists but is not a per-channel initializer."""
    if len(node.input) <= index or not node.input[index]:
        return []
    shape = walk.shape(node.input[index])
    return [(node.input[index], 0)] if node.input[index] in walk.inits and shape == [size] else None


def conv(walk: Walk, node: onnx.NodeProto, ins: list[Layout | None]) -> Outs:
    x, weight = ins[0], node.input[1]
    shape, group = walk.shape(weight), attribute(node, "group", 1)
    if weight not in walk.inits or ins[1] is not None:
        return refuse_unknown(walk, node, ins)
    if group == 1:
        _read(walk, x, weight, 1, 1)
        bias = _bias(walk, node, 2, shape[0])
        out = _produce(walk, 1, len(shape), shape[0], [(weight, 0)] + (bias or []))
        if bias is None:
            walk.refuse(out, "bias is not a per-channel initializer")
        return [out]
    if x is not None and x.axis == 1 and x.plain and group == x.channels == shape[0] and shape[1] == 1:
        bias = _bias(walk, node, 2, shape[0])
        if bias is None:
            walk.refuse(x, "depthwise bias is not a per-channel initializer")
        for tensor, axis in [(weight, 0)] + (bias or []):
            walk.slot(tensor, axis, x, masked=walk.can_mask(tensor))
        walk.edit(node, "group", x)
        zero = all(walk.can_mask(t) for t, _ in bias or []) and (x.zero or walk.can_mask(weight))
        return [replace(x, zero=zero)]
    walk.refuse(x, f"grouped convolution ({group} groups) is not depthwise")
    return [None]


def gemm(walk: Walk, node: onnx.NodeProto, ins: list[Layout | None]) -> Outs:
    a, weight = ins[0], node.input[1]
    if weight not in walk.inits or attribute(node, "transA", 0) or ins[1] is not None:
        return refuse_unknown(walk, node, ins)
    trans_b = attribute(node, "transB", 0)
    shape = walk.shape(weight)
    if a is not None and a.rank != 2:
        walk.refuse(a, "Gemm input is not 2-D")
    _read(walk, a, weight, 1 if trans_b else 0, 1)
    size = shape[0] if trans_b else shape[1]
    bias = _bias(walk, node, 2, size)
    out = _produce(walk, 1, 2, size, [(weight, 0 if trans_b else 1)] + (bias or []))
    if bias is None:
        walk.refuse(out, "bias is not a per-channel initializer")
    return [out]


def matmul(walk: Walk, node: onnx.NodeProto, ins: list[Layout | None]) -> Outs:
    a, weight = ins[0], node.input[1]
    shape, out_shape = walk.shape(weight), walk.shape(node.output[0])
    if weight not in walk.inits or len(shape) != 2 or ins[1] is not None or not out_shape:
        return refuse_unknown(walk, node, ins)
    if a is not None:
        _read(walk, a, weight, 0, a.rank - 1)
    rank = len(out_shape)
    return [_produce(walk, rank - 1, rank, shape[1], [(weight, 1)])]


def unary(walk: Walk, node: onnx.NodeProto, ins: list[Layout | None]) -> Outs:
    x = ins[0]
    if x is None:
        return [None] * len(node.output)
    keeps = node.op_type in ZERO_KEEPING or (node.op_type == "Clip" and _clip_keeps_zero(walk, node))
    return [replace(x, zero=x.zero and keeps)] + [None] * (len(node.output) - 1)


def _clip_keeps_zero(walk: Walk, node: onnx.NodeProto) -> bool:
    bounds = [walk.const(n) if n else None for n in list(node.input[1:3])]
    low = bounds[0] if bounds and bounds[0] is not None else attribute(node, "min", None)
    high = bounds[1] if len(bounds) > 1 and bounds[1] is not None else attribute(node, "max", None)
    return (low is None or float(np.max(low)) <= 0) and (high is None or float(np.min(high)) >= 0)


def spatial(walk: Walk, node: onnx.NodeProto, ins: list[Layout | None]) -> Outs:
    """Pooling, Resize, Pad: channels pass through when the node leaves the channel axis alone."""
    x = ins[0]
    if x is None:
        return [None] * len(node.output)
    if x.axis != 1 or not x.plain or not _spares_channels(walk, node, x):
        walk.refuse(x, f"{node.op_type} changes the channel axis")
        return [None] * len(node.output)
    return [x] + [None] * (len(node.output) - 1)


def _spares_channels(walk: Walk, node: onnx.NodeProto, x: Layout) -> bool:
    if node.op_type in POOLS:
        return True
    if node.op_type == "Pad":
        pads = walk.const(node.input[1]) if len(node.input) > 1 else np.array(attribute(node, "pads", []))
        value = walk.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        return (pads is not None and len(node.input) < 4 and pads[1] == 0 and pads[x.rank + 1] == 0
                and (value is None or not np.any(value)))
    sizes = walk.const(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    scales = walk.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    return sizes is None and scales is not None and scales.size == x.rank and scales[1] == 1


def batchnorm(walk: Walk, node: onnx.NodeProto, ins: list[Layout | None]) -> Outs:
    x = ins[0]
    if x is None or any(ins[1:]):
        return refuse_unknown(walk, node, ins) if any(ins[1:]) else [None] * len(node.output)
    if x.axis != 1 or not x.plain:
        walk.refuse(x, "BatchNormalization over a flattened channel axis")
        return [None] * len(node.output)
    masked = [walk.can_mask(node.input[i]) for i in (1, 2)]
    for index, tensor in enumerate(node.input[1:5], start=1):
        walk.slot(tensor, 0, x, masked=index <= 2 and all(masked))
    return [replace(x, zero=all(masked))] + [None] * (len(node.output) - 1)


def transpose(walk: Walk, node: onnx.NodeProto, ins: list[Layout | None]) -> Outs:
    x = ins[0]
    if x is None:
        return [None]
    perm = list(attribute(node, "perm", list(reversed(range(x.rank)))))
    return [replace(x, axis=perm.index(x.axis))]


def flatten(walk: Walk, node: onnx.NodeProto, ins: list[Layout | None]) -> Outs:
    x = ins[0]
    if x is None:
        return [None]
    axis = attribute(node, "axis", 1) % x.rank if x.rank else 0
    out = _merged(walk, x, node.input[0], axis)
    return [out]


def _merged(walk: Walk, x: Layout, name: str, start: int) -> Layout | None:
    """The layout once axes start.. are merged into one; None (refused) when the sizes are unknown."""
    dims = walk.shape(name)
    if x.axis < start or not dims or any(d is None for d in dims[start:]):
        walk.refuse(x, "channels merged with the batch axis or with axes of unknown size")
        return None
    before = int(np.prod(dims[start:x.axis], dtype=np.int64))
    after = int(np.prod(dims[x.axis + 1:], dtype=np.int64))
    return replace(x, axis=start, rank=start + 1, outer=x.outer * before, inner=x.inner * after)


def reshape(walk: Walk, node: onnx.NodeProto, ins: list[Layout | None]) -> Outs:
    """Only the Reshape that flattens all axes after the first: [N, ...] -> [N, -1]."""
    x = ins[0]
    if x is None:
        return [None]
    target, dims = walk.const(node.input[1]), walk.shape(node.input[0])
    if target is None or target.size != 2 or x.axis < 1 or not _flattens(target, dims):
        walk.refuse(x, "Reshape other than a flatten into [N, -1] (or with a computed shape)")
        return [None]
    out = _merged(walk, x, node.input[0], 1)
    if out is not None:
        walk.edit(node, "reshape", out)
    return [out]


def _flattens(target: np.ndarray, dims: list[int | None] | None) -> bool:
    """Whether Reshape(target) keeps the first axis and merges all the others."""
    if not dims or any(d is None for d in dims[1:]):
        return False
    rest = int(np.prod(dims[1:], dtype=np.int64))
    first_kept = target[0] == 0 or (dims[0] is not None and target[0] == dims[0])
    return bool(target[1] == rest and (first_kept or target[0] == -1) or target[1] == -1 and first_kept)


HANDLERS: dict[str, Handler] = {
    "Conv": conv, "Gemm": gemm, "MatMul": matmul, "BatchNormalization": batchnorm, "Transpose": transpose,
    "Flatten": flatten, "Reshape": reshape, "Clip": unary, "Resize": spatial, "Pad": spatial,
    **{op: unary for op in ZERO_KEEPING | ZERO_BREAKING}, **{op: spatial for op in POOLS}, **JOIN_HANDLERS,
}


def reduce(walk: Walk, node: onnx.NodeProto, ins: list[Layout | None]) -> Outs:
    """ReduceMean/Max/Sum over axes other than the channels (a global pooling written as a reduction)."""
    x = ins[0]
    if x is None:
        return [None]
    given = walk.const(node.input[1]) if len(node.input) > 1 and node.input[1] else attribute(node, "axes", None)
    axes = {int(a) % x.rank for a in given} if given is not None else None
    if axes is None or x.axis in axes or not x.plain:
        walk.refuse(x, f"{node.op_type} over the channel axis")
        return [None]
    if attribute(node, "keepdims", 1):
        return [x]
    return [replace(x, axis=x.axis - sum(a < x.axis for a in axes), rank=x.rank - len(axes))]


HANDLERS.update({op: reduce for op in ("ReduceMean", "ReduceMax", "ReduceSum", "ReduceMin", "ReduceL2")})
