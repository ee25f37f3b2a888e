"""Compress one model at several compression targets with one set of training artifacts: the accuracy curve.

The model is prepared, its data opened and its training graphs built once; each target then gets a fresh
`Trainer` on the same artifacts (masks are checkpoint parameters, so a new session starts from whatever values
are written into its parameter views). Targets run in ascending order and, with `warm_start`, each starts from
the previous target's trained weights with its masks applied: the pruned weights are zero, so the target
criterion's keep_0 (the density of nonzeros when training starts) is the previous density and its cubic schedule
runs from there to the next target. Training keeps each run's final state (the target is met exactly at the stop
iteration); the accuracy bound is applied afterwards, against the original model, to choose the point to ship.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import onnx

from onnx_dns.errors import OptionError
from onnx_dns.evaluate import Metrics
from onnx_dns.finalize import Timings, finalize
from onnx_dns.latency import median_latency, sample_feed
from onnx_dns.objective import measure_original
from onnx_dns.options import CompressOptions, parse_target
from onnx_dns.pipeline import set_up, sized
from onnx_dns.plans import plans_for
from onnx_dns.result import CompressResult
from onnx_dns.selection import within_bound
from onnx_dns.sizing import with_iterations
from onnx_dns.surgery import Surgeon
from onnx_dns.trainer import Trainer
from onnx_dns.training import TrainingLoop, TrainResult

Progress = Callable[[dict], None]


@dataclass
class SweepPoint:
    """One target of a sweep: what was reached, how good it is, how large and how fast its model is."""

    target: float
    compression: float
    metrics: Metrics
    file_size: int
    latency_ms: float
    within_bound: bool
    warm_started: bool
    path: str | None = None
    result: CompressResult | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        return {"target": self.target, "compression": round(self.compression, 3),
                "metrics": {**asdict(self.metrics), "score": self.metrics.score}, "file_size": self.file_size,
                "latency_ms": round(self.latency_ms, 4), "within_bound": self.within_bound,
                "warm_started": self.warm_started, "path": self.path}


@dataclass
class SweepResult:
    """The points of a sweep in ascending target order, the original model's metrics and the chosen point."""

    baseline: Metrics
    baseline_file_size: int
    baseline_latency_ms: float
    points: list[SweepPoint]
    max_accuracy_drop: float | None
    chosen: int | None
    chosen_path: str | None = None

    @property
    def best(self) -> SweepPoint | None:
        """The most compressed point within the accuracy bound (the one a CI pipeline would ship)."""
        return None if self.chosen is None else self.points[self.chosen]

    def to_dict(self) -> dict:
        return {"baseline": {**asdict(self.baseline), "score": self.baseline.score},
                "baseline_file_size": self.baseline_file_size,
                "baseline_latency_ms": round(self.baseline_latency_ms, 4),
                "max_accuracy_drop": self.max_accuracy_drop, "chosen": self.chosen, "chosen_path": self.chosen_path,
                "points": [p.to_dict() for p in self.points]}


def parse_targets(values: str | Sequence[float | str]) -> list[float]:
    """'2x,4x,8x' or a sequence of targets -> the distinct targets in ascending order."""
    items = values.split(",") if isinstance(values, str) else list(values)
    return sorted({parse_target(str(item).strip()) for item in items if str(item).strip()})


def choose(points: Sequence[SweepPoint]) -> int | None:
    """The index of the most compressed point within the bound, or None when no point is."""
    inside = [i for i, p in enumerate(points) if p.within_bound]
    return max(inside, key=lambda i: points[i].compression) if inside else None


def run_sweep(original: onnx.ModelProto, source: str, options: CompressOptions, targets: Sequence[float],
              work: Path, *, identity: str, size_before: int, warm_start: bool = True,
              progress: Progress | None = None) -> SweepResult:
    """Compress `original` at each of `targets` (ascending), building the training artifacts once."""
    progress = progress or (lambda event: None)
    if options.start == "calibrated":
        raise OptionError("sweep trains each target on from the one before; --start calibrated is for compress")
    targets = sorted(targets)
    max_drop = options.train.max_accuracy_drop
    first = replace(options, target=targets[0], train=replace(options.train, max_accuracy_drop=None))
    ready = set_up(original, source, first, work, identity, False, progress)
    prepared, objective, masked, art = ready.prepared, ready.objective, ready.masked, ready.art
    spare, ready.trainer = ready.trainer, None  # the batch-size probe's, on these graphs: the first target's
    options = replace(options, train=ready.options.train)
    feed = sample_feed(objective.val, prepared.fixed_batch)
    original_metrics = measure_original(prepared.original, objective, options.train.eval_batch_size,
                                        prepared.fixed_batch, progress)
    points: list[SweepPoint] = []
    previous: TrainResult | None = None
    for target in targets:
        started = time.perf_counter()
        progress({"event": "target", "target": target, "targets": targets})
        step = replace(options, target=target)
        plans = plans_for(prepared.layers, step)
        trainer = spare or Trainer(art, Surgeon(plans), step.train, objective.targets)
        if spare is not None:
            trainer.reconfigure(step.train, Surgeon(plans))
            spare = None
        if options.train.iterations is None:  # sized once, from the first target's trainer: the budget is per target
            step, planned = sized(trainer, replace(prepared, plans=plans), objective, step, work, False, progress)
            options, plans = with_iterations(options, step.train.iterations), planned.plans
        warmed = warm_start and previous is not None
        if warmed:
            warm(trainer, previous)
        previous = TrainingLoop(trainer, objective.train, objective.val, work / f"target-{target:g}x",
                                progress, baseline=original_metrics).run()
        result = finalize(replace(prepared, plans=plans), masked, objective, previous, step,
                          Timings(started, ready.artifact_seconds if not points else 0.0), size_before, progress,
                          original=original_metrics)
        points.append(SweepPoint(target, result.compression, result.accuracy_after, result.model.ByteSize(),
                                 median_latency(result.model, feed), False, warmed, result=result))
    for point in points:
        point.within_bound = within_bound(point.metrics, original_metrics, max_drop)
    return SweepResult(original_metrics, size_before, median_latency(prepared.original, feed), points, max_drop,
                       choose(points))


def warm(trainer: Trainer, previous: TrainResult) -> None:
    """Start `trainer` from the weights and masks `previous` ended with, pruned weights set to zero."""
    for name, view in trainer.params.items():
        view[...] = previous.params[name] * previous.masks[name] if name in previous.masks else previous.params[name]
    for name, view in trainer.masks.items():
        view[...] = previous.masks[name]
