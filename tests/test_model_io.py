"""load_model / save_model: bad files, version limits, external data, atomic writes."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from graphs import BAD_MODEL_FILES, cnn, gemm_transb, init_arrays, mlp, random_feeds, run, write_bad_model

from onnx_dns import model_io
from onnx_dns.errors import ModelError, OutputError
from onnx_dns.model_io import check_versions, load_model, save_model


def test_load_model_reads_a_valid_file(save):
    model = cnn()
    loaded = load_model(save(model))
    assert loaded.SerializeToString() == model.SerializeToString()


def test_load_model_reads_bytes_and_path_objects_and_strings(save):
    model = mlp()
    path = save(model)
    assert load_model(model.SerializeToString()).SerializeToString() == model.SerializeToString()
    assert load_model(str(path)).SerializeToString() == model.SerializeToString()


@pytest.mark.parametrize("kind", sorted(BAD_MODEL_FILES))
def test_bad_files_raise_model_error_naming_the_problem(kind, tmp_path):
    path = write_bad_model(kind, tmp_path)
    with pytest.raises(ModelError) as info:
        load_model(path)
    message = str(info.value)
    assert BAD_MODEL_FILES[kind] in message.lower()
    assert path in message
    assert "\n" not in message


def test_garbage_bytes_raise_model_error():
    with pytest.raises(ModelError):
        load_model(b"\xff" * 64)
    with pytest.raises(ModelError):
        load_model(b"")


def test_version_errors_name_the_supported_maximum(tmp_path):
    with pytest.raises(ModelError, match=r"\b10\b"):
        load_model(write_bad_model("ir11", tmp_path))
    with pytest.raises(ModelError, match=r"\b21\b"):
        load_model(write_bad_model("opset22", tmp_path))


def test_the_newest_accepted_versions_load(save):
    model = mlp()
    model.ir_version = 10
    model.opset_import[0].version = 21
    assert load_model(save(model)).ir_version == 10


def test_other_domains_are_not_held_to_the_default_opset_limit():
    model = mlp()
    model.opset_import.append(onnx.helper.make_opsetid("com.example", 99))
    check_versions(model)
    model.opset_import.append(onnx.helper.make_opsetid("ai.onnx", 22))
    with pytest.raises(ModelError, match="22"):
        check_versions(model)


def test_check_false_skips_the_checker(tmp_path):
    path = write_bad_model("checker", tmp_path)
    model = load_model(path, check=False)
    assert model.graph.node[3].input[0] == "undefined_value"
    with pytest.raises(ModelError):
        load_model(path, check=True)


def test_model_without_nodes_is_refused():
    model = onnx.helper.make_model(onnx.helper.make_graph([], "empty", [], []))
    with pytest.raises(ModelError, match="no nodes"):
        load_model(model.SerializeToString())


# ---------------------------------------------------------------- external data


def save_external(model: onnx.ModelProto, path: Path, location: str = "weights.bin") -> None:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    onnx.save_model(copy, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=location, size_threshold=0)


def test_load_model_loads_external_data(tmp_path, monkeypatch):
    model = cnn()
    folder = tmp_path / "m"
    folder.mkdir()
    save_external(model, folder / "model.onnx")
    assert (folder / "weights.bin").stat().st_size > (folder / "model.onnx").stat().st_size
    monkeypatch.chdir(tmp_path)  # external data is found beside the model, not in the working directory
    loaded = load_model(folder / "model.onnx")
    got, want = init_arrays(loaded), init_arrays(model)
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    feeds = random_feeds(model)
    np.testing.assert_array_equal(run(loaded, feeds)[0], run(model, feeds)[0])


def test_missing_external_data_is_a_model_error(tmp_path):
    save_external(cnn(), tmp_path / "model.onnx")
    (tmp_path / "weights.bin").unlink()
    with pytest.raises(ModelError, match="external data"):
        load_model(tmp_path / "model.onnx")


# ---------------------------------------------------------------- save_model


def test_save_model_round_trip(tmp_path):
    model = cnn()
    out = save_model(model, tmp_path / "out.onnx")
    assert Path(out) == tmp_path / "out.onnx"
    assert load_model(out).SerializeToString() == model.SerializeToString()
    assert sorted(os.listdir(tmp_path)) == ["out.onnx"]


def test_save_model_replaces_an_existing_file(tmp_path):
    target = tmp_path / "out.onnx"
    target.write_bytes(b"old")
    save_model(mlp(), target)
    assert load_model(target).SerializeToString() == mlp().SerializeToString()


def test_save_model_to_a_bare_file_name_writes_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_model(mlp(), "bare.onnx")
    assert load_model(tmp_path / "bare.onnx").SerializeToString() == mlp().SerializeToString()


def test_save_model_refuses_to_overwrite_the_input(save, tmp_path):
    source = save(mlp(), "input.onnx")
    before = source.read_bytes()
    (tmp_path / "sub").mkdir()
    for spelling in (source, str(source), tmp_path / "sub" / ".." / "input.onnx"):
        with pytest.raises(OutputError, match="input"):
            save_model(cnn(), spelling, forbid=source)
    assert source.read_bytes() == before
    save_model(cnn(), tmp_path / "other.onnx", forbid=source)  # a different path is fine


def test_save_model_refuses_a_missing_directory(tmp_path):
    target = tmp_path / "no" / "such" / "dir" / "out.onnx"
    with pytest.raises(OutputError, match="does not exist"):
        save_model(mlp(), target)
    assert not (tmp_path / "no").exists()


def test_write_failure_is_an_output_error_and_leaves_nothing_behind(tmp_path, monkeypatch):
    target = tmp_path / "out.onnx"
    target.write_bytes(b"previous contents")
    (tmp_path / "unrelated.txt").write_text("x")
    before = sorted(os.listdir(tmp_path))
    calls = []

    def disk_full(model, f, *args, **kwargs):
        calls.append(f)
        Path(f).write_bytes(b"partial")  # a half-written file, as a full disk leaves it
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(onnx, "save_model", disk_full)
    with pytest.raises(OutputError) as info:
        save_model(mlp(), target)
    assert calls, "save_model must write through onnx.save_model"
    assert os.strerror(errno.ENOSPC) in str(info.value)
    assert sorted(os.listdir(tmp_path)) == before
    assert target.read_bytes() == b"previous contents"


def test_large_models_are_saved_with_external_data(tmp_path, monkeypatch):
    monkeypatch.setattr(model_io, "EXTERNAL_DATA_THRESHOLD", 0)
    model = cnn()
    before = model.SerializeToString()
    save_model(model, tmp_path / "big.onnx")
    assert model.SerializeToString() == before, "saving must not turn the caller's weights into external refs"
    assert sorted(os.listdir(tmp_path)) == ["big.onnx", "big.onnx.data"]
    assert (tmp_path / "big.onnx").stat().st_size < (tmp_path / "big.onnx.data").stat().st_size
    loaded = load_model(tmp_path / "big.onnx")
    feeds = random_feeds(model)
    np.testing.assert_array_equal(run(loaded, feeds)[0], run(model, feeds)[0])


def test_external_save_of_only_small_tensors_still_works(tmp_path, monkeypatch):
    # every tensor under the 1 KB external threshold: no data file is written, and that is fine
    monkeypatch.setattr(model_io, "EXTERNAL_DATA_THRESHOLD", 0)
    model = gemm_transb()
    save_model(model, tmp_path / "small.onnx")
    assert os.listdir(tmp_path) == ["small.onnx"]
    assert load_model(tmp_path / "small.onnx").SerializeToString() == model.SerializeToString()


def test_over_the_limit_counts_tensor_data_wherever_it_is_held():
    from onnx import TensorProto, helper, numpy_helper

    from onnx_dns.model_io import over_protobuf_limit

    big = numpy_helper.from_array(np.zeros(50_000, np.float32), "c")  # 200 KB
    constant = helper.make_node("Constant", [], ["c"], value=big)
    graph = helper.make_graph([constant, helper.make_node("Relu", ["c"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [50_000])])
    in_constant = helper.make_model(graph)
    size = in_constant.ByteSize()
    assert over_protobuf_limit(in_constant, size - 1) and not over_protobuf_limit(in_constant, size)
    assert over_protobuf_limit(in_constant, 100_000)

    branch = helper.make_graph([helper.make_node("Identity", ["w"], ["o"])], "b", [],
                               [helper.make_tensor_value_info("o", TensorProto.FLOAT, [50_000])],
                               [numpy_helper.from_array(np.zeros(50_000, np.float32), "w")])
    node = helper.make_node("If", ["flag"], ["y"], then_branch=branch, else_branch=branch)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [50_000])])
    in_subgraphs = helper.make_model(graph)
    assert over_protobuf_limit(in_subgraphs, 300_000)  # two branches of 200 KB
    assert not over_protobuf_limit(in_subgraphs, in_subgraphs.ByteSize() + 1)


def test_over_the_limit_measures_tensors_held_in_typed_fields():
    from onnx import TensorProto, helper

    from onnx_dns.model_io import over_protobuf_limit

    values = np.random.default_rng(0).standard_normal(200_000).astype(np.float16)
    typed = helper.make_tensor("h", TensorProto.FLOAT16, [200_000], values)  # int32_data: ~3 bytes an entry
    assert not typed.HasField("raw_data")
    graph = helper.make_graph([helper.make_node("Identity", ["h"], ["y"])], "g", [],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [200_000])], [typed])
    model = helper.make_model(graph)
    size = model.ByteSize()
    assert size > 2 * 200_000 / 0.9  # dims x itemsize alone would have called it under the limit
    assert over_protobuf_limit(model, size - 1) and not over_protobuf_limit(model, size)
