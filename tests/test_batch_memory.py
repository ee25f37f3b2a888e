"""Without --batch-size a run trains at the largest batch up to 64 whose step fits --max-memory, measured on one
step at a small batch; a given batch, a small model and a resumed run keep theirs."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from engine_fixtures import blobs, trained_classifier

import onnx_dns
from onnx_dns import pipeline
from onnx_dns.batch_memory import CHOSEN, BatchChoice, StepMemory, largest_batch, load_choice, measure_step
from onnx_dns.errors import OptionError
from onnx_dns.objective import Objective
from onnx_dns.options import merge, parse_memory

MB = 1e6


def _recognizer_like() -> StepMemory:
    """500 MB held, 100 MB a sample at batch 4 (125 MB with the margin)."""
    return StepMemory(4, int(500 * MB), int(900 * MB))


def test_the_largest_batch_whose_step_fits_the_budget():
    measured = _recognizer_like()
    assert largest_batch(measured, 64, 1950 * MB).batch == 11  # 500 + 11 * 125 = 1875, 12 would be 2000
    assert largest_batch(measured, 64, 2130 * MB).batch == 13
    assert largest_batch(measured, 8, 2000 * MB).batch == 8  # never above the batch wanted
    assert largest_batch(measured, 64, None).batch == 64  # no bound
    assert largest_batch(measured, 64, 100 * MB).batch == 1  # nothing fits: the smallest batch
    small = StepMemory(4, int(150 * MB), int(152 * MB))  # a LeNet-sized step
    assert largest_batch(small, 64, 2000 * MB).batch == 64
    unmeasured = largest_batch(None, 64, 2000 * MB)
    assert unmeasured.batch == 64 and not unmeasured.limited


def test_the_choice_says_what_the_default_would_need_and_how_to_change_it():
    choice = largest_batch(_recognizer_like(), 64, 1950 * MB)
    text = choice.describe()
    assert text.startswith("batch 11: a step at 64 would need about 8.5 GB")  # 500 + 64 * 125 MB
    assert "--max-memory 1.9 GB" in text and "--batch-size" in text
    assert "would need" not in largest_batch(_recognizer_like(), 64, 9000 * MB).describe()


def test_the_peak_of_a_step_is_measured_not_guessed():
    def allocating():
        block = np.ones(50_000_000, np.float32)  # 200 MB touched
        return float(block[::4096].sum())

    big = measure_step(allocating, 4)
    idle = measure_step(lambda: None, 4)
    assert big.peak - big.resident > 180 * MB
    assert idle.peak - idle.resident < 30 * MB


def test_memory_sizes_read_as_bytes_and_bad_ones_name_the_option():
    assert parse_memory("2GB") == 2e9 and parse_memory("1500MB") == 1.5e9 and parse_memory("3g") == 3e9
    assert parse_memory("none") is None
    for bad in ("lots", "0GB", "-1G"):
        with pytest.raises(OptionError, match="--max-memory"):
            parse_memory(bad)
    assert merge({}, {}).train.max_memory == 2e9 and merge({}, {}).train.batch_size is None
    assert merge({"max_memory": "none"}, {}).train.max_memory is None
    assert merge({"max_memory": "1GB"}, {"max_memory": "3GB"}).train.max_memory == 1e9


def _model():
    x, y = blobs(300, 8, 4, seed=3)
    return trained_classifier(x, y, 4, hidden=32), x, y


def _batches_trained(monkeypatch) -> list[int]:
    seen = []
    real = pipeline.TrainingLoop.run

    def run(loop, resume=False):
        seen.append(loop.config.batch_size)
        return real(loop, resume)

    monkeypatch.setattr(pipeline.TrainingLoop, "run", run)
    return seen


def test_a_small_model_keeps_the_default_batch(monkeypatch, tmp_path):
    model, x, y = _model()
    seen = _batches_trained(monkeypatch)
    onnx_dns.compress(model, {"x": x, "labels": y}, target="2x", iterations=5, lr=0.05, work_dir=tmp_path / "w")
    assert seen == [64]
    chosen = load_choice(tmp_path / "w")
    assert chosen.batch == 64 and chosen.needed_wanted < 2e9


def test_a_step_too_large_for_the_budget_lowers_the_batch_unless_one_is_given(monkeypatch, tmp_path, caplog):
    model, x, y = _model()
    seen = _batches_trained(monkeypatch)
    monkeypatch.setattr(pipeline, "measure_step", lambda step, batch: (step(), StepMemory(4, int(100 * MB),
                                                                                         int(900 * MB)))[1])
    with caplog.at_level(logging.WARNING, logger="onnx_dns.pipeline"):
        onnx_dns.compress(model, {"x": x, "labels": y}, target="2x", iterations=5, lr=0.05,
                          work_dir=tmp_path / "w")
    assert seen == [7]  # 1.25 * 200 MB a sample: 100 + 7 * 250 = 1850 MB, 100 + 8 * 250 = 2100 MB
    assert "batch 7: a step at 64 would need about" in caplog.text
    given = onnx_dns.compress(model, {"x": x, "labels": y}, target="2x", iterations=5, lr=0.05, batch_size=32,
                              work_dir=tmp_path / "g")
    assert seen[-1] == 32 and given.iterations == 5 and not (tmp_path / "g" / CHOSEN).exists()


def test_a_resumed_run_reads_its_batch_back_without_measuring(monkeypatch, tmp_path):
    choice = BatchChoice(24, 64, 2e9, 5e9, 1.9e9)
    (tmp_path / CHOSEN).write_text(json.dumps(choice.__dict__))
    assert load_choice(tmp_path) == choice
    assert load_choice(tmp_path / "elsewhere") is None

    def untouched(*args):
        raise AssertionError("a resumed run measured again")

    monkeypatch.setattr(pipeline, "build_stage", untouched)
    monkeypatch.setattr(pipeline, "measure_step", untouched)
    options = merge({"batch_size": 64}, {})
    objective = Objective(None, None, None, None, None, 64, {})
    events = []
    options, objective, built, trainer = pipeline.bounded_batch(None, objective, options, tmp_path, True,
                                                                events.append)
    assert options.train.batch_size == 24 and objective.batch_size == 24 and built is None and trainer is None
    assert events[-1]["event"] == "batch" and events[-1]["batch"] == 24


def test_the_trainer_that_measured_the_step_trains_from_where_it_started(monkeypatch, tmp_path):
    """One training session opened, not two, and the run ends bit for bit where a run at the same batch given
    with --batch-size ends (AdamW, whose moments a step at a learning rate of 0 would move)."""
    model, x, y = _model()
    opened = []
    real = pipeline.Trainer.__init__

    def counted(trainer, *args, **kwargs):
        opened.append(trainer)
        real(trainer, *args, **kwargs)

    monkeypatch.setattr(pipeline.Trainer, "__init__", counted)
    settings = {"target": "2x", "iterations": 6, "lr": 0.01, "optimizer": "adamw"}
    bounded = onnx_dns.compress(model, {"x": x, "labels": y}, work_dir=tmp_path / "b", **settings)
    assert len(opened) == 1 and load_choice(tmp_path / "b").batch == 64
    opened.clear()
    given = onnx_dns.compress(model, {"x": x, "labels": y}, batch_size=64, work_dir=tmp_path / "g", **settings)
    assert len(opened) == 1
    weights = {t.name: t for t in bounded.model.graph.initializer}
    for tensor in given.model.graph.initializer:
        assert weights[tensor.name] == tensor
    assert bounded.history == given.history


def test_a_sweep_trains_its_first_target_with_the_probes_trainer_and_no_session_stays_open(monkeypatch, tmp_path):
    import weakref

    model, x, y = _model()
    opened, alive = [], []
    real_init, real_run = pipeline.Trainer.__init__, pipeline.TrainingLoop.run

    def counted(trainer, *args, **kwargs):
        opened.append(weakref.ref(trainer))
        real_init(trainer, *args, **kwargs)

    def run(loop, resume=False):
        import gc

        gc.collect()
        alive.append(sum(ref() is not None for ref in opened))
        return real_run(loop, resume)

    monkeypatch.setattr(pipeline.Trainer, "__init__", counted)
    monkeypatch.setattr(pipeline.TrainingLoop, "run", run)
    onnx_dns.sweep(model, {"x": x, "labels": y}, targets="2x,3x", iterations=4, lr=0.01, out_dir=tmp_path)
    assert len(opened) == 2 and alive == [1, 1]  # one session per target, the first the probe's
