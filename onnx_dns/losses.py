"""Attach a training loss to a model as plain ONNX nodes, so one graph gives the loss and the model's outputs.

Classification (output z of shape (N, C), or (N, ..., C) scored per position), with targets computed on the host:
    hard = -sum_c onehot(y)_c * log_softmax(z)_c                       (cross-entropy on labels)
    soft = T^2 * sum_c p_c * (log p_c - log_softmax(z / T)_c), p = softmax(z_teacher / T)   (distillation as
           KL divergence: Hinton et al.'s soft cross-entropy less the teacher's entropy, a constant)
    loss = mean over the batch of (w_hard * hard + w_soft * soft)
The sum over C is written as C times a ReduceMean over all elements, which every opset spells the same way.
A model ending in Softmax (possibly through Identity nodes, as skl2onnx writes it) is trained on the Softmax's
input (its logits); one ending in LogSoftmax on its output, since log_softmax is idempotent.
The output the loss reads is the first float tensor among the graph outputs unless one is named: converted
classifiers list an int64 label (ArgMax, Cast) first and may turn probabilities into a sequence of maps (ZipMap).
Regression (any output shape): loss = mean((y - target)^2), the target being labels or the teacher's outputs.
Distilling an output of rank 3 or more ([B, C, ...], e.g. a detection head [B, 4 + K, A] whose box coordinates are
in pixels and whose class scores are in [0, 1]), the error of each channel c is divided by s_c, the standard
deviation of the original model's channel c on the first batch, so that no channel's units swamp the others;
a recognised YOLO head is distilled with the detection loss of `onnx_dns.detection_loss` instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnx_dns.detection_loss import DetectionHead, DetectionTerms
from onnx_dns.errors import ModelError
from onnx_dns.graph import FLOAT_TYPES, attribute, default_opset, inferred_values, producers, source

log = logging.getLogger(__name__)

LOSS_OUTPUT = "dns_loss"
HARD_TARGET = "dns_target_hard"
SOFT_TARGET = "dns_target_soft"


@dataclass(frozen=True)
class LossSpec:
    """What the loss compares: `task` is "classify" or "regress"; weights mix labels and distillation."""

    task: str
    output: str
    label_weight: float
    distill_weight: float
    temperature: float = 4.0
    num_classes: int | None = None
    rank: int = 2
    channel_scale: tuple[float, ...] | None = None  # regression: the error of channel c (axis 1) is divided by it
    detection: DetectionHead | None = None  # distilled with the detection loss (detection_loss.py)

    @property
    def targets(self) -> tuple[str, ...]:
        names = []
        if self.label_weight > 0:
            names.append(HARD_TARGET)
        if self.distill_weight > 0:
            names.append(SOFT_TARGET)
        return tuple(names)


def logits_name(model: onnx.ModelProto, output: str) -> str:
    """The tensor that holds the logits behind `output`: the input of a final Softmax, seen through Identity
    nodes, or of the Exp of a softmax written out as Exp(z) / ReduceSum(Exp(z), last axis) (jax2tf's, behind a
    Sub of the row maximum), else `output`."""
    made_by = producers(model.graph)
    node = source(made_by, output, ("Identity",))
    if node is not None and node.op_type == "Softmax":
        return node.input[0]
    if node is not None and node.op_type == "Div":
        return _written_out_softmax(model, node, made_by) or output
    return output


SHAPE_ONLY = ("Identity", "Reshape", "Expand", "Unsqueeze")


def _written_out_softmax(model: onnx.ModelProto, div: onnx.NodeProto,
                         made_by: dict[str, onnx.NodeProto]) -> str | None:
    """z when `div` computes Exp(z) / ReduceSum(Exp(z)) over the last axis (the sum only reshaped or broadcast
    after), which is softmax(z) exactly; else None."""
    exp = made_by.get(div.input[0])
    total = made_by.get(div.input[1])
    while total is not None and total.op_type in SHAPE_ONLY:
        total = made_by.get(total.input[0])
    if exp is None or exp.op_type != "Exp" or total is None or total.op_type != "ReduceSum":
        return None
    if total.input[0] != exp.output[0]:
        return None
    rank = len(inferred_values(model).get(exp.output[0], onnx.ValueInfoProto()).type.tensor_type.shape.dim)
    inits = {t.name: t for t in model.graph.initializer}
    if len(total.input) > 1 and total.input[1] in inits:
        axes = numpy_helper.to_array(inits[total.input[1]]).reshape(-1).tolist()
    else:
        axes = attribute(total, "axes", None)
    return exp.input[0] if rank and axes is not None and [a % rank for a in axes] == [rank - 1] else None


def ends_in_softmax(model: onnx.ModelProto, output: str, rank: int) -> bool:
    """Whether `output` (of rank `rank`) is made by a Softmax or LogSoftmax over its last axis alone, seen
    through Identity nodes (before opset 13 the default axis 1 flattens the axes after it)."""
    made_by = producers(model.graph)
    node = source(made_by, output, ("Identity",))
    if node is None or node.op_type not in ("Softmax", "LogSoftmax"):
        return False
    axis = attribute(node, "axis", -1 if (default_opset(model) or 13) >= 13 else 1)
    return axis in (-1, rank - 1)


def loss_output(model: onnx.ModelProto, requested: str | None = None, name: str = "model") -> str:
    """The tensor the loss reads: `requested` (a graph output or any float tensor a node makes), else the first
    graph output that is a float tensor, else, when every output is something else (ArgMax or TopK indices, NMS
    boxes, ZipMap's sequence of maps), the last float tensor the first such output is computed from.
    """
    outputs = {o.name: o for o in model.graph.output}
    if requested is not None:
        return _requested(model, requested, name, outputs)
    for value in model.graph.output:
        if _is_float_tensor(value):
            return value.name
    found = _float_source(model, [o.name for o in model.graph.output])
    if found is None:
        zipmap = any(n.op_type == "ZipMap" for n in model.graph.node)
        hint = (" (skl2onnx: convert with options={id(model): {'zipmap': False}} to get probabilities as a tensor)"
                if zipmap else "")
        raise ModelError(f"{name}: no output is a float tensor the loss can read, nor computed from one; outputs: "
                         f"{_describe(outputs.values())}{hint}")
    log.info("%s: no output is a float tensor (%s): training on %r, the last float tensor they are computed from; "
             "choose another with --output-name", name, _describe(outputs.values()), found)
    return found


def _requested(model: onnx.ModelProto, requested: str, name: str, outputs: dict) -> str:
    if requested in outputs:
        if not _is_float_tensor(outputs[requested]):
            raise ModelError(f"{name}: output {requested!r} is of type {_kind(outputs[requested])}, not a float "
                             f"tensor the loss can read; outputs: {_describe(outputs.values())}")
        return requested
    if requested not in producers(model.graph):
        raise ModelError(f"{name}: no output or tensor named {requested!r}; outputs: {_describe(outputs.values())} "
                         "(any float tensor a node computes can be named)")
    value = inferred_values(model).get(requested)
    if value is not None and value.type.HasField("tensor_type") and not _is_float_tensor(value):
        raise ModelError(f"{name}: tensor {requested!r} is of type {_kind(value)}, not a float tensor the loss can "
                         "read")
    return requested


def _float_source(model: onnx.ModelProto, names: list[str]) -> str | None:
    """The first float tensor met walking back from `names` through the nodes that make them (breadth first)."""
    made_by = producers(model.graph)
    types = inferred_values(model)
    inits = {t.name for t in model.graph.initializer}
    queue, seen = list(names), set(names)
    while queue:
        current = queue.pop(0)
        value = types.get(current)
        if current not in names and value is not None and _is_float_tensor(value) and current in made_by:
            return current
        node = made_by.get(current)
        for name in node.input if node is not None else ():
            if name and name not in seen and name not in inits:
                seen.add(name)
                queue.append(name)
    return None


def _is_float_tensor(value: onnx.ValueInfoProto) -> bool:
    return value.type.HasField("tensor_type") and value.type.tensor_type.elem_type in FLOAT_TYPES


def _kind(value: onnx.ValueInfoProto) -> str:
    if value.type.HasField("tensor_type"):
        return onnx.TensorProto.DataType.Name(value.type.tensor_type.elem_type).lower() + " tensor"
    if value.type.HasField("sequence_type"):
        return "sequence of maps" if value.type.sequence_type.elem_type.HasField("map_type") else "sequence"
    return "map" if value.type.HasField("map_type") else "not a tensor"


def _describe(values) -> str:
    return ", ".join(f"{v.name} ({_kind(v)})" for v in values)


def attach_loss(model: onnx.ModelProto, spec: LossSpec) -> onnx.ModelProto:
    """A copy of `model` with target inputs, the loss nodes, and outputs `[dns_loss, *original outputs]`."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    value = next((o for o in out.graph.output if o.name == spec.output), None)
    if value is None:  # an intermediate tensor: made an output of the training graph
        value = inferred_values(model).get(spec.output)
        if value is None or not _is_float_tensor(value):
            raise ValueError(f"attach_loss: {spec.output!r} is neither an output nor a float tensor of the model")
        out.graph.output.add().CopyFrom(value)
        value = out.graph.output[-1]
    dims = value.type.tensor_type.shape.dim
    if len(dims) != spec.rank:  # declared wrong by the exporter (a torch export's [1, seqlen] for [T, 1, C]): the
        del dims[:]             # data's rank counts, with sizes left open
        for i in range(spec.rank):
            dims.add().dim_param = f"{spec.output}_dim{i}"
    builder = _LossBuilder(out.graph, value.type.tensor_type.elem_type, default_opset(model) or 13)
    if spec.task == "classify":
        terms = builder.classify(spec, logits_name(model, spec.output))
    elif spec.task == "regress":
        shape = [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim] or None
        terms = builder.regress(spec, shape)
    else:
        raise ValueError(f"attach_loss: unknown task {spec.task!r}")
    if not terms:
        raise ValueError("attach_loss: the loss has no term (label and distillation weights are both 0)")
    total = terms[0]
    for i, term in enumerate(terms[1:]):
        total = builder.node("Add", [total, term], f"sum_{i}")
    builder.nodes.append(helper.make_node("Identity", [total], [LOSS_OUTPUT], name=LOSS_OUTPUT))
    out.graph.node.extend(builder.nodes)
    outputs = list(out.graph.output)
    del out.graph.output[:]
    out.graph.output.append(helper.make_tensor_value_info(LOSS_OUTPUT, builder.elem, []))
    out.graph.output.extend(outputs)
    return out


class _LossBuilder:
    """Appends the loss's target inputs and constants to `graph` and collects its nodes (named dns_loss_*)."""

    def __init__(self, graph: onnx.GraphProto, elem: int, opset: int) -> None:
        self.graph = graph
        self.opset = opset
        self.elem = elem
        self.dtype = helper.tensor_dtype_to_np_dtype(elem)
        self.nodes: list[onnx.NodeProto] = []

    def const(self, name: str, number: float) -> str:
        self.graph.initializer.append(numpy_helper.from_array(np.array(number, dtype=self.dtype), f"dns_loss_{name}"))
        return f"dns_loss_{name}"

    def const_array(self, name: str, array: np.ndarray) -> str:
        self.graph.initializer.append(numpy_helper.from_array(array.astype(self.dtype), f"dns_loss_{name}"))
        return f"dns_loss_{name}"

    def node(self, op: str, inputs: list[str], name: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [f"dns_loss_{name}"], name=f"dns_loss_{name}", **attrs))
        return f"dns_loss_{name}"

    def target(self, name: str, shape) -> None:
        self.graph.input.append(helper.make_tensor_value_info(name, self.elem, shape))

    def classify(self, spec: LossSpec, z: str) -> list[str]:
        """Cross-entropy on one-hot labels and/or soft cross-entropy on the teacher's softened outputs."""
        if not spec.num_classes:
            raise ValueError("attach_loss: classification needs num_classes")
        target_shape = ["N", *[f"P{i}" for i in range(spec.rank - 2)], spec.num_classes]
        scale = float(spec.num_classes)
        terms = []
        if spec.label_weight > 0:
            self.target(HARD_TARGET, target_shape)
            logp = self.node("LogSoftmax", [z], "hard_logp", axis=-1)
            prod = self.node("Mul", [logp, HARD_TARGET], "hard_prod")
            mean = self.node("ReduceMean", [prod], "hard_mean", keepdims=0)
            terms.append(self.node("Mul", [mean, self.const("hard_scale", -scale * spec.label_weight)], "hard"))
        if spec.distill_weight > 0:
            t = spec.temperature
            self.target(SOFT_TARGET, target_shape)
            soft_z = self.node("Div", [z, self.const("temperature", t)], "soft_z")
            logp = self.node("LogSoftmax", [soft_z], "soft_logp", axis=-1)
            # KL rather than cross-entropy: the same gradient, but 0 for a student equal to its teacher, so the
            # learning-rate probe sees how far the loss falls rather than the teacher's entropy
            logt = self.node("Log", [self.node("Add", [SOFT_TARGET, self.const("soft_eps", 1e-30)], "soft_safe")],
                             "soft_logt")
            gap = self.node("Sub", [logt, logp], "soft_gap")
            prod = self.node("Mul", [gap, SOFT_TARGET], "soft_prod")
            mean = self.node("ReduceMean", [prod], "soft_mean", keepdims=0)
            weight = scale * t * t * spec.distill_weight
            terms.append(self.node("Mul", [mean, self.const("soft_scale", weight)], "soft"))
        return terms

    def regress(self, spec: LossSpec, shape) -> list[str]:
        """Mean squared error against labels and/or the teacher's outputs (a detection head's teacher outputs:
        the detection loss)."""
        terms = []
        for target, weight in ((HARD_TARGET, spec.label_weight), (SOFT_TARGET, spec.distill_weight)):
            if weight <= 0:
                continue
            self.target(target, shape)
            if target == SOFT_TARGET and spec.detection is not None:
                terms.append(DetectionTerms(self, self.opset).build(spec.output, target, spec.detection, weight))
                continue
            diff = self.node("Sub", [spec.output, target], f"{target}_diff")
            if spec.channel_scale is not None:
                per_channel = np.array(spec.channel_scale, self.dtype).reshape([1, -1] + [1] * (spec.rank - 2))
                diff = self.node("Div", [diff, self.const_array(f"{target}_scale", per_channel)], f"{target}_scaled")
            sq = self.node("Mul", [diff, diff], f"{target}_sq")
            mean = self.node("ReduceMean", [sq], f"{target}_mean", keepdims=0)
            terms.append(self.node("Mul", [mean, self.const(f"{target}_weight", weight)], f"{target}_term"))
        return terms
