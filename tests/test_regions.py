"""4-connected regions against a brute-force flood fill, and `--fidelity boxes` on a probability map: the
regions' boxes of the original reproduced by the new map, summed over batches."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from onnx_dns.errors import DataError
from onnx_dns.evaluate import compute_metrics
from onnx_dns.fidelity import BoxesReproduced, region_detections
from onnx_dns.regions import label_regions, region_boxes

FOUR = ((1, 0), (-1, 0), (0, 1), (0, -1))
EIGHT = (*FOUR, (1, 1), (1, -1), (-1, 1), (-1, -1))


def flood_fill(mask: np.ndarray, steps=FOUR) -> np.ndarray:
    """Labels 1..n by breadth-first flood fill from each unlabelled pixel in raster order."""
    labels = np.zeros(mask.shape, np.int64)
    count = 0
    for y, x in zip(*np.nonzero(mask)):
        if labels[y, x]:
            continue
        count += 1
        labels[y, x] = count
        queue = deque([(y, x)])
        while queue:
            cy, cx = queue.popleft()
            for dy, dx in steps:
                ny, nx = cy + dy, cx + dx
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = count
                    queue.append((ny, nx))
    return labels


def spiral(size: int) -> np.ndarray:
    """One winding corridor, a pixel wide, spiralling inwards: runs joined in an order far from raster order."""
    grid = np.zeros((size, size), bool)
    y, x, dy, dx = 0, 0, 0, 1
    for _ in range(size * size):
        grid[y, x] = True
        ahead = y + 2 * dy, x + 2 * dx
        if not (0 <= ahead[0] < size and 0 <= ahead[1] < size) or grid[ahead]:
            dy, dx = dx, -dy
            ahead = y + 2 * dy, x + 2 * dx
            if not (0 <= ahead[0] < size and 0 <= ahead[1] < size) or grid[ahead]:
                break
        y, x = y + dy, x + dx
    return grid


MAPS = [np.random.default_rng(seed).uniform(size=shape) < density
        for seed, (shape, density) in enumerate([((31, 47), 0.0), ((31, 47), 0.2), ((31, 47), 0.45),
                                                  ((31, 47), 0.55), ((40, 40), 0.7), ((31, 47), 1.0),
                                                  ((1, 60), 0.5), ((60, 1), 0.5)])]


@pytest.mark.parametrize("mask", [*MAPS, spiral(41)], ids=lambda m: f"{m.shape}@{m.mean():.2f}")
def test_regions_are_those_of_a_four_connected_flood_fill(mask):
    np.testing.assert_array_equal(label_regions(mask), flood_fill(mask))


def test_the_flood_fill_maps_tell_four_from_eight_connectivity():
    assert label_regions(np.eye(2, dtype=bool)).max() == 2
    differ = [m for m in MAPS if not np.array_equal(flood_fill(m, EIGHT), flood_fill(m))]
    assert len(differ) >= 3  # an 8-connected labelling fails the test above on these
    assert label_regions(spiral(41)).max() == 1 and spiral(41).mean() > 0.4


@pytest.mark.parametrize("mask", MAPS[1:5], ids=lambda m: f"{m.mean():.2f}")
def test_region_boxes_are_the_pixel_extents_and_sizes_of_the_regions(mask):
    labels = flood_fill(mask)
    boxes, sizes = region_boxes(mask)
    assert len(boxes) == labels.max() > 10
    for index, (box, size) in enumerate(zip(boxes, sizes)):
        ys, xs = np.nonzero(labels == index + 1)
        assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] and size == len(ys)


def test_an_empty_map_has_no_region_and_a_full_one_has_one_box():
    assert region_boxes(np.zeros((5, 7), bool))[0].shape == (0, 4)
    boxes, sizes = region_boxes(np.ones((5, 7), bool))
    assert boxes.tolist() == [[0, 0, 7, 5]] and sizes.tolist() == [35]


def text_map(regions: list[tuple[int, int, int, int]], shape=(32, 48)) -> np.ndarray:
    """A probability map [1, H, W]: 0.9 inside each (x0, y0, x1, y1) rectangle, 0.1 elsewhere."""
    image = np.full(shape, 0.1, np.float32)
    for x0, y0, x1, y1 in regions:
        image[y0:y1, x0:x1] = 0.9
    return image[None]


LINES = [(2, 2, 20, 6), (24, 2, 46, 6), (2, 10, 30, 14), (2, 20, 12, 30)]


def score(new: list, original: list, batches: int = 1) -> BoxesReproduced:
    tally = BoxesReproduced()
    tally.add(np.stack([text_map(new)] * batches), np.stack([text_map(original)] * batches))
    return tally


def test_the_same_map_reproduces_every_region_and_a_removed_one_is_missed():
    assert score(LINES, LINES).percent == 100.0 and score(LINES, LINES).original == 4
    assert score(LINES[1:], LINES).percent == pytest.approx(100 * 3 / 4)


def test_a_region_shifted_below_iou_one_half_is_not_reproduced():
    moved = [*LINES[:3], (8, 20, 18, 30)]  # 4 of 16 columns shared with (2, 20, 12, 30): IoU 0.25
    assert score(moved, LINES).percent == pytest.approx(75.0)
    nudged = [*LINES[:3], (4, 20, 14, 30)]  # IoU 8/12
    assert score(nudged, LINES).percent == 100.0


def test_regions_only_in_the_new_map_score_zero_and_none_on_either_side_full():
    assert score(LINES, []).percent == 0.0
    assert score([], []).percent == 100.0


def test_the_score_sums_over_batches_and_images():
    tally = BoxesReproduced()
    tally.add(np.stack([text_map(LINES)] * 2), np.stack([text_map(LINES)] * 2))  # 8 of 8
    tally.add(text_map([])[None], text_map(LINES[:1])[None])  # 0 of 1
    assert (tally.original, tally.matched) == (9, 8) and tally.percent == pytest.approx(100 * 8 / 9)


def test_a_map_without_its_channel_axis_is_read_the_same_way():
    tally = BoxesReproduced()
    tally.add(text_map(LINES[1:]), text_map(LINES))
    assert tally.maps and tally.percent == pytest.approx(75.0)


def test_regions_come_largest_first():
    boxes, classes = region_detections(text_map(LINES)[0])
    assert boxes.tolist() == [[2, 10, 30, 14], [2, 20, 12, 30], [24, 2, 46, 6], [2, 2, 20, 6]]  # 112, 100, 88, 72
    assert classes.tolist() == [0, 0, 0, 0]


def test_neither_a_yolo_head_nor_a_one_channel_map_in_0_1_is_refused():
    two_channels = np.random.default_rng(0).uniform(size=(2, 2, 8, 8))
    with pytest.raises(DataError, match=r"shape \[2, 2, 8, 8\], neither a YOLO head .* nor a probability map"):
        BoxesReproduced().add(two_channels, two_channels)
    logits = 3 * np.random.default_rng(1).standard_normal((2, 1, 8, 8))
    with pytest.raises(DataError, match="--fidelity boxes"):
        BoxesReproduced().add(logits, logits)


def test_a_bound_missed_on_decisions_names_the_regions_only_for_a_one_channel_map():
    maps = np.random.default_rng(2).uniform(size=(4, 1, 6, 6))
    assert "--fidelity boxes" in compute_metrics("regress", maps, None, maps, "decisions").bound_hint
    for other in (maps[:, 0], maps.reshape(4, 36), np.repeat(maps, 2, axis=1)):
        assert compute_metrics("regress", other, None, other, "decisions").bound_hint == ""
    assert compute_metrics("regress", maps, None, maps, "boxes").bound_hint == ""
