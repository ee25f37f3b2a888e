"""What a rewrite knows about the model (types, shapes, constants) and the emitter that writes its replacement.

A replacement writes the original node's output names; its intermediate tensors and nodes are named
`<node label>__dns_<what>` (made unique) and its constants are `Constant` nodes, so the set of initializers does
not change. A rewrite that cannot be done raises `Skip` with one sentence saying why; the node then stays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnx_dns.graph import FLOAT_TYPES, attribute, axes_are_input, inferred_values, unique_name

Shape = tuple  # of int (a known size) or None (symbolic or unknown)


class Skip(Exception):
    """A node this pass cannot rewrite; the message says why (it ends the sentence "... because <message>")."""


@dataclass(frozen=True)
class Facts:
    """Element types and shapes shape inference gives, and the values of initializers and Constant nodes."""

    types: dict[str, int]
    shapes: dict[str, Shape]
    constants: dict[str, onnx.TensorProto]
    read: frozenset[str] = frozenset()  # names some node or the graph's outputs read


def model_facts(model: onnx.ModelProto) -> Facts:
    """The facts of a model; when a Resize's sizes are computed in the graph, shape inference also propagates
    the values of shape computations (Shape -> Slice -> Concat), which gives that Resize's output sizes."""
    types: dict[str, int] = {}
    shapes: dict[str, Shape] = {}
    computed_sizes = any(n.op_type == "Resize" and len(n.input) > 3 and n.input[3] for n in model.graph.node)
    passes = (False, True) if computed_sizes else (False,)
    for data_prop in passes:  # the second pass only adds what the first could not tell
        for value in inferred_values(model, data_prop).values():
            tt = value.type.tensor_type
            if value.type.HasField("tensor_type") and tt.elem_type:
                types[value.name] = tt.elem_type
                if tt.HasField("shape"):
                    shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
                    if value.name not in shapes or None in shapes[value.name]:
                        shapes[value.name] = shape
    constants = {}
    for init in model.graph.initializer:
        types[init.name] = init.data_type
        shapes[init.name] = tuple(init.dims)
        constants[init.name] = init
    for node in model.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output:
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is not None:
                constants[node.output[0]] = value
    read = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    return Facts(types, shapes, constants, frozenset(read))


def text_attribute(node: onnx.NodeProto, name: str, default: str) -> str:
    """A string attribute as str (onnx gives bytes)."""
    value = attribute(node, name, default)
    return value.decode() if isinstance(value, bytes) else str(value)


class Emitter:
    """Writes the replacement nodes of one node, naming new tensors `<label>__dns_<what>`."""

    def __init__(self, node: onnx.NodeProto, label: str, opset: int, facts: Facts, taken: set[str]):
        self.node, self.label, self.opset, self.facts = node, label, opset, facts
        self._taken = taken
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
        elem = self.facts.types.get(tensor)
        if elem not in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16):
            raise Skip(f"the type of {tensor} is not float, double or float16 (or is unknown)")
        return helper.tensor_dtype_to_np_dtype(elem)

    def require_float_or_unknown(self, tensor: str) -> None:
        elem = self.facts.types.get(tensor)
        if elem is not None and elem not in FLOAT_TYPES:
            raise Skip(f"{tensor} is not a float tensor")

    def rank(self, tensor: str) -> int:
        shape = self.facts.shapes.get(tensor)
        if shape is None:
            raise Skip(f"the rank of {tensor} is unknown (shape inference cannot tell it)")
        return len(shape)

    def static_shape(self, tensor: str, axes) -> list[int]:
        """The sizes of `tensor` on `axes`, which must all be known numbers."""
        shape = self.facts.shapes.get(tensor)
        if shape is None:
            raise Skip(f"the shape of {tensor} is unknown (shape inference cannot tell it)")
        sizes = [shape[a] for a in axes]
        if any(s is None for s in sizes):
            raise Skip(f"{tensor} has symbolic sizes {list(shape)} on axes {list(axes)}; pin the input sizes")
        return sizes

    def constant(self, tensor: str) -> np.ndarray | None:
        """The value of an optional input that must be constant (None when the input is absent)."""
        if not tensor:
            return None
        if tensor not in self.facts.constants:
            raise Skip(f"its input {tensor} is computed in the graph, not a constant")
        return numpy_helper.to_array(self.facts.constants[tensor])

    def op(self, op_type: str, inputs: list[str], what: str, output: str | None = None, **attrs) -> str:
        out = output if output is not None else self.name(what)
        node_name = self.name(what) if output is not None else out
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=node_name, **attrs))
        return out

    def multi(self, op_type: str, inputs: list[str], outputs: list[str], what: str, **attrs) -> list[str]:
        """A node with several outputs; an empty output name gets a fresh one."""
        outputs = [o or self.name(f"{what}_out{i}") for i, o in enumerate(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=self.name(what), **attrs))
        return outputs

    def const(self, array, what: str) -> str:
        out = self.name(what)
        tensor = numpy_helper.from_array(np.asarray(array), out)
        self.nodes.append(helper.make_node("Constant", [], [out], name=out, value=tensor))
        return out

    def ints(self, values, what: str) -> str:
        return self.const(np.array(values, np.int64), what)

    def over_axes(self, op_type: str, x: str, axes: list[int], what: str, output: str | None = None, **attrs) -> str:
        """`op_type` (a reduction, Squeeze or Unsqueeze) over `axes` of `x`, the axes an input or an attribute
        as the opset wants them."""
        if axes_are_input(op_type, self.opset):
            return self.op(op_type, [x, self.ints(axes, what + "_axes")], what, output, **attrs)
        return self.op(op_type, [x], what, output, axes=list(axes), **attrs)

    def reduce_mean(self, x: str, axes: list[int], what: str) -> str:
        return self.over_axes("ReduceMean", x, axes, what, keepdims=1)

    def reshape(self, x: str, shape, what: str, output: str | None = None) -> str:
        if not isinstance(shape, str):
            shape = self.ints(shape, what + "_shape")
        return self.op("Reshape", [x, shape], what, output)

    def transpose(self, x: str, perm, what: str, output: str | None = None) -> str:
        if list(perm) == list(range(len(perm))):
            return self.op("Identity", [x], what, output) if output is not None else x
        return self.op("Transpose", [x], what, output, perm=list(perm))

    def gather(self, x: str, indices, axis: int, what: str, output: str | None = None) -> str:
        return self.op("Gather", [x, self.ints(indices, what + "_indices")], what, output, axis=axis)

    def slice(self, x: str, starts, ends, axes, what: str, output: str | None = None) -> str:
        ins = [x, self.ints(starts, what + "_starts"), self.ints(ends, what + "_ends"), self.ints(axes, what + "_axes")]
        return self.op("Slice", ins, what, output)

    def max_over_last_axis(self, x: str, what: str, largest: int = 1) -> str:
        """TopK(K=1) over the last axis, keeping it (ReduceMax/Min have no gradient in ORT 1.19, TopK has)."""
        values, _ = self.multi("TopK", [x, self.ints([1], what + "_k")], ["", ""], what, axis=-1,
                               largest=largest, sorted=1)
        return values
