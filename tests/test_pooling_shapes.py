"""Pooling gradients in onnxruntime-training 1.19 need known sizes: compress pins the training graph's input
sizes to the data's, so convolutions before MaxPool/AveragePool train even when the model's sizes are symbolic."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_dns.options import CompressOptions

from onnx_dns.pipeline import compress_file
from onnx_dns.normalize import densify_sparse, pin_input_shapes
from onnx_dns.options import TrainConfig


def pooled_cnn(pool: str) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.normal(size=(4, 1, 3, 3)) * 0.5).astype(np.float32), "conv.w"),
             numpy_helper.from_array((rng.normal(size=(3, 64)) * 0.3).astype(np.float32), "fc.w")]
    nodes = [helper.make_node("Conv", ["x", "conv.w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node(pool, ["c"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc.w"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, "H", "W"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_pin_input_shapes_sets_only_the_given_sizes():
    model = pooled_cnn("MaxPool")
    result = pin_input_shapes(model, {"x": (None, 1, 8, 8)})
    dims = result.model.graph.input[0].type.tensor_type.shape.dim
    assert result.modified
    assert dims[0].dim_param == "N" and [d.dim_value for d in dims[1:]] == [1, 8, 8]
    assert model.graph.input[0].type.tensor_type.shape.dim[2].dim_param == "H"  # input untouched
    assert not pin_input_shapes(result.model, {"x": (None, 1, 8, 8)}).modified


@pytest.mark.parametrize("pool", ["MaxPool", "AveragePool"])
def test_convolution_before_pooling_trains_with_symbolic_sizes(tmp_path, pool):
    model = pooled_cnn(pool)
    onnx.save(model, str(tmp_path / "model.onnx"))
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 1, 8, 8)).astype(np.float32)
    labels = (x[:, 0, :, :4].sum(axis=(1, 2)) > 0).astype(np.int64) * 2
    np.savez(tmp_path / "train.npz", x=x, labels=labels)
    options = CompressOptions(data=str(tmp_path / "train.npz"), default_c=0.0,
                              train=TrainConfig(iterations=60, batch_size=32, lr=0.05, eval_every=30,
                                                checkpoint_every=30, eval_batch_size=100))
    compress_file(tmp_path / "model.onnx", tmp_path / "out.onnx", options)
    out = densify_sparse(onnx.load(str(tmp_path / "out.onnx"))).model
    before = numpy_helper.to_array(model.graph.initializer[0])
    after = {t.name: numpy_helper.to_array(t) for t in out.graph.initializer}["conv.w"]
    kept = after != 0
    ratio = after[kept] / before[kept]
    assert np.std(ratio) > 1e-3  # moved by gradients, not only shrunk by weight decay
