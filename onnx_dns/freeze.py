"""`--freeze-before NODE`: train only the part of the graph after a node that cannot be trained through.

Every initializer read by NODE or by a node upstream of it is frozen: neither pruned nor trained, so no
gradient has to flow through NODE. NODE is given by its name or by the name of one of its outputs.
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx

from onnx_dns.errors import OptionError
from onnx_dns.graph import initializers, producers


def find_node(model: onnx.ModelProto, key: str) -> onnx.NodeProto:
    """The node named `key`, else the node that outputs a value named `key`."""
    for node in model.graph.node:
        if node.name == key:
            return node
    node = producers(model.graph).get(key)
    if node is None:
        raise OptionError(f"--freeze-before {key}: no node or node output of that name in the model; "
                          "`onnx-dns inspect MODEL --json` lists the layers, Netron shows every node")
    return node


def upstream_initializers(model: onnx.ModelProto, keys: Iterable[str]) -> set[str]:
    """Names of the initializers that the named nodes, and every node before them, read."""
    return _read_before(model, [find_node(model, key) for key in keys])


def initializers_feeding(model: onnx.ModelProto, value: str) -> set[str]:
    """Names of the initializers that the value named `value` (a graph output, say) depends on."""
    if value in initializers(model.graph):
        return {value}
    node = producers(model.graph).get(value)
    return _read_before(model, [node] if node is not None else [])


def _read_before(model: onnx.ModelProto, start: list[onnx.NodeProto]) -> set[str]:
    made_by = producers(model.graph)
    inits = initializers(model.graph)
    found: set[str] = set()
    seen: set[int] = set()
    stack = list(start)
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        for name in [*node.input, *_outer_names(node)]:
            if name in inits:
                found.add(name)
            elif name in made_by:
                stack.append(made_by[name])
    return found


def _outer_names(node: onnx.NodeProto) -> set[str]:
    """Names that the subgraphs of a control-flow node (If, Loop, Scan) read from the enclosing graphs."""
    names: set[str] = set()
    for attribute in node.attribute:
        for graph in [*attribute.graphs, *([attribute.g] if attribute.HasField("g") else [])]:
            defined = {v.name for v in graph.input} | {t.name for t in graph.initializer}
            defined |= {o for n in graph.node for o in n.output}
            read = {i for n in graph.node for i in n.input if i} | {o.name for o in graph.output}
            read |= {i for n in graph.node for i in _outer_names(n)}
            names |= read - defined
    return names
