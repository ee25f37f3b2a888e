"""How BatchNormalization and Dropout behave while onnx-dns fine-tunes (training graph only).

BatchNormalization: onnxruntime-training runs it on batch statistics and drops the running statistics it
computes, so the written model would normalize with statistics that were never trained with. By default the
statistics stay frozen instead: for training, each BatchNormalization becomes the affine map it computes at
inference,
    y = x * a + (bias - mean * a),  a = scale / sqrt(var + epsilon)  (per channel),
so training sees exactly the deployed function, and scale and bias still learn. With `update_bn_stats` the
layers train on batch statistics and `estimate_statistics` measures new running statistics afterwards.

Dropout: an exported inference model runs Dropout as identity; for training it gets training_mode = true
(opset 12 and later: earlier opsets have no training mode and rewrite_for_training makes them Identity).
onnxruntime's eval graph drops that input again, so evaluation stays deterministic.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnx_dns.graph import all_names, inferred_values, initializers, unique_name
from onnx_dns.passes import PassResult

log = logging.getLogger(__name__)


def opset_version(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def freeze_batchnorm(model: onnx.ModelProto) -> PassResult:
    """Replace each inference-mode BatchNormalization whose statistics are initializers by its affine map."""
    inits = initializers(model.graph)
    if not any(_frozen_candidate(n, inits) for n in model.graph.node):
        return PassResult(model, False)
    ranks = _input_ranks(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    taken = all_names(out.graph)
    nodes = []
    for node in out.graph.node:
        if not _frozen_candidate(node, inits):
            nodes.append(node)
            continue
        rank = ranks.get(node.input[0])
        if rank is None or rank < 2:
            log.warning("BatchNormalization %s: the rank of its input is unknown, so it trains on batch "
                        "statistics", node.name or node.output[0])
            nodes.append(node)
            continue
        nodes += _affine_nodes(node, rank, inits, out.graph, taken)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return PassResult(out, True)


def _frozen_candidate(node: onnx.NodeProto, inits: dict) -> bool:
    """An inference-mode BatchNormalization with initializer statistics and no statistics outputs."""
    return (node.op_type == "BatchNormalization" and len(node.input) == 5 and node.input[3] in inits
            and node.input[4] in inits and sum(1 for o in node.output if o) == 1
            and not _attribute(node, "training_mode", 0))


def _affine_nodes(node: onnx.NodeProto, rank: int, inits: dict, graph: onnx.GraphProto,
                  taken: set[str]) -> list[onnx.NodeProto]:
    x, scale, bias, mean, var = node.input
    epsilon = _attribute(node, "epsilon", 1e-5)
    variance = numpy_helper.to_array(inits[var])
    stem = (node.name or node.output[0]) + "__dns_bn"

    def name(suffix: str) -> str:
        return unique_name(taken, f"{stem}_{suffix}")

    inv_std, shape = name("inv_std"), name("shape")
    graph.initializer.extend([
        numpy_helper.from_array((1.0 / np.sqrt(variance.astype(np.float64) + epsilon)).astype(variance.dtype),
                                inv_std),
        numpy_helper.from_array(np.array([-1] + [1] * (rank - 2), np.int64), shape),
    ])
    a, mean_a, shift, a_c, shift_c, scaled = (name(s) for s in ("a", "mean_a", "shift", "a_c", "shift_c", "xa"))
    return [
        helper.make_node("Mul", [scale, inv_std], [a], name=a),
        helper.make_node("Mul", [mean, a], [mean_a], name=mean_a),
        helper.make_node("Sub", [bias, mean_a], [shift], name=shift),
        helper.make_node("Reshape", [a, shape], [a_c], name=a_c),
        helper.make_node("Reshape", [shift, shape], [shift_c], name=shift_c),
        helper.make_node("Mul", [x, a_c], [scaled], name=scaled),
        helper.make_node("Add", [scaled, shift_c], [node.output[0]], name=name("y")),
    ]


def enable_dropout(model: onnx.ModelProto) -> PassResult:
    """Give every Dropout without a training_mode input training_mode = true (opset 12 and later);
    rewrite_for_training then adds the mask output its gradient reads."""
    dropouts = [i for i, n in enumerate(model.graph.node) if n.op_type == "Dropout" and len(n.input) < 3]
    if not dropouts:
        return PassResult(model, False)
    if opset_version(model) < 12:
        log.warning("Dropout in opset %d has no training mode: it stays identity while training",
                    opset_version(model))
        return PassResult(model, False)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    taken = all_names(out.graph)
    flag, ratio = unique_name(taken, "dns_dropout_training"), unique_name(taken, "dns_dropout_ratio")
    out.graph.initializer.append(numpy_helper.from_array(np.array(True), flag))
    default_ratio = False
    for i in dropouts:
        node = out.graph.node[i]
        if len(node.input) < 2 or not node.input[1]:
            default_ratio = True
            del node.input[1:]
            node.input.append(ratio)
        node.input.append(flag)
    if default_ratio:
        out.graph.initializer.append(numpy_helper.from_array(np.array(0.5, np.float32), ratio))
    return PassResult(out, True)


def estimate_statistics(model: onnx.ModelProto, batches: Iterable[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Per-channel mean and variance of each BatchNormalization's input over `batches`, keyed by the names of
    the layers' mean and var initializers, in their dtypes (population variance, as BatchNormalization's
    training mode computes it)."""
    import onnxruntime

    inits = initializers(model.graph)
    layers = [n for n in model.graph.node if n.op_type == "BatchNormalization" and len(n.input) == 5
              and n.input[3] in inits and n.input[4] in inits]
    if not layers:
        return {}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    outputs = {o.name for o in probe.graph.output}
    for node in layers:
        if node.input[0] not in outputs:
            probe.graph.output.append(onnx.ValueInfoProto(name=node.input[0]))
            outputs.add(node.input[0])
    session = onnxruntime.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    sums: dict[str, list] = {}
    for batch in batches:
        values = dict(zip(names, session.run(None, batch)))
        for node in layers:
            x = values[node.input[0]].astype(np.float64)
            axes = (0, *range(2, x.ndim))
            total = sums.setdefault(node.input[0], [0.0, 0.0, 0])
            total[0] = total[0] + x.sum(axis=axes)
            total[1] = total[1] + np.square(x).sum(axis=axes)
            total[2] += x.size // x.shape[1]
    result = {}
    for node in layers:
        if node.input[0] not in sums:
            continue
        s, sq, count = sums[node.input[0]]
        mean = s / count
        var = np.maximum(sq / count - np.square(mean), 0.0)
        result[node.input[3]] = mean.astype(numpy_helper.to_array(inits[node.input[3]]).dtype)
        result[node.input[4]] = var.astype(numpy_helper.to_array(inits[node.input[4]]).dtype)
    return result


def _attribute(node: onnx.NodeProto, name: str, default):
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _input_ranks(model: onnx.ModelProto) -> dict[str, int]:
    """Rank of every value that shape inference can tell."""
    return {name: len(value.type.tensor_type.shape.dim) for name, value in inferred_values(model).items()
            if value.type.tensor_type.HasField("shape")}
