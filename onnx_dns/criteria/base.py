"""What a pruning criterion is: the rule that gives a layer its prune and splice thresholds at each iteration.

The surgery rule itself (`onnx_dns.surgery`) is the same for every criterion: prune |w| < a, splice |w| > b.
A criterion decides a and b, may set a layer's final mask at its stop iteration, and saves what a resumed run
needs. A new criterion is one new module with a subclass and a `plans` function (see `onnx_dns.criteria`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np


class Criterion(ABC):
    """The thresholds of one layer; its arrays are the layer's weights (and bias), in the plan's order."""

    def initialize(self, arrays: Sequence[np.ndarray]) -> None:
        """Record what the criterion needs from the pretrained weights, once, before the first iteration."""

    @abstractmethod
    def thresholds(self, iteration: int, stop: int, arrays: Sequence[np.ndarray]) -> tuple[float, float]:
        """(a, b): prune below a, splice above b, at this iteration."""

    def final_threshold(self, iteration: int, stop: int, arrays: Sequence[np.ndarray]) -> float | None:
        """A magnitude that sets the mask exactly (kept: |w| >= t) at this iteration whatever the draw, or None."""
        return None

    def probe_threshold(self, stop: int, arrays: Sequence[np.ndarray]) -> float:
        """A magnitude below which the layer will have been pruned by its stop iteration (kept: |w| >= t), for
        the learning-rate probe; by default the prune threshold of the first iteration."""
        return self.thresholds(0, stop, arrays)[0]

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` saved (a resumed run never calls `initialize`)."""
