"""Data sources (.npz, .npy folder, idx folder, module:function), their checks, and reproducible batches."""

from __future__ import annotations

import gzip
import textwrap
import uuid

import numpy as np
import onnx
import pytest
from graphs import make_model, tensor, value
from onnx import TensorProto, helper

from onnx_dns.data import CallableData, InputSpec, load_data, model_inputs
from onnx_dns.dataset import Dataset
from onnx_dns.errors import DataError

X_SPEC = [InputSpec("x", np.dtype(np.float32), (None, 6))]
IMAGE_SPEC = [InputSpec("img", np.dtype(np.float32), (None, 1, 4, 4))]


def two_input_model() -> onnx.ModelProto:
    nodes = [helper.make_node("MatMul", ["a", "w"], ["h"], name="mm"),
             helper.make_node("Add", ["h", "b"], ["y"], name="add")]
    return make_model(nodes, [value("a", ["N", 3]), value("b", ["N", 2])], [value("y", ["N", 2])],
                      [tensor("w", np.ones((3, 2), dtype=np.float32))])


def test_model_inputs_skip_initializers_and_keep_symbolic_dims():
    model = two_input_model()
    model.graph.input.append(value("w", [3, 2]))  # an initializer also listed as input (old exporters)
    specs = model_inputs(model)
    assert [(s.name, s.dtype, s.shape) for s in specs] == [("a", np.float32, (None, 3)), ("b", np.float32, (None, 2))]
    ids = make_model([helper.make_node("Identity", ["i"], ["o"])], [value("i", [4, 5], TensorProto.INT64)],
                     [value("o", [4, 5], TensorProto.INT64)], [])
    assert model_inputs(ids) == [InputSpec("i", np.dtype(np.int64), (4, 5))]


# ---------------------------------------------------------------- sources


def test_npz_with_inputs_and_labels(tmp_path):
    x = np.random.default_rng(0).standard_normal((10, 6))  # float64: cast to the model's float32
    labels = np.arange(10).reshape(10, 1)  # a column of labels is flattened
    np.savez(tmp_path / "d.npz", x=x, labels=labels)
    data = load_data(str(tmp_path / "d.npz"), X_SPEC)
    assert isinstance(data, Dataset) and len(data) == 10
    assert data.inputs["x"].dtype == np.float32
    np.testing.assert_allclose(data.inputs["x"], x.astype(np.float32))
    np.testing.assert_array_equal(data.labels, np.arange(10))


def test_npz_with_one_array_feeds_a_one_input_model(tmp_path):
    np.savez(tmp_path / "d.npz", features=np.ones((4, 6), dtype=np.float32))
    data = load_data(str(tmp_path / "d.npz"), X_SPEC)
    assert list(data.inputs) == ["x"] and data.labels is None


def test_folder_of_npy(tmp_path):
    a = np.random.default_rng(1).standard_normal((7, 3)).astype(np.float32)
    b = np.random.default_rng(2).standard_normal((7, 2)).astype(np.float32)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    np.save(tmp_path / "labels.npy", np.arange(7) % 2)
    data = load_data(str(tmp_path), model_inputs(two_input_model()))
    np.testing.assert_array_equal(data.inputs["a"], a)
    np.testing.assert_array_equal(data.inputs["b"], b)
    np.testing.assert_array_equal(data.labels, np.arange(7) % 2)


def write_idx(path, array: np.ndarray, compress: bool = False) -> None:
    """An idx file written by hand: 0, 0, type 0x08 (uint8), ndim, big-endian sizes, then the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)


def mnist_folder(tmp_path, n_train=6, n_test=3):
    rng = np.random.default_rng(3)
    train = rng.integers(0, 256, (n_train, 4, 4)).astype(np.uint8)
    test = rng.integers(0, 256, (n_test, 4, 4)).astype(np.uint8)
    write_idx(tmp_path / "train-images-idx3-ubyte", train)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(n_train) % 10)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", test, compress=True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([9, 8, 7][:n_test]), compress=True)
    return train, test


def test_mnist_style_idx_folder(tmp_path):
    train, test = mnist_folder(tmp_path)
    data = load_data(str(tmp_path), IMAGE_SPEC, "train")
    assert data.inputs["img"].shape == (6, 1, 4, 4) and data.inputs["img"].dtype == np.float32
    np.testing.assert_allclose(data.inputs["img"][:, 0], train / 256.0)  # the paper's 1/256 scaling
    assert data.labels.dtype == np.int64
    np.testing.assert_array_equal(data.labels, np.arange(6))
    held = load_data(str(tmp_path), IMAGE_SPEC, "t10k")
    np.testing.assert_allclose(held.inputs["img"][:, 0], test / 256.0)
    np.testing.assert_array_equal(held.labels, [9, 8, 7])


def test_idx_images_feed_a_flat_input(tmp_path):
    train, _ = mnist_folder(tmp_path)
    data = load_data(str(tmp_path), [InputSpec("x", np.dtype(np.float32), (None, 16))])
    np.testing.assert_allclose(data.inputs["x"], train.reshape(6, 16) / 256.0)


def test_idx_images_that_do_not_fit_the_input(tmp_path):
    mnist_folder(tmp_path)
    with pytest.raises(DataError, match="img"):
        load_data(str(tmp_path), [InputSpec("img", np.dtype(np.float32), (None, 1, 5, 5))])


def write_module(tmp_path, monkeypatch, body: str) -> str:
    name = f"dns_test_data_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_module_function_batches(tmp_path, monkeypatch):
    name = write_module(tmp_path, monkeypatch, """
        import numpy as np
        CALLS = []

        def batches():
            CALLS.append(1)
            for k in range(3):
                yield np.full((2, 6), k, dtype=np.float64), np.array([k, k])
    """)
    data = load_data(f"{name}:batches", X_SPEC)
    assert isinstance(data, CallableData)
    module = __import__(name)
    seen = [data.batch(i, 2, 0) for i in range(7)]
    for i, (inputs, labels) in enumerate(seen):
        assert inputs["x"].dtype == np.float32 and inputs["x"].shape == (2, 6)
        assert np.all(inputs["x"] == i % 3) and np.all(labels == i % 3)
    calls = len(module.CALLS)
    assert calls == 3  # one call per pass over the batches (iterations 0-2, 3-5, 6)
    # a resumed run asks for a later batch first: same batch, and the stream goes on from there
    fresh = load_data(f"{name}:batches", X_SPEC)
    for i in (4, 5, 6, 7):
        assert np.all(fresh.batch(i, 2, 0)[0]["x"] == i % 3)
    assert len(module.CALLS) - calls == 3  # 4 (skipping 0-3 on the way): 1 + one per new pass after it
    assert len(data) == 6


def test_module_function_with_dict_batches(tmp_path, monkeypatch):
    name = write_module(tmp_path, monkeypatch, """
        import numpy as np

        def batches():
            return [{"a": np.ones((2, 3), np.float32), "b": np.zeros((2, 2), np.float32)}]
    """)
    inputs, labels = load_data(f"{name}:batches", model_inputs(two_input_model())).batch(0, 2, 0)
    assert set(inputs) == {"a", "b"} and labels is None


def test_module_function_errors_name_the_problem(tmp_path, monkeypatch):
    name = write_module(tmp_path, monkeypatch, """
        import numpy as np
        NOT_CALLABLE = 3

        def wrong_shape():
            return [(np.ones((2, 5), np.float32), np.zeros(2))]

        def empty():
            return []

        def broken():
            raise RuntimeError("no disk")
    """)
    with pytest.raises(DataError, match="missing"):
        load_data(f"{name}:missing", X_SPEC)
    with pytest.raises(DataError, match="not callable"):
        load_data(f"{name}:NOT_CALLABLE", X_SPEC)
    with pytest.raises(DataError, match="no_such_module_xyz"):
        load_data("no_such_module_xyz:f", X_SPEC)
    with pytest.raises(DataError, match=r"'x' has shape \[2, 5\]"):
        load_data(f"{name}:wrong_shape", X_SPEC).batch(0, 2, 0)
    with pytest.raises(DataError, match="no batches"):
        load_data(f"{name}:empty", X_SPEC).batch(0, 2, 0)
    with pytest.raises(DataError, match="no disk"):
        load_data(f"{name}:broken", X_SPEC).batch(0, 2, 0)


# ---------------------------------------------------------------- mismatches


def save_npz(tmp_path, **arrays) -> str:
    path = tmp_path / f"{uuid.uuid4().hex[:6]}.npz"
    np.savez(path, **arrays)
    return str(path)


def test_a_missing_input_is_named(tmp_path):
    specs = model_inputs(two_input_model())
    with pytest.raises(DataError, match="'b'"):
        load_data(save_npz(tmp_path, a=np.ones((2, 3), np.float32), c=np.ones((2, 2), np.float32)), specs)
    with pytest.raises(DataError, match="'x'"):
        load_data(save_npz(tmp_path, x1=np.ones((2, 6), np.float32), x2=np.ones((2, 6))), X_SPEC)


def test_an_extra_array_is_named(tmp_path):
    with pytest.raises(DataError, match="'weights'"):
        load_data(save_npz(tmp_path, x=np.ones((2, 6), np.float32), weights=np.ones(2)), X_SPEC)


def test_a_wrong_dtype_is_named(tmp_path):
    with pytest.raises(DataError, match="'x' is int64 but the model wants float32"):
        load_data(save_npz(tmp_path, x=np.ones((2, 6), np.int64)), X_SPEC)


@pytest.mark.parametrize("shape", [(4, 5), (4, 6, 1), (4,)])
def test_a_wrong_shape_is_named(tmp_path, shape):
    with pytest.raises(DataError, match=rf"'x' has shape \[{', '.join(map(str, shape))}\]"):
        load_data(save_npz(tmp_path, x=np.ones(shape, np.float32)), X_SPEC)


def test_counts_must_agree(tmp_path):
    with pytest.raises(DataError, match="3 labels for 4 samples"):
        load_data(save_npz(tmp_path, x=np.ones((4, 6), np.float32), labels=np.arange(3)), X_SPEC)
    with pytest.raises(DataError, match="different numbers of samples"):
        load_data(save_npz(tmp_path, a=np.ones((4, 3), np.float32), b=np.ones((5, 2), np.float32)),
                  model_inputs(two_input_model()))


def test_unreadable_sources(tmp_path):
    (tmp_path / "d.csv").write_text("1,2\n")
    with pytest.raises(DataError, match="unsupported"):
        load_data(str(tmp_path / "d.csv"), X_SPEC)
    with pytest.raises(DataError, match="no such file"):
        load_data(str(tmp_path / "nope.npz"), X_SPEC)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot read"):
        load_data(str(tmp_path / "bad.npz"), X_SPEC)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="neither"):
        load_data(str(tmp_path / "empty"), X_SPEC)


# ---------------------------------------------------------------- batches


def numbered(n: int) -> Dataset:
    return Dataset({"x": np.arange(n, dtype=np.float32).reshape(n, 1)}, np.arange(n), "numbers")


def ids(batch) -> list[int]:
    inputs, labels = batch
    np.testing.assert_array_equal(inputs["x"][:, 0], labels)  # inputs and labels stay paired
    return [int(v) for v in labels]


def test_batches_are_a_pure_function_of_seed_and_iteration():
    data = numbered(50)
    forward = [ids(data.batch(i, 8, seed=3)) for i in range(20)]
    backward = [ids(numbered(50).batch(i, 8, seed=3)) for i in reversed(range(20))][::-1]
    assert forward == backward
    other = [ids(data.batch(i, 8, seed=4)) for i in range(20)]
    assert forward != other


def test_each_epoch_visits_every_sample_once():
    data = numbered(48)
    for epoch in range(3):
        seen = [v for i in range(epoch * 6, epoch * 6 + 6) for v in ids(data.batch(i, 8, seed=1))]
        assert sorted(seen) == list(range(48))
    epochs = [tuple(v for i in range(e * 6, e * 6 + 6) for v in ids(data.batch(i, 8, 1))) for e in range(2)]
    assert epochs[0] != epochs[1]  # reshuffled every epoch


def test_a_dataset_smaller_than_the_batch_is_one_batch():
    assert sorted(ids(numbered(5).batch(3, 8, seed=0))) == [0, 1, 2, 3, 4]


def test_split_is_reproducible_and_disjoint():
    train, val = numbered(40).split(0.25, seed=2)
    train2, val2 = numbered(40).split(0.25, seed=2)
    assert len(val) == 10 and len(train) == 30
    np.testing.assert_array_equal(val.labels, val2.labels)
    assert sorted(list(train.labels) + list(val.labels)) == list(range(40))
    _, val3 = numbered(40).split(0.25, seed=9)
    assert list(val3.labels) != list(val.labels)
    with pytest.raises(DataError, match="too few"):
        numbered(1).split(0.5, seed=0)


def test_iterate_is_one_ordered_pass():
    got = [v for batch in numbered(10).iterate(4) for v in ids(batch)]
    assert got == list(range(10))
