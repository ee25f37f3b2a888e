"""Robustness of `onnx-dns compress`: each way a run can go wrong ends with one line on stderr naming what is at
fault, the documented exit code, a traceback only with --debug, the input model untouched byte for byte, and
nothing half-written (no partial output, no temporary file) in the output folder.

Running as root defeats chmod, so read-only folders, full disks and Ctrl-C are simulated by patching the calls
that would fail (os.access, tempfile.mkdtemp, onnx.save_model, numpy.savez, json.dump) or by a real SIGINT.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from engine_fixtures import blobs, dense_initializers, trained_classifier
from graphs import BAD_MODEL_FILES, set_initializer, write_bad_model

from cli.main import EXIT_INTERRUPTED, main
from onnx_dns.dataset import Dataset
from onnx_dns.errors import DataError, ModelError, OptionError, OutputError

USAGE = 2


@dataclass
class Case:
    """A tiny pretrained classifier with its data in `inputs`, and an empty folder `out` for the results."""

    inputs: Path
    out: Path

    @property
    def model(self) -> Path:
        return self.inputs / "model.onnx"

    @property
    def work(self) -> Path:
        return self.out / "out.onnx.dns-work"

    def args(self, *extra, model: Path | None = None, output: Path | str | None = None) -> list:
        return ["compress", model or self.model, "-o", self.out / "out.onnx" if output is None else output,
                "--data", self.inputs / "train.npz", "--val", self.inputs / "val.npz", "--iterations", "40",
                "--batch-size", "32", "--eval-every", "20", "--checkpoint-every", "20", "--threads", "1", "-q",
                *extra]


@pytest.fixture
def case(tmp_path) -> Case:
    x, y = blobs(240, 6, 3, seed=11)
    vx, vy = blobs(60, 6, 3, seed=12)
    inputs, out = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    out.mkdir()
    onnx.save(trained_classifier(x, y, 3, hidden=24), str(inputs / "model.onnx"))
    np.savez(inputs / "train.npz", x=x, labels=y)
    np.savez(inputs / "val.npz", x=vx, labels=vy)
    return Case(inputs, out)


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) under `folder`."""
    found: dict[str, bytes | None] = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            found[os.path.relpath(os.path.join(root, name), folder)] = None
        for name in files:
            path = os.path.join(root, name)
            found[os.path.relpath(path, folder)] = Path(path).read_bytes()
    return found


def fails(case: Case, args: list, code: int, *names, leaves: tuple[str, ...] = (),
          reset: Callable[[], None] = lambda: None) -> str:
    """Run `args` without and with --debug; check the failure contract and return the error line.

    `names` must appear in the error line (case-insensitive); `leaves` is all the output folder may hold after.
    Usage errors found by click itself print click's usage lines before theirs and have no traceback to show.
    """
    before = snapshot(case.inputs)
    line = ""
    for debug in (False, True):
        reset()
        result = invoke(*(["--debug"] if debug else []), *args)
        assert result.exit_code == code, (debug, result.exit_code, result.stderr, result.exception)
        assert isinstance(result.exception, SystemExit)
        assert result.stdout == ""
        lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
        line = lines[-1]
        from_click = line.startswith("Error: ")
        if from_click:
            assert code == USAGE and lines[0].startswith("Usage: ") and len(lines) == 3, result.stderr
        else:
            assert line.startswith("stopped: " if code == EXIT_INTERRUPTED else "error: "), result.stderr
        if debug and not from_click:
            assert "Traceback (most recent call last)" in result.stderr
        else:
            assert "Traceback" not in result.stderr
            assert from_click or len(lines) == 1, result.stderr
        for name in names:
            assert str(name).lower() in line.lower(), (name, line)
        assert snapshot(case.inputs) == before, "the input folder changed"
        assert sorted(os.listdir(case.out)) == sorted(leaves)
    return line


def full_disk(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# ---------------------------------------------------------------- bad models


@pytest.mark.parametrize("kind", sorted(BAD_MODEL_FILES))
def test_a_bad_model_file_exits_3(case, kind):
    path = write_bad_model(kind, case.inputs)  # missing, a directory, empty, garbage, truncated, too new, invalid
    fails(case, case.args(model=path), ModelError.exit_code, path, BAD_MODEL_FILES[kind])


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("tensor", ["fc1.w", "fc2.b"])
def test_non_finite_weights_exit_3_naming_the_initializer(case, value, tensor):
    model = onnx.load(str(case.model))
    array = dense_initializers(model)[tensor].copy()
    array.flat[1] = value
    set_initializer(model, tensor, array)
    onnx.save(model, str(case.model))
    fails(case, case.args(), ModelError.exit_code, case.model, f"'{tensor}' holds 1 NaN or infinite")


# ---------------------------------------------------------------- data that does not fit


def _save_npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


BAD_DATA = {  # what is wrong: (how the file is made, what the error names besides the file)
    "missing input": (lambda p: _save_npz(p, a=np.zeros((40, 6), np.float32), b=np.zeros((40, 6), np.float32)),
                      ["no array for model input 'x'"]),
    "extra array": (lambda p: _save_npz(p, x=np.zeros((40, 6), np.float32), mask=np.zeros(40, np.float32)),
                    ["array 'mask' is not a model input"]),
    "dtype": (lambda p: _save_npz(p, x=np.zeros((40, 6), np.int32)), ["'x' is int32", "float32"]),
    "shape": (lambda p: _save_npz(p, x=np.zeros((40, 5), np.float32)), ["'x' has shape [40, 5]", "x float32 [?, 6]"]),
    "rank": (lambda p: _save_npz(p, x=np.zeros((40, 6, 1), np.float32)), ["'x' has shape [40, 6, 1]"]),
    "label count": (lambda p: _save_npz(p, x=np.zeros((40, 6), np.float32), labels=np.zeros(30, np.int64)),
                    ["30 labels for 40 samples"]),
    "label range": (lambda p: _save_npz(p, x=np.zeros((40, 6), np.float32), labels=np.full(40, 7)),
                    ["labels range over 7..7", "3 classes"]),
    "truncated": (lambda p: p.write_bytes(Path(_save_npz(p, x=np.zeros((40, 6), np.float32))).read_bytes()[:100]),
                  ["cannot read the .npz file"]),
    "missing": (lambda p: None, ["no such file"]),
}


@pytest.mark.parametrize("kind, which", [(kind, which) for kind in sorted(BAD_DATA) for which in ("--data", "--val")
                                         if (kind, which) != ("label range", "--val")])  # checked on --data
def test_data_that_does_not_fit_the_model_exits_4(case, kind, which):
    make, words = BAD_DATA[kind]
    bad = case.inputs / "bad.npz"
    make(bad)
    line = fails(case, case.args(which, bad), DataError.exit_code, bad, *words)
    assert str(case.inputs / ("train.npz" if which == "--val" else "val.npz")) not in line


# ---------------------------------------------------------------- where the output goes


def test_an_output_folder_that_does_not_exist_exits_7(case):
    target = case.out / "no" / "such" / "out.onnx"
    fails(case, case.args(output=target), OutputError.exit_code, target, f"{case.out / 'no' / 'such'} does not exist")


def test_an_output_folder_that_is_a_file_exits_7(case):
    (case.out / "notes.txt").write_text("mine")
    target = case.out / "notes.txt" / "out.onnx"
    fails(case, case.args(output=target), OutputError.exit_code, target, "is a file, not a directory",
          leaves=("notes.txt",))
    assert (case.out / "notes.txt").read_text() == "mine"


def test_an_output_path_that_is_a_folder_exits_7(case):
    (case.out / "out.onnx").mkdir()
    fails(case, case.args(), OutputError.exit_code, case.out / "out.onnx", "is a directory", leaves=("out.onnx",))


def test_a_read_only_output_folder_exits_7_before_any_work(case, monkeypatch):
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: not (Path(path) == case.out and mode & os.W_OK)
                        and real_access(path, mode, **kw))
    fails(case, case.args(), OutputError.exit_code, case.out / "out.onnx", "not writable")


def test_a_folder_that_turns_read_only_before_the_write_exits_7_and_keeps_the_checkpoint(case, monkeypatch):
    real_mkdtemp = tempfile.mkdtemp

    def read_only(*args, dir=None, **kwargs):
        if Path(dir) == case.out:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_mkdtemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    fails(case, case.args(), OutputError.exit_code, case.out / "out.onnx", os.strerror(errno.EROFS),
          f"--resume {case.work}", leaves=(case.work.name,))


def _same_as_input(case: Case, spelling: str, monkeypatch) -> tuple[Path | str, tuple[str, ...]]:
    """An output path that names the input model, spelled some way, and what it leaves in the output folder."""
    if spelling == "symlink":
        (case.out / "link.onnx").symlink_to(case.model)
        return case.out / "link.onnx", ("link.onnx",)
    if spelling == "dot-dot":
        (case.out / "sub").mkdir()
        return case.out / "sub" / ".." / ".." / case.inputs.name / "model.onnx", ("sub",)
    monkeypatch.chdir(case.inputs)
    return {"same": str(case.model), "relative": "model.onnx", "dot": "./model.onnx"}[spelling], ()


@pytest.mark.parametrize("spelling", ["same", "relative", "dot", "dot-dot", "symlink"])
def test_an_output_path_that_is_the_input_exits_7(case, spelling, monkeypatch):
    target, leaves = _same_as_input(case, spelling, monkeypatch)
    fails(case, case.args(output=target), OutputError.exit_code, Path(target), "is the input model", leaves=leaves)


def test_a_below_bound_path_that_is_the_input_exits_7_before_training(case):
    # a model that misses --max-accuracy-drop goes to NAME.below-bound.onnx: here that is the input itself
    model = case.inputs / "m.below-bound.onnx"
    model.write_bytes(case.model.read_bytes())
    fails(case, case.args("--max-accuracy-drop", "0", "--target", "1000x", model=model, output=case.inputs / "m.onnx"),
          OutputError.exit_code, model, "is the input model")


@pytest.mark.parametrize("where", ["input", "output", "below-bound output"])
def test_a_report_path_that_is_the_input_or_the_output_exits_7_before_training(case, where):
    report = {"input": case.model, "output": case.out / "out.onnx",
              "below-bound output": case.out / "out.below-bound.onnx"}[where]
    expected = "is the input model" if where == "input" else "is where the output model goes"
    fails(case, case.args("--report", report), OutputError.exit_code, report, expected)


def test_a_work_folder_that_is_a_file_exits_7(case):
    fails(case, case.args("--work-dir", case.model), OutputError.exit_code, case.model, "work folder is a file")


# ---------------------------------------------------------------- full disk


def test_a_full_disk_while_writing_the_output_exits_7_and_resume_writes_it(case, monkeypatch):
    def partial_then_full(model, f, *args, **kwargs):
        Path(f).write_bytes(model.SerializeToString()[:50])  # what a full disk leaves half-written
        full_disk()

    monkeypatch.setattr(onnx, "save_model", partial_then_full)
    fails(case, case.args(), OutputError.exit_code, case.out / "out.onnx", os.strerror(errno.ENOSPC),
          f"--resume {case.work}", leaves=(case.work.name,))
    monkeypatch.undo()  # space was freed
    result = invoke(*case.args("--resume", case.work))
    assert result.exit_code == 0, (result.stderr, result.exception)
    onnx.checker.check_model(onnx.load(str(case.out / "out.onnx")))
    assert os.listdir(case.out) == ["out.onnx"]


def test_a_full_disk_while_writing_a_checkpoint_exits_7_and_keeps_the_previous_one(case, monkeypatch):
    real_savez = np.savez
    calls = []

    def full_after_the_first(handle, **arrays):
        calls.append(1)
        if len(calls) == 1:
            return real_savez(handle, **arrays)
        handle.write(b"PK\x03\x04 half a checkpoint")
        full_disk()

    monkeypatch.setattr(np, "savez", full_after_the_first)
    fails(case, case.args(), OutputError.exit_code, case.work, "checkpoint", os.strerror(errno.ENOSPC),
          leaves=(case.work.name,), reset=calls.clear)
    assert "checkpoint.npz" in os.listdir(case.work) and "checkpoint.npz.tmp" not in os.listdir(case.work)
    monkeypatch.undo()
    result = invoke(*case.args("--resume", case.work))  # the checkpoint of iteration 0 is whole
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert os.listdir(case.out) == ["out.onnx"]


def test_a_full_disk_while_writing_the_report_exits_7(case, monkeypatch):
    def partial_then_full(data, handle, **kwargs):
        handle.write('{"output": ')
        full_disk()

    monkeypatch.setattr(json, "dump", partial_then_full)
    report = case.out / "report.json"
    fails(case, case.args("--report", report), OutputError.exit_code, report, os.strerror(errno.ENOSPC),
          leaves=("out.onnx",))  # the model itself was written before the report


# ---------------------------------------------------------------- Ctrl-C


def test_ctrl_c_during_training_exits_130_and_resume_gives_the_uninterrupted_result(case, monkeypatch):
    real_batch = Dataset.batch

    def ctrl_c_at_10(self, iteration, batch_size, seed):
        if iteration == 10:
            os.kill(os.getpid(), signal.SIGINT)
        return real_batch(self, iteration, batch_size, seed)

    monkeypatch.setattr(Dataset, "batch", ctrl_c_at_10)
    fails(case, case.args(), EXIT_INTERRUPTED, "interrupted at iteration 11", f"--resume {case.work}",
          leaves=(case.work.name,))
    assert sorted(os.listdir(case.work)) == ["artifacts", "checkpoint.npz", "settings.json"]
    monkeypatch.undo()
    resumed = invoke(*case.args("--resume", case.work))
    assert resumed.exit_code == 0, (resumed.stderr, resumed.exception)
    whole = invoke(*case.args(output=case.out / "whole.onnx"))
    assert whole.exit_code == 0, (whole.stderr, whole.exception)
    after_resume = dense_initializers(onnx.load(str(case.out / "out.onnx")))
    uninterrupted = dense_initializers(onnx.load(str(case.out / "whole.onnx")))
    assert after_resume.keys() == uninterrupted.keys()
    for name, array in uninterrupted.items():
        np.testing.assert_array_equal(after_resume[name], array, err_msg=name)


def test_ctrl_c_while_writing_the_output_exits_130_and_resume_writes_it(case, monkeypatch):
    def partial_then_ctrl_c(model, f, *args, **kwargs):
        Path(f).write_bytes(model.SerializeToString()[:50])
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx, "save_model", partial_then_ctrl_c)
    fails(case, case.args(), EXIT_INTERRUPTED, f"while writing {case.out / 'out.onnx'}", f"--resume {case.work}",
          leaves=(case.work.name,))
    assert "checkpoint.npz" in os.listdir(case.work)
    monkeypatch.undo()
    result = invoke(*case.args("--resume", case.work))
    assert result.exit_code == 0, (result.stderr, result.exception)
    onnx.checker.check_model(onnx.load(str(case.out / "out.onnx")))
    assert os.listdir(case.out) == ["out.onnx"]


# ---------------------------------------------------------------- options out of range


BAD_OPTIONS = [  # (arguments, what the error line names)
    (["--iterations", "-5"], "'--iterations'"), (["--iterations", "0"], "'--iterations'"),
    (["--batch-size", "0"], "'--batch-size'"), (["--lr", "0"], "'--lr'"), (["--lr", "-0.1"], "'--lr'"),
    (["--lr", "nan"], "--lr nan"), (["--lr", "inf"], "--lr inf"), (["--warmup", "-1"], "'--warmup'"),
    (["--temperature", "0"], "'--temperature'"), (["--distill-weight", "1.5"], "'--distill-weight'"),
    (["--max-accuracy-drop", "-1"], "--max-accuracy-drop -1"), (["--max-accuracy-drop", "nan"], "--max-accuracy-drop nan"),
    (["--optimizer", "adam"], "'--optimizer'"), (["--default-c", "inf"], "--default-c inf"),
    (["--target", "0.5x"], "--target '0.5x'"), (["--target", "inf"], "--target 'inf'"),
    (["--target", "lots"], "--target 'lots'"),
    (["--target", "100x", "--sparsity", "fc1=0"], "--sparsity fc1"),
    (["--sparsity", "fc1=1"], "--sparsity fc1=1.0"), (["--sparsity", "fc1=-0.1"], "--sparsity fc1=-0.1"),
    (["--sparsity", "fc1=nan"], "--sparsity fc1=nan"), (["--sparsity", "fc9=0.5"], "no prunable layer named 'fc9'"),
    (["--c", "fc1"], "--c: 'fc1': expected NAME=VALUE"), (["--c", "fc1=abc"], "'abc' is not a number"),
    (["--c", "=2"], "--c: '=2'"), (["--c", "fc1=nan"], "--c fc1=nan"), (["--c", "fc9=2"], "fc1, fc2"),
    (["--stop", "fc1=x"], "--stop"), (["--stop", "fc1=-3"], "--stop fc1=-3"),
]


@pytest.mark.parametrize("extra, named", BAD_OPTIONS, ids=[" ".join(a) for a, _ in BAD_OPTIONS])
def test_an_option_out_of_range_is_a_usage_error(case, extra, named):
    fails(case, case.args(*extra), OptionError.exit_code, named)


@pytest.mark.parametrize("settings, named", [({"lr": -1}, "--lr -1 (from dns.json)"),
                                             ({"eval_batch_size": 0}, "--eval-batch-size 0 (from dns.json)"),
                                             ({"warmup": "many"}, "--warmup 'many' (from dns.json)"),
                                             ({"optimizer": "adam"}, "--optimizer 'adam' (from dns.json)"),
                                             ({"sparsity": {"fc1": 2}}, "--sparsity fc1=2 (from dns.json)")])
def test_a_setting_out_of_range_in_dns_json_is_a_usage_error(case, settings, named):
    (case.inputs / "dns.json").write_text(json.dumps(settings))  # options not given on the command line
    fails(case, case.args(), OptionError.exit_code, named)


def test_resume_without_a_checkpoint_is_a_usage_error(case):
    fails(case, case.args("--resume", case.out / "nothing-here"), OptionError.exit_code,
          case.out / "nothing-here", "no checkpoint to resume from")
