"""A model's folder is untrusted: its dns.json is data and never runs code, and code named on the command line
is imported without the working directory standing in for installed modules."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from graphs import gemm_transb

from cli.main import main
from onnx_dns.data import InputSpec, load_data
from onnx_dns.errors import DataError, OptionError
from onnx_dns.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]
X_SPEC = [InputSpec("x", np.dtype(np.float32), (None, 6))]
PAYLOAD = """
    from pathlib import Path
    Path({marker!r}).write_text("code ran")

    def batches():
        Path({marker!r}).write_text("code ran")
        return []
"""


def plant(folder: Path, marker: Path, name: str = "payload") -> None:
    """A model folder as it might come from anyone: a model, and a Python file that leaves a marker if run."""
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(gemm_transb(), str(folder / "model.onnx"))
    (folder / f"{name}.py").write_text(textwrap.dedent(PAYLOAD.format(marker=str(marker))))


def test_a_planted_payload_beside_the_model_does_not_run(tmp_path):
    folder, marker = tmp_path / "downloaded", tmp_path / "marker"
    plant(folder, marker)
    (folder / "dns.json").write_text(json.dumps({"data": "payload:batches", "iterations": 1}))
    # plain `python -c` puts the working directory first on sys.path: the refusal must come before any import
    proc = subprocess.run([sys.executable, "-c", "from cli.main import main; main()", "compress", "model.onnx",
                           "-o", "out.onnx"], cwd=folder, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == OptionError.exit_code, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "dns.json" in lines[0] and "'data'" in lines[0] and "--data" in lines[0], lines[0]
    assert not marker.exists()
    assert not (folder / "out.onnx").exists()


@pytest.mark.parametrize("key", ["data", "val"])
@pytest.mark.parametrize("value", ["payload:batches", "./payload.py:batches", "payload.py:batches",
                                   "sub/payload.py:batches", "pkg.payload:batches", "{abs}/payload.py:batches"])
def test_every_code_form_in_dns_json_is_refused_before_import(tmp_path, key, value):
    folder, marker = tmp_path / "m", tmp_path / "marker"
    plant(folder, marker)
    plant(folder / "sub", marker)
    value = value.format(abs=folder)
    (folder / "dns.json").write_text(json.dumps({key: value}))
    with pytest.raises(OptionError) as error:
        load_settings(folder / "model.onnx")
    message = str(error.value)
    assert str(folder / "dns.json") in message and repr(key) in message and f"--{key} " in message
    assert "\n" not in message
    assert not marker.exists()
    assert "payload" not in sys.modules and "pkg" not in sys.modules


def test_dns_json_data_paths_stay_data(tmp_path):
    folder = tmp_path / "m"
    (folder / "a:b").mkdir(parents=True)  # an existing folder is data, whatever its name looks like
    (folder / "dns.json").write_text(json.dumps({"data": "a:b", "val": "val.npz", "lr": 0.1}))
    settings = load_settings(folder / "model.onnx")
    assert settings == {"data": str(folder / "a:b"), "val": str(folder / "val.npz"), "lr": 0.1}
    (folder / "dns.json").write_text(json.dumps({"data": 3}))
    with pytest.raises(OptionError, match="'data' must be a path"):
        load_settings(folder / "model.onnx")


def test_settings_taken_from_dns_json_are_listed_on_stderr(tmp_path, caplog):
    folder = tmp_path / "m"
    folder.mkdir()
    onnx.save(gemm_transb(), str(folder / "model.onnx"))
    (folder / "dns.json").write_text(json.dumps({"data": "train.npz", "lr": 0.25, "target": "30x"}))
    caplog.set_level(logging.NOTSET)
    result = CliRunner().invoke(main, ["compress", str(folder / "model.onnx"), "-o", str(tmp_path / "o.onnx")])
    assert result.exit_code == DataError.exit_code  # train.npz does not exist: the run stops after listing
    listed = [r for r in caplog.records if r.name == "onnx_dns.settings"]
    assert len(listed) == 1 and listed[0].levelno == logging.INFO
    text = listed[0].getMessage()
    assert str(folder / "dns.json") in text
    assert 'lr=0.25' in text and 'target="30x"' in text and str(folder / "train.npz") in text


def test_code_in_dns_json_overridden_on_the_command_line_is_neither_refused_nor_run(tmp_path, caplog):
    folder, marker = tmp_path / "m", tmp_path / "marker"
    plant(folder, marker)
    (folder / "dns.json").write_text(json.dumps({"data": "payload:batches", "lr": 0.5}))
    caplog.set_level(logging.NOTSET)
    result = CliRunner().invoke(main, ["compress", str(folder / "model.onnx"), "-o", str(tmp_path / "o.onnx"),
                                       "--data", str(tmp_path / "none.npz")])
    assert result.exit_code == DataError.exit_code and "none.npz" in result.stderr, result.stderr
    listed = [r.getMessage() for r in caplog.records if r.name == "onnx_dns.settings"]
    assert len(listed) == 1 and "lr=0.5" in listed[0] and "payload" not in listed[0]
    assert not marker.exists()


def installed_and_shadow(tmp_path, monkeypatch, name: str) -> tuple[Path, Path]:
    """An installed module `name` (its batches fit X_SPEC) and, in the working directory, a file of the same
    name that leaves a marker if run. sys.path holds no working-directory entry, as for the onnx-dns script."""
    site, cwd, marker = tmp_path / "site", tmp_path / "cwd", tmp_path / "marker"
    site.mkdir()
    (site / f"{name}.py").write_text(textwrap.dedent("""
        import numpy as np

        def batches():
            return [(np.ones((2, 6), np.float32), np.zeros(2, np.int64))]
    """))
    plant(cwd, marker, name)
    for module in ("json", "numpy", "colorsys"):
        (cwd / f"{module}.py").write_text(textwrap.dedent(PAYLOAD.format(marker=str(marker))))
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(cwd))])
    monkeypatch.syspath_prepend(str(site))
    return site, marker


def test_a_file_in_the_working_directory_does_not_shadow_an_installed_module(tmp_path, monkeypatch):
    name = f"dns_sec_{uuid.uuid4().hex[:8]}"
    site, marker = installed_and_shadow(tmp_path, monkeypatch, name)
    monkeypatch.delitem(sys.modules, "colorsys", raising=False)
    data = load_data(f"{name}:batches", X_SPEC)
    assert Path(sys.modules[name].__file__) == site / f"{name}.py"
    assert data.batch(0, 2, 0)[0]["x"].shape == (2, 6)
    assert load_data("colorsys:rgb_to_hsv", X_SPEC).function(1, 0, 0) == (0.0, 1.0, 1)
    assert load_data("json:dumps", X_SPEC).function([1]) == "[1]"
    assert not marker.exists()
    assert "" not in sys.path and "." not in sys.path


def test_the_cli_imports_the_installed_module_not_the_working_directory_file(tmp_path, monkeypatch):
    name = f"dns_sec_{uuid.uuid4().hex[:8]}"
    _, marker = installed_and_shadow(tmp_path, monkeypatch, name)
    result = CliRunner().invoke(main, ["compress", "model.onnx", "-o", str(tmp_path / "o.onnx"), "--data",
                                       f"{name}:batches", "--val", f"{name}:batches", "--iterations", "2",
                                       "--batch-size", "2", "--threads", "1", "--eval-every", "1", "-q"])
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert sys.modules[name].__file__ == str(tmp_path / "site" / f"{name}.py")
    assert not marker.exists()


def test_a_file_is_loaded_by_its_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    body = """
        import numpy as np

        def batches():
            return [{"x": np.full((2, 6), %d, np.float32)}]
    """
    (tmp_path / "batches.py").write_text(textwrap.dedent(body % 1))
    (tmp_path / "sub" / "batches.py").write_text(textwrap.dedent(body % 2))
    for spec, fill in (("./batches.py:batches", 1), ("batches.py:batches", 1), ("sub/batches.py:batches", 2),
                       (f"{tmp_path}/sub/batches.py:batches", 2)):
        assert np.all(load_data(spec, X_SPEC).batch(0, 2, 0)[0]["x"] == fill), spec
    assert "batches" not in sys.modules  # loaded under a name of its own, never as an importable module


@pytest.mark.parametrize("spec, words", [
    ("no_such_module_xyz:batches", ["no_such_module_xyz:batches", "working directory is not searched",
                                    "./no_such_module_xyz.py:batches"]),
    ("./missing.py:batches", ["./missing.py:batches", "no such python file"]),
    ("./broken.py:batches", ["./broken.py:batches", "zerodivisionerror"]),
    ("./broken_import.py:batches", ["./broken_import.py:batches", "no module named 'not_installed_xyz'"]),
    ("./good.py:nothing", ["./good.py:nothing", "has no 'nothing'"]),
    ("./good.py:VALUE", ["./good.py:VALUE", "not callable"]),
])
def test_code_errors_name_the_spec_and_what_to_do(tmp_path, monkeypatch, spec, words):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken.py").write_text("1 / 0\n")
    (tmp_path / "broken_import.py").write_text("import not_installed_xyz\n")
    (tmp_path / "good.py").write_text("VALUE = 3\n")
    with pytest.raises(DataError) as error:
        load_data(spec, X_SPEC)
    for word in words:
        assert word in str(error.value).lower() or word in str(error.value), (word, str(error.value))
