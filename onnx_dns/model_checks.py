"""Checks that a model read from a file of unknown origin passes before anything converts its tensors or hands it
to onnx's C++ checker: every declared size is measured against the bytes actually present, so a few bytes that
claim a tensor of 10^12 elements are refused instead of allocated.

- Tensors (initializers, Constant and other tensor attributes, sparse initializers, in every subgraph and
  function): a known data type, dimensions >= 0, and exactly as many stored values (raw bytes or typed fields)
  as the dimensions declare.
- Sparse tensors: values and indices agree, indices lie inside the dense shape, and all the dense tensors
  together fit in a quarter of the memory this process may use (densifying copies them about three times).
- Declared shapes of graph inputs, outputs and value_info: dimensions >= 0 and at most 2^40 elements.
- Graphs: subgraphs (If/Loop/Scan bodies) nested at most 64 deep, and every node reads only values given
  before it (graph inputs, initializers, earlier nodes, enclosing graphs): a cycle is refused here.
"""

from __future__ import annotations

import math
import os
import resource
from collections.abc import Iterator

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from onnx_dns.errors import ModelError

MAX_DEPTH = 64
MAX_ELEMENTS = 2**40
RAW_BYTES = {
    TensorProto.FLOAT: 4, TensorProto.UINT8: 1, TensorProto.INT8: 1, TensorProto.UINT16: 2, TensorProto.INT16: 2,
    TensorProto.INT32: 4, TensorProto.INT64: 8, TensorProto.BOOL: 1, TensorProto.FLOAT16: 2,
    TensorProto.DOUBLE: 8, TensorProto.UINT32: 4, TensorProto.UINT64: 8, TensorProto.COMPLEX64: 8,
    TensorProto.COMPLEX128: 16, TensorProto.BFLOAT16: 2, TensorProto.FLOAT8E4M3FN: 1,
    TensorProto.FLOAT8E4M3FNUZ: 1, TensorProto.FLOAT8E5M2: 1, TensorProto.FLOAT8E5M2FNUZ: 1,
}
PACKED_4BIT = (TensorProto.UINT4, TensorProto.INT4)
TYPED_FIELD = {TensorProto.FLOAT: "float_data", TensorProto.COMPLEX64: "float_data",
               TensorProto.DOUBLE: "double_data", TensorProto.COMPLEX128: "double_data",
               TensorProto.INT64: "int64_data", TensorProto.UINT32: "uint64_data",
               TensorProto.UINT64: "uint64_data", TensorProto.STRING: "string_data"}
DATA_FIELDS = ("raw_data", "float_data", "double_data", "int32_data", "int64_data", "uint64_data", "string_data")


def check_structure(model: onnx.ModelProto, name: str, *, order: bool = True) -> None:
    """Refuse deep nesting and absurd declared shapes, and with `order` nodes that read values not yet given
    (cycles, undefined names)."""
    _check_graph(model.graph, (), 0, name, order)
    for function in model.functions:
        _check_nodes(function.node, (set(function.input),), 1, name, f"function {function.name!r}", order)


def check_tensors(model: onnx.ModelProto, name: str) -> None:
    """Refuse tensors whose stored data does not match their declared type and dimensions."""
    sparse = []
    for item, where in holdings(model):
        parts = [(item, where)]
        if isinstance(item, onnx.SparseTensorProto):
            sparse.append((item, where))
            parts = [(item.values, f"values of {where}"), (item.indices, f"indices of {where}")]
        for tensor, label in parts:
            problem = tensor_problem(tensor)
            if problem:
                raise ModelError(f"{name}: tensor {tensor.name!r} ({label}) {problem}; the file is corrupted, "
                                 "re-export it")
    dense_bytes = sum(_check_sparse(item, f"{name}: {where} {item.values.name!r}") for item, where in sparse)
    budget = memory_budget() // 4
    if dense_bytes > budget:
        raise ModelError(f"{name}: its sparse tensors would take {dense_bytes:,} bytes once densified, more than "
                         f"a quarter of the {memory_budget():,} bytes of memory available; run on a larger machine")


def tensor_problem(tensor: TensorProto) -> str | None:
    """What is wrong with a tensor's type, dimensions or stored data, or None (external data is not checked)."""
    kind = tensor.data_type
    if kind not in RAW_BYTES and kind not in PACKED_4BIT and kind != TensorProto.STRING:
        return f"has data type {kind}, which onnx does not define"
    dims = list(tensor.dims)
    if any(d < 0 for d in dims):
        return f"has negative dimensions {dims}"
    count = math.prod(dims)
    if count > MAX_ELEMENTS:
        return f"declares dimensions {dims} ({count:.3g} elements), more than any runtime can hold"
    if tensor.data_location == TensorProto.EXTERNAL:
        return None
    present = [field for field in DATA_FIELDS if len(getattr(tensor, field))
               or (field == "raw_data" and tensor.HasField(field))]  # numpy_helper reads a set raw_data first
    if len(present) > 1:
        return f"stores its data in two fields ({', '.join(present)})"
    if not present:
        return None if count == 0 else f"declares {dims} ({count} elements) but stores no data"
    field = present[0]
    if field == "raw_data":
        if kind == TensorProto.STRING:
            return "is a string tensor stored as raw bytes"
        have, want, unit = len(tensor.raw_data), raw_bytes(kind, count), "bytes"
    else:
        expected = TYPED_FIELD.get(kind, "int32_data")
        if field != expected:
            return f"stores its data in {field}, but its data type keeps it in {expected}"
        have, want, unit = len(getattr(tensor, field)), _typed_count(kind, count), f"values in {field}"
    if have != want:
        return f"declares dimensions {dims}, which need {want:,} {unit}, but holds {have:,}"
    return None


def raw_bytes(kind: int, count: int) -> int:
    """Bytes that `count` elements of data type `kind` take as raw data (4-bit types pack two to a byte)."""
    return (count + 1) // 2 if kind in PACKED_4BIT else count * RAW_BYTES[kind]


def memory_budget() -> int:
    """Bytes of memory this process may use: physical memory, or less under an address-space limit."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return total if soft == resource.RLIM_INFINITY else min(total, soft)


def graphs(model: onnx.ModelProto) -> Iterator[tuple[str, onnx.GraphProto | onnx.FunctionProto]]:
    """The main graph, every subgraph held in a node attribute, and every function, with a label for messages.
    Iterative, so that nesting depth never reaches Python's recursion limit."""
    stack: list[tuple[str, onnx.GraphProto | onnx.FunctionProto]] = [("graph", model.graph)]
    stack += [(f"function {f.name!r}", f) for f in model.functions]
    while stack:
        label, graph = stack.pop()
        yield label, graph
        for node in graph.node:
            for attribute in node.attribute:
                subgraphs = [*attribute.graphs, *([attribute.g] if attribute.HasField("g") else [])]
                stack += [(f"subgraph of node {node.name or node.op_type!r}", g) for g in subgraphs]


def tensors(model: onnx.ModelProto) -> Iterator[tuple[TensorProto, str]]:
    """Every dense tensor of the model, sparse tensors' values and indices included, with what holds it."""
    for item, where in holdings(model):
        if isinstance(item, onnx.SparseTensorProto):
            yield item.values, f"values of {where}"
            yield item.indices, f"indices of {where}"
        else:
            yield item, where


def holdings(model: onnx.ModelProto) -> Iterator[tuple[TensorProto | onnx.SparseTensorProto, str]]:
    """Every tensor and sparse tensor held by the model (initializers and node attributes, in all graphs and
    functions), with what holds it, in one pass."""
    for label, graph in graphs(model):
        for tensor in getattr(graph, "initializer", ()):
            yield tensor, f"initializer of the {label}"
        for sparse in getattr(graph, "sparse_initializer", ()):
            yield sparse, f"sparse initializer of the {label}"
        for node in graph.node:
            for attribute in node.attribute:
                if not (attribute.tensors or attribute.sparse_tensors or attribute.HasField("t")
                        or attribute.HasField("sparse_tensor")):
                    continue
                where = f"attribute {attribute.name!r} of node {node.name or node.op_type!r}"
                yield from ((t, where) for t in [*attribute.tensors, *attribute.sparse_tensors])
                for single in ("t", "sparse_tensor"):
                    if attribute.HasField(single):
                        yield getattr(attribute, single), where


def _check_sparse(sparse: onnx.SparseTensorProto, label: str) -> int:
    """Check a sparse tensor whose values and indices passed tensor_problem; return its dense size in bytes."""
    dims, count = list(sparse.dims), math.prod(sparse.dims)
    values, indices = sparse.values, sparse.indices
    if any(d < 0 for d in dims) or count > MAX_ELEMENTS:
        raise ModelError(f"{label}: dense dimensions {dims} are negative or beyond any runtime; re-export it")
    if values.data_location == TensorProto.EXTERNAL or indices.data_location == TensorProto.EXTERNAL:
        raise ModelError(f"{label}: sparse tensors with external data are not supported; store it in the model")
    nnz = math.prod(values.dims)
    rank = len(dims)
    shape_ok = list(values.dims) == [nnz] and (list(indices.dims) == [nnz] or (
        rank > 0 and list(indices.dims) == [nnz, rank]))
    if values.data_type not in RAW_BYTES or indices.data_type != TensorProto.INT64 or not shape_ok:
        raise ModelError(f"{label}: needs {nnz} values with INT64 indices of shape [{nnz}] or [{nnz}, {rank}]; "
                         "re-export it")
    index = numpy_helper.to_array(indices)
    bounds = np.array([count] if index.ndim == 1 else dims, dtype=np.int64)
    if index.size and (index.min() < 0 or np.any((index[:, None] if index.ndim == 1 else index) >= bounds)):
        raise ModelError(f"{label}: an index lies outside its dense shape {dims}; re-export it")
    return count * RAW_BYTES[values.data_type]


def _typed_count(kind: int, count: int) -> int:
    if kind in (TensorProto.COMPLEX64, TensorProto.COMPLEX128):
        return 2 * count
    return (count + 1) // 2 if kind in PACKED_4BIT else count


def _check_graph(graph: onnx.GraphProto, outer: tuple[set[str], ...], depth: int, name: str, order: bool) -> None:
    label = "the graph" if depth == 0 else f"subgraph {graph.name!r} ({depth} deep)"
    if depth > MAX_DEPTH:
        raise ModelError(f"{name}: subgraphs are nested more than {MAX_DEPTH} deep; the file is corrupted or "
                         "hostile")
    for value in [*graph.input, *graph.output, *graph.value_info]:
        _check_type(value.type, f"{name}: value {value.name!r} of {label}", 0)
    given = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    given |= {s.values.name for s in graph.sparse_initializer}
    _check_nodes(graph.node, (*outer, given), depth, name, label, order)


def _check_nodes(nodes, scopes: tuple[set[str], ...], depth: int, name: str, label: str, order: bool) -> None:
    """With `order`, each node reads only names given before it; subgraphs see the names given before their
    node. Subgraphs are checked in any case."""
    given = scopes[-1]
    for node in nodes:
        for value in node.input:
            if order and value and not any(value in scope for scope in scopes):
                raise ModelError(f"{name}: node {node.name or node.op_type!r} of {label} reads {value!r} before any "
                                 "input, initializer or earlier node gives it (a cycle, or nodes out of order); "
                                 "re-export the model")
        for attribute in node.attribute:
            for subgraph in [*attribute.graphs, *([attribute.g] if attribute.HasField("g") else [])]:
                _check_graph(subgraph, scopes, depth + 1, name, order)
        given.update(v for v in node.output if v)


def _check_type(kind: onnx.TypeProto, label: str, depth: int) -> None:
    """Declared shapes inside a type (tensors, and the elements of sequences, maps and optionals)."""
    if depth > MAX_DEPTH:
        raise ModelError(f"{label}: its type is nested more than {MAX_DEPTH} deep; the file is corrupted")
    which = kind.WhichOneof("value")
    if which in ("tensor_type", "sparse_tensor_type"):
        # -1 is how some exporters (paddle2onnx) write a dynamic size; onnx_dns reads it as symbolic
        dims = [d.dim_value for d in getattr(kind, which).shape.dim if d.HasField("dim_value") and d.dim_value != -1]
        if any(d < 0 for d in dims) or math.prod(dims) > MAX_ELEMENTS:
            raise ModelError(f"{label}: declares dimensions {dims}, negative or beyond any runtime; re-export it")
    elif which in ("sequence_type", "optional_type"):
        _check_type(getattr(kind, which).elem_type, label, depth + 1)
    elif which == "map_type":
        _check_type(kind.map_type.value_type, label, depth + 1)
