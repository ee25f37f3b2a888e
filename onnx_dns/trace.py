"""The training loss and compression step by step, recorded from the progress events of a run (or of every
target of a sweep), averaged over windows so that a run keeps at most `max_points` points whatever its length.

Evaluations are costly and rare (`CompressResult.history`); the loss comes with every step for free.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

MAX_POINTS = 200


@dataclass
class Run:
    """One training run: (iteration, mean loss over the window ending there, compression) per window."""

    label: str
    points: list[tuple[int, float, float]] = field(default_factory=list)


class LossTrace:
    """A progress callback that records the loss and forwards every event to `progress`."""

    def __init__(self, progress: Callable[[dict], None] | None = None, max_points: int = MAX_POINTS) -> None:
        self.forward = progress or (lambda event: None)
        self.max_points = max_points
        self.runs: list[Run] = []
        self._label = "training"
        self._stride, self._sum, self._count = 1, 0.0, 0

    def __call__(self, event: dict) -> None:
        kind = event["event"]
        if kind == "target":
            self._label = f"{event['target']:g}x"
        elif kind == "start":
            self.runs.append(Run(self._label))
            self._stride = max(1, math.ceil((event["iterations"] - event["iteration"]) / self.max_points))
            self._sum, self._count = 0.0, 0
        elif kind == "step" and self.runs:
            self._step(event)
        elif kind == "rollback" and self.runs:
            run = self.runs[-1]
            run.points = [p for p in run.points if p[0] <= event["iteration"]]
            self._sum, self._count = 0.0, 0
        self.forward(event)

    def _step(self, event: dict) -> None:
        self._sum += event["loss"]
        self._count += 1
        iteration = event["iteration"]
        if iteration % self._stride == 0 or iteration == event["iterations"]:
            self.runs[-1].points.append((iteration, self._sum / self._count, float(event["compression"])))
            self._sum, self._count = 0.0, 0
