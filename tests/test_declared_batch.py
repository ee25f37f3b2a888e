"""Exporters that write -1 for a dynamic batch (paddle2onnx): the batch stays dynamic, and every evaluation while
training sees the whole validation set."""

from __future__ import annotations

import pytest
from engine_fixtures import blobs, trained_classifier

import onnx_dns
from onnx_dns.dataset import Dataset
from onnx_dns.errors import DataError
from onnx_dns.evaluate import measure


def test_a_batch_written_as_minus_one_is_dynamic_and_evaluations_see_every_sample():
    x, y = blobs(200, 8, 4, seed=3)
    model = trained_classifier(x, y, 4, hidden=16)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = -1
    result = onnx_dns.compress(model, {"x": x}, val={"x": x[:30]}, target="1.5x", iterations=2, eval_every=1,
                               lr=1e-4, batch_size=16)
    first = result.history[0]["metrics"]
    assert first.samples == 30 and first.fidelity > 90  # a barely trained model agrees with the original
    assert result.metrics["before"].samples == 30


def test_an_evaluation_over_no_samples_is_an_error_not_a_zero_score():
    x, _ = blobs(4, 8, 4)
    empty = Dataset({"x": x[:0]}, None, "empty.npz")
    with pytest.raises(DataError, match="no samples"):
        measure(lambda feed: feed["x"], empty, "classify", 8, reference=lambda feed: feed["x"])
