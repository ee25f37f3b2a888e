"""The surgery rule of Dynamic Network Surgery, in pure numpy: current weights and mask in, new mask out.

Per layer k with weights and bias W_k and mask T_k, thresholds a_k < b_k:
    T <- 0 where T = 1 and |w| < a_k          (prune)
    T <- 1 where T = 0 and |w| > b_k          (splice)
    T unchanged otherwise
which is the same as T <- 0 where |w| < a_k, T <- 1 where |w| > b_k, since a_k <= b_k.

At iteration i each layer draws r ~ U(0, 1) and operates when (1 + gamma * i)^(-power) > r, until its stop
iteration. Which thresholds a layer uses is its criterion's business (`onnx_dns.criteria`: the paper's band
around mu + c * sigma, or target mode's scheduled fraction of largest magnitudes).

A channel plan (`LayerPlan.axes` set: one channel axis per tensor) applies the same rule to the group's channel
norms (`criteria.channel`) and writes each channel's verdict into every tensor's broadcast mask (`spans`: the
channels of the group each tensor holds, when some hold only a part).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from onnx_dns.chunked import ChunkedRunner, Scratch
from onnx_dns.criteria.base import Criterion
from onnx_dns.criteria.channel import channel_norms

GAMMA = 1e-4
POWER = 1.0


def update_mask(weight: np.ndarray, mask: np.ndarray, low: float, high: float,
                scratch: Scratch | None = None) -> np.ndarray:
    """Prune entries with |w| < low, splice entries with |w| > high, keep the rest; writes into `mask`.

    Branch-free (a masked copy mispredicts on random patterns); temporaries come from `scratch` when given.
    """
    scratch = scratch or Scratch()
    magnitude, flag = scratch.take(0, weight), scratch.take(1, weight, np.bool_)
    np.abs(weight, out=magnitude)
    np.less(magnitude, low, out=flag)
    np.logical_not(flag, out=flag)
    np.multiply(mask, flag, out=mask)
    np.greater(magnitude, high, out=flag)
    np.maximum(mask, flag, out=mask)
    return mask


def _mask_kernel(low: float, high: float) -> Callable[[Scratch, np.ndarray, np.ndarray], None]:
    return lambda scratch, weight, mask: update_mask(weight, mask, low, high, scratch)


def surgery_probability(iteration: int, gamma: float = GAMMA, power: float = POWER) -> float:
    """(1 + gamma * iteration)^(-power): the chance that a layer operates at this iteration."""
    return (1.0 + gamma * iteration) ** (-power)


@dataclass
class LayerPlan:
    """How one layer is operated on: its tensors, the iteration its mask stops changing, and its criterion."""

    tensors: list[str]
    stop: int
    criterion: Criterion
    axes: tuple[int, ...] = ()
    spans: tuple[tuple[int, int], ...] = ()

    def arrays(self, weights: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """What the criterion sees: the tensors, or for a channel plan the vector of channel norms."""
        arrays = [weights[t] for t in self.tensors]
        return [channel_norms(arrays, self.axes, self.spans)] if self.axes else arrays


class Surgeon:
    """Applies the surgery rule to every layer; holds only what a checkpoint must restore (`state_dict`)."""

    def __init__(self, plans: Mapping[str, LayerPlan], *, gamma: float = GAMMA, power: float = POWER,
                 runner: ChunkedRunner | None = None) -> None:
        self.plans = dict(plans)
        self.runner = runner or ChunkedRunner()
        self.gamma = gamma
        self.power = power

    def initialize(self, weights: Mapping[str, np.ndarray]) -> None:
        """Let each layer's criterion read the pretrained weights, once."""
        for plan in self.plans.values():
            plan.criterion.initialize(plan.arrays(weights))

    def thresholds(self, layer: str, iteration: int, weights: Mapping[str, np.ndarray]) -> tuple[float, float]:
        """(a, b) of a layer at this iteration."""
        plan = self.plans[layer]
        return plan.criterion.thresholds(iteration, plan.stop, plan.arrays(weights))

    def step(self, iteration: int, rng: np.random.Generator, weights: Mapping[str, np.ndarray],
             masks: Mapping[str, np.ndarray]) -> list[str]:
        """Operate on the layers whose draw falls under the probability schedule; return their names.

        One uniform draw per layer per iteration, always taken, so the random stream does not depend on
        which layers are still active (a resumed run draws the same numbers).
        """
        draws = rng.random(len(self.plans))
        probability = surgery_probability(iteration, self.gamma, self.power)
        operated, tasks = [], []
        for (name, plan), r in zip(self.plans.items(), draws):
            if iteration >= plan.stop:
                continue
            arrays = plan.arrays(weights)
            final = plan.criterion.final_threshold(iteration, plan.stop, arrays)
            if plan.axes and (final is not None or probability > r):
                _channel_update(plan, arrays[0], masks, final, iteration)
                operated.append(name)
                continue
            if final is not None:
                self.keep_above(name, final, weights, masks)
                operated.append(name)
                continue
            if not probability > r:
                continue
            kernel = _mask_kernel(*plan.criterion.thresholds(iteration, plan.stop, arrays))
            tasks += [(kernel, (weights[tensor], masks[tensor])) for tensor in plan.tensors]
            operated.append(name)
        self.runner.run(tasks)
        return operated

    def keep_above(self, layer: str, t: float, weights: Mapping[str, np.ndarray],
                   masks: Mapping[str, np.ndarray]) -> None:
        """Set a layer's masks to keep exactly the entries (or channels) whose magnitude (or norm) is >= t."""
        plan = self.plans[layer]
        arrays = plan.arrays(weights)
        if plan.axes:
            _channel_update(plan, arrays[0], masks, t, 0)
            return
        for tensor, weight in zip(plan.tensors, arrays):
            masks[tensor][...] = np.abs(weight) >= t

    def state_dict(self) -> dict:
        return {name: plan.criterion.state_dict() for name, plan in self.plans.items()}

    def load_state_dict(self, state: Mapping[str, dict]) -> None:
        for name, data in state.items():
            self.plans[name].criterion.load_state_dict(data)


def _channel_update(plan: LayerPlan, norms: np.ndarray, masks: Mapping[str, np.ndarray], final: float | None,
                    iteration: int) -> None:
    """The surgery rule on channel norms, written into every tensor of the group (masks broadcast over the
    channel axis: 1 on every other axis)."""
    spans = plan.spans or ((0, norms.size),) * len(plan.tensors)
    keep = np.zeros(norms.size, dtype=norms.dtype)
    for tensor, axis, (start, count) in zip(plan.tensors, plan.axes, spans):
        mask = masks[tensor]
        keep[start:start + count] = np.moveaxis(mask, axis, 0).reshape(count, -1)[:, 0]
    if final is not None:
        keep = (norms >= final).astype(norms.dtype)
    else:
        update_mask(norms, keep, *plan.criterion.thresholds(iteration, plan.stop, [norms]))
    for tensor, axis, (start, count) in zip(plan.tensors, plan.axes, spans):
        mask = masks[tensor]
        mask[...] = keep[start:start + count].reshape([-1 if i == axis else 1 for i in range(mask.ndim)])
