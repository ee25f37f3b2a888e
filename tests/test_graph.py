"""Graph helpers that passes build on: field-by-field model copies and typed initializer replacement."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, defs, helper, numpy_helper

from onnx_dns.graph import axes_are_input, copy_fields, tensor_like


def rich_model() -> onnx.ModelProto:
    """A model that uses most fields of ModelProto and GraphProto."""
    weight = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(2, 3), "w")
    sparse = helper.make_sparse_tensor(numpy_helper.from_array(np.array([1.5], np.float32), "s"),
                                       numpy_helper.from_array(np.array([2], np.int64), "s_idx"), [4])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm", doc_string="node doc")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [weight], doc_string="graph doc", value_info=[helper.make_tensor_value_info("t", TensorProto.FLOAT, [1])],
        sparse_initializer=[sparse])
    function = helper.make_function("custom", "f", ["a"], ["b"], [helper.make_node("Relu", ["a"], ["b"])],
                                    [helper.make_opsetid("", 17)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom", 1)],
                              functions=[function], producer_name="p", doc_string="model doc")
    model.metadata_props.add(key="k", value="v")
    model.model_version = 7
    return model


def test_copy_fields_copies_everything_not_skipped():
    model = rich_model()
    whole = onnx.ModelProto()
    copy_fields(model, whole, set())
    assert whole.SerializeToString() == model.SerializeToString()

    out = onnx.ModelProto()
    copy_fields(model, out, {"graph"})
    copy_fields(model.graph, out.graph, {"initializer"})
    assert not out.graph.initializer
    out.graph.initializer.extend(model.graph.initializer)
    assert out == model


def test_tensor_like_keeps_name_and_dtype_and_checks_the_shape():
    tensor = numpy_helper.from_array(np.zeros((2, 3), np.float16), "w")
    new = tensor_like(np.ones((2, 3), np.float64), tensor)
    assert new.name == "w" and new.data_type == TensorProto.FLOAT16
    np.testing.assert_array_equal(numpy_helper.to_array(new), np.ones((2, 3), np.float16))
    with pytest.raises(ValueError, match="w: new value has shape"):
        tensor_like(np.ones(6), tensor)


def test_inferred_values_match_shape_inference_on_the_whole_model():
    from graphs import cnn

    from onnx_dns.graph import SKELETON_MIN_BYTES, inferred_values

    model = cnn()
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(SKELETON_MIN_BYTES, np.float32), "unused"))
    full = onnx.shape_inference.infer_shapes(model).graph
    expected = {v.name: v.type for v in [*full.input, *full.value_info, *full.output]}
    got = inferred_values(model)
    assert {name: got[name].type for name in expected} == expected
    assert got["unused"].type.tensor_type.shape.dim[0].dim_value == SKELETON_MIN_BYTES  # stood in as an input


@pytest.mark.parametrize("op_type", ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd",
                                     "ReduceSumSquare", "ReduceL2", "Squeeze", "Unsqueeze", "Split"])
def test_axes_are_input_agrees_with_the_onnx_schemas(op_type):
    for opset in range(11, 22):
        schema = defs.get_schema(op_type, opset)
        inputs = {i.name for i in schema.inputs}
        assert axes_are_input(op_type, opset) == bool(inputs & {"axes", "split"}), (op_type, opset)
