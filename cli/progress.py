"""Training progress for people and for logs: a one-line bar on a terminal, plain lines otherwise."""

from __future__ import annotations

import sys
import time

import click


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class Progress:
    """Receives the trainer's events. `verbosity`: 0 quiet, 1 normal, 2 verbose (every evaluation in full)."""

    def __init__(self, verbosity: int = 1, stream=None) -> None:
        self.verbosity = verbosity
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.start = time.perf_counter()
        self.first_iteration = 0
        self.last_line = 0.0
        self.metric = "-"

    def _echo(self, text: str) -> None:
        click.echo(text, file=self.stream)

    def __call__(self, event: dict) -> None:
        if self.verbosity == 0:
            return
        kind = event["event"]
        if kind == "teacher" and event.get("where") == "on the fly":
            self._echo(f"the original model's outputs on {event['samples']} {event['data']} samples would take "
                       f"{event['bytes'] / 1e9:.1f} GB: computed batch by batch as needed, not stored")
        elif kind == "teacher" and event.get("lazy"):
            kept = "memory" if event["where"] == "memory" else "a memory-mapped file"
            self._echo(f"the original model's outputs on {event['samples']} {event['data']} samples: computed as "
                       f"training first draws them, kept in {kept}")
        elif kind == "teacher":
            self._echo(f"computing the original model's outputs on {event['samples']} {event['data']} samples ...")
        elif kind == "pass":
            self._clear()
            total = f"/{event['total']}" if event.get("total") else ""
            self._echo(f"  {event['what']}: {event['done']}{total} samples ({_duration(event['seconds'])})")
        elif kind == "sized" and not event["limited"]:
            step = event["step_seconds"]
            took = f"{step * 1000:.0f} ms" if step < 1 else f"{step:.1f} s"
            self._echo(f"a step takes {took}: {event['iterations']:,} iterations fit in the time budget "
                       f"({_duration(event['budget'])})")
        elif kind == "lr-probe":
            self._echo("choosing the learning rate with a short probe (give --lr to skip it) ...")
        elif kind == "lr-chosen":
            self._echo(f"learning rate {event['lr']:.3g}" + (f", gradient norm bounded at {event['clip']:.3g}"
                                                             if event["clip"] is not None else ""))
        elif kind == "sharing":
            self._clear()
            self._echo(f"iteration {event['iteration']}: masks fixed; kept weights now train as {2 ** event['bits']} "
                       "shared values per tensor")
        elif kind == "prepared":
            self._echo(f"{event['layers']} prunable layers; reading the data and running the original model on a "
                       "first batch ...")
        elif kind == "calibrating":
            self._echo(f"calibrated start: pruning {event['layers']} layers one by one on {event['samples']} "
                       "training samples ...")
            self.last_line = time.perf_counter()
        elif kind == "calibrating-layer" and time.perf_counter() - self.last_line > 2:
            self._echo(f"  layer {event['index'] + 1}/{event['layers']}: {event['layer']} "
                       f"({_duration(time.perf_counter() - self.start)})")
            self.last_line = time.perf_counter()
        elif kind == "calibrated":
            self._echo(f"calibrated start: {event['corrected']} of {event['layers']} layers scored and refit "
                       f"({_duration(event['seconds'])})")
        elif kind == "temperature":
            self._echo(f"distillation temperature {event['temperature']:g}: the softest of 4, 2 and 1 at which the "
                       "original's top class keeps half of its softened probability")
        elif kind == "optimizer":
            why = "the loss has labels" if event["labelled"] else "the loss distils the original's outputs only"
            self._echo(f"optimizer {event['optimizer']}: {why} (--optimizer chooses)")
        elif kind == "building":
            self._echo(f"building training graphs for {event['layers']} prunable layers ...")
        elif kind == "start":
            self.start = time.perf_counter()
            self.first_iteration = event["iteration"]
            self.metric = event["baseline"].describe()
            where = f"resuming at iteration {event['iteration']}" if event["iteration"] else "training"
            self._echo(f"{where}: {event['iterations']} iterations; before: {self.metric}")
        elif kind == "rollback":
            self._clear()
            self._echo(f"loss diverged: rolled back to iteration {event['iteration']}, learning rate x{event['lr_scale']:g}")
        elif kind == "step":
            self._step(event)
        elif kind == "bn-statistics":
            self._clear()
            self._echo(f"measuring BatchNormalization statistics on {event['batches']} training batches ...")
        elif kind == "writing":
            self._clear()
            self._echo(f"writing {event['path']}")

    def _step(self, event: dict) -> None:
        i, n = event["iteration"], event["iterations"]
        if event["evaluated"]:
            self.metric = event["metrics"].describe()
        elapsed = time.perf_counter() - self.start
        done = i - self.first_iteration
        eta = elapsed / done * (n - i) if done else 0.0
        rate = done / elapsed if elapsed > 0 else 0.0
        speed = f"{rate:.0f} it/s" if rate >= 1 or not done else f"{elapsed / done:.1f} s/it"
        status = (f"{i}/{n}  loss {event['loss']:.4f}  compression {event['compression']:.1f}x  "
                  f"val {self.metric}  {speed}  eta {_duration(eta)}")
        if self.tty:
            if time.perf_counter() - self.last_line < 0.1 and i != n and not event["evaluated"]:
                return
            width = 24
            filled = int(width * i / max(n, 1))
            self.stream.write("\r\x1b[2K[" + "#" * filled + "-" * (width - filled) + "] " + status)
            self.stream.flush()
            self.last_line = time.perf_counter()
            if event["evaluated"] and self.verbosity > 1:
                self.stream.write("\n")
            if i == n:
                self.stream.write("\n")
        elif event["evaluated"] or (self.verbosity > 1 and i % 100 == 0):
            self._echo(f"iteration {status}  ({_duration(elapsed)})")

    def _clear(self) -> None:
        if self.tty:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()
