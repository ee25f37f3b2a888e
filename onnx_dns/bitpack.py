"""Integers packed at a few bits each, and sparse positions as relative indices (Deep Compression's storage).

Bit stream: value i occupies bits [i*b, (i+1)*b) of a little-endian byte string, so it is read back as
(B[j] + 256 B[j+1] + 65536 B[j+2]) // 2^s mod 2^b with j = i*b // 8 and s = i*b mod 8. The stream is padded with
the bytes such a read may reach past its end, so the graph that decodes it never indexes out of range.

Relative indices: the kept positions p_1 < p_2 < ... of a flattened tensor become their gaps g = p_k - p_{k-1}
(p_0 = -1), stored at b bits. A gap larger than F = 2^b - 1 is preceded by filler entries holding 0, each of
which advances the position by F without writing anything; a real entry holds its remaining gap in 1..F. So
position = cumsum(step) - 1 with step = d, or F for a filler, and the real entries are those with d != 0.
"""

from __future__ import annotations

import numpy as np

MAX_INDEX_BITS = 16


def read_bytes(bits: int) -> int:
    """How many consecutive bytes one value of `bits` bits may span (starting anywhere in a byte)."""
    return (7 + bits + 7) // 8


def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """Non-negative integers below 2^bits as a little-endian bit stream (uint8), padded for unaligned reads."""
    values = np.asarray(values, dtype=np.int64).reshape(-1)
    if values.size and (values.min() < 0 or values.max() >= 2 ** bits):
        raise ValueError(f"pack_bits: values outside 0..{2 ** bits - 1} cannot be stored at {bits} bits")
    bitplanes = ((values[:, None] >> np.arange(bits)) & 1).astype(np.uint8).reshape(-1)
    packed = np.packbits(bitplanes, bitorder="little")
    return np.concatenate([packed, np.zeros(read_bytes(bits) - 1, np.uint8)])


def unpack_bits(stream: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The first `count` values of a stream written by pack_bits (int64)."""
    bitplanes = np.unpackbits(np.asarray(stream, np.uint8), bitorder="little")[: count * bits]
    return (bitplanes.reshape(count, bits).astype(np.int64) << np.arange(bits)).sum(axis=1)


def gap_deltas(positions: np.ndarray, bits: int) -> np.ndarray:
    """Relative indices of sorted, distinct positions at `bits` bits: real gaps in 1..2^bits-1, fillers 0."""
    top = 2 ** bits - 1
    gaps = np.diff(np.concatenate([[-1], np.asarray(positions, np.int64)]))
    fillers = (gaps - 1) // top
    deltas = np.zeros(int(len(gaps) + fillers.sum()), np.int64)
    deltas[np.cumsum(fillers + 1) - 1] = gaps - fillers * top
    return deltas


def positions_from_deltas(deltas: np.ndarray, bits: int) -> np.ndarray:
    """Inverse of gap_deltas: the positions the real entries write to."""
    deltas = np.asarray(deltas, np.int64)
    steps = np.where(deltas == 0, 2 ** bits - 1, deltas)
    return (np.cumsum(steps) - 1)[deltas != 0]


def entry_count(positions: np.ndarray, bits: int) -> int:
    """Entries (real plus fillers) gap_deltas writes for `positions` at `bits` bits."""
    gaps = np.diff(np.concatenate([[-1], np.asarray(positions, np.int64)]))
    return int(len(gaps) + ((gaps - 1) // (2 ** bits - 1)).sum())


def best_index_bits(positions: np.ndarray, widths=range(1, MAX_INDEX_BITS + 1)) -> int:
    """The width among `widths` of relative indices that stores `positions` in the fewest bits (fillers
    included)."""
    costs = {bits: entry_count(positions, bits) * bits for bits in widths}
    return min(costs, key=lambda b: (costs[b], b))
