"""The training loop: onnxruntime-training forward and backward, a host-side optimizer and surgery on
zero-copy parameter views, periodic evaluation, checkpoints, NaN rollback, and resume.

One iteration:  loss, grads <- module(batch)   (forward uses W * T, backward is straight-through)
                W <- optimizer(W, grads, lr(i)) on every entry, pruned or not
                T <- surgeon(i, W, T)           (prune |w| < a, splice |w| > b, per the schedule)
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from onnx_dns.artifacts import TrainingArtifacts
from onnx_dns.chunked import ChunkedRunner
from onnx_dns.data import CallableData, Dataset
from onnx_dns.errors import Interrupted, OutputError, TrainingError
from onnx_dns.evaluate import Metrics, evaluate_module
from onnx_dns.targets import Targets
from onnx_dns.optimizers import make_optimizer
from onnx_dns.ort_training import api, onnxruntime
from onnx_dns.schedules import LearningRate
from onnx_dns.surgery import Surgeon

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.npz"
MAX_ROLLBACKS = 3
PROGRESS_EVERY = 50  # iterations between recounts of the kept weights for progress (a pass over every mask)


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@dataclass(frozen=True)
class TrainConfig:
    iterations: int = 10000
    batch_size: int = 64
    lr: float = 0.01
    schedule: str = "inv"
    warmup: int = 0
    optimizer: str = "sgd"
    weight_decay: float | None = None
    seed: int = 0
    eval_every: int = 1000
    checkpoint_every: int = 1000
    eval_batch_size: int = 1000
    max_accuracy_drop: float | None = None
    threads: int = 0


@dataclass
class Snapshot:
    iteration: int
    metrics: Metrics
    compression: float
    params: dict[str, np.ndarray] = field(repr=False)
    masks: dict[str, np.ndarray] = field(repr=False)


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


class Trainer:
    """Runs DNS fine-tuning over built artifacts; the caller provides data, targets and the surgeon."""

    def __init__(self, art: TrainingArtifacts, surgeon: Surgeon, config: TrainConfig, train: Dataset | CallableData,
                 val: Dataset | CallableData, targets: Targets, work_dir: str | os.PathLike,
                 progress: Callable[[dict], None] | None = None) -> None:
        self.art = art
        self.surgeon = surgeon
        self.config = config
        self.train_data = train
        self.val_data = val
        self.targets = targets
        self.work_dir = Path(work_dir)
        self.progress = progress or (lambda event: None)
        options = onnxruntime.SessionOptions()
        if config.threads:
            options.intra_op_num_threads = config.threads
        self.state = api.CheckpointState.load_checkpoint(str(art.checkpoint))
        self.module = api.Module(str(art.training_model), self.state, str(art.eval_model), session_options=options)
        parameters = self.state.parameters
        self.params = {n: parameters[n].data for n in art.trainable}
        self.grads = {n: parameters[n].grad for n in art.trainable}
        self.masks = {w: parameters[m].data for w, m in art.masks.items()}
        # the host-side updates run while onnxruntime's threads are idle: they may use as many
        self.runner = ChunkedRunner(config.threads or _available_cpus())
        self.surgeon.runner = self.runner
        self.optimizer = make_optimizer(config.optimizer, self.params, config.weight_decay, self.runner)
        self.schedule = LearningRate(config.lr, config.schedule, total=config.iterations, warmup=config.warmup)
        self._stop_requested = False

    def compression(self) -> float:
        total = sum(m.size for m in self.masks.values())
        kept = sum(int(np.count_nonzero(m)) for m in self.masks.values())
        return total / max(kept, 1)

    def evaluate(self) -> Metrics:
        return evaluate_module(self.module, self.art, self.val_data, self.targets, self.config.eval_batch_size,
                               self.art.batch)

    def _snapshot(self, iteration: int, metrics: Metrics) -> Snapshot:
        return Snapshot(iteration, metrics, self.compression(),
                        {k: v.copy() for k, v in self.params.items()}, {k: v.copy() for k, v in self.masks.items()})

    def run(self, resume: bool = False) -> TrainResult:
        cfg = self.config
        start_time = time.perf_counter()
        state = self._load_checkpoint() if resume else None
        if state is None:
            self.surgeon.initialize(self.params)
            baseline = self.evaluate()
            start, lr_scale, rollbacks, history = 0, 1.0, 0, []
            best: Snapshot | None = None
            self._save_checkpoint(0, baseline, 1.0, 0, [], None)
        else:
            start, baseline, lr_scale, rollbacks, history, best = state
        self.progress({"event": "start", "iteration": start, "iterations": cfg.iterations, "baseline": baseline,
                       "compression": self.compression()})
        host_seconds = surgery_seconds = 0.0
        last_metrics = history[-1]["metrics"] if history else baseline
        # Ctrl-C finishes the iteration and checkpoints; Python lets only the main thread install handlers
        in_main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, self._request_stop) if in_main else None
        iteration = start
        compression = self.compression()
        try:
            while iteration < cfg.iterations:
                inputs, labels = self.train_data.batch(iteration, cfg.batch_size, cfg.seed)
                feeds = [inputs[n] for n in self.art.inputs] + self.targets.for_batch(inputs, labels)
                self.module.train()
                loss = float(self.module(*feeds)[0])
                if not math.isfinite(loss):
                    rollbacks += 1
                    if rollbacks > MAX_ROLLBACKS:
                        raise TrainingError(
                            f"the loss became {loss} at iteration {iteration} after {MAX_ROLLBACKS} rollbacks; "
                            "lower --lr or check the data scaling")
                    failed = iteration
                    # the checkpoint may predate earlier rollbacks: halve the scale in effect, not the saved one
                    iteration, _, saved_scale, _, history, best = self._load_checkpoint()
                    lr_scale = min(lr_scale, saved_scale) * 0.5
                    log.warning("loss is %s at iteration %d: rolled back to iteration %d, learning rate halved "
                                "(x%g)", loss, failed, iteration, lr_scale)
                    self.progress({"event": "rollback", "iteration": iteration, "lr_scale": lr_scale})
                    self.module.lazy_reset_grad()
                    continue
                t0 = time.perf_counter()
                self.optimizer.step(self.params, self.grads, self.schedule(iteration) * lr_scale)
                self.module.lazy_reset_grad()
                t1 = time.perf_counter()
                self.surgeon.step(iteration, np.random.default_rng([cfg.seed, iteration, 1]), self.params, self.masks)
                t2 = time.perf_counter()
                host_seconds += t2 - t0
                surgery_seconds += t2 - t1
                iteration += 1
                evaluate_now = iteration % cfg.eval_every == 0 or iteration == cfg.iterations
                if evaluate_now:
                    last_metrics = self.evaluate()
                    snap = self._snapshot(iteration, last_metrics)
                    history.append({"iteration": iteration, "compression": snap.compression,
                                    "metrics": last_metrics, "loss": loss})
                    if self._meets(last_metrics, baseline) and (
                            best is None or snap.compression >= best.compression * 0.995):
                        best = snap
                if evaluate_now or iteration % PROGRESS_EVERY == 0:
                    compression = self.compression()
                self.progress({"event": "step", "iteration": iteration, "iterations": cfg.iterations, "loss": loss,
                               "compression": compression, "metrics": last_metrics, "evaluated": evaluate_now})
                if iteration % cfg.checkpoint_every == 0 or self._stop_requested:
                    self._save_checkpoint(iteration, baseline, lr_scale, rollbacks, history, best)
                if self._stop_requested:
                    raise Interrupted(f"interrupted at iteration {iteration}; the checkpoint is in {self.work_dir}: "
                                      f"continue with --resume {self.work_dir} and the same options")
        finally:
            self.runner.close()
            if in_main:
                signal.signal(signal.SIGINT, previous if previous is not None else signal.default_int_handler)
        final = self._snapshot(iteration, last_metrics)
        meets = self._meets(final.metrics, baseline)
        if cfg.max_accuracy_drop is None or meets or best is None:
            chosen = final
        else:
            chosen = best
        return TrainResult(params=chosen.params, masks=chosen.masks, chosen=chosen, baseline=baseline,
                           history=history, seconds=time.perf_counter() - start_time, iterations_run=iteration - start,
                           host_seconds=host_seconds, surgery_seconds=surgery_seconds,
                           meets_bound=self._meets(chosen.metrics, baseline))

    def _meets(self, metrics: Metrics, baseline: Metrics) -> bool:
        if self.config.max_accuracy_drop is None:
            return True
        return metrics.score >= baseline.score - self.config.max_accuracy_drop

    def _request_stop(self, signum, frame) -> None:
        if self._stop_requested:
            raise KeyboardInterrupt
        self._stop_requested = True
        log.warning("interrupt: finishing this iteration and writing a checkpoint (Ctrl-C again to abort now)")

    def _save_checkpoint(self, iteration: int, baseline: Metrics, lr_scale: float, rollbacks: int,
                         history: list[dict], best: Snapshot | None) -> None:
        arrays = {f"param/{k}": v for k, v in self.params.items()}
        arrays |= {f"mask/{k}": v for k, v in self.masks.items()}
        arrays |= {f"optim/{k}": v for k, v in self.optimizer.state_dict().items()}
        if best is not None:
            arrays |= {f"best_param/{k}": v for k, v in best.params.items()}
            arrays |= {f"best_mask/{k}": v for k, v in best.masks.items()}
        meta = {
            "iteration": iteration, "baseline": asdict(baseline), "lr_scale": lr_scale, "rollbacks": rollbacks,
            "history": [{**h, "metrics": asdict(h["metrics"])} for h in history],
            "best": None if best is None else {"iteration": best.iteration, "metrics": asdict(best.metrics),
                                              "compression": best.compression},
            "surgeon": self.surgeon.state_dict(), "config": asdict(self.config),
        }
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        tmp = self.work_dir / (CHECKPOINT + ".tmp")
        try:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as handle:
                np.savez(handle, **arrays)
            os.replace(tmp, self.work_dir / CHECKPOINT)
        except OSError as exc:
            raise OutputError(f"{self.work_dir}: writing the checkpoint failed ({exc.strerror or exc}); free space "
                              "or choose another --work-dir") from exc
        finally:
            tmp.unlink(missing_ok=True)

    def _load_checkpoint(self):
        path = self.work_dir / CHECKPOINT
        if not path.exists():
            return None
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(bytes(data["meta"]).decode())
            for k, v in self.params.items():
                v[...] = data[f"param/{k}"]
            for k, v in self.masks.items():
                v[...] = data[f"mask/{k}"]
            self.optimizer.load_state_dict({k[6:]: data[k] for k in data.files if k.startswith("optim/")})
            best = None
            if meta["best"] is not None:
                best = Snapshot(meta["best"]["iteration"], Metrics(**meta["best"]["metrics"]),
                                meta["best"]["compression"],
                                {k: data[f"best_param/{k}"] for k in self.params},
                                {k: data[f"best_mask/{k}"] for k in self.masks})
        self.surgeon.load_state_dict(meta["surgeon"])
        history = [{**h, "metrics": Metrics(**h["metrics"])} for h in meta["history"]]
        return meta["iteration"], Metrics(**meta["baseline"]), meta["lr_scale"], meta["rollbacks"], history, best
