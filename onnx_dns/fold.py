"""Fold masks into their weights, as torch.nn.utils.prune.remove does, and store the result compactly.

For each masked weight W with mask T: W' = W * T (exact zeros where T is 0); the `Mul` node and the mask are
removed and every consumer reads W' again under its original name. The model then computes exactly what the
masked model computed. Pruning is not undone: the pruned values are gone.

Storage: with `sparse=True`, each folded weight whose COO form (values plus INT64 indices, 12 bytes a nonzero for
float32) is smaller than its dense form becomes an ONNX sparse initializer, so the file shrinks; onnxruntime
densifies it at load. With `sparse=False` the weights stay dense initializers holding exact zeros, which every
ONNX tool reads and any general compressor (gzip, zstd) shrinks. The packed format and weight sharing are applied
to the folded model by `onnx_dns/repack.py`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_dns import __version__
from onnx_dns.graph import array_like, array_to_sparse, copy_fields, initializers, sparse_nbytes, tensor_like
from onnx_dns.insert_masks import mask_pairs, masked_name
from onnx_dns.passes import PassResult

METADATA_KEY = "onnx_dns"
SPARSE_IR_VERSION = 6  # the first IR version with sparse initializers


def fold_masks(model: onnx.ModelProto, *, sparse: bool = True, record: dict | None = None,
               values: Mapping[str, np.ndarray] | None = None) -> PassResult:
    """Multiply masks into weights, drop the mask nodes, and write sparse initializers where smaller.

    `values` replaces initializers by name (a training run's weights and masks) as they are folded, so the
    model is copied once. `record` (JSON-serialisable) is stored in metadata_props under `onnx_dns` with the
    tool version.
    """
    pairs = mask_pairs(model)
    values = values or {}
    if not pairs and not values:
        return PassResult(model, False)
    unknown = sorted(set(values) - {t.name for t in model.graph.initializer})
    if unknown:
        raise ValueError(f"fold_masks: values for {unknown[:5]} name no initializer of the model")
    rename = {masked_name(w): w for w in pairs}
    for output in model.graph.output:
        if output.name in rename:
            raise ValueError(f"fold_masks: masked weight {output.name!r} is a graph output")
    out = onnx.ModelProto()
    copy_fields(model, out, {"graph"})
    graph = out.graph
    copy_fields(model.graph, graph, {"node", "initializer"})
    for node in model.graph.node:
        if node.op_type == "Mul" and node.output and node.output[0] in rename:
            continue
        copy = graph.node.add()
        copy.CopyFrom(node)
        for i, name in enumerate(copy.input):
            if name in rename:
                copy.input[i] = rename[name]

    inits = initializers(model.graph)

    def value_of(tensor: onnx.TensorProto) -> np.ndarray:
        return array_like(values[tensor.name], tensor) if tensor.name in values else numpy_helper.to_array(tensor)

    dropped = set(pairs.values())
    for tensor in model.graph.initializer:
        if tensor.name in dropped:
            continue
        if tensor.name in pairs:
            weight = value_of(tensor)
            folded = np.multiply(weight, value_of(inits[pairs[tensor.name]]), dtype=weight.dtype)
            if sparse and _sparse_is_smaller(folded):
                graph.sparse_initializer.add().CopyFrom(array_to_sparse(folded, tensor.name))
            else:
                graph.initializer.add().CopyFrom(tensor_like(folded, tensor))
        elif tensor.name in values:
            graph.initializer.add().CopyFrom(tensor_like(values[tensor.name], tensor))
        else:
            graph.initializer.add().CopyFrom(tensor)
    if graph.sparse_initializer:
        out.ir_version = max(out.ir_version, SPARSE_IR_VERSION)
    write_metadata(out, {"tool": "onnx-dns", "version": __version__, "storage": "sparse" if sparse else "dense",
                        **(record or {})})
    return PassResult(out, True)


def _sparse_is_smaller(array: np.ndarray) -> bool:
    nonzeros = int(np.count_nonzero(array))
    return sparse_nbytes(nonzeros, array.dtype.itemsize) < array.nbytes


def write_metadata(model: onnx.ModelProto, value: dict) -> None:
    """Store `value` as JSON in metadata_props under `onnx_dns`, replacing what was there."""
    text = json.dumps(value, sort_keys=True)
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            prop.value = text
            return
    model.metadata_props.add(key=METADATA_KEY, value=text)


def read_metadata(model: onnx.ModelProto) -> dict | None:
    """What onnx-dns recorded in a model it wrote, or None."""
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            return json.loads(prop.value)
    return None
