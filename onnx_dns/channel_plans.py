"""Surgery plans for `--structure channel`: one plan per channel group, and the channel budget of a target.

Each group's plan masks its producing tensors (`ChannelGroup.masked`) with a `criteria.channel.Channels`
criterion: the paper's rule on channel norms with the group's --c, or, with --target Nx, a kept fraction of
channels. A target still counts parameters: a layer keeps about n * k_out * k_in of its n weights when its output
and input channels keep fractions k_out and k_in; groups give up channels in turn, the fullest first, until the
layers keep n_total / N parameters in all. Kept counts are multiples of `criteria.channel.block_multiple` (as the
criterion rounds them at the stop): dense kernels run fastest on whole blocks.
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import onnx

from onnx_dns.channel_groups import find_channel_groups
from onnx_dns.channel_layout import ChannelGroups, Layout
from onnx_dns.criteria.channel import Channels, block_multiple
from onnx_dns.criteria.paper import Paper
from onnx_dns.criteria.target import Target
from onnx_dns.errors import ModelError, OptionError
from onnx_dns.options import DEFAULT_ITERATIONS, CompressOptions
from onnx_dns.plans import STOP_FRACTION
from onnx_dns.prunable import Layer
from onnx_dns.surgery import LayerPlan


REACH_TOLERANCE = 1.02  # a target this close to the most the groups reach is taken as reached


def plan_channels(model: onnx.ModelProto, layers: list[Layer], options: CompressOptions, source: str,
                  frozen: set[str]) -> tuple[ChannelGroups, dict[str, LayerPlan]]:
    """The groups of `model` whose producing layers are in `layers`, and one plan per group."""
    if options.sparsity:
        raise OptionError("--sparsity sets weight sparsities; with --structure channel give --target or --c")
    maskable = {t.name for layer in layers for t in layer.tensors}
    maskable |= {n.input[i] for n in model.graph.node if n.op_type == "BatchNormalization" for i in (1, 2)}
    groups = find_channel_groups(model, maskable - frozen)
    if not groups.groups:
        reasons = "; ".join(f"{k}: {v}" for k, v in list(groups.refused.items())[:3])
        raise ModelError(f"{source}: no channel group can be removed safely ({reasons}); "
                         "use --structure weight")
    keep = channel_keep(groups, layers, options.target) if options.target else {}
    iterations = options.train.iterations or DEFAULT_ITERATIONS
    default_stop = options.surgery_stop or max(1, int(STOP_FRACTION * iterations))
    plans = {}
    for gid, group in groups.groups.items():
        inner = Target(keep[gid]) if options.target else Paper(options.c.get(group.name, options.default_c))
        stop = min(options.stop.get(group.name, default_stop), iterations)
        criterion = Channels(inner, block_multiple(group.size), split_pieces(groups, gid))
        plans[group.name] = LayerPlan([t for t, _ in group.masked], stop, criterion,
                                      tuple(a for _, a in group.masked),
                                      tuple(group.spans.get(t, (0, group.size)) for t, _ in group.masked))
    return groups, plans


def split_pieces(groups: ChannelGroups, gid: int) -> list[tuple[int, int]]:
    """The stretches (start, count) of group `gid` between the cuts of the Splits that part it; none when no
    Split cuts through it."""
    cuts = {edge for edit in groups.edits if edit.kind == "split" for layout in edit.layouts
            for g, start, n in layout.segments if g == gid for edge in (start, start + n)}
    size = groups.groups[gid].size
    if not cuts - {0, size}:
        return []
    edges = sorted(cuts | {0, size})
    return [(a, b - a) for a, b in pairwise(edges)]


def channel_keep(groups: ChannelGroups, layers: list[Layer], target: float) -> dict[int, float]:
    """Kept fractions per group such that the layers keep about 1/target of their parameters: the group with
    the largest kept fraction gives up a step of channels (a block of 8 in large groups) until the budget is
    met; of the last two allocations, the one nearer the target in ratio wins."""
    sizes = {t.name: t.size for layer in layers for t in layer.tensors}
    slots = [s for s in groups.slots if s.tensor in sizes]
    total = sum(sizes.values())

    def kept(counts: dict[int, int]) -> float:
        fractions = {g: counts[g] / group.size for g, group in groups.groups.items()}
        factor = dict.fromkeys(sizes, 1.0)
        for slot in slots:
            factor[slot.tensor] *= _fraction(slot.layout, fractions)
        return sum(sizes[n] * factor[n] for n in sizes)

    counts = {g: group.size for g, group in groups.groups.items()}
    previous = dict(counts)
    while kept(counts) > total / target:
        steps = {g: _step_down(counts[g], groups.groups[g].size) for g in counts}
        open_groups = [g for g in counts if steps[g] is not None]
        if not open_groups:
            if total / kept(counts) < target / REACH_TOLERANCE:
                raise OptionError(_out_of_reach(target, total, kept(counts), groups))
            break
        chosen = max(open_groups, key=lambda g: (counts[g] / groups.groups[g].size, groups.groups[g].size))
        previous = dict(counts)
        counts[chosen] = steps[chosen]
    if abs(np.log(total / kept(previous) / target)) < abs(np.log(total / kept(counts) / target)):
        counts = previous
    return {g: counts[g] / groups.groups[g].size for g in counts}


def _out_of_reach(target: float, total: int, floor: float, groups: ChannelGroups) -> str:
    """Why --target cannot be met by removing channels: the most it reaches with every group at one block."""
    return (f"--target {target:g}x cannot be reached by removing channels: {len(groups.groups)} channel groups "
            f"can lose channels ({len(groups.refused)} cannot, safely), and with each down to one block of channels "
            f"the layers still keep {floor / total:.0%} of their parameters ({total / floor:.3g}x at most, a model "
            "cut to the bone); give a smaller --target, or use --structure weight")


def _step_down(count: int, size: int) -> int | None:
    """The next smaller kept count, a multiple of the group's block; None at one block."""
    multiple = block_multiple(size)
    lower = (count - 1) // multiple * multiple
    return lower if lower >= multiple else None


def _fraction(layout: Layout, fractions: dict[int, float]) -> float:
    total = sum(n for *_, n in layout.segments)
    return float(np.sum([n * fractions.get(g, 1.0) for g, _, n in layout.segments])) / total
