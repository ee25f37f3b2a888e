"""Depthwise Conv as shifted-slice multiply-adds (onnx_dns/rewrites/depthwise.py), a rewrite for speed only.

Each case runs `x -> Conv 1x1 (W) -> c -> depthwise Conv(dw.w, dw.b) -> y` and checks that the rewritten model
computes what onnxruntime's Conv kernel computes, and that one training step gives dL/dW, dL/d(dw.w) and
dL/d(dw.b) equal to central finite differences of onnxruntime's inference of the original. The rewrite is off
by default (it measured slower than onnxruntime's ConvGrad) and leaves every other Conv alone.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from rewrite_harness import C, H, chain_model, check_gradients, run_on_x

from onnx_dns.rewrites import rewrite_for_training, untrainable_nodes


def case(id, spatial=(7, 6), kernel=(3, 3), bias=True, **attrs):
    return pytest.param(dict(spatial=spatial, kernel=kernel, bias=bias, attrs=attrs), id=id)


CASES = [
    case("3x3-pads1-bias (MobileNet)", pads=[1, 1, 1, 1]),
    case("5x5-stride2x1-pads2 (PP-OCR recognizer)", spatial=(8, 5), kernel=(5, 5), strides=[2, 1], pads=[2, 2, 2, 2],
         bias=False),
    case("3x3-stride2-dilation2-asymmetric-pads", strides=[2, 2], dilations=[2, 1], pads=[1, 0, 2, 1]),
    case("3x2-auto_pad-VALID", kernel=(3, 2), auto_pad="VALID"),
]


def depthwise_model(c: dict, group: int = C, filters: int = 1) -> onnx.ModelProto:
    rng = np.random.default_rng(4)
    params = {"dw.w": rng.standard_normal((C, filters, *c["kernel"])).astype(np.float32)}
    if c["bias"]:
        params["dw.b"] = rng.standard_normal(C).astype(np.float32)
    node = H("Conv", ["c", *params], ["y"], name="dw", group=group, kernel_shape=list(c["kernel"]), **c["attrs"])
    return chain_model([node], params, c["spatial"], 17)


def inputs(c: dict, seed: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((2, C, *c["spatial"])).astype(np.float32)


def depthwise_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if n.op_type == "Conv" and n.name == "dw"]


@pytest.mark.parametrize("c", CASES)
def test_rewrite_computes_what_onnxruntime_computes(c):
    original = depthwise_model(c)
    rewritten = rewrite_for_training(original, speed=True).model
    onnx.checker.check_model(rewritten, full_check=True)
    assert depthwise_nodes(rewritten) == [] and untrainable_nodes(rewritten) == []
    assert rewritten.graph.initializer == original.graph.initializer
    for seed in (2, 5):
        expected = run_on_x(original, inputs(c, seed))
        got = run_on_x(rewritten, inputs(c, seed))
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("c", CASES)
def test_rewritten_depthwise_conv_trains_its_kernel_bias_and_what_is_before_it(c, tmp_path):
    original = depthwise_model(c)
    names = ["W", "dw.w"] + (["dw.b"] if c["bias"] else [])
    check_gradients(original, rewrite_for_training(original, speed=True).model, inputs(c), names, tmp_path)


def test_the_kernel_is_read_under_its_own_name_and_one_slice_per_tap():
    rewritten = rewrite_for_training(depthwise_model(CASES[1].values[0]), speed=True).model
    assert [n.op_type for n in rewritten.graph.node if "dw.w" in n.input] == ["Reshape"]
    assert sum(n.op_type == "Slice" for n in rewritten.graph.node) == 25


def test_off_by_default_the_depthwise_conv_stays():
    original = depthwise_model(CASES[0].values[0])
    result = rewrite_for_training(original)
    assert not result.modified and len(depthwise_nodes(result.model)) == 1


@pytest.mark.parametrize("group,filters", [(1, C), (2, C // 2), (C // 2, 2)])
def test_convs_that_are_not_one_filter_per_channel_stay(group, filters):
    c = CASES[0].values[0]
    model = depthwise_model(c, group=group, filters=filters)
    result = rewrite_for_training(model, speed=True)
    assert not result.modified and len(depthwise_nodes(result.model)) == 1
