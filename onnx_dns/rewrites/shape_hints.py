"""Shapes of the training graph's intermediate tensors where only a computed shape tells them.

onnxruntime-training 1.19 sends the gradient of a broadcast operand (Add, Sub, Mul, Div, Expand, ...) back
summed over the axes it finds by comparing the two operands' static shapes. A tensor whose shape comes from a
computed shape (Shape -> Slice -> Concat -> Cast -> Reshape/Expand, as tf2onnx writes every broadcast) is known
to onnxruntime's own inference only by its rank, and two unknown dimensions compare as equal: the gradient of
`Sub(logits [N, 214], Expand(Reshape(max [N], [N, 1]), [N, 1]))` reaches the Reshape as [N, 214] and its
gradient fails ("cannot reshape {64,214} to {64}", tf2onnx's magika). ONNX shape inference with data propagation
follows the shape values through those nodes and finds [N, 1]. Writing those shapes into the graph's value_info,
which onnxruntime takes as known, makes the broadcast gradients sum over the right axes. Nothing that is
computed changes: only what the graph declares about its tensors.
"""

from __future__ import annotations

import onnx

from onnx_dns.graph import inferred_values
from onnx_dns.passes import PassResult


def declare_propagated_shapes(model: onnx.ModelProto) -> PassResult:
    """Declare, as value_info, the intermediate tensors' shapes that only data propagation infers (dimensions
    plain shape inference leaves unknown); the input model is not changed."""
    plain = inferred_values(model)
    propagated = inferred_values(model, data_prop=True)
    boundary = [*model.graph.input, *model.graph.output]
    symbols = boundary_symbols(model)
    found = [declared_only(value, symbols) for name, value in propagated.items()
             if name not in {v.name for v in boundary}
             and _known_dims(value, symbols) > _known_dims(plain.get(name), symbols)]
    if not found:
        return PassResult(model, False)
    names = {v.name for v in found}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    kept = [v for v in out.graph.value_info if v.name not in names]
    del out.graph.value_info[:]
    out.graph.value_info.extend([*kept, *found])
    return PassResult(out, True)


def _known(dim: onnx.TensorShapeProto.Dimension, symbols: set[str]) -> bool:
    return dim.HasField("dim_value") or (dim.HasField("dim_param") and dim.dim_param in symbols)


def _known_dims(value: onnx.ValueInfoProto | None, symbols: set[str]) -> int:
    """How many dimensions a value's type fixes (a size, or a symbol the graph's inputs or outputs declare;
    inference names each unknown dimension with a fresh symbol), -1 when its rank is unknown."""
    if value is None or not value.type.tensor_type.HasField("shape"):
        return -1
    return sum(1 for d in value.type.tensor_type.shape.dim if _known(d, symbols))


def boundary_symbols(model: onnx.ModelProto) -> set[str]:
    """The symbolic dimensions the graph's inputs and outputs declare (the only symbols worth keeping)."""
    boundary = [*model.graph.input, *model.graph.output]
    return {d.dim_param for v in boundary for d in v.type.tensor_type.shape.dim if d.HasField("dim_param")}


def declared_only(value: onnx.ValueInfoProto, symbols: set[str]) -> onnx.ValueInfoProto:
    """A copy of `value` whose fresh symbols are cleared: onnxruntime would take two of them as different sizes."""
    out = onnx.ValueInfoProto()
    out.CopyFrom(value)
    for dim in out.type.tensor_type.shape.dim:
        if not _known(dim, symbols):
            dim.Clear()
    return out
