"""Elementwise updates of large tensors in cache-sized chunks, shared among threads.

The optimizer and the mask update touch every parameter at every iteration. Over a whole 50M-entry tensor each
numpy operation streams the tensor through memory once and its temporaries are as large as the tensor; over
256K-entry chunks the temporaries stay in cache, and the chunks are split among threads (numpy releases the GIL
inside ufuncs; much smaller chunks lose more to handing the GIL over than threads gain, measured). Each entry sees the same operations in the same order, so results are bit-identical to a
whole-array update. Tensors under PARALLEL_MIN entries run whole on the calling thread, where a hand-off to
another thread would cost more than it saves.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import numpy as np

CHUNK = 1 << 18
PARALLEL_MIN = 1 << 19


class Scratch:
    """One worker's temporaries, reused across calls so that no step allocates."""

    def __init__(self) -> None:
        self._buffers: dict[tuple[int, np.dtype], np.ndarray] = {}

    def take(self, slot: int, like: np.ndarray, dtype: np.dtype | type | None = None) -> np.ndarray:
        """An uninitialized array shaped like `like` (of `dtype`, default like's); `slot` tells temporaries apart."""
        key = (slot, np.dtype(like.dtype if dtype is None else dtype))
        buffer = self._buffers.get(key)
        if buffer is None or buffer.size < like.size:
            buffer = self._buffers[key] = np.empty(max(like.size, CHUNK), key[1])
        return buffer[:like.size].reshape(like.shape)


Kernel = Callable[..., None]
"""kernel(scratch, *arrays): updates same-shaped arrays in place, elementwise."""


class ChunkedRunner:
    """Runs elementwise kernels over groups of same-sized tensors, chunked and threaded when they are large."""

    def __init__(self, threads: int = 1) -> None:
        self.threads = max(1, int(threads))
        self._local = threading.local()
        self._pool: ThreadPoolExecutor | None = None

    def run(self, tasks: Iterable[tuple[Kernel, Sequence[np.ndarray]]]) -> None:
        """Apply each (kernel, arrays) task; returns when every task is done. A kernel's exception propagates."""
        pieces = []
        for kernel, arrays in tasks:
            size = arrays[0].size
            if size < PARALLEL_MIN or not all(a.flags.c_contiguous for a in arrays):
                kernel(self._scratch(), *arrays)
                continue
            flat = [a.reshape(-1) for a in arrays]
            pieces += [(kernel, flat, start, stop) for start, stop in self._ranges(size)]
        if not pieces:
            return
        if self.threads == 1 or len(pieces) == 1:
            for piece in pieces:
                self._run_range(*piece)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="onnx-dns-update")
        futures = [self._pool.submit(self._run_range, *piece) for piece in pieces]
        wait(futures)  # every piece, even after one fails, so no thread still writes when this returns
        for future in futures:
            future.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def _ranges(self, size: int) -> list[tuple[int, int]]:
        """One contiguous range per thread, in whole chunks."""
        step = -(-size // self.threads)
        step = -(-step // CHUNK) * CHUNK
        return [(start, min(start + step, size)) for start in range(0, size, step)]

    def _scratch(self) -> Scratch:
        """The calling thread's own temporaries."""
        scratch = getattr(self._local, "scratch", None)
        if scratch is None:
            scratch = self._local.scratch = Scratch()
        return scratch

    def _run_range(self, kernel: Kernel, flat: list[np.ndarray], start: int, stop: int) -> None:
        scratch = self._scratch()
        for i in range(start, stop, CHUNK):
            j = min(i + CHUNK, stop)
            kernel(scratch, *(a[i:j] for a in flat))
