"""The per-layer plans that the surgeon follows: each layer's tensors, stop iteration and pruning criterion.

Paper mode (`criteria.paper.Paper`) unless a target or a per-layer sparsity is given (`criteria.target.Target`).
A new criterion is a module in `onnx_dns/criteria/` with a `Criterion` subclass, and a function here from the
layers and options to one criterion per layer, added to `CRITERIA`. With `--structure channel` the plans are one
per channel group instead, with `criteria.channel.Channels` (`onnx_dns.channel_plans`, chosen in `prepare`).
"""

from __future__ import annotations

from collections.abc import Callable

from onnx_dns.criteria.base import Criterion
from onnx_dns.criteria.paper import Paper
from onnx_dns.criteria.target import Target, allocate_keep
from onnx_dns.errors import OptionError
from onnx_dns.options import DEFAULT_ITERATIONS, CompressOptions
from onnx_dns.prunable import Layer
from onnx_dns.surgery import LayerPlan

STOP_FRACTION = 0.75  # default stop iteration: the paper's LeNet-5 run stopped its layers at 10K-14K of 16K


def paper_criteria(layers: list[Layer], options: CompressOptions) -> dict[str, Criterion]:
    return {layer.name: Paper(options.c.get(layer.name, options.default_c)) for layer in layers}


def target_criteria(layers: list[Layer], options: CompressOptions) -> dict[str, Criterion]:
    fixed = {k: 1.0 - v for k, v in options.sparsity.items()}
    sizes = {layer.name: layer.params for layer in layers}
    target = options.target or _implied_target(sizes, fixed)
    try:
        keep = allocate_keep(sizes, target, fixed)
    except ValueError as exc:
        raise OptionError(f"--target {target:g}x with --sparsity {', '.join(fixed)}: the layers named keep more "
                          "weights than the target allows; raise their --sparsity or lower --target") from exc
    return {name: Target(value) for name, value in keep.items()}


CRITERIA: dict[str, Callable[[list[Layer], CompressOptions], dict[str, Criterion]]] = {
    "paper": paper_criteria, "target": target_criteria,
}


def criterion_name(options: CompressOptions) -> str:
    return "target" if options.target is not None or options.sparsity else "paper"


def plans_for(layers: list[Layer], options: CompressOptions) -> dict[str, LayerPlan]:
    """One plan per layer: its tensors, its stop iteration and its criterion."""
    iterations = options.train.iterations or DEFAULT_ITERATIONS
    default_stop = options.surgery_stop or max(1, int(STOP_FRACTION * iterations))
    criteria = CRITERIA[criterion_name(options)](layers, options)
    return {layer.name: LayerPlan([t.name for t in layer.tensors],
                                  min(options.stop.get(layer.name, default_stop), iterations), criteria[layer.name])
            for layer in layers}


def _implied_target(sizes: dict[str, int], fixed: dict[str, float]) -> float:
    """With per-layer sparsities only, layers not named keep everything."""
    kept = sum(n * fixed.get(k, 1.0) for k, n in sizes.items())
    return sum(sizes.values()) / kept
