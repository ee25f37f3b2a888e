"""Activations without a CPU gradient in onnxruntime-training 1.19, rewritten elementwise.

Notation: x an entry of the input X, y the same entry of the output.

PRelu (slope unidirectionally broadcastable to X)::

    prelu(x) = x if x >= 0 else slope * x  =  Relu(x) - slope * Relu(-x)

  The slope stays a direct input of the Mul under its own name, so an initializer slope stays trainable.
  Bit-exact: one of the two terms is exactly 0.

Elu (alpha = 1.0) and Selu (alpha = 1.67326..., gamma = 1.05070...)::

    elu(x) = x if x >= 0 else alpha * (exp(x) - 1)  =  Relu(x) + alpha * (exp(min(x, 0)) - 1),
    min(x, 0) = -Relu(-x);   selu(x) = gamma * elu(x)

HardSigmoid (alpha = 0.2, beta = 0.5) and HardSwish (opset 14+, its function body x * HardSigmoid<1/6, 0.5>)::

    hardsigmoid(x) = Clip(alpha * x + beta, 0, 1);   hardswish(x) = x * Clip(x / 6 + 0.5, 0, 1)

Softplus and Mish (opset 18+)::

    softplus(x) = log(1 + exp(x)) = Relu(x) + log(1 + exp(-|x|))    (never overflows: exp of a value <= 0)
    mish(x) = x * tanh(softplus(x))
"""

from __future__ import annotations

import numpy as np
import onnx

from onnx_dns.graph import attribute
from onnx_dns.rewrites.emitter import Emitter, Skip

SELU_ALPHA, SELU_GAMMA = 1.67326319217681884765625, 1.05070102214813232421875  # the ONNX defaults

CLIP_GRADIENT_OPSET = 12  # ClipGrad uses LessOrEqual, an opset-12 operator (measured on a paddle2onnx model)


def prelu(e: Emitter, node: onnx.NodeProto) -> None:
    x, slope = node.input[0], node.input[1]
    e.require_float_or_unknown(x)
    positive = e.op("Relu", [x], "positive")
    magnitude = e.op("Relu", [e.op("Neg", [x], "neg")], "negative_magnitude")
    scaled = e.op("Mul", [slope, magnitude], "scaled")
    e.op("Sub", [positive, scaled], "sub", output=node.output[0])


def _elu_of(e: Emitter, x: str, dtype, alpha: float, output: str | None) -> str:
    positive = e.op("Relu", [x], "positive")
    magnitude = e.op("Relu", [e.op("Neg", [x], "neg")], "negative_magnitude")
    minimum = e.op("Neg", [magnitude], "min0")
    expm1 = e.op("Sub", [e.op("Exp", [minimum], "exp"), e.const(np.array(1, dtype), "one")], "expm1")
    negative = e.op("Mul", [expm1, e.const(np.array(alpha, dtype), "alpha")], "negative")
    return e.op("Add", [positive, negative], "add", output=output)


def elu(e: Emitter, node: onnx.NodeProto) -> None:
    x = node.input[0]
    _elu_of(e, x, e.float_dtype(x), attribute(node, "alpha", 1.0), node.output[0])


def selu(e: Emitter, node: onnx.NodeProto) -> None:
    x = node.input[0]
    dtype = e.float_dtype(x)
    inner = _elu_of(e, x, dtype, attribute(node, "alpha", SELU_ALPHA), None)
    gamma = e.const(np.array(attribute(node, "gamma", SELU_GAMMA), dtype), "gamma")
    e.op("Mul", [inner, gamma], "scale", output=node.output[0])


def _hard_sigmoid_of(e: Emitter, x: str, dtype, alpha: float, beta: float, output: str | None) -> str:
    scaled = e.op("Mul", [x, e.const(np.array(alpha, dtype), "alpha")], "scaled")
    shifted = e.op("Add", [scaled, e.const(np.array(beta, dtype), "beta")], "shifted")
    low, high = e.const(np.array(0, dtype), "zero"), e.const(np.array(1, dtype), "one")
    if e.opset < CLIP_GRADIENT_OPSET:
        return _clipped(e, shifted, low, high, output)
    return e.op("Clip", [shifted, low, high], "clip", output=output)


def _clipped(e: Emitter, x: str, low: str, high: str, output: str | None) -> str:
    """Max(Min(x, high), low), which is Clip(x, low, high) exactly (either bound may be absent: "")."""
    if high:
        x = e.op("Min", [x, high], "below_high", output=output if not low else None)
    return e.op("Max", [x, low], "above_low", output=output) if low else x


def clip(e: Emitter, node: onnx.NodeProto) -> None:
    """Before opset 12, Clip's gradient (ClipGrad) is built with LessOrEqual, which opset 11 lacks."""
    if e.opset >= CLIP_GRADIENT_OPSET:
        raise Skip("Clip has a gradient of its own from opset 12")
    inputs = list(node.input) + [""] * (3 - len(node.input))
    if not inputs[1] and not inputs[2]:
        e.op("Identity", [inputs[0]], "identity", output=node.output[0])
        return
    _clipped(e, inputs[0], inputs[1], inputs[2], node.output[0])


def hard_sigmoid(e: Emitter, node: onnx.NodeProto) -> None:
    x = node.input[0]
    dtype = e.float_dtype(x)
    _hard_sigmoid_of(e, x, dtype, attribute(node, "alpha", 0.2), attribute(node, "beta", 0.5), node.output[0])


def hard_swish(e: Emitter, node: onnx.NodeProto) -> None:
    x = node.input[0]
    gate = _hard_sigmoid_of(e, x, e.float_dtype(x), 1.0 / 6.0, 0.5, None)
    e.op("Mul", [x, gate], "mul", output=node.output[0])


def _softplus_of(e: Emitter, x: str, dtype, output: str | None) -> str:
    negative_magnitude = e.op("Neg", [e.op("Abs", [x], "abs")], "neg_abs")
    one = e.const(np.array(1, dtype), "one")
    log1p = e.op("Log", [e.op("Add", [one, e.op("Exp", [negative_magnitude], "exp")], "one_plus")], "log1p")
    return e.op("Add", [e.op("Relu", [x], "positive"), log1p], "softplus", output=output)


def softplus(e: Emitter, node: onnx.NodeProto) -> None:
    x = node.input[0]
    _softplus_of(e, x, e.float_dtype(x), node.output[0])


def mish(e: Emitter, node: onnx.NodeProto) -> None:
    x = node.input[0]
    gate = e.op("Tanh", [_softplus_of(e, x, e.float_dtype(x), None)], "tanh")
    e.op("Mul", [x, gate], "mul", output=node.output[0])
