"""One DNS iteration over built training artifacts: onnxruntime-training forward and backward, a host-side
optimizer and surgery on zero-copy parameter views.

One iteration:  loss, grads <- module(batch)   (forward uses W * T, backward is straight-through)
                W <- optimizer(W, grads, lr(i)) on every entry, pruned or not
                T <- surgeon(i, W, T)           (prune |w| < a, splice |w| > b, per the layer's criterion)
With weight sharing (--bits) the kept weights move as shared values once the masks are fixed (`weight_sharing`).
The loop around it (evaluation, checkpoints, rollback, Ctrl-C) is `onnx_dns.training`.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable

import numpy as np

from onnx_dns.artifacts import TrainingArtifacts
from onnx_dns.batch_axes import model_feed
from onnx_dns.checkpoint import Tensors
from onnx_dns.chunked import ChunkedRunner
from onnx_dns.data import CallableData
from onnx_dns.dataset import Dataset
from onnx_dns.errors import TrainingError
from onnx_dns.evaluate import Metrics, evaluate_module
from onnx_dns.optimizers import choose as choose_optimizer
from onnx_dns.optimizers import make_optimizer
from onnx_dns.options import DEFAULT_ITERATIONS, TrainConfig
from onnx_dns.ort_training import session_options, training_api
from onnx_dns.schedules import LearningRate
from onnx_dns.selection import Snapshot
from onnx_dns.surgery import Surgeon
from onnx_dns.targets import Targets
from onnx_dns.weight_sharing import WeightSharing


def _first_line(exc: Exception) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text.split(" : ")[-1][:300] if " : " in text else text[:300]


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class Trainer:
    """The training session, its parameter views, the optimizer, the learning-rate schedule and the surgeon."""

    def __init__(self, art: TrainingArtifacts, surgeon: Surgeon, config: TrainConfig, targets: Targets) -> None:
        self.art = art
        self.surgeon = surgeon
        self.config = config
        self.targets = targets
        _, api = training_api()
        options = session_options(config.threads, arena=False, pattern=False)
        self.state = api.CheckpointState.load_checkpoint(str(art.checkpoint))
        self.module = api.Module(str(art.training_model), self.state, str(art.eval_model), session_options=options)
        parameters = self.state.parameters
        self.params = {n: parameters[n].data for n in art.trainable}
        self.grads = {n: parameters[n].grad for n in art.trainable}
        self.masks = {w: parameters[m].data for w, m in art.masks.items()}
        # the host-side updates run while onnxruntime's threads are idle: they may use as many
        self.runner = ChunkedRunner(config.threads or available_cpus())
        self.surgeon.runner = self.runner
        labelled = targets.spec.label_weight > 0
        self.optimizer = make_optimizer(config.optimizer or choose_optimizer(labelled), self.params,
                                        config.weight_decay, self.runner)
        self.schedule = None if config.lr is None else self._schedule(config.lr)
        self.clip = config.clip_grad_norm
        self.sharing: WeightSharing | None = None
        self.grad_norm = 0.0
        self.host_seconds = 0.0
        self.surgery_seconds = 0.0

    def _schedule(self, lr: float) -> LearningRate:
        cfg = self.config
        return LearningRate(lr, cfg.schedule, total=cfg.iterations or DEFAULT_ITERATIONS, warmup=cfg.warmup)

    def reconfigure(self, config: TrainConfig, surgeon: Surgeon) -> None:
        """Train with `config` and `surgeon` instead (the iterations sized after the trainer was built)."""
        self.config, self.surgeon, surgeon.runner = config, surgeon, self.runner
        if config.lr is not None:
            self.schedule = self._schedule(config.lr)

    def save_state(self) -> dict:
        """Copies of everything a trial step changes: weights, masks, optimizer state, clip and timers."""
        return {"params": {k: v.copy() for k, v in self.params.items()},
                "masks": {k: v.copy() for k, v in self.masks.items()},
                "optimizer": {k: v.copy() for k, v in self.optimizer.state_dict().items()},
                "clip": self.clip, "host": self.host_seconds, "surgery": self.surgery_seconds}

    def restore_state(self, saved: dict) -> None:
        for group in ("params", "masks"):
            for name, value in saved[group].items():
                getattr(self, group)[name][...] = value
        self.optimizer.load_state_dict(saved["optimizer"])
        self.clip, self.host_seconds, self.surgery_seconds = saved["clip"], saved["host"], saved["surgery"]

    def set_learning_rate(self, lr: float, clip: float | None) -> None:
        """The base learning rate of the schedule and the gradient-norm bound (when chosen by a probe)."""
        self.schedule = self._schedule(lr)
        self.clip = clip

    def learning_rate(self, iteration: int, scale: float = 1.0) -> float:
        return self.schedule(iteration) * scale

    def step(self, iteration: int, inputs: dict[str, np.ndarray], labels: np.ndarray | None, lr: float,
             surgery: bool = True) -> float:
        """Forward and backward on one batch; when the loss is finite, update the weights (gradients clipped to
        norm `clip` when set) and, with `surgery`, the masks."""
        feed = model_feed(inputs, self.art.batch_axes)
        feeds = [feed[n] for n in self.art.inputs] + self.targets.for_batch(inputs, labels)
        self.module.train()
        try:
            loss = float(self.module(*feeds)[0])
        except RuntimeError as exc:  # onnxruntime's errors in a training step (a gradient kernel failing)
            raise TrainingError(f"onnxruntime-training failed in the training step at iteration {iteration}: "
                                f"{_first_line(exc)}; train only the layers after the node it names with "
                                "--freeze-before NODE, or report it") from exc
        if not math.isfinite(loss):
            self.module.lazy_reset_grad()
            return loss
        t0 = time.perf_counter()
        if self.clip is not None:
            self._clip_gradients()
        sharing = self.sharing is not None and self.sharing.active
        if sharing:
            self.sharing.update(self.grads, lr)
        self.optimizer.step(self.params, self.grads, lr)
        if sharing:
            self.sharing.write(self.params)
        self.module.lazy_reset_grad()
        t1 = time.perf_counter()
        if surgery:
            self.surgeon.step(iteration, np.random.default_rng([self.config.seed, iteration, 1]), self.params,
                              self.masks)
        t2 = time.perf_counter()
        self.host_seconds += t2 - t0
        self.surgery_seconds += t2 - t1
        return loss

    def gradient_norm(self) -> float:
        """The global L2 norm of the current gradients (all trained tensors together)."""
        return float(np.sqrt(sum(float(np.vdot(g, g)) for g in self.grads.values())))

    def _clip_gradients(self) -> None:
        self.grad_norm = self.gradient_norm()
        if self.grad_norm > self.clip:
            scale = np.float32(self.clip / self.grad_norm)
            for g in self.grads.values():
                g *= scale

    def compression(self) -> float:
        total = sum(m.size for m in self.masks.values())
        kept = sum(int(np.count_nonzero(m)) for m in self.masks.values())
        return total / max(kept, 1)

    def evaluate(self, data: Dataset | CallableData, progress: Callable[[dict], None] | None = None) -> Metrics:
        return evaluate_module(self.module, self.art, data, self.targets, self.config.eval_batch_size, self.art.batch,
                               progress)

    def snapshot(self, iteration: int, metrics: Metrics) -> Snapshot:
        return Snapshot(iteration, metrics, self.compression(),
                        {k: v.copy() for k, v in self.params.items()}, {k: v.copy() for k, v in self.masks.items()})

    def tensors(self) -> Tensors:
        """The arrays a checkpoint saves and restores (restoring the optimizer goes through `load_tensors`)."""
        return Tensors(self.params, self.masks, self.optimizer.state_dict())

    def load_optimizer(self, state: dict[str, np.ndarray]) -> None:
        self.optimizer.load_state_dict(state)

    def close(self) -> None:
        self.runner.close()
