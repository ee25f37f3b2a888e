"""Channel dependency groups: which tensors' channels must be removed together (after Torch-Pruning's
DependencyGraph, written for ONNX graphs).

A group starts at each producer of output channels (a Conv with group 1, a Gemm, a MatMul with a 2-D initializer
weight). Walking the graph in order, every value carries a `Layout`: which of its axes holds channels, and which
groups those channels belong to (several after a Concat; spread over a flattened axis after Flatten). One small
handler per operator kind (`onnx_dns.channel_ops`) says how the layout passes through the node and which
initializers are sliced with it: a residual Add unifies two groups, BatchNormalization and depthwise convs carry
theirs, the next Conv or Gemm reads them as input channels.

A pruned channel must be exactly zero wherever it is read, so that slicing it away changes nothing: the producer's
weights and bias, the BatchNorm scale and shift and a depthwise conv's weights are masked (`Slot.masked`), and
each layout records whether pruned channels are still zero (a Sigmoid or an added constant breaks that). A group
is refused, and logged, when it reaches a graph output, an operator without a handler, or a reader while not zero:
it is left alone, never guessed.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import onnx

from onnx_dns.channel_layout import ChannelGroup, ChannelGroups, Layout, Walk
from onnx_dns.channel_ops import HANDLERS, refuse_unknown
from onnx_dns.graph import node_label

log = logging.getLogger(__name__)


def find_channel_groups(model: onnx.ModelProto, maskable: set[str] | None = None) -> ChannelGroups:
    """The channel groups of `model` (not modified). `maskable` names the initializers that may carry a mask
    (trained ones); None allows all."""
    walk = Walk(model, maskable)
    for index, node in enumerate(model.graph.node):
        walk.label = node_label(node, index)
        ins = [walk.layouts.get(name) if name else None for name in node.input]
        handler = HANDLERS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        outs = handler(walk, node, ins) if handler else refuse_unknown(walk, node, ins)
        for name, layout in zip(node.output, outs):
            if layout is not None and name:
                walk.layouts[name] = layout
    for output in model.graph.output:
        walk.label = f"graph output {output.name!r}"
        walk.refuse(walk.layouts.get(output.name), "the model's outputs keep their shape")
    for index, node in enumerate(model.graph.node):
        walk.label = node_label(node, index)
        for name in _subgraph_reads(node):
            walk.refuse(walk.layouts.get(name), f"read inside the body of {node.op_type}")
    return _assemble(walk)


def _subgraph_reads(node: onnx.NodeProto) -> set[str]:
    """Names the node's subgraphs (If, Loop, Scan bodies) read, their own included: reads not in node.input."""
    names: set[str] = set()
    for attr in node.attribute:
        for graph in [attr.g] if attr.HasField("g") else list(attr.graphs):
            for inner in graph.node:
                names.update(inner.input)
                names |= _subgraph_reads(inner)
    return names


def _assemble(walk: Walk) -> ChannelGroups:
    """Resolve the union-find, refuse groups whose slots cannot be masked or sliced consistently."""
    def resolve(layout: Layout) -> Layout:
        located = [(walk.locate(g), start, n) for g, start, n in layout.segments]
        return replace(layout, segments=tuple((root, offset + start, n) for (root, offset), start, n in located))

    slots = [replace(s, layout=resolve(s.layout)) for s in walk.slots]
    edits = [replace(e, layouts=tuple(resolve(x) for x in e.layouts)) for e in walk.edits]
    seen: dict[tuple[str, int], Layout] = {}
    for slot in slots:
        key = (slot.tensor, slot.axis)
        if key in seen and seen[key] != slot.layout:
            walk.refuse(slot.layout, f"{slot.tensor!r} would be sliced two ways")
            walk.refuse(seen[key], f"{slot.tensor!r} would be sliced two ways")
        seen[key] = slot.layout
        if slot.masked and (len(slot.layout.segments) != 1 or not slot.layout.plain):
            walk.label = slot.tensor
            walk.refuse(slot.layout, "a masked tensor spans several groups (after a Concat)")
    groups: dict[int, ChannelGroup] = {}
    for slot in slots:
        if slot.masked:
            gid, start, count = slot.layout.segments[0]
            group = groups.setdefault(gid, ChannelGroup(walk.names[gid], walk.sizes[gid]))
            if (slot.tensor, slot.axis) not in group.masked:
                group.masked.append((slot.tensor, slot.axis))
                group.spans[slot.tensor] = (start, count)
    refused = {}
    for gid in range(len(walk.parent)):
        why = walk.refusals.get(walk.find(gid)) if walk.find(gid) == gid else None
        if why:
            refused[walk.names[gid]] = why
            log.info("channels of %s are left alone: %s", walk.names[gid], why)
    kept = {g: group for g, group in groups.items() if g not in walk.refusals and group.size > 1}
    return ChannelGroups(kept, refused, slots, edits)
