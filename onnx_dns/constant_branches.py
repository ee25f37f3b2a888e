"""`If` nodes whose condition the data fixes, replaced by the branch the data takes, so its weights are found.

Silero's op18 VAD keeps its whole network in the two branches of `If(sr == 16000)`: its layers read their weights
inside a subgraph, where no prunable layer is looked for. When the condition is computed only from initializers
and from inputs without a batch axis, whose one value the data gives (batch_axes.py), it has the same value for
every sample: it is evaluated (onnx's reference evaluator), and the If is replaced by the nodes of the branch it
selects, whose outputs take the If's names. The model computes the same for that data; it is specialized to it:
the nodes that computed the condition and the initializers only the other branch read are dropped, and the input
stays declared (its value no longer matters). A condition that depends on anything else is left, and said why.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_dns.graph import all_names, initializers, producers, unique_name
from onnx_dns.passes import PassResult
from onnx_dns.rewrites.constant_folding import evaluate_node

log = logging.getLogger(__name__)


def inline_constant_ifs(model: onnx.ModelProto, values: Mapping[str, np.ndarray]) -> PassResult:
    """Replace each top-level If whose condition follows from initializers and `values` (graph inputs fed one
    value for the whole data) by its taken branch; the input model is not changed."""
    out, explained = None, set()
    while True:
        index, taken = _next_constant_if(out or model, values, explained)
        if index is None:
            break
        out = _inline(out or model, index, taken)
    if out is None:
        return PassResult(model, False)
    return PassResult(_drop_unread(out), True)


def _next_constant_if(model: onnx.ModelProto, values: Mapping[str, np.ndarray],
                      explained: set[str]) -> tuple[int | None, bool]:
    """The position of the first If whose condition is constant here, and the value of that condition; an If
    whose condition is not is said why once (its name goes into `explained`)."""
    graph = model.graph
    inits = initializers(graph)
    made = producers(graph)
    position = {id(n): i for i, n in enumerate(graph.node)}
    for index, node in enumerate(graph.node):
        label = node.name or node.output[0]
        if node.op_type != "If" or node.domain not in ("", "ai.onnx") or label in explained:
            continue
        chain, missing = _ancestors(node.input[0], made, set(inits) | set(values))
        computed = {n: numpy_helper.to_array(inits[n]) for step in chain for n in step.input if n in inits}
        computed |= dict(values)
        for step in sorted(chain, key=lambda n: position[id(n)]):
            outputs = None if missing else evaluate_node(step, {i: computed[i] for i in step.input if i},
                                                          list(model.opset_import))
            if outputs is None:
                break
            computed.update(zip(step.output, outputs))
        condition = None if missing else computed.get(node.input[0])
        if condition is None or condition.size != 1:
            explained.add(label)
            log.warning("node %s (If): its branches stay as they are and the weights inside them are not pruned: "
                        "its condition depends on %s, which the data does not fix (an input without a batch axis "
                        "is fed one value for all the data)", label, ", ".join(sorted(missing)) or "nodes "
                        "that could not be evaluated")
            continue
        taken = bool(condition.reshape(-1)[0])
        log.warning("node %s (If): its condition is %s for all the data: the model is trained and written with its "
                    "%s branch in its place (specialized to this data)", label, taken, "then" if taken else "else")
        return index, taken
    return None, False


def _ancestors(name: str, made: Mapping[str, onnx.NodeProto],
               known: set[str]) -> tuple[list[onnx.NodeProto], set[str]]:
    """The nodes that compute `name` from known values, and the unknown names it depends on."""
    chain: list[onnx.NodeProto] = []
    missing: set[str] = set()
    stack, seen = [name], set()
    while stack:
        current = stack.pop()
        if not current or current in seen or current in known:
            continue
        seen.add(current)
        node = made.get(current)
        if node is None or any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                               for a in node.attribute):
            missing.add(current)
            continue
        if node not in chain:
            chain.append(node)
        stack.extend(node.input)
    return chain, missing


def _inline(model: onnx.ModelProto, index: int, taken: bool) -> onnx.ModelProto:
    """The model with node `index` (an If) replaced by the nodes of its then (`taken`) or else branch."""
    node = model.graph.node[index]
    branch = next(a.g for a in node.attribute if a.name == ("then_branch" if taken else "else_branch"))
    names = all_names(model.graph)
    renamed = {o.name: if_out for o, if_out in zip(branch.output, node.output)}
    for inner in branch.node:
        for name in inner.output:
            if name and name not in renamed:
                renamed[name] = unique_name(names, name) if name in names else name
    nodes = []
    for inner in branch.node:
        copied = onnx.NodeProto()
        copied.CopyFrom(inner)
        copied.input[:] = [renamed.get(i, i) for i in inner.input]
        copied.output[:] = [renamed.get(o, o) for o in inner.output]
        nodes.append(copied)
    produced = {o for n in branch.node for o in n.output}
    for result, if_out in zip(branch.output, node.output):  # a branch that returns an outer or constant value
        if result.name not in produced:
            nodes.append(onnx.helper.make_node("Identity", [result.name], [if_out], name=f"{if_out}__dns_branch"))
    out = onnx.ModelProto()
    out.CopyFrom(model)
    kept = list(out.graph.node)
    del out.graph.node[:]
    out.graph.node.extend(kept[:index] + nodes + kept[index + 1:])
    out.graph.initializer.extend(branch.initializer)
    return out


def _drop_unread(model: onnx.ModelProto) -> onnx.ModelProto:
    """Without the nodes and initializers nothing reads any more (the condition's nodes, the other branch's
    weights); the graph inputs stay declared, so the model is fed as before."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    while True:
        read = {i for n in graph.node for i in n.input} | outputs | _subgraph_reads(graph)
        dead = [i for i, n in enumerate(graph.node) if not any(o in read for o in n.output if o)]
        if not dead:
            break
        kept = [n for i, n in enumerate(graph.node) if i not in set(dead)]
        del graph.node[:]
        graph.node.extend(kept)
    read = {i for n in graph.node for i in n.input} | outputs | _subgraph_reads(graph)
    unread = [t for t in graph.initializer if t.name not in read]
    if unread:
        count = sum(int(np.prod(t.dims)) for t in unread)
        log.warning("%d initializers (%d values) only the branches not taken read are dropped", len(unread), count)
    kept_inits = [t for t in graph.initializer if t.name in read]
    del graph.initializer[:]
    graph.initializer.extend(kept_inits)
    return model


def _subgraph_reads(graph: onnx.GraphProto) -> set[str]:
    """Names the subgraphs of the graph's nodes read (from the outer scope, or their own)."""
    names: set[str] = set()
    for node in graph.node:
        for attribute in node.attribute:
            for sub in ([attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs)):
                names |= {i for n in sub.node for i in n.input} | {o.name for o in sub.output}
                names |= _subgraph_reads(sub)
    return names
