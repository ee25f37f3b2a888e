"""A stream model's held-out stretch is scored in its stream: after the frames before it, with the recurrent
state carried from run to run, as the whole stream computes it; not run by run from zero state."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from graphs import value
from test_sequence_compress import HIDDEN, frame_lstm

from onnx_dns.dataset import SCORED, Dataset
from onnx_dns.evaluate import measure, session_runner
from onnx_dns.options import CompressOptions, TrainConfig
from onnx_dns.pipeline import compress_file
from onnx_dns.stream import state_pairs

RUN = 16


def stream_lstm(scale: float = 1.0) -> onnx.ModelProto:
    """Silero's LSTM VAD in small, returning its next state (hn, cn) beside y; `scale` changes the output weights."""
    model = frame_lstm()
    model.graph.output.extend([value("hn", [1, None, HIDDEN]), value("cn", [1, None, HIDDEN])])
    if scale != 1.0:
        w = next(t for t in model.graph.initializer if t.name == "w_out")
        w.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(w) * np.float32(scale), "w_out"))
    return model


def frames(n: int = 240) -> np.ndarray:
    return (np.cumsum(np.random.default_rng(1).normal(size=(n, 6)), axis=0) / 10).astype(np.float32)


def whole(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    zeros = np.zeros((1, 1, HIDDEN), np.float32)
    return session_runner(model, "y")({"input": x, "h": zeros[None].repeat(len(x), 0),
                                       "c": zeros[None].repeat(len(x), 0)})


def dataset(x: np.ndarray) -> Dataset:
    zeros = np.zeros((len(x), 1, 1, HIDDEN), np.float32)
    return Dataset({"input": x, "h": zeros, "c": zeros}, None, "frames").as_windows()


def test_states_pair_with_the_outputs_that_hold_their_next_value():
    assert state_pairs(stream_lstm()) == {"h": "hn", "c": "cn"}
    assert state_pairs(frame_lstm()) == {}  # no output returns the state: scored from zero state as before


def test_the_held_out_stretch_follows_its_burn_in_unscored():
    train, val = dataset(frames()).split(0.1, 0, RUN, burn_in=4 * RUN)
    assert len(train) == 216 and np.array_equal(val.index, np.arange(152, 240))
    assert np.array_equal(val.aligned[SCORED], np.arange(152, 240) >= 216)
    train, val = dataset(frames()).split(0.1, 0, RUN)
    assert np.array_equal(val.index, np.arange(216, 240)) and SCORED not in val.aligned


def test_a_stream_is_scored_as_the_whole_stream_computes_it_and_not_run_by_run():
    x = frames()
    _, val = dataset(x).split(0.1, 0, RUN, burn_in=4 * RUN)
    original, changed = stream_lstm(), stream_lstm(1.3)
    pairs = state_pairs(original)
    got = measure(session_runner(changed, "y", pairs), val, "regress", RUN,
                  reference=session_runner(original, "y", pairs))
    t, y = whole(original, x[152:])[64:], whole(changed, x[152:])[64:]
    assert got.samples == 24
    assert got.relative_error == pytest.approx(100 * np.linalg.norm(y - t) / np.linalg.norm(t), rel=1e-5)
    run_by_run = measure(session_runner(changed, "y"), val, "regress", RUN, reference=session_runner(original, "y"))
    assert abs(run_by_run.relative_error - got.relative_error) > 0.01 * got.relative_error  # zero state differs
    again = measure(session_runner(changed, "y", pairs), val, "regress", RUN,
                    reference=session_runner(original, "y", pairs))
    assert again.relative_error == pytest.approx(got.relative_error, rel=1e-6)  # each pass starts from zero state


def test_a_stream_model_compresses_with_its_held_out_scored_in_the_stream(tmp_path):
    path = tmp_path / "vad.onnx"
    onnx.save(stream_lstm(), str(path))
    np.savez(tmp_path / "frames.npz", input=frames())
    options = CompressOptions(data=str(tmp_path / "frames.npz"), target=2.0, format="dense",
                              train=TrainConfig(iterations=20, batch_size=RUN, lr=0.01, eval_every=20,
                                                eval_batch_size=RUN, max_accuracy_drop=None))
    result = compress_file(path, tmp_path / "out.onnx", options)
    assert result.accuracy_before.samples == 24  # the held-out frames only, not their burn-in
    assert result.accuracy_before.relative_error < 1e-4  # the training graph carries the state as the original
    out = onnx.load(str(tmp_path / "out.onnx"))
    x = frames()
    t, y = whole(stream_lstm(), x[152:])[64:], whole(out, x[152:])[64:]
    assert result.accuracy_after.relative_error == pytest.approx(
        100 * np.linalg.norm(y - t) / np.linalg.norm(t), rel=1e-3)
