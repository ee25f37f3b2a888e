"""The 4-connected regions of a boolean map and their bounding boxes, in numpy alone (no scipy).

A region is a set of True pixels joined through their left, right, upper and lower neighbours (diagonal
neighbours do not join). The map is cut into row runs (maximal horizontal stretches of True). Two runs of
consecutive rows belong together when they share a column; each such overlap gives one edge. Edges are merged
by union-find on arrays: every round hooks the larger root of each edge whose ends still differ onto the
smaller (parent[i] <= i always holds, so no cycle can form), then pointer jumping (parent = parent[parent] until
stable) flattens every tree to its root. The smallest run of a region, its first in raster order, is its root,
so regions come numbered in the raster order of their first pixel, as a flood fill scanning rows would number
them. Cost: a few vectorized passes over the map plus a few rounds over the runs; a 960x960 map with thousands
of regions takes tens of milliseconds.
"""

from __future__ import annotations

import numpy as np


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Row runs of a 2-D boolean map: (row, first column, column after the last, run index of each pixel)."""
    starts = mask.copy()
    starts[:, 1:] &= ~mask[:, :-1]
    ends = mask.copy()
    ends[:, :-1] &= ~mask[:, 1:]
    rows, first = np.nonzero(starts)
    last = np.nonzero(ends)[1]
    run_of_pixel = np.cumsum(starts.ravel()).reshape(mask.shape) - 1
    return rows, first, last + 1, run_of_pixel


def _roots(count: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The root (smallest member) of each of `count` items joined by the edges (a[i], b[i])."""
    parent = np.arange(count)
    while len(a):
        high = np.maximum(parent[a], parent[b])
        low = np.minimum(parent[a], parent[b])
        np.minimum.at(parent, high, low)
        jumped = parent[parent]
        while not np.array_equal(jumped, parent):
            parent, jumped = jumped, jumped[jumped]
        apart = parent[a] != parent[b]
        a, b = a[apart], b[apart]
    return parent


def _run_regions(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(region index of each run numbered from 0 in raster order, rows, first columns, ends, run of each pixel)."""
    rows, first, end, run_of_pixel = _runs(mask)
    both = mask[1:] & mask[:-1]
    overlap_starts = both.copy()
    overlap_starts[:, 1:] &= ~both[:, :-1]
    lower, upper = run_of_pixel[1:][overlap_starts], run_of_pixel[:-1][overlap_starts]
    roots = _roots(len(rows), lower, upper)
    region = np.unique(roots, return_inverse=True)[1].reshape(-1)
    return region, rows, first, end, run_of_pixel


def label_regions(mask: np.ndarray) -> np.ndarray:
    """Labels of the 4-connected regions of a 2-D boolean map: 0 off the map, 1..n in the raster order of each
    region's first pixel."""
    mask = np.asarray(mask, bool)
    region, _, _, _, run_of_pixel = _run_regions(mask)
    labels = np.zeros(mask.shape, np.int64)
    labels[mask] = region[run_of_pixel[mask]] + 1
    return labels


def region_boxes(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounding boxes of the 4-connected regions of a 2-D boolean map as pixel extents x0, y0, x1, y1 [n, 4]
    (x1, y1 one past the last pixel), and each region's pixel count [n], in the raster order of `label_regions`."""
    mask = np.asarray(mask, bool)
    region, rows, first, end, _ = _run_regions(mask)
    count = int(region.max()) + 1 if len(region) else 0
    boxes = np.empty((count, 4), np.float64)
    boxes[:, :2] = np.inf
    boxes[:, 2:] = -np.inf
    np.minimum.at(boxes[:, 0], region, first)
    np.minimum.at(boxes[:, 1], region, rows)
    np.maximum.at(boxes[:, 2], region, end)
    np.maximum.at(boxes[:, 3], region, rows + 1)
    sizes = np.bincount(region, weights=end - first, minlength=count).astype(np.int64)
    return boxes, sizes
