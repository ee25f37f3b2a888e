"""Make a model trainable in onnxruntime-training (1.19.2, CPU) by rewriting operators that have no gradient
there into exactly equivalent subgraphs of operators that do.

The rewritten model is only for building the training artifacts: initializer names, graph inputs and outputs and
every other node stay as they were, so the trained initializer values can be written back, by name, into the
user's original graph (which keeps its original operators). Each replacement writes the original node's output
names; its intermediate tensors and nodes are named `<node label>__dns_<what>` (made unique), and its
constants are `Constant` nodes, so the set of initializers does not change. Only top-level nodes of the
default ONNX domain are touched; opsets 11 to 21 are supported (ORT 1.19 accepts opset <= 21).

Notation: X is the node's input of shape (N, C, D1, ..., Dk), x one of its entries, r = rank(X).

LRN (size, alpha = 1e-4, beta = 0.75, bias = 1.0; same semantics in every opset)::

    y[n,c,.] = x[n,c,.] / (bias + alpha / size * sum_{i = c - lo}^{c + hi} x[n,i,.]^2) ^ beta
    lo = floor((size - 1) / 2), hi = ceil((size - 1) / 2) = size - 1 - lo   (channels outside [0, C) count 0)

  P = Pad(X * X, channels (lo, hi), constant 0) has C + size - 1 channels, the zeros standing for the channels
  outside [0, C); the window sum is sum_{i=0}^{size-1} P[:, i : i + C] (Slices with end i - (size - 1), or "to
  the end" for the last one, so C need not be known). Y = X / Pow(bias + alpha / size * window, beta).
  Every step keeps X's rank (known from shape inference, any r >= 2) and its sizes, so Y gets X's shape. An
  earlier form worked on Reshape(X, [0, 0, -1]) and reshaped back to Shape(X): with a symbolic batch Y's sizes
  were then unknown, and a MaxPool after the LRN (AlexNet's norm1 -> pool1) crashed the training step with
  SIGSEGV (measured).
  (An AveragePool over the channel axis would be shorter, but ORT's CPU AveragePool gradient is only right when
  every dimension of its input is static: a symbolic batch size crashes the training step with SIGFPE and
  symbolic spatial sizes give an all-zero gradient, measured; MaxPool's gradient is zero with symbolic spatial
  sizes too.) onnxruntime's own LRN kernel accepts only 4-D inputs and odd sizes; the rewrite follows the
  ONNX spec for any rank and size.

PRelu (slope unidirectionally broadcastable to X; opsets 7-16 differ only in types)::

    prelu(x) = x if x >= 0 else slope * x  =  Relu(x) - slope * Relu(-x)

  Y = Sub(Relu(X), Mul(slope, Relu(Neg(X)))). The slope stays a direct input of the Mul under its own name,
  so an initializer slope stays trainable. Bit-exact: one of the two terms is exactly 0.

Elu (alpha = 1.0)::

    elu(x) = x if x >= 0 else alpha * (exp(x) - 1)  =  Relu(x) + alpha * (exp(min(x, 0)) - 1)
    min(x, 0) = -Relu(-x)

  Y = Add(Relu(X), Mul(Sub(Exp(Neg(Relu(Neg(X)))), 1), alpha)).

HardSigmoid (alpha = 0.2, beta = 0.5)::

    hardsigmoid(x) = max(0, min(1, alpha * x + beta))  =  Clip(alpha * x + beta, 0, 1)

HardSwish (opset 14+; its ONNX function body is x * HardSigmoid<alpha = 1/6, beta = 0.5>(x))::

    hardswish(x) = x * Clip(x / 6 + 0.5, 0, 1)       (1/6 rounded to X's type, as in the function body)

GlobalMaxPool (needs r >= 3 known from shape inference)::

    y[n,c,1,...,1] = max_{d} x[n,c,d]

  ReduceMax has no gradient in ORT 1.19 (measured), TopK has: V, _ = TopK(Reshape(X, [0, 0, -1]), K=[1],
  axis=2, largest=1) is the maximum of each (n, c) row; Y = Reshape(V, [0, 0, 1, ..., 1]) (r - 2 ones).

Sum (multidirectional broadcast, opsets 8/13)::

    Sum(x1, ..., xm) = (...((x1 + x2) + x3) + ...) + xm ; Sum(x1) = Identity(x1)

  Add broadcasts the same way, and broadcasting is associative.

InstanceNormalization (epsilon = 1e-5; scale and B of shape (C,))::

    y[n,c,.] = scale[c] * (x[n,c,.] - mean[n,c]) / sqrt(var[n,c] + epsilon) + B[c]
    mean, var: over the spatial axes, var = mean((x - mean)^2) (biased)

  Over X3 = Reshape(X, [0, 0, -1]) (shape (N, C, M)): D = X3 - ReduceMean(X3, axis 2, keepdims);
  V = ReduceMean(D * D, axis 2, keepdims); Y3 = D / Sqrt(V + epsilon) * Reshape(scale, [-1, 1])
  + Reshape(B, [-1, 1]); Y = Reshape(Y3, Shape(X)). scale and B stay direct inputs under their own names.
  ReduceMean takes `axes` as an attribute up to opset 17 and as an input from opset 18; both are written.

LayerNormalization (opset 17+): ORT's gradient builder reads the optional outputs Mean and InvStdDev and the
optional input B; it fails with "i < node_->OutputDefs().size() was false" when the node has only Y, and with
"i < node_->InputDefs().size() was false" when B is missing. The same node (same name, attributes, inputs) is
re-emitted with all three outputs (missing ones get new names, nobody reads them) and, without B, with
B = ConstantOfShape(Shape(scale), 0), which adds 0. This trains on CPU (measured) and ORT's fused
LayerNormalizationGrad is cheaper than a decomposition.

Dropout (opset 12+, where ratio and training_mode are inputs). Measured in ORT 1.19: a Dropout with a ratio input
and only its first output fails `generate_artifacts` ("i < node_->OutputDefs().size() was false": DropoutGrad
reads the mask output), and with the mask output its gradient is dY / (1 - ratio) even when training_mode is
absent or false, where the forward pass is the identity (2x for ratio 0.5). A Dropout with its data input alone
is removed by ORT before the gradient is built and trains correctly, so it is left as it is.

- training_mode absent (inference, the default; Y = X): Y = Identity(X), and a named mask output becomes
  ConstantOfShape(Shape(X), true), as the op defines it.
- training_mode given, mask output missing: the same node gets a mask output nobody reads (in training mode the
  gradient then goes through the same random mask as the forward pass; a training_mode that is false still
  gets ORT's scaled gradient, reported by nothing: its value is not known here).

Measured on onnxruntime-training-cpu 1.19.2 with a one-node model behind a trainable Conv: each of the ops
above (LayerNormalization with one output) fails `generate_artifacts` with "The gradient builder has not been
registered: <Op>"; ConvTranspose and Resize build artifacts but the training session fails ("Could not find an
implementation for ConvTransposeGrad(1)" / "ResizeGrad(1)": CUDA-only kernels). Every operator used by the
replacements (Relu, Neg, Mul, Add, Sub, Div, Pow, Exp, Sqrt, Clip, Pad (constant), Slice, TopK, ReduceMean,
Reshape, Shape, ConstantOfShape, Identity, LayerNormalization with 3 outputs) builds and trains, with symbolic
batch and spatial sizes; tests check the gradients against finite differences of numpy reference
implementations of the original ops.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnx_dns.graph import (DEFAULT_DOMAINS, FLOAT_TYPES, all_names, attribute, default_opset, inferred_values,
                            node_label, unique_name)
from onnx_dns.passes import PassResult


# No gradient builder registered in onnxruntime-training 1.19.2 (each measured: generate_artifacts fails with
# "The gradient builder has not been registered: <Op>").
NO_GRADIENT = frozenset({
    "LRN", "PRelu", "Elu", "HardSigmoid", "HardSwish", "GlobalMaxPool", "Sum", "InstanceNormalization",
    "Einsum", "DepthToSpace", "SpaceToDepth", "Upsample", "Selu", "Celu", "Softplus", "Softsign",
    "ThresholdedRelu", "Shrink", "Mish", "Sign", "Round", "Floor", "Ceil", "LpNormalization", "LpPool",
    "GlobalLpPool", "GroupNormalization", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceSumSquare",
    "ReduceLogSum", "Mean", "CumSum",
})
# A gradient builder exists, but its gradient kernel only for CUDA: artifacts build, the CPU session fails with
# "Could not find an implementation for ConvTransposeGrad(1)" / "ResizeGrad(1)".
CUDA_ONLY_GRADIENT = frozenset({"ConvTranspose", "Resize"})

MIN_OPSET, MAX_OPSET = 11, 21


class _Skip(Exception):
    """A node this pass cannot rewrite (unknown type or rank): it is left as it is."""


def rewrite_for_training(model: onnx.ModelProto) -> PassResult:
    """Replace each top-level node without a CPU gradient by an equivalent subgraph that has one.

    The input model is not changed. Nodes whose input type or rank cannot be inferred, whose type is not a float
    type, or whose op is not in this model's opset are left as they are (`untrainable_nodes` reports them).
    """
    graph = model.graph
    if not any(_is_default(n) and n.op_type in _REWRITES for n in graph.node):
        return PassResult(model, False)
    opset = default_opset(model)
    if opset is None or not MIN_OPSET <= opset <= MAX_OPSET:
        return PassResult(model, False)
    types, shapes = _infer_types_and_shapes(model)
    taken = all_names(graph)
    new_nodes: list[onnx.NodeProto] = []
    modified = False
    for index, node in enumerate(graph.node):
        rewrite = _REWRITES.get(node.op_type) if _is_default(node) else None
        if rewrite is not None:
            emitter = _Emitter(node, node_label(node, index), opset, types, shapes, taken)
            try:
                rewrite(emitter, node)
            except _Skip:
                emitter.release()
            else:
                new_nodes.extend(emitter.nodes)
                modified = True
                continue
        copied = onnx.NodeProto()
        copied.CopyFrom(node)
        new_nodes.append(copied)
    if not modified:
        return PassResult(model, False)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(new_nodes)
    return PassResult(out, True)


def untrainable_nodes(model: onnx.ModelProto, trainable: Iterable[str] | None = None) -> list[tuple[str, str]]:
    """(node label, op type) of the top-level default-domain nodes whose op has no gradient on CPU in
    onnxruntime-training 1.19.2 (run it after `rewrite_for_training`).

    With `trainable` (names of tensors that require a gradient), only nodes that read one of them, directly or
    through other nodes, are listed: a node that only sits before every trainable tensor needs no gradient.
    """
    graph = model.graph
    downstream: set[str] | None = None
    if trainable is not None:
        downstream = set(trainable)
        for node in graph.node:  # nodes are topologically sorted
            if any(name in downstream for name in node.input):
                downstream.update(n for n in node.output if n)
    found = []
    for index, node in enumerate(graph.node):
        if not _is_default(node) or _gradient_problem(node) is None:
            continue
        if downstream is not None and not any(name in downstream for name in node.input):
            continue
        found.append((node_label(node, index), node.op_type))
    return found


def untrainable_message(model: onnx.ModelProto, nodes: list[tuple[str, str]]) -> str:
    """One readable sentence per node returned by `untrainable_nodes`, for an error message."""
    by_label = {node_label(n, i): n for i, n in enumerate(model.graph.node)}
    lines = []
    for label, op in nodes:
        node = by_label.get(label)
        why = _gradient_problem(node) if node is not None else None
        lines.append(f"node {label} ({op}) has no gradient in onnxruntime-training; {why or 'it cannot be trained'}")
    return "\n".join(lines)


def _gradient_problem(node: onnx.NodeProto) -> str | None:
    op = node.op_type
    if op in NO_GRADIENT:
        how = " and has no equivalent rewrite here" if op not in _REWRITES else " and could not be rewritten " \
            "(its input type or rank is unknown, or the model's opset is outside 11-21)"
        return f"onnxruntime-training 1.19 registers no gradient builder for {op}{how}"
    if op in recurrent.GATES:
        return recurrent.gradient_problem(node)
    if op in CUDA_ONLY_GRADIENT:
        return f"the {op}Grad kernel of onnxruntime-training 1.19 exists only for CUDA, not on CPU"
    if op == "LayerNormalization" and (sum(1 for o in node.output if o) < 3 or _layer_norm_lacks_bias(node)):
        return "its gradient needs the Mean and InvStdDev outputs and the bias input (run rewrite_for_training)"
    if op == "Dropout" and _dropout_problem(node) == "inference":
        return ("with a ratio input and no training_mode its gradient is wrong (dY / (1 - ratio), though it "
                "passes X unchanged) or fails (run rewrite_for_training)")
    if op == "Dropout" and _dropout_problem(node) == "no mask":
        return "its gradient reads the mask output, which this node does not have (run rewrite_for_training)"
    if op == "Pad":
        mode = attribute(node, "mode", b"constant")
        if mode not in (b"constant", "constant"):
            return "the Pad gradient supports constant mode only"
    return None


# ---------------------------------------------------------------- emitting replacement nodes


class _Emitter:
    """Writes the replacement nodes of one node, naming new tensors `<label>__dns_<what>`."""

    def __init__(self, node, label, opset, types, shapes, taken):
        self.node, self.label, self.opset = node, label, opset
        self._types, self._shapes, self._taken = types, shapes, taken
        self._mine: list[str] = []
        self.nodes: list[onnx.NodeProto] = []

    def release(self) -> None:
        """Give back the names this emitter took (the rewrite was skipped)."""
        self._taken.difference_update(self._mine)

    def name(self, what: str) -> str:
        name = unique_name(self._taken, f"{self.label}__dns_{what}")
        self._mine.append(name)
        return name

    def float_dtype(self, tensor: str) -> np.dtype:
        """numpy type of the constants a rewrite writes beside `tensor` (bfloat16 has none: skipped)."""
        elem = self._types.get(tensor)
        if elem not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16):
            raise _Skip
        return helper.tensor_dtype_to_np_dtype(elem)

    def require_float_or_unknown(self, tensor: str) -> None:
        elem = self._types.get(tensor)
        if elem is not None and elem not in FLOAT_TYPES:
            raise _Skip

    def rank(self, tensor: str) -> int:
        shape = self._shapes.get(tensor)
        if shape is None:
            raise _Skip
        return len(shape)

    def dim(self, tensor: str, axis: int) -> int:
        """A size of `tensor` that shape inference knows as a number."""
        shape = self._shapes.get(tensor)
        if shape is None or not -len(shape) <= axis < len(shape) or shape[axis] is None:
            raise _Skip
        return shape[axis]

    def op(self, op_type: str, inputs: list[str], what: str, output: str | None = None, **attrs) -> str:
        out = output if output is not None else self.name(what)
        node_name = self.name(what) if output is not None else out
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=node_name, **attrs))
        return out

    def const(self, array, what: str) -> str:
        out = self.name(what)
        tensor = numpy_helper.from_array(np.asarray(array), out)
        self.nodes.append(helper.make_node("Constant", [], [out], name=out, value=tensor))
        return out

    def reduce_mean(self, x: str, axes: list[int], what: str) -> str:
        if self.opset >= 18:
            return self.op("ReduceMean", [x, self.const(np.array(axes, np.int64), what + "_axes")], what,
                           keepdims=1)
        return self.op("ReduceMean", [x], what, axes=axes, keepdims=1)

    def reshape(self, x: str, shape, what: str, output: str | None = None) -> str:
        if not isinstance(shape, str):
            shape = self.const(np.array(shape, np.int64), what + "_shape")
        return self.op("Reshape", [x, shape], what, output)


def _lrn(e: _Emitter, node: onnx.NodeProto) -> None:
    x, y = node.input[0], node.output[0]
    dtype = e.float_dtype(x)
    size = int(attribute(node, "size", 0))
    rank = e.rank(x)
    if size < 1 or rank < 2:
        raise _Skip
    alpha, beta, bias = attribute(node, "alpha", 1e-4), attribute(node, "beta", 0.75), attribute(node, "bias", 1.0)
    lo = (size - 1) // 2
    hi = size - 1 - lo
    square = e.op("Mul", [x, x], "square")
    rest = [0] * (rank - 2)
    pads = e.const(np.array([0, lo, *rest, 0, hi, *rest], np.int64), "pads")
    padded = e.op("Pad", [square, pads], "padded", mode="constant")  # (N, lo + C + hi, ...): zeros outside
    axis = e.const(np.array([1], np.int64), "channel_axis")
    window = None
    for i in range(size):  # channels [c - lo + i] for c in [0, C): padded[:, i : i + C]
        end = i - (size - 1) if i < size - 1 else np.iinfo(np.int64).max
        piece = e.op("Slice", [padded, e.const(np.array([i], np.int64), f"start{i}"),
                               e.const(np.array([end], np.int64), f"end{i}"), axis], f"shift{i}")
        window = piece if window is None else e.op("Add", [window, piece], f"window{i}")
    scaled = e.op("Mul", [window, e.const(np.array(alpha / size, dtype), "alpha_over_size")], "scaled")
    base = e.op("Add", [scaled, e.const(np.array(bias, dtype), "bias")], "base")
    denominator = e.op("Pow", [base, e.const(np.array(beta, dtype), "beta")], "denominator")
    e.op("Div", [x, denominator], "quotient", output=y)


def _prelu(e: _Emitter, node: onnx.NodeProto) -> None:
    x, slope = node.input[0], node.input[1]
    e.require_float_or_unknown(x)
    positive = e.op("Relu", [x], "positive")
    negated = e.op("Neg", [x], "neg")
    magnitude = e.op("Relu", [negated], "negative_magnitude")
    scaled = e.op("Mul", [slope, magnitude], "scaled")
    e.op("Sub", [positive, scaled], "sub", output=node.output[0])


def _elu(e: _Emitter, node: onnx.NodeProto) -> None:
    x = node.input[0]
    dtype = e.float_dtype(x)
    alpha = attribute(node, "alpha", 1.0)
    positive = e.op("Relu", [x], "positive")
    magnitude = e.op("Relu", [e.op("Neg", [x], "neg")], "negative_magnitude")
    minimum = e.op("Neg", [magnitude], "min0")  # min(x, 0)
    expm1 = e.op("Sub", [e.op("Exp", [minimum], "exp"), e.const(np.array(1, dtype), "one")], "expm1")
    negative = e.op("Mul", [expm1, e.const(np.array(alpha, dtype), "alpha")], "negative")
    e.op("Add", [positive, negative], "add", output=node.output[0])


def _hard_sigmoid_of(e: _Emitter, x: str, dtype, alpha: float, beta: float, output: str | None) -> str:
    scaled = e.op("Mul", [x, e.const(np.array(alpha, dtype), "alpha")], "scaled")
    shifted = e.op("Add", [scaled, e.const(np.array(beta, dtype), "beta")], "shifted")
    low, high = e.const(np.array(0, dtype), "zero"), e.const(np.array(1, dtype), "one")
    return e.op("Clip", [shifted, low, high], "clip", output=output)


def _hard_sigmoid(e: _Emitter, node: onnx.NodeProto) -> None:
    x = node.input[0]
    dtype = e.float_dtype(x)
    _hard_sigmoid_of(e, x, dtype, attribute(node, "alpha", 0.2), attribute(node, "beta", 0.5), node.output[0])


def _hard_swish(e: _Emitter, node: onnx.NodeProto) -> None:
    x = node.input[0]
    dtype = e.float_dtype(x)
    gate = _hard_sigmoid_of(e, x, dtype, 1.0 / 6.0, 0.5, None)
    e.op("Mul", [x, gate], "mul", output=node.output[0])


def _global_max_pool(e: _Emitter, node: onnx.NodeProto) -> None:
    x = node.input[0]
    e.require_float_or_unknown(x)
    rank = e.rank(x)
    if rank < 3:
        raise _Skip
    rows = e.reshape(x, [0, 0, -1], "rows")
    values, indices = e.name("max"), e.name("argmax")
    e.nodes.append(helper.make_node("TopK", [rows, e.const(np.array([1], np.int64), "k")], [values, indices],
                                    name=values, axis=2, largest=1, sorted=1))
    e.reshape(values, [0, 0] + [1] * (rank - 2), "reshape", output=node.output[0])


def _sum(e: _Emitter, node: onnx.NodeProto) -> None:
    inputs = list(node.input)
    for name in inputs:
        e.require_float_or_unknown(name)
    if len(inputs) == 1:
        e.op("Identity", inputs, "identity", output=node.output[0])
        return
    total = inputs[0]
    for i, term in enumerate(inputs[1:], start=1):
        last = i == len(inputs) - 1
        total = e.op("Add", [total, term], f"add{i}", output=node.output[0] if last else None)


def _instance_norm(e: _Emitter, node: onnx.NodeProto) -> None:
    x, scale, bias = node.input[0], node.input[1], node.input[2]
    dtype = e.float_dtype(x)
    epsilon = attribute(node, "epsilon", 1e-5)
    rows = e.reshape(x, [0, 0, -1], "rows")  # (N, C, M)
    centred = e.op("Sub", [rows, e.reduce_mean(rows, [2], "mean")], "centred")
    variance = e.reduce_mean(e.op("Mul", [centred, centred], "square"), [2], "variance")
    std = e.op("Sqrt", [e.op("Add", [variance, e.const(np.array(epsilon, dtype), "epsilon")], "var_eps")], "std")
    normalized = e.op("Div", [centred, std], "normalized")
    scaled = e.op("Mul", [normalized, e.reshape(scale, [-1, 1], "scale_column")], "scaled")
    shifted = e.op("Add", [scaled, e.reshape(bias, [-1, 1], "bias_column")], "shifted")
    e.reshape(shifted, e.op("Shape", [x], "shape"), "reshape", output=node.output[0])


def _layer_norm(e: _Emitter, node: onnx.NodeProto) -> None:
    outputs = list(node.output) + [""] * (3 - len(node.output))
    if all(outputs) and not _layer_norm_lacks_bias(node):
        raise _Skip  # already trainable
    e.require_float_or_unknown(node.input[0])
    new = onnx.NodeProto()
    new.CopyFrom(node)
    if _layer_norm_lacks_bias(node):  # ORT's gradient reads the bias input: give it zeros
        dtype = e.float_dtype(node.input[0])
        zero = numpy_helper.from_array(np.zeros(1, dtype), "")
        shape = e.op("Shape", [node.input[1]], "scale_shape")
        del new.input[:]
        new.input.extend([node.input[0], node.input[1], e.op("ConstantOfShape", [shape], "zero_bias", value=zero)])
    outputs = [o or e.name(what) for o, what in zip(outputs, ("y", "mean", "inv_std_dev"))]
    del new.output[:]
    new.output.extend(outputs)
    e.nodes.append(new)


def _layer_norm_lacks_bias(node: onnx.NodeProto) -> bool:
    return len(node.input) < 3 or not node.input[2]


def _dropout(e: _Emitter, node: onnx.NodeProto) -> None:
    problem = _dropout_problem(node)
    if problem == "inference":
        x, mask = node.input[0], node.output[1] if len(node.output) > 1 else ""
        e.op("Identity", [x], "identity", output=node.output[0])
        if mask:
            true = numpy_helper.from_array(np.ones(1, np.bool_), "")
            e.op("ConstantOfShape", [e.op("Shape", [x], "shape")], "mask", output=mask, value=true)
    elif problem == "no mask":
        new = onnx.NodeProto()
        new.CopyFrom(node)
        del new.output[:]
        new.output.extend([node.output[0], e.name("mask")])
        e.nodes.append(new)
    else:
        raise _Skip


def _dropout_problem(node: onnx.NodeProto) -> str | None:
    """"inference": a ratio input without training_mode; "no mask": training_mode without the mask output."""
    if len(node.input) > 2 and node.input[2]:
        return "no mask" if len(node.output) < 2 or not node.output[1] else None
    return "inference" if len(node.input) > 1 and node.input[1] else None


from onnx_dns import recurrent  # noqa: E402 - recurrent.py raises this module's _Skip

_REWRITES: dict[str, Callable[[_Emitter, onnx.NodeProto], None]] = {
    "LRN": _lrn,
    "PRelu": _prelu,
    "Elu": _elu,
    "HardSigmoid": _hard_sigmoid,
    "HardSwish": _hard_swish,
    "GlobalMaxPool": _global_max_pool,
    "Sum": _sum,
    "InstanceNormalization": _instance_norm,
    "LayerNormalization": _layer_norm,
    "Dropout": _dropout,
    "LSTM": recurrent.lstm,
    "GRU": recurrent.gru,
    "RNN": recurrent.rnn,
}


# ---------------------------------------------------------------- model facts


def _is_default(node: onnx.NodeProto) -> bool:
    return node.domain in DEFAULT_DOMAINS


def _infer_types_and_shapes(model: onnx.ModelProto) -> tuple[dict[str, int], dict[str, tuple[int | None, ...]]]:
    """Element type and shape (None for a size that is not a number) of every value shape inference can tell."""
    types: dict[str, int] = {}
    shapes: dict[str, tuple[int | None, ...]] = {}
    for value in inferred_values(model).values():
        tt = value.type.tensor_type
        if value.type.HasField("tensor_type") and tt.elem_type:
            types[value.name] = tt.elem_type
            if tt.HasField("shape"):
                shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
    for init in model.graph.initializer:
        types[init.name] = init.data_type
        shapes[init.name] = tuple(init.dims)
    return types, shapes


REWRITTEN_OPS = frozenset(_REWRITES) - {"Dropout"}  # operators without a CPU gradient of their own
