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
    # shortened: the bundled settings apply, only the number of iterations is cut for the test (too few to keep
    # the accuracy, so the bound is off)
    result = CliRunner().invoke(main, [*args, "--iterations", "30", "--eval-every", "30", "--quiet",
                                       "--max-accuracy-drop", "none"])
    assert result.exit_code == 0, result.output
    settings = json.loads((ROOT / "models" / "lenet5" / "dns.json").read_text())
    report = inspect_model(load_model(output))
    if "target" in settings:
        target = float(str(settings["target"]).rstrip("x"))
        assert abs(report.compression - target) / target < 0.02
    else:
        assert report.compression > 1.5
    assert report.params == 431_080


def test_the_python_api_example_runs_as_written(tmp_path, monkeypatch):
    """The README's Python block, on a small trained MLP saved as model.onnx (fewer iterations)."""
    import numpy as np
    import onnx
    from engine_fixtures import blobs, mlp

    import onnx_dns

    block = re.search(r"```python\n(.*?)\n```", README, re.S).group(1)
    x_train, y_train = blobs(256, 6, 3, seed=1)
    model = onnx_dns.compress(mlp(6, 16, 3, seed=2), {"x": x_train}, labels=y_train, prune=False, iterations=200,
                              batch_size=32, lr=0.05, eval_every=200).model
    model.graph.input[0].name = "input"
    for node in model.graph.node:
        node.input[:] = ["input" if name == "x" else name for name in node.input]
    monkeypatch.chdir(tmp_path)
    onnx.save(model, "model.onnx")
    namespace = {"x_train": x_train, "y_train": y_train}
    exec(block.replace("iterations=2000", "iterations=100"), namespace)  # noqa: S102 - the README's own code
    written = onnx.load("model.dns.onnx")
    assert abs(namespace["result"].compression - 4) < 0.1
    assert namespace["report"].nonzero == namespace["result"].nonzeros
    assert written.graph.sparse_initializer or any(
        np.count_nonzero(onnx.numpy_helper.to_array(t)) < onnx.numpy_helper.to_array(t).size
        for t in written.graph.initializer)
