"""Memory that does not grow with the data: the original model's outputs stored or computed batch by batch
(decided by their size), memory-mapped rows released after each read, and progress of long passes."""

from __future__ import annotations

import types

import numpy as np
import pytest
from graphs import init_arrays, mlp, set_initializer

from onnx_dns import objective as objective_stage
from onnx_dns import pass_progress, targets
from onnx_dns.dataset import Dataset
from onnx_dns.evaluate import measure, session_runner
from onnx_dns.losses import LossSpec
from onnx_dns.objective import Objective, with_teacher_outputs
from onnx_dns.targets import TEACHER, LazyOutputs, Targets, caching, stored_bytes, with_teacher

SPEC = LossSpec("classify", "y", 0.0, 1.0, 2.0, 5)


def _data(n: int = 40, seed: int = 0) -> Dataset:
    x = np.random.default_rng(seed).standard_normal((n, 1, 4, 4)).astype(np.float32)
    return Dataset({"x": x}, None, "train")


def _objective(train: Dataset, val: Dataset) -> Objective:
    teacher = session_runner(mlp(), "y")
    return Objective(train, val, SPEC, teacher, Targets(SPEC, teacher, (5,)), 8, {})


def test_the_decision_follows_the_size_of_the_outputs():
    assert caching(targets.IN_MEMORY_BYTES) == "memory"
    assert caching(targets.IN_MEMORY_BYTES + 1) == "file"
    assert caching(targets.ON_DISK_BYTES) == "file"
    assert caching(targets.ON_DISK_BYTES + 1) == "on the fly"
    recognizer = (40, 6625)  # PP-OCR's [T, C] softmax per text line
    assert stored_bytes(20000, recognizer, np.dtype(np.float32)) == 20000 * 40 * 6625 * 4
    assert caching(stored_bytes(20000, recognizer, np.dtype(np.float32))) == "on the fly"
    assert caching(stored_bytes(2000, recognizer, np.dtype(np.float32))) == "on the fly"
    assert caching(stored_bytes(200, recognizer, np.dtype(np.float32))) == "memory"


def test_on_the_fly_outputs_are_the_loss_inputs_the_stored_ones_give(tmp_path):
    """Held-out subsets index their rows: stored outputs must line up with the rows a batch draws."""
    train, _ = _data(60).split(0.25, seed=3)
    objective = _objective(train, train)
    stored = with_teacher(train, objective.teacher, 7)
    assert TEACHER in stored.aligned
    compared = 0
    for iteration in range(12):  # more than one epoch of batches of 8 from 45 samples
        inputs, labels = train.batch(iteration, 8, seed=1)
        cached_inputs, _ = stored.batch(iteration, 8, seed=1)
        fly = objective.targets.for_batch(inputs, labels)
        cached = objective.targets.for_batch(cached_inputs, labels)
        np.testing.assert_allclose(fly[0], cached[0], rtol=1e-5, atol=1e-7)
        compared += 1
    other = stored.batch(1, 8, seed=1)[0]
    assert not np.allclose(objective.targets.for_batch(other, None)[0], fly[0])  # a misaligned batch would differ
    assert compared == 12


def test_outputs_too_large_to_store_are_left_to_be_computed(tmp_path, monkeypatch):
    train, val = _data(40), _data(20, seed=1)
    events = []
    kept = with_teacher_outputs(_objective(train, val), 8, None, tmp_path, events.append)
    assert TEACHER in kept.train.aligned and TEACHER in kept.val.aligned
    assert [e["where"] for e in events if e["event"] == "teacher"] == ["memory", "memory"]

    monkeypatch.setattr(targets, "IN_MEMORY_BYTES", 0)
    monkeypatch.setattr(targets, "ON_DISK_BYTES", 20 * 5 * 4)  # the validation outputs fit, the training ones not
    events.clear()
    taught = with_teacher_outputs(_objective(train, val), 8, None, tmp_path, events.append)
    assert TEACHER not in taught.train.aligned
    assert isinstance(taught.val.aligned[TEACHER], np.memmap)
    assert [(e["data"], e["where"], e["bytes"]) for e in events if e["event"] == "teacher"] == [
        ("train", "on the fly", 40 * 5 * 4), ("validation", "file", 20 * 5 * 4)]
    assert not (tmp_path / "teacher-train").exists()


def test_validation_without_stored_outputs_measures_the_same():
    """Agreement with the original model, from stored outputs or from the original run batch by batch."""
    val = _data(30)
    model, changed = mlp(), mlp()
    second = init_arrays(model)["fc2.w"]
    noise = np.random.default_rng(0).standard_normal(second.shape).astype(np.float32)
    set_initializer(changed, "fc2.w", second + noise * second.std())
    student = session_runner(changed, "y")
    teacher = session_runner(model, "y")
    stored = measure(student, with_teacher(val, teacher, 8), "classify", 8)
    on_the_fly = measure(student, val, "classify", 8, reference=teacher)
    assert stored.fidelity == on_the_fly.fidelity
    assert 50 < stored.fidelity < 100  # a perturbed model agrees on most samples, not all
    assert measure(teacher, val, "classify", 8, reference=teacher).fidelity == 100


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_pass_reports_after_two_seconds_and_then_every_two():
    clock, events = FakeClock(), []
    reporter = pass_progress.PassProgress(events.append, "evaluating", 90, clock)
    for seconds in (0.5, 1.9, 2.1, 3.0, 4.0, 4.2, 9.0):
        clock.now = 100.0 + seconds
        reporter.advance(10)
    assert [(e["done"], e["seconds"]) for e in events] == [(30, pytest.approx(2.1)), (60, pytest.approx(4.2)),
                                                          (70, pytest.approx(9.0))]
    assert all(e["event"] == "pass" and e["total"] == 90 and e["what"] == "evaluating" for e in events)


@pytest.mark.parametrize("seconds_per_batch, reports", [(0.0, 0), (1.5, 2)])
def test_the_original_outputs_pass_shows_progress_when_long(monkeypatch, seconds_per_batch, reports):
    clock = FakeClock()
    monkeypatch.setattr(pass_progress, "time", types.SimpleNamespace(perf_counter=clock))
    weights = np.random.default_rng(0).standard_normal((16, 5)).astype(np.float32)

    def slow_teacher(inputs):
        clock.now += seconds_per_batch
        return inputs["x"].reshape(len(inputs["x"]), -1) @ weights

    events = []
    with_teacher(_data(40), slow_teacher, 8, progress=events.append)  # 5 batches
    assert [e["done"] for e in events] == [16, 32][:reports]
    assert all(e["what"] == "original outputs" and e["total"] == 40 for e in events)


def _resident_file_mb() -> float:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("RssFile:"))
    return int(line.split()[1]) / 1024


def test_reading_memory_mapped_rows_does_not_keep_them_resident(tmp_path):
    path = tmp_path / "x.npy"
    rows = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(256, 65536))  # 64 MB
    rows[:] = 1.0
    rows.flush()
    del rows
    data = Dataset({"x": np.load(path, mmap_mode="r")}, None, "train")
    before = _resident_file_mb()
    total = sum(float(inputs["x"][:, 0].sum()) for inputs, _ in data.iterate(16))
    total += sum(float(data.batch(i, 16, 0)[0]["x"][:, 0].sum()) for i in range(16))
    assert total == 512
    assert _resident_file_mb() - before < 16
    mapped = np.load(path, mmap_mode="r")
    assert float(np.array(mapped).sum()) == 256 * 65536  # the same read without release stays resident
    assert _resident_file_mb() - before > 48


def test_outputs_written_to_a_file_stay_written_and_do_not_stay_resident(tmp_path, monkeypatch):
    monkeypatch.setattr(targets, "IN_MEMORY_BYTES", 0)
    data = Dataset({"x": np.arange(256, dtype=np.float32)[:, None]}, None, "train")

    def teacher(inputs):
        return np.repeat(inputs["x"], 65536, axis=1)  # 256 KB a sample, 64 MB in all

    before = _resident_file_mb()
    taught = with_teacher(data, teacher, 16, tmp_path)
    assert _resident_file_mb() - before < 16
    store = taught.aligned[TEACHER]
    assert isinstance(store, np.memmap)
    reread = np.load(tmp_path / "teacher.npy", mmap_mode="r")
    np.testing.assert_array_equal(reread[:, 12345], np.arange(256, dtype=np.float32))
    np.testing.assert_array_equal(taught.batch(3, 16, 0)[0][TEACHER][:, -1], taught.batch(3, 16, 0)[0]["x"][:, 0])


def test_label_free_compression_trains_the_same_with_outputs_computed_on_the_fly(monkeypatch):
    from engine_fixtures import blobs
    from engine_fixtures import mlp as classifier
    from onnx import numpy_helper

    import onnx_dns

    model = classifier(6, 32, 3, seed=2)
    x, _ = blobs(400, 6, 3, seed=1)

    def compress():
        result = onnx_dns.compress(model, {"x": x}, target=2, iterations=40, batch_size=32, lr=0.01,
                                   eval_every=20, format="dense")
        return result, {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}

    calls = []
    monkeypatch.setattr(objective_stage, "with_teacher", lambda data, *a, **k: calls.append("validation") or
                        with_teacher(data, *a, **k))
    monkeypatch.setattr(objective_stage, "LazyOutputs", lambda data, *a, **k: calls.append("training, lazily") or
                        LazyOutputs(data, *a, **k))
    stored, stored_weights = compress()
    assert calls == ["training, lazily", "validation"]  # both stored
    monkeypatch.setattr(targets, "IN_MEMORY_BYTES", 0)
    monkeypatch.setattr(targets, "ON_DISK_BYTES", 0)
    computed, computed_weights = compress()
    assert len(calls) == 2  # none stored this time
    assert len(stored.history) == 2
    assert stored.metrics["before"].fidelity == computed.metrics["before"].fidelity == 100
    assert stored.metrics["after"].fidelity == computed.metrics["after"].fidelity
    assert [h["loss"] for h in stored.history] == pytest.approx([h["loss"] for h in computed.history], rel=1e-4)
    for name, value in stored_weights.items():
        np.testing.assert_allclose(computed_weights[name], value, rtol=1e-4, atol=1e-5)


class CountingTeacher:
    """The original as a function that records the size of each batch it runs on."""

    def __init__(self, model) -> None:
        self.run = session_runner(model, "y")
        self.batches: list[int] = []

    def __call__(self, inputs):
        self.batches.append(len(inputs["x"]))
        return self.run(inputs)


def test_training_outputs_are_computed_when_first_drawn_and_only_once():
    train, _ = _data(60).split(0.25, seed=3)
    teacher = CountingTeacher(mlp())
    lazy = train.with_aligned(TEACHER, LazyOutputs(train, teacher, 8, (5,), np.dtype(np.float32)))
    assert teacher.batches == []  # nothing before the first batch
    stored = with_teacher(train, session_runner(mlp(), "y"), 8)
    for iteration in range(12):  # more than two epochs of batches of 8 from 45 samples
        drawn, expected = lazy.batch(iteration, 8, seed=1)[0], stored.batch(iteration, 8, seed=1)[0]
        np.testing.assert_array_equal(drawn[TEACHER], expected[TEACHER])
        if iteration == 0:
            assert teacher.batches == [8]
    drawn_once = int(lazy.aligned[TEACHER].known.sum())  # the samples some batch drew, most two or three times
    assert sum(teacher.batches) == drawn_once > 40  # each computed once
    assert max(teacher.batches) <= 8


def test_a_fixed_batch_original_always_runs_on_its_batch_size():
    train = _data(21)
    teacher = CountingTeacher(mlp())
    lazy = LazyOutputs(train, teacher, 8, (5,), np.dtype(np.float32), pad=True)
    expected = session_runner(mlp(), "y")(train.inputs)
    np.testing.assert_array_equal(lazy[np.array([2, 3, 20])], expected[[2, 3, 20]])
    np.testing.assert_array_equal(lazy[:], expected)
    assert set(teacher.batches) == {8}
    assert len(teacher.batches) == 1 + 3  # three samples padded to 8, then the other 18 in batches of 8


def test_large_training_outputs_go_to_a_file_in_the_work_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(targets, "IN_MEMORY_BYTES", 0)
    train = _data(40)
    lazy = LazyOutputs(train, session_runner(mlp(), "y"), 8, (5,), np.dtype(np.float32), tmp_path)
    assert isinstance(lazy.store, np.memmap)
    np.testing.assert_array_equal(lazy[5:9], session_runner(mlp(), "y")(train.take(slice(5, 9))[0]))
    reread = np.load(tmp_path / "teacher.npy", mmap_mode="r")
    np.testing.assert_array_equal(reread[5:9], lazy[5:9])


def test_outputs_with_the_batch_on_their_second_axis_are_stored_sample_first():
    """[T, B, C] outputs: a chunk of as many missing samples as there are steps must not be taken for [B, T, C]."""
    steps = 3
    data = Dataset({"x": np.random.default_rng(0).standard_normal((10, steps)).astype(np.float32)}, None, "train")

    def teacher(inputs):  # [T, B, 2]: step t of sample b is (x[b, t], t)
        x = inputs["x"]
        return np.stack([x.T, np.broadcast_to(np.arange(steps, dtype=np.float32)[:, None], x.T.shape)], axis=-1)

    lazy = LazyOutputs(data, teacher, 4, (steps, 2), np.dtype(np.float32), axis=1)
    lazy[np.array([0])]  # leaves 3 missing among the next 4
    got = lazy[np.arange(4)]
    np.testing.assert_array_equal(got[..., 0], data.inputs["x"][:4])
    np.testing.assert_array_equal(got[..., 1], np.broadcast_to(np.arange(steps, dtype=np.float32), (4, steps)))
    stored = with_teacher(data, teacher, steps, axis=1).aligned[TEACHER]  # batches of 3, as many as the steps
    np.testing.assert_array_equal(stored[..., 0], data.inputs["x"])
