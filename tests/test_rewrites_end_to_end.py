"""A small detector-like model whose operators have no CPU gradient (Resize, ConvTranspose, a Split with an unread
output, Mish, ReduceMax) goes through the whole artifact build (masks, rewrites, loss, straight-through) and one
training step on CPU, with the loss and gradients of the original model."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
from graphs import make_model, value, weight
from onnx import helper, numpy_helper

from onnx_dns.artifacts import build_artifacts
from onnx_dns.insert_masks import insert_masks
from onnx_dns.losses import LossSpec
from onnx_dns.ort_training import api, captured_stderr
from onnx_dns.prunable import find_layers

H = helper.make_node


def detector(opset: int = 18) -> onnx.ModelProto:
    """Conv/2 -> Mish -> Resize x2 (nearest, as YOLOv8 exports it) -> Concat with a Conv of x -> Split (the second
    half unread) -> ConvTranspose/2 -> ReduceMax over W -> Flatten -> Gemm."""
    rng = np.random.default_rng(0)
    inits = [weight(rng, "c1.w", (4, 3, 3, 3)), weight(rng, "c1.b", (4,)), weight(rng, "c2.w", (4, 3, 1, 1)),
             weight(rng, "ct.w", (4, 2, 2, 2)), weight(rng, "ct.b", (2,)), weight(rng, "fc.w", (32, 5)),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
             numpy_helper.from_array(np.array([4, 4], np.int64), "halves"),
             numpy_helper.from_array(np.array([3], np.int64), "last_axis")]
    nodes = [
        H("Conv", ["x", "c1.w", "c1.b"], ["c1"], name="c1", strides=[2, 2], pads=[1, 1, 1, 1]),
        H("Mish", ["c1"], ["m1"], name="mish"),
        H("Resize", ["m1", "", "scales"], ["up"], name="up", mode="nearest",
          coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
        H("Conv", ["x", "c2.w"], ["c2"], name="c2"),
        H("Concat", ["up", "c2"], ["cat"], name="cat", axis=1),
        H("Split", ["cat", "halves"], ["head", "unread"], name="split", axis=1),
        H("ConvTranspose", ["head", "ct.w", "ct.b"], ["ct"], name="deconv", strides=[2, 2]),
        H("ReduceMax", ["ct", "last_axis"], ["rm"], name="rmax", keepdims=0),
        H("Flatten", ["rm"], ["flat"], name="flatten"),
        H("Gemm", ["flat", "fc.w"], ["y"], name="fc"),
    ]
    return make_model(nodes, [value("x", [2, 3, 8, 8])], [value("y", [2, 5])], inits, opset=opset)


def loss_of(model: onnx.ModelProto, x, target, weights=None) -> float:
    if weights:
        model = onnx.ModelProto.FromString(model.SerializeToString())
        for tensor in model.graph.initializer:
            if tensor.name in weights:
                tensor.CopyFrom(numpy_helper.from_array(weights[tensor.name], tensor.name))
    y = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    return float(np.mean((y.astype(np.float64) - target) ** 2))


def test_a_detector_with_untrainable_ops_trains_on_cpu_with_the_gradients_of_the_original(tmp_path):
    model = detector()
    layers = find_layers(model)
    masked = insert_masks(model, [t.name for layer in layers for t in layer.tensors]).model
    art = build_artifacts(masked, LossSpec("regress", "y", 1.0, 0.0), tmp_path)
    assert {"c1.w", "c2.w", "ct.w", "ct.b", "fc.w"} <= set(art.trainable)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    target = rng.standard_normal((2, 5)).astype(np.float32)
    with captured_stderr():
        state = api.CheckpointState.load_checkpoint(str(art.checkpoint))
        module = api.Module(str(art.training_model), state, str(art.eval_model))
        module.train()
        loss = float(module(x, target)[0])
    np.testing.assert_allclose(loss, loss_of(model, x, target), rtol=1e-5)
    for name in ("c1.w", "ct.w"):  # before Resize/ConvTranspose, and ConvTranspose's own kernel
        grad = np.array(state.parameters[name].grad, np.float64)
        base = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))
        direction = np.random.default_rng(2).standard_normal(base.shape).astype(np.float32)
        eps = 1e-2
        up = loss_of(model, x, target, {name: base + eps * direction})
        down = loss_of(model, x, target, {name: base - eps * direction})
        np.testing.assert_allclose(float(np.sum(grad * direction)), (up - down) / (2 * eps), rtol=2e-2, err_msg=name)
