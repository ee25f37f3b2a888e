"""Which output the loss reads: any float tensor by name, the float tensor behind non-float outputs, outputs
declared with the wrong shape, and outputs with a class axis per position."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from engine_fixtures import blobs, trained_classifier
from graphs import make_model, tensor, value
from onnx import TensorProto, helper

import onnx_dns
from onnx_dns.errors import ModelError
from onnx_dns.losses import loss_output

COMMON = {"target": "2x", "iterations": 60, "batch_size": 32, "eval_every": 60}


@pytest.fixture(scope="module")
def classifier():
    x, y = blobs(400, 8, 4, seed=3)
    return trained_classifier(x, y, 4, hidden=32), x


def with_argmax_only(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.node.append(helper.make_node("ArgMax", [model.graph.output[0].name], ["label"], axis=1, keepdims=0))
    del out.graph.output[:]
    out.graph.output.append(helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]))
    return out


def test_a_model_with_only_integer_outputs_trains_on_the_float_tensor_behind_them(classifier):
    model, x = classifier
    argmax = with_argmax_only(model)
    assert loss_output(argmax) == model.graph.output[0].name
    result = onnx_dns.compress(argmax, {"x": x}, **COMMON)
    assert result.compression == pytest.approx(2.0, rel=0.05)
    assert result.metrics["after"].fidelity > 90
    assert [o.name for o in result.model.graph.output] == ["label"]  # the written graph keeps its outputs


def test_output_name_may_be_any_float_tensor_and_is_checked(classifier):
    model, x = classifier
    hidden = model.graph.node[0].output[0]
    result = onnx_dns.compress(model, {"x": x}, output_name=hidden, task="regress", max_accuracy_drop="none",
                               **COMMON)
    assert result.metrics["after"].relative_error is not None
    assert [o.name for o in result.model.graph.output] == [o.name for o in model.graph.output]
    with pytest.raises(ModelError, match="no output or tensor named 'nope'"):
        loss_output(model, "nope")
    with pytest.raises(ModelError, match="'label' is of type int64 tensor"):
        loss_output(with_argmax_only(model), "label")


def test_a_wrongly_declared_output_shape_does_not_break_training(classifier):
    model, x = classifier
    wrong = onnx.ModelProto()
    wrong.CopyFrom(model)
    dims = wrong.graph.output[0].type.tensor_type.shape.dim
    dims[0].dim_value, dims[1].dim_value = 1, 7  # the model computes [N, 4]
    result = onnx_dns.compress(wrong, {"x": x}, task="classify", **COMMON)
    assert result.compression == pytest.approx(2.0, rel=0.05) and result.metrics["after"].fidelity > 90
    assert result.model.graph.output[0].type.tensor_type.shape.dim[1].dim_value == 7  # the user's graph, as it was


def sequence_model(batch_axis_first: bool = True) -> onnx.ModelProto:
    """x[N, T, F] -> MatMul -> Relu -> MatMul -> Softmax over classes: y[N, T, C] (or [T, N, C])."""
    rng = np.random.default_rng(4)
    inits = [tensor("w1", rng.standard_normal((6, 24)).astype(np.float32)),
             tensor("w2", rng.standard_normal((24, 9)).astype(np.float32))]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["z"])]
    if batch_axis_first:
        nodes.append(helper.make_node("Softmax", ["z"], ["y"], axis=-1))
        shape = ["N", 10, 9]
    else:
        nodes += [helper.make_node("Transpose", ["z"], ["zt"], perm=[1, 0, 2]),
                  helper.make_node("Softmax", ["zt"], ["y"], axis=-1)]
        shape = [10, "N", 9]
    return make_model(nodes, [value("x", ["N", 10, 6])], [value("y", shape)], inits, opset=17)


@pytest.mark.parametrize("batch_first", [True, False])
def test_a_softmax_over_classes_per_position_distills_and_scores_per_position(batch_first):
    x = np.random.default_rng(5).standard_normal((256, 10, 6)).astype(np.float32)
    result = onnx_dns.compress(sequence_model(batch_first), {"x": x}, **COMMON)
    after = result.metrics["after"]
    assert after.positions == 10 and after.label == "per-position agreement"
    assert after.fidelity > 80 and result.compression == pytest.approx(2.0, rel=0.05)


def test_infinite_constants_that_are_not_weights_are_accepted(classifier):
    model, x = classifier
    masked = onnx.ModelProto()
    masked.CopyFrom(model)  # y = Max(y, -inf): a start value as reductions and attention masks use
    masked.graph.initializer.append(tensor("floor", np.array([-np.inf], np.float32)))
    out = masked.graph.output[0].name
    masked.graph.node[-1].output[0] = "pre"
    masked.graph.node.append(helper.make_node("Max", ["pre", "floor"], [out]))
    result = onnx_dns.compress(masked, {"x": x}, **COMMON)
    assert result.compression == pytest.approx(2.0, rel=0.05)
    fc = next(t for t in masked.graph.initializer if t.name == "fc1.w")
    broken = onnx.ModelProto()
    broken.CopyFrom(masked)
    weights = onnx.numpy_helper.to_array(fc).copy()
    weights.flat[0] = np.inf
    next(t for t in broken.graph.initializer if t.name == "fc1.w").CopyFrom(onnx.numpy_helper.from_array(weights,
                                                                                                         "fc1.w"))
    with pytest.raises(ModelError, match="'fc1.w' holds 1 NaN or infinite"):
        onnx_dns.compress(broken, {"x": x}, **COMMON)


def test_a_batch_dimension_written_as_minus_one_is_dynamic(classifier, tmp_path):
    model, x = classifier
    minus = onnx.ModelProto()
    minus.CopyFrom(model)
    minus.graph.input[0].type.tensor_type.shape.dim[0].dim_value = -1  # as paddle2onnx writes it
    onnx.save(minus, str(tmp_path / "minus.onnx"))  # read back through the loader's checks of declared shapes
    result = onnx_dns.compress(tmp_path / "minus.onnx", {"x": x}, **COMMON)
    assert result.compression == pytest.approx(2.0, rel=0.05) and result.images_per_second > 0
