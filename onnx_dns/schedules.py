"""Learning-rate schedules: the paper's Caffe "inv" policy, step, cosine, each with an optional linear warm-up."""

from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULES = ("inv", "step", "cosine", "constant")


@dataclass(frozen=True)
class LearningRate:
    """lr(i) for iteration i (0-based) of `total` iterations.

    inv:    base * (1 + gamma * i)^(-power)          (Caffe; the paper uses gamma 1e-4, power 0.75)
    step:   base * factor^(i // step_size)
    cosine: final + (base - final) * (1 + cos(pi * i / total)) / 2
    Warm-up multiplies by (i + 1) / warmup for the first `warmup` iterations.
    """

    base: float
    policy: str = "inv"
    total: int = 1
    gamma: float = 1e-4
    power: float = 0.75
    step_size: int = 1000
    factor: float = 0.1
    final: float = 0.0
    warmup: int = 0

    def __post_init__(self) -> None:
        if self.policy not in SCHEDULES:
            raise ValueError(f"unknown learning-rate schedule {self.policy!r}; choose one of {', '.join(SCHEDULES)}")
        if self.base <= 0 or not math.isfinite(self.base):
            raise ValueError(f"the learning rate must be a positive number, got {self.base}")

    def __call__(self, i: int) -> float:
        if self.policy == "inv":
            lr = self.base * (1.0 + self.gamma * i) ** (-self.power)
        elif self.policy == "step":
            lr = self.base * self.factor ** (i // max(self.step_size, 1))
        elif self.policy == "cosine":
            lr = self.final + (self.base - self.final) * 0.5 * (1.0 + math.cos(math.pi * min(i, self.total) / max(self.total, 1)))
        else:
            lr = self.base
        if i < self.warmup:
            lr *= (i + 1) / self.warmup
        return lr
