"""Choose the learning rate when none is given: a short probe on the first batches (the first one repeated when
batches are runs of one sequence, whose losses differ too much to compare), from the largest rate down.

The probe starts from the weights as pruned at the end of the surgery (each layer keeps what its criterion would
keep at its stop iteration), so the loss has something to recover. Cut all at once, a network can sit on a steep
wall that training, which prunes gradually and recovers as it goes, never meets: Silero's VAD cut to 2x has a
gradient norm of 37 there (training at a good rate sees at most 2), and one step of any rate from 3e-4 up
throws it off the wall. STEPS steps at SETTLE (1e-5) first settle the cut (the norm falls to 7.4), and every rate is
tried from that settled point. For each candidate rate, from 1 down to 1e-5 in steps of sqrt(10) (with AdamW, from
1e-2 down to 1e-6), it trains STEPS iterations from the same starting point (weights, masks and optimizer state
restored before each), and a rate passes when the loss falls steadily: finite, never above RISE times its first
value, and the mean of the last three below 0.98 times the mean of the first two. A run of one sequence is probed on
one batch repeated, so its losses are comparable step to step and a rate is judged by the later half of its steps,
once it has left the cut: even settled, the cut is steeper than anything training meets (on Silero's LSTM every rate
from 1e-2 up throws the loss to 4-8 times its start on the first step; 1e-2 then ends 47 times below it, and trains
to 95.5% of the decisions where the 1e-3 chosen for that spike keeps 70%). There a rate passes when every loss is
finite and under SPIKE times the first, the later half never above the first, and the mean of the last three below
0.98 times the first; it diverges when the later half rises above RISE times the first. Each loss is read relative
to the loss of its batch at the settled cut (measured once, at a rate of 0): batches whose losses differ tenfold, as
a detector's with and without objects do, would otherwise make every rate look as if it diverged (on a YOLOv8n every
rate did, and the fallback 3.3e-6 trained nothing). A rate whose losses all stay within UNMOVED (relative) of the
losses at rate 0 ends the probe as flat: every smaller rate moves the weights less and would be flat too, and the
choice is the same (magika-v3.3, whose distillation loss barely has a gradient, spent 88 steps of several seconds
trying all eleven rates for it). The largest passing rate times SAFETY is chosen (if none falls, the largest whose
loss stays flat; else the smallest candidate), among the rates below the smallest one whose loss rose or diverged.
The gradient norm is then bounded at CLIP times the median norm seen at the chosen rate, so one bad batch cannot
throw the weights away. Everything the probe changed is restored before training starts."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from onnx_dns.data import CallableData
from onnx_dns.dataset import Dataset
from onnx_dns.optimizers import AdamW
from onnx_dns.trainer import Trainer

CANDIDATES = tuple(float(10 ** (-k / 2)) for k in range(11))  # 1, 0.316, 0.1, ..., 1e-5
# AdamW moves every weight by about the rate at each step, whatever its gradient: from 1e-2 down to 1e-6. At 1
# (every weight moved by 1) the next step of ddddocr's detector killed the process inside onnxruntime-training
# (a double free).
ADAMW_CANDIDATES = tuple(float(10 ** (-k / 2)) for k in range(4, 13))
SETTLE = 1e-5  # the rate of the settling steps, with either optimizer (measured on Silero with SGD, see above)
STEPS = 8
SAFETY = 1 / 3
CLIP = 5.0
RISE = 1.5
SPIKE = 10.0
UNMOVED = 1e-4


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
        start = _settled_cut(trainer, saved, batches)
        trainer.restore_state(start)
        base = [max(loss, 1e-12) for loss in _run(trainer, batches, 0.0, float("inf"))[0]]
        for lr in candidates(trainer):
            trainer.restore_state(start)
            losses, norms = _run(trainer, batches, lr, SPIKE if windows else RISE, base)
            relative = [loss / b for loss, b in zip(losses, base)]
            tried.append({"lr": lr, "losses": losses, "verdict": _verdict(relative, windows), "norms": norms})
            if tried[-1]["verdict"] == "falls" or _unmoved(relative):
                break
    finally:
        trainer.restore_state(saved)
    return _choose(tried)


def candidates(trainer: Trainer) -> tuple[float, ...]:
    """The rates the probe tries for the trainer's optimizer, the largest first."""
    return ADAMW_CANDIDATES if isinstance(getattr(trainer, "optimizer", None), AdamW) else CANDIDATES


def _settled_cut(trainer: Trainer, saved: dict, batches: list) -> dict:
    """The state the candidates start from: `saved` pruned as at the end of the surgery, then STEPS steps at
    SETTLE (kept only when their losses stay finite), with the optimizer's state as in `saved`."""
    trainer.restore_state(saved)
    _prune_for_probe(trainer)
    cut = trainer.save_state()
    losses, _ = _run(trainer, batches, SETTLE, float("inf"))
    if len(losses) < STEPS or not all(np.isfinite(losses)):
        return cut
    trainer.load_optimizer(saved["optimizer"])
    return trainer.save_state()


def _run(trainer: Trainer, batches: list, lr: float, ceiling: float,
         base: list[float] | None = None) -> tuple[list[float], list[float]]:
    """The loss of each batch, stopping once it is not finite or, relative to `base` (the batch's loss at the
    start), above `ceiling` times the first."""
    base = base or [1.0] * len(batches)
    trainer.clip, losses, norms = float("inf"), [], []  # an infinite bound measures the norm and clips nothing
    for i, (inputs, labels) in enumerate(batches):
        loss = trainer.step(i, inputs, labels, lr, surgery=False)
        losses.append(loss)
        norms.append(trainer.grad_norm)
        if not np.isfinite(loss) or loss / base[i] > ceiling * losses[0] / base[0] + 1e-12:
            break
    return losses, norms


def _unmoved(relative: list[float]) -> bool:
    """Whether a rate's losses, each relative to its batch's at rate 0, all stayed where they were."""
    return len(relative) == STEPS and all(abs(r - 1.0) <= UNMOVED for r in relative)


def _verdict(losses: list[float], repeated: bool = False) -> str:
    """Falls, flat, rises or diverges; with `repeated` (one batch throughout) judged on the later half of the
    steps, which may follow a spike of up to SPIKE times the first loss (see the module)."""
    first = losses[0]
    ceiling = SPIKE if repeated else RISE
    if len(losses) < STEPS or not all(np.isfinite(losses)) or max(losses) > ceiling * first + 1e-12:
        return "diverges"
    if not repeated:
        if np.mean(losses[-3:]) < 0.98 * np.mean(losses[:2]):
            return "falls"
        return "flat" if max(losses) <= 1.02 * first + 1e-9 else "rises"
    later = max(losses[STEPS // 2:])
    if later > RISE * first + 1e-12:
        return "diverges"
    if later <= first + 1e-12 and np.mean(losses[-3:]) < 0.98 * first:
        return "falls"
    return "flat" if later <= 1.02 * first + 1e-9 else "rises"


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
