"""`onnx-dns compress` end to end through click's CliRunner, checked against the written files themselves."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from engine_fixtures import blobs, dense_initializers, predict, trained_classifier

from cli.main import main
from onnx_dns.errors import AccuracyBoundError, OutputError

LAYERS = {"fc1": ("fc1.w", "fc1.b"), "fc2": ("fc2.w", "fc2.b")}


@pytest.fixture
def case(tmp_path):
    """A small 'pretrained' classifier on disk, training data with labels, and separate validation data."""
    x, y = blobs(360, 6, 3, seed=11)
    vx, vy = blobs(120, 6, 3, seed=12)
    model = trained_classifier(x, y, 3, hidden=24)
    onnx.save(model, str(tmp_path / "model.onnx"))
    np.savez(tmp_path / "train.npz", x=x, labels=y)
    np.savez(tmp_path / "val.npz", x=vx, labels=vy)
    return tmp_path, model, (vx, vy)


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def compress_args(folder, *extra, output="out.onnx"):
    return ["compress", folder / "model.onnx", "-o", folder / output, "--data", folder / "train.npz",
            "--val", folder / "val.npz", "--iterations", "120", "--batch-size", "32", "--eval-every", "60",
            "--checkpoint-every", "60", "--lr", "0.02", "--default-c", "1.0", "--threads", "1", *extra]


def one_line_error(result, code: int) -> str:
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr, result.exception)
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error") or code == 2
    return lines[-1]


def count(model: onnx.ModelProto) -> dict[str, tuple[int, int]]:
    """(params, nonzeros) per layer, read from the model's initializers (sparse ones densified here)."""
    arrays = dense_initializers(model)
    return {layer: (sum(arrays[n].size for n in names), sum(int(np.count_nonzero(arrays[n])) for n in names))
            for layer, names in LAYERS.items()}


def test_compress_end_to_end_with_a_report(case):
    folder, model, (vx, vy) = case
    before_bytes = (folder / "model.onnx").read_bytes()
    result = invoke(*compress_args(folder, "--report", folder / "report.json"))
    assert result.exit_code == 0, (result.stdout, result.stderr, result.exception)
    assert (folder / "model.onnx").read_bytes() == before_bytes  # the input is never touched
    assert not (folder / "out.onnx.dns-work").exists()  # the work folder goes after success

    written = onnx.load(str(folder / "out.onnx"))
    onnx.checker.check_model(written)
    counts = count(written)
    report = json.loads((folder / "report.json").read_text())
    params = sum(p for p, _ in counts.values())
    nonzeros = sum(n for _, n in counts.values())
    assert params == 6 * 24 + 24 + 24 * 3 + 3
    assert 1 < params / nonzeros  # it did prune
    assert written.graph.sparse_initializer  # pruned weights are stored sparse by default

    assert report["summary"]["params"] == params
    assert report["summary"]["nonzeros"] == nonzeros
    assert report["summary"]["compression"] == pytest.approx(params / nonzeros, abs=1e-3)
    weights = dense_initializers(written)
    w_nonzeros = sum(int(np.count_nonzero(weights[n])) for n in ("fc1.w", "fc2.w"))
    assert report["summary"]["weight_compression"] == pytest.approx((6 * 24 + 24 * 3) / w_nonzeros, abs=1e-3)
    after = {layer["name"]: (layer["params"], layer["nonzeros"]) for layer in report["layers_after"]}
    assert after == counts
    assert {layer["name"]: layer["nonzeros"] for layer in report["layers_before"]} == \
        {name: p for name, (p, _) in counts.items()}
    assert report["file_size_before"] == len(before_bytes)
    assert report["file_size_after"] == (folder / "out.onnx").stat().st_size
    assert report["output"] == str(folder / "out.onnx") and report["met_bound"] is True
    assert report["iterations"] == 120

    # accuracies: what plain onnxruntime gives on the validation file, before and after
    top1_before = 100 * np.mean(predict(model, vx).argmax(1) == vy)
    top1_after = 100 * np.mean(predict(written, vx).argmax(1) == vy)
    assert report["accuracy_before"]["top1"] == pytest.approx(top1_before)
    assert report["accuracy_after"]["top1"] == pytest.approx(top1_after)
    assert report["accuracy_before"]["samples"] == len(vx) == report["accuracy_after"]["samples"]
    assert top1_after > 85

    # the record inside the model agrees too
    record = json.loads(next(p.value for p in written.metadata_props if p.key == "onnx_dns"))
    assert {name: (v["params"], v["nonzeros"]) for name, v in record["layers"].items()} == counts

    # and the summary line says the same numbers
    assert f"{params:,} -> {nonzeros:,}" in result.stdout


def test_dense_writes_no_sparse_initializers(case):
    folder, _, (vx, _) = case
    sparse = invoke(*compress_args(folder, output="sparse.onnx"))
    dense = invoke(*compress_args(folder, "--dense", output="dense.onnx"))
    assert sparse.exit_code == 0 and dense.exit_code == 0, (dense.stderr, dense.exception)
    dense_model = onnx.load(str(folder / "dense.onnx"))
    sparse_model = onnx.load(str(folder / "sparse.onnx"))
    assert len(dense_model.graph.sparse_initializer) == 0
    assert len(sparse_model.graph.sparse_initializer) > 0
    # the same run (same seed) stored two ways: identical values, exact zeros in the dense file
    dense_arrays, sparse_arrays = dense_initializers(dense_model), dense_initializers(sparse_model)
    for names in LAYERS.values():
        for n in names:
            np.testing.assert_array_equal(dense_arrays[n], sparse_arrays[n])
    assert count(dense_model) == count(sparse_model)
    assert sum(p - n for p, n in count(dense_model).values()) > 0
    np.testing.assert_allclose(predict(dense_model, vx), predict(sparse_model, vx), rtol=1e-5, atol=1e-5)


def test_json_output_parses(case):
    folder, _, _ = case
    result = invoke(*compress_args(folder, "--json"))
    assert result.exit_code == 0, (result.stderr, result.exception)
    data = json.loads(result.stdout)  # stdout holds the JSON document and nothing else
    written = count(onnx.load(str(folder / "out.onnx")))
    assert data["summary"]["nonzeros"] == sum(n for _, n in written.values())
    assert data["output"] == str(folder / "out.onnx")


def test_a_missed_accuracy_bound_exits_6_and_writes_the_below_bound_model(case):
    folder, _, _ = case
    result = invoke(*compress_args(folder, "--target", "1000x", "--max-accuracy-drop", "1", "--eval-every", "120",
                                   "--report", folder / "report.json"))
    line = one_line_error(result, AccuracyBoundError.exit_code)
    below = folder / "out.below-bound.onnx"
    assert below.exists() and not (folder / "out.onnx").exists()
    assert str(below) in line
    report = json.loads((folder / "report.json").read_text())
    assert report["met_bound"] is False and report["output"] == str(below)
    assert count(onnx.load(str(below))) == {name: (p, n) for name, (p, n) in
                                           ((x["name"], (x["params"], x["nonzeros"])) for x in report["layers_after"])}


def test_a_work_dir_that_is_not_ours_is_never_deleted(case):
    folder, _, _ = case
    mine = folder / "my-files"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    result = invoke(*compress_args(folder, "--work-dir", mine))
    one_line_error(result, OutputError.exit_code)
    assert (mine / "thesis.tex").read_text() == "precious"
