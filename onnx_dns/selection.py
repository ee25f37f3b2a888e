"""Which state of a run is kept: the accuracy bound, decided in one place, and the most compressed state within it.

A state meets the bound when its score (top-1 %, agreement %, a `--fidelity` measure % or -relative error) is at
most `max_drop` below the baseline's; without a bound every state meets it and the final one is kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from onnx_dns.evaluate import Metrics

CLOSE_ENOUGH = 0.995  # a later state this close in compression to the best one replaces it
STEADY_UNITS = 5  # counted items that must fit within the bound for it to be judged steadily


def within_bound(metrics: Metrics, baseline: Metrics, max_drop: float | None) -> bool:
    return max_drop is None or metrics.score >= baseline.score - max_drop


def coarse_bound(baseline: Metrics, max_drop: float | None) -> str | None:
    """A warning when the validation data is too small for the bound: one sample (or position, or detection)
    moves the score by more than a fifth of `max_drop`, so a few unlucky items decide which state is kept."""
    if max_drop is None or not baseline.units or baseline.units * max_drop / 100.0 >= STEADY_UNITS:
        return None
    what = "detections" if baseline.measure == "boxes" else "positions" if baseline.positions > 1 else "samples"
    needed = math.ceil(100.0 * STEADY_UNITS / max_drop)
    return (f"the accuracy bound ({max_drop:g} points) is judged on {baseline.units} validation {what}, one of "
            f"which moves the score by {100.0 / baseline.units:.2g} points, so the state kept is a matter of a few "
            f"{what}; give --val with at least {needed} {what} for a steadier choice")


@dataclass
class Snapshot:
    """The trained values and masks at one iteration, with how good and how compressed they were."""

    iteration: int
    metrics: Metrics
    compression: float
    params: dict[str, np.ndarray] = field(repr=False)
    masks: dict[str, np.ndarray] = field(repr=False)


@dataclass
class Selection:
    """Tracks the most compressed evaluated state that meets the bound."""

    max_drop: float | None
    best: Snapshot | None = None

    def consider(self, snap: Snapshot, baseline: Metrics) -> None:
        if within_bound(snap.metrics, baseline, self.max_drop) and (
                self.best is None or snap.compression >= self.best.compression * CLOSE_ENOUGH):
            self.best = snap

    def choose(self, final: Snapshot, baseline: Metrics) -> Snapshot:
        """The final state if it meets the bound (or nothing better was seen), else the best one that did."""
        if self.max_drop is None or within_bound(final.metrics, baseline, self.max_drop) or self.best is None:
            return final
        return self.best
