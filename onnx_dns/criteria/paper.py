"""The paper's criterion (the released Caffe code of Guo, Yao and Chen 2016).

t_k = max(mu_k + c_k * sigma_k, 0), a_k = 0.9 t_k, b_k = 1.1 t_k, with mu_k and sigma_k the mean and standard
deviation of |w| over the layer's nonzero weights and biases, computed once from the pretrained weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from onnx_dns.criteria.base import Criterion

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


class Paper(Criterion):
    """A band around mu + c * sigma of the pretrained magnitudes: c is the layer's compression knob."""

    def __init__(self, c: float) -> None:
        self.c = c
        self.stats = MagnitudeStats(0.0, 0.0)

    def initialize(self, arrays: Sequence[np.ndarray]) -> None:
        self.stats = magnitude_stats(arrays)

    def thresholds(self, iteration: int, stop: int, arrays: Sequence[np.ndarray]) -> tuple[float, float]:
        t = paper_threshold(self.stats, self.c)
        return LOW * t, HIGH * t

    def state_dict(self) -> dict:
        return {"stats": asdict(self.stats)}

    def load_state_dict(self, state: dict) -> None:
        self.stats = MagnitudeStats(**state["stats"])
