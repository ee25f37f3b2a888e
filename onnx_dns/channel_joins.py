"""Channel rules of the operators that join or part values: elementwise binary ops, Concat and Split.

Add/Sub/Max/Min of two tracked values unify their groups (a residual block's branches must lose the same
channels); pruned channels stay zero when both sides are zero. Mul is zero where either side is. With a constant
operand, a per-channel constant is sliced (and masked under Add/Sub, so pruned channels stay zero); a constant
without channel extent passes. Concat lays its inputs' segments side by side; Split parts them again, anywhere:
a piece that cuts through a group holds a segment of it (YOLO's C2f splits cv1's channels in halves), so pruning
channel c of the group removes it from the piece that holds c, and the fold rewrites the Split's sizes.
Joining a piece with another value (a residual Add) places that value's group inside the piece's group; when
that cannot be done exactly (two pieces of one group added, groups that would overlap in part) both are refused.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx

from onnx_dns.channel_layout import Layout, Walk
from onnx_dns.graph import attribute

ADDING = {"Add", "Sub", "Max", "Min"}


def elementwise(walk: Walk, node: onnx.NodeProto, ins: list[Layout | None]) -> list[Layout | None]:
    a, b = (list(ins) + [None, None])[:2]
    if a is None and b is None:
        return [None]
    if a is not None and b is not None:
        return [_unify(walk, node, a, b)]
    tracked, index = (a, 0) if a is not None else (b, 1)
    other = node.input[1 - index]
    shape = walk.shape(other)
    k = tracked.axis - tracked.rank + len(shape or [])
    if (node.op_type == "Div" and index == 1) or shape is None or (k >= 0 and shape[k] is None):
        walk.refuse(tracked, f"{node.op_type} with an operand of unknown shape or a tracked divisor")
        return [None]
    rank = max(tracked.rank, len(shape))
    out = replace(tracked, axis=tracked.axis + rank - tracked.rank, rank=rank)
    if k < 0 or shape[k] == 1:
        const = walk.const(other)
        zero = tracked.zero if node.op_type in ("Mul", "Div") else (
            tracked.zero and const is not None and not np.any(const))
        return [replace(out, zero=zero)]
    if other not in walk.inits or shape[k] != tracked.outer * tracked.channels * tracked.inner:
        walk.refuse(tracked, f"{node.op_type} joins these channels with {other!r}, whose channels are left alone")
        return [None]
    masked = node.op_type in ADDING and walk.can_mask(other) and tracked.plain
    walk.slot(other, k, tracked, masked=masked)
    return [replace(out, zero=tracked.zero and (masked or node.op_type not in ADDING))]


def _unify(walk: Walk, node: onnx.NodeProto, a: Layout, b: Layout) -> Layout | None:
    sizes_a, sizes_b = [n for *_, n in a.segments], [n for *_, n in b.segments]
    if (a.axis - a.rank != b.axis - b.rank or (a.outer, a.inner) != (b.outer, b.inner) or sizes_a != sizes_b
            or node.op_type not in ADDING | {"Mul"}):
        for layout in (a, b):
            walk.refuse(layout, f"{node.op_type} of values whose channels do not line up")
        return None
    if not all(walk.union(sa, sb) for sa, sb in zip(a.segments, b.segments)):
        for layout in (a, b):
            walk.refuse(layout, f"{node.op_type} joins different channels of one group, or groups that overlap "
                                "in part")
        return None
    zero = (a.zero and b.zero) if node.op_type in ADDING else (a.zero or b.zero)
    rank = max(a.rank, b.rank)
    return replace(a, axis=a.axis + rank - a.rank, rank=rank, zero=zero)


def concat(walk: Walk, node: onnx.NodeProto, ins: list[Layout | None]) -> list[Layout | None]:
    tracked = [x for x in ins if x is not None]
    if not tracked:
        return [None]
    rank = tracked[0].rank
    axis = attribute(node, "axis", 0) % rank
    segments: list[tuple[int, int, int]] = []
    for name, x in zip(node.input, ins):
        shape = walk.shape(name)
        if x is None and shape and len(shape) == rank and shape[axis] is not None:
            segments.append((walk.new_group(shape[axis], fixed=True), 0, shape[axis]))
        elif x is not None and x.axis == axis and x.plain and x.rank == rank:
            segments += x.segments
        else:
            for layout in tracked:
                walk.refuse(layout, "Concat along another axis than the channels, or of unknown sizes")
            return [None]
    return [Layout(axis, rank, tuple(segments), zero=all(x.zero for x in tracked))]


def split(walk: Walk, node: onnx.NodeProto, ins: list[Layout | None]) -> list[Layout | None]:
    x, count = ins[0], len(node.output)
    if x is None:
        return [None] * count
    if attribute(node, "axis", 0) % x.rank != x.axis:
        return [x] * count
    given = walk.const(node.input[1]) if len(node.input) > 1 and node.input[1] else attribute(node, "split", None)
    if given is None and (len(node.input) > 1 and node.input[1] or x.channels % count):
        walk.refuse(x, "Split with computed sizes, or parts of unequal size")
        return [None] * count
    sizes = [int(s) for s in given] if given is not None else [x.channels // count] * count
    if not x.plain or sum(sizes) != x.channels or min(sizes) < 1:
        walk.refuse(x, "Split of a flattened channel axis, or with sizes that do not add up to its channels")
        return [None] * count
    outs = [replace(x, segments=piece) for piece in _pieces(x.segments, sizes)]
    walk.edit(node, "split", *outs)
    return outs


def _pieces(segments: tuple[tuple[int, int, int], ...], sizes: list[int]) -> list[tuple[tuple[int, int, int], ...]]:
    """The segments each part of `sizes` holds: whole segments, or a stretch of one where a cut falls inside it."""
    rest, pieces = list(segments), []
    for size in sizes:
        taken: list[tuple[int, int, int]] = []
        while size:
            group, start, n = rest.pop(0)
            if n > size:
                rest.insert(0, (group, start + size, n - size))
                n = size
            taken.append((group, start, n))
            size -= n
        pieces.append(tuple(taken))
    return pieces


JOIN_HANDLERS = {**{op: elementwise for op in ("Add", "Sub", "Mul", "Div", "Max", "Min")},
                 "Concat": concat, "Split": split}
