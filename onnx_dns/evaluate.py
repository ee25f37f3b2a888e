"""Accuracy of a model on a dataset, through any function from a batch to the model's output.

Classification: top-1 and top-5 accuracy in percent against labels, and fidelity (top-1 agreement with the
original model) when there are no labels. Regression: mean squared error against labels or the original model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx

from onnx_dns.data import CallableData, Dataset
from onnx_dns.ort_training import onnxruntime, session_options
from onnx_dns.targets import TEACHER, Targets


@dataclass
class Metrics:
    task: str
    samples: int
    top1: float | None = None
    top5: float | None = None
    fidelity: float | None = None
    mse: float | None = None

    @property
    def score(self) -> float:
        """The number the accuracy bound applies to: top-1 %, else fidelity %, else -MSE."""
        for value in (self.top1, self.fidelity):
            if value is not None:
                return value
        return -(self.mse or 0.0)

    @property
    def label(self) -> str:
        if self.top1 is not None:
            return "top-1"
        if self.fidelity is not None:
            return "fidelity"
        return "-mse"

    def describe(self) -> str:
        if self.top1 is not None:
            return f"top-1 {self.top1:.2f}%" + (f", top-5 {self.top5:.2f}%" if self.top5 is not None else "")
        if self.fidelity is not None:
            return f"agreement with the original {self.fidelity:.2f}%"
        return f"mse {self.mse:.6g}"


def session_runner(model: onnx.ModelProto, output: str) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """A plain onnxruntime session of `model` as a function from a batch to the tensor `output`
    (made a graph output when it is an intermediate, such as the logits before a final Softmax)."""
    if output not in [o.name for o in model.graph.output]:
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(output))
        model = probe
    session = onnxruntime.InferenceSession(model.SerializeToString(), session_options(),
                                           providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}

    def run(feed: dict[str, np.ndarray]) -> np.ndarray:
        return session.run([output], {k: v for k, v in feed.items() if k in names})[0]

    return run


def compute_metrics(task: str, outputs: np.ndarray, labels: np.ndarray | None,
                    reference: np.ndarray | None) -> Metrics:
    """Metrics of `outputs` against labels (when given) or the original model's outputs."""
    n = len(outputs)
    if task == "classify":
        if labels is not None:
            labels = labels.astype(np.int64)
            top1 = float(np.mean(outputs.argmax(axis=-1) == labels) * 100)
            top5 = None
            if outputs.shape[-1] > 5:
                top = np.argpartition(-outputs, 5, axis=-1)[:, :5]
                top5 = float(np.mean((top == labels[:, None]).any(axis=1)) * 100)
            return Metrics(task, n, top1=top1, top5=top5)
        return Metrics(task, n, fidelity=float(np.mean(outputs.argmax(-1) == reference.argmax(-1)) * 100))
    target = labels if labels is not None else reference
    return Metrics(task, n, mse=float(np.mean((outputs - target.reshape(outputs.shape)) ** 2)))


def collect(run: Callable[[dict[str, np.ndarray]], np.ndarray], data: Dataset | CallableData, batch_size: int,
            fixed_batch: int | None = None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Run a model over all of `data`: its outputs, the labels, and stored original-model outputs if any.

    A model with a fixed batch dimension gets full batches; the last one is padded and the padding dropped.
    """
    outputs, labels, teacher = [], [], []
    size = fixed_batch or batch_size
    for inputs, y in data.iterate(size):
        n = len(next(iter(inputs.values())))
        feed = {k: v for k, v in inputs.items() if k != TEACHER}
        if fixed_batch and n < fixed_batch:
            feed = {k: np.concatenate([v, np.repeat(v[-1:], fixed_batch - n, axis=0)]) for k, v in feed.items()}
        outputs.append(run(feed)[:n])
        if y is not None:
            labels.append(y)
        if TEACHER in inputs:
            teacher.append(inputs[TEACHER])
    return (np.concatenate(outputs), np.concatenate(labels) if labels else None,
            np.concatenate(teacher) if teacher else None)


def evaluate_module(module, art, data: Dataset | CallableData, targets: Targets, batch_size: int,
                    fixed_batch: int | None = None) -> Metrics:
    """Metrics of the model being trained, run through the eval graph with the current parameters."""
    module.eval()
    index = art.outputs.index(targets.spec.output)

    def run(feed: dict[str, np.ndarray]) -> np.ndarray:
        batch = len(feed[art.inputs[0]])
        return module(*[feed[n] for n in art.inputs], *targets.dummy(batch))[index]

    outputs, labels, reference = collect(run, data, batch_size, fixed_batch)
    if reference is None and targets.teacher is not None and labels is None:
        reference, _, _ = collect(targets.teacher, data, batch_size, fixed_batch)
    return compute_metrics(targets.spec.task, outputs, labels, reference)
