"""Per-layer sensitivity: pruning one layer alone by magnitude, scored in onnxruntime; and the allocation of
sparsities from the curves. Expected values are computed here with numpy."""

from __future__ import annotations

import numpy as np
import pytest
from engine_fixtures import blobs, dense_initializers, trained_classifier

import onnx_dns
from onnx_dns.errors import OptionError
from onnx_dns.evaluate import Metrics
from onnx_dns.sensitivity import LayerCurve, SensitivityResult, allocate_sparsities, pruned_copy


@pytest.fixture(scope="module")
def case():
    x, y = blobs(300, 6, 3, seed=3)
    vx, vy = blobs(200, 6, 3, seed=4)
    return trained_classifier(x, y, 3, hidden=20), {"x": x, "labels": y}, {"x": vx, "labels": vy}


def numpy_top1(arrays: dict[str, np.ndarray], x: np.ndarray, labels: np.ndarray) -> float:
    hidden = np.maximum(x @ arrays["fc1.w"] + arrays["fc1.b"], 0)
    logits = hidden @ arrays["fc2.w"] + arrays["fc2.b"]
    return 100.0 * float((logits.argmax(1) == labels).mean())


def test_pruned_copy_zeroes_the_smallest_magnitudes_of_the_layer_jointly(case):
    model, _, _ = case
    before = model.SerializeToString()
    copy = pruned_copy(model, ["fc1.w", "fc1.b"], 0.75)
    original, pruned = dense_initializers(model), dense_initializers(copy)
    joint = np.concatenate([np.abs(original["fc1.w"]).ravel(), np.abs(original["fc1.b"]).ravel()])
    kept = int(round(0.25 * joint.size))
    assert sum(int(np.count_nonzero(pruned[n])) for n in ("fc1.w", "fc1.b")) == kept
    smallest_kept = np.sort(joint)[-kept]
    for name in ("fc1.w", "fc1.b"):
        expected = np.where(np.abs(original[name]) >= smallest_kept, original[name], 0)
        np.testing.assert_array_equal(pruned[name], expected)
    for name in ("fc2.w", "fc2.b"):
        np.testing.assert_array_equal(pruned[name], original[name])
    assert model.SerializeToString() == before


def test_curves_are_the_accuracy_of_the_pruned_copies(case):
    model, train, val = case
    result = onnx_dns.sensitivity(model, train, val=val, sparsities=[0.9, 0.5])
    arrays = dense_initializers(model)
    assert result.baseline.top1 == pytest.approx(numpy_top1(arrays, val["x"], val["labels"]))
    assert [c.layer for c in result.curves] == ["fc1", "fc2"]
    for curve in result.curves:
        assert curve.sparsities == [0.5, 0.9]
        for sparsity, score in zip(curve.sparsities, curve.scores):
            names = [f"{curve.layer}.w", f"{curve.layer}.b"]
            pruned = dense_initializers(pruned_copy(model, names, sparsity))
            assert score == pytest.approx(numpy_top1(pruned, val["x"], val["labels"]), abs=1e-9)
    with pytest.raises(OptionError):
        onnx_dns.sensitivity(model, train, val=val, sparsities=[0.5, 1.0])


def _curve(layer: str, params: int, scores: list[float]) -> LayerCurve:
    sparsities = [0.5, 0.9, 0.99]
    return LayerCurve(layer, params, sparsities, [Metrics("classify", 100, top1=s) for s in scores])


def test_allocation_prunes_the_robust_layer_harder_and_meets_the_budget():
    result = SensitivityResult(Metrics("classify", 100, top1=90.0),
                               [_curve("robust", 1000, [90, 90, 89.5]), _curve("fragile", 1000, [89, 70, 20])])
    sparsities = allocate_sparsities(result, 8.0)
    kept = sum(1000 * (1 - s) for s in sparsities.values())
    assert kept <= 2000 / 8.0 + 1e-6
    assert kept == pytest.approx(2000 / 8.0, rel=0.05)
    assert sparsities["robust"] > 0.95 > sparsities["fragile"]
    with pytest.raises(OptionError, match="beyond the measured"):
        allocate_sparsities(result, 1000.0)


def test_cli_reads_percents_and_writes_the_table(case, tmp_path):
    import json

    import onnx
    from click.testing import CliRunner

    from cli.main import main

    model, train, val = case
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "t.npz", **train)
    np.savez(tmp_path / "v.npz", **val)
    base = ["sensitivity", tmp_path / "m.onnx", "--data", tmp_path / "t.npz", "--val", tmp_path / "v.npz"]
    ok = CliRunner().invoke(main, [str(a) for a in [*base, "--sparsities", "50%,0.9", "--report", tmp_path / "s.json"]])
    assert ok.exit_code == 0, (ok.stdout, ok.stderr)
    assert "| fc1 | 140 |" in ok.stdout and "| 50% | 90% |" in ok.stdout
    saved = json.loads((tmp_path / "s.json").read_text())
    assert [c["sparsities"] for c in saved["layers"]] == [[0.5, 0.9], [0.5, 0.9]]
    bad = CliRunner().invoke(main, [str(a) for a in [*base, "--sparsities", "half"]])
    assert bad.exit_code == 2
