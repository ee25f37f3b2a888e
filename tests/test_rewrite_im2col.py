"""A dense Conv as im2col and one MatMul (onnx_dns/rewrites/im2col.py), a rewrite for speed only.

Each case runs `x -> Conv 1x1 (W) -> c -> Conv(k.w, k.b) -> y` and checks that the rewritten model computes what
onnxruntime's Conv kernel computes, and that one training step gives dL/dW, dL/d(k.w) and dL/d(k.b) equal to
central finite differences of onnxruntime's inference of the original. The harness's 6 channels are below the
channel count from which the rewrite applies, so the tests lower it; the last tests check where it stays off.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from rewrite_harness import C, H, chain_model, check_gradients, run_on_x

from onnx_dns.rewrites import im2col, rewrite_for_training, untrainable_nodes

FILTERS = 4


def case(id, spatial=(7, 6), kernel=(3, 3), bias=True, **attrs):
    return pytest.param(dict(spatial=spatial, kernel=kernel, bias=bias, attrs=attrs), id=id)


CASES = [
    case("3x3-pads1-bias (VGG)", pads=[1, 1, 1, 1]),
    case("5x5-stride2x1-pads2-no-bias", spatial=(8, 5), kernel=(5, 5), strides=[2, 1], pads=[2, 2, 2, 2], bias=False),
    case("3x3-stride2-dilation2-asymmetric-pads", strides=[2, 2], dilations=[2, 1], pads=[1, 0, 2, 1]),
    case("3x2-auto_pad-VALID", kernel=(3, 2), auto_pad="VALID"),
    case("1x3-no-pads", kernel=(1, 3)),
]


@pytest.fixture
def few_channels(monkeypatch):
    monkeypatch.setattr(im2col, "MIN_CHANNELS", 1)


def conv_model(c: dict, group: int = 1, filters: int = FILTERS) -> onnx.ModelProto:
    rng = np.random.default_rng(4)
    params = {"k.w": rng.standard_normal((filters, C // group, *c["kernel"])).astype(np.float32)}
    if c["bias"]:
        params["k.b"] = rng.standard_normal(filters).astype(np.float32)
    node = H("Conv", ["c", *params], ["y"], name="k", group=group, kernel_shape=list(c["kernel"]), **c["attrs"])
    return chain_model([node], params, c["spatial"], 17)


def inputs(c: dict, seed: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((2, C, *c["spatial"])).astype(np.float32)


def convs(model: onnx.ModelProto) -> list[str]:
    return [n.name for n in model.graph.node if n.op_type == "Conv"]


@pytest.mark.parametrize("c", CASES)
def test_rewrite_computes_what_onnxruntime_computes(c, few_channels):
    original = conv_model(c)
    rewritten = rewrite_for_training(original, speed=True).model
    onnx.checker.check_model(rewritten, full_check=True)
    assert convs(rewritten) == ["conv"] and untrainable_nodes(rewritten) == []  # the 1x1 Conv before it stays
    assert rewritten.graph.initializer == original.graph.initializer
    for seed in (2, 5):
        expected = run_on_x(original, inputs(c, seed))
        got = run_on_x(rewritten, inputs(c, seed))
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("c", CASES[:3])
def test_rewritten_conv_trains_its_kernel_bias_and_what_is_before_it(c, tmp_path, few_channels):
    original = conv_model(c)
    names = ["W", "k.w"] + (["k.b"] if c["bias"] else [])
    check_gradients(original, rewrite_for_training(original, speed=True).model, inputs(c), names, tmp_path)


def test_the_kernel_is_read_under_its_own_name_and_one_slice_per_tap(few_channels):
    rewritten = rewrite_for_training(conv_model(CASES[1].values[0]), speed=True).model
    assert [n.op_type for n in rewritten.graph.node if "k.w" in n.input] == ["Transpose"]
    assert sum(n.op_type == "Slice" for n in rewritten.graph.node) == 25
    assert sum(n.op_type == "MatMul" for n in rewritten.graph.node) == 1


def test_off_by_default(few_channels):
    result = rewrite_for_training(conv_model(CASES[0].values[0]))
    assert not result.modified and convs(result.model) == ["conv", "k"]


def test_convs_with_few_input_channels_stay():
    assert im2col.MIN_CHANNELS > C
    result = rewrite_for_training(conv_model(CASES[0].values[0]), speed=True)
    assert not result.modified


@pytest.mark.parametrize("group", [2, C])
def test_grouped_convs_stay(group, few_channels):
    result = rewrite_for_training(conv_model(CASES[0].values[0], group=group, filters=C), speed=True)
    assert not result.modified


def test_convs_whose_columns_would_be_too_large_stay(monkeypatch, few_channels):
    c = CASES[0].values[0]  # 3x3 taps of 6 channels at 7x6: 9 * 6 * 42 floats a sample
    monkeypatch.setattr(im2col, "MAX_COLUMN_BYTES", 9 * C * 42 * 4 - 1)
    assert not rewrite_for_training(conv_model(c), speed=True).modified
    monkeypatch.setattr(im2col, "MAX_COLUMN_BYTES", 9 * C * 42 * 4)
    assert rewrite_for_training(conv_model(c), speed=True).modified
