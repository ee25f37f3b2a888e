"""The loss inputs fed beside each training batch: one-hot labels and/or the original model's softened outputs.

For data held in arrays the original model's outputs are computed once, batch by batch, and stored beside the
inputs of a copy of the data: in one pass (`with_teacher`, the validation set's), or each the first time a training
batch draws it (`LazyOutputs`); in memory up to 256 MB, in a memory-mapped file of the work folder up to 512 MB.
Beyond that (the [40, 6625] outputs of a text recognizer take 21 GB for 20,000 images) and for streamed data
they are computed batch by batch when needed, one extra forward pass per batch, so neither memory nor disk grows
with the data (`caching`). Outputs are stored batch first; a model whose output has its batch on
another axis ([T, B, C]) gets its targets in its own layout.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from onnx_dns.dataset import Dataset, padded, release_pages
from onnx_dns.losses import HARD_TARGET, LossSpec
from onnx_dns.pass_progress import PassProgress
from onnx_dns.stream import start_pass

TEACHER = "__dns_teacher__"
IN_MEMORY_BYTES = 256 << 20  # larger sets of original outputs go to a memory-mapped file
ON_DISK_BYTES = 512 << 20  # larger ones are not stored but computed batch by batch when needed
TEMPERATURES = (4.0, 2.0, 1.0)  # distillation temperatures tried when none is given, the softest first
TOP_SHARE = 0.5  # the share of softened probability the original's top class keeps at the chosen one


def softmax(z: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = z / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def choose_temperature(logits: np.ndarray, candidates: tuple[float, ...] = TEMPERATURES) -> float:
    """The largest of `candidates` at which the original's top class keeps on average at least half of its
    softened probability (else the smallest). Softened further, distillation mostly teaches the order of classes the
    original rejects: over the 6,625 classes of a text recognizer the top class keeps 5% at 4 (80% at 2)."""
    rows = logits.reshape(-1, logits.shape[-1])
    return next((t for t in candidates if softmax(rows, t).max(axis=-1).mean() >= TOP_SHARE), candidates[-1])


def find_batch_axis(run: Callable[[dict[str, np.ndarray]], np.ndarray], inputs: dict[str, np.ndarray],
                    output: np.ndarray) -> int:
    """The axis of `output` (`run`'s output on `inputs`) that holds the batch: the one axis of the batch's size,
    or, when several have it (a [T, B, C] output of a batch of T samples), the one that follows the batch when the
    model runs on one sample fewer (the first of them when it cannot: a model exported with a fixed batch size)."""
    n = len(next(iter(inputs.values())))
    axes = [axis for axis, size in enumerate(output.shape) if size == n]
    if len(axes) <= 1 or n < 2:
        return axes[0] if axes else 0
    try:
        fewer = run({k: v[:n - 1] for k, v in inputs.items()})
    except Exception:  # noqa: BLE001 - a model that runs only at its batch size keeps the first guess
        return axes[0]
    return next((axis for axis in axes if axis < fewer.ndim and fewer.shape[axis] == n - 1), axes[0])


class Targets:
    """Builds the loss inputs of a batch: one-hot labels and/or the original model's softened outputs."""

    def __init__(self, spec: LossSpec, teacher: Callable[[dict[str, np.ndarray]], np.ndarray] | None,
                 sample_shape: tuple[int, ...], dtype: np.dtype = np.dtype(np.float32), axis: int = 0,
                 fidelity: str = "relative-error") -> None:
        """`teacher` maps a batch to the original model's logits (classify) or outputs (regress);
        `sample_shape` is the shape of one sample's target, `axis` the output's batch axis, `fidelity` how a
        regression output is scored (`onnx_dns.fidelity`). `stream` ({state input: output}, `onnx_dns.stream`)
        is set for a stream model whose held-out stretch is scored with its state carried along."""
        self.spec = spec
        self.stream: dict[str, str] = {}
        self.fidelity = fidelity
        self.teacher = teacher
        self.sample_shape = tuple(sample_shape)
        self.dtype = dtype
        self.axis = axis

    def teacher_output(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """The original model's output for this batch, batch first."""
        cached = inputs.get(TEACHER)
        if cached is not None:
            return cached
        return np.moveaxis(self.teacher(inputs), self.axis, 0)

    def for_batch(self, inputs: dict[str, np.ndarray], labels: np.ndarray | None) -> list[np.ndarray]:
        feeds = []
        for name in self.spec.targets:
            if name == HARD_TARGET:
                if self.spec.task == "classify":
                    target = np.eye(self.spec.num_classes, dtype=self.dtype)[labels.astype(np.int64)]
                else:
                    target = labels.astype(self.dtype)
            else:
                target = self.teacher_output(inputs)
                if self.spec.task == "classify":
                    target = softmax(target, self.spec.temperature)
                target = target.astype(self.dtype)
            feeds.append(target if self.axis == 0 else np.moveaxis(target, 0, self.axis))
        return feeds

    def dummy(self, batch: int) -> list[np.ndarray]:
        """Zero targets for the eval graph, which computes the loss too (of batch 1, broadcast, when the batch is
        not the output's first axis)."""
        if self.axis == 0:
            return [np.zeros((batch, *self.sample_shape), dtype=self.dtype) for _ in self.spec.targets]
        shape = list(self.sample_shape)
        shape.insert(self.axis, 1)
        return [np.zeros(shape, dtype=self.dtype) for _ in self.spec.targets]


def stored_bytes(samples: int, sample_shape: tuple[int, ...], dtype: np.dtype) -> int:
    """The bytes that the original model's outputs for `samples` samples take."""
    return samples * int(np.prod(sample_shape)) * np.dtype(dtype).itemsize


def caching(size: int) -> str:
    """Where original outputs of `size` bytes go: "memory", "file" (memory-mapped) or "on the fly" (not stored:
    computed for each batch when it is needed)."""
    return "memory" if size <= IN_MEMORY_BYTES else "file" if size <= ON_DISK_BYTES else "on the fly"


def with_teacher(data: Dataset, teacher: Callable[[dict[str, np.ndarray]], np.ndarray], batch_size: int,
                 folder: str | Path | None = None, pad: bool = True,
                 progress: Callable[[dict], None] | None = None, axis: int = 0) -> Dataset:
    """A copy of `data` with the original model's outputs for every sample beside the inputs, computed once in
    batches of `batch_size` (a pass over 2 s reports to `progress`); `axis` is the outputs' batch axis.

    With `pad`, the last batch is padded with copies of its last sample (whose outputs are dropped), so that a
    model exported with a fixed batch size runs on any number of samples. Outputs over 256 MB go to a
    memory-mapped file in `folder` (a temporary folder when None).
    """
    store = None
    start = 0
    reporter = PassProgress(progress, "original outputs", len(data))
    start_pass(teacher)
    for inputs, _ in data.iterate(batch_size):
        n = len(next(iter(inputs.values())))
        out = _outputs(teacher, inputs, batch_size if pad else 0, axis)
        if store is None:
            store = _allocate((len(data), *out.shape[1:]), out.dtype, folder)
        store[start:start + n] = out
        release_pages(store)
        start += n
        reporter.advance(n)
    return data.with_aligned(TEACHER, store)


class LazyOutputs:
    """The original model's outputs for the samples of `data`, computed the first time a batch draws them and kept
    (in memory, or memory-mapped under `folder` when over 256 MB): training starts without a pass over the data,
    and samples it never draws cost nothing. Indexed like the array it stands for (`Dataset.take`)."""

    def __init__(self, data: Dataset, teacher: Callable[[dict[str, np.ndarray]], np.ndarray], batch_size: int,
                 sample_shape: tuple[int, ...], dtype: np.dtype, folder: str | Path | None = None,
                 pad: bool = False, axis: int = 0) -> None:
        """`batch_size`: the most samples the original runs on at once (with `pad`, exactly that many, the
        missing ones copies of the last: a model exported with a fixed batch size); `axis`: the outputs' batch
        axis."""
        self.data = data
        self.teacher = teacher
        self.batch_size = batch_size
        self.pad = pad
        self.axis = axis
        self.store = _allocate((len(data), *sample_shape), dtype, folder)
        self.known = np.zeros(len(data), dtype=bool)

    def __len__(self) -> int:
        return len(self.known)

    def __getitem__(self, positions: np.ndarray | slice) -> np.ndarray:
        rows = np.arange(*positions.indices(len(self))) if isinstance(positions, slice) else np.asarray(positions)
        missing = rows[~self.known[rows]]
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start:start + self.batch_size]
            self.store[chunk] = _outputs(self.teacher, self.data.take(chunk)[0], self.batch_size if self.pad else 0,
                                         self.axis)
            self.known[chunk] = True
        taken = np.array(self.store[rows])
        release_pages(self.store)
        return taken


def _outputs(teacher: Callable[[dict[str, np.ndarray]], np.ndarray], inputs: dict[str, np.ndarray],
             padded_to: int, axis: int) -> np.ndarray:
    """The original's outputs on a batch, batch first (moved from `axis`: a batch of as many samples as the
    output has steps must not be guessed), run padded to `padded_to` samples (when more)."""
    n = len(next(iter(inputs.values())))
    return np.moveaxis(teacher(padded(inputs, padded_to)), axis, 0)[:n]


def _allocate(shape: tuple[int, ...], dtype: np.dtype, folder: str | Path | None) -> np.ndarray:
    if int(np.prod(shape)) * np.dtype(dtype).itemsize <= IN_MEMORY_BYTES:
        return np.empty(shape, dtype)
    folder = Path(folder) if folder is not None else Path(tempfile.mkdtemp(prefix="onnx-dns-teacher-"))
    folder.mkdir(parents=True, exist_ok=True)
    return np.lib.format.open_memmap(folder / "teacher.npy", mode="w+", dtype=dtype, shape=shape)
