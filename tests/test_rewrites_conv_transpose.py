"""ConvTranspose rewritten into a Conv over a zero-inserted input (onnx_dns/rewrites/conv_transpose.py).

Each case runs `x -> Conv 1x1 (W) -> c -> ConvTranspose(ct.w, ct.b) -> y` and checks that the rewritten model
computes what onnxruntime's ConvTranspose kernel computes, and that one training step gives dL/dW, dL/d(ct.w) and
dL/d(ct.b) equal to central finite differences of onnxruntime's inference of the original.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from rewrite_harness import (C, H, N, chain_model, check_gradients, generate, run_on_x, train_step_gradients,
                             with_loss)

from onnx_dns.rewrites import rewrite_for_training, untrainable_message, untrainable_nodes

C_OUT = 4  # output channels per group


def case(id, spatial=(4, 5), kernel=3, group=1, bias=True, opset=17, **attrs):
    return pytest.param(dict(spatial=spatial, kernel=kernel, group=group, bias=bias, opset=opset, attrs=attrs),
                        id=id)


CASES = [
    case("2d-stride1"),
    case("2d-stride2-bias (DBNet/U-Net upsampling)", strides=[2, 2], kernel=2),
    case("2d-stride2-pads1-output_padding1", strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1], bias=False),
    case("2d-stride3-dilation2-asymmetric-pads", strides=[3, 2], dilations=[2, 1], pads=[1, 0, 2, 3]),
    case("2d-groups2-stride2", strides=[2, 2], group=2),
    case("2d-groups3-depthwise-like", group=3, kernel=2, strides=[2, 1]),
    case("2d-pads-larger-than-kernel-crop", pads=[3, 2, 3, 2], strides=[2, 2]),
    case("2d-auto_pad-SAME_UPPER", strides=[2, 2], auto_pad="SAME_UPPER", opset=11),
    case("2d-auto_pad-SAME_LOWER", strides=[2, 2], auto_pad="SAME_LOWER", opset=13),
    case("2d-auto_pad-VALID", strides=[2, 2], auto_pad="VALID"),
    case("2d-output_shape", strides=[2, 2], output_shape=[8, 9], opset=21),
    case("2d-output_shape-odd-total", strides=[3, 3], output_shape=[10, 12]),
    case("1d-stride2", spatial=(6,), strides=[2], output_padding=[1]),
    case("3d-stride2", spatial=(3, 2, 4), kernel=2, strides=[2, 1, 2], pads=[0, 1, 0, 1, 0, 0]),
]


def conv_transpose_model(c: dict, batch=N, spatial=None) -> onnx.ModelProto:
    dims = len(c["spatial"])
    rng = np.random.default_rng(4)
    params = {"ct.w": rng.standard_normal((C, C_OUT) + (c["kernel"],) * dims).astype(np.float32)}
    if c["bias"]:
        params["ct.b"] = rng.standard_normal(C_OUT * c["group"]).astype(np.float32)
    node = H("ConvTranspose", ["c", *params], ["y"], name="deconv", group=c["group"], **c["attrs"])
    return chain_model([node], params, spatial or c["spatial"], c["opset"], batch=batch)


def inputs(c: dict, seed: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((N, C, *c["spatial"])).astype(np.float32)


@pytest.mark.parametrize("c", CASES)
def test_rewrite_computes_what_onnxruntime_computes(c):
    original = conv_transpose_model(c)
    rewritten = rewrite_for_training(original).model
    onnx.checker.check_model(rewritten, full_check=True)
    assert "ConvTranspose" not in {n.op_type for n in rewritten.graph.node} and untrainable_nodes(rewritten) == []
    assert rewritten.graph.initializer == original.graph.initializer
    conv = [n for n in rewritten.graph.node if n.op_type == "Conv"][-1]
    assert conv.input[2:] == (["ct.b"] if c["bias"] else [])  # the bias stays a direct input
    for seed in (2, 5):
        x = inputs(c, seed)
        expected = run_on_x(original, x)
        got = run_on_x(rewritten, x)
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("c", CASES[1:7] + CASES[10:])
def test_rewritten_conv_transpose_trains_its_kernel_bias_and_what_is_before_it(c, tmp_path):
    original = conv_transpose_model(c)
    names = ["W", "ct.w"] + (["ct.b"] if c["bias"] else [])
    check_gradients(original, rewrite_for_training(original).model, inputs(c), names, tmp_path)


def test_the_kernel_is_read_under_its_own_name_by_ops_with_gradients():
    rewritten = rewrite_for_training(conv_transpose_model(CASES[4].values[0])).model
    readers = [n.op_type for n in rewritten.graph.node if "ct.w" in n.input]
    assert readers == ["Reshape"]
    flips = [n for n in rewritten.graph.node if n.op_type == "Gather"]
    assert len(flips) == 2  # one per kernel axis (Slice with step -1 fails in ORT's SliceGrad)


def test_the_original_conv_transpose_does_not_train_on_cpu(tmp_path):
    c = CASES[1].values[0]
    original = conv_transpose_model(c)
    y = run_on_x(original, inputs(c))
    generate(with_loss(original, np.ones(y.shape)), ["W", "ct.w"], tmp_path)
    with pytest.raises(Exception, match="ConvTransposeGrad"):
        train_step_gradients(tmp_path, inputs(c), ["W"])


def test_symbolic_spatial_sizes_are_refused_with_the_reason_and_a_symbolic_batch_is_fine(tmp_path):
    c = CASES[1].values[0]
    symbolic = conv_transpose_model(c, spatial=("h", "w"))
    assert not rewrite_for_training(symbolic).modified
    message = untrainable_message(symbolic, untrainable_nodes(symbolic))
    assert message.startswith("node deconv (ConvTranspose) has no gradient") and "has symbolic sizes" in message
    original = conv_transpose_model(c, batch="N")
    check_gradients(original, rewrite_for_training(original).model, inputs(c), ["W", "ct.w", "ct.b"], tmp_path)
