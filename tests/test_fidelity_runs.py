"""Task-aware fidelity in whole runs: a label-free compress scored and bounded by decision overlap, the command
line's summary, report and exit code, evaluate against a reference, sensitivity curves and dns.json."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from graphs import make_model, run, tensor, value
from onnx import helper

import onnx_dns
from cli.main import main
from onnx_dns.errors import OptionError
from onnx_dns.fidelity import BoxesReproduced
from onnx_dns.options import merge

X = {"x": np.random.default_rng(2).standard_normal((2, 2, 8, 8)).astype(np.float32)}



def sigmoid_map(seed: int = 0) -> onnx.ModelProto:
    """x[N, 2, 8, 8] -> Conv 3x3 to 8 channels -> Relu -> Conv 1x1 to one channel -> Sigmoid: a probability map."""
    rng = np.random.default_rng(seed)
    inits = [tensor("c1.w", (0.5 * rng.standard_normal((8, 2, 3, 3))).astype(np.float32)),
             tensor("c1.b", np.zeros(8, np.float32)),
             tensor("c2.w", (2.0 * rng.standard_normal((1, 8, 1, 1))).astype(np.float32)),
             tensor("c2.b", np.zeros(1, np.float32))]
    nodes = [helper.make_node("Conv", ["x", "c1.w", "c1.b"], ["h"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Conv", ["r", "c2.w", "c2.b"], ["z"]),
             helper.make_node("Sigmoid", ["z"], ["y"])]
    return make_model(nodes, [value("x", ["N", 2, 8, 8])], [value("y", ["N", 1, 8, 8])], inits)


def maps_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    return (rng.standard_normal((256, 2, 8, 8)).astype(np.float32),
            rng.standard_normal((64, 2, 8, 8)).astype(np.float32))


def test_a_label_free_compress_of_a_sigmoid_map_is_scored_and_bounded_by_decision_overlap():
    x, v = maps_data()
    model = sigmoid_map()
    result = onnx_dns.compress(model, {"x": x}, val={"x": v}, target="2x", iterations=60, batch_size=32,
                               eval_every=30, max_accuracy_drop=15)
    before, after = result.accuracy_before, result.accuracy_after
    assert before.measure == after.measure == "decisions" and before.score == 100.0
    a, b = run(model, {"x": v})[0] > 0.5, run(result.model, {"x": v})[0] > 0.5
    assert after.score == pytest.approx(200 * np.sum(a & b) / (a.sum() + b.sum()))
    assert all(h["metrics"].measure == "decisions" for h in result.history)
    # the decisions stay within 15 points while the relative error grows by more: the bound read the decisions
    assert 100 - after.score <= 15 < after.relative_error and result.met_bound
    assert result.to_dict()["summary"]["measure"] == "decisions"


def test_fidelity_boxes_scores_a_sigmoid_map_by_the_regions_it_reproduces():
    x, v = maps_data()
    model = sigmoid_map()
    result = onnx_dns.compress(model, {"x": x}, val={"x": v}, target="4x", iterations=30, batch_size=32,
                               eval_every=30, max_accuracy_drop="none", fidelity="boxes")
    before, after = result.accuracy_before, result.accuracy_after
    assert before.measure == after.measure == "boxes" and before.score == 100.0
    tally = BoxesReproduced()
    tally.add(run(result.model, {"x": v})[0], run(model, {"x": v})[0])
    assert tally.original > 64 and after.score == pytest.approx(tally.percent) and after.score < 100
    assert after.describe() == f"detections reproduced {tally.percent:.2f}%"


def test_the_command_line_names_the_measure_and_fails_the_bound_on_it(tmp_path):
    x, v = maps_data()
    onnx.save(sigmoid_map(), str(tmp_path / "map.onnx"))
    np.savez(tmp_path / "train.npz", x=x)
    np.savez(tmp_path / "val.npz", x=v)
    result = CliRunner().invoke(main, ["compress", str(tmp_path / "map.onnx"), "-o", str(tmp_path / "out.onnx"),
                                       "--data", str(tmp_path / "train.npz"), "--val", str(tmp_path / "val.npz"),
                                       "--target", "8x", "--iterations", "30", "--eval-every", "30",
                                       "--batch-size", "32", "--max-accuracy-drop", "5", "--json"])
    assert result.exit_code == 6, result.output
    report = json.loads(result.stdout)
    assert report["summary"]["measure"] == "decisions" and report["accuracy_after"]["fidelity"] < 95
    assert "decision overlap at 0.5 100.00% -> decision overlap at 0.5" in result.stderr
    assert "decision overlap at 0.5 dropped" in result.stderr
    assert "(--fidelity boxes judges a one-channel map by its regions); the model is in" in result.stderr
    relative = CliRunner().invoke(main, ["compress", str(tmp_path / "map.onnx"), "-o", str(tmp_path / "re.onnx"),
                                         "--data", str(tmp_path / "train.npz"), "--val", str(tmp_path / "val.npz"),
                                         "--target", "8x", "--iterations", "30", "--batch-size", "32",
                                         "--max-accuracy-drop", "none", "--fidelity", "relative-error", "--json"])
    assert relative.exit_code == 0, relative.output
    assert json.loads(relative.stdout)["summary"]["measure"] == "relative-error"


def test_evaluate_scores_a_label_free_map_against_the_reference_by_decisions(tmp_path):
    original = sigmoid_map()
    changed = onnx.ModelProto()
    changed.CopyFrom(original)
    head_weights = onnx.numpy_helper.to_array(original.graph.initializer[2]).copy()
    head_weights[0, :3] *= -1
    changed.graph.initializer[2].CopyFrom(tensor("c2.w", head_weights))
    onnx.save(original, str(tmp_path / "original.onnx"))
    onnx.save(changed, str(tmp_path / "changed.onnx"))
    np.savez(tmp_path / "x.npz", **X)
    args = ["evaluate", str(tmp_path / "changed.onnx"), "--data", str(tmp_path / "x.npz"), "--reference",
            str(tmp_path / "original.onnx"), "--json"]
    report = json.loads(CliRunner().invoke(main, args).stdout)
    a, b = run(original, X)[0] > 0.5, run(changed, X)[0] > 0.5
    assert report["metrics"]["measure"] == "decisions" and report["reference"]["score"] == 100.0
    assert report["metrics"]["fidelity"] == pytest.approx(200 * np.sum(a & b) / (a.sum() + b.sum()))
    assert 0 < report["metrics"]["fidelity"] < 95
    plain = json.loads(CliRunner().invoke(main, [*args, "--fidelity", "relative-error"]).stdout)
    assert plain["metrics"]["measure"] == "relative-error" and plain["metrics"]["fidelity"] is None
    gated = CliRunner().invoke(main, [*args, "--max-accuracy-drop", "1"])
    assert gated.exit_code == 6 and "--max-accuracy-drop 1.0 (--fidelity boxes judges" in gated.output


def test_dns_json_may_choose_the_measure_and_a_wrong_one_is_named():
    assert merge({}, {"fidelity": "cosine"}).fidelity == "cosine"
    assert merge({"fidelity": "boxes"}, {"fidelity": "cosine"}).fidelity == "boxes"
    assert merge({}, {}).fidelity == "auto"
    with pytest.raises(OptionError, match=r"--fidelity 'dice' \(from dns.json\): choose one of auto, relative-error"):
        merge({}, {"fidelity": "dice"})


def test_sensitivity_curves_are_scored_by_the_chosen_measure():
    x, v = maps_data()
    result = onnx_dns.sensitivity(sigmoid_map(), {"x": x}, val={"x": v}, sparsities=[0.5, 0.95])
    assert result.baseline.measure == "decisions" and result.baseline.score == 100.0
    assert result.markdown().startswith("decision overlap at 0.5 % of the original: 100.00")
    assert all(m.measure == "decisions" for c in result.curves for m in c.metrics)
    assert min(c.scores[-1] for c in result.curves) < 100.0
    plain = onnx_dns.sensitivity(sigmoid_map(), {"x": x}, val={"x": v}, sparsities=[0.5], fidelity="relative-error")
    assert plain.baseline.measure == "relative-error" and plain.baseline.score == 0.0
