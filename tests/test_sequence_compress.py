"""A model whose batch axis is time (Silero's LSTM VAD in small: input [T, F], states h, c [1, 1, H] with no
batch axis) compresses label-free: the states are fed zeros, batches are runs of consecutive frames, the LSTM is
unrolled over the pinned run length, and the original's outputs are computed on the same runs."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime
import pytest
from graphs import make_model, value
from onnx import helper, numpy_helper

from onnx_dns.options import CompressOptions, TrainConfig
from onnx_dns.pipeline import compress_file

H = helper.make_node
HIDDEN, FEATURES = 4, 6


def frame_lstm() -> onnx.ModelProto:
    """input [T, 6] -> MatMul -> [T, 1, 5] -> LSTM(h, c) -> [T, 4] -> MatMul -> Sigmoid -> y [T, 1]."""
    rng = np.random.default_rng(0)
    inits = {"w_in": rng.normal(size=(FEATURES, 5)) * 0.5, "lstm.W": rng.normal(size=(1, 4 * HIDDEN, 5)) * 0.5,
             "lstm.R": rng.normal(size=(1, 4 * HIDDEN, HIDDEN)) * 0.5, "w_out": rng.normal(size=(HIDDEN, 1))}
    tensors = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items()]
    tensors += [numpy_helper.from_array(np.array([1], np.int64), "axis1"),
                numpy_helper.from_array(np.array([1, 2], np.int64), "axes12")]
    nodes = [H("MatMul", ["input", "w_in"], ["a"], name="embed"),
             H("Unsqueeze", ["a", "axis1"], ["seq"], name="as_sequence"),
             H("LSTM", ["seq", "lstm.W", "lstm.R", "", "", "h", "c"], ["ys", "hn", "cn"], name="lstm",
               hidden_size=HIDDEN),
             H("Squeeze", ["ys", "axes12"], ["states"], name="squeeze"),
             H("MatMul", ["states", "w_out"], ["logit"], name="head"),
             H("Sigmoid", ["logit"], ["y"], name="prob")]
    inputs = [value("input", ["T", FEATURES]), value("h", [1, 1, HIDDEN]), value("c", [1, 1, HIDDEN])]
    return make_model(nodes, inputs, [value("y", ["T", 1])], tensors)


def test_a_time_first_lstm_compresses_with_zero_states_on_runs_of_frames(tmp_path, caplog):
    path = tmp_path / "vad.onnx"
    onnx.save(frame_lstm(), str(path))
    frames = np.cumsum(np.random.default_rng(1).normal(size=(240, FEATURES)), axis=0).astype(np.float32) / 10
    np.savez(tmp_path / "frames.npz", input=frames)  # h and c left out: zeros
    options = CompressOptions(data=str(tmp_path / "frames.npz"), target=2.0, format="dense",
                              train=TrainConfig(iterations=20, batch_size=16, lr=0.01, eval_every=20,
                                                eval_batch_size=100, max_accuracy_drop=None))
    with caplog.at_level(logging.WARNING):
        result = compress_file(path, tmp_path / "out.onnx", options)
    assert "the batch axis is a sequence" in caplog.text and "'h'" in caplog.text
    assert {s.name for s in result.layers_before} == {"embed", "lstm", "head"}
    assert result.compression == pytest.approx(2.0, rel=0.05)
    assert result.accuracy_before.relative_error < 1e-4  # the original's outputs on the very runs evaluated
    out = onnx.load(str(tmp_path / "out.onnx"))
    assert [n.op_type for n in out.graph.node] == [n.op_type for n in frame_lstm().graph.node]
    session = onnxruntime.InferenceSession(out.SerializeToString(), providers=["CPUExecutionProvider"])
    zeros = np.zeros((1, 1, HIDDEN), np.float32)
    y = session.run(None, {"input": frames[:37], "h": zeros, "c": zeros})[0]  # any length, as before
    assert y.shape == (37, 1) and np.isfinite(y).all()
