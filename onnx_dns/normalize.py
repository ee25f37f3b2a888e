"""Passes that bring a user's model into the shape the other passes expect, without changing what it computes.

- `lift_constants`: Constant nodes holding a tensor become initializers (exporters put weights in them).
- `densify_sparse`: sparse initializers become dense ones (training cannot take them).
- `unlist_initializer_inputs`: weights also listed as graph inputs (IR < 4 requires it, and exporters asked to
  keep initializers as inputs do it) become plain initializers, so they are found and trained.
- `pin_input_shapes`: symbolic input sizes become those of the data (the training graph needs them).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_dns.graph import FLOAT_TYPES, inferred_values, sparse_to_array
from onnx_dns.passes import PassResult


def lift_constants(model: onnx.ModelProto) -> PassResult:
    """Turn top-level `Constant` nodes with a `value` tensor into initializers of the same name."""
    lifted = [n for n in model.graph.node if n.op_type == "Constant" and _value_attribute(n) is not None]
    if not lifted:
        return PassResult(model, False)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    keep = [n for n in out.graph.node if not (n.op_type == "Constant" and _value_attribute(n) is not None)]
    for node in lifted:
        tensor = onnx.TensorProto()
        tensor.CopyFrom(_value_attribute(node).t)
        tensor.name = node.output[0]
        out.graph.initializer.append(tensor)
    del out.graph.node[:]
    out.graph.node.extend(keep)
    return PassResult(out, True)


def densify_sparse(model: onnx.ModelProto) -> PassResult:
    """Replace each sparse initializer by the dense initializer it stands for."""
    if not model.graph.sparse_initializer:
        return PassResult(model, False)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for sparse in out.graph.sparse_initializer:
        dense = numpy_helper.from_array(sparse_to_array(sparse), sparse.values.name)
        out.graph.initializer.append(dense)
    del out.graph.sparse_initializer[:]
    return PassResult(out, True)


def unlist_initializer_inputs(model: onnx.ModelProto) -> PassResult:
    """Drop the graph inputs that name a weight-like initializer, so that weight can be found and trained.

    IR < 4 requires every initializer to be listed as an input: all are unlisted and the IR version becomes 4,
    the first that allows otherwise. From IR 4 a listed initializer is a default the caller may override, so only
    float tensors of more than one entry (weights, which exporters asked to keep initializers as inputs list)
    are unlisted; scalars and integer tensors stay overridable. Runtimes read an unfed input's initializer, so
    what the model computes for its real inputs does not change."""
    inits = {t.name: t for t in model.graph.initializer}

    def weight_like(name: str) -> bool:
        tensor = inits.get(name)
        return tensor is not None and (model.ir_version < 4 or (
            tensor.data_type in FLOAT_TYPES and int(np.prod(tensor.dims, dtype=np.int64)) > 1))

    if not any(weight_like(v.name) for v in model.graph.input):
        return PassResult(model, False)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    keep = [v for v in out.graph.input if not weight_like(v.name)]
    del out.graph.input[:]
    out.graph.input.extend(keep)
    out.ir_version = max(out.ir_version, 4)
    return PassResult(out, True)


def _value_attribute(node: onnx.NodeProto) -> onnx.AttributeProto | None:
    for attr in node.attribute:
        if attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR:
            return attr
    return None


def pin_input_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int | None, ...]]) -> PassResult:
    """Give named graph inputs these sizes (None leaves a dimension as it is); for the training graph only.

    onnxruntime-training 1.19's MaxPool and AveragePool gradients come out as zeros when the spatial sizes are
    symbolic, and AveragePool's crashes with a symbolic batch: the sizes of the data at hand avoid both.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    modified = False
    for value in out.graph.input:
        if value.name not in shapes:
            continue
        dims = value.type.tensor_type.shape.dim
        if len(dims) != len(shapes[value.name]):
            raise ValueError(f"pin_input_shapes: {value.name} has rank {len(dims)}, not {len(shapes[value.name])}")
        for dim, size in zip(dims, shapes[value.name]):
            if size is not None and not (dim.HasField("dim_value") and dim.dim_value == size):
                dim.Clear()
                dim.dim_value = size
                modified = True
    return PassResult(out if modified else model, modified)


def infer_output_shapes(model: onnx.ModelProto) -> PassResult:
    """Graph outputs whose declared shape contradicts what the graph computes get the inferred shape instead
    (some exporters declare [1, seqlen] for a [T, 1, classes] output; onnxruntime-training refuses the graph).
    Outputs declared right, or that inference cannot size, are left as they are."""
    inferred = inferred_values(model, output_shapes=False)
    fixed = None
    for index, value in enumerate(model.graph.output):
        found = inferred.get(value.name)
        if found is None or not found.type.tensor_type.HasField("shape"):
            continue
        if _contradicts(value.type.tensor_type.shape, found.type.tensor_type.shape):
            fixed = fixed or _copy(model)
            fixed.graph.output[index].type.CopyFrom(found.type)
    return PassResult(fixed or model, fixed is not None)


def _contradicts(declared: onnx.TensorShapeProto, inferred: onnx.TensorShapeProto) -> bool:
    if len(declared.dim) == 0:
        return False
    if len(declared.dim) != len(inferred.dim):
        return True
    return any(d.HasField("dim_value") and i.HasField("dim_value") and d.dim_value != i.dim_value
               for d, i in zip(declared.dim, inferred.dim))


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out
