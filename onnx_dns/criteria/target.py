"""Target mode (beyond the paper): each layer keeps a scheduled fraction of its largest magnitudes.

The kept fraction follows a cubic schedule (Zhu and Gupta 2017) from keep_0 (the pretrained density) at
iteration 0 to keep_f at the layer's stop iteration:
    keep(i) = keep_f + (keep_0 - keep_f) * (1 - i / stop)^3
t_k is the magnitude that keeps that fraction, recomputed once per `refresh` iterations (fewer when the schedule
is short, so that it takes at least MIN_REFRESHES steps: a 28-iteration schedule refreshed every 20 would prune
nothing for 20 iterations and then almost everything in one cut), with a = b = t_k: the
layer keeps exactly the scheduled fraction, and a pruned weight that grows past t_k is spliced back. (A band
a < b would leave pruned weights inside it masked while t_k counts them as kept, pruning more than scheduled.)
At the last iteration before the stop the mask is set to exactly the keep_f largest magnitudes, so the target
is met. The final fractions come from a total compression target: keep_k = min(1, beta / sqrt(n_k)), beta
chosen so that the kept total is n / target (larger layers are pruned harder, as in the paper's LeNet-5 results).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from onnx_dns.criteria.base import Criterion

REFRESH = 20
MIN_REFRESHES = 20


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


class Target(Criterion):
    """Keep the scheduled fraction of largest magnitudes, ending at `keep` at the stop iteration."""

    def __init__(self, keep: float, refresh: int = REFRESH) -> None:
        self.keep = keep
        self.refresh = refresh
        self.keep_0 = 1.0
        self._cached: tuple[int, float] | None = None

    def initialize(self, arrays: Sequence[np.ndarray]) -> None:
        total = sum(a.size for a in arrays)
        self.keep_0 = sum(int(np.count_nonzero(a)) for a in arrays) / total if total else 1.0

    def period(self, stop: int) -> int:
        """Iterations between two refreshes of t_k: `refresh`, or fewer so that the schedule takes
        MIN_REFRESHES steps."""
        return max(1, min(self.refresh, stop // MIN_REFRESHES))

    def thresholds(self, iteration: int, stop: int, arrays: Sequence[np.ndarray]) -> tuple[float, float]:
        bucket = iteration // self.period(stop)
        if self._cached is None or self._cached[0] != bucket:
            keep = cubic_keep(iteration, 0, stop, self.keep_0, min(self.keep, self.keep_0))
            self._cached = (bucket, magnitude_for_keep(arrays, keep))
        return self._cached[1], self._cached[1]

    def final_threshold(self, iteration: int, stop: int, arrays: Sequence[np.ndarray]) -> float | None:
        if iteration != stop - 1:
            return None
        return magnitude_for_keep(arrays, min(self.keep, self.keep_0))

    def probe_threshold(self, stop: int, arrays: Sequence[np.ndarray]) -> float:
        return magnitude_for_keep(arrays, min(self.keep, self.keep_0))

    def state_dict(self) -> dict:
        return {"keep_0": self.keep_0, "cached": self._cached}

    def load_state_dict(self, state: dict) -> None:
        self.keep_0 = state["keep_0"]
        self._cached = None if state["cached"] is None else tuple(state["cached"])
