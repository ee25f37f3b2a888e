"""Fold masks into their weights, as torch.nn.utils.prune.remove does, and store the result compactly.

For each masked weight W with mask T: W' = W * T (exact zeros where T is 0); the `Mul` node and the mask are
removed and every consumer reads W' again under its original name. The model then computes exactly what the
masked model computed. Pruning is not undone: the pruned values are gone.

Storage: with `sparse=True`, each folded weight whose COO form (values plus INT64 indices, 12 bytes a nonzero for
float32) is smaller than its dense form becomes an ONNX sparse initializer, so the file shrinks; onnxruntime
densifies it at load. With `sparse=False` the weights stay dense initializers holding exact zeros, which every
ONNX tool reads and any general compressor (gzip, zstd) shrinks.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_dns import __version__
from onnx_dns.graph import array_to_sparse, initializers, sparse_nbytes
from onnx_dns.insert_masks import mask_pairs, masked_name
from onnx_dns.passes import PassResult

METADATA_KEY = "onnx_dns"


def fold_masks(model: onnx.ModelProto, *, sparse: bool = True, record: dict | None = None) -> PassResult:
    """Multiply masks into weights, drop the mask nodes, and write sparse initializers where smaller.

    `record` (JSON-serialisable) is stored in metadata_props under `onnx_dns` with the tool version.
    """
    pairs = mask_pairs(model)
    if not pairs:
        return PassResult(model, False)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = initializers(graph)
    rename = {masked_name(w): w for w in pairs}
    mask_nodes = {masked_name(w) for w in pairs}
    kept_nodes = [n for n in graph.node if not (n.op_type == "Mul" and n.output and n.output[0] in mask_nodes)]
    for node in kept_nodes:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    for output in graph.output:
        if output.name in rename:
            raise ValueError(f"fold_masks: masked weight {output.name!r} is a graph output")
    del graph.node[:]
    graph.node.extend(kept_nodes)

    folded: dict[str, np.ndarray] = {}
    for weight, mask in pairs.items():
        w = numpy_helper.to_array(inits[weight])
        folded[weight] = (w * numpy_helper.to_array(inits[mask]).astype(w.dtype)).astype(w.dtype)
    dropped = set(pairs.values())
    to_sparse = {n for n, a in folded.items() if sparse and _sparse_is_smaller(a)}
    kept_inits = []
    for tensor in graph.initializer:
        if tensor.name in dropped:
            continue
        if tensor.name in to_sparse:
            graph.sparse_initializer.append(array_to_sparse(folded[tensor.name], tensor.name))
            continue
        if tensor.name in folded:
            tensor = numpy_helper.from_array(folded[tensor.name], tensor.name)
        kept_inits.append(tensor)
    del graph.initializer[:]
    graph.initializer.extend(kept_inits)
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
