"""How BatchNormalization and Dropout behave while onnx-dns fine-tunes (training graph only).

BatchNormalization: onnxruntime-training runs it on batch statistics and drops the running statistics it
computes, so the written model would normalize with statistics that were never trained with. By default the
statistics stay frozen instead: for training, each BatchNormalization becomes the affine map it computes at
inference,
    y = x * a + (bias - mean * a),  a = scale / sqrt(var + epsilon)  (per channel),
so training sees exactly the deployed function, and scale and bias still learn. With `update_bn_stats` the
layers train on batch statistics and `estimate_statistics` measures new running statistics afterwards.

Dropout: an exported inference model runs Dropout as identity; for training it gets training_mode = true
(opset 12 and later; earlier opsets have no training mode: such a Dropout stays the identity it computes, and
rewrite_for_training corrects its gradient where onnxruntime would scale it). onnxruntime's eval graph drops the
training_mode input again, so evaluation stays deterministic.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnx_dns.graph import all_names, attribute, axes_are_input, default_opset, inferred_values, initializers, unique_name
from onnx_dns.passes import PassResult

log = logging.getLogger(__name__)


def freeze_batchnorm(model: onnx.ModelProto) -> PassResult:
    """Replace each inference-mode BatchNormalization whose statistics are initializers by its affine map."""
    inits = initializers(model.graph)
    if not any(_frozen_candidate(n, inits) for n in model.graph.node):
        return PassResult(model, False)
    values = inferred_values(model)
    producers = {o: n for n in model.graph.node for o in n.output}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    taken = all_names(out.graph)
    nodes = []
    for node in out.graph.node:
        if not _frozen_candidate(node, inits):
            nodes.append(node)
            continue
        x = values.get(node.input[0])
        rank = _rank(node.input[0], values, producers, inits)
        types = {inits[n].data_type for n in node.input[1:] if n in inits}
        if x is not None and x.type.tensor_type.elem_type:
            types.add(x.type.tensor_type.elem_type)
        if rank < 2 or len(types) > 1 or attribute(node, "spatial", 1) == 0:
            log.warning("BatchNormalization %s trains on batch statistics: its input's rank is unknown, its "
                        "inputs differ in type, or it is per-activation (spatial=0)", node.name or node.output[0])
            nodes.append(node)
            continue
        nodes += _affine_nodes(node, rank, inits, out.graph, taken)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return PassResult(out, True)


def _rank(name: str, values: dict, producers: dict, inits: dict) -> int:
    """The rank of value `name` as shape inference tells it, else, for a convolution's output, the rank of its
    weight (a Conv after a Reshape to a computed shape, as paddle2onnx writes the PP-OCRv4 recognizer's neck,
    has no inferred shape); 0 when unknown."""
    value = values.get(name)
    if value is not None and value.type.tensor_type.HasField("shape"):
        return len(value.type.tensor_type.shape.dim)
    producer = producers.get(name)
    if producer is None or producer.op_type not in ("Conv", "ConvTranspose") or len(producer.input) < 2:
        return 0
    weight = producer.input[1]
    if weight in inits:
        return len(inits[weight].dims)
    return _rank(weight, values, {}, inits)


def _frozen_candidate(node: onnx.NodeProto, inits: dict) -> bool:
    """An inference-mode BatchNormalization with initializer statistics and no statistics outputs."""
    return (node.op_type == "BatchNormalization" and len(node.input) == 5 and node.input[3] in inits
            and node.input[4] in inits and sum(1 for o in node.output if o) == 1
            and not attribute(node, "training_mode", 0))


def _affine_nodes(node: onnx.NodeProto, rank: int, inits: dict, graph: onnx.GraphProto,
                  taken: set[str]) -> list[onnx.NodeProto]:
    x, scale, bias, mean, var = node.input
    epsilon = attribute(node, "epsilon", 1e-5)
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
    dropouts = [i for i, n in enumerate(model.graph.node)
                if n.op_type == "Dropout" and (len(n.input) < 3 or not n.input[2])]
    if not dropouts:
        return PassResult(model, False)
    opset = default_opset(model) or 0
    if opset < 12:
        log.warning("Dropout in opset %d has no training mode: it stays identity while training", opset)
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
        del node.input[2:]
        node.input.append(flag)
    if default_ratio:
        out.graph.initializer.append(numpy_helper.from_array(np.array(0.5, np.float32), ratio))
    return PassResult(out, True)


def estimate_statistics(model: onnx.ModelProto, batches: Iterable[dict[str, np.ndarray]],
                        layers: Collection[str] | None = None) -> dict[str, np.ndarray]:
    """New running statistics of BatchNormalization layers (those whose mean initializer is named in `layers`;
    all when None), keyed by the names of their mean and var initializers, in their dtypes.

    The model runs with those layers normalizing by batch statistics, as they trained, so a layer after another
    sees inputs normalized as in training rather than by stale statistics; each layer's per-channel mean and
    (population) variance are pooled over `batches`."""
    from onnx_dns.ort_training import runtime, session_options

    inits = initializers(model.graph)
    chosen = [n for n in model.graph.node if _has_statistics(n, inits) and (layers is None or n.input[3] in layers)]
    if not chosen:
        return {}
    ranks = _input_ranks(model)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    taken = all_names(probe.graph)
    wanted = {n.input[3] for n in chosen}
    moments: dict[str, tuple[str, str]] = {}  # mean initializer -> (batch mean, batch variance) outputs
    nodes = []
    for node in probe.graph.node:
        chosen_here = _has_statistics(node, inits) and node.input[3] in wanted
        rank = ranks.get(node.input[0], 0) if chosen_here else 0
        if rank < 2 or attribute(node, "spatial", 1) == 0:
            nodes.append(node)
            continue
        batch_nodes, mean, var = _batch_statistics_nodes(node, rank, inits, probe, taken)
        nodes += batch_nodes
        moments[node.input[3]] = (mean, var)
    del probe.graph.node[:]
    probe.graph.node.extend(nodes)
    for mean, var in moments.values():
        probe.graph.output.extend([onnx.ValueInfoProto(name=mean), onnx.ValueInfoProto(name=var)])
    session = runtime().InferenceSession(probe.SerializeToString(), session_options(),
                                           providers=["CPUExecutionProvider"])
    fetch = [name for pair in moments.values() for name in pair]
    sums = {key: [0.0, 0.0] for key in moments}
    count = 0
    for batch in batches:
        values = dict(zip(fetch, session.run(fetch, batch)))
        for key, (mean, var) in moments.items():
            m = values[mean].astype(np.float64).reshape(-1)
            sums[key][0] = sums[key][0] + m
            sums[key][1] = sums[key][1] + values[var].astype(np.float64).reshape(-1) + np.square(m)
        count += 1
    result = {}
    for node in chosen:
        key = node.input[3]
        if key not in moments or not count:
            continue
        mean = sums[key][0] / count
        var = np.maximum(sums[key][1] / count - np.square(mean), 0.0)
        result[key] = mean.astype(numpy_helper.to_array(inits[key]).dtype)
        result[node.input[4]] = var.astype(numpy_helper.to_array(inits[node.input[4]]).dtype)
    return result


def _has_statistics(node: onnx.NodeProto, inits: dict) -> bool:
    return (node.op_type == "BatchNormalization" and len(node.input) == 5 and node.input[3] in inits
            and node.input[4] in inits)


def _batch_statistics_nodes(node: onnx.NodeProto, rank: int, inits: dict, model: onnx.ModelProto,
                            taken: set[str]) -> tuple[list[onnx.NodeProto], str, str]:
    """BatchNormalization in training mode as plain operators: normalize by the batch's per-channel mean and
    variance; returns the nodes and the names of the batch mean and variance ([1, C, 1, ...])."""
    x, scale, bias, _, var = node.input
    dtype = numpy_helper.to_array(inits[var]).dtype
    stem = (node.name or node.output[0]) + "__dns_bnstat"

    def name(suffix: str) -> str:
        return unique_name(taken, f"{stem}_{suffix}")

    axes = [0, *range(2, rank)]
    epsilon, shape, axes_name = name("epsilon"), name("shape"), name("axes")
    model.graph.initializer.extend([
        numpy_helper.from_array(np.array(attribute(node, "epsilon", 1e-5), dtype), epsilon),
        numpy_helper.from_array(np.array([-1] + [1] * (rank - 2), np.int64), shape),
    ])

    axes_as_input = axes_are_input("ReduceMean", default_opset(model) or 0)

    def reduce_mean(source: str, out: str) -> onnx.NodeProto:
        if axes_as_input:
            return helper.make_node("ReduceMean", [source, axes_name], [out], name=out, keepdims=1)
        return helper.make_node("ReduceMean", [source], [out], name=out, axes=axes, keepdims=1)

    if axes_as_input:
        model.graph.initializer.append(numpy_helper.from_array(np.array(axes, np.int64), axes_name))
    mean, diff, square, variance, shifted, std, normed, scale_c, bias_c, scaled = (name(s) for s in (
        "mean", "diff", "square", "var", "var_eps", "std", "normed", "scale_c", "bias_c", "scaled"))
    nodes = [
        reduce_mean(x, mean),
        helper.make_node("Sub", [x, mean], [diff], name=diff),
        helper.make_node("Mul", [diff, diff], [square], name=square),
        reduce_mean(square, variance),
        helper.make_node("Add", [variance, epsilon], [shifted], name=shifted),
        helper.make_node("Sqrt", [shifted], [std], name=std),
        helper.make_node("Div", [diff, std], [normed], name=normed),
        helper.make_node("Reshape", [scale, shape], [scale_c], name=scale_c),
        helper.make_node("Reshape", [bias, shape], [bias_c], name=bias_c),
        helper.make_node("Mul", [normed, scale_c], [scaled], name=scaled),
        helper.make_node("Add", [scaled, bias_c], [node.output[0]], name=name("y")),
    ]
    return nodes, mean, variance


def _input_ranks(model: onnx.ModelProto) -> dict[str, int]:
    """Rank of every value that shape inference can tell."""
    return {name: len(value.type.tensor_type.shape.dim) for name, value in inferred_values(model).items()
            if value.type.tensor_type.HasField("shape")}
