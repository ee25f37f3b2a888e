"""Channel surgery: the paper's rule applied to whole channels, on the vector of channel norms.

For a group whose masked tensors W_j hold the channels on axis a_j, channel c has the norm
    n_c = sqrt(sum_j ||W_j[c - s_j]||^2)
over the tensors whose span s_j .. s_j + m_j - 1 holds c (every tensor holds all channels, but a layer joined
with a piece of a split group: that layer holds the piece's channels only).
and its mask follows the surgery rule on n: prune n_c < a, splice n_c > b. The thresholds come from an inner
criterion run on the norms as on magnitudes (`Paper`: 0.9 t and 1.1 t with t = mu + c * sigma of the pretrained
norms; `Target`: the scheduled number of largest norms). Both are capped just below the largest norm, so a group
never loses its last channel.

Dense kernels run fastest on channel counts that fill their vector blocks (onnxruntime's blocked convolutions:
measured, a residual CNN at 7 and 14 channels ran 4.5x slower than at 8 and 16), so at the stop iteration a group
keeps the multiple of `multiple` nearest to what its rule keeps (at least one multiple), the largest norms;
`block_multiple` gives 8 for groups of 16 channels or more, 4 for groups of 8 to 15. A group that a Split parts
(`pieces`: the stretches that become tensors of their own, as C2f's halves) rounds each piece by its own size
instead, so that every layer reading or writing a piece runs on whole blocks too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from onnx_dns.criteria.base import Criterion


def channel_norms(arrays: Sequence[np.ndarray], axes: Sequence[int],
                  spans: Sequence[tuple[int, int]] = ()) -> np.ndarray:
    """The L2 norm of each channel over all of a group's tensors (tensor j holds the channels on axes[j], the
    group's channels spans[j] = (start, count); without spans, all of them)."""
    spans = list(spans) or [(0, np.shape(arrays[0])[axes[0]])] * len(arrays)
    total = np.zeros(max(start + count for start, count in spans))
    for array, axis, (start, count) in zip(arrays, axes, spans):
        values = np.moveaxis(np.asarray(array, dtype=np.float64), axis, 0)
        total[start:start + count] += np.square(values).reshape(values.shape[0], -1).sum(axis=1)
    return np.sqrt(total)


class Channels(Criterion):
    """`inner`'s thresholds on a group's channel norms (its only array), capped to keep the largest channel."""

    def __init__(self, inner: Criterion, multiple: int = 1, pieces: Sequence[tuple[int, int]] = ()) -> None:
        self.inner = inner
        self.multiple = multiple
        self.pieces = tuple(pieces)

    def initialize(self, arrays: Sequence[np.ndarray]) -> None:
        self.inner.initialize(arrays)

    def thresholds(self, iteration: int, stop: int, arrays: Sequence[np.ndarray]) -> tuple[float, float]:
        low, high = self.inner.thresholds(iteration, stop, arrays)
        cap = _cap(arrays[0])
        return min(low, cap), min(high, cap)

    def probe_threshold(self, stop: int, arrays: Sequence[np.ndarray]) -> float:
        """The inner rule's norm below which channels will have gone by the stop (the learning-rate probe starts
        from there), capped to keep the largest channel."""
        return min(self.inner.probe_threshold(stop, arrays), _cap(arrays[0]))

    def final_threshold(self, iteration: int, stop: int, arrays: Sequence[np.ndarray]) -> float | np.ndarray | None:
        """The inner rule's final threshold; at the stop, rounded to whole blocks: one threshold, or with
        `pieces` one per channel (each piece's own)."""
        norms = arrays[0]
        threshold = self.inner.final_threshold(iteration, stop, arrays)
        if iteration != stop - 1 or (self.multiple <= 1 and not self.pieces):
            return None if threshold is None else min(threshold, float(np.max(norms)))
        if threshold is None:
            threshold = self.thresholds(iteration, stop, arrays)[0]
        if not self.pieces:
            count = round_channels(int(np.count_nonzero(norms >= threshold)), norms.size, self.multiple)
            return float(np.sort(norms)[norms.size - count])
        per_channel = np.empty(norms.size)
        for start, size in self.pieces:
            part = norms[start:start + size]
            count = round_channels(int(np.count_nonzero(part >= threshold)), size, block_multiple(size))
            per_channel[start:start + size] = np.sort(part)[size - count]
        return per_channel

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)


def block_multiple(size: int) -> int:
    """The channel multiple a group of `size` channels keeps: 8 from 16 channels, 4 from 8, else 1."""
    return 8 if size >= 16 else 4 if size >= 8 else 1


def round_channels(count: int, size: int, multiple: int) -> int:
    """`count` moved to the nearest multiple of `multiple`, at least one multiple (or 1) and at most `size`."""
    if multiple <= 1:
        return min(max(count, 1), size)
    return min(max(multiple, multiple * round(count / multiple)), size)


def _cap(norms: np.ndarray) -> float:
    """Just below the largest norm: that channel is never pruned, and is spliced back if it was."""
    return float(np.nextafter(np.max(norms), -np.inf))
