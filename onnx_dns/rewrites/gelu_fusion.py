"""Fuse the tanh form of GELU, written out op by op, into one com.microsoft FastGelu node for training.

    GELU_tanh(x) = 0.5 x (1 + tanh(k (x + 0.044715 x^3))),   k = sqrt(2 / pi)

Exporters that have no GELU operator (tf2onnx from JAX or Keras, PyTorch's approximate="tanh" before opset 20)
write it as Mul, Add and Tanh nodes. onnxruntime-training keeps every intermediate for the backward pass and
differentiates node by node: on magika-v3.3 (GELU after a 64x512x508 convolution) those elementwise kernels took
40% of a training step. FastGelu computes x (k + 0.044715 k x^2), its Tanh and 0.5 x (1 + t) in one kernel, and
its gradient FastGeluGrad (a CPU kernel of onnxruntime-training 1.19) in one more: the same function, different
only in float rounding.

A match is a Mul whose product, through Mul nodes read by nothing else, is x * 0.5 * (1 + Tanh(u)), where u is
the product k * (x + c) and c the product 0.044715 * x * x * x (or 0.044715 * Pow(x, 3)), in any order and
grouping. Constants must be float32 single values of no higher rank than x (so no broadcast changes a shape),
and every intermediate must be read only inside the pattern. Only the training copy is rewritten; the written
model keeps the original nodes.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper

from onnx_dns.graph import DEFAULT_DOMAINS, all_names, consumers, inferred_values, producers, to_array, unique_name
from onnx_dns.passes import PassResult
from onnx_dns.rewrites.emitter import Facts, model_facts
from onnx_dns.rewrites.shape_hints import boundary_symbols, declared_only

MS_DOMAIN = "com.microsoft"
SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
CUBIC = 0.044715
RTOL = 1e-6


class _Graph:
    """What matching reads: producers, readers, constant values and ranks."""

    def __init__(self, model: onnx.ModelProto, facts: Facts):
        graph = model.graph
        self.made_by = producers(graph)
        read = consumers(graph)
        self.readers = {name: len(users) for name, users in read.items()}
        for output in graph.output:
            self.readers[output.name] = self.readers.get(output.name, 0) + 2  # a graph output is never inner
        self.facts = facts

    def inner(self, name: str, op_type: str) -> onnx.NodeProto | None:
        """The node writing `name` when it is an `op_type` of the default domain read only once."""
        node = self.made_by.get(name)
        if node is None or node.op_type != op_type or node.domain not in DEFAULT_DOMAINS:
            return None
        return node if self.readers.get(name, 0) == 1 else None

    def product(self, name: str, used: list[onnx.NodeProto], root: bool = False) -> list[str]:
        """The factors of `name` through Mul nodes (and Pow(x, 3)) read once, the nodes passed added to `used`."""
        node = self.made_by.get(name) if root else self.inner(name, "Mul")
        if node is not None and node.op_type == "Mul" and node.domain in DEFAULT_DOMAINS:
            used.append(node)
            return self.product(node.input[0], used) + self.product(node.input[1], used)
        power = self.inner(name, "Pow")
        if power is not None and self.is_constant(power.input[1], 3.0, None):
            used.append(power)
            return [power.input[0]] * 3
        return [name]

    def is_constant(self, name: str, wanted: float, x: str | None) -> bool:
        tensor = self.facts.constants.get(name)
        value = None if tensor is None else to_array(tensor)
        if value is None or value.size != 1:
            return False
        if x is not None:
            shape = self.facts.shapes.get(x)
            if value.dtype != np.float32 or value.ndim > (0 if shape is None else len(shape)):
                return False
        return bool(np.isclose(float(value.reshape(-1)[0]), wanted, rtol=RTOL, atol=0))


def _split(g: _Graph, factors: list[str], wanted: list[float], x: str | None) -> tuple[list[str], bool]:
    """`factors` without one constant per `wanted` value; False when one is missing."""
    rest = list(factors)
    for value in wanted:
        found = next((f for f in rest if g.is_constant(f, value, x)), None)
        if found is None:
            return rest, False
        rest.remove(found)
    return rest, True


def _match(g: _Graph, root: onnx.NodeProto) -> tuple[str, list[onnx.NodeProto]] | None:
    """(x, the nodes the FastGelu replaces besides `root`) when `root`'s output is GELU_tanh(x)."""
    used: list[onnx.NodeProto] = []
    outer = g.product(root.output[0], used, root=True)
    if len(outer) != 3:
        return None
    for i, one_plus in enumerate(outer):
        add = g.inner(one_plus, "Add")
        tanhs = [name for name in add.input if g.inner(name, "Tanh") is not None] if add is not None else []
        if len(tanhs) != 1:
            continue
        tanh = g.inner(tanhs[0], "Tanh")
        one = add.input[1] if add.input[0] == tanhs[0] else add.input[0]
        rest = outer[:i] + outer[i + 1:]
        for x, half in (rest, rest[::-1]):
            if not (g.is_constant(half, 0.5, x) and g.is_constant(one, 1.0, x)):
                continue
            inside = _inner_argument(g, tanh.input[0], x)
            if inside is not None:
                return x, used[1:] + [add, tanh] + inside
    return None


def _inner_argument(g: _Graph, name: str, x: str) -> list[onnx.NodeProto] | None:
    """The nodes computing `name` = k * (x + 0.044715 * x^3), or None when it is not that."""
    used: list[onnx.NodeProto] = []
    rest, ok = _split(g, g.product(name, used), [SQRT_2_OVER_PI], x)
    add = g.inner(rest[0], "Add") if ok and len(rest) == 1 else None
    if add is None or list(add.input).count(x) != 1:
        return None
    cube: list[onnx.NodeProto] = []
    cubic = add.input[1] if add.input[0] == x else add.input[0]
    rest, ok = _split(g, g.product(cubic, cube), [CUBIC], x)
    if not ok or rest != [x, x, x]:
        return None
    return used + [add] + cube


def _declared_outputs(model: onnx.ModelProto, outputs: list[str]) -> list[onnx.ValueInfoProto]:
    """Shapes of the fused outputs, as inferred before the fusion: onnxruntime-training's gradient builder does
    not infer FastGelu's output shape, and a broadcast gradient after it fails without one (measured on
    magika-v3.3: "GetShape(input_grad, input_grad_shape).IsOK() was false")."""
    graph = model.graph
    declared = {v.name for v in [*graph.value_info, *graph.input, *graph.output]}
    symbols = boundary_symbols(model)
    inferred = inferred_values(model, data_prop=True)
    return [declared_only(inferred[name], symbols) for name in outputs if name in inferred and name not in declared]


def fuse_tanh_gelu(model: onnx.ModelProto) -> PassResult:
    """Replace each GELU_tanh subgraph by a com.microsoft FastGelu node writing the same output (module
    docstring); the input model is not changed."""
    if not any(n.op_type == "Tanh" for n in model.graph.node):
        return PassResult(model, False)
    g = _Graph(model, model_facts(model))
    taken = all_names(model.graph)
    replaced: dict[int, onnx.NodeProto] = {}
    removed: set[int] = set()
    for root in model.graph.node:
        if root.op_type != "Mul" or root.domain not in DEFAULT_DOMAINS or id(root) in removed:
            continue
        found = _match(g, root)
        if found is None or any(id(n) in removed or id(n) in replaced for n in found[1]):
            continue
        x, inner = found
        name = unique_name(taken, f"{root.name or root.output[0]}__dns_fast_gelu")
        replaced[id(root)] = helper.make_node("FastGelu", [x], [root.output[0]], name=name, domain=MS_DOMAIN)
        removed.update(id(n) for n in inner)
    if not replaced:
        return PassResult(model, False)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(replaced.get(id(n), n) for n in model.graph.node if id(n) not in removed)
    gone = {name for n in model.graph.node if id(n) in removed for name in n.output}
    kept_info = [v for v in out.graph.value_info if v.name not in gone]
    del out.graph.value_info[:]
    out.graph.value_info.extend(kept_info + _declared_outputs(model, [n.output[0] for n in replaced.values()]))
    if not any(o.domain == MS_DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return PassResult(out, True)
