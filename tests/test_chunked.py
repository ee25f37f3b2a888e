"""Chunked, threaded host updates give the same bits as one whole-array update, on every entry of every tensor."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from onnx_dns.chunked import CHUNK, PARALLEL_MIN, ChunkedRunner, Scratch
from onnx_dns.optimizers import SGD, AdamW
from onnx_dns.surgery import update_mask

# sizes that are not multiples of a chunk, on both sides of the parallel threshold
SHAPES = {"large": (PARALLEL_MIN + 3 * CHUNK + 17,), "large2d": (613, 701), "small": (300, 20), "bias": (7,)}


def tensors(seed: int, dtype=np.float32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {k: rng.standard_normal(s).astype(dtype) for k, s in SHAPES.items()}
    out["small"][0, :3] = np.nan
    return out


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("factory", [lambda p, r: SGD(p, runner=r), lambda p, r: AdamW(p, runner=r)],
                         ids=["sgd", "adamw"])
def test_optimizer_steps_are_bit_identical_to_whole_array_steps(threads, factory):
    whole, chunked = tensors(0), tensors(0)
    reference = factory(whole, ChunkedRunner(1))
    reference.runner.run = lambda tasks: [kernel(Scratch(), *arrays) for kernel, arrays in tasks]
    runner = ChunkedRunner(threads)
    optimizer = factory(chunked, runner)
    for step in range(3):
        grads = tensors(step + 10)
        reference.step(whole, grads, 0.01 * (step + 1))
        optimizer.step(chunked, grads, 0.01 * (step + 1))
    runner.close()
    for k in SHAPES:
        assert np.array_equal(whole[k], chunked[k], equal_nan=True), k
    for k, v in reference.state_dict().items():
        assert np.array_equal(v, optimizer.state_dict()[k], equal_nan=True), k


@pytest.mark.parametrize("threads", [1, 2])
def test_mask_updates_over_chunks_match_the_rule_everywhere(threads):
    weights = tensors(1)
    rng = np.random.default_rng(2)
    masks = {k: (rng.random(w.shape) < 0.5).astype(np.float32) for k, w in weights.items()}
    low, high = 0.5, 1.2
    expected = {}
    for k, w in weights.items():
        magnitude = np.abs(w)
        expected[k] = np.where(magnitude < low, 0.0, np.where(magnitude > high, 1.0, masks[k])).astype(np.float32)
        expected[k][np.isnan(w)] = masks[k][np.isnan(w)]
    runner = ChunkedRunner(threads)
    runner.run((lambda s, w, m: update_mask(w, m, low, high, s), (weights[k], masks[k])) for k in weights)
    runner.close()
    for k in weights:
        assert np.array_equal(masks[k], expected[k]), k


def test_large_tensors_are_shared_among_threads_and_every_entry_is_visited_once():
    seen: dict[str, set[int]] = {}
    lock = threading.Lock()
    both_running = threading.Barrier(2, timeout=30)  # fails unless the two halves run at the same time
    visits = np.zeros(PARALLEL_MIN * 2 + 5, np.int64)

    def kernel(scratch, counts):
        name = threading.current_thread().name
        if name not in seen:
            both_running.wait()
        counts += 1
        with lock:
            seen.setdefault(name, set()).add(counts.size)

    runner = ChunkedRunner(2)
    runner.run([(kernel, (visits,))])
    runner.close()
    assert np.all(visits == 1)
    assert len(seen) == 2
    assert max(max(sizes) for sizes in seen.values()) <= CHUNK


def test_non_contiguous_tensors_are_updated_whole_and_in_place():
    base = np.zeros((PARALLEL_MIN // 256, 512), np.float32)
    view = base[:, ::2]
    ChunkedRunner(2).run([(lambda s, a: np.add(a, 1, out=a), (view,))])
    assert np.all(base[:, ::2] == 1) and np.all(base[:, 1::2] == 0)


def test_a_kernel_error_reaches_the_caller():
    def kernel(scratch, a):
        raise FloatingPointError("boom")

    runner = ChunkedRunner(2)
    with pytest.raises(FloatingPointError, match="boom"):
        runner.run([(kernel, (np.zeros(PARALLEL_MIN * 2, np.float32),))])
    runner.close()


def test_scratch_is_reused_and_never_shared_between_slots():
    scratch = Scratch()
    a = np.zeros((3, 4), np.float32)
    first, other = scratch.take(0, a), scratch.take(1, a)
    assert first.shape == (3, 4) and not np.shares_memory(first, other)
    assert np.shares_memory(first, scratch.take(0, np.zeros(5, np.float32)))
    assert scratch.take(0, a, np.bool_).dtype == np.bool_


def test_after_a_kernel_error_no_thread_still_writes():
    import time

    def kernel(scratch, a):
        if a.size and a[0] < 0:
            raise FloatingPointError("boom")
        time.sleep(0.05)
        a += 1

    first, second = np.full(PARALLEL_MIN * 2, -1.0, np.float32), np.zeros(PARALLEL_MIN * 2, np.float32)
    runner = ChunkedRunner(2)
    with pytest.raises(FloatingPointError):
        runner.run([(kernel, (first,)), (kernel, (second,))])
    done = second.copy()
    time.sleep(0.2)
    np.testing.assert_array_equal(second, done)
    assert done.sum() > 0  # the other pieces were still running when the first one failed
    runner.close()
