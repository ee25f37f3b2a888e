"""compress on a model whose operators have no CPU gradient: training runs on the rewritten graph and the
written model keeps the user's original operators with the trained weights."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_dns.options import CompressOptions

from onnx_dns.pipeline import compress_file
from onnx_dns.errors import ModelError
from onnx_dns.model_io import load_model
from onnx_dns.normalize import densify_sparse
from onnx_dns.options import TrainConfig


def cnn_with_untrainable_ops(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array((rng.normal(size=(6, 1, 3, 3)) * 0.5).astype(np.float32), "conv.w"),
        numpy_helper.from_array(np.full((6, 1, 1), 0.25, np.float32), "prelu.slope"),
        numpy_helper.from_array((rng.normal(size=(6, 3)) * 0.5).astype(np.float32), "fc.w"),
        numpy_helper.from_array(np.zeros(3, np.float32), "fc.b"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv.w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("LRN", ["c"], ["n"], name="lrn", size=3, alpha=1e-3, beta=0.75, bias=1.0),
        helper.make_node("PRelu", ["n", "prelu.slope"], ["p"], name="prelu"),
        helper.make_node("GlobalMaxPool", ["p"], ["g"], name="gmp"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["y"], name="fc"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def with_softsign() -> onnx.ModelProto:
    """The same CNN with Softsign, which has no gradient and no rewrite, in place of LRN."""
    model = cnn_with_untrainable_ops()
    for node in model.graph.node:
        if node.op_type == "LRN":
            node.op_type = "Softsign"
            del node.attribute[:]
    return model


def test_untrainable_operators_are_trained_through_and_kept(tmp_path):
    model = cnn_with_untrainable_ops()
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    rng = np.random.default_rng(1)
    x = rng.normal(size=(600, 1, 8, 8)).astype(np.float32)
    labels = (x[:, 0, :4].mean(axis=(1, 2)) > 0).astype(np.int64) + (x[:, 0, 4:].mean(axis=(1, 2)) > 0)
    np.savez(tmp_path / "train.npz", x=x, labels=labels)
    options = CompressOptions(data=str(tmp_path / "train.npz"), target=2.0, keep_work=False,
                              train=TrainConfig(iterations=120, batch_size=32, lr=0.02, eval_every=60,
                                                checkpoint_every=60))
    result = compress_file(path, tmp_path / "out.onnx", options)
    out = load_model(tmp_path / "out.onnx")
    assert [n.op_type for n in out.graph.node] == [n.op_type for n in model.graph.node]
    before = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in densify_sparse(out).model.graph.initializer}
    assert set(after) == set(before)
    assert not np.allclose(after["prelu.slope"], before["prelu.slope"])  # PRelu's slope trained through the rewrite
    kept = after["conv.w"] != 0
    assert not np.allclose(after["conv.w"][kept], before["conv.w"][kept])  # gradient reached through LRN and PRelu
    assert result.compression == pytest.approx(2.0, rel=0.02)
    got = onnxruntime.InferenceSession(str(tmp_path / "out.onnx")).run(None, {"x": x[:50]})[0]
    assert got.shape == (50, 3) and np.isfinite(got).all()


def test_an_operator_that_cannot_be_trained_is_named(tmp_path):
    model = with_softsign()
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    np.savez(tmp_path / "train.npz", x=np.zeros((64, 1, 8, 8), np.float32), labels=np.zeros(64, np.int64))
    options = CompressOptions(data=str(tmp_path / "train.npz"), train=TrainConfig(iterations=2, batch_size=8))
    with pytest.raises(ModelError, match=r"node lrn \(Softsign\) has no gradient"):
        compress_file(path, tmp_path / "out.onnx", options)
    assert not (tmp_path / "out.onnx").exists()


def test_non_finite_weights_are_refused_before_training(tmp_path):
    model = cnn_with_untrainable_ops()
    weights = numpy_helper.to_array(model.graph.initializer[2]).copy()
    weights[0, 0] = np.nan
    model.graph.initializer[2].CopyFrom(numpy_helper.from_array(weights, "fc.w"))
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    original = path.read_bytes()
    np.savez(tmp_path / "train.npz", x=np.zeros((64, 1, 8, 8), np.float32), labels=np.zeros(64, np.int64))
    options = CompressOptions(data=str(tmp_path / "train.npz"), train=TrainConfig(iterations=2, batch_size=8))
    with pytest.raises(ModelError, match=r"'fc.w' holds 1 NaN"):
        compress_file(path, tmp_path / "out.onnx", options)
    assert path.read_bytes() == original
    assert not (tmp_path / "out.onnx").exists()


def test_freeze_before_trains_only_the_layers_after_an_untrainable_node(tmp_path):
    model = with_softsign()
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    rng = np.random.default_rng(1)
    x = rng.normal(size=(256, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "train.npz", x=x, labels=(x[:, 0].mean(axis=(1, 2)) > 0).astype(np.int64))
    train = TrainConfig(iterations=40, batch_size=32, lr=0.05, eval_every=20, checkpoint_every=20)
    options = CompressOptions(data=str(tmp_path / "train.npz"), train=train)
    with pytest.raises(ModelError, match=r"--freeze-before lrn"):
        compress_file(path, tmp_path / "out.onnx", options)

    options = CompressOptions(data=str(tmp_path / "train.npz"), train=train, freeze_before=("lrn",), target=2.0)
    result = compress_file(path, tmp_path / "out.onnx", options)
    before = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in densify_sparse(load_model(tmp_path / "out.onnx")).model.graph.initializer}
    np.testing.assert_array_equal(after["conv.w"], before["conv.w"])  # before the node: neither trained nor pruned
    assert not np.allclose(after["prelu.slope"], before["prelu.slope"])  # after it: trained
    assert [s.name for s in result.layers_after] == ["fc"]
    assert np.count_nonzero(after["fc.w"]) < before["fc.w"].size


def test_freeze_before_an_unknown_node_is_a_usage_error(tmp_path):
    from onnx_dns.errors import OptionError

    path = tmp_path / "model.onnx"
    onnx.save(cnn_with_untrainable_ops(), str(path))
    np.savez(tmp_path / "train.npz", x=np.zeros((64, 1, 8, 8), np.float32), labels=np.zeros(64, np.int64))
    options = CompressOptions(data=str(tmp_path / "train.npz"), freeze_before=("nope",),
                              train=TrainConfig(iterations=2, batch_size=8))
    with pytest.raises(OptionError, match="--freeze-before nope"):
        compress_file(path, tmp_path / "out.onnx", options)


def test_weights_read_inside_a_control_flow_body_feed_the_output():
    from onnx_dns.freeze import initializers_feeding

    rng = np.random.default_rng(0)
    branch = helper.make_graph([helper.make_node("MatMul", ["h", "w2"], ["o"])], "b", [],
                               [helper.make_tensor_value_info("o", TensorProto.FLOAT, ["N", 3])])
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]),
             helper.make_node("If", ["flag"], ["y"], then_branch=branch, else_branch=branch)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
                                           helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                              [numpy_helper.from_array(rng.normal(size=(4, 5)).astype(np.float32), "w1"),
                               numpy_helper.from_array(rng.normal(size=(5, 3)).astype(np.float32), "w2")])
    assert initializers_feeding(helper.make_model(graph), "y") == {"w1", "w2"}
