"""Without --iterations a run is sized to its time budget: the paper's 10,000 iterations for a fast model, fewer
for a slow one, with the evaluation and checkpoint intervals following."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from engine_fixtures import blobs, make_trainer, paper_plans, setup_training, trained_classifier

import onnx_dns
from onnx_dns import sizing
from onnx_dns.errors import OptionError
from onnx_dns.options import DEFAULT_ITERATIONS, TrainConfig, merge, parse_duration
from onnx_dns.sizing import MIN_ITERATIONS, iterations_within, size_run, time_step


def test_iterations_are_the_papers_unless_the_budget_holds_fewer():
    assert iterations_within(0.02, 3600) == DEFAULT_ITERATIONS  # 200 s of steps
    assert iterations_within(9.0, 3600) == 400
    assert iterations_within(9.0, 600) == 66
    assert iterations_within(1000.0, 3600) == MIN_ITERATIONS


def test_durations_read_as_seconds_and_bad_ones_name_the_option():
    assert parse_duration("30m") == 1800 and parse_duration("2h") == 7200 and parse_duration("900") == 900
    assert parse_duration("45s") == 45
    for bad in ("soon", "0m", "-1h"):
        with pytest.raises(OptionError, match="--time-budget"):
            parse_duration(bad)
    assert merge({}, {"time_budget": "90m"}).train.time_budget == 5400
    assert merge({"time_budget": "10m"}, {"time_budget": "90m"}).train.time_budget == 600


def test_the_intervals_are_a_tenth_of_the_iterations_unless_given():
    assert TrainConfig(iterations=150).eval_interval == 15 and TrainConfig(iterations=150).checkpoint_interval == 15
    assert TrainConfig(iterations=50_000).eval_interval == 1000
    assert TrainConfig(iterations=5).eval_interval == 1
    assert TrainConfig(iterations=150, eval_every=7, checkpoint_every=9).eval_interval == 7
    assert TrainConfig(iterations=150, checkpoint_every=9).checkpoint_interval == 9


def _model(tmp_path):
    x, y = blobs(300, 8, 4, seed=3)
    return trained_classifier(x, y, 4, hidden=32), x, y


def test_timing_a_step_leaves_the_trainer_as_it_was(tmp_path):
    model, x, y = _model(tmp_path)
    setup = setup_training(model, tmp_path, x, y)
    trainer = make_trainer(setup, paper_plans(setup), TrainConfig(iterations=10, batch_size=32, lr=0.5),
                           tmp_path / "w").trainer
    trainer.surgeon.initialize(trainer.params)
    before = {k: v.copy() for k, v in {**trainer.params, **trainer.masks}.items()}
    seconds = time_step(trainer, setup.train, 32, 0)
    assert seconds > 0
    for name, value in {**trainer.params, **trainer.masks}.items():
        np.testing.assert_array_equal(value, before[name])
    assert all(np.all(v == 0) for v in trainer.optimizer.state_dict().values())


def test_a_run_without_iterations_trains_what_the_budget_holds(tmp_path, monkeypatch, caplog):
    model, x, y = _model(tmp_path)
    monkeypatch.setattr(sizing, "time_step", lambda *args: 0.5)  # as if a step took half a second
    with caplog.at_level(logging.WARNING, logger="onnx_dns.sizing"):
        result = onnx_dns.compress(model, {"x": x, "labels": y}, target="2x", time_budget=30, lr=0.05)
    assert result.iterations == 60
    assert [h["iteration"] for h in result.history] == list(range(6, 61, 6))  # evaluated every tenth
    assert "10,000 iterations would take about 83 min" in caplog.text and "--time-budget" in caplog.text


def test_a_resumed_run_keeps_the_iterations_it_was_sized_to(tmp_path):
    (tmp_path / sizing.SIZING).write_text(json.dumps({"iterations": 321, "step_seconds": 2.0, "budget": 700.0}))
    options = merge({"time_budget": 60}, {})
    resumed = size_run(None, None, options, tmp_path, resume=True)  # nothing is measured
    assert resumed.iterations == 321 and resumed.limited


def test_a_sweep_without_iterations_sizes_each_target_to_the_budget(tmp_path, monkeypatch):
    model, x, y = _model(tmp_path)
    monkeypatch.setattr(sizing, "time_step", lambda *args: 1.0)
    result = onnx_dns.sweep(model, {"x": x, "labels": y}, targets="2x,3x", time_budget=25, lr=0.05)
    assert [p.result.iterations for p in result.points] == [25, 25]
