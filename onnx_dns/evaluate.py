"""Accuracy of a model on a dataset, through any function from a batch to the model's output, batch by batch.

Classification: top-1 and top-5 accuracy in percent against labels, and agreement (top-1 of the original model)
when there are no labels. An output with a class axis per position ([B, T, C], or [T, B, C]) is scored per
position: each (sample, position) counts once. Regression: relative error 100 * ||y - t|| / ||t|| against labels
or the original model's outputs (and the mean squared error), and, when a task measure is chosen (decision
overlap, cosine similarity, detections reproduced: `onnx_dns.fidelity`), that measure in percent, which is then
the score. Metrics are tallied batch by batch, so memory does not grow with the data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx

from onnx_dns.batch_axes import model_feed
from onnx_dns.data import CallableData, model_inputs
from onnx_dns.dataset import SCORED, Dataset, padded
from onnx_dns.errors import DataError
from onnx_dns.fidelity import LABELS, REGIONS_HINT, DecisionOverlap, accumulator
from onnx_dns.ort_training import runtime, session_options
from onnx_dns.pass_progress import PassProgress
from onnx_dns.stream import runner, start_pass
from onnx_dns.targets import TEACHER, Targets

Run = Callable[[dict[str, np.ndarray]], np.ndarray]


@dataclass
class Metrics:
    task: str
    samples: int
    top1: float | None = None
    top5: float | None = None
    fidelity: float | None = None
    mse: float | None = None
    relative_error: float | None = None
    positions: int = 1
    measure: str | None = None
    units: int | None = None  # how many counted items (samples, positions, detections) the score is a share of
    one_channel_map: bool = False

    @property
    def score(self) -> float:
        """The number the accuracy bound applies to: top-1 %, else agreement or the task measure %, else
        -relative error %."""
        for value in (self.top1, self.fidelity):
            if value is not None:
                return value
        if self.relative_error is not None:
            return -self.relative_error
        return -(self.mse or 0.0)

    @property
    def bound_hint(self) -> str:
        """What else to try when the bound is missed: a one-channel map judged by its decisions may be a text map,
        whose regions `--fidelity boxes` judges; else nothing."""
        return REGIONS_HINT if self.measure == "decisions" and self.one_channel_map else ""

    @property
    def label(self) -> str:
        where = "per-position " if self.positions > 1 else ""
        if self.top1 is not None:
            return f"{where}top-1"
        if self.measure in LABELS:
            return f"{LABELS[self.measure]} %"
        if self.fidelity is not None:
            return f"{where}agreement"
        return "-relative error %" if self.relative_error is not None else "-mse"

    def fall_from(self, before: Metrics) -> str:
        """How far the score fell from `before`'s, in the measure's own words: an error rises."""
        drop = before.score - self.score
        if self.top1 is None and self.fidelity is None:
            if self.relative_error is None:
                return f"mse rose by {drop:.6g}"
            return f"relative error rose {drop:.2f} points"
        where = "per-position " if self.positions > 1 and self.measure not in LABELS else ""
        what = LABELS.get(self.measure) or ("top-1 accuracy" if self.top1 is not None else
                                            "agreement with the original")
        return f"{where}{what} dropped {drop:.2f} points"

    def describe(self) -> str:
        where = "per-position " if self.positions > 1 else ""
        if self.top1 is not None:
            return f"{where}top-1 {self.top1:.2f}%" + (f", top-5 {self.top5:.2f}%" if self.top5 is not None else "")
        if self.measure in LABELS:
            return f"{LABELS[self.measure]} {self.fidelity:.2f}%"
        if self.fidelity is not None:
            return f"{where}agreement with the original {self.fidelity:.2f}%"
        if self.relative_error is not None:
            return f"relative error {self.relative_error:.3g}%"
        return f"mse {self.mse:.6g}"


class Tally:
    """Sums over batches from which the metrics are computed at the end; `fidelity` is the measure of a
    regression output (relative error, or a task measure of `onnx_dns.fidelity`)."""

    def __init__(self, task: str, fidelity: str = "relative-error") -> None:
        self.task = task
        self.fidelity = fidelity
        self.task_measure = None if task == "classify" or fidelity == "relative-error" else accumulator(fidelity)
        self.samples = self.count = self.top1 = self.top5 = self.agree = 0
        self.sq_error = self.sq_target = 0.0
        self.top5_possible = True
        self.positions = 1

    def add(self, outputs: np.ndarray, labels: np.ndarray | None, reference: np.ndarray | None) -> None:
        self.samples += len(outputs)
        if self.task == "classify":
            self._add_classes(outputs, labels, reference)
        else:
            target = labels if labels is not None else reference
            diff = outputs.astype(np.float64) - target.reshape(outputs.shape)
            self.sq_error += float(np.sum(diff * diff))
            self.sq_target += float(np.sum(np.square(target, dtype=np.float64)))
            self.count += outputs.size
            if self.task_measure is not None:
                self.task_measure.add(outputs, target)

    def _add_classes(self, outputs: np.ndarray, labels: np.ndarray | None, reference: np.ndarray | None) -> None:
        predicted = outputs.argmax(axis=-1)
        self.positions = max(1, predicted.size // max(len(outputs), 1))
        self.count += predicted.size
        if labels is None:
            self.agree += int(np.count_nonzero(predicted == reference.argmax(axis=-1)))
            return
        labels = labels.astype(np.int64).reshape(predicted.shape)
        self.top1 += int(np.count_nonzero(predicted == labels))
        if outputs.shape[-1] > 5:
            top = np.argpartition(-outputs, 5, axis=-1)[..., :5]
            self.top5 += int(np.count_nonzero((top == labels[..., None]).any(axis=-1)))
        else:
            self.top5_possible = False

    def metrics(self, labelled: bool) -> Metrics:
        share = 100.0 / max(self.count, 1)
        if self.task == "classify":
            if not labelled:
                return Metrics(self.task, self.samples, fidelity=self.agree * share, positions=self.positions,
                               measure="agreement", units=self.count)
            return Metrics(self.task, self.samples, top1=self.top1 * share,
                           top5=self.top5 * share if self.top5_possible else None, positions=self.positions,
                           measure="top-1", units=self.count)
        relative = 100.0 * np.sqrt(self.sq_error / self.sq_target) if self.sq_target > 0 else (
            0.0 if self.sq_error == 0 else float("inf"))
        decisions = self.task_measure if isinstance(self.task_measure, DecisionOverlap) else None
        return Metrics(self.task, self.samples, mse=self.sq_error / max(self.count, 1), relative_error=float(relative),
                       fidelity=None if self.task_measure is None else self.task_measure.percent,
                       measure=self.fidelity if self.task_measure is not None else "relative-error",
                       units=self.task_measure.original if self.fidelity == "boxes" else None,
                       one_channel_map=decisions is not None and decisions.one_channel_map)


def compute_metrics(task: str, outputs: np.ndarray, labels: np.ndarray | None,
                    reference: np.ndarray | None, fidelity: str = "relative-error") -> Metrics:
    """Metrics of `outputs` against labels (when given) or the original model's outputs."""
    tally = Tally(task, fidelity)
    tally.add(outputs, labels, reference)
    return tally.metrics(labels is not None)


def session_runner(model: onnx.ModelProto, output: str, stream: dict[str, str] | None = None) -> Run:
    """A plain onnxruntime session of `model` as a function from a batch to the tensor `output`
    (made a graph output when it is an intermediate, such as the logits before a final Softmax). The session
    keeps no memory between runs: as the original model it lives through training. With `stream` ({state
    input: output}) a `Stream` that carries the state from batch to batch."""
    if output not in [o.name for o in model.graph.output]:
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(output))
        model = probe
    session = runtime().InferenceSession(model.SerializeToString(), session_options(arena=False),
                                           providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    axes = {s.name: s.batch_axis for s in model_inputs(model)}

    wanted = [output, *(stream or {}).values()]

    def run_all(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(wanted, session.run(wanted, model_feed({k: v for k, v in feed.items() if k in names}, axes))))

    return runner(run_all, output, stream)


def batches(data: Dataset | CallableData, batch_size: int, fixed_batch: int | None = None,
            progress: Callable[[dict], None] | None = None, what: str = "evaluating"):
    """(feed, labels, stored original outputs, n, scored) per batch; a fixed-batch model gets full batches, the
    last one padded (n is the number of real samples); `scored` marks the samples to score (None: all of them).
    A pass longer than 2 s reports its progress."""
    size = fixed_batch or batch_size
    reporter = PassProgress(progress, what, len(data) if isinstance(data, Dataset) else None)
    for inputs, y in data.iterate(size):
        n = len(next(iter(inputs.values())))
        feed = {k: v for k, v in inputs.items() if k not in (TEACHER, SCORED)}
        if fixed_batch:
            feed = padded(feed, fixed_batch)
        yield feed, y, inputs.get(TEACHER), n, inputs.get(SCORED)
        reporter.advance(n)


def measure(run: Run | None, data: Dataset | CallableData, task: str, batch_size: int, fixed_batch: int | None = None,
            reference: Run | None = None, progress: Callable[[dict], None] | None = None,
            fidelity: str = "relative-error", axis: int = 0) -> Metrics:
    """Metrics of `run` over all of `data`, against labels, the stored original outputs, or `reference`;
    a regression output is also scored by `fidelity`. Runs that carry a stream's state start the pass afresh.
    With `run` None the stored original outputs are scored themselves: the original's metrics, with no pass.
    `axis` is the outputs' batch axis (`targets.find_batch_axis`)."""
    tally = Tally(task, fidelity)
    labelled = None
    start_pass(run)
    start_pass(reference)
    for feed, y, stored, n, scored in batches(data, batch_size, fixed_batch, progress):
        labelled = y is not None
        out = stored if run is None else np.moveaxis(run(feed), axis, 0)[:n]
        ref = None
        if y is None:
            ref = stored if stored is not None else np.moveaxis(reference(feed), axis, 0)[:n]
        if scored is not None:
            out, y, ref = (None if a is None else a[scored] for a in (out, y, ref))
        tally.add(out, y, ref)
    if tally.samples == 0:  # a score of nothing would read as 0% and steer the bound
        raise DataError("the validation data gave no samples to evaluate; give --val with at least one sample")
    return tally.metrics(bool(labelled))


def evaluate_module(module, art, data: Dataset | CallableData, targets: Targets, batch_size: int,
                    fixed_batch: int | None = None, progress: Callable[[dict], None] | None = None) -> Metrics:
    """Metrics of the model being trained, run through the eval graph with the current parameters (carrying a
    stream model's state from batch to batch, `targets.stream`)."""
    module.eval()

    def run_all(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        batch = len(feed[art.inputs[0]])
        feed = model_feed(feed, art.batch_axes)
        return dict(zip(art.outputs, module(*[feed[n] for n in art.inputs], *targets.dummy(batch))))

    run = runner(run_all, targets.spec.output, targets.stream)
    return measure(run, data, targets.spec.task, batch_size, fixed_batch, targets.teacher, progress, targets.fidelity,
                   targets.axis)
