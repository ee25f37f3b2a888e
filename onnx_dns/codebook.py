"""Weight sharing (Deep Compression's second step, Han et al. 2016): each layer's kept weights become indices into
a codebook of 2^bits values, found by 1-D k-means with linear initialisation.

k-means in one dimension: with centroids sorted, the weights nearest each centroid form a contiguous run of the
sorted weights, bounded by the midpoints between neighbouring centroids. So one sort, then per iteration one
searchsorted of the k-1 midpoints and prefix sums give every cluster's mean in O(k): Lloyd's algorithm at the
cost of a sort, exact and deterministic. Centroids start evenly spaced between the smallest and largest weight
(the "linear" initialisation the paper found best); a cluster that empties keeps its centroid.

Fine-tuning the shared values: a weight is W[i] = c[code[i]], so dL/dc[k] = sum of dL/dW[i] over the weights
with code k, a bincount of the weight gradient weighted by code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_BITS, MAX_BITS = 2, 8


@dataclass(frozen=True)
class Codebook:
    """Sorted shared values and, for each input weight, the index of its value."""

    centroids: np.ndarray
    codes: np.ndarray

    def values(self) -> np.ndarray:
        """The quantized weights, centroids[codes], in the centroids' dtype."""
        return self.centroids[self.codes]


def kmeans_1d(values: np.ndarray, bits: int, *, max_iterations: int = 100) -> Codebook:
    """Cluster `values` (any shape, flattened) into at most 2^bits shared values by Lloyd's k-means.

    With no more distinct values than clusters, the codebook is those values exactly (lossless).
    """
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"kmeans_1d: bits={bits} is outside {MIN_BITS}..{MAX_BITS}")
    flat = np.asarray(values).reshape(-1)
    if flat.size == 0:
        return Codebook(np.zeros(0, flat.dtype), np.zeros(0, np.int64))
    distinct = np.unique(flat)
    k = 2 ** bits
    if len(distinct) <= k:
        return Codebook(distinct, np.searchsorted(distinct, flat).astype(np.int64))
    order = np.sort(flat.astype(np.float64))
    prefix = np.concatenate([[0.0], np.cumsum(order)])
    centroids = np.linspace(order[0], order[-1], k)
    edges = None
    for _ in range(max_iterations):
        new_edges = np.searchsorted(order, (centroids[:-1] + centroids[1:]) / 2, side="right")
        if edges is not None and np.array_equal(new_edges, edges):
            break
        edges = new_edges
        starts = np.concatenate([[0], edges])
        ends = np.concatenate([edges, [len(order)]])
        counts = ends - starts
        sums = prefix[ends] - prefix[starts]
        centroids = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
    centroids = np.sort(centroids).astype(flat.dtype)
    return Codebook(centroids, assign(flat, centroids))


def assign(values: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """The index of the nearest of the sorted `centroids` for each value (ties go to the lower one)."""
    flat = np.asarray(values, dtype=np.float64).reshape(-1)
    c = centroids.astype(np.float64)
    midpoints = (c[:-1] + c[1:]) / 2
    return np.searchsorted(midpoints, flat, side="left").astype(np.int64)


def centroid_gradient(codes: np.ndarray, weight_gradient: np.ndarray, size: int) -> np.ndarray:
    """dL/dc for W = c[codes]: the sum of the weight gradients sharing each centroid (length `size`)."""
    return np.bincount(np.asarray(codes).reshape(-1), weights=np.asarray(weight_gradient, np.float64).reshape(-1),
                       minlength=size)


def update_centroids(centroids: np.ndarray, weight_gradient: np.ndarray, codes: np.ndarray,
                     lr: float) -> np.ndarray:
    """One SGD step on the shared values: c - lr * dL/dc, in the centroids' dtype (a new array)."""
    step = centroid_gradient(codes, weight_gradient, len(centroids))
    return (centroids.astype(np.float64) - lr * step).astype(centroids.dtype)
