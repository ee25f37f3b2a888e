"""Declared shapes for tensors sized by a computed shape (tf2onnx's broadcasts): the gradient of a broadcast
operand is summed over the right axes only with them (onnx_dns/rewrites/shape_hints.py)."""

from __future__ import annotations

import numpy as np
import pytest
from rewrite_harness import C, H, chain_model, check_gradients

from onnx_dns.rewrites.shape_hints import declare_propagated_shapes

SPATIAL = (4, 5)


def broadcast_by_computed_shape():
    """x -> Conv -> c [N, C, 4, 5]; y = c - Expand(Reshape(ReduceMean(c, axis 1), S), S) with
    S = Concat(Shape(c)[:1], [1, 4, 5]) computed from the batch, as tf2onnx writes jax's broadcast."""
    nodes = [
        H("ReduceMean", ["c"], ["m"], name="mean", axes=[1], keepdims=0),
        H("Shape", ["c"], ["shape"], name="shape"),
        H("Slice", ["shape", "zero", "one"], ["batch"], name="batch"),
        H("Concat", ["batch", "rest"], ["target"], name="target", axis=0),
        H("Reshape", ["m", "target"], ["r"], name="reshape"),
        H("Expand", ["r", "target"], ["b"], name="expand"),
        H("Sub", ["c", "b"], ["y"], name="sub"),
    ]
    params = {"zero": np.array([0], np.int64), "one": np.array([1], np.int64),
              "rest": np.array([1, *SPATIAL], np.int64)}
    return chain_model(nodes, params, SPATIAL, opset=15)


def _x() -> np.ndarray:
    return np.random.default_rng(4).standard_normal((3, C, *SPATIAL)).astype(np.float32)


def test_the_broadcast_operand_gets_its_shape_declared_and_the_input_is_not_changed():
    model = broadcast_by_computed_shape()
    before = model.SerializeToString()
    result = declare_propagated_shapes(model)
    assert model.SerializeToString() == before
    assert result.modified
    declared = {v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
                for v in result.model.graph.value_info}
    assert declared["r"] == ["N", 1, 4, 5] and declared["b"] == ["N", 1, 4, 5]


def test_with_the_declared_shapes_the_gradient_is_the_finite_difference_one(tmp_path):
    model = broadcast_by_computed_shape()
    check_gradients(model, declare_propagated_shapes(model).model, _x(), ["W"], tmp_path)


def test_without_them_onnxruntime_training_gets_the_gradient_wrong(tmp_path):
    model = broadcast_by_computed_shape()
    with pytest.raises(RuntimeError, match="reshape_Grad/Reshape_1.*cannot be reshaped"):  # magika's failure
        check_gradients(model, model, _x(), ["W"], tmp_path)


def test_a_graph_whose_shapes_plain_inference_knows_is_left_as_it_is():
    nodes = [H("Relu", ["c"], ["y"], name="relu")]
    model = chain_model(nodes, {"unused": np.zeros(1, np.float32)}, SPATIAL, opset=15)
    result = declare_propagated_shapes(model)
    assert not result.modified and result.model is model
