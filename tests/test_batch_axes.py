"""Inputs whose batch is not on axis 0 (a recurrent state [layers, batch, hidden]) or that hold none (a sample
rate, a fixed [1, 1, H] state beside a time axis): found from the declared dims, fed from sample-first data
(batch_axes.py, data.py); models whose batch axis is a sequence train on runs of consecutive samples
(sequence_batch.py, Dataset.as_windows)."""

from __future__ import annotations

import numpy as np
import pytest
from graphs import value
from onnx import TensorProto

from onnx_dns.batch_axes import batch_axes, feed_dims, fixed_batch, model_feed
from onnx_dns.data import InputSpec, check_arrays
from onnx_dns.dataset import Dataset
from onnx_dns.errors import DataError
from onnx_dns.sequence_batch import samples_interact

INT = TensorProto.INT64


def test_the_batch_symbol_of_the_first_input_places_the_others():
    silero_op18 = [value("input", ["batch", "sequence"]), value("sr", [], INT), value("state", [2, "batch", 128])]
    assert batch_axes(silero_op18) == {"input": 0, "sr": None, "state": 1}
    silero_lstm = [value("input", ["sequence_length", 576]), value("h", [1, 1, 128]), value("c", [1, 1, 128])]
    assert batch_axes(silero_lstm) == {"input": 0, "h": None, "c": None}


def test_inputs_without_a_batch_symbol_keep_axis_0():
    assert batch_axes([value("x", [1, 3, 8, 8]), value("scale", [1, 3])]) == {"x": 0, "scale": 0}
    assert batch_axes([value("x", [-1, 3, 8, 8])]) == {"x": 0}  # paddle's -1
    mixed = [value("ids", ["b", "s"], INT), value("mask", ["b", "s"], INT), value("other", ["n", 4])]
    assert batch_axes(mixed) == {"ids": 0, "mask": 0, "other": 0}


def test_fixed_batch_reads_the_batch_axis_not_axis_0():
    assert fixed_batch([(None, 576), (1, 1, 128)], [0, None]) is None  # the [1, 1, 128] state is whole
    assert fixed_batch([(2, None, 128), (4, 6)], [1, 0]) == 4
    assert fixed_batch([(2, 8, 128)], [1]) == 8


def test_model_feed_moves_the_batch_to_its_axis_and_takes_one_value_of_a_whole_input():
    state = np.arange(3 * 2 * 4, dtype=np.float32).reshape(3, 2, 4)  # sample first: [n, layers, hidden]
    feed = model_feed({"state": state, "sr": np.full(3, 16000), "x": np.ones((3, 5)), "target": np.zeros(3)},
                      {"state": 1, "sr": None, "x": 0})
    assert feed["state"].shape == (2, 3, 4) and feed["state"].flags.c_contiguous
    np.testing.assert_array_equal(feed["state"][:, 1], state[1])
    assert feed["sr"].shape == () and int(feed["sr"]) == 16000
    assert feed["x"].shape == (3, 5) and feed["target"].shape == (3,)
    assert feed_dims((2, 128), 1, 64) == (2, 64, 128) and feed_dims((1, 1, 128), None, 64) == (1, 1, 128)


SPECS = [InputSpec("input", np.dtype(np.float32), (None, 6), 0),
         InputSpec("sr", np.dtype(np.int64), (), None),
         InputSpec("state", np.dtype(np.float32), (2, None, 3), 1),
         InputSpec("h", np.dtype(np.float32), (1, 1, 3), None)]


def _arrays(n: int = 5, **extra) -> dict:
    base = {"input": np.ones((n, 6), np.float32), "sr": np.array(16000), "state": np.zeros((n, 2, 3), np.float32)}
    return {**base, **extra}


def test_a_whole_input_given_once_or_per_sample_is_repeated_and_a_missing_state_is_zeros():
    arrays, _ = check_arrays(_arrays(), None, SPECS, "d.npz")
    assert arrays["sr"].shape == (5,) and set(arrays["sr"].tolist()) == {16000}
    assert arrays["h"].shape == (5, 1, 1, 3) and not arrays["h"].any()
    h = np.full((5, 1, 1, 3), 0.5, np.float32)
    arrays, _ = check_arrays(_arrays(sr=np.full(5, 8000), h=h), None, SPECS, "d.npz")
    assert set(arrays["sr"].tolist()) == {8000} and (arrays["h"] == 0.5).all()


def test_a_whole_input_must_hold_one_value_for_all_samples():
    with pytest.raises(DataError, match=r"'sr' has no batch axis .*sample 3 differs from sample 0"):
        check_arrays(_arrays(sr=np.array([16000, 16000, 16000, 8000, 16000])), None, SPECS, "d.npz")


def test_a_missing_integer_input_without_batch_axis_is_named():
    arrays = _arrays()
    del arrays["sr"]
    with pytest.raises(DataError, match=r"no array for model input 'sr'.*no batch axis: give its one value"):
        check_arrays(arrays, None, SPECS, "d.npz")


def test_an_input_laid_out_as_the_model_takes_it_is_refused_saying_the_data_is_sample_first():
    with pytest.raises(DataError, match=r"'state' has shape \[2, 5, 3\].*\[samples, 2, 3\].*batch is on axis 1"):
        check_arrays(_arrays(state=np.zeros((2, 5, 3), np.float32)), None, SPECS, "d.npz")


def test_windows_are_runs_of_consecutive_samples_and_the_held_out_part_is_the_end():
    data = Dataset({"x": np.arange(40, dtype=np.float32)[:, None]}, None, "seq").as_windows()
    train, val = data.split(0.25, seed=0)
    np.testing.assert_array_equal(val.inputs["x"][:, 0], np.arange(30, 40))
    starts = set()
    for iteration in range(12):
        batch = train.batch(iteration, 8, seed=1)[0]["x"][:, 0]
        np.testing.assert_array_equal(np.diff(batch), np.ones(7))
        assert batch[-1] < 30
        starts.add(batch[0])
    assert len(starts) > 3
    shuffled = Dataset({"x": np.arange(40, dtype=np.float32)[:, None]}, None, "iid").batch(0, 8, seed=1)[0]["x"]
    assert (np.diff(shuffled[:, 0]) > 1).any()  # the negative control: independent samples are shuffled


def test_a_held_out_stretch_is_at_least_one_run_long_but_at_most_half_the_sequence():
    data = Dataset({"x": np.arange(256, dtype=np.float32)[:, None]}, None, "seq").as_windows()
    train, val = data.split(0.1, seed=0, run=64)  # 10% would be 26 steps, fewer than a training run of 64
    np.testing.assert_array_equal(val.inputs["x"][:, 0], np.arange(192, 256))
    assert len(train) == 192
    _, short = data.split(0.1, seed=0, run=200)
    assert len(short) == 128
    _, independent = Dataset({"x": np.arange(256, dtype=np.float32)[:, None]}, None, "iid").split(0.1, 0, run=64)
    assert len(independent) == 26  # independent samples keep the fraction


def test_samples_interact_when_an_output_depends_on_earlier_samples():
    x = {"x": np.random.default_rng(0).standard_normal((6, 3)).astype(np.float32)}

    def running(feed):  # a recurrence along axis 0
        return np.cumsum(feed["x"], axis=0)

    def independent(feed):
        return 2 * feed["x"] + 1

    assert samples_interact(running, x, running(x))
    assert not samples_interact(independent, x, independent(x))
    assert not samples_interact(running, {"x": x["x"][:2]}, running({"x": x["x"][:2]}))  # too few to tell


def test_a_model_that_runs_only_at_its_batch_size_is_taken_as_independent():
    x = {"x": np.ones((6, 3), np.float32)}

    def fixed_six(feed):
        if len(feed["x"]) != 6:
            raise RuntimeError("Got invalid dimensions for input: x")
        return np.cumsum(feed["x"], axis=0)

    assert not samples_interact(fixed_six, x, fixed_six(x))
