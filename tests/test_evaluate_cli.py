"""`onnx-dns evaluate`: accuracy measured in a plain onnxruntime session, and the CI gate's exit codes."""

from __future__ import annotations

import json

import numpy as np
import onnx
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from cli.main import main


def linear_classifier(weight: np.ndarray) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="fc")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", weight.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", weight.shape[1]])],
        [numpy_helper.from_array(weight.astype(np.float32), "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def setup(tmp_path):
    """A 4-class problem, a dense model close to the identity map, and a copy with one weight zeroed."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 4)).astype(np.float32)
    labels = x.argmax(axis=1)
    np.savez(tmp_path / "val.npz", x=x, labels=labels)
    np.savez(tmp_path / "unlabelled.npz", x=x)
    dense = np.eye(4) + 1e-3 * (1 - np.eye(4))
    good = tmp_path / "good.onnx"
    onnx.save(linear_classifier(dense), str(good))
    broken = dense.copy()
    broken[3, 3] = 0
    bad = tmp_path / "bad.onnx"
    onnx.save(linear_classifier(broken), str(bad))
    expected_bad = float(np.mean((x.astype(np.float32) @ broken.astype(np.float32)).argmax(axis=1) == labels) * 100)
    return good, bad, expected_bad


def invoke(*args):
    return CliRunner().invoke(main, ["evaluate", *map(str, args)])


def test_accuracy_is_measured_on_the_model(tmp_path):
    good, bad, expected_bad = setup(tmp_path)
    result = invoke(bad, "--data", tmp_path / "val.npz", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert abs(data["metrics"]["top1"] - expected_bad) < 1e-9
    assert data["metrics"]["samples"] == 400
    assert json.loads(invoke(good, "--data", tmp_path / "val.npz", "--json").output)["metrics"]["top1"] > 99


def test_min_accuracy_gate_fails_with_exit_6(tmp_path):
    good, bad, expected_bad = setup(tmp_path)
    assert invoke(good, "--data", tmp_path / "val.npz", "--min-accuracy", 99).exit_code == 0
    result = invoke(bad, "--data", tmp_path / "val.npz", "--min-accuracy", 99)
    assert result.exit_code == 6
    assert "below --min-accuracy" in result.output
    assert "Traceback" not in result.output


def test_drop_against_reference(tmp_path):
    good, bad, expected_bad = setup(tmp_path)
    reference = json.loads(invoke(good, "--data", tmp_path / "val.npz", "--json").output)["metrics"]["top1"]
    drop = reference - expected_bad
    assert invoke(bad, "--data", tmp_path / "val.npz", "--reference", good,
                  "--max-accuracy-drop", drop + 0.5).exit_code == 0
    result = invoke(bad, "--data", tmp_path / "val.npz", "--reference", good, "--max-accuracy-drop", drop - 0.5)
    assert result.exit_code == 6
    assert "dropped" in result.output


def test_unlabelled_data_scores_agreement_with_reference(tmp_path):
    good, bad, expected_bad = setup(tmp_path)
    result = invoke(bad, "--data", tmp_path / "unlabelled.npz", "--reference", good, "--json")
    assert result.exit_code == 0, result.output
    assert abs(json.loads(result.output)["metrics"]["fidelity"] - expected_bad) < 1e-9
    missing = invoke(bad, "--data", tmp_path / "unlabelled.npz")
    assert missing.exit_code == 4
    assert "--reference" in missing.output


def test_min_compression_gate(tmp_path):
    good, bad, _ = setup(tmp_path)
    assert invoke(good, "--data", tmp_path / "val.npz", "--min-compression", 1.05).exit_code == 6
    assert invoke(bad, "--data", tmp_path / "val.npz", "--min-compression", 1.05).exit_code == 0
    assert invoke(bad, "--data", tmp_path / "val.npz", "--min-compression", 1.1).exit_code == 6
