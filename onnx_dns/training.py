"""Stage 3 of `compress`: the training loop around `Trainer.step`.

Evaluates every `eval_interval` iterations and keeps the best state within the accuracy bound (`selection`),
checkpoints every `checkpoint_interval` iterations (`checkpoint`), rolls back to the last checkpoint with half the
learning rate when the loss is not finite (three times at most), and on Ctrl-C finishes the iteration,
checkpoints and stops (`interrupt`). A resumed run continues from the checkpoint exactly.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from onnx_dns.checkpoint import TrainState, load_checkpoint, save_checkpoint
from onnx_dns.data import CallableData
from onnx_dns.dataset import Dataset
from onnx_dns.errors import Interrupted, TrainingError
from onnx_dns.evaluate import Metrics
from onnx_dns.interrupt import StopRequest
from onnx_dns.lr_probe import ProbeResult, probe_learning_rate
from onnx_dns.selection import Selection, Snapshot, coarse_bound, within_bound
from onnx_dns.trainer import Trainer

log = logging.getLogger(__name__)

MAX_ROLLBACKS = 3
PROGRESS_EVERY = 50  # iterations between recounts of the kept weights for progress (a pass over every mask)

Progress = Callable[[dict], None]


@dataclass
class TrainResult:
    params: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]
    chosen: Snapshot
    baseline: Metrics
    history: list[dict]
    seconds: float
    iterations_run: int
    host_seconds: float
    surgery_seconds: float
    meets_bound: bool
    rollbacks: int
    lr: float
    clip: float | None
    probe: list[dict] | None


class TrainingLoop:
    """Runs `trainer` from iteration 0 (or a checkpoint) to `config.iterations`."""

    def __init__(self, trainer: Trainer, train: Dataset | CallableData, val: Dataset | CallableData,
                 work_dir: str | Path, progress: Progress | None = None, share_from: int | None = None,
                 baseline: Metrics | None = None) -> None:
        """`share_from`: the iteration from which the trainer's weight sharing (if any) fine-tunes codebooks;
        `baseline`: the original's metrics (when None, those of the model being trained, measured at iteration 0)."""
        self.trainer = trainer
        self.config = trainer.config
        self.train_data = train
        self.val_data = val
        self.work_dir = Path(work_dir)
        self.progress = progress or (lambda event: None)
        self.selection = Selection(self.config.max_accuracy_drop)
        self.probe: ProbeResult | None = None
        self.share_from = share_from
        self.baseline = baseline

    def run(self, resume: bool = False) -> TrainResult:
        started = time.perf_counter()
        state = self._resume() if resume else None
        if state is None:
            state = self._start()
        start = state.iteration
        self.progress({"event": "start", "iteration": start, "iterations": self.config.iterations,
                       "baseline": state.baseline, "compression": self.trainer.compression()})
        try:
            with StopRequest() as stop:
                self._loop(state, stop)
        finally:
            self.trainer.close()
        last = state.history[-1]["metrics"] if state.history else state.baseline
        final = self.trainer.snapshot(state.iteration, last)
        chosen = self.selection.choose(final, state.baseline)
        if chosen is not final:
            log.warning("the final state (%.1fx, %s) misses the accuracy bound: keeping iteration %d (%.1fx, %s), the "
                        "most compressed state within it; train longer or lower the target to get more",
                        final.compression, final.metrics.describe(), chosen.iteration, chosen.compression,
                        chosen.metrics.describe())
        return TrainResult(chosen.params, chosen.masks, chosen, state.baseline, state.history,
                           time.perf_counter() - started, state.iteration - start, self.trainer.host_seconds,
                           self.trainer.surgery_seconds,
                           within_bound(chosen.metrics, state.baseline, self.config.max_accuracy_drop),
                           state.rollbacks, self.trainer.schedule.base, self.trainer.clip,
                           None if self.probe is None else self.probe.tried)

    def _start(self) -> TrainState:
        self.trainer.surgeon.initialize(self.trainer.params)
        state = TrainState(0, self.baseline or self.trainer.evaluate(self.val_data, self.progress))
        warning = coarse_bound(state.baseline, self.config.max_accuracy_drop)
        if warning:
            log.warning(warning)
        if self.trainer.schedule is None:
            self._probe()
        self._checkpoint(state)
        return state

    def _probe(self) -> None:
        """No --lr: choose it (and a gradient-norm bound) with a short probe (`lr_probe`)."""
        self.progress({"event": "lr-probe"})
        found = probe_learning_rate(self.trainer, self.train_data, self.config.batch_size, self.config.seed)
        if self.config.clip_grad_norm is not None:  # a bound given by hand stays
            found.clip = self.config.clip_grad_norm
        self.trainer.set_learning_rate(found.lr, found.clip)
        self.probe = found
        log.info("learning rate %.3g chosen by a probe (%s); gradient norm bounded at %s", found.lr,
                 ", ".join(f"{t['lr']:.3g} {t['verdict']}" for t in found.tried),
                 "none" if found.clip is None else f"{found.clip:.3g}")
        self.progress({"event": "lr-chosen", "lr": found.lr, "clip": found.clip, "tried": found.tried})

    def _loop(self, state: TrainState, stop: StopRequest) -> None:
        cfg, trainer = self.config, self.trainer
        last = state.history[-1]["metrics"] if state.history else state.baseline
        compression = trainer.compression()
        while state.iteration < cfg.iterations:
            self._share_weights(state.iteration)
            inputs, labels = self.train_data.batch(state.iteration, cfg.batch_size, cfg.seed)
            loss = trainer.step(state.iteration, inputs, labels, trainer.learning_rate(state.iteration, state.lr_scale))
            if not math.isfinite(loss):
                self._roll_back(state, loss)
                continue
            state.iteration += 1
            evaluate_now = state.iteration % cfg.eval_interval == 0 or state.iteration == cfg.iterations
            if evaluate_now:
                last = self._evaluate(state, loss)
            if evaluate_now or state.iteration % PROGRESS_EVERY == 0:
                compression = trainer.compression()
            self.progress({"event": "step", "iteration": state.iteration, "iterations": cfg.iterations,
                           "loss": loss, "compression": compression, "metrics": last, "evaluated": evaluate_now})
            if state.iteration % cfg.checkpoint_interval == 0 or stop.requested:
                self._checkpoint(state)
            if stop.requested:
                raise Interrupted(f"interrupted at iteration {state.iteration}; the checkpoint is in "
                                  f"{self.work_dir}: continue with --resume {self.work_dir} and the same options")

    def _share_weights(self, iteration: int) -> None:
        """From `share_from` on (the masks are fixed), the kept weights train as shared values; a resumed run
        rebuilds the codebooks from the weights, which hold only the shared values."""
        sharing = self.trainer.sharing
        if sharing is not None and not sharing.active and self.share_from is not None and iteration >= self.share_from:
            sharing.begin(self.trainer.params, self.trainer.masks)
            self.progress({"event": "sharing", "iteration": iteration, "bits": sharing.bits})

    def _evaluate(self, state: TrainState, loss: float) -> Metrics:
        metrics = self.trainer.evaluate(self.val_data, self.progress)
        snap = self.trainer.snapshot(state.iteration, metrics)
        state.history.append({"iteration": state.iteration, "compression": snap.compression, "metrics": metrics,
                              "loss": loss})
        self.selection.consider(snap, state.baseline)
        state.best = self.selection.best
        return metrics

    def _roll_back(self, state: TrainState, loss: float) -> None:
        """Back to the last checkpoint with half the learning rate in effect (the checkpoint may predate
        earlier rollbacks); more than MAX_ROLLBACKS times is a failure."""
        rollbacks = state.rollbacks + 1
        if rollbacks > MAX_ROLLBACKS:
            raise TrainingError(f"the loss became {loss} at iteration {state.iteration} after {MAX_ROLLBACKS} "
                                "rollbacks; lower --lr or check the data scaling")
        failed, scale = state.iteration, state.lr_scale
        saved = self._resume()
        state.iteration, state.history, state.best = saved.iteration, saved.history, saved.best
        state.lr_scale = min(scale, saved.lr_scale) * 0.5
        state.rollbacks = rollbacks
        log.warning("loss is %s at iteration %d: rolled back to iteration %d, learning rate halved (x%g)", loss,
                    failed, state.iteration, state.lr_scale)
        self.progress({"event": "rollback", "iteration": state.iteration, "lr_scale": state.lr_scale})

    def _checkpoint(self, state: TrainState) -> None:
        extra = {"surgeon": self.trainer.surgeon.state_dict(), "config": asdict(self.config),
                 "learning_rate": {"base": self.trainer.schedule.base, "clip": self.trainer.clip}}
        save_checkpoint(self.work_dir, self.trainer.tensors(), state, extra)

    def _resume(self) -> TrainState | None:
        tensors = self.trainer.tensors()
        loaded = load_checkpoint(self.work_dir, tensors)
        if loaded is None:
            return None
        state, extra = loaded
        self.trainer.load_optimizer(tensors.optimizer)
        self.trainer.surgeon.load_state_dict(extra["surgeon"])
        self.trainer.set_learning_rate(extra["learning_rate"]["base"], extra["learning_rate"]["clip"])
        self.selection.best = state.best
        return state
