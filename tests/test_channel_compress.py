"""`--structure channel` end to end: a residual CNN compressed to a smaller dense model that meets the target."""

from __future__ import annotations

import channel_graphs as cg
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from graphs import init_arrays, run

import onnx_dns
from cli.main import main
from onnx_dns.fold import read_metadata
from onnx_dns.prunable import find_layers


@pytest.fixture(scope="module")
def case():
    model = cg.residual(0, width=16)
    x = np.random.default_rng(0).standard_normal((384, 3, 8, 8)).astype(np.float32)
    return model, x, run(model, {"x": x})[0].argmax(1).astype(np.int64)


@pytest.fixture(scope="module")
def result(case):
    model, x, y = case
    return onnx_dns.compress(model, {"x": x, "labels": y}, structure="channel", target="3x", iterations=150,
                             batch_size=32, lr=0.01, threads=1)


def test_channel_surgery_reaches_the_target_with_fewer_filters(case, result):
    model, x, _ = case
    before, after = init_arrays(model), init_arrays(result.model)
    sizes = {t.name: t.size for layer in find_layers(model) for t in layer.tensors}
    kept = sum(after[name].size for name in sizes)
    assert sum(sizes.values()) / kept >= 2.5
    assert after["conv1.w"].shape[0] < before["conv1.w"].shape[0]
    assert after["conv14.w"].shape[0] < 32 and after["gemm19.w"].shape[1] == after["conv14.w"].shape[0]
    onnx.checker.check_model(result.model, full_check=True)
    assert not result.model.graph.sparse_initializer and not any("__dns" in n for n in after)
    assert [i.name for i in result.model.graph.input] == ["x"] and run(result.model, {"x": x[:5]})[0].shape == (5, 4)


def test_the_written_model_records_channels_macs_and_latency(result):
    record = read_metadata(result.model)
    assert record["structure"] == "channel" and record["macs"][1] < record["macs"][0]
    assert all(kept < total for kept, total in record["channels"].values())
    assert set(record["latency_ms"]) == {"1", "32"}
    assert result.accuracy_after.score >= result.accuracy_before.score - 15


def test_inspect_shows_the_channels_kept(result, tmp_path):
    onnx.save(result.model, str(tmp_path / "small.onnx"))
    out = CliRunner().invoke(main, ["inspect", str(tmp_path / "small.onnx")])
    assert out.exit_code == 0 and "channels kept: conv1 " in out.stdout and "MACs at batch 1" in out.stdout
    shown = out.stdout.split("before channel surgery: ")[1].split(" (")[0]
    before = sum(t.size for layer in find_layers(result.model) for t in layer.tensors)
    assert shown.split(" -> ")[1] == f"{before:,}"  # what the small model holds
    assert int(shown.split(" -> ")[0].replace(",", "")) > 2.5 * before


def test_channel_structure_refuses_sparse_storage(case, tmp_path):
    model, x, y = case
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "d.npz", x=x, labels=y)
    out = CliRunner().invoke(main, ["compress", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "o.onnx"),
                                    "--data", str(tmp_path / "d.npz"), "--structure", "channel", "--format", "sparse"])
    assert out.exit_code == 2 and "--structure channel writes a smaller dense model" in out.stderr


def test_the_command_line_summary_gives_channels_macs_and_latency(case, tmp_path):
    model, x, y = case
    onnx.save(model, str(tmp_path / "m.onnx"))
    np.savez(tmp_path / "d.npz", x=x, labels=y)
    out = CliRunner().invoke(main, ["compress", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "o.onnx"),
                                    "--data", str(tmp_path / "d.npz"), "--structure", "channel", "--target", "3x",
                                    "--iterations", "60", "--batch-size", "32", "--threads", "1"])
    assert out.exit_code == 0, out.output
    assert "channels kept: conv1 " in out.stdout and "latency at batch 32" in out.stdout
    written = onnx.load(str(tmp_path / "o.onnx"))
    assert init_arrays(written)["conv1.w"].shape[0] < 16
