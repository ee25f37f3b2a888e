"""Training artifacts are built from a model whose parameters and masks are set aside in a file (set_aside.py),
and train as the model computes."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from engine_fixtures import blobs, mlp, predict
from graphs import tensor
from onnx import helper, numpy_helper

from onnx_dns import artifacts, ort_training
from onnx_dns.artifacts import CONSTANTS_FILE, PARAMETERS_FILE, build_artifacts
from onnx_dns.errors import TrainingError
from onnx_dns.insert_masks import insert_masks
from onnx_dns.losses import LossSpec
from onnx_dns.ort_training import api

HIDDEN = 512  # fc1.w 12 KB, the constant 2 KB: both over set_aside.MIN_BYTES


def scaled_mlp() -> onnx.ModelProto:
    """mlp with a constant per-unit scale (not a parameter) between fc1's Relu and fc2."""
    model = mlp(6, HIDDEN, 3)
    relu = next(n for n in model.graph.node if n.op_type == "Relu")
    fc2 = next(n for n in model.graph.node if n.name == "fc2")
    fc2.input[0] = "scaled"
    index = list(model.graph.node).index(relu) + 1
    model.graph.node.insert(index, helper.make_node("Mul", [relu.output[0], "unit_scale"], ["scaled"]))
    scale = np.linspace(0.5, 1.5, HIDDEN, dtype=np.float32)
    model.graph.initializer.append(tensor("unit_scale", scale))
    return model


def built(directory, monkeypatch, seen: list) -> tuple[float, artifacts.TrainingArtifacts]:
    generate = ort_training.training_artifacts().generate_artifacts

    def watched(base, **kwargs):
        seen.append((base.ByteSize(), os.getcwd()))
        return generate(base, **kwargs)

    monkeypatch.setattr(artifacts, "training_artifacts",
                        lambda: type("Artifacts", (), {"generate_artifacts": staticmethod(watched)}))
    model = scaled_mlp()
    masked = insert_masks(model, ["fc1.w", "fc2.w"]).model
    art = build_artifacts(masked, LossSpec("classify", "y", 1.0, 0.0, num_classes=3), directory)
    module = api.Module(str(art.training_model), api.CheckpointState.load_checkpoint(str(art.checkpoint)),
                        str(art.eval_model))
    x, labels = blobs(16, 6, 3)
    module.train()
    loss = float(module(x, np.eye(3, dtype=np.float32)[labels])[0])
    logits = predict(model, x).astype(np.float64)
    logp = logits - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    assert loss == pytest.approx(-logp[np.arange(16), labels].mean(), rel=1e-5)
    return loss, art


def test_generate_artifacts_gets_the_model_without_its_tensor_bytes_and_trains_as_the_model_computes(
        tmp_path, monkeypatch):
    seen = []
    before = os.getcwd()
    _, art = built(tmp_path / "a", monkeypatch, seen)
    parameters = sum(int(np.prod(t.dims)) * 4 for t in scaled_mlp().graph.initializer if t.name.startswith("fc"))
    assert seen[0][0] < parameters / 4  # masks and parameters are references: 32 KB of tensors, a few KB passed
    assert seen[0][1] == str(tmp_path / "a") and os.getcwd() == before
    state = api.CheckpointState.load_checkpoint(str(art.checkpoint))
    weights = {t.name: numpy_helper.to_array(t) for t in scaled_mlp().graph.initializer}
    for name in ("fc1.w", "fc1.b", "fc2.w"):
        assert np.array_equal(state.parameters[name].data, weights[name])
    assert not (tmp_path / "a" / PARAMETERS_FILE).exists()
    # the constant, not a parameter, stays with the graphs: referenced, its bytes in their folder
    assert (tmp_path / "a" / CONSTANTS_FILE).stat().st_size == HIDDEN * 4
    training = onnx.load(str(art.training_model), load_external_data=False)
    scale = next(t for t in training.graph.initializer if t.name == "unit_scale")
    assert scale.data_location == onnx.TensorProto.EXTERNAL


def test_a_failed_build_removes_the_parameters_and_restores_the_folder(tmp_path, monkeypatch):
    def failing(base, **kwargs):
        assert (tmp_path / PARAMETERS_FILE).stat().st_size > 0
        raise RuntimeError("no gradient")

    monkeypatch.setattr(artifacts, "training_artifacts",
                        lambda: type("Artifacts", (), {"generate_artifacts": staticmethod(failing)}))
    before = os.getcwd()
    masked = insert_masks(scaled_mlp(), ["fc1.w"]).model
    with pytest.raises(TrainingError):
        build_artifacts(masked, LossSpec("classify", "y", 1.0, 0.0, num_classes=3), tmp_path)
    assert os.getcwd() == before and not (tmp_path / PARAMETERS_FILE).exists()


def test_a_relative_artifact_folder_is_built_where_it_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    art = build_artifacts(insert_masks(scaled_mlp(), ["fc1.w"]).model,
                          LossSpec("classify", "y", 1.0, 0.0, num_classes=3), "work/artifacts")
    assert art.training_model == tmp_path / "work" / "artifacts" / "training_model.onnx"
    assert art.training_model.exists() and art.checkpoint.exists() and os.getcwd() == str(tmp_path)


def test_tensors_not_held_as_raw_bytes_stay_in_the_graph(tmp_path):
    """A table of 200 class names (external data cannot hold strings) and a float_data constant build and
    train."""
    model = scaled_mlp()
    names = helper.make_tensor("names", onnx.TensorProto.STRING, [200], [f"class {i}".encode() for i in range(200)])
    scale = next(t for t in model.graph.initializer if t.name == "unit_scale")
    typed = helper.make_tensor("unit_scale", onnx.TensorProto.FLOAT, [HIDDEN], numpy_helper.to_array(scale).tolist())
    scale.CopyFrom(typed)
    model.graph.initializer.append(names)
    model.graph.node.extend([helper.make_node("ArgMax", ["y"], ["best"], axis=1, keepdims=0),
                             helper.make_node("Gather", ["names", "best"], ["label"])])
    model.graph.output.append(helper.make_tensor_value_info("label", onnx.TensorProto.STRING, ["N"]))
    art = build_artifacts(insert_masks(model, ["fc1.w"]).model, LossSpec("classify", "y", 1.0, 0.0, num_classes=3),
                          tmp_path)
    training = onnx.load(str(art.training_model), load_external_data=False)
    kept = {t.name: t for t in training.graph.initializer}
    assert kept["names"].string_data[7] == b"class 7" and len(kept["unit_scale"].float_data) == HIDDEN
    module = api.Module(str(art.training_model), api.CheckpointState.load_checkpoint(str(art.checkpoint)),
                        str(art.eval_model))
    x, labels = blobs(16, 6, 3)
    module.train()
    assert np.isfinite(float(module(x, np.eye(3, dtype=np.float32)[labels])[0]))
