"""The default batch size bounded by memory: the largest batch up to 64 whose training step fits `--max-memory`.

A step's working memory (the activations kept for the backward pass, the gradients flowing back) grows with the
batch, and on a text recognizer it is most of the run's peak: 100-110 MB a line of 3x48x320. One step is run at a
small probe batch b0 while the process's peak resident memory is watched (the kernel's high-water mark VmHWM,
reset through /proc/self/clear_refs), and the estimate at batch b is

    peak(b) = resident + MARGIN * (peak(b0) - resident) * b / b0

with `resident` the memory held before the step. The margin covers what a straight line from b0 misses: a step
takes 103.5 MB a line at batch 4 and 110.7 at 16 on the PP-OCRv4 recognizer, and its whole runs (evaluation and
the original model's outputs beside the training session) peaked at 1.18-1.21 times the straight line at batches
14 and 15 (benchmarks/results/memory.md). Where the peak cannot be read (not Linux) the wanted batch is kept. A
resumed run reads the batch it was started with from the work folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

PROBE_BATCH = 4
MARGIN = 1.25
CHOSEN = "batch.json"


@dataclass(frozen=True)
class StepMemory:
    """The process's resident memory before a step and its peak during the step, in bytes, at batch `batch`."""

    batch: int
    resident: int
    peak: int

    def estimate(self, batch: int) -> float:
        """The peak in bytes a step at `batch` would reach, scaled from this one (module docstring)."""
        return self.resident + MARGIN * max(self.peak - self.resident, 0) * batch / self.batch


@dataclass(frozen=True)
class BatchChoice:
    """The batch chosen, the one wanted, and what the step was estimated to need at each (bytes)."""

    batch: int
    wanted: int
    budget: float | None
    needed_wanted: float | None
    needed: float | None

    @property
    def limited(self) -> bool:
        return self.batch < self.wanted

    def describe(self) -> str:
        """Why this batch: "batch 16: a step at 64 would need about 6.8 GB, over --max-memory 2.0 GB; ..."."""
        if self.needed_wanted is None:
            return f"batch {self.batch}: the memory a step needs could not be measured here"
        if not self.limited:
            return f"batch {self.batch}: a step needs about {gigabytes(self.needed_wanted)}"
        return (f"batch {self.batch}: a step at {self.wanted} would need about {gigabytes(self.needed_wanted)}, "
                f"over --max-memory {gigabytes(self.budget)} (at {self.batch}: about {gigabytes(self.needed)}); "
                "set --batch-size or --max-memory to choose")


def gigabytes(size: float) -> str:
    return f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.0f} MB"


def largest_batch(measured: StepMemory | None, wanted: int, budget: float | None) -> BatchChoice:
    """The largest batch from 1 to `wanted` whose estimated peak fits `budget` bytes (None: no bound); 1 when
    none fits, `wanted` when nothing was measured."""
    if measured is None:
        return BatchChoice(wanted, wanted, budget, None, None)
    batch = wanted
    if budget is not None:
        while batch > 1 and measured.estimate(batch) > budget:
            batch -= 1
    return BatchChoice(batch, wanted, budget, measured.estimate(wanted), measured.estimate(batch))


def _status_bytes(key: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def reset_peak() -> bool:
    """Reset the process's peak resident memory (VmHWM) to its current size; False where the kernel offers no
    way to."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        return False
    return _status_bytes("VmHWM") is not None


def measure_step(step, batch: int) -> StepMemory | None:
    """Run `step()` (one training step at `batch`) and return the memory it took, or None when the peak cannot
    be read."""
    resident = _status_bytes("VmRSS")
    if resident is None or not reset_peak():
        step()
        return None
    step()
    peak = _status_bytes("VmHWM")
    return None if peak is None else StepMemory(batch, resident, peak)


def save_choice(work: Path, choice: BatchChoice) -> None:
    (work / CHOSEN).write_text(json.dumps(choice.__dict__))


def load_choice(work: Path) -> BatchChoice | None:
    """The batch a run in `work` was started with, if it chose one by memory."""
    path = work / CHOSEN
    return BatchChoice(**json.loads(path.read_text())) if path.exists() else None
