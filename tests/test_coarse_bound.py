"""The accuracy bound warns when the validation data is too small to judge it: the count of items the score is a
share of (samples, positions, detections) is tallied over all batches, and a bound that fewer than five of them
fill is named coarse, with how much more data would do."""

from __future__ import annotations

import logging

import numpy as np
import onnx_dns
from engine_fixtures import blobs, mlp

from onnx_dns.evaluate import Tally
from onnx_dns.selection import coarse_bound


def _head(boxes: list[tuple[float, float, float, float, int]], anchors: int = 40, classes: int = 2) -> np.ndarray:
    """A YOLO head [4+K, A] with one confident anchor per box (cx, cy, w, h, class) and the rest at score 0."""
    head = np.zeros((4 + classes, anchors), np.float32)
    for i, (cx, cy, w, h, k) in enumerate(boxes):
        head[:4, i] = cx, cy, w, h
        head[4 + k, i] = 0.9
    return head


def test_units_count_every_sample_and_position_over_all_batches():
    rng = np.random.default_rng(0)
    tally = Tally("classify")
    for n in (7, 5, 3):
        tally.add(rng.normal(size=(n, 4)), rng.integers(0, 4, n), None)
    assert tally.metrics(labelled=True).units == 15

    per_position = Tally("classify")
    for n in (2, 3):
        per_position.add(rng.normal(size=(n, 6, 5)), None, rng.normal(size=(n, 6, 5)))
    assert per_position.metrics(labelled=False).units == 30


def test_units_of_boxes_are_the_originals_detections_and_other_measures_have_none():
    original = np.stack([_head([(10, 10, 8, 8, 0), (40, 40, 8, 8, 1)]), _head([(20, 20, 6, 6, 1)])])
    new = np.stack([_head([(10, 10, 8, 8, 0)]), _head([])])
    tally = Tally("regress", "boxes")
    tally.add(new[:1], None, original[:1])
    tally.add(new[1:], None, original[1:])
    metrics = tally.metrics(labelled=False)
    assert metrics.units == 3 and metrics.score == 100.0 / 3

    decisions = Tally("regress", "decisions")
    decisions.add(np.full((4, 3), 0.9), None, np.full((4, 3), 0.8))
    assert decisions.metrics(labelled=False).units is None


def test_a_bound_that_few_items_fill_is_named_coarse_with_the_data_that_would_do():
    rng = np.random.default_rng(1)
    tally = Tally("classify")
    tally.add(rng.normal(size=(26, 2)), None, rng.normal(size=(26, 2)))
    warning = coarse_bound(tally.metrics(labelled=False), 5.0)
    assert warning is not None
    assert "26 validation samples" in warning and "3.8 points" in warning and "at least 100 samples" in warning

    assert coarse_bound(tally.metrics(labelled=False), None) is None  # no bound, nothing to judge
    assert coarse_bound(tally.metrics(labelled=False), 25.0) is None  # 26 samples fill a 25-point bound 6 times
    large = Tally("classify")
    large.add(rng.normal(size=(100, 2)), None, rng.normal(size=(100, 2)))
    assert coarse_bound(large.metrics(labelled=False), 5.0) is None
    assert "at least 500 samples" in coarse_bound(large.metrics(labelled=False), 1.0)


def test_compress_warns_on_a_small_validation_set_only(caplog):
    model = mlp(6, 16, 3, seed=2)
    x, y = blobs(300, 6, 3, seed=1)
    for val_size, expect in ((20, True), (200, False)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="onnx_dns.training"):
            onnx_dns.compress(model, {"x": x, "labels": y}, val={"x": x[:val_size], "labels": y[:val_size]},
                              target=2, iterations=4, batch_size=32, lr=0.01)
        assert ("judged on 20 validation samples" in caplog.text) is expect
