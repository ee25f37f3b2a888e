"""The Python API: in-memory models and arrays in, a ModelProto out, the CLI's checks and typed errors."""

from __future__ import annotations

import logging
import os
import tempfile

import numpy as np
import onnx
import pytest
from engine_fixtures import blobs, mlp
from onnx import numpy_helper

import onnx_dns
from onnx_dns.errors import DataError, ModelError, OptionError


def trained_mlp(tmp_path):
    """A small MLP trained in a few hundred iterations on blobs (so compressing it has accuracy to keep)."""
    model = mlp(6, 32, 3, seed=2)
    x, y = blobs(600, 6, 3, seed=1)
    result = onnx_dns.compress(model, {"x": x}, labels=y, iterations=300, batch_size=32, lr=0.05, prune=False,
                               eval_every=300)
    return result.model, x, y


def test_compress_an_in_memory_model_with_in_memory_arrays(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    os.mkdir(tmp_path / "tmp")
    model, x, y = trained_mlp(tmp_path)
    before = model.SerializeToString()

    result = onnx_dns.compress(model, {"x": x, "labels": y}, target="3x", iterations=200, batch_size=32, lr=0.01)

    assert isinstance(result.model, onnx.ModelProto)
    assert model.SerializeToString() == before  # the caller's model is untouched
    assert result.compression == pytest.approx(3.0, rel=0.05)
    assert result.metrics["after"].top1 >= result.metrics["before"].top1 - 5
    kept = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    kept |= {s.values.name: numpy_helper.to_array(s.values) for s in result.model.graph.sparse_initializer}
    assert not any("mask" in name for name in kept)  # folded: no masks left
    assert sorted(os.listdir(tmp_path)) == ["tmp"] and os.listdir(tmp_path / "tmp") == []  # nothing left behind


def test_data_as_a_list_of_batches_or_a_function(tmp_path):
    model, x, y = trained_mlp(tmp_path)
    batches = [({"x": x[i:i + 32], "labels": y[i:i + 32]}) for i in range(0, 320, 32)]
    val = {"x": x[320:], "labels": y[320:]}
    listed = onnx_dns.compress(model, batches, val=val, target=2, iterations=40, batch_size=32)
    called = onnx_dns.compress(model, lambda: iter(batches), val=val, target=2, iterations=40, batch_size=32)
    assert listed.compression == pytest.approx(2.0, rel=0.05)
    assert listed.metrics["after"].samples == len(x) - 320
    for a, b in zip(listed.model.graph.initializer, called.model.graph.initializer):
        np.testing.assert_array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))


def test_save_writes_each_format(tmp_path):
    model, x, y = trained_mlp(tmp_path)
    result = onnx_dns.compress(model, {"x": x, "labels": y}, target="8x", iterations=60, batch_size=32)
    sparse = result.save(tmp_path / "sparse.onnx")
    dense = result.save(tmp_path / "dense.onnx", format="dense")
    assert onnx.load(str(sparse)).graph.sparse_initializer
    assert not onnx.load(str(dense)).graph.sparse_initializer
    assert sparse.stat().st_size < dense.stat().st_size
    feed = {"x": x[:5]}
    from graphs import run
    np.testing.assert_array_equal(run(onnx.load(str(sparse)), feed)[0], run(onnx.load(str(dense)), feed)[0])


def test_options_are_checked_as_on_the_command_line():
    model = mlp(6, 8, 3)
    x, y = blobs(64, 6, 3)
    with pytest.raises(OptionError, match="unknown option 'learning_rate'"):
        onnx_dns.compress(model, {"x": x, "labels": y}, learning_rate=0.1)
    with pytest.raises(OptionError, match="--lr -0.1"):
        onnx_dns.compress(model, {"x": x, "labels": y}, lr=-0.1)
    with pytest.raises(OptionError, match="--target"):
        onnx_dns.compress(model, {"x": x, "labels": y}, target="lots")


def test_typed_errors_for_bad_models_and_data():
    model = mlp(6, 8, 3)
    with pytest.raises(DataError, match="array 'z' is not a model input"):
        onnx_dns.compress(model, {"x": np.zeros((8, 6), np.float32), "z": np.zeros((8, 6), np.float32)})
    with pytest.raises(DataError, match="shape"):
        onnx_dns.compress(model, {"x": np.zeros((8, 5), np.float32)})
    with pytest.raises(ModelError, match="path or an onnx.ModelProto"):
        onnx_dns.compress(42, {"x": np.zeros((8, 6), np.float32)})
    empty = onnx.ModelProto()
    empty.CopyFrom(model)
    empty.opset_import[0].version = 99
    with pytest.raises(ModelError, match="opset 99"):
        onnx_dns.inspect(empty)


def test_a_quantized_model_is_refused_with_what_to_do_instead():
    from onnx import TensorProto, helper

    weight = numpy_helper.from_array(np.ones((6, 3), np.int8), "w_q")
    zero = numpy_helper.from_array(np.zeros((), np.int8), "w_zero")
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["x_q", "x_scale", "x_zero"]),
             helper.make_node("MatMulInteger", ["x_q", "w_q", "x_zero", "w_zero"], ["acc"]),
             helper.make_node("Cast", ["acc"], ["y"], to=TensorProto.FLOAT)]
    graph = helper.make_graph(nodes, "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [weight, zero])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    with pytest.raises(ModelError, match=r"quantized \(MatMulInteger\): compress the float model"):
        onnx_dns.compress(model, {"x": np.zeros((8, 6), np.float32)})


def test_a_partly_quantized_model_is_compressed_after_its_quantized_nodes_and_says_so(caplog):
    """fc1 (float) -> dynamically quantized MatMulInteger -> fc2 (float): no gradient passes the quantized node,
    so fc1 is left alone with a warning that says why, and fc2 is pruned."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((6, 16)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.integers(-60, 60, (16, 16)).astype(np.int8), "w_q"),
             numpy_helper.from_array(np.zeros((), np.int8), "w_zero"),
             numpy_helper.from_array(np.float32(0.01), "w_scale"),
             numpy_helper.from_array(rng.standard_normal((16, 3)).astype(np.float32), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("DynamicQuantizeLinear", ["h"], ["h_q", "h_scale", "h_zero"]),
             helper.make_node("MatMulInteger", ["h_q", "w_q", "h_zero", "w_zero"], ["acc"], name="fc_q"),
             helper.make_node("Cast", ["acc"], ["acc_f"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["acc_f", "h_scale"], ["g0"]), helper.make_node("Mul", ["g0", "w_scale"], ["g"]),
             helper.make_node("MatMul", ["g", "w2"], ["y"], name="fc2")]
    graph = helper.make_graph(nodes, "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    x = rng.standard_normal((64, 6)).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="onnx_dns.prepare"):
        result = onnx_dns.compress(model, {"x": x}, target="2x", iterations=4, lr=1e-3, batch_size=16,
                                   max_accuracy_drop=None)
    assert "is partly quantized: 1 nodes (MatMulInteger, first fc_q)" in caplog.text
    assert "layer fc1 is neither trained nor pruned: it is before a quantized node (fc_q, MatMulInteger" in caplog.text
    written = {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}
    assert np.array_equal(written["w1"], numpy_helper.to_array(inits[0]))
    assert [layer.name for layer in onnx_dns.inspect(result.model).layers if layer.nonzeros < layer.params] == ["fc2"]


def test_inspect_and_evaluate_in_memory(tmp_path):
    model, x, y = trained_mlp(tmp_path)
    report = onnx_dns.inspect(model)
    assert report.total == 6 * 32 + 32 + 32 * 3 + 3 and report.nonzero == report.total
    assert [layer.name for layer in report.layers] == ["fc1", "fc2"]
    assert report.to_dict()["totals"]["params"] == report.total
    result = onnx_dns.compress(model, {"x": x, "labels": y}, target="4x", iterations=60, batch_size=32)
    scored = onnx_dns.evaluate(result.model, {"x": x}, labels=y, min_compression=3.0)
    assert scored.failures == [] and scored.metrics.top1 == pytest.approx(result.metrics["after"].top1, abs=20)
    assert onnx_dns.inspect(result.model).nonzero == result.nonzeros
    agreement = onnx_dns.evaluate(result.model, {"x": x}, reference=model, min_compression=100)
    assert agreement.metrics.fidelity is not None and "below --min-compression" in agreement.failures[0]
