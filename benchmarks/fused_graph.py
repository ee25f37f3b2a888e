"""The whole DNS step as one onnxruntime graph (the prototype of issue 14 part 2, measured by fused_step.py and
not adopted: it is slower than Trainer.step on the CPU build, see results/fused_step.md).

The training graph of `generate_artifacts` takes every trained parameter as a graph input and adds each gradient
into an accumulation buffer. This pass drops the accumulators and appends, per trained tensor w with gradient g
and velocity v, the optimizer of `optimizers.SGD` in the same float32 operations in the same order:
    v' = v * momentum + (w * decay + g) * lr;   w' = w - v'
and, per masked tensor of a layer k with thresholds a_k <= b_k given as graph inputs, the rule of
`surgery.update_mask` on the new weights, in arithmetic (mask_rule "arith", the default):
    T' = Clip(T + [|w'| > b_k] - [|w'| < a_k], 0, 1)
which is 0 where |w'| < a_k (T - 1 or T + 0 clipped), 1 where |w'| > b_k, and T otherwise, for T in {0, 1};
or (mask_rule "where") T' = Where(|w'| < a_k, 0, Where(|w'| > b_k, 1, T)), the same values.
A layer that does not operate at a step gets a = 0, b = inf, which keeps T. The host keeps the random gate and
the thresholds; `FusedStep` runs the graph with IO binding on preallocated buffers, two of each (ping-pong), so
a step allocates nothing and a step with a non-finite loss is dropped by not swapping.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnx_dns.ort_training import runtime, session_options
from onnx_dns.surgery import Surgeon, surgery_probability

ACCUMULATOR = "InPlaceAccumulatorV2"
LR = "dns_fused.lr"


def velocity_name(param: str) -> str:
    return f"{param}.dns_velocity"


def next_name(name: str) -> str:
    return f"{name}.dns_next"


def threshold_names(layer: str) -> tuple[str, str]:
    return f"dns_fused.low.{layer}", f"dns_fused.high.{layer}"


def _scalar_input(name: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, [])


def _like(value: onnx.ValueInfoProto, name: str) -> onnx.ValueInfoProto:
    out = onnx.ValueInfoProto()
    out.CopyFrom(value)
    out.name = name
    return out


def _sgd_nodes(param: str, grad: str) -> list[onnx.NodeProto]:
    v, p = velocity_name(param), f"dns_fused/{param}"
    return [helper.make_node("Mul", [param, "dns_fused.decay"], [f"{p}/decayed"]),
            helper.make_node("Add", [f"{p}/decayed", grad], [f"{p}/sum"]),
            helper.make_node("Mul", [f"{p}/sum", LR], [f"{p}/scaled"]),
            helper.make_node("Mul", [v, "dns_fused.momentum"], [f"{p}/kept"]),
            helper.make_node("Add", [f"{p}/kept", f"{p}/scaled"], [next_name(v)]),
            helper.make_node("Sub", [param, next_name(v)], [next_name(param)])]


def _mask_nodes(param: str, mask: str, layer: str, rule: str) -> list[onnx.NodeProto]:
    low, high = threshold_names(layer)
    p = f"dns_fused/{mask}"
    compare = [helper.make_node("Abs", [next_name(param)], [f"{p}/abs"]),
               helper.make_node("Less", [f"{p}/abs", low], [f"{p}/prune"]),
               helper.make_node("Greater", [f"{p}/abs", high], [f"{p}/splice"])]
    if rule == "where":
        return compare + [
            helper.make_node("Where", [f"{p}/splice", "dns_fused.one", mask], [f"{p}/spliced"]),
            helper.make_node("Where", [f"{p}/prune", "dns_fused.zero", f"{p}/spliced"], [next_name(mask)])]
    return compare + [
        helper.make_node("Cast", [f"{p}/prune"], [f"{p}/prune_f"], to=TensorProto.FLOAT),
        helper.make_node("Cast", [f"{p}/splice"], [f"{p}/splice_f"], to=TensorProto.FLOAT),
        helper.make_node("Sub", [f"{p}/splice_f", f"{p}/prune_f"], [f"{p}/change"]),
        helper.make_node("Add", [mask, f"{p}/change"], [f"{p}/moved"]),
        helper.make_node("Clip", [f"{p}/moved", "dns_fused.zero", "dns_fused.one"], [next_name(mask)])]


def _named(nodes: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """Names under dns_fused/ so that a profile tells the appended nodes apart."""
    for node in nodes:
        node.name = f"dns_fused/{node.output[0]}"
    return nodes


def fused_graph(training: onnx.ModelProto, masks: Mapping[str, str], layers: Mapping[str, Sequence[str]],
                loss: str, momentum: float, decay: float, mask_rule: str = "arith") -> onnx.ModelProto:
    """A copy of `training` (the straight-through training graph) that also updates weights, velocities and
    the masks of `layers` (layer name -> its masked weight tensors); outputs the loss and every next tensor."""
    model = onnx.ModelProto()
    model.CopyFrom(training)
    graph = model.graph
    accumulators = [n for n in graph.node if n.op_type == ACCUMULATOR]
    grads = {n.input[0].removesuffix(".accumulation.buffer").removesuffix("_grad"): n.input[1] for n in accumulators}
    dropped = {n.input[0] for n in accumulators} | {n.input[2] for n in accumulators}
    kept_nodes = [n for n in graph.node if n.op_type != ACCUMULATOR]
    inputs = {i.name: i for i in graph.input}
    del graph.node[:]
    graph.node.extend(kept_nodes)
    for param, grad in grads.items():
        graph.node.extend(_named(_sgd_nodes(param, grad)))
    for layer, tensors in layers.items():
        for param in tensors:
            graph.node.extend(_named(_mask_nodes(param, masks[param], layer, mask_rule)))
    graph.initializer.extend(numpy_helper.from_array(np.array(value, np.float32), name) for name, value in
                             (("dns_fused.decay", decay), ("dns_fused.momentum", momentum),
                              ("dns_fused.one", 1.0), ("dns_fused.zero", 0.0)))
    new_inputs = [i for i in graph.input if i.name not in dropped]
    new_inputs += [_like(inputs[p], velocity_name(p)) for p in grads]
    new_inputs += [_scalar_input(LR)] + [_scalar_input(n) for layer in layers for n in threshold_names(layer)]
    del graph.input[:]
    graph.input.extend(new_inputs)
    outputs = [o for o in graph.output if o.name == loss]
    outputs += [_like(inputs[p], next_name(p)) for p in grads]
    outputs += [_like(inputs[p], next_name(velocity_name(p))) for p in grads]
    outputs += [_like(inputs[masks[p]], next_name(masks[p])) for tensors in layers.values() for p in tensors]
    del graph.output[:]
    graph.output.extend(outputs)
    return model


def gate_thresholds(surgeon: Surgeon, iteration: int, rng: np.random.Generator,
                    weights: Mapping[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    """(a, b) of each layer that operates at this iteration, drawn as `Surgeon.step` draws them: one uniform
    number per layer, the layer operating when the probability schedule exceeds it, until its stop iteration.
    Exact for criteria whose thresholds do not read the weights (the paper's); target mode reads the weights after
    the update, and channel plans and final thresholds are not covered: a library version would run those layers
    on the host after the step."""
    draws = rng.random(len(surgeon.plans))
    probability = surgery_probability(iteration, surgeon.gamma, surgeon.power)
    return {name: plan.criterion.thresholds(iteration, plan.stop, plan.arrays(weights))
            for (name, plan), r in zip(surgeon.plans.items(), draws) if iteration < plan.stop and probability > r}


class FusedStep:
    """Runs the fused graph with IO binding on two preallocated sets of parameters, velocities and masks.

    `params`, `velocity` and `masks` always map to the current arrays (their values swap after each step); the
    first set is the arrays given, so a caller's own views are current after an even number of steps."""

    def __init__(self, model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], params: Mapping[str, np.ndarray],
                 velocity: Mapping[str, np.ndarray], masks: Mapping[str, str], mask_arrays: Mapping[str, np.ndarray],
                 layers: Mapping[str, Sequence[str]], threads: int = 0, profile: Path | None = None) -> None:
        options = session_options(threads)
        if profile is not None:
            options.enable_profiling, options.profile_file_prefix = True, str(profile)
        self.session = runtime().InferenceSession(model.SerializeToString(), options,
                                                  providers=["CPUExecutionProvider"])
        operated = {t for tensors in layers.values() for t in tensors}
        first = (dict(params), dict(velocity), dict(mask_arrays))
        second = ({k: np.empty_like(v) for k, v in params.items()}, {k: np.empty_like(v) for k, v in velocity.items()},
                  {k: np.empty_like(v) if k in operated else v for k, v in mask_arrays.items()})
        self._sets = (first, second)
        self.params, self.velocity, self.masks = (dict(group) for group in first)
        self.feeds = {k: np.array(v) for k, v in feeds.items()}
        self.lr = np.zeros((), np.float32)
        self.thresholds = {layer: (np.zeros((), np.float32), np.full((), np.inf, np.float32)) for layer in layers}
        self.loss = np.zeros((), np.float32)
        self.current = 0
        scalars = {LR: self.lr, **{n: a for layer, pair in self.thresholds.items()
                                   for n, a in zip(threshold_names(layer), pair)}}
        self._bindings = tuple(self._bind(model, masks, scalars, *pair) for pair in ((first, second), (second, first)))

    def _bind(self, model: onnx.ModelProto, masks: Mapping[str, str], scalars: dict, source: tuple, target: tuple):
        value = runtime().OrtValue.ortvalue_from_numpy
        binding = self.session.io_binding()
        inputs = {**self.feeds, **scalars}
        outputs = {}
        for (params, velocity, mask_arrays), into in ((source, inputs), (target, outputs)):
            into.update({name: array for name, array in params.items()})
            into.update({velocity_name(name): array for name, array in velocity.items()})
            into.update({masks[name]: array for name, array in mask_arrays.items()})
        for i in model.graph.input:
            binding.bind_ortvalue_input(i.name, value(inputs[i.name]))
        for o in model.graph.output:
            name = o.name.removesuffix(".dns_next")
            binding.bind_ortvalue_output(o.name, value(self.loss if name == o.name else outputs[name]))
        return binding

    def step(self, feeds: Sequence[np.ndarray], lr: float, thresholds: Mapping[str, tuple[float, float]]) -> float:
        """One step on `feeds` (in the order of `self.feeds`); layers absent from `thresholds` keep their masks.
        The new tensors become current only when the loss is finite."""
        for buffer, value in zip(self.feeds.values(), feeds):
            buffer[...] = value
        self.lr[...] = lr
        for layer, (low, high) in self.thresholds.items():
            low[...], high[...] = thresholds.get(layer, (0.0, np.inf))
        self.session.run_with_iobinding(self._bindings[self.current])
        loss = float(self.loss)
        if np.isfinite(loss):
            self.current = 1 - self.current
            for view, group in zip((self.params, self.velocity, self.masks), self._sets[self.current]):
                view.update(group)
        return loss
