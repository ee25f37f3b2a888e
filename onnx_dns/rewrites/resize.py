"""Resize (opsets 11-21) as constant interpolation matrices along each resized axis (ResizeGrad is CUDA-only).

Resize is separable (resize_tables.py gives the matrix M_a of each axis a from the operator's definition), so::

    Y = X x_a1 M_a1 x_a2 M_a2 ...  (+ extrapolation_value * (1 - inside_a1 (x) inside_a2 ...))

where "x_a M" multiplies along axis a: MatMul(X, M^T) for the last axis, MatMul(M, X) for the one before it
(MatMul broadcasts the 2-D matrix over the leading axes), and Transpose - MatMul - Transpose for any other. An
axis whose matrix is the identity (scale 1 outside tf_crop_and_resize) is left out. In nearest mode each row
of M holds a single 1, and the axis becomes a Gather of constant indices instead (exact, and cheaper). The last
term, only for tf_crop_and_resize with a nonzero extrapolation_value, is a constant added where any coordinate
falls outside the region of interest (the rows of M are empty there).

Two places where onnxruntime's kernel (which the written model runs on) and the ONNX reference implementation
disagree, and this rewrite follows onnxruntime: an axis given a scale of 1 is left as it is even in
tf_crop_and_resize (the reference crops it to its roi); and nearest rounding at an exact tie (x_original an
integer or half-integer in exact arithmetic) can fall either way in float32 (measured: half_pixel_symmetric,
floor, 5 -> 3), where onnxruntime and the reference differ too. Negative `axes` are refused: onnxruntime 1.19
leaves such a Resize's input unresized (measured), the spec counts them from the end.

Sizes: with `scales`, an axis of length n becomes floor(n * s) long (the inferred output size when known) and s
enters the coordinate transform; with `sizes`, s = n_out / n, and with keep_aspect_ratio_policy not_larger /
not_smaller one s = min / max over the axes, n_out = round(s * n). `axes` (opset 18) restricts scales, sizes
and roi to the listed axes. scales and roi (tf_crop_and_resize) must be constants; sizes too, or computed from
shapes in the graph so that shape inference (with value propagation, opset 15+) knows the output sizes; the
input's sizes on the resized axes must be known numbers (training pins the input sizes); otherwise the node is
refused.
"""

from __future__ import annotations

import numpy as np
import onnx

from onnx_dns.graph import attribute
from onnx_dns.rewrites.emitter import Emitter, Skip, text_attribute
from onnx_dns.rewrites.resize_tables import COORDINATE_MODES, NEAREST_MODES, axis_matrix


def _options(node: onnx.NodeProto) -> dict:
    options = {
        "mode": text_attribute(node, "mode", "nearest"),
        "coordinates": text_attribute(node, "coordinate_transformation_mode", "half_pixel"),
        "nearest_mode": text_attribute(node, "nearest_mode", "round_prefer_floor"),
        "cubic_a": float(attribute(node, "cubic_coeff_a", -0.75)),
        "exclude_outside": bool(attribute(node, "exclude_outside", 0)),
        "antialias": bool(attribute(node, "antialias", 0)),
    }
    if options["mode"] not in ("nearest", "linear", "cubic"):
        raise Skip(f"its mode {options['mode']} is unknown")
    if options["coordinates"] not in COORDINATE_MODES:
        raise Skip(f"its coordinate_transformation_mode {options['coordinates']} is unknown")
    if options["nearest_mode"] not in NEAREST_MODES:
        raise Skip(f"its nearest_mode {options['nearest_mode']} is unknown")
    options["antialias"] &= options["mode"] != "nearest"
    return options


def _given(e: Emitter, node: onnx.NodeProto, index: int) -> np.ndarray | None:
    value = e.constant(node.input[index]) if len(node.input) > index else None
    return None if value is None or value.size == 0 else value.reshape(-1)


def _sizes(e: Emitter, node: onnx.NodeProto, axes: list[int]) -> np.ndarray | None:
    """The constant sizes input, or, when it is computed in the graph (Shape -> ... -> Concat, as older torch
    exports write it), the output sizes shape inference finds on `axes` (stretch policy only)."""
    if len(node.input) < 4 or not node.input[3] or node.input[3] in e.facts.constants:
        return _given(e, node, 3)
    inferred = e.facts.shapes.get(node.output[0])
    policy = text_attribute(node, "keep_aspect_ratio_policy", "stretch")
    if policy != "stretch" or inferred is None or any(inferred[a] is None for a in axes):
        raise Skip(f"its input {node.input[3]} is computed in the graph and its output sizes are unknown")
    return np.array([inferred[a] for a in axes], np.int64)


def _axis_sizes(e: Emitter, node: onnx.NodeProto, x: str, rank: int, crop: bool):
    """[(axis, n_in, n_out, scale, roi)] of the axes that may change."""
    axes = list(attribute(node, "axes", range(rank)))
    if any(a < 0 for a in axes):
        raise Skip(f"its axes {axes} count from the end, which onnxruntime 1.19 ignores (it leaves the input as it "
                   "is) and the ONNX spec does not; write them as non-negative axes")
    scales, sizes = _given(e, node, 2), _sizes(e, node, axes)
    roi = _given(e, node, 1) if crop else None
    if crop and roi is None:
        raise Skip("tf_crop_and_resize has no roi")
    rois = [(0.0, 1.0)] * len(axes) if roi is None else list(zip(roi[:len(axes)], roi[len(axes):]))
    if scales is not None:
        moving = [i for i in range(len(axes)) if scales[i] != 1]
        n_in = dict(zip(moving, e.static_shape(x, [axes[i] for i in moving])))
        inferred = e.facts.shapes.get(node.output[0])
        n_out = {i: inferred[axes[i]] if inferred and inferred[axes[i]] else
                 int(np.float32(scales[i]) * np.float32(n_in[i])) for i in moving}
        return [(axes[i], n_in[i], n_out[i], float(np.float32(scales[i])), rois[i]) for i in moving]
    if sizes is None:
        raise Skip("it has neither scales nor sizes")
    n_in = e.static_shape(x, axes)
    ratios = [float(np.float32(o) / np.float32(n)) for o, n in zip(sizes, n_in)]
    policy = text_attribute(node, "keep_aspect_ratio_policy", "stretch")
    if policy in ("not_larger", "not_smaller"):
        common = min(ratios) if policy == "not_larger" else max(ratios)
        ratios = [common] * len(axes)
        sizes = [int(common * n + 0.5) for n in n_in]
    elif policy != "stretch":
        raise Skip(f"its keep_aspect_ratio_policy {policy} is unknown")
    return [(a, n, int(o), s, r) for a, n, o, s, r in zip(axes, n_in, sizes, ratios, rois)]


def resize(e: Emitter, node: onnx.NodeProto) -> None:
    x = node.input[0]
    dtype = e.float_dtype(x)
    rank = e.rank(x)
    options = _options(node)
    crop = options["coordinates"] == "tf_crop_and_resize"
    steps, insides = [], []
    for axis, n_in, n_out, scale, roi in _axis_sizes(e, node, x, rank, crop):
        matrix, inside = axis_matrix(n_in, n_out, scale, roi, **options)
        if n_in != n_out or not np.array_equal(matrix, np.eye(n_in)) or not inside.all():
            steps.append((axis, matrix))
            insides.append((axis, inside))
    extrapolation = float(attribute(node, "extrapolation_value", 0.0))
    outside = _outside(insides, rank, extrapolation) if crop else None
    current = x
    for i, (axis, matrix) in enumerate(steps):
        last = i == len(steps) - 1 and outside is None
        current = _along(e, current, axis, rank, matrix, dtype, f"axis{axis}", node.output[0] if last else None)
    if outside is not None:
        e.op("Add", [current, e.const(outside.astype(dtype), "extrapolated")], "extrapolate", output=node.output[0])
    elif not steps:
        e.op("Identity", [x], "identity", output=node.output[0])


def _outside(insides: list, rank: int, value: float) -> np.ndarray | None:
    """value where any coordinate is extrapolated, 0 elsewhere, shaped to broadcast against Y; None if all 0."""
    if value == 0 or all(inside.all() for _, inside in insides):
        return None
    everywhere = np.ones([1] * rank, bool)
    for axis, inside in insides:
        shape = [1] * rank
        shape[axis] = len(inside)
        everywhere = everywhere & inside.reshape(shape)
    return np.where(everywhere, 0.0, value)


def _along(e: Emitter, x: str, axis: int, rank: int, matrix: np.ndarray, dtype, what: str,
           output: str | None) -> str:
    """Apply the (n_out, n_in) matrix along `axis` of x (a Gather when it only picks entries)."""
    if np.all((matrix == 0) | (matrix == 1)) and np.all(matrix.sum(axis=1) == 1):
        return e.gather(x, np.argmax(matrix, axis=1), axis, what, output)
    if axis == rank - 1:
        return e.op("MatMul", [x, e.const(matrix.T.astype(dtype), what + "_matrix")], what, output)
    if axis == rank - 2:
        return e.op("MatMul", [e.const(matrix.astype(dtype), what + "_matrix"), x], what, output)
    perm = list(range(rank))
    perm[axis], perm[-1] = perm[-1], perm[axis]
    moved = e.transpose(x, perm, what + "_moved")
    product = e.op("MatMul", [moved, e.const(matrix.T.astype(dtype), what + "_matrix")], what)
    return e.transpose(product, perm, what + "_back", output)
