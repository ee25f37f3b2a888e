"""Store a model's prunable weights in another format, with optional weight sharing, without retraining.

Formats: `dense` (plain initializers holding exact zeros), `sparse` (ONNX sparse initializers where smaller),
`packed` (relative indices and values rebuilt by standard operators, `onnx_dns/packed.py`), and `auto`, whichever
of sparse and packed gives the smaller file. With `bits`, each tensor's nonzeros are first replaced by the nearest
of 2^bits shared values (`onnx_dns/codebook.py`); zeros stay zeros, so sparsity is unchanged. Without `bits` the
values are kept bit for bit, so the model computes exactly what it computed before in every format.

Packed needs default-domain opset 11 or later; an older model gets sparse instead (raising its opset could change
the meaning of its other operators).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import onnx
from onnx.reference import ReferenceEvaluator

from onnx_dns import __version__
from onnx_dns.codebook import Codebook, kmeans_1d
from onnx_dns.fold import SPARSE_IR_VERSION, read_metadata, write_metadata
from onnx_dns.graph import (all_names, array_to_sparse, copy_fields, default_opset, initializers, producers,
                            sparse_nbytes, tensor_like, to_array)
from onnx_dns.normalize import densify_sparse, lift_constants, unlist_initializer_inputs
from onnx_dns.packed import MIN_OPSET, build_rebuild, packed_facts
from onnx_dns.passes import PassResult
from onnx_dns.prunable import find_layers

log = logging.getLogger(__name__)

FORMATS = ("auto", "sparse", "dense", "packed")
PACKED_KEY = "packed"


def repack(model: onnx.ModelProto, format: str = "auto", bits: int | None = None) -> PassResult:
    """`model` with its prunable weights and biases stored in `format`, quantized to 2^bits values if given."""
    if format not in FORMATS:
        raise ValueError(f"repack: format {format!r} is not one of {', '.join(FORMATS)}")
    plain = unpack_model(model).model
    plain = densify_sparse(plain).model
    arrays = {name: to_array(initializers(plain.graph)[name]) for name in prunable_tensors(plain)}
    books = None
    if bits is not None:
        books = {name: kmeans_1d(a[a != 0], bits) for name, a in arrays.items()}
        arrays = {name: _quantized(a, books[name]) for name, a in arrays.items()}
    packable = (default_opset(plain) or 0) >= MIN_OPSET
    if format == "packed" and not packable:
        log.warning("packed storage needs opset %d or later (the model has %s): writing sparse initializers",
                    MIN_OPSET, default_opset(plain))
    if format in ("packed", "auto") and packable:
        packed = _write(plain, arrays, "packed", books, bits)
        if format == "packed":
            return PassResult(packed, True)
        sparse = _write(plain, arrays, "sparse", books, bits)
        return PassResult(min((packed, sparse), key=lambda m: m.ByteSize()), True)
    return PassResult(_write(plain, arrays, "dense" if format == "dense" else "sparse", books, bits), True)


def format_sizes(model: onnx.ModelProto, bits: int | None = None) -> dict[str, int]:
    """Bytes of the serialized model in each of the sparse, dense and packed formats (for the compress summary)."""
    return {f: repack(model, f, bits).model.ByteSize() for f in ("sparse", "dense", "packed")}


def prunable_tensors(model: onnx.ModelProto) -> list[str]:
    """Names of the initializers holding the weights and biases of the model's prunable layers."""
    prepared = unlist_initializer_inputs(lift_constants(model).model).model
    listed = {i.name for i in model.graph.input}
    inits = initializers(model.graph)
    names = [t.name for layer in find_layers(prepared) for t in layer.tensors]
    return [n for n in dict.fromkeys(names) if n in inits and n not in listed]


def unpack_model(model: onnx.ModelProto) -> PassResult:
    """Replace the rebuild subgraph of a packed model by the initializers it computes (run by the ONNX reference
    evaluator), so every tool and pass sees plain weights again."""
    record = read_metadata(model) or {}
    made = producers(model.graph)
    names = [n for n in record.get(PACKED_KEY, {}) if n in made]
    if not names:
        return PassResult(model, False)
    rebuild, stack = set(), list(names)
    while stack:
        node = made.get(stack.pop())
        if node is not None and id(node) not in rebuild:
            rebuild.add(id(node))
            stack.extend(node.input)
    nodes = [n for n in model.graph.node if id(n) in rebuild]
    read = {i for n in nodes for i in n.input}
    kept_nodes = [n for n in model.graph.node if id(n) not in rebuild]
    read_elsewhere = {i for n in kept_nodes for i in n.input} | {o.name for o in model.graph.output}
    sub = onnx.helper.make_model(
        onnx.helper.make_graph(nodes, "rebuild", [], [onnx.helper.make_empty_tensor_value_info(n) for n in names],
                               initializer=[t for t in model.graph.initializer if t.name in read]),
        opset_imports=model.opset_import, ir_version=model.ir_version)
    values = dict(zip(names, ReferenceEvaluator(sub).run(None, {})))
    out = onnx.ModelProto()
    copy_fields(model, out, {"graph"})
    copy_fields(model.graph, out.graph, {"node", "initializer"})
    out.graph.node.extend(kept_nodes)
    out.graph.initializer.extend(t for t in model.graph.initializer if t.name not in read or t.name in read_elsewhere)
    out.graph.initializer.extend(onnx.numpy_helper.from_array(values[n], n) for n in names)
    write_metadata(out, {k: v for k, v in record.items() if k != PACKED_KEY} | {"storage": "dense"})
    return PassResult(out, True)


def _quantized(array: np.ndarray, book: Codebook) -> np.ndarray:
    out = np.zeros_like(array)
    out[array != 0] = book.values()
    return out


def _write(plain: onnx.ModelProto, arrays: Mapping[str, np.ndarray], format: str,
           books: Mapping[str, Codebook] | None, bits: int | None) -> onnx.ModelProto:
    """`plain` with `arrays` replacing its initializers, stored in `format` (dense, sparse or packed)."""
    packed = _choose_packed(plain, arrays, books, bits) if format == "packed" else {}
    out = onnx.ModelProto()
    copy_fields(plain, out, {"graph"})
    copy_fields(plain.graph, out.graph, {"node", "initializer", "sparse_initializer"})
    facts = []
    for nodes, inits, names in packed.values():
        out.graph.node.extend(nodes)
        out.graph.initializer.extend(inits)
        facts += names
    out.graph.node.extend(plain.graph.node)
    out.graph.sparse_initializer.extend(plain.graph.sparse_initializer)
    for tensor in plain.graph.initializer:
        if tensor.name in facts:
            continue
        array = arrays.get(tensor.name)
        if array is None:
            out.graph.initializer.add().CopyFrom(tensor)
        elif format == "sparse" and sparse_nbytes(np.count_nonzero(array), array.itemsize) < array.nbytes:
            out.graph.sparse_initializer.add().CopyFrom(array_to_sparse(array, tensor.name))
        else:
            out.graph.initializer.add().CopyFrom(tensor_like(array, tensor))
    if out.graph.sparse_initializer:
        out.ir_version = max(out.ir_version, SPARSE_IR_VERSION)
    record = read_metadata(plain) or {"tool": "onnx-dns", "version": __version__}
    record = {k: v for k, v in record.items() if k not in (PACKED_KEY, "bits")} | {"storage": format}
    if bits is not None:
        record["bits"] = bits
    if facts:
        record[PACKED_KEY] = facts
    write_metadata(out, record)
    return out


def _choose_packed(plain: onnx.ModelProto, arrays: Mapping[str, np.ndarray], books, bits) -> dict:
    """Rebuild subgraphs per dtype, over the tensors whose share of the packed streams is smaller than their
    dense form; the others stay plain initializers, so a packed model has no sparse initializer for tools to
    trip on."""
    groups: dict[str, dict[str, np.ndarray]] = {}
    for name, array in arrays.items():
        groups.setdefault(array.dtype.str, {})[name] = array
    taken = all_names(plain.graph)
    result = {}
    for k, (key, tensors) in enumerate(groups.items()):
        for _ in range(2):
            facts = packed_facts(tensors, bits)
            better = {n: a for n, a in tensors.items() if facts[n]["bytes"] < a.nbytes}
            if len(better) == len(tensors) or not better:
                break
            tensors = better
        if better:
            nodes, inits = build_rebuild(better, books=books, value_bits=bits, opset=default_opset(plain),
                                         taken=set(taken), prefix="~" if k == 0 else f"~{k}.")
            result[key] = (nodes, inits, list(better))
            taken |= {o for n in nodes for o in n.output} | {t.name for t in inits}
    return result

