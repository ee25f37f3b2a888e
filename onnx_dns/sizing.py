"""How many iterations a run trains when `--iterations` is not given: the paper's 10,000, or as many as fit in the
time budget (`--time-budget`, an hour by default) at the measured time per step, whichever is fewer.

A step is timed on the first batches at learning rate 0 without surgery, and everything it changed is restored.
Evaluations, checkpoints and the original's outputs on the samples the first epoch draws come on top of the
budget. A resumed run reads the count it was sized to from the work folder, so it continues the same schedule.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path

from onnx_dns.data import CallableData
from onnx_dns.dataset import Dataset
from onnx_dns.options import DEFAULT_ITERATIONS, CompressOptions
from onnx_dns.trainer import Trainer

log = logging.getLogger(__name__)

MIN_ITERATIONS = 20
TIMED_STEPS = 2  # after one untimed step, which allocates
SIZING = "sizing.json"


@dataclass(frozen=True)
class Sizing:
    """The iterations chosen, the time per step they were chosen from, and whether the budget limited them."""

    iterations: int
    step_seconds: float
    budget: float

    @property
    def limited(self) -> bool:
        return self.iterations < DEFAULT_ITERATIONS


def iterations_within(step_seconds: float, budget: float) -> int:
    """The paper's 10,000 iterations, or the number of steps the budget holds (at least MIN_ITERATIONS)."""
    fit = int(budget // step_seconds) if step_seconds > 0 else DEFAULT_ITERATIONS
    return max(MIN_ITERATIONS, min(DEFAULT_ITERATIONS, fit))


def time_step(trainer: Trainer, data: Dataset | CallableData, batch_size: int, seed: int) -> float:
    """Seconds per training step (forward, backward, optimizer) on the first batches; `trainer` is left as it was."""
    saved = trainer.save_state()
    seconds = []
    try:
        for i in range(TIMED_STEPS + 1):
            inputs, labels = data.batch(i, batch_size, seed)
            started = time.perf_counter()
            trainer.step(i, inputs, labels, 0.0, surgery=False)
            seconds.append(time.perf_counter() - started)
    finally:
        trainer.restore_state(saved)
    return sum(seconds[1:]) / TIMED_STEPS


def size_run(trainer: Trainer, data: Dataset | CallableData, options: CompressOptions, work: Path,
             resume: bool) -> Sizing:
    """The iterations of a run without --iterations: measured now, or read back when resuming."""
    path = work / SIZING
    if resume and path.exists():
        return Sizing(**json.loads(path.read_text()))
    cfg = options.train
    step = time_step(trainer, data, cfg.batch_size, cfg.seed)
    sizing = Sizing(iterations_within(step, cfg.time_budget), step, cfg.time_budget)
    path.write_text(json.dumps({"iterations": sizing.iterations, "step_seconds": step, "budget": cfg.time_budget}))
    if sizing.limited:
        log.warning("%s iterations would take about %s at %.3g s a step: training %s iterations to fit the time "
                    "budget of %s (set --time-budget, or --iterations)", f"{DEFAULT_ITERATIONS:,}",
                    duration(DEFAULT_ITERATIONS * step), step, f"{sizing.iterations:,}", duration(cfg.time_budget))
    return sizing


def with_iterations(options: CompressOptions, iterations: int) -> CompressOptions:
    return replace(options, train=replace(options.train, iterations=iterations))


def duration(seconds: float) -> str:
    """Seconds as a short human duration: 45 s, 12 min, 3.5 h."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
