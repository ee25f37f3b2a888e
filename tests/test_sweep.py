"""`onnx_dns.sweep` and `onnx-dns sweep`: one model per target, ascending, warm-started, graphs built once, and
the chosen model the most compressed within the bound; checked against the written files themselves."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from engine_fixtures import blobs, dense_initializers, predict, trained_classifier

import onnx_dns
from cli.main import main
from onnx_dns.errors import OptionError
from onnx_dns.evaluate import Metrics
from onnx_dns.sweep import SweepPoint, choose, parse_targets

PRUNED = ("fc1.w", "fc1.b", "fc2.w", "fc2.b")
TRAIN = {"iterations": 80, "batch_size": 32, "eval_every": 40, "lr": 0.02, "threads": 1}


@pytest.fixture(scope="module")
def case():
    x, y = blobs(360, 6, 3, seed=11)
    vx, vy = blobs(150, 6, 3, seed=12)
    return trained_classifier(x, y, 3, hidden=24), {"x": x, "labels": y}, {"x": vx, "labels": vy}


def compression_of(path) -> float:
    """params / nonzeros of the pruned tensors, counted from the file (sparse initializers densified here)."""
    arrays = dense_initializers(onnx.load(str(path)))
    return sum(arrays[n].size for n in PRUNED) / sum(int(np.count_nonzero(arrays[n])) for n in PRUNED)


def test_parse_targets_sorts_and_deduplicates():
    assert parse_targets("8x, 2x,4,2") == [2.0, 4.0, 8.0]
    assert parse_targets(["3x", 1.5]) == [1.5, 3.0]
    with pytest.raises(OptionError):
        parse_targets("2x,lots")


def _point(compression: float, within: bool) -> SweepPoint:
    return SweepPoint(compression, compression, Metrics("classify", 10, top1=90.0), 1, 0.1, within, False)


def test_choose_takes_the_most_compressed_point_within_the_bound():
    points = [_point(2, True), _point(4, True), _point(8, False), _point(16, False)]
    assert choose(points) == 1
    assert choose([_point(2, False)]) is None
    assert choose([_point(4, True), _point(2, True)]) == 0


def test_sweep_writes_each_target_and_the_chosen_copy(case, tmp_path):
    model, train, val = case
    events = []
    result = onnx_dns.sweep(model, train, val=val, targets="6x,2x,3x", out_dir=tmp_path, max_accuracy_drop=2.0,
                            progress=events.append, **TRAIN)

    assert [p.target for p in result.points] == [2.0, 3.0, 6.0]
    assert sum(e["event"] == "building" for e in events) == 1  # one set of training graphs for all targets
    for point in result.points:
        path = tmp_path / f"model.{point.target:g}x.onnx"
        assert point.path == str(path) and point.file_size == path.stat().st_size
        assert compression_of(path) == pytest.approx(point.target, rel=0.03)
        assert point.latency_ms > 0
        labels_hit = (predict(onnx.load(str(path)), val["x"]).argmax(1) == val["labels"]).mean() * 100
        assert point.metrics.top1 == pytest.approx(labels_hit)
        assert point.within_bound == (point.metrics.top1 >= result.baseline.top1 - 2.0)
    assert result.chosen == choose(result.points)
    if result.best is not None:
        assert (tmp_path / "model.best.onnx").read_bytes() == open(result.best.path, "rb").read()
    table = json.loads((tmp_path / "model.sweep.json").read_text())
    assert [p["compression"] for p in table["points"]] == [round(p.compression, 3) for p in result.points]
    markdown = (tmp_path / "model.sweep.md").read_text()
    assert all(f"| {t}x |" in markdown for t in ("2", "3", "6"))


def test_warm_start_begins_each_target_from_the_previous_masks(case):
    model, train, val = case
    starts = {}
    for warm in (True, False):
        events = []
        onnx_dns.sweep(model, train, val=val, targets="2x,5x", warm_start=warm, progress=events.append, **TRAIN)
        starts[warm] = [e["compression"] for e in events if e["event"] == "start"]
    assert starts[True][0] == pytest.approx(1.0) and starts[True][1] == pytest.approx(2.0, rel=0.03)
    assert starts[False] == pytest.approx([1.0, 1.0])


def test_sweep_refuses_a_single_target_keyword(case):
    model, train, val = case
    with pytest.raises(OptionError, match="targets="):
        onnx_dns.sweep(model, train, targets="2x", target="4x")


def test_cli_sweep_exit_code_and_files(case, tmp_path):
    model, train, val = case
    onnx.save(model, str(tmp_path / "net.onnx"))
    np.savez(tmp_path / "train.npz", **train)
    np.savez(tmp_path / "val.npz", **val)
    common = ["sweep", tmp_path / "net.onnx", "--data", tmp_path / "train.npz", "--val", tmp_path / "val.npz",
              "--iterations", "60", "--batch-size", "32", "--eval-every", "60", "--threads", "1", "-q"]
    ok = CliRunner().invoke(main, [str(a) for a in [*common, "--targets", "2x,4x", "-o", tmp_path / "out",
                                                    "--report-html", tmp_path / "out" / "r.html"]])
    assert ok.exit_code == 0, (ok.stdout, ok.stderr)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "net.2x.onnx", "net.4x.onnx", "net.best.onnx", "net.sweep.json", "net.sweep.md", "r.html"]
    assert "**chosen**" in ok.stdout
    # 500x leaves ~1 weight of 243: far below a zero-point bound, so no model qualifies and the gate fails
    missed = CliRunner().invoke(main, [str(a) for a in [*common, "--targets", "500x", "--max-accuracy-drop", "0",
                                                        "-o", tmp_path / "missed"]])
    assert missed.exit_code == 6, (missed.stdout, missed.stderr)
    assert not (tmp_path / "missed" / "net.best.onnx").exists()
    assert (tmp_path / "missed" / "net.500x.onnx").exists()


def test_the_original_is_measured_once_for_all_targets(case, monkeypatch):
    from onnx_dns import finalize, objective

    measured = []
    real = finalize.measure_model
    for module in (finalize, objective):
        monkeypatch.setattr(module, "measure_model",
                            lambda model, *a, **k: measured.append(model) or real(model, *a, **k))
    model, train, val = case
    result = onnx_dns.sweep(model, train, val=val, targets="2x,3x,5x", **{**TRAIN, "iterations": 20})
    assert len(measured) == 1 + 3  # the original, then each target's result
    assert all(p.result.accuracy_before == result.baseline for p in result.points)
