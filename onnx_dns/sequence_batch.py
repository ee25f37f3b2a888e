"""Models whose batch axis is a sequence: a sample's output depends on the other samples of its batch.

Silero's VAD takes `input[T, 576]` and runs an LSTM along T: axis 0 is time, not a batch of independent samples.
Training such a model on shuffled samples would feed it sequences that never occur, and the original model's
outputs computed once in other batches would not be what it computes on the training batch. Found by running
the original on the last two samples of a batch alone: with independent samples their outputs are the ones they
had inside the batch. Such a model trains on runs of consecutive samples (`Dataset.as_windows`), against the
original's outputs on the same run, with its batch axis pinned to the batch size (recurrent layers unroll over it).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


TAIL = 2


def samples_interact(teacher: Callable[[dict[str, np.ndarray]], np.ndarray], inputs: dict[str, np.ndarray],
                     output: np.ndarray, axis: int = 0) -> bool:
    """Whether the last samples of this batch get other outputs alone than inside it (`output`, the teacher's
    output on `inputs`, sample-first data, with its batch on `axis`); a batch of fewer than three samples cannot
    tell, nor a model that does not run on two samples."""
    n = len(next(iter(inputs.values())))
    if n <= TAIL:
        return False
    inside = np.moveaxis(output, axis, 0)[-TAIL:].astype(np.float64)
    try:
        alone = np.moveaxis(teacher({k: v[-TAIL:] for k, v in inputs.items()}), axis, 0).astype(np.float64)
    except Exception:  # noqa: BLE001 - a model that runs only at its batch size is taken as it was before
        return False
    if alone.shape != inside.shape:
        return True
    scale = max(float(np.abs(inside).max()), 1e-12)
    return not np.allclose(alone, inside, rtol=1e-4, atol=1e-5 * scale)
