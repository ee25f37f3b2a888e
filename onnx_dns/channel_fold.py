"""Remove pruned channels physically: a smaller dense model with the same inputs and outputs.

Input: a model whose channel masks are already multiplied into its weights (`fold.fold_masks`), the groups of
`channel_groups` and each group's kept channels. Every slot's initializer keeps the entries of its axis that
`ChannelGroups.keep_index` selects (output channels of producers, BatchNorm parameters, depthwise filters, the
next layers' input channels, a flattened block of each channel in the Gemm after a Flatten), and depthwise
`group` attributes, Split sizes and flattening Reshape shapes are rewritten to the new counts. Since a pruned
channel is exactly zero wherever it is read (the pass proves it or refuses the group), the outputs are those of
the masked model.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnx_dns.channel_layout import ChannelGroups, Edit, Layout
from onnx_dns.graph import all_names, default_opset, initializers, unique_name
from onnx_dns.passes import PassResult


def kept_channels(groups: ChannelGroups, masks: Mapping[str, np.ndarray]) -> dict[int, np.ndarray]:
    """Each group's kept channels, read from the masks of its masked tensors (weight name -> mask). A stretch of
    a group that a Split piece or a layer holds keeps one channel at least (its first, all zeros when pruned,
    which leaves the outputs as they were): no tensor is left without channels."""
    keeps = {}
    for gid, group in groups.groups.items():
        keep = np.zeros(group.size, dtype=bool)
        for tensor, axis in group.masked:
            start, count = group.spans.get(tensor, (0, group.size))
            mask = np.moveaxis(np.asarray(masks[tensor]), axis, 0).reshape(count, -1)
            keep[start:start + count] = np.any(mask != 0, axis=1)
        if not keep.any():
            raise ValueError(f"channel fold: group {group.name} would lose every channel")
        keeps[gid] = keep
    layouts = [s.layout for s in groups.slots] + [x for e in groups.edits for x in e.layouts]
    for gid, start, count in {segment for layout in layouts for segment in layout.segments}:
        if gid in keeps and not keeps[gid][start:start + count].any():
            keeps[gid][start] = True
    return keeps


def fold_channels(model: onnx.ModelProto, groups: ChannelGroups, keeps: Mapping[int, np.ndarray]) -> PassResult:
    """Slice every slot and rewrite every edit; the input model is left as it was."""
    keeps = {g: np.asarray(k, dtype=bool) for g, k in keeps.items()}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = initializers(graph)
    arrays: dict[str, np.ndarray] = {}
    for slot in groups.slots:
        index = groups.keep_index(slot.layout, keeps)
        if index.all():
            continue
        array = arrays.get(slot.tensor, numpy_helper.to_array(inits[slot.tensor]))
        arrays[slot.tensor] = np.compress(index, array, axis=slot.axis)
    for name, array in arrays.items():
        inits[name].CopyFrom(numpy_helper.from_array(array, name))
    nodes = {n.output[0]: n for n in graph.node if n.output}
    taken = all_names(graph)
    before = {name for e in groups.edits for name in nodes[e.output].input}
    for edit in groups.edits:
        _apply(out, nodes[edit.output], edit, [_kept(groups, x, keeps) for x in edit.layouts], taken)
    _drop_unread(graph, before)
    del graph.value_info[:]
    return PassResult(out, bool(arrays))


def _drop_unread(graph: onnx.GraphProto, candidates: set[str]) -> None:
    """Remove the shape constants that rewritten nodes no longer read."""
    read = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    kept = [t for t in graph.initializer if t.name in read or t.name not in candidates]
    del graph.initializer[:]
    graph.initializer.extend(kept)


def _kept(groups: ChannelGroups, layout: Layout, keeps: Mapping[int, np.ndarray]) -> int:
    return int(groups.keep_index(layout, keeps).sum())


def _apply(model: onnx.ModelProto, node: onnx.NodeProto, edit: Edit, counts: list[int], taken: set[str]) -> None:
    """Write the new channel counts into the node: depthwise `group`, Split sizes or the Reshape target."""
    if edit.kind == "group":
        next(a for a in node.attribute if a.name == "group").i = counts[0]
        return
    inits = initializers(model.graph)
    if edit.kind == "reshape":
        shape = numpy_helper.to_array(inits[node.input[1]]).copy()
        if shape[1] == -1:
            return
        shape[1] = counts[0]
        _new_input(model, node, 1, shape, taken)
        return
    sizes = np.array(counts, dtype=np.int64)
    if len(node.input) > 1 and node.input[1]:
        _new_input(model, node, 1, sizes, taken)
    elif (default_opset(model) or 13) < 13:
        _set_ints(node, "split", counts)
    else:
        kept = [a for a in node.attribute if a.name != "num_outputs"]
        del node.attribute[:]
        node.attribute.extend(kept)
        node.input.append("")
        _new_input(model, node, 1, sizes, taken)


def _new_input(model: onnx.ModelProto, node: onnx.NodeProto, index: int, value: np.ndarray, taken: set[str]) -> None:
    name = unique_name(taken, f"{node.output[0]}__channels")
    model.graph.initializer.append(numpy_helper.from_array(value, name))
    node.input[index] = name


def _set_ints(node: onnx.NodeProto, name: str, values: list[int]) -> None:
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(kept + [helper.make_attribute(name, values)])
