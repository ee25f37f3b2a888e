"""The values of shape computations once the training graph's input sizes are pinned to the data's.

PyTorch 1.x writes every reshape before a recurrent layer as arithmetic on Shape nodes (Shape -> Gather -> Mul ->
Unsqueeze -> Concat -> Reshape). Shape inference sees through it only with data propagation, which the operator
schemas of older opsets (12, ddddocr's CNN + LSTM) do not have, so the LSTM's sequence length stays unknown and
its training rewrite is refused. `shape_values` follows those nodes itself, with the sizes shape inference knows
and `UNKNOWN` for the rest (a batch left open). `resolve_computed_shapes` then stores each value known in full as
an initializer, and declares the output sizes of each Reshape whose target it knows in part. Nothing the graph
computes changes.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_dns.graph import DEFAULT_DOMAINS, attribute, axes_are_input, default_opset, inferred_values, initializers
from onnx_dns.passes import PassResult

UNKNOWN = np.iinfo(np.int64).min
INTEGER_TYPES = {onnx.TensorProto.INT64, onnx.TensorProto.INT32}
ARITHMETIC = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply}


def resolve_computed_shapes(model: onnx.ModelProto) -> PassResult:
    """Fold shape computations whose value the pinned sizes fix, and declare the sizes of Reshape outputs they
    fix in part; the input model is not changed."""
    if not any(n.op_type in ("Shape", "Size") and n.domain in DEFAULT_DOMAINS for n in model.graph.node):
        return PassResult(model, False)
    inferred = inferred_values(model, output_shapes=False)
    values = shape_values(model, inferred)
    outputs = {v.name for v in model.graph.output}  # stay computed: a graph output is no initializer
    folded = {name: v for name, v in values.items() if (v != UNKNOWN).all() and name not in outputs}
    declared = [info for node in model.graph.node if node.op_type == "Reshape" and node.domain in DEFAULT_DOMAINS
                and node.output[0] not in outputs and (info := _reshaped(node, values, inferred)) is not None]
    if not folded and not declared:
        return PassResult(model, False)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    kept = [n for n in out.graph.node if not (n.output and n.output[0] in folded)]
    del out.graph.node[:]
    out.graph.node.extend(kept)
    out.graph.initializer.extend(numpy_helper.from_array(v, name) for name, v in folded.items())
    names = {v.name for v in declared}
    infos = [v for v in out.graph.value_info if v.name not in names]
    del out.graph.value_info[:]
    out.graph.value_info.extend([*infos, *declared])
    return PassResult(out, True)


def shape_values(model: onnx.ModelProto, inferred: dict[str, onnx.ValueInfoProto]) -> dict[str, np.ndarray]:
    """The value of each top-level tensor computed from Shape or Size nodes (and integer constants) through
    Gather, Slice, Unsqueeze, Squeeze, Concat, Cast to int64, Identity, Add, Sub and Mul; `UNKNOWN` where a size is
    unknown. Every such value is int64: a node that reads another integer type beside a shape value (an int32
    table gathered by a size) is left alone."""
    constants = {name: numpy_helper.to_array(t) for name, t in initializers(model.graph).items()
                 if t.data_type in INTEGER_TYPES and len(t.dims) <= 1}
    opset = default_opset(model) or 13
    found: dict[str, np.ndarray] = {}
    for node in model.graph.node:
        if node.domain not in DEFAULT_DOMAINS or not node.output:
            continue
        if node.op_type in ("Shape", "Size"):
            sizes = _sizes(inferred.get(node.input[0]))
            if sizes is None:
                continue
            if node.op_type == "Shape":
                found[node.output[0]] = sizes[attribute(node, "start", 0):attribute(node, "end", None)]
            else:
                found[node.output[0]] = np.array(UNKNOWN if (sizes == UNKNOWN).any() else sizes.prod(), np.int64)
            continue
        names = [n for n in node.input if n]
        if not any(n in found for n in names) or not all(n in found or n in constants for n in names):
            continue
        data = names[:1] if node.op_type == "Gather" else names  # Gather's indices may be int32
        if any(n in constants and constants[n].dtype != np.int64 for n in data):
            continue
        value = _follow(node, [found.get(n, constants.get(n)) if n else None for n in node.input], opset)
        if value is not None:
            found[node.output[0]] = value
    return found


def _follow(node: onnx.NodeProto, inputs: list[np.ndarray | None], opset: int) -> np.ndarray | None:
    """One node's output from shape values (None for an input left out), or None for a node this does not
    follow."""
    op, first = node.op_type, inputs[0]
    if op == "Identity" or (op == "Cast" and attribute(node, "to", 0) == onnx.TensorProto.INT64):
        return first
    if op == "Gather" and attribute(node, "axis", 0) == 0 and first.ndim == 1:
        index = inputs[1]
        return np.take(first, index) if ((index >= -len(first)) & (index < len(first))).all() else None
    if op == "Slice" and first.ndim == 1 and len(inputs) >= 3 and opset >= 10:
        return _sliced(first, *inputs[1:])
    if op == "Unsqueeze" and first.ndim == 0:
        axes = inputs[1] if axes_are_input("Unsqueeze", opset) else attribute(node, "axes", [])
        return first.reshape(1) if list(np.ravel(axes)) in ([0], [-1]) else None
    if op == "Squeeze" and first.size == 1:
        return first.reshape(())
    if op == "Concat" and all(v.ndim == 1 for v in inputs):
        return np.concatenate(inputs)
    if op in ARITHMETIC and len(inputs) == 2:
        a, b = np.broadcast_arrays(*inputs)
        return np.where((a == UNKNOWN) | (b == UNKNOWN), UNKNOWN, ARITHMETIC[op](a, b))
    return None


def _sliced(values: np.ndarray, starts: np.ndarray, ends: np.ndarray, axes: np.ndarray | None = None,
            steps: np.ndarray | None = None) -> np.ndarray | None:
    """A Slice (opset 10 on: starts, ends, axes and steps as inputs) of a 1-D shape value, or None when its
    bounds are not known."""
    bounds = [starts, ends] + [v for v in (axes, steps) if v is not None]
    if any((v == UNKNOWN).any() or v.size != 1 for v in bounds) or (axes is not None and axes.item() not in (0, -1)):
        return None
    step = 1 if steps is None else steps.item()
    return values[slice(starts.item(), ends.item(), step)] if step else None


def _sizes(value: onnx.ValueInfoProto | None) -> np.ndarray | None:
    """A tensor's sizes as shape inference gives them, `UNKNOWN` where one is unknown; None without a shape."""
    if value is None or not value.type.tensor_type.HasField("shape"):
        return None
    return np.array([d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else UNKNOWN  # -1: an open batch
                     for d in value.type.tensor_type.shape.dim], np.int64)


def _reshaped(node: onnx.NodeProto, values: dict[str, np.ndarray],
              inferred: dict[str, onnx.ValueInfoProto]) -> onnx.ValueInfoProto | None:
    """The output type of a Reshape whose target shape is known in part, or None when that tells nothing more."""
    target = values.get(node.input[1])
    data = inferred.get(node.input[0])
    if target is None or target.ndim != 1 or (target != UNKNOWN).all() or data is None:
        return None
    sizes = _sizes(data)
    copied = not attribute(node, "allowzero", 0)  # a 0 copies the data's size there
    dims = [(int(sizes[i]) if sizes is not None and i < len(sizes) else UNKNOWN) if v == 0 and copied else int(v)
            for i, v in enumerate(target)]
    if -1 in dims and sizes is not None and (sizes != UNKNOWN).all() and UNKNOWN not in dims:
        rest = int(np.prod([d for d in dims if d != -1]))
        dims[dims.index(-1)] = int(sizes.prod()) // rest if rest else UNKNOWN
    dims = [UNKNOWN if d == -1 else d for d in dims]
    if all(d == UNKNOWN for d in dims):
        return None
    elem = data.type.tensor_type.elem_type
    return onnx.helper.make_tensor_value_info(
        node.output[0], elem, [d if d != UNKNOWN else f"{node.output[0]}_dim{i}" for i, d in enumerate(dims)])
