"""The interpolation matrix of one axis of an ONNX Resize, computed in numpy from the operator's definition.

Resize is separable: each resized axis of length n_in becomes n_out entries, each a weighted sum of input
entries along that axis, with weights that depend on the axis alone. So Y = X x_1 M_1 x_2 M_2 ... (M_a applied
along axis a), M_a of shape (n_out, n_in). For output index x along an axis:

1. x_original (float32, as onnxruntime computes it), with s the axis's scale, L = n_out:
   half_pixel (x + 0.5) / s - 0.5; pytorch_half_pixel the same, 0 when L = 1; half_pixel_symmetric
   offset + (x + 0.5) / s - 0.5 with offset = n_in / 2 * (1 - L / (s * n_in)); align_corners
   x * (n_in - 1) / (L - 1), 0 when L = 1; asymmetric x / s; tf_half_pixel_for_nn (x + 0.5) / s;
   tf_crop_and_resize start * (n_in - 1) + x * (end - start) * (n_in - 1) / (L - 1) (roi start/end; for L = 1
   (start + end) / 2 * (n_in - 1)), and outside [0, n_in - 1] the row is empty: the output is
   extrapolation_value there.
2. i0 = floor(x_original), r = x_original - i0 in (0, 1] (an integer x_original is taken as i0 = x - 1, r = 1).
   The kernel gives weights w_j for the neighbours i0 + start + j:
   nearest: two neighbours (i0, i0 + 1), weight 1 on the one the nearest_mode picks (round_prefer_floor: the
   second when r > 0.5, round_prefer_ceil: when r >= 0.5, floor: never unless r = 1, ceil: always);
   linear: (1 - r, r); cubic (coefficient a): the four Keys weights at distances 1 + r, r, 1 - r, 2 - r;
   with antialias (opset 18, downscaling, s' = min(s, 1)): the linear/cubic kernel widened by 1 / s' over
   2 - 2 * start neighbours, start = floor(-support / s') + 1, weights k(s' * (start + j - r)) normalized.
3. exclude_outside: weights of neighbours outside [0, n_in) become 0 and the rest are renormalized; the
   neighbour indices are then clamped to [0, n_in - 1] (edge padding) and the weights added into row x.
"""

from __future__ import annotations

import numpy as np

NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
COORDINATE_MODES = ("half_pixel", "pytorch_half_pixel", "half_pixel_symmetric", "align_corners", "asymmetric",
                    "tf_half_pixel_for_nn", "tf_crop_and_resize")


def original_coordinates(mode: str, n_in: int, n_out: int, scale: float, roi: tuple[float, float]) -> np.ndarray:
    """x_original of every output index along one axis (float32 arithmetic, as onnxruntime's kernel)."""
    f = np.float32
    x, s, length = np.arange(n_out, dtype=f), f(scale), f(n_in)
    if mode in ("half_pixel", "pytorch_half_pixel"):
        out = (x + f(0.5)) / s - f(0.5)
        return np.zeros_like(x) if mode == "pytorch_half_pixel" and n_out == 1 else out
    if mode == "half_pixel_symmetric":
        adjustment = f(n_out) / (s * length)
        offset = length / f(2) * (f(1) - adjustment)
        return offset + (x + f(0.5)) / s - f(0.5)
    if mode == "align_corners":
        return np.zeros_like(x) if n_out == 1 else x * (length - f(1)) / f(n_out - 1)
    if mode == "asymmetric":
        return x / s
    if mode == "tf_half_pixel_for_nn":
        return (x + f(0.5)) / s
    if mode == "tf_crop_and_resize":
        start, end = f(roi[0]), f(roi[1])
        if n_out == 1:
            return np.full_like(x, (start + end) / f(2) * (length - f(1)))
        return start * (length - f(1)) + x * (end - start) * (length - f(1)) / f(n_out - 1)
    raise ValueError(f"unknown coordinate_transformation_mode {mode}")


def _cubic(d: np.ndarray, a: float) -> np.ndarray:
    d = np.abs(d)
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(d <= 1, near, np.where(d < 2, far, 0.0))


def kernel(mode: str, r: float, scale: float, nearest_mode: str, cubic_a: float,
           antialias: bool) -> tuple[int, np.ndarray]:
    """(start, weights) of the neighbours i0 + start + j of one output entry (see the module docstring)."""
    if mode == "nearest":
        second = {"round_prefer_floor": r > 0.5, "round_prefer_ceil": r >= 0.5, "floor": r == 1,
                  "ceil": True}[nearest_mode]
        return 0, np.array([0.0, 1.0]) if second else np.array([1.0, 0.0])
    support = 1.0 if mode == "linear" else 2.0
    if antialias and scale < 1:
        start = int(np.floor(-support / scale)) + 1
        distances = scale * (np.arange(start, 2 - start) - r)
        weights = np.clip(1 - np.abs(distances), 0, 1) if mode == "linear" else _cubic(distances, cubic_a)
        return start, weights / weights.sum()
    if mode == "linear":
        return 0, np.array([1 - r, r])
    return -1, _cubic(np.array([1 + r, r, 1 - r, 2 - r]), cubic_a)


def axis_matrix(n_in: int, n_out: int, scale: float, roi: tuple[float, float], *, mode: str, coordinates: str,
                nearest_mode: str = "round_prefer_floor", cubic_a: float = -0.75, exclude_outside: bool = False,
                antialias: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(M, inside): M of shape (n_out, n_in) in float64, inside[x] False where the output is extrapolated."""
    matrix = np.zeros((n_out, n_in))
    inside = np.ones(n_out, bool)
    for x, x_original in enumerate(original_coordinates(coordinates, n_in, n_out, scale, roi)):
        x_original = float(x_original)
        if coordinates == "tf_crop_and_resize" and not 0 <= x_original <= n_in - 1:
            inside[x] = False
            continue
        i0 = int(np.floor(x_original))
        r = x_original - i0
        if r == 0:
            i0, r = i0 - 1, 1.0
        start, weights = kernel(mode, r, scale, nearest_mode, cubic_a, antialias)
        neighbours = i0 + start + np.arange(len(weights))
        if exclude_outside:
            weights = np.where((neighbours >= 0) & (neighbours < n_in), weights, 0.0)
            weights = weights / weights.sum()
        np.add.at(matrix[x], np.clip(neighbours, 0, n_in - 1), weights)
    return matrix, inside
