"""Choose the learning rate when none is given: a short probe on the first batches (the first one repeated when
batches are runs of one sequence, whose losses differ too much to compare), from the largest rate down.

The probe starts from the weights as pruned at the end of the surgery (each layer keeps what its criterion would
keep at its stop iteration), so the loss has something to recover. For each candidate rate, from 1 down to 1e-5
in steps of sqrt(10), it trains STEPS iterations from the same starting point (weights, masks and optimizer state
restored before each), and a rate passes when the loss falls steadily: finite, never above 1.5 times its first
value, and the mean of the last three below 0.98 times the mean of the first two. Each loss is read relative to
the loss of its batch at the starting point (measured once, at a rate of 0): batches whose losses differ tenfold,
as a detector's with and without objects do, would otherwise make every rate look as if it diverged. The
largest passing rate times SAFETY is chosen (if none falls, the largest whose loss stays flat; else the smallest
candidate), among the rates below the smallest one whose loss rose or diverged. The gradient norm is then
bounded at CLIP times the median norm seen at the chosen rate, so one bad batch cannot throw the weights away.
Everything the probe changed is restored before training starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from onnx_dns.data import CallableData
from onnx_dns.dataset import Dataset
from onnx_dns.trainer import Trainer

CANDIDATES = tuple(float(10 ** (-k / 2)) for k in range(11))  # 1, 0.316, 0.1, ..., 1e-5
STEPS = 8
SAFETY = 1 / 3
CLIP = 5.0
RISE = 1.5


@dataclass
class ProbeResult:
    lr: float
    clip: float | None
    tried: list[dict] = field(default_factory=list)


def probe_learning_rate(trainer: Trainer, data: Dataset | CallableData, batch_size: int, seed: int) -> ProbeResult:
    """The learning rate (and gradient-norm bound) to train with; `trainer` is left as it was."""
    saved = trainer.save_state()
    # runs of one sequence differ too much for the loss on one to be compared with the next: probe on the first
    windows = isinstance(data, Dataset) and data.windows
    batches = [data.batch(0 if windows else i, batch_size, seed) for i in range(STEPS)]
    tried = []
    try:
        _prune_for_probe(trainer)
        start = [trainer.step(i, inputs, labels, 0.0, surgery=False) for i, (inputs, labels) in enumerate(batches)]
        for lr in CANDIDATES:
            trainer.restore_state(saved)
            _prune_for_probe(trainer)
            losses, norms = _run(trainer, batches, lr, start)
            relative = [loss / base for loss, base in zip(losses, start)]
            tried.append({"lr": lr, "losses": losses, "verdict": _verdict(relative), "norms": norms})
            if tried[-1]["verdict"] == "falls":
                break
    finally:
        trainer.restore_state(saved)
    return _choose(tried)


def _run(trainer: Trainer, batches: list, lr: float, start: list[float]) -> tuple[list[float], list[float]]:
    """The loss of each batch (stopping early once it is not finite or its ratio to `start` rose past RISE)."""
    trainer.clip, losses, norms = float("inf"), [], []  # an infinite bound measures the norm and clips nothing
    for i, (inputs, labels) in enumerate(batches):
        loss = trainer.step(i, inputs, labels, lr, surgery=False)
        losses.append(loss)
        norms.append(trainer.grad_norm)
        ratio = loss / max(start[i], 1e-12)
        if not np.isfinite(loss) or ratio > RISE * losses[0] / max(start[0], 1e-12) + 1e-12:
            break
    return losses, norms


def _verdict(losses: list[float]) -> str:
    if len(losses) < STEPS or not all(np.isfinite(losses)) or max(losses) > RISE * losses[0] + 1e-12:
        return "diverges"
    if np.mean(losses[-3:]) < 0.98 * np.mean(losses[:2]):
        return "falls"
    return "flat" if max(losses) <= 1.02 * losses[0] + 1e-9 else "rises"


def _choose(tried: list[dict]) -> ProbeResult:
    """From the rates tried (largest first), below the smallest one whose loss rose or diverged: a larger rate
    that looked flat was lucky with its batches."""
    bad = [i for i, t in enumerate(tried) if t["verdict"] in ("diverges", "rises")]
    eligible = tried[bad[-1] + 1:] if bad else tried
    chosen = next((t for t in eligible if t["verdict"] == "falls"), None)
    chosen = chosen or next((t for t in eligible if t["verdict"] == "flat"), None) or tried[-1]
    norms = [n for n in chosen["norms"] if n > 0]
    clip = CLIP * float(np.median(norms)) if norms else None
    history = [{"lr": t["lr"], "verdict": t["verdict"], "losses": [round(x, 6) for x in t["losses"]]} for t in tried]
    return ProbeResult(chosen["lr"] * SAFETY, clip, history)


def _prune_for_probe(trainer: Trainer) -> None:
    surgeon = trainer.surgeon
    for name, plan in surgeon.plans.items():
        t = plan.criterion.probe_threshold(plan.stop, plan.arrays(trainer.params))
        surgeon.keep_above(name, t, trainer.params, trainer.masks)
