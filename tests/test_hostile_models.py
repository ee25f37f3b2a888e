"""Each attack a model file can carry ends in one line on stderr and exit 3 through the command line, with no
traceback, no hang and no allocation sized by a declared shape."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from graphs import gemm_transb, mlp
from hostile_models import nested_if_bytes, with_array
from onnx import TensorProto, helper

from cli.main import main
from onnx_dns.errors import ModelError
from onnx_dns.model_checks import MAX_DEPTH, check_structure
from onnx_dns.model_io import load_model

ROOT = Path(__file__).resolve().parents[1]
HUGE = 10**6


def refused(args: list[str], *words: str) -> str:
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == ModelError.exit_code, (result.exit_code, result.stderr, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr and result.stdout == "", result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def write(model: onnx.ModelProto, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


def huge_initializer() -> onnx.ModelProto:
    """A weight whose dims claim 10^12 elements, holding 16 bytes."""
    model = gemm_transb()
    tensor = model.graph.initializer[0]
    del tensor.dims[:]
    tensor.dims.extend([HUGE, HUGE])
    tensor.raw_data = b"\0" * 16
    return model


def huge_sparse(side: int = 10**5) -> onnx.ModelProto:
    """A sparse initializer of one value whose dense shape is side x side."""
    model = gemm_transb()
    values = helper.make_tensor("sp", TensorProto.FLOAT, [1], [1.0])
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(
        values, helper.make_tensor("sp_i", TensorProto.INT64, [1], [0]), [side, side]))
    return model


def truncated_field() -> onnx.ModelProto:
    model = gemm_transb()
    model.graph.initializer[0].raw_data = model.graph.initializer[0].raw_data[:-3]
    return model


def huge_value_info() -> onnx.ModelProto:
    model = gemm_transb()
    model.graph.value_info.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, [HUGE, HUGE, HUGE]))
    return model


def cyclic() -> onnx.ModelProto:
    model = mlp()
    model.graph.node[1].input[0] = "r1"  # fc1 reads the output of relu, which comes after it
    return model


@pytest.mark.parametrize("make, words", [
    (huge_initializer, ["'g.w'", "4,000,000,000,000 bytes", "holds 16"]),
    (truncated_field, ["'g.w'", "need 120 bytes", "holds 117"]),
    (huge_value_info, ["'y'", "[1000000, 1000000, 1000000]"]),
    (huge_sparse, ["sparse tensors would take 40,000,000,000 bytes"]),
    (cyclic, ["node 'fc1'", "reads 'r1'", "cycle"]),
], ids=lambda v: getattr(v, "__name__", ""))
def test_a_hostile_model_is_refused_by_inspect_and_compress(tmp_path, make, words):
    path = write(make(), tmp_path / "model.onnx")
    refused(["inspect", path], str(path), *words)
    refused(["compress", path, "-o", tmp_path / "out.onnx", "--data", tmp_path / "none.npz"], str(path), *words)


def test_subgraphs_nested_1000_deep_are_refused(tmp_path):
    path = tmp_path / "nested.onnx"
    path.write_bytes(nested_if_bytes(1000))
    refused(["inspect", path], "not a readable ONNX model", "nested too deeply")
    deep = onnx.ModelProto()  # built in place: protobuf only limits depth when it parses
    graph = deep.graph
    graph.input.add(name="cond")
    for _ in range(MAX_DEPTH + 5):
        node = graph.node.add(op_type="If", input=["cond"], output=["y"])
        graph = node.attribute.add(name="then_branch", type=onnx.AttributeProto.GRAPH).g
    with pytest.raises(ModelError, match=f"nested more than {MAX_DEPTH} deep"):
        check_structure(deep, "deep.onnx")


def test_a_cycle_is_refused_before_the_checker_runs(monkeypatch):
    inner = helper.make_graph([helper.make_node("Add", ["a", "x"], ["a"], name="loop_add")], "body", [],
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2])])
    graph = helper.make_graph([helper.make_node("If", ["cond"], ["y"], then_branch=inner, else_branch=inner)],
                              "top", [helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
                                      helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    models = [helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), cyclic()]

    def checker_must_not_run(*args, **kwargs):
        raise AssertionError("onnx.checker ran on a cyclic graph")

    monkeypatch.setattr(onnx.checker, "check_model", checker_must_not_run)
    for model in models:
        with pytest.raises(ModelError, match="cycle"):
            load_model(model.SerializeToString())


def external_model(folder: Path, location: str, offset: int = 0, length: int | None = None,
                   twice: bool = False) -> Path:
    """gemm_transb with its weight (120 bytes) as external data at `location`; `twice`: a second weight reads
    the same bytes."""
    model = gemm_transb()
    if twice:
        model = with_array(model, "copy", np.zeros((5, 6), np.float32))
    for tensor in model.graph.initializer[::2] if twice else model.graph.initializer[:1]:
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        tensor.external_data.add(key="location", value=location)
        tensor.external_data.add(key="offset", value=str(offset))
        if length is not None:
            tensor.external_data.add(key="length", value=str(length))
    return write(model, folder / "model.onnx")


@pytest.mark.parametrize("location, offset, length, words", [
    ("w.bin", 100, 120, ["past the end of w.bin", "(200 bytes)"]),
    ("w.bin", 10**15, 120, ["past the end"]),
    ("w.bin", 0, 10**12, ["length 1,000,000,000,000", "need 120 bytes"]),
    ("w.bin", -8, 120, ["offset -8"]),
    ("zero", 0, 120, ["leads outside the model's folder", "/dev/zero"]),
    ("outside", 0, 120, ["leads outside the model's folder"]),
    ("../secret.bin", 0, 120, ["leads outside the model's folder"]),
    ("/etc/hostname", 0, 120, ["must be a file name relative to the model's folder"]),
    ("subdir", 0, 120, ["is not a regular file"]),
    (".", 0, 120, ["is not a regular file"]),
    ("missing.bin", 0, 120, ["could not be read", "No such file"]),
])
def test_hostile_external_data_is_refused(tmp_path, location, offset, length, words):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "w.bin").write_bytes(b"\1" * 200)
    (tmp_path / "secret.bin").write_bytes(b"\2" * 4096)
    os.symlink("/dev/zero", folder / "zero")
    os.symlink(tmp_path / "secret.bin", folder / "outside")
    (folder / "subdir").mkdir()
    path = external_model(folder, location, offset, length)
    refused(["inspect", path], str(path), "'g.w'", *words)


def test_external_data_inside_the_folder_loads_and_overlapping_reads_are_refused(tmp_path):
    (tmp_path / "w.bin").write_bytes(np.arange(30, dtype=np.float32).tobytes())
    os.symlink("w.bin", tmp_path / "link.bin")  # a link that stays inside the folder is fine
    model = load_model(external_model(tmp_path, "link.bin"))
    assert onnx.numpy_helper.to_array(model.graph.initializer[0]).ravel().tolist() == list(range(30))
    refused(["inspect", external_model(tmp_path, "w.bin", twice=True)], "their regions overlap")


def run_limited(args: list[str], limit: int, timeout: int = 60) -> subprocess.CompletedProcess:
    """The CLI in a fresh process under an address-space limit: an allocation past it fails at once."""
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (%d, %d)); "
            "from cli.main import main; sys.argv[0] = 'onnx-dns'; main()") % (limit, limit)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_huge_declared_shapes_allocate_nothing_under_a_memory_limit(tmp_path):
    limit = 1 << 30
    fine = run_limited(["inspect", write(gemm_transb(), tmp_path / "fine.onnx")], limit)
    assert fine.returncode == 0, fine.stderr  # the limit leaves room for a real model
    # 4 GB of sparse data (more than the limit, less than this machine's memory): densifying would fail with
    # MemoryError (exit 1); refused from the declared sizes, it exits 3
    for model in (huge_initializer(), huge_sparse(32768), huge_value_info()):
        path = write(model, tmp_path / "hostile.onnx")
        proc = run_limited(["inspect", path], limit)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == ModelError.exit_code and len(lines) == 1, proc.stderr
        assert "Traceback" not in proc.stderr and "MemoryError" not in proc.stderr


def test_pipes_and_devices_are_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "model.onnx")
    os.symlink("/dev/zero", tmp_path / "zero.onnx")
    folder = tmp_path / "ext"
    folder.mkdir()
    os.mkfifo(folder / "w.bin")
    for path, words in ((tmp_path / "model.onnx", "not a regular file"), (tmp_path / "zero.onnx",
                                                                          "not a regular file"),
                        (external_model(folder, "w.bin", 0, 120), "w.bin is not a regular file")):
        proc = run_limited(["inspect", path], 1 << 30, timeout=60)
        assert proc.returncode == ModelError.exit_code and words in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_a_text_format_model_is_read_as_onnx_load_reads_it_and_checked_the_same(tmp_path):
    onnx.save_model(gemm_transb(), str(tmp_path / "fine.textproto"), format="textproto")
    assert [n.op_type for n in load_model(tmp_path / "fine.textproto").graph.node] == ["Gemm"]
    onnx.save_model(huge_initializer(), str(tmp_path / "huge.textproto"), format="textproto")
    refused(["inspect", tmp_path / "huge.textproto"], "'g.w'", "holds 16")
