"""Weights listed as graph inputs (IR 3 exports, keep_initializers_as_inputs): found, trained and written as
plain initializers, with what the model computes for its real inputs unchanged."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
from onnx import helper
from engine_fixtures import blobs, mlp

from onnx_dns.options import CompressOptions

from onnx_dns.pipeline import compress_file
from onnx_dns.normalize import unlist_initializer_inputs
from onnx_dns.prunable import find_layers
from onnx_dns.options import TrainConfig


def listed(model: onnx.ModelProto, ir_version: int = 3) -> onnx.ModelProto:
    """`model` with every initializer also declared as a graph input, as IR 3 requires."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for tensor in out.graph.initializer:
        out.graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
    out.ir_version = ir_version
    return out


def test_initializers_listed_as_inputs_become_plain_initializers():
    model = mlp(6, 8, 3)
    old = listed(model)
    before = old.SerializeToString()
    assert find_layers(old) == []  # an overridable input is not a weight to prune as it stands
    new = unlist_initializer_inputs(old)
    assert new.modified and old.SerializeToString() == before
    assert [v.name for v in new.model.graph.input] == [v.name for v in model.graph.input]
    assert new.model.ir_version == 4
    assert [layer.name for layer in find_layers(new.model)] == [layer.name for layer in find_layers(model)]
    x = np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32)

    def run(m: onnx.ModelProto) -> np.ndarray:
        return onnxruntime.InferenceSession(m.SerializeToString()).run(None, {"x": x})[0]

    np.testing.assert_array_equal(run(new.model), run(model))
    assert not unlist_initializer_inputs(model).modified


def test_compress_prunes_a_model_with_weights_listed_as_inputs(tmp_path):
    x, labels = blobs(400, 6, 3)
    np.savez(tmp_path / "train.npz", x=x, labels=labels)
    path = tmp_path / "model.onnx"
    onnx.save(listed(mlp(6, 8, 3)), str(path))
    options = CompressOptions(data=str(tmp_path / "train.npz"), target=2.0,
                              train=TrainConfig(iterations=30, batch_size=32, eval_every=30))
    result = compress_file(path, tmp_path / "out.onnx", options)
    assert result.compression > 1.9
    out = onnx.load(str(tmp_path / "out.onnx"))
    assert [v.name for v in out.graph.input] == ["x"]
    assert out.ir_version >= 4
    got = onnxruntime.InferenceSession(str(tmp_path / "out.onnx")).run(None, {"x": x[:4]})[0]
    assert got.shape == (4, 3) and np.isfinite(got).all()


def test_from_ir_4_only_weights_are_unlisted_and_other_overridable_defaults_stay():
    model = listed(mlp(6, 8, 3), ir_version=8)
    model.graph.initializer.append(helper.make_tensor("temperature", onnx.TensorProto.FLOAT, [], [1.0]))
    model.graph.initializer.append(helper.make_tensor("steps", onnx.TensorProto.INT64, [2], [1, 2]))
    for name, elem, dims in (("temperature", onnx.TensorProto.FLOAT, []), ("steps", onnx.TensorProto.INT64, [2])):
        model.graph.input.append(helper.make_tensor_value_info(name, elem, dims))
    new = unlist_initializer_inputs(model).model
    assert [v.name for v in new.graph.input] == ["x", "temperature", "steps"]
    assert new.ir_version == 8
