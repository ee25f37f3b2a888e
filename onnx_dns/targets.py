"""The loss inputs fed beside each training batch: one-hot labels and/or the original model's softened outputs.

For data held in memory the original model's outputs are computed once and stored beside the inputs
(`with_teacher`); for streamed data they are computed batch by batch.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from onnx_dns.data import Dataset
from onnx_dns.losses import HARD_TARGET, SOFT_TARGET, LossSpec

TEACHER = "__dns_teacher__"


def softmax(z: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = z / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class Targets:
    """Builds the loss inputs of a batch: one-hot labels and/or the original model's softened outputs."""

    def __init__(self, spec: LossSpec, teacher: Callable[[dict[str, np.ndarray]], np.ndarray] | None,
                 sample_shape: tuple[int, ...], dtype: np.dtype = np.dtype(np.float32)) -> None:
        """`teacher` maps a batch to the original model's logits (classify) or outputs (regress);
        `sample_shape` is the shape of one sample's target."""
        self.spec = spec
        self.teacher = teacher
        self.sample_shape = tuple(sample_shape)
        self.dtype = dtype

    def teacher_output(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        cached = inputs.get(TEACHER)
        return cached if cached is not None else self.teacher(inputs)

    def for_batch(self, inputs: dict[str, np.ndarray], labels: np.ndarray | None) -> list[np.ndarray]:
        feeds = []
        for name in self.spec.targets:
            if name == HARD_TARGET:
                if self.spec.task == "classify":
                    onehot = np.zeros((len(labels), self.spec.num_classes), dtype=self.dtype)
                    onehot[np.arange(len(labels)), labels.astype(np.int64)] = 1
                    feeds.append(onehot)
                else:
                    feeds.append(labels.astype(self.dtype))
            elif name == SOFT_TARGET:
                out = self.teacher_output(inputs)
                if self.spec.task == "classify":
                    out = softmax(out, self.spec.temperature)
                feeds.append(out.astype(self.dtype))
        return feeds

    def dummy(self, batch: int) -> list[np.ndarray]:
        """Zero targets for the eval graph, which computes the loss too."""
        return [np.zeros((batch, *self.sample_shape), dtype=self.dtype) for _ in self.spec.targets]


def with_teacher(data: Dataset, teacher: Callable[[dict[str, np.ndarray]], np.ndarray], batch_size: int) -> Dataset:
    """A copy of `data` with the original model's outputs for every sample, computed once, beside the inputs.

    Every batch has `batch_size` samples (the last one is padded with copies of its last sample, whose outputs
    are dropped), so that a model exported with a fixed batch size runs on any number of samples.
    """
    outs = []
    for inputs, _ in data.iterate(batch_size):
        n = len(next(iter(inputs.values())))
        if n < batch_size:
            inputs = {k: np.concatenate([v, np.repeat(v[-1:], batch_size - n, axis=0)]) for k, v in inputs.items()}
        outs.append(teacher(inputs)[:n])
    return Dataset({**data.inputs, TEACHER: np.concatenate(outs)}, data.labels, data.source)
