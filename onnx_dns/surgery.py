"""The surgery policy of Dynamic Network Surgery, in pure numpy: current weights and mask in, new mask out.

Per layer k with weights and bias W_k and mask T_k, thresholds a_k < b_k:
    T <- 0 where T = 1 and |w| < a_k          (prune)
    T <- 1 where T = 0 and |w| > b_k          (splice)
    T unchanged otherwise
which is the same as T <- 0 where |w| < a_k, T <- 1 where |w| > b_k, since a_k < b_k.

Paper mode (the released Caffe code): t_k = max(mu_k + c_k * sigma_k, 0), a_k = 0.9 t_k, b_k = 1.1 t_k, with mu_k
and sigma_k the mean and standard deviation of |w| over the layer's nonzero weights and biases, computed once
from the pretrained weights. At iteration i each layer draws r ~ U(0, 1) and operates when
(1 + gamma * i)^(-power) > r, until its stop iteration.

Target mode (beyond the paper): each layer's kept fraction follows a cubic schedule (Zhu and Gupta 2017)
    keep(i) = keep_f + (keep_0 - keep_f) * (1 - (i - i_0) / (i_1 - i_0))^3
and t_k is the magnitude that keeps that fraction, with a = b = t_k: the layer keeps exactly the scheduled
fraction of largest |w|, and a pruned weight that grows past t_k is spliced back. (A band a < b would leave
pruned weights inside it masked while t_k counts them as kept, pruning more than scheduled.)
At the last iteration before the stop the mask is set to exactly the keep_f largest magnitudes, so the target is met.
The final keep fractions come from a total compression target: keep_k = min(1, beta / sqrt(n_k)), beta chosen
so that the kept total is n / target (larger layers are pruned harder, as in the paper's LeNet-5 results).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from onnx_dns.chunked import ChunkedRunner, Scratch

GAMMA = 1e-4
POWER = 1.0
LOW, HIGH = 0.9, 1.1


@dataclass(frozen=True)
class MagnitudeStats:
    mean: float
    std: float


def magnitude_stats(tensors: Sequence[np.ndarray]) -> MagnitudeStats:
    """Mean and standard deviation of |w| over the nonzero entries of a layer's tensors."""
    values = np.concatenate([np.abs(np.asarray(t, dtype=np.float64)).ravel() for t in tensors])
    values = values[values != 0]
    if values.size == 0:
        return MagnitudeStats(0.0, 0.0)
    return MagnitudeStats(float(values.mean()), float(values.std()))


def paper_threshold(stats: MagnitudeStats, c: float) -> float:
    """t = max(mu + c * sigma, 0)."""
    return max(stats.mean + c * stats.std, 0.0)


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


def allocate_keep(sizes: Mapping[str, int], target: float, fixed: Mapping[str, float] | None = None) -> dict[str, float]:
    """Per-layer kept fractions reaching `target` total compression: keep_k = min(1, beta / sqrt(n_k)).

    `fixed` gives kept fractions the user set for some layers; the others share what remains.
    """
    if target < 1:
        raise ValueError(f"target compression must be at least 1, got {target}")
    fixed = dict(fixed or {})
    budget = sum(sizes.values()) / target - sum(sizes[k] * v for k, v in fixed.items())
    free = {k: n for k, n in sizes.items() if k not in fixed}
    if not free:
        return fixed
    if budget <= 0:
        raise ValueError("the per-layer sparsities given already exceed the total target")

    def kept(beta: float) -> float:
        return sum(min(1.0, beta / np.sqrt(n)) * n for n in free.values())

    if kept(max(np.sqrt(n) for n in free.values())) <= budget:
        return {**fixed, **{k: 1.0 for k in free}}
    lo, hi = 0.0, max(np.sqrt(n) for n in free.values())
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if kept(mid) < budget else (lo, mid)
    beta = 0.5 * (lo + hi)
    return {**fixed, **{k: min(1.0, beta / float(np.sqrt(n))) for k, n in free.items()}}


def cubic_keep(iteration: int, start: int, end: int, keep_0: float, keep_f: float) -> float:
    """The kept fraction at `iteration` on the cubic schedule from keep_0 (at start) to keep_f (at end)."""
    if iteration <= start:
        return keep_0
    if iteration >= end:
        return keep_f
    progress = (iteration - start) / (end - start)
    return keep_f + (keep_0 - keep_f) * (1.0 - progress) ** 3


def magnitude_for_keep(tensors: Sequence[np.ndarray], keep: float) -> float:
    """The magnitude t such that about `keep` of the entries have |w| >= t."""
    values = np.concatenate([np.abs(t).ravel() for t in tensors])
    k = int(round(keep * values.size))
    if k >= values.size:
        return 0.0
    if k <= 0:
        return float(np.inf)
    return float(np.partition(values, values.size - k)[values.size - k])


@dataclass
class LayerPlan:
    """How one layer is operated on: its tensors, its stop iteration, and either c (paper) or keep_f (target)."""

    tensors: list[str]
    stop: int
    c: float | None = None
    keep: float | None = None
    keep_0: float = 1.0
    stats: MagnitudeStats = field(default_factory=lambda: MagnitudeStats(0.0, 0.0))


class Surgeon:
    """Applies the surgery policy to every layer; holds only what a checkpoint must restore (`state_dict`)."""

    def __init__(self, plans: Mapping[str, LayerPlan], *, start: int = 0, gamma: float = GAMMA,
                 power: float = POWER, refresh: int = 20, runner: ChunkedRunner | None = None) -> None:
        self.plans = dict(plans)
        self.runner = runner or ChunkedRunner()
        self.start = start
        self.gamma = gamma
        self.power = power
        self.refresh = refresh
        self._thresholds: dict[str, tuple[int, float]] = {}

    def initialize(self, weights: Mapping[str, np.ndarray]) -> None:
        """Record mu and sigma of |w| (and the starting density) from the pretrained weights, once."""
        for plan in self.plans.values():
            arrays = [weights[t] for t in plan.tensors]
            plan.stats = magnitude_stats(arrays)
            total = sum(a.size for a in arrays)
            plan.keep_0 = sum(int(np.count_nonzero(a)) for a in arrays) / total if total else 1.0

    def thresholds(self, layer: str, iteration: int, weights: Mapping[str, np.ndarray]) -> tuple[float, float]:
        """(a, b) of a layer at this iteration. Target mode recomputes t once per `refresh` iterations and
        uses a = b = t, so the kept fraction is the scheduled one; a pruned weight that grows past t returns."""
        plan = self.plans[layer]
        if plan.c is not None:
            t = paper_threshold(plan.stats, plan.c)
            return LOW * t, HIGH * t
        bucket = iteration // self.refresh
        cached = self._thresholds.get(layer)
        if cached is None or cached[0] != bucket:
            keep = cubic_keep(iteration, self.start, plan.stop, plan.keep_0, min(plan.keep, plan.keep_0))
            cached = (bucket, magnitude_for_keep([weights[t] for t in plan.tensors], keep))
            self._thresholds[layer] = cached
        return cached[1], cached[1]

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
            if plan.keep is not None and iteration == plan.stop - 1:
                self.snap(name, weights, masks)
                operated.append(name)
                continue
            if not probability > r:
                continue
            kernel = _mask_kernel(*self.thresholds(name, iteration, weights))
            tasks += [(kernel, (weights[tensor], masks[tensor])) for tensor in plan.tensors]
            operated.append(name)
        self.runner.run(tasks)
        return operated

    def snap(self, layer: str, weights: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray]) -> None:
        """Target mode, at the stop iteration: keep exactly the layer's final fraction of largest magnitudes."""
        plan = self.plans[layer]
        t = magnitude_for_keep([weights[n] for n in plan.tensors], min(plan.keep, plan.keep_0))
        for tensor in plan.tensors:
            masks[tensor][...] = np.abs(weights[tensor]) >= t

    def state_dict(self) -> dict:
        return {"plans": {name: asdict(plan) for name, plan in self.plans.items()},
                "thresholds": dict(self._thresholds)}

    def load_state_dict(self, state: Mapping[str, dict]) -> None:
        for name, data in state["plans"].items():
            plan = self.plans[name]
            plan.stats = MagnitudeStats(**data["stats"])
            plan.keep_0 = data["keep_0"]
        self._thresholds = {k: tuple(v) for k, v in state["thresholds"].items()}
