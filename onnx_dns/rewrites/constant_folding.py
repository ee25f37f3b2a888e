"""Nodes that compute only from integer constants, evaluated once: shape arithmetic written as nodes.

Exporters compute pads, shapes and branch conditions from constants with small graphs (PyTorch's Pad:
ConstantOfShape -> Concat -> Reshape -> Slice -> Transpose -> Reshape -> Cast). Shape inference does not see
through them, so every tensor after such a Pad has unknown sizes and a rewrite that needs sizes (an LSTM unrolled
over its sequence) refuses its node. Evaluating those nodes with onnx's reference evaluator and storing their
outputs as initializers changes no value the graph computes. Only nodes whose inputs are all integer or boolean
constants are folded (never a weight or a mask, which training changes), without subgraphs or randomness, and only
when their outputs hold at most `MAX_ENTRIES` entries.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

from onnx_dns.graph import DEFAULT_DOMAINS, initializers
from onnx_dns.passes import PassResult

MAX_ENTRIES = 1 << 16
INTEGER_TYPES = {onnx.TensorProto.INT64, onnx.TensorProto.INT32, onnx.TensorProto.INT16, onnx.TensorProto.INT8,
                 onnx.TensorProto.UINT64, onnx.TensorProto.UINT32, onnx.TensorProto.UINT16,
                 onnx.TensorProto.UINT8, onnx.TensorProto.BOOL}
RANDOM = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial", "Bernoulli"}


def fold_integer_constants(model: onnx.ModelProto) -> PassResult:
    """Replace each top-level node computed from integer constants alone by initializers holding its outputs;
    the input model is not changed."""
    known = {name: numpy_helper.to_array(t) for name, t in initializers(model.graph).items()
             if t.data_type in INTEGER_TYPES}
    opsets = list(model.opset_import)
    folded: dict[str, np.ndarray] = {}
    dropped = set()
    for index, node in enumerate(model.graph.node):
        if not _foldable(node, known):
            continue
        outputs = evaluate_node(node, {name: known[name] for name in node.input if name}, opsets)
        if outputs is None or sum(v.size for v in outputs) > MAX_ENTRIES:
            continue
        for name, value in zip(node.output, outputs):
            folded[name] = value
            if value.dtype.kind in "iub":
                known[name] = value
        dropped.add(index)
    if not dropped:
        return PassResult(model, False)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    kept = [n for i, n in enumerate(out.graph.node) if i not in dropped]
    del out.graph.node[:]
    out.graph.node.extend(kept)
    out.graph.initializer.extend(numpy_helper.from_array(v, name) for name, v in folded.items() if name)
    return PassResult(out, True)


def evaluate_node(node: onnx.NodeProto, values: dict[str, np.ndarray],
                  opsets: list[onnx.OperatorSetIdProto]) -> list[np.ndarray] | None:
    """The outputs of one node fed `values`, by onnx's reference evaluator; None when it cannot run it."""
    graph = onnx.helper.make_graph(
        [node], "fold", [onnx.helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(v.dtype),
                                                            list(v.shape)) for n, v in values.items()],
        [onnx.helper.make_empty_tensor_value_info(n) for n in node.output if n])
    model = onnx.helper.make_model(graph, opset_imports=opsets)
    try:
        results = ReferenceEvaluator(model).run(None, values)
    except Exception:  # noqa: BLE001 - a node the reference evaluator cannot run is simply left in the graph
        return None
    return [np.asarray(r) for r in results]


def _foldable(node: onnx.NodeProto, known: dict[str, np.ndarray]) -> bool:
    if node.domain not in DEFAULT_DOMAINS or node.op_type in RANDOM or node.op_type == "Constant":
        return False
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
        return False
    inputs = [name for name in node.input if name]
    return bool(inputs) and all(name in known for name in inputs)
