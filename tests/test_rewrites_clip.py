"""Clip before opset 12: its gradient (ClipGrad) needs LessOrEqual, which opset 11 lacks, so Clip and the Clip
that the HardSigmoid rewrite writes become Min/Max there; from opset 12 Clip trains as it is."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from graphs import make_model, tensor, value
from onnx import helper
from rewrite_harness import run_on_x

import onnx_dns
from onnx_dns.rewrites import rewrite_for_training


def clip_model(opset: int) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [tensor("w", rng.standard_normal((4, 1, 3, 3)).astype(np.float32)),
             tensor("lo", np.array(-0.5, np.float32)), tensor("hi", np.array(0.8, np.float32)),
             tensor("fc", rng.standard_normal((4 * 36, 3)).astype(np.float32))]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["c", "lo", "hi"], ["k"]),
             helper.make_node("HardSigmoid", ["k"], ["s"]),
             helper.make_node("Flatten", ["s"], ["f"]),
             helper.make_node("MatMul", ["f", "fc"], ["y"])]
    return make_model(nodes, [value("x", ["N", 1, 6, 6])], [value("y", ["N", 3])], inits, opset=opset)


@pytest.mark.parametrize("opset", [11, 13])
def test_clip_is_rewritten_only_before_opset_12_and_computes_the_same(opset):
    model = clip_model(opset)
    rewritten = rewrite_for_training(model).model
    ops = {n.op_type for n in rewritten.graph.node}
    assert ("Clip" in ops) == (opset >= 12) and ("Min" in ops) == (opset < 12)
    x = np.random.default_rng(1).standard_normal((5, 1, 6, 6)).astype(np.float32) * 3
    np.testing.assert_array_equal(run_on_x(rewritten, x), run_on_x(model, x))


def test_an_opset_11_model_with_clip_and_hard_sigmoid_trains():
    x = np.random.default_rng(2).standard_normal((128, 1, 6, 6)).astype(np.float32)
    result = onnx_dns.compress(clip_model(11), {"x": x}, target="2x", iterations=20, batch_size=16,
                               max_accuracy_drop="none")
    assert result.compression == pytest.approx(2.0, rel=0.05)
    assert "Clip" in {n.op_type for n in result.model.graph.node}  # the written model keeps its operators
