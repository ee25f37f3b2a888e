"""Make a model trainable in onnxruntime-training (1.19.2, CPU) by rewriting operators that have no gradient
there (or a wrong one) into exactly equivalent subgraphs of operators that do.

The rewritten model is only for building the training artifacts: initializer names, graph inputs and outputs and
every other node stay as they were, so the trained initializer values can be written back, by name, into the
user's original graph (which keeps its original operators). Only top-level nodes of the default ONNX domain are
touched; opsets 11 to 21 are supported (ORT 1.19 accepts opset <= 21). `REWRITES` maps an op type to its
rewrite, a function (Emitter, node) -> None that emits the replacement or raises Skip; each module of this
package holds a family of rewrites with their maths.

Measured on onnxruntime-training-cpu 1.19.2, each op in a tiny graph x -> Conv(W) -> op -> loss = mean(y * R),
generate_artifacts then one training step, dL/dW against central finite differences of onnxruntime inference:

- trains, right gradient: Sigmoid, Mul(x, Sigmoid) (SiLU), Where, Expand, Gather, GatherElements, ScatterND,
  ScatterElements, Pow, Sqrt, Erf, Exp, Log, Reciprocal, Neg, Abs, Sin, Cos, Clip, Min, Max, Cast (also through
  float16), Concat, Slice (step 1 or 2), Transpose, Squeeze/Unsqueeze, Tile, Split (every output used),
  ReduceMean (axes attribute or input), ReduceSum, ReduceL2, ReduceLogSumExp, MaxPool (ceil_mode, pads,
  dilations), AveragePool (count_include_pad, pads, ceil_mode), Softmax and LogSoftmax (any axis), MatMul with
  broadcasting (4-D x 4-D, N-D x 2-D), Gemm transB, TopK, Gelu, Pad constant, Range/ArgMax/NonZero feeding an
  index (no gradient needed).
- no gradient builder ("The gradient builder has not been registered"): Softplus, Mish, ReduceMax, ReduceMin,
  ReduceL1, ReduceSumSquare, Einsum, Mod, DepthToSpace, SpaceToDepth, Upsample, Mean, Sign, CumSum, Selu,
  LpNormalization, and Pad in reflect/edge mode (its builder refuses them).
- builds, then fails in the CPU training session: Resize and ConvTranspose (ResizeGrad and ConvTransposeGrad
  are CUDA-only kernels), Slice with a negative step (SliceGrad: "narrowing_error").
- wrong gradient: Split with an output that does not reach the loss (garbage, up to 1e35: the missing output
  gradient is read uninitialized).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import onnx

from onnx_dns.graph import DEFAULT_DOMAINS, all_names, attribute, default_opset, node_label
from onnx_dns.passes import PassResult
from onnx_dns.rewrites import (activations, conv_transpose, einsum, fixups, layout, normalization, recurrent,
                               reductions, resize)
from onnx_dns.rewrites.emitter import Emitter, Skip, model_facts

# No gradient builder registered in onnxruntime-training 1.19.2 (each measured: generate_artifacts fails with
# "The gradient builder has not been registered: <Op>").
NO_GRADIENT = frozenset({
    "LRN", "PRelu", "Elu", "HardSigmoid", "HardSwish", "GlobalMaxPool", "Sum", "InstanceNormalization",
    "Einsum", "DepthToSpace", "SpaceToDepth", "Upsample", "Selu", "Celu", "Softplus", "Softsign",
    "ThresholdedRelu", "Shrink", "Mish", "Sign", "Round", "Floor", "Ceil", "LpNormalization", "LpPool",
    "GlobalLpPool", "GroupNormalization", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceSumSquare",
    "ReduceLogSum", "Mean", "CumSum", "Mod",
})
# A gradient builder exists, but its gradient kernel only for CUDA: artifacts build, the CPU session fails with
# "Could not find an implementation for ConvTransposeGrad(1)" / "ResizeGrad(1)".
CUDA_ONLY_GRADIENT = frozenset({"ConvTranspose", "Resize"})

MIN_OPSET, MAX_OPSET = 11, 21

Rewrite = Callable[[Emitter, onnx.NodeProto], None]
REWRITES: dict[str, Rewrite] = {
    "LRN": normalization.lrn,
    "InstanceNormalization": normalization.instance_norm,
    "LpNormalization": normalization.lp_norm,
    "PRelu": activations.prelu,
    "Elu": activations.elu,
    "Selu": activations.selu,
    "HardSigmoid": activations.hard_sigmoid,
    "HardSwish": activations.hard_swish,
    "Softplus": activations.softplus,
    "Mish": activations.mish,
    "Clip": activations.clip,
    "Sum": reductions.sum_,
    "Mean": reductions.mean,
    "GlobalMaxPool": reductions.global_max_pool,
    "ReduceMax": reductions.reduce_max,
    "ReduceMin": reductions.reduce_min,
    "ReduceSumSquare": reductions.reduce_sum_square,
    "LayerNormalization": fixups.layer_norm,
    "Dropout": fixups.dropout,
    "Split": layout.split,
    "Pad": layout.pad,
    "DepthToSpace": layout.depth_to_space,
    "SpaceToDepth": layout.space_to_depth,
    "Resize": resize.resize,
    "ConvTranspose": conv_transpose.conv_transpose,
    "Einsum": einsum.einsum,
    "LSTM": recurrent.lstm,
    "GRU": recurrent.gru,
    "RNN": recurrent.rnn,
}
# operators without a right CPU gradient of their own that the table replaces (Dropout, Split, Pad and Clip are
# fixed in some forms or opsets only)
REWRITTEN_OPS = frozenset(REWRITES) - {"Dropout", "Split", "Pad", "Clip"}


def rewrite_for_training(model: onnx.ModelProto) -> PassResult:
    """Replace each top-level node without a CPU gradient by an equivalent subgraph that has one.

    The input model is not changed. Nodes a rewrite cannot handle (unknown type or shape, attributes it does
    not support, a model opset outside 11-21) are left as they are (`untrainable_nodes` reports them and
    `untrainable_message` says why).
    """
    graph = model.graph
    if not any(_is_default(n) and n.op_type in REWRITES for n in graph.node):
        return PassResult(model, False)
    opset = default_opset(model)
    if opset is None or not MIN_OPSET <= opset <= MAX_OPSET:
        return PassResult(model, False)
    facts = model_facts(model)
    taken = all_names(graph)
    new_nodes: list[onnx.NodeProto] = []
    modified = False
    for index, node in enumerate(graph.node):
        rewrite = REWRITES.get(node.op_type) if _is_default(node) else None
        if rewrite is not None:
            emitter = Emitter(node, node_label(node, index), opset, facts, taken)
            try:
                rewrite(emitter, node)
            except Skip:
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
    read = _read_names(graph)
    for index, node in enumerate(graph.node):
        if not _is_default(node) or _gradient_problem(node, read) is None:
            continue
        if downstream is not None and not any(name in downstream for name in node.input):
            continue
        found.append((node_label(node, index), node.op_type))
    return found


def untrainable_message(model: onnx.ModelProto, nodes: list[tuple[str, str]]) -> str:
    """One readable sentence per node returned by `untrainable_nodes`, for an error message: why the op has no
    gradient, and why the rewrite of this node was not possible."""
    by_label = {node_label(n, i): (i, n) for i, n in enumerate(model.graph.node)}
    lines = []
    for label, op in nodes:
        index, node = by_label.get(label, (None, None))
        why = _gradient_problem(node, _read_names(model.graph)) if node is not None else None
        if node is not None and op in REWRITES:
            why = f"{why}; it could not be rewritten because {_refusal(model, node, index)}"
        lines.append(f"node {label} ({op}) has no gradient in onnxruntime-training; {why or 'it cannot be trained'}")
    return "\n".join(lines)


def _refusal(model: onnx.ModelProto, node: onnx.NodeProto, index: int) -> str:
    """Why `rewrite_for_training` leaves this node (the rewrite is tried again to learn it)."""
    opset = default_opset(model)
    if opset is None or not MIN_OPSET <= opset <= MAX_OPSET:
        return f"the model's opset {opset} is outside {MIN_OPSET}-{MAX_OPSET}"
    emitter = Emitter(node, node_label(node, index), opset, model_facts(model), all_names(model.graph))
    try:
        REWRITES[node.op_type](emitter, node)
    except Skip as skip:
        return str(skip)
    return "of an unknown reason"


def _read_names(graph: onnx.GraphProto) -> set[str]:
    return {name for node in graph.node for name in node.input} | {o.name for o in graph.output}


def _gradient_problem(node: onnx.NodeProto, read: set[str]) -> str | None:
    op = node.op_type
    if op in NO_GRADIENT:
        how = "" if op in REWRITES else " and has no equivalent rewrite here"
        return f"onnxruntime-training 1.19 registers no gradient builder for {op}{how}"
    if op in recurrent.GATES:
        return recurrent.gradient_problem(node)
    if op in CUDA_ONLY_GRADIENT:
        return f"the {op}Grad kernel of onnxruntime-training 1.19 exists only for CUDA, not on CPU"
    if op == "LayerNormalization" and fixups.layer_norm_problem(node):
        return "its gradient needs the Mean and InvStdDev outputs and the bias input (run rewrite_for_training)"
    if op == "Dropout" and fixups.dropout_problem(node) == "inference":
        return ("with a ratio input and no training_mode its gradient is wrong (dY / (1 - ratio), though it "
                "passes X unchanged) or fails (run rewrite_for_training)")
    if op == "Dropout" and fixups.dropout_problem(node) == "no mask":
        return "its gradient reads the mask output, which this node does not have (run rewrite_for_training)"
    if op == "Split" and any(o not in read for o in node.output):
        return "its gradient is wrong (read uninitialized) when one of its outputs is read by nobody"
    if op == "Pad":
        mode = attribute(node, "mode", b"constant")
        if mode not in (b"constant", "constant"):
            return "the Pad gradient supports constant mode only"
    return None


def _is_default(node: onnx.NodeProto) -> bool:
    return node.domain in DEFAULT_DOMAINS
