"""Data held in arrays (in memory or memory-mapped): batches as a pure function of (seed, iteration), subsets
that keep an index instead of copying, and arrays aligned with the samples (the original model's outputs)."""

from __future__ import annotations

import mmap
from collections.abc import Iterator

import numpy as np

from onnx_dns.errors import DataError

Batch = tuple[dict[str, np.ndarray], "np.ndarray | None"]
SCORED = "__scored__"  # an aligned mask of the samples a validation pass scores (the others only run)


class Dataset:
    """Arrays, in memory or memory-mapped: one per model input, plus optional labels, all with the same first
    dimension. A subset keeps the arrays and an index of its rows, so holding out a validation set copies nothing;
    `aligned` arrays (the original model's outputs) have one row per sample of this dataset, in its order.
    With `windows` the samples are steps of one sequence (a model whose batch axis is time): a batch is a run of
    consecutive samples and the held-out part is the last stretch."""

    def __init__(self, inputs: dict[str, np.ndarray], labels: np.ndarray | None, source: str,
                 index: np.ndarray | None = None, aligned: dict[str, np.ndarray] | None = None,
                 windows: bool = False) -> None:
        self._inputs = inputs
        self._labels = labels
        self.source = source
        self.index = index
        self.aligned = dict(aligned or {})
        self.windows = windows

    @property
    def inputs(self) -> dict[str, np.ndarray]:
        """A copy of the input arrays of this dataset's samples (and the aligned ones)."""
        return {**self.take(slice(None))[0]}

    @property
    def labels(self) -> np.ndarray | None:
        return None if self._labels is None else np.asarray(self._labels[self._rows(slice(None))])

    def __len__(self) -> int:
        return len(self.index) if self.index is not None else len(next(iter(self._inputs.values())))

    def _rows(self, positions: np.ndarray | slice) -> np.ndarray | slice:
        return positions if self.index is None else self.index[positions]

    def subset(self, positions: np.ndarray, source: str) -> Dataset:
        return Dataset(self._inputs, self._labels, source, np.asarray(self._rows(positions)),
                       {k: v[positions] for k, v in self.aligned.items()}, self.windows)

    def with_aligned(self, name: str, values: np.ndarray) -> Dataset:
        """A copy that also yields `values` (one row per sample, in this dataset's order) under `name`."""
        return Dataset(self._inputs, self._labels, self.source, self.index, {**self.aligned, name: values},
                       self.windows)

    def without(self, name: str) -> Dataset:
        """A copy that no longer yields the aligned array `name` (batches that need no targets)."""
        return Dataset(self._inputs, self._labels, self.source, self.index,
                       {k: v for k, v in self.aligned.items() if k != name}, self.windows)

    def as_windows(self) -> Dataset:
        """A copy whose batches are runs of consecutive samples (see the class)."""
        return Dataset(self._inputs, self._labels, self.source, self.index, self.aligned, windows=True)

    def split(self, fraction: float, seed: int, run: int = 1, burn_in: int = 0) -> tuple[Dataset, Dataset]:
        """Hold out `fraction` of the samples (at least one), chosen with `seed`, as a validation set; with
        `windows` the last ones, at least `run` of them (but no more than half) so that the held-out stretch is
        as long as the runs trained on: a shorter one scores only the first steps of a run, on few decisions.
        With `burn_in` the validation set also holds up to that many samples before its stretch, marked unscored
        (`SCORED`): a stream model runs through them first (`onnx_dns.stream`)."""
        order = np.random.default_rng([seed, 7]).permutation(len(self))
        n_val = max(1, int(round(fraction * len(self))))
        if self.windows:
            n_val = max(n_val, min(run, len(self) // 2))
        if n_val >= len(self):
            raise DataError(f"{self.source}: {len(self)} samples are too few to hold out a validation set; "
                            "give --val")
        if not self.windows:
            return (self.subset(np.sort(order[n_val:]), self.source),
                    self.subset(np.sort(order[:n_val]), f"{self.source} (held-out {fraction:.0%})"))
        first = len(self) - n_val
        start = max(0, first - burn_in)
        val = self.subset(np.arange(start, len(self)), f"{self.source} (held-out {fraction:.0%})")
        if start < first:
            val = val.with_aligned(SCORED, np.arange(start, len(self)) >= first)
        return self.subset(np.arange(first), self.source), val

    def take(self, positions: np.ndarray | slice) -> Batch:
        """The samples at `positions` (in this dataset's order), with their aligned rows and labels."""
        rows = self._rows(positions)
        arrays = {n: np.array(a[rows]) for n, a in self._inputs.items()}
        arrays |= {n: np.array(a[positions]) for n, a in self.aligned.items()}
        for source in (*self._inputs.values(), *self.aligned.values()):
            release_pages(source)
        return arrays, None if self._labels is None else np.asarray(self._labels[rows])

    def batch(self, iteration: int, batch_size: int, seed: int) -> Batch:
        """Batch number `iteration` of an endless shuffled stream: epoch e uses permutation (seed, e)."""
        per_epoch = max(len(self) // batch_size, 1)
        epoch, k = divmod(iteration, per_epoch)
        if self.windows and len(self) >= batch_size:
            starts = _permutation(seed, epoch, len(self) - batch_size + 1)
            start = int(starts[k % len(starts)])
            return self.take(np.arange(start, start + batch_size))
        order = _permutation(seed, epoch, len(self))
        return self.take(np.sort(order[k * batch_size:(k + 1) * batch_size]) if len(self) >= batch_size else order)

    def iterate(self, batch_size: int) -> Iterator[Batch]:
        """One ordered pass over all samples."""
        for start in range(0, len(self), batch_size):
            yield self.take(slice(start, start + batch_size))


def padded(inputs: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """The batch with copies of its last sample appended up to `size` samples (for a model exported with a fixed
    batch size); as it is when it has that many."""
    n = len(next(iter(inputs.values())))
    if n >= size:
        return inputs
    return {k: np.concatenate([v, np.repeat(v[-1:], size - n, axis=0)]) for k, v in inputs.items()}


def release_pages(array: np.ndarray) -> None:
    """Unmap the pages a memory-mapped array has read (they stay in the page cache, and a later read maps them
    again): else every row read stays in this process's resident memory, which then grows with the data."""
    mapping = getattr(array, "_mmap", None)
    if mapping is not None and getattr(array, "mode", "c") != "c" and hasattr(mmap, "MADV_DONTNEED"):
        mapping.madvise(mmap.MADV_DONTNEED)


_PERMUTATIONS: dict[tuple[int, int, int], np.ndarray] = {}


def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    key = (seed, epoch, n)
    if key not in _PERMUTATIONS:
        _PERMUTATIONS.clear()
        _PERMUTATIONS[key] = np.random.default_rng([seed, epoch]).permutation(n)
    return _PERMUTATIONS[key]
