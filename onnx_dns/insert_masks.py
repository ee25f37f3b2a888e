"""Insert a mask beside each prunable weight, as torch.nn.utils.prune keeps `weight_mask` beside `weight_orig`.

For a weight W: a float initializer `W__dns_mask` of W's shape and a node `Mul(W, W__dns_mask) -> W__dns_masked`
that replaces W in every consumer. Masks start at 1, and at 0 where W is exactly 0, so a model that is already
sparse keeps its sparsity. With all masks at 1 the masked model computes what the original does.

A channel mask (`shapes` gives its shape, 1 on every axis but the channel axis) starts at 1 and is broadcast by
the same Mul, so one mask entry keeps or removes a whole filter (see `onnx_dns.channel_groups`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnx_dns.graph import initializers
from onnx_dns.passes import PassResult

MASK_SUFFIX = "__dns_mask"
MASKED_SUFFIX = "__dns_masked"


def mask_name(weight: str) -> str:
    return weight + MASK_SUFFIX


def masked_name(weight: str) -> str:
    return weight + MASKED_SUFFIX


def insert_masks(model: onnx.ModelProto, weights: Iterable[str],
                 shapes: Mapping[str, Sequence[int]] | None = None) -> PassResult:
    """Mask each named initializer (with a broadcast mask of `shapes[name]` where given); the returned model is
    new and the input is left as it was."""
    names = list(dict.fromkeys(weights))
    if not names:
        return PassResult(model, False)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = initializers(graph)
    missing = [n for n in names if n not in inits]
    if missing:
        raise KeyError(f"insert_masks: no initializer named {missing[0]!r}")
    already = [n for n in names if mask_name(n) in inits]
    if already:
        raise ValueError(f"insert_masks: {already[0]!r} already has a mask; fold the model first")
    renamed = {n: masked_name(n) for n in names}
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renamed:
                node.input[i] = renamed[name]
    mul_nodes = []
    for name in names:
        weight = numpy_helper.to_array(inits[name])
        shape = (shapes or {}).get(name)
        mask = (weight != 0).astype(weight.dtype) if shape is None else np.ones(shape, dtype=weight.dtype)
        graph.initializer.append(numpy_helper.from_array(mask, mask_name(name)))
        mul_nodes.append(helper.make_node("Mul", [name, mask_name(name)], [masked_name(name)], name=masked_name(name)))
    nodes = mul_nodes + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return PassResult(out, True)


def mask_pairs(model: onnx.ModelProto) -> dict[str, str]:
    """Map each masked weight of `model` to its mask, as `insert_masks` wrote them."""
    inits = initializers(model.graph)
    pairs = {}
    for node in model.graph.node:
        if node.op_type == "Mul" and len(node.input) == 2 and node.output[0] == masked_name(node.input[0]):
            weight, mask = node.input
            if mask == mask_name(weight) and weight in inits and mask in inits:
                pairs[weight] = mask
    return pairs


def read_masks(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The current mask of each masked weight."""
    inits = initializers(model.graph)
    return {w: numpy_helper.to_array(inits[m]) for w, m in mask_pairs(model).items()}
