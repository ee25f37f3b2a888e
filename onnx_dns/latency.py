"""Latency of a model as a deployment sees it: a plain onnxruntime CPU session, batch 1 (or the model's fixed
batch), the median of a few timed runs after warm-up runs, so one slow run does not decide the figure."""

from __future__ import annotations

import statistics
import time

import numpy as np
import onnx

from onnx_dns.batch_axes import model_feed
from onnx_dns.data import CallableData, Dataset, model_inputs
from onnx_dns.dataset import SCORED, padded
from onnx_dns.ort_training import onnxruntime
from onnx_dns.targets import TEACHER

WARMUP = 3
RUNS = 15


def sample_feed(data: Dataset | CallableData, fixed_batch: int | None = None) -> dict[str, np.ndarray]:
    """The model inputs of the first sample of `data` (the first `fixed_batch` samples for a fixed-batch model)."""
    size = fixed_batch or 1
    inputs, _ = next(iter(data.iterate(size)))
    return padded({k: v[:size] for k, v in inputs.items() if k not in (TEACHER, SCORED)}, size)


def median_latency(model: onnx.ModelProto, feed: dict[str, np.ndarray], runs: int = RUNS) -> float:
    """Median milliseconds of one inference of `model` on `feed`, in a plain onnxruntime session."""
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    axes = {s.name: s.batch_axis for s in model_inputs(model)}
    feed = model_feed({k: v for k, v in feed.items() if k in names}, axes)
    for _ in range(WARMUP):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - started)
    return 1000.0 * statistics.median(times)
