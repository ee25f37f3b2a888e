"""Weight sharing fine-tuned in training (Deep Compression's second step, after the surgery has fixed the masks).

When the masks stop changing, each masked tensor's kept weights are clustered into 2^bits shared values
(`codebook.kmeans_1d`, linear initialisation), and from then on every step moves the shared values, not the
weights: with W = c[codes] on the kept entries, dL/dc_k is the sum of dL/dw over the weights of code k, and
c <- c - lr * dL/dc. The kept weights are rewritten as c[codes] after each step, so the trained model holds at most
2^bits distinct values per tensor and the packed output stores exactly what was trained.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import numpy as np

from onnx_dns.codebook import Codebook, kmeans_1d, update_centroids


class WeightSharing:
    """The codebooks of the masked tensors, once `begin` has clustered them."""

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.books: dict[str, tuple[np.ndarray, Codebook]] = {}

    @property
    def active(self) -> bool:
        return bool(self.books)

    def begin(self, params: Mapping[str, np.ndarray], masks: Mapping[str, np.ndarray]) -> None:
        """Cluster each masked tensor's kept weights and write the shared values into the weights."""
        for name, mask in masks.items():
            kept = np.flatnonzero(mask.reshape(-1))
            book = kmeans_1d(params[name].reshape(-1)[kept], self.bits)
            self.books[name] = (kept, book)
        self.write(params)

    def update(self, grads: Mapping[str, np.ndarray], lr: float) -> None:
        """One SGD step of every codebook on the summed gradients of its weights."""
        for name, (kept, book) in self.books.items():
            centroids = update_centroids(book.centroids, grads[name].reshape(-1)[kept], book.codes, lr)
            self.books[name] = (kept, replace(book, centroids=centroids))

    def write(self, params: Mapping[str, np.ndarray]) -> None:
        for name, (kept, book) in self.books.items():
            params[name].reshape(-1)[kept] = book.values()
