"""Shape arithmetic seen through once input sizes are pinned: PyTorch 1.x's computed reshape before an LSTM, at
opset 12 where onnx's own data propagation does not follow it."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_dns.graph import inferred_values
from onnx_dns.normalize import pin_input_shapes
from onnx_dns.options import CompressOptions, TrainConfig
from onnx_dns.pipeline import compress_file
from onnx_dns.rewrites import rewrite_for_training, untrainable_nodes
from onnx_dns.rewrites.constant_folding import fold_integer_constants
from onnx_dns.rewrites.shape_values import UNKNOWN, resolve_computed_shapes, shape_values

HIDDEN = 6


def torch1_crnn(batch: int | str = "N", seed: int = 0) -> onnx.ModelProto:
    """x (batch, 1, 8, 16) -> Conv 3x3 (4 channels) -> Transpose to (16, batch, 4, 8) -> Reshape to
    (16, batch, 32) by sizes computed from Shape nodes as PyTorch 1.x exports `x.view(w, b, c * h)` ->
    bidirectional LSTM -> both directions' outputs side by side (16, batch, 12) -> MatMul -> y (16, batch, 3), whose
    shape the graph declares wrong as (1, seqlen); opset 12."""
    rng = np.random.default_rng(seed)
    g = 4 * HIDDEN
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in (
        ("conv.w", rng.normal(size=(4, 1, 3, 3)) * 0.5), ("lstm.W", rng.normal(size=(2, g, 32)) * 0.2),
        ("lstm.R", rng.normal(size=(2, g, HIDDEN)) * 0.2), ("lstm.B", rng.normal(size=(2, 2 * g)) * 0.1),
        ("fc.w", rng.normal(size=(2 * HIDDEN, 3)) * 0.3))]
    inits.append(numpy_helper.from_array(np.array([0, 0, 2 * HIDDEN], np.int64), "out_shape"))
    inits += [numpy_helper.from_array(np.array(i, np.int64), f"i{i}") for i in range(4)]
    nodes = [
        helper.make_node("Conv", ["x", "conv.w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Transpose", ["c"], ["cols"], name="columns", perm=[3, 0, 1, 2]),
        helper.make_node("Shape", ["cols"], ["shape"], name="shape"),
        *[helper.make_node("Gather", ["shape", f"i{i}"], [f"d{i}"], name=f"dim{i}", axis=0) for i in range(4)],
        helper.make_node("Mul", ["d2", "d3"], ["features"], name="features"),
        helper.make_node("Unsqueeze", ["d0"], ["u0"], name="u0", axes=[0]),
        helper.make_node("Unsqueeze", ["d1"], ["u1"], name="u1", axes=[0]),
        helper.make_node("Unsqueeze", ["features"], ["u2"], name="u2", axes=[0]),
        helper.make_node("Concat", ["u0", "u1", "u2"], ["seq_shape"], name="seq_shape", axis=0),
        helper.make_node("Reshape", ["cols", "seq_shape"], ["seq"], name="to_sequence"),
        helper.make_node("LSTM", ["seq", "lstm.W", "lstm.R", "lstm.B"], ["out"], name="lstm",
                         hidden_size=HIDDEN, direction="bidirectional"),
        helper.make_node("Transpose", ["out"], ["out_t"], name="directions_last", perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["out_t", "out_shape"], ["both"], name="both_directions"),
        helper.make_node("MatMul", ["both", "fc.w"], ["y"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes, "crnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 1, 8, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "seqlen"])], inits)  # declared wrong, as exported
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)], ir_version=7)


def pinned(model: onnx.ModelProto) -> onnx.ModelProto:
    return pin_input_shapes(model, {"x": (None, 1, 8, 16)}).model


def test_shape_values_follow_the_arithmetic_and_leave_the_open_batch_unknown():
    model = pinned(torch1_crnn())
    values = shape_values(model, inferred_values(model, output_shapes=False))
    assert values["shape"].tolist() == [16, UNKNOWN, 4, 8]
    assert values["features"].tolist() == 32 and values["d1"].tolist() == UNKNOWN
    assert values["seq_shape"].tolist() == [16, UNKNOWN, 32]


def test_the_lstm_can_be_rewritten_for_training_only_once_the_shapes_are_resolved():
    model = pinned(torch1_crnn())
    assert untrainable_nodes(rewrite_for_training(fold_integer_constants(model).model).model) == [("lstm", "LSTM")]
    resolved = resolve_computed_shapes(model)
    assert resolved.modified and model.graph.value_info == pinned(torch1_crnn()).graph.value_info
    declared = {v.name: [d.dim_value or None for d in v.type.tensor_type.shape.dim]
                for v in resolved.model.graph.value_info}
    assert declared["seq"] == [16, None, 32]
    assert "features" in {t.name for t in resolved.model.graph.initializer}  # folded, as its value is known
    assert untrainable_nodes(rewrite_for_training(fold_integer_constants(resolved.model).model).model) == []


def test_resolving_changes_no_value_the_graph_computes():
    model = pinned(torch1_crnn())
    resolved = fold_integer_constants(resolve_computed_shapes(model).model).model
    x = np.random.default_rng(1).normal(size=(3, 1, 8, 16)).astype(np.float32)
    run = [onnxruntime.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})
           for m in (model, resolved)]
    np.testing.assert_array_equal(run[0][0], run[1][0])


def test_a_fully_pinned_shape_folds_and_a_cast_to_float_is_not_followed():
    model = pinned(torch1_crnn(batch=2))
    cast = helper.make_node("Cast", ["d0"], ["d0_float"], name="as_float", to=TensorProto.FLOAT)
    model.graph.node.insert(3 + 4, cast)
    values = shape_values(model, inferred_values(model, output_shapes=False))
    assert values["seq_shape"].tolist() == [16, 2, 32] and "d0_float" not in values


@pytest.mark.parametrize("batch", ["N", 1])
def test_a_torch1_crnn_compresses_with_its_lstm(tmp_path, batch):
    model = torch1_crnn(batch)
    onnx.save(model, str(tmp_path / "crnn.onnx"))
    np.savez(tmp_path / "x.npz", x=np.random.default_rng(2).normal(size=(96, 1, 8, 16)).astype(np.float32))
    options = CompressOptions(data=str(tmp_path / "x.npz"), target=2.0,
                              train=TrainConfig(iterations=6, batch_size=8, lr=1e-3, eval_every=6,
                                                max_accuracy_drop=None))
    result = compress_file(tmp_path / "crnn.onnx", tmp_path / "out.onnx", options)
    assert result.compression == pytest.approx(2.0, rel=0.05)
    lstm = next(s for s in result.layers_after if s.op == "LSTM")
    assert lstm.nonzeros < lstm.params
    out = onnx.load(str(tmp_path / "out.onnx"))
    names = {n.name for n in model.graph.node}  # the packed format adds its unpacking nodes beside them
    assert [n.op_type for n in out.graph.node if n.name in names] == [n.op_type for n in model.graph.node]


def test_a_shape_that_is_a_graph_output_stays_computed():
    model = pinned(torch1_crnn(batch=2))
    model.graph.output.append(helper.make_tensor_value_info("seq_shape", TensorProto.INT64, [3]))
    resolved = resolve_computed_shapes(model).model
    assert "seq_shape" in {n.output[0] for n in resolved.graph.node}
    assert "seq_shape" not in {t.name for t in resolved.graph.initializer}
    assert "features" in {t.name for t in resolved.graph.initializer}  # what is not an output is still folded


def test_a_slice_of_a_shape_is_followed_as_tf2onnx_and_torch2_write_it():
    # (16, N, 4, 8) -> Shape -> Slice [0:2] -> Concat with [32] -> Reshape, at opset 13 (inputs, not attributes)
    model = pinned(torch1_crnn())
    nodes = [n for n in model.graph.node if n.op_type not in ("Gather", "Mul", "Unsqueeze", "Concat")]
    at = [n.name for n in nodes].index("to_sequence")
    nodes[at:at] = [helper.make_node("Slice", ["shape", "zero", "two"], ["lead"], name="lead"),
                    helper.make_node("Concat", ["lead", "features"], ["seq_shape"], name="seq_shape", axis=0)]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend([numpy_helper.from_array(np.array([v], np.int64), n)
                                    for n, v in (("zero", 0), ("two", 2), ("features", 32))])
    model.opset_import[0].version = 13
    values = shape_values(model, inferred_values(model, output_shapes=False))
    assert values["lead"].tolist() == [16, UNKNOWN] and values["seq_shape"].tolist() == [16, UNKNOWN, 32]
    declared = {v.name: [d.dim_value or None for d in v.type.tensor_type.shape.dim]
                for v in resolve_computed_shapes(model).model.graph.value_info}
    assert declared["seq"] == [16, None, 32]


def test_a_declared_open_batch_of_minus_one_is_not_a_size():
    model = torch1_crnn()
    model.graph.input[0].type.tensor_type.shape.dim[0].ClearField("dim_param")
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = -1  # as some exporters write an open batch
    values = shape_values(model, inferred_values(model, output_shapes=False))
    assert values["d1"].tolist() == UNKNOWN and values["seq_shape"].tolist()[1] == UNKNOWN


def test_an_int32_table_read_at_a_size_is_left_alone():
    model = pinned(torch1_crnn(batch=2))
    model.graph.initializer.append(numpy_helper.from_array(np.array([10, 20, 30, 40], np.int32), "table"))
    model.graph.node.append(helper.make_node("Gather", ["table", "d1"], ["picked"], name="picked", axis=0))
    values = shape_values(model, inferred_values(model, output_shapes=False))
    assert "picked" not in values and values["d1"].tolist() == 2  # an int32 value folded as int64 would not type
