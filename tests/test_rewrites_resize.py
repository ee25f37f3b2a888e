"""Resize rewritten into constant Gathers / interpolation MatMuls (onnx_dns/rewrites/resize.py).

Each case runs `x -> Conv 1x1 (W) -> c -> Resize -> y` and checks that the rewritten model computes what
onnxruntime's Resize kernel computes (and what the ONNX reference implementation computes, where the two agree),
that one training step of the rewritten model gives dL/dW equal to central finite differences of onnxruntime's
inference of the original, and that the original fails on CPU.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx.reference import ReferenceEvaluator
from rewrite_harness import (C, H, N, chain_model, check_gradients, generate, run_on_x, train_step_gradients,
                             with_loss)

from onnx_dns.rewrites import rewrite_for_training, untrainable_message, untrainable_nodes
from onnx_dns.rewrites.resize_tables import axis_matrix

SPATIAL = (4, 5)


def case(id, opset=19, scales=None, sizes=None, roi=None, spatial=SPATIAL, reference=True, **attrs):
    """reference: whether the ONNX reference implementation can run it (it fails on the empty roi of opset 11-12
    and lacks tf_half_pixel_for_nn)."""
    return pytest.param(dict(opset=opset, scales=scales, sizes=sizes, roi=roi, spatial=spatial,
                             reference=reference and opset >= 13, attrs=attrs), id=id)


NEAREST = [
    case("nearest-asymmetric-floor-x2-opset11 (YOLOv8)", 11, [1, 1, 2, 2], mode="nearest",
         coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
    case("nearest-asymmetric-floor-x2-opset21", 21, [1, 1, 2, 2], mode="nearest",
         coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
    case("nearest-default-x1.5x0.6-opset13", 13, [1, 1, 1.5, 0.6], mode="nearest"),
    case("nearest-pytorch_half_pixel-round_prefer_ceil-sizes", 17, sizes=[N, C, 7, 3], mode="nearest",
         coordinate_transformation_mode="pytorch_half_pixel", nearest_mode="round_prefer_ceil"),
    case("nearest-align_corners-ceil-sizes", 17, sizes=[N, C, 9, 2], mode="nearest",
         coordinate_transformation_mode="align_corners", nearest_mode="ceil"),
    case("nearest-tf_half_pixel_for_nn-opset11", 11, [1, 1, 2, 1.6], mode="nearest",
         coordinate_transformation_mode="tf_half_pixel_for_nn", reference=False),
    case("nearest-1d-round_prefer_ceil", 17, [1, 1, 2.5], spatial=(5,), mode="nearest",
         nearest_mode="round_prefer_ceil"),
    case("nearest-half_pixel_symmetric-opset19", 19, [1, 1, 2.5, 0.8], mode="nearest",
         coordinate_transformation_mode="half_pixel_symmetric"),
]
LINEAR = [
    case("linear-half_pixel-x2-opset13", 13, [1, 1, 2, 2], mode="linear"),
    case("linear-align_corners-sizes-opset11", 11, sizes=[N, C, 7, 9], mode="linear",
         coordinate_transformation_mode="align_corners"),
    case("linear-pytorch_half_pixel-x0.5", 17, [1, 1, 0.5, 0.5], mode="linear",
         coordinate_transformation_mode="pytorch_half_pixel"),
    case("linear-asymmetric-x1.7x2.3", 17, [1, 1, 1.7, 2.3], mode="linear",
         coordinate_transformation_mode="asymmetric"),
    case("linear-half_pixel_symmetric-opset21", 21, [1, 1, 1.5, 2.5], mode="linear",
         coordinate_transformation_mode="half_pixel_symmetric"),
    case("linear-antialias-x0.5-opset18", 18, [1, 1, 0.5, 0.6], mode="linear", antialias=1),
    case("linear-tf_crop_and_resize-extrapolation", 17, [1, 1, 2, 1.6], roi=[0, 0, 0.1, -0.2, 1, 1, 0.8, 1.3],
         mode="linear", coordinate_transformation_mode="tf_crop_and_resize", extrapolation_value=0.5),
    case("linear-axes-opset18", 18, [2.0, 1.5], mode="linear", axes=[2, 3]),
    case("linear-axes-sizes-one-axis-opset18", 18, sizes=[8], mode="linear", axes=[3]),
    case("linear-not_larger-opset18", 18, sizes=[9, 7], mode="linear", axes=[2, 3],
         keep_aspect_ratio_policy="not_larger"),
    case("linear-not_smaller-opset18", 18, sizes=[9, 7], mode="linear", axes=[2, 3],
         keep_aspect_ratio_policy="not_smaller"),
    case("linear-3d-trilinear", 17, [1, 1, 2, 1.5, 2], spatial=(3, 4, 2), mode="linear"),

]
CUBIC = [
    case("cubic-half_pixel-x2", 17, [1, 1, 2, 2], mode="cubic"),
    case("cubic-a-0.5-align_corners-sizes", 17, sizes=[N, C, 6, 8], mode="cubic", cubic_coeff_a=-0.5,
         coordinate_transformation_mode="align_corners"),
    case("cubic-exclude_outside-x1.5", 17, [1, 1, 1.5, 1.5], mode="cubic", exclude_outside=1),
    case("cubic-antialias-x0.5-opset18", 18, [1, 1, 0.5, 0.6], mode="cubic", antialias=1),
]
CASES = NEAREST + LINEAR + CUBIC


def resize_model(c: dict, batch=N, spatial=None) -> onnx.ModelProto:
    """x -> Conv -> c -> Resize(c, roi, scales, sizes as the case gives them) -> y"""
    params, inputs = {}, ["c", "", "", ""]
    if c["opset"] < 13:  # roi and scales are required inputs there, empty when unused
        params = {"roi": np.zeros(0, np.float32), "scales": np.zeros(0, np.float32)}
        inputs = ["c", "roi", "scales", ""]
    for index, key, dtype in ((1, "roi", np.float32), (2, "scales", np.float32), (3, "sizes", np.int64)):
        if c[key] is not None:
            params[key] = np.array(c[key], dtype)
            inputs[index] = key
    while not inputs[-1]:
        inputs.pop()
    node = H("Resize", inputs, ["y"], name="resize", **c["attrs"])
    return chain_model([node], params, spatial or c["spatial"], c["opset"], batch=batch)


def inputs(c: dict, seed: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((N, C, *c["spatial"])).astype(np.float32)


@pytest.mark.parametrize("c", CASES)
def test_rewrite_computes_what_onnxruntime_and_the_onnx_reference_compute(c):
    original = resize_model(c)
    rewritten = rewrite_for_training(original).model
    onnx.checker.check_model(rewritten, full_check=True)
    assert "Resize" not in {n.op_type for n in rewritten.graph.node} and untrainable_nodes(rewritten) == []
    assert rewritten.graph.initializer == original.graph.initializer
    x = inputs(c)
    expected = run_on_x(original, x)
    got = run_on_x(rewritten, x)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    if c["reference"]:  # on one image of one channel: the reference implementation is slow
        sizes = c["sizes"]
        if sizes is not None and len(sizes) == len(c["spatial"]) + 2:
            sizes = [1, 1, *sizes[2:]]
        single = resize_model({**c, "sizes": sizes}, batch=1)
        single.graph.node[0].CopyFrom(H("Identity", ["x"], ["c"], name="conv"))
        single.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 1
        image = x[:1, :1]
        np.testing.assert_allclose(ReferenceEvaluator(single).run(None, {"x": image})[0], run_on_x(single, image),
                                   rtol=1e-4, atol=1e-4)


def test_nearest_is_a_gather_and_linear_a_matmul_on_each_resized_axis_only():
    nearest = rewrite_for_training(resize_model(NEAREST[0].values[0])).model
    assert [n.op_type for n in nearest.graph.node if n.op_type != "Constant"] == ["Conv", "Gather", "Gather"]
    linear = rewrite_for_training(resize_model(LINEAR[7].values[0])).model  # axes [2, 3]
    assert [n.op_type for n in linear.graph.node if n.op_type != "Constant"] == ["Conv", "MatMul", "MatMul"]
    one_axis = rewrite_for_training(resize_model(LINEAR[8].values[0])).model
    assert [n.op_type for n in one_axis.graph.node if n.op_type != "Constant"] == ["Conv", "MatMul"]


def test_interpolation_rows_sum_to_one_and_pick_the_right_neighbours():
    matrix, inside = axis_matrix(4, 8, 2.0, (0, 1), mode="linear", coordinates="half_pixel")
    np.testing.assert_allclose(matrix.sum(axis=1), 1)
    np.testing.assert_allclose(matrix[1], [0.75, 0.25, 0, 0])  # x_original = 0.25
    np.testing.assert_allclose(matrix[0], [1, 0, 0, 0])  # x_original = -0.25, clamped
    matrix, _ = axis_matrix(5, 3, 5 / 3, (0, 1), mode="nearest", coordinates="asymmetric", nearest_mode="ceil")
    np.testing.assert_array_equal(matrix.argmax(axis=1), [0, 1, 2])  # ceil(0), ceil(0.6), ceil(1.2)
    assert inside.all()


GRADIENT_CASES = [c for c in CASES if c.id.split("-")[0] in ("nearest", "linear", "cubic")][::2]


@pytest.mark.parametrize("c", GRADIENT_CASES)
def test_rewritten_resize_trains_with_the_gradient_of_the_original(c, tmp_path):
    original = resize_model(c)
    check_gradients(original, rewrite_for_training(original).model, inputs(c), ["W"], tmp_path)


def test_a_symbolic_batch_is_fine_with_scales(tmp_path):
    c = LINEAR[0].values[0]
    original = resize_model(c, batch="N")
    check_gradients(original, rewrite_for_training(original).model, inputs(c), ["W"], tmp_path)


def test_the_original_resize_does_not_train_on_cpu(tmp_path):
    c = LINEAR[0].values[0]
    original = resize_model(c)
    y = run_on_x(original, inputs(c))
    generate(with_loss(original, np.ones(y.shape)), ["W"], tmp_path)
    with pytest.raises(Exception, match="ResizeGrad"):
        train_step_gradients(tmp_path, inputs(c), ["W"])


def test_what_cannot_be_rewritten_is_refused_with_the_reason():
    c = LINEAR[0].values[0]
    symbolic = resize_model(c, spatial=("h", "w"))
    assert not rewrite_for_training(symbolic).modified
    message = untrainable_message(symbolic, untrainable_nodes(symbolic))
    assert message.startswith("node resize (Resize) has no gradient") and "has symbolic sizes" in message
    computed = resize_model(c)
    computed.graph.node[1].input[2] = "scales_computed"
    computed.graph.node.insert(1, H("Identity", ["scales"], ["scales_computed"], name="copy"))
    assert not rewrite_for_training(computed).modified
    assert "scales_computed is computed in the graph" in untrainable_message(computed, untrainable_nodes(computed))
    negative = resize_model(dict(LINEAR[8].values[0], attrs={"mode": "linear", "axes": [-1]}))
    assert not rewrite_for_training(negative).modified
    assert "count from the end" in untrainable_message(negative, untrainable_nodes(negative))


def test_sizes_computed_from_the_input_shape_as_older_torch_exports_write_them(tmp_path):
    """sizes = Concat(Shape(c)[:2], Shape(c)[2:] * 2): shape inference with value propagation gives the sizes.
    (When the Resize writes a graph output, its declared sizes are what inference reports: then it is refused.)"""
    c = dict(LINEAR[0].values[0], scales=None, sizes=[N, C, 8, 10], opset=17)  # onnx propagates Shape from 15
    model = resize_model(c)
    del model.graph.initializer[-1]  # the constant sizes, replaced by computed ones
    ints = {"two": [2], "zero": [0], "mid": [2], "end": [4]}
    model.graph.initializer.extend(onnx.numpy_helper.from_array(np.array(v, np.int64), k) for k, v in ints.items())
    shape_nodes = [H("Shape", ["c"], ["shape"], name="shape"), H("Slice", ["shape", "zero", "mid"], ["nc"], name="nc"),
                   H("Slice", ["shape", "mid", "end"], ["hw"], name="hw"), H("Mul", ["hw", "two"], ["hw2"], name="x2"),
                   H("Concat", ["nc", "hw2"], ["sizes_computed"], name="sizes", axis=0)]
    for i, node in enumerate(shape_nodes):
        model.graph.node.insert(1 + i, node)
    model.graph.node[-1].input[3] = "sizes_computed"
    model.graph.node[-1].output[0] = "resized"  # an intermediate value, as in a real model
    model.graph.node.append(H("Neg", ["resized"], ["y"], name="neg"))  # linear: exact finite differences
    result = rewrite_for_training(model)
    assert result.modified and "Resize" not in {n.op_type for n in result.model.graph.node}
    x = inputs(c)
    expected = run_on_x(model, x)
    assert expected.shape == (N, C, 8, 10)
    np.testing.assert_allclose(run_on_x(result.model, x), expected, rtol=1e-5, atol=1e-5)
    check_gradients(model, result.model, x, ["W"], tmp_path)
