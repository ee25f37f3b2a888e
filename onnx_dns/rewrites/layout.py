"""Ops that only move entries, rewritten into Reshape, Transpose and Slice (which have CPU gradients).

Split: ORT 1.19's gradient of a Split is wrong when an output does not reach the loss (the missing output
gradient is read uninitialized: values up to 1e35, measured), so every Split whose part sizes are known becomes
one Slice per output that something reads: output i = Slice(X, start_i, start_i + size_i, axis). (With Slices
for the unread outputs too the gradient is still wrong, shifted onto other channels: measured.) Sizes come from
the `split` attribute (opsets 11-12) or constant input (13+), else equal parts of the axis's static size
(opset 18 num_outputs: ceil(d / n) each, the last one smaller).

DepthToSpace (blocksize b; X of shape (N, C, H, W))::

    DCR: Reshape(X, [N, b, b, C/b^2, H, W]) -> Transpose(0, 3, 4, 1, 5, 2) -> Reshape([N, C/b^2, H*b, W*b])
    CRD: Reshape(X, [N, C/b^2, b, b, H, W]) -> Transpose(0, 1, 4, 2, 5, 3) -> Reshape([N, C/b^2, H*b, W*b])

SpaceToDepth (blocksize b)::

    Reshape(X, [N, C, H/b, b, W/b, b]) -> Transpose(0, 3, 5, 1, 2, 4) -> Reshape([N, C*b*b, H/b, W/b])

  (the ONNX definitions, word for word). C, H and W must be known numbers; N may be symbolic (Reshape's 0).

Pad in reflect, edge or wrap mode (ORT 1.19's Pad gradient supports constant mode only): per padded axis of
length n with pads (b, e), output j reads input p = j - b mapped into [0, n): edge clamp(p, 0, n - 1); reflect
|p| folded with period 2 (n - 1) (the edge is not repeated); wrap p mod n. So Y = Gather(X, indices, axis) on
each padded axis, with constant indices. Pads (and axes, opset 18+) must be constants, the padded axes' lengths
known numbers.
"""

from __future__ import annotations

import numpy as np
import onnx

from onnx_dns.graph import attribute, axes_are_input
from onnx_dns.rewrites.emitter import Emitter, Skip, text_attribute


def split(e: Emitter, node: onnx.NodeProto) -> None:
    x = node.input[0]
    rank = e.rank(x)
    axis = attribute(node, "axis", 0) % rank
    sizes = _split_sizes(e, node, x, axis)
    if len(sizes) != len(node.output):
        raise Skip(f"it has {len(node.output)} outputs but {len(sizes)} split sizes")
    start = 0
    for i, (size, output) in enumerate(zip(sizes, node.output)):
        if output in e.facts.read:
            e.slice(x, [start], [start + size], [axis], f"part{i}", output=output)
        start += size


def _split_sizes(e: Emitter, node: onnx.NodeProto, x: str, axis: int) -> list[int]:
    if not axes_are_input("Split", e.opset):
        given = attribute(node, "split", None)
    else:
        constant = e.constant(node.input[1]) if len(node.input) > 1 else None
        given = None if constant is None else constant.reshape(-1).tolist()
    if given is not None:
        return [int(s) for s in given]
    (length,) = e.static_shape(x, [axis])
    parts = attribute(node, "num_outputs", len(node.output))
    each = -(-length // parts) if e.opset >= 18 else length // parts
    return [min(each, length - i * each) for i in range(parts)]


def _block(e: Emitter, node: onnx.NodeProto) -> tuple[int, int, int, int]:
    x = node.input[0]
    if e.rank(x) != 4:
        raise Skip(f"its input has rank {e.rank(x)}, not 4")
    c, h, w = e.static_shape(x, [1, 2, 3])
    return int(attribute(node, "blocksize", 0)), c, h, w


def depth_to_space(e: Emitter, node: onnx.NodeProto) -> None:
    b, c, h, w = _block(e, node)
    if b < 1 or c % (b * b):
        raise Skip(f"its channel count {c} is not a multiple of blocksize^2 = {b * b}")
    if text_attribute(node, "mode", "DCR") == "DCR":
        split_shape, perm = [0, b, b, c // (b * b), h, w], [0, 3, 4, 1, 5, 2]
    else:
        split_shape, perm = [0, c // (b * b), b, b, h, w], [0, 1, 4, 2, 5, 3]
    blocks = e.reshape(node.input[0], split_shape, "blocks")
    moved = e.transpose(blocks, perm, "moved")
    e.reshape(moved, [0, c // (b * b), h * b, w * b], "reshape", output=node.output[0])


def space_to_depth(e: Emitter, node: onnx.NodeProto) -> None:
    b, c, h, w = _block(e, node)
    if b < 1 or h % b or w % b:
        raise Skip(f"its spatial sizes {h}x{w} are not multiples of blocksize {b}")
    blocks = e.reshape(node.input[0], [0, c, h // b, b, w // b, b], "blocks")
    moved = e.transpose(blocks, [0, 3, 5, 1, 2, 4], "moved")
    e.reshape(moved, [0, c * b * b, h // b, w // b], "reshape", output=node.output[0])


def pad_sources(mode: str, n: int, before: int, after: int) -> np.ndarray:
    """The input index each output entry of one padded axis reads (see the module docstring)."""
    p = np.arange(-before, n + after)
    if mode == "edge":
        return np.clip(p, 0, n - 1)
    if mode == "wrap":
        return p % n
    if n == 1:
        return np.zeros_like(p)
    folded = np.abs(p) % (2 * (n - 1))
    return np.where(folded > n - 1, 2 * (n - 1) - folded, folded)


def pad(e: Emitter, node: onnx.NodeProto) -> None:
    mode = text_attribute(node, "mode", "constant")
    if mode == "constant":
        raise Skip("constant mode has a gradient of its own")
    if mode not in ("reflect", "edge", "wrap"):
        raise Skip(f"its mode {mode} is unknown")
    x = node.input[0]
    rank = e.rank(x)
    pads = e.constant(node.input[1]) if len(node.input) > 1 else None
    if pads is None:
        raise Skip("it has no pads input")
    given = e.constant(node.input[3]) if len(node.input) > 3 else None
    axes = list(range(rank)) if given is None else [int(a) % rank for a in given.reshape(-1)]
    pads = [int(v) for v in pads.reshape(-1)]
    moves = [(a, b, f) for a, b, f in zip(axes, pads[:len(axes)], pads[len(axes):]) if b or f]
    lengths = e.static_shape(x, [a for a, _, _ in moves])
    current = x
    for i, ((axis, before, after), n) in enumerate(zip(moves, lengths)):
        output = node.output[0] if i == len(moves) - 1 else None
        current = e.gather(current, pad_sources(mode, n, before, after), axis, f"axis{axis}", output)
    if not moves:
        e.op("Identity", [x], "identity", output=node.output[0])
