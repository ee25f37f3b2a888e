"""`onnx-dns convert` and `inspect` on packed models: the bundled models convert without retraining, outputs
stay bit-identical for float values, and inspect names each layer's storage and bytes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from graphs import random_feeds, run
from test_compress_cli import case  # noqa: F401,F811  (the fixture)

import cli.main as cli_main
from onnx_dns.model_io import load_model
from onnx_dns.repack import repack

ROOT = Path(__file__).resolve().parents[1]
LENET300 = ROOT / "models" / "lenet300" / "model.dns.onnx"


def invoke(*args: str):
    return CliRunner().invoke(cli_main.main, list(args))


def test_convert_to_packed_keeps_outputs_bit_identical_and_shrinks_the_file(tmp_path):
    out = tmp_path / "packed.onnx"
    result = invoke("convert", str(LENET300), "-o", str(out), "--format", "packed")
    assert result.exit_code == 0, result.output
    assert out.stat().st_size < LENET300.stat().st_size / 2
    packed, sparse = load_model(out), load_model(LENET300)
    assert not packed.graph.sparse_initializer and "ScatterND" in {n.op_type for n in packed.graph.node}
    feeds = random_feeds(sparse, batch=8)
    np.testing.assert_array_equal(run(packed, feeds)[0], run(sparse, feeds)[0])


def test_convert_with_bits_reports_accuracy_before_and_after(tmp_path):
    out = tmp_path / "packed4.onnx"
    result = invoke("convert", str(LENET300), "-o", str(out), "--format", "packed", "--bits", "4",
                    "--data", str(ROOT / "models" / "data" / "mnist"))
    assert result.exit_code == 0, result.output
    assert "4-bit shared weights; top-1 98.04%" in result.output and "before top-1 98.17%" in result.output


def test_convert_refuses_bad_bits_and_writing_over_its_input(tmp_path):
    assert invoke("convert", str(LENET300), "-o", str(tmp_path / "x.onnx"), "--bits", "9").exit_code == 2
    assert invoke("convert", str(LENET300), "-o", str(LENET300)).exit_code == 7


def test_inspect_names_storage_and_bytes_per_layer(tmp_path):
    path = tmp_path / "packed.onnx"
    onnx.save(repack(load_model(LENET300), "packed", 4).model, str(path))
    result = invoke("inspect", str(path), "--json")
    assert result.exit_code == 0, result.output
    layers = {layer["name"]: layer for layer in json.loads(result.output)["layers"]}
    assert layers["fc1"]["storage"] == "packed 4-bit" and layers["fc1"]["nonzeros"] == 3287
    assert 3287 / 2 < layers["fc1"]["stored_bytes"] < 3287 * 2
    sparse = {layer["name"]: layer for layer in json.loads(invoke("inspect", str(LENET300), "--json").output)["layers"]}
    assert sparse["fc1"]["storage"] == "sparse" and sparse["fc1"]["stored_bytes"] == 3258 * 12 + 29 * 12
    text = invoke("inspect", str(path)).output
    assert "packed 4-bit" in text and "storage" in text


def test_compress_writes_packed_shared_weights_and_measures_them(case):
    from test_compress_cli import LAYERS, compress_args, predict
    from test_compress_cli import invoke as invoke_compress

    from onnx_dns.repack import unpack_model

    folder, _, (vx, vy) = case
    result = invoke_compress(*compress_args(folder, "--format", "packed", "--bits", "3", "--json"))
    assert result.exit_code == 0, (result.stderr, result.exception)
    model = onnx.load(str(folder / "out.onnx"))
    assert "ScatterND" in {n.op_type for n in model.graph.node}
    arrays = {t.name: onnx.numpy_helper.to_array(t) for t in unpack_model(model).model.graph.initializer}
    for names in LAYERS.values():
        for name in names:
            assert len(np.unique(arrays[name][arrays[name] != 0])) <= 8
    accuracy = 100 * float(np.mean(predict(model, vx).argmax(1) == vy))
    assert json.loads(result.stdout)["accuracy_after"]["top1"] == pytest.approx(accuracy)
    assert invoke_compress(*compress_args(folder, "--dense", "--format", "packed")).exit_code == 2


def test_a_packed_model_compresses_again(case):
    from test_compress_cli import compress_args
    from test_compress_cli import invoke as invoke_compress

    folder, _, _ = case
    assert invoke("convert", str(folder / "model.onnx"), "-o", str(folder / "packed.onnx"), "--format", "packed",
                  "--bits", "2").exit_code == 0
    assert "ScatterND" in {n.op_type for n in onnx.load(str(folder / "packed.onnx")).graph.node}
    args = compress_args(folder)
    args[1] = folder / "packed.onnx"
    result = invoke_compress(*args, "--json")
    assert result.exit_code == 0, (result.stderr, result.exception)
    layers = json.loads(result.stdout)["layers_after"]
    assert len(layers) == 2 and sum(layer["nonzeros"] for layer in layers) < sum(layer["params"] for layer in layers)
