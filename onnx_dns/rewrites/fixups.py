"""Nodes whose ORT 1.19 gradient needs an output or input they lack, or is wrong: the node is re-emitted with it.

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
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_dns.rewrites.emitter import Emitter, Skip


def layer_norm(e: Emitter, node: onnx.NodeProto) -> None:
    if not layer_norm_problem(node):
        raise Skip("it already has the outputs and inputs its gradient reads")
    e.require_float_or_unknown(node.input[0])
    outputs = list(node.output) + [""] * (3 - len(node.output))
    new = onnx.NodeProto()
    new.CopyFrom(node)
    if _lacks_bias(node):
        dtype = e.float_dtype(node.input[0])
        zero = numpy_helper.from_array(np.zeros(1, dtype), "")
        shape = e.op("Shape", [node.input[1]], "scale_shape")
        del new.input[:]
        new.input.extend([node.input[0], node.input[1], e.op("ConstantOfShape", [shape], "zero_bias", value=zero)])
    outputs = [o or e.name(what) for o, what in zip(outputs, ("y", "mean", "inv_std_dev"))]
    del new.output[:]
    new.output.extend(outputs)
    e.nodes.append(new)


def layer_norm_problem(node: onnx.NodeProto) -> bool:
    """True when the node lacks an output or the bias input ORT's LayerNormalization gradient reads."""
    return sum(1 for o in node.output if o) < 3 or _lacks_bias(node)


def _lacks_bias(node: onnx.NodeProto) -> bool:
    return len(node.input) < 3 or not node.input[2]


def dropout(e: Emitter, node: onnx.NodeProto) -> None:
    problem = dropout_problem(node)
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
        raise Skip("its gradient needs no change")


def dropout_problem(node: onnx.NodeProto) -> str | None:
    """"inference": a ratio input without training_mode; "no mask": training_mode without the mask output."""
    if len(node.input) > 2 and node.input[2]:
        return "no mask" if len(node.output) < 2 or not node.output[1] else None
    return "inference" if len(node.input) > 1 and node.input[1] else None
