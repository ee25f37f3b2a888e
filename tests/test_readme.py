"""The README's commands work as written: the quick start (shortened) and the test command CI runs."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from click.testing import CliRunner

from cli.main import main
from onnx_dns.model_io import load_model
from onnx_dns.report import inspect_model

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _commands() -> list[str]:
    return re.findall(r"```bash\n(.*?)\n```", README, re.S)


def test_ci_runs_the_readme_install_and_test_command():
    tests = _commands()[1]
    ci = (ROOT / ".ci" / "run").read_text()
    install = re.search(r"pip install (\S+)", tests).group(0)
    assert install in ci
    assert tests.rsplit("&& ", 1)[1] in ci


def test_quick_start_compresses_the_bundled_model_with_its_settings(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    quick = _commands()[0]
    args = shlex.split(quick.split("&& onnx-dns ", 1)[1])
    assert args[:2] == ["compress", "models/lenet5/model.onnx"]
    output = tmp_path / "lenet5.dns.onnx"
    out_index = args.index("-o") + 1
    args[out_index] = str(output)
    # shortened: the bundled settings apply, only the number of iterations is cut for the test
    result = CliRunner().invoke(main, [*args, "--iterations", "30", "--eval-every", "30", "--quiet"])
    assert result.exit_code == 0, result.output
    settings = json.loads((ROOT / "models" / "lenet5" / "dns.json").read_text())
    report = inspect_model(load_model(output))
    if "target" in settings:
        target = float(str(settings["target"]).rstrip("x"))
        assert abs(report.compression - target) / target < 0.02
    else:
        assert report.compression > 1.5
    assert report.params == 431_080
