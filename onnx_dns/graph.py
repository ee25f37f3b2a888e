"""Small read-only helpers over an ONNX graph shared by the passes: producers, consumers, initializers."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection

import numpy as np
import onnx
from onnx import numpy_helper

DEFAULT_DOMAINS = ("", "ai.onnx")
FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}


def consumers(graph: onnx.GraphProto) -> dict[str, list[tuple[onnx.NodeProto, int]]]:
    """Map each value name to the (node, input index) pairs that read it."""
    table: dict[str, list[tuple[onnx.NodeProto, int]]] = defaultdict(list)
    for node in graph.node:
        for index, name in enumerate(node.input):
            if name:
                table[name].append((node, index))
    return table


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    """Map each value name to the node that writes it."""
    return {name: node for node in graph.node for name in node.output if name}


def source(made_by: dict[str, onnx.NodeProto], name: str, through: Collection[str]) -> onnx.NodeProto | None:
    """The node behind the value `name`, seen through nodes whose type is in `through` (each followed by its first
    input); None for a graph input or initializer. `made_by` is `producers(graph)`."""
    node = made_by.get(name)
    while node is not None and node.op_type in through:
        node = made_by.get(node.input[0])
    return node


def initializers(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in graph.initializer}


def to_array(tensor: onnx.TensorProto) -> np.ndarray:
    return numpy_helper.to_array(tensor)


def default_opset(model: onnx.ModelProto) -> int | None:
    """The version of the default (ai.onnx) opset the model imports, or None."""
    return next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), None)


AXES_INPUT_SINCE = {"ReduceSum": 13, "Squeeze": 13, "Unsqueeze": 13, "Split": 13}  # other reductions: 18


def axes_are_input(op_type: str, opset: int) -> bool:
    """Whether `op_type` takes its axes (Split: its sizes) as an input at `opset` rather than as an attribute:
    ReduceSum, Squeeze, Unsqueeze and Split from opset 13, the other reductions from 18."""
    return opset >= AXES_INPUT_SINCE.get(op_type, 18)


def attribute(node: onnx.NodeProto, name: str, default):
    """The value of a node's attribute, or `default` when the node does not set it."""
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def node_label(node: onnx.NodeProto, index: int) -> str:
    """A stable, readable name for a node: its own name, else op type and position."""
    return node.name or f"{node.op_type}_{index}"


def unique_name(taken: set[str], wanted: str) -> str:
    """`wanted`, or `wanted_1`, `wanted_2`... whichever is not in `taken`; the result is added to `taken`."""
    name, n = wanted, 0
    while name in taken:
        n += 1
        name = f"{wanted}_{n}"
    taken.add(name)
    return name


def all_names(graph: onnx.GraphProto) -> set[str]:
    names = {t.name for t in graph.initializer} | {t.values.name for t in graph.sparse_initializer}
    names |= {v.name for v in list(graph.input) + list(graph.output) + list(graph.value_info)}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
    return names


def sparse_to_array(sparse: onnx.SparseTensorProto) -> np.ndarray:
    """Densify a COO sparse tensor (1-D linearized or 2-D coordinate indices)."""
    values = numpy_helper.to_array(sparse.values)
    indices = numpy_helper.to_array(sparse.indices).astype(np.int64)
    shape = tuple(sparse.dims)
    dense = np.zeros(int(np.prod(shape)), dtype=values.dtype)
    if indices.ndim == 2:
        indices = np.ravel_multi_index(tuple(indices.T), shape) if indices.size else indices.reshape(-1)
    dense[indices] = values
    return dense.reshape(shape)


def array_to_sparse(array: np.ndarray, name: str) -> onnx.SparseTensorProto:
    """COO sparse tensor of the nonzeros of `array`, with 1-D linearized INT64 indices (what onnx.checker wants)."""
    flat = array.reshape(-1)
    indices = np.flatnonzero(flat != 0).astype(np.int64)  # on booleans: 5-10x faster than on floats
    values = numpy_helper.from_array(flat[indices], name)
    return onnx.helper.make_sparse_tensor(values, numpy_helper.from_array(indices, name + "_indices"), array.shape)


def sparse_nbytes(nonzeros: int, itemsize: int) -> int:
    """Bytes a COO sparse tensor stores: the values plus one INT64 index each."""
    return nonzeros * (itemsize + 8)


def copy_fields(source, target, skip: set[str]) -> None:
    """Copy the fields of protobuf message `source` into `target`, but those named in `skip`, which the caller
    fills: a pass over a large model then copies each initializer once, not the model and then its rewrites.
    Fields unknown to the installed onnx (from a newer one) are not copied."""
    for field, value in source.ListFields():
        if field.name in skip:
            continue
        repeated = getattr(field, "is_repeated", None)
        if repeated is None:  # protobuf < 5.28
            repeated = field.label == field.LABEL_REPEATED
        if repeated:
            getattr(target, field.name).extend(value)
        elif field.type == field.TYPE_MESSAGE:
            getattr(target, field.name).CopyFrom(value)
        else:
            setattr(target, field.name, value)


def array_like(value: np.ndarray, tensor: onnx.TensorProto) -> np.ndarray:
    """`value` in `tensor`'s dtype (no copy when it already is); its shape must be `tensor`'s. bfloat16, which
    numpy lacks, is refused."""
    if tensor.data_type == onnx.TensorProto.BFLOAT16:
        raise ValueError(f"{tensor.name}: bfloat16 initializers cannot be replaced (numpy has no bfloat16)")
    value = np.asarray(value, dtype=onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
    if tuple(value.shape) != tuple(tensor.dims):
        raise ValueError(f"{tensor.name}: new value has shape {value.shape}, expected {tuple(tensor.dims)}")
    return value


def tensor_like(value: np.ndarray, tensor: onnx.TensorProto) -> onnx.TensorProto:
    """`value` as an initializer with `tensor`'s name and dtype; its shape must be `tensor`'s."""
    return numpy_helper.from_array(array_like(value, tensor), tensor.name)


SKELETON_MIN_BYTES = 1 << 16


def inferred_values(model: onnx.ModelProto, data_prop: bool = False,
                    output_shapes: bool = True) -> dict[str, onnx.ValueInfoProto]:
    """Graph inputs, outputs and intermediate values with the types onnx shape inference gives them (as declared
    where it fails). It runs on a skeleton: float initializers of 64 KB or more become graph inputs of the same
    type, since inference needs only their types, so a model of hundreds of MB is not serialized for it.
    Without `output_shapes` the graph outputs' declared shapes are left out, so inference says what they are."""
    skeleton = onnx.ModelProto()
    copy_fields(model, skeleton, {"graph"})
    copy_fields(model.graph, skeleton.graph, {"initializer"})
    if not output_shapes:
        for value in skeleton.graph.output:
            value.type.tensor_type.ClearField("shape")
    declared = {v.name for v in model.graph.input}
    for tensor in model.graph.initializer:
        if tensor.data_type in FLOAT_TYPES and payload_bytes(tensor) >= SKELETON_MIN_BYTES:
            if tensor.name not in declared:
                skeleton.graph.input.append(
                    onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
        else:
            skeleton.graph.initializer.add().CopyFrom(tensor)
    try:
        inferred = onnx.shape_inference.infer_shapes(skeleton, data_prop=data_prop)
    except Exception:  # noqa: BLE001 - a model inference rejects keeps the types it declares
        inferred = skeleton
    graph = inferred.graph
    return {v.name: v for v in [*graph.input, *graph.value_info, *graph.output]}


def payload_bytes(tensor: onnx.TensorProto) -> int:
    """Bytes of a tensor's data held in the model (external data counts 0): from its dims when the data is raw,
    else measured (typed fields such as int32_data holding float16 take more than the dtype's size)."""
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return 0
    if tensor.HasField("raw_data"):
        return int(np.prod(tensor.dims, dtype=np.int64)) * onnx.helper.tensor_dtype_to_np_dtype(
            tensor.data_type).itemsize
    return tensor.ByteSize()
