"""The real-model benchmark's fidelity measures for ddddocr: greedy CTC of time-first logits, and the decoding of
a raw YOLOX head, checked on hand-made outputs whose answers are worked out from the definitions."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from corpus_fidelity import ctc_classes, ctc_time_first, yolox_boxes, yolox_detections, yolox_grid  # noqa: E402


def _one_hot_steps(classes: list[int], depth: int = 4) -> np.ndarray:
    """Logits [T, C] whose argmax per step is `classes`, with unequal runner-up values."""
    logits = np.linspace(0, 1, len(classes) * depth, dtype=np.float32).reshape(len(classes), depth)
    logits[np.arange(len(classes)), classes] = 5.0
    return logits


def test_ctc_classes_merges_repeats_and_drops_blank_but_keeps_repeats_split_by_blank():
    scores = np.stack([_one_hot_steps([1, 1, 0, 1, 2, 2]), _one_hot_steps([0, 0, 3, 0, 0, 0])])
    assert ctc_classes(scores) == [(1, 1, 2), (3,)]


def test_ctc_time_first_reads_lines_on_axis_one():
    line0, line1, line0_changed = [1, 1, 0, 2, 2], [0, 3, 3, 0, 3], [1, 0, 1, 2, 0]
    ref = np.stack([_one_hot_steps(line0), _one_hot_steps(line1)], 1)  # [T=5, N=2, C=4]
    new = np.stack([_one_hot_steps(line0_changed), _one_hot_steps(line1) * 2], 1)
    result = ctc_time_first(ref, new, Path("unused.onnx"))
    assert result["fidelity"] == 0.5
    assert result["examples"] == [((1, 2), (1, 1, 2)), ((3, 3), (3, 3))]
    assert ctc_time_first(ref, ref.copy(), Path("unused.onnx"))["fidelity"] == 1.0


def test_yolox_grid_orders_cells_row_major_from_the_finest_stride():
    cells, strides = yolox_grid(32)
    assert len(cells) == 16 + 4 + 1 and len(yolox_grid(416)[0]) == 52 * 52 + 26 * 26 + 13 * 13
    assert cells[5].tolist() == [1, 1] and cells[6].tolist() == [2, 1] and strides[5, 0] == 8
    assert cells[16 + 3].tolist() == [1, 1] and strides[16 + 3, 0] == 16
    assert cells[20].tolist() == [0, 0] and strides[20, 0] == 32


def _head(rows: dict[int, list[float]], anchors: int = 21) -> np.ndarray:
    """A raw YOLOX head [1, anchors, 6] of zero scores but for the rows given (dx, dy, log w, log h, obj, cls)."""
    head = np.zeros((1, anchors, 6), np.float32)
    for index, row in rows.items():
        head[0, index] = row
    return head


HEAD = {5: [0.5, 0.25, np.log(2), 0.0, 0.9, 0.8],    # cell (1,1) stride 8: centre (12,10), 16x8, score 0.72
        6: [-0.5, 0.25, np.log(2), 0.0, 0.8, 0.8],   # cell (2,1): same box, score 0.64, suppressed
        19: [0.0, 0.0, 0.0, 0.0, 0.5, 1.0],          # cell (1,1) stride 16: centre (16,16), 16x16, IoU 0.23
        20: [0.5, 0.5, 0.0, 0.0, 0.3, 0.3]}          # score 0.09, under ddddocr's 0.1


def test_yolox_detections_decode_offsets_log_sizes_and_score_as_ddddocr():
    [(boxes, classes)] = yolox_detections(_head(HEAD), size=32)
    np.testing.assert_allclose(boxes, [[4, 6, 20, 14], [8, 8, 24, 24]], atol=1e-5)
    assert classes.tolist() == [0, 0]


@pytest.mark.parametrize("shift, expected", [(0.0, 1.0), (1.0, 0.5)])
def test_yolox_boxes_share_of_original_boxes_reproduced_at_416(shift, expected):
    at_416 = {53: HEAD[5], 54: HEAD[6], 52 * 52 + 27: HEAD[19]}  # the same cells on the 52/26/13 grids
    moved = {**at_416, 52 * 52 + 27: [shift, 0.0, 0.0, 0.0, 0.5, 1.0]}  # one cell right: no overlap
    result = yolox_boxes(_head(at_416, 3549), _head(moved, 3549), Path("unused.onnx"))
    assert result["fidelity"] == expected and result["boxes_original"] == 2
