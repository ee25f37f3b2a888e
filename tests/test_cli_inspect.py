"""`onnx-dns inspect` and the CLI's error handling: exit codes from cli/main.py's docstring, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from graphs import BAD_MODEL_FILES, cnn, mlp, set_initializer, untrainable_ops, write_bad_model

import cli.common as cli_common
import cli.main as cli_main
import onnx_dns
from onnx_dns.errors import AccuracyBoundError, DataError, DnsError, ModelError, OutputError, TrainingError
from onnx_dns.fold import fold_masks
from onnx_dns.insert_masks import insert_masks, mask_name

ROOT = Path(__file__).resolve().parents[1]


def invoke(*args: str):
    return CliRunner().invoke(cli_main.main, list(args))


def assert_one_line_error(result, code: int) -> str:
    assert result.exit_code == code, (result.exit_code, result.output, result.stderr)
    assert isinstance(result.exception, SystemExit)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert result.stdout == ""
    return lines[0]


def test_documented_exit_codes_match_the_error_classes():
    doc = " ".join(cli_main.__doc__.split())
    for cls, words in ((ModelError, "bad model"), (DataError, "bad data"), (TrainingError, "training failed"),
                       (AccuracyBoundError, "accuracy bound missed"), (OutputError, "output not writable")):
        assert f"{cls.exit_code} {words}" in doc
    assert f"{cli_main.EXIT_INTERRUPTED} interrupted" in doc
    assert "1 unexpected internal error" in doc


@pytest.mark.parametrize("kind", sorted(BAD_MODEL_FILES))
def test_bad_model_files_exit_with_the_model_error_code(kind, tmp_path):
    path = write_bad_model(kind, tmp_path)
    line = assert_one_line_error(invoke("inspect", path), ModelError.exit_code)
    assert line.startswith("error: ")
    assert path in line
    assert BAD_MODEL_FILES[kind] in line.lower()


def test_bad_model_error_in_a_real_process(tmp_path):
    path = write_bad_model("truncated", tmp_path)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", "from cli.main import main; main()", "inspect", path],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert proc.returncode == ModelError.exit_code
    assert proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_debug_shows_the_real_exception(tmp_path):
    result = invoke("--debug", "inspect", write_bad_model("empty", tmp_path))
    assert result.exit_code == ModelError.exit_code  # the documented code, traceback or not
    assert "Traceback (most recent call last)" in result.stderr and "ModelError" in result.stderr
    assert result.stderr.splitlines()[-1].startswith("error: ")


def make_command(exc: BaseException) -> click.Group:
    """A throwaway group + command that raises `exc` through cli.main.handle_errors."""

    @click.group()
    @click.option("--debug", is_flag=True)
    @click.pass_context
    def group(ctx, debug):
        ctx.obj = cli_common.Context(debug)

    @group.command()
    @cli_common.handle_errors
    def boom():
        raise exc

    return group


@pytest.mark.parametrize("cls", [DnsError, ModelError, DataError, TrainingError, AccuracyBoundError, OutputError])
def test_every_library_error_maps_to_its_exit_code(cls):
    result = CliRunner().invoke(make_command(cls("something is wrong; do this")), ["boom"])
    line = assert_one_line_error(result, cls.exit_code)
    assert "something is wrong; do this" in line


def test_unexpected_errors_exit_1_with_one_line():
    result = CliRunner().invoke(make_command(RuntimeError("kaputt")), ["boom"])
    line = assert_one_line_error(result, 1)
    assert "kaputt" in line and "--debug" in line


def test_interrupt_exits_130():
    result = CliRunner().invoke(make_command(KeyboardInterrupt()), ["boom"])
    assert_one_line_error(result, cli_main.EXIT_INTERRUPTED)


def test_usage_error_exits_2():
    assert invoke("inspect").exit_code == 2
    assert invoke("no-such-command").exit_code == 2


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0
    assert onnx_dns.__version__ in result.output


def test_inspect_prints_the_table(save):
    path = save(untrainable_ops())
    result = invoke("inspect", str(path))
    assert result.exit_code == 0, result.output
    assert "uconv" in result.stdout
    assert "LRN" in result.stdout and "PRelu" in result.stdout
    assert result.stderr == ""


def sparse_folded_model() -> tuple[onnx.ModelProto, dict[str, int]]:
    """A cnn folded to sparse storage with known nonzero counts per layer."""
    model = cnn()
    masked = insert_masks(model, ["conv1.w", "conv1.b", "fc.w", "fc.b"]).model
    rng = np.random.default_rng(11)
    nonzeros = {"conv1": 0, "fc": 0}
    for layer, names in (("conv1", ("conv1.w", "conv1.b")), ("fc", ("fc.w", "fc.b"))):
        for name in names:
            shape = tuple(next(t for t in model.graph.initializer if t.name == name).dims)
            keep = rng.random(shape) < 0.1
            nonzeros[layer] += int(keep.sum())
            set_initializer(masked, mask_name(name), keep)
    return fold_masks(masked, sparse=True).model, nonzeros


def test_inspect_json_parses_and_matches_the_model(save):
    folded, nonzeros = sparse_folded_model()
    assert folded.graph.sparse_initializer
    path = save(folded, "folded.onnx")
    result = invoke("inspect", str(path), "--json")
    assert result.exit_code == 0, result.output + result.stderr
    data = json.loads(result.stdout)
    sizes = {t.name: int(np.prod(t.dims)) for t in cnn().graph.initializer}
    params = {"conv1": sizes["conv1.w"] + sizes["conv1.b"], "fc": sizes["fc.w"] + sizes["fc.b"]}
    assert [x["name"] for x in data["layers"]] == ["conv1", "fc"]
    assert {x["name"]: x["params"] for x in data["layers"]} == params
    assert {x["name"]: x["nonzeros"] for x in data["layers"]} == nonzeros
    for layer in data["layers"]:
        assert layer["sparsity"] == pytest.approx(100 * (1 - nonzeros[layer["name"]] / params[layer["name"]]),
                                                  abs=1e-3)
    assert data["totals"]["params"] == sum(params.values())
    assert data["totals"]["nonzeros"] == sum(nonzeros.values())
    assert data["totals"]["compression"] == pytest.approx(sum(params.values()) / sum(nonzeros.values()),
                                                          abs=1e-3)
    assert data["file_size"] == path.stat().st_size
    assert data["ir_version"] == 8 and data["opsets"] == {"ai.onnx": 17}
    assert data["untrainable"] == {}


def test_inspect_json_lists_untrainable_operators(save):
    result = invoke("inspect", "--json", str(save(untrainable_ops())))
    assert result.exit_code == 0
    assert set(json.loads(result.stdout)["untrainable"]) == {"LRN", "PRelu"}


def test_inspect_reads_a_model_with_external_data(tmp_path):
    model = mlp()
    onnx.save_model(model, str(tmp_path / "ext.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.bin", size_threshold=0)
    result = invoke("inspect", "--json", str(tmp_path / "ext.onnx"))
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    sizes = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer}
    assert data["totals"]["params"] == sizes["fc1.w"] + sizes["fc1.b"] + sizes["fc2.w"] + sizes["fc2.b"]
    assert data["totals"]["nonzeros"] == data["totals"]["params"]
