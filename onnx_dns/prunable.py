"""Find the prunable weights of a model: the float initializers that serve as weights and biases of
Conv, ConvTranspose, Gemm and MatMul (with the Add that follows a MatMul as its bias), and of LSTM, GRU and RNN.

A recurrent node is one layer of up to three tensors, all directions included: its input weights W (the layer's
weight), its recurrence weights R and its biases B (the layer's bias, left out with `biases=False`), so one
DNS threshold covers the node as it covers a Conv's weight and bias. Peephole weights P, initial states and
sequence lengths are neither pruned nor trained.

Everything else (shape constants, BatchNorm statistics, embedding tables, quantization scales) is left alone.
A weight read by several nodes, directly or through Identity nodes, is one layer with one mask.
In a masked model (see insert_masks) the mask's Mul is seen through as well, so the same layers are found.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import numpy as np
import onnx

from onnx_dns.graph import FLOAT_TYPES, consumers, initializers, node_label, producers
from onnx_dns.insert_masks import mask_name, masked_name

WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
RECURRENT_OPS = ("LSTM", "GRU", "RNN")


@dataclass(frozen=True)
class PrunableTensor:
    """One initializer that gets a mask: a layer's weight or its bias."""

    name: str
    role: str
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


@dataclass(frozen=True)
class Layer:
    """A prunable weight with its optional bias (and, for a recurrent node, its recurrence weights), named after
    the node that first uses it."""

    name: str
    op: str
    weight: PrunableTensor
    bias: PrunableTensor | None
    recurrence: PrunableTensor | None = None

    @property
    def tensors(self) -> tuple[PrunableTensor, ...]:
        return tuple(t for t in (self.weight, self.recurrence, self.bias) if t is not None)

    @property
    def params(self) -> int:
        return sum(t.size for t in self.tensors)


def find_layers(
    model: onnx.ModelProto,
    *,
    include: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
    biases: bool = True,
) -> list[Layer]:
    """The prunable layers of `model` in graph order.

    `include`/`exclude` are globs matched against the layer name and the weight's initializer name;
    `biases=False` leaves biases unmasked (the paper prunes them).
    """
    graph = model.graph
    inits = {n: t for n, t in initializers(graph).items() if t.data_type in FLOAT_TYPES}
    graph_inputs = {v.name for v in graph.input}
    made_by = producers(graph)
    read_by = consumers(graph)

    def source(name: str) -> str | None:
        seen = set()
        while name not in inits:
            node = made_by.get(name)
            if node is None or not (node.op_type == "Identity" or _is_mask_mul(node)) or name in seen:
                return None
            seen.add(name)
            name = node.input[0]
        return None if name in graph_inputs else name

    layers: list[Layer] = []
    claimed: set[str] = set()
    taken_names: set[str] = set()
    # Positions count the model's own nodes only, so unnamed layers keep their names once masks are inserted.
    unmasked_nodes = [n for n in graph.node if not _is_mask_mul(n)]
    for index, node in enumerate(unmasked_nodes):
        found = _tensors_of(node, source, read_by)
        if found is None:
            continue
        weight, bias, recurrence = found
        if weight in claimed:
            continue
        claimed.add(weight)
        recurrence, bias = (t if t is not None and t not in claimed else None for t in (recurrence, bias))
        if bias is not None and bias == recurrence:
            bias = None
        claimed.update(t for t in (recurrence, bias) if t is not None)
        name = node_label(node, index)
        if name in taken_names:
            name = f"{name}_{index}"
        taken_names.add(name)
        layer = Layer(
            name=name,
            op=node.op_type,
            weight=PrunableTensor(weight, "weight", tuple(inits[weight].dims)),
            bias=PrunableTensor(bias, "bias", tuple(inits[bias].dims)) if bias and biases else None,
            recurrence=PrunableTensor(recurrence, "recurrence", tuple(inits[recurrence].dims)) if recurrence else None,
        )
        if _selected(layer, include, exclude):
            layers.append(layer)
    return layers


def _is_mask_mul(node: onnx.NodeProto) -> bool:
    """The `Mul(W, W__dns_mask) -> W__dns_masked` node that insert_masks adds."""
    return (
        node.op_type == "Mul" and len(node.input) == 2 and len(node.output) == 1
        and node.output[0] == masked_name(node.input[0]) and node.input[1] == mask_name(node.input[0])
    )


def _weight_and_bias(node, source, read_by) -> tuple[str, str | None] | None:
    def init_at(i: int) -> str | None:
        return source(node.input[i]) if len(node.input) > i and node.input[i] else None

    if node.op_type in ("Conv", "ConvTranspose"):
        weight = init_at(1)
        return None if weight is None else (weight, init_at(2))
    if node.op_type == "Gemm":
        weight = init_at(1) or init_at(0)
        return None if weight is None else (weight, init_at(2))
    weight = init_at(1) or init_at(0)
    if weight is None:
        return None
    users = read_by.get(node.output[0], [])
    if len(users) == 1 and users[0][0].op_type == "Add":
        add = users[0][0]
        other = add.input[1 - users[0][1]]
        bias = source(other)
        if bias is not None:
            return weight, bias
    return weight, None


def _tensors_of(node, source, read_by) -> tuple[str, str | None, str | None] | None:
    """(weight, bias, recurrence weight) of a node that has prunable weights; for LSTM/GRU/RNN W, B and R
    (inputs 1, 3 and 2) when W is an initializer."""
    if node.op_type in WEIGHT_OPS:
        pair = _weight_and_bias(node, source, read_by)
        return None if pair is None else (*pair, None)
    if node.op_type not in RECURRENT_OPS or len(node.input) < 3:
        return None
    weight = source(node.input[1]) if node.input[1] else None
    bias = source(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    return None if weight is None else (weight, bias, source(node.input[2]) if node.input[2] else None)


def _selected(layer: Layer, include: tuple[str, ...], exclude: tuple[str, ...]) -> bool:
    names = (layer.name, layer.weight.name)

    def matches(patterns: tuple[str, ...]) -> bool:
        return any(fnmatch.fnmatchcase(n, p) for p in patterns for n in names)

    return (not include or matches(include)) and not matches(exclude)
