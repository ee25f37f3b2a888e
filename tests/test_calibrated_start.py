"""The calibrated start: activation-aware choice of the kept weights and the per-channel refit after each cut."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx_dns.calibrated_start import calibrated_start
from onnx_dns.errors import OptionError
from onnx_dns.options import CompressOptions
from onnx_dns.prunable import find_layers

LOUD = 20.0  # the RMS of input channel 0; the others have 1


def conv_model(seed: int = 0) -> onnx.ModelProto:
    """x[N,4,6,6] -> Conv 3x3 (8, bias) -> Relu -> Conv 1x1 (8, bias) -> Flatten -> MatMul [288, 5] (no bias).
    The first conv's weights on the loud channel 0 are 20 times smaller than the rest, as a net trained on such
    inputs would have them."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    w1[:, 0] /= LOUD
    inits = [numpy_helper.from_array(w1, "w1"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.standard_normal((8, 8, 1, 1)).astype(np.float32) / 3, "w2"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b2"),
             numpy_helper.from_array(rng.standard_normal((288, 5)).astype(np.float32) / 10, "w3")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2"),
             helper.make_node("Flatten", ["c2"], ["f"], name="flatten"),
             helper.make_node("MatMul", ["f", "w3"], ["y"], name="fc")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def inputs(n: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, 4, 6, 6)).astype(np.float32)
    x[:, 0] *= LOUD
    return x


def tensors(model: onnx.ModelProto, x: np.ndarray, names: list[str]) -> list[np.ndarray]:
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n != "y")
    session = onnxruntime.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(names, {"x": x})


def weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def magnitude_pruned(model: onnx.ModelProto, keep: dict[str, float]) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        layer = {"w1": "conv1", "w2": "conv2", "w3": "fc"}.get(t.name)
        if layer in keep:
            w = numpy_helper.to_array(t)
            k = int(round(keep[layer] * w.size))
            threshold = np.sort(np.abs(w).ravel())[w.size - k]
            t.CopyFrom(numpy_helper.from_array(np.where(np.abs(w) >= threshold, w, 0).astype(w.dtype), t.name))
    return out


@pytest.fixture
def case():
    model = conv_model()
    layers = find_layers(model)
    assert [layer.name for layer in layers] == ["conv1", "conv2", "fc"]
    calibration = inputs(64, 1)
    return model, layers, calibration, [{"x": calibration[:32]}, {"x": calibration[32:]}]


def test_each_layer_keeps_exactly_its_fraction_and_the_input_is_not_modified(case):
    model, layers, _, batches = case
    before = model.SerializeToString()
    keep = {"conv1": 0.5, "conv2": 0.25, "fc": 0.1}
    start = calibrated_start(model, layers, keep, batches)
    assert model.SerializeToString() == before
    after = weights(start.model)
    for name, weight in (("conv1", "w1"), ("conv2", "w2"), ("fc", "w3")):
        assert np.count_nonzero(after[weight]) == round(keep[name] * after[weight].size)
    assert start.corrected == 3


def test_weights_are_chosen_by_their_effect_not_their_size(case):
    model, layers, _, batches = case
    start = calibrated_start(model, layers, {"conv1": 0.5}, batches)
    kept = weights(start.model)["w1"] != 0
    # channel 0's weights are 20 times smaller but read a 20 times louder input: magnitude drops nearly all of
    # them, the input-aware score keeps them as often as the others
    magnitude = weights(magnitude_pruned(model, {"conv1": 0.5}))["w1"] != 0
    assert magnitude[:, 0].mean() < 0.1
    assert kept[:, 0].mean() > 0.3


def test_the_refit_matches_each_channels_mean_and_leaves_no_correlated_residual(case):
    model, layers, calibration, batches = case
    start = calibrated_start(model, layers, {"conv1": 0.3, "fc": 0.2}, batches)
    original_c1, original_f, original_y = tensors(model, calibration, ["c1", "f", "y"])
    new_c1, new_f, new_y = tensors(start.model, calibration, ["c1", "f", "y"])
    # conv1 has a bias: an affine fit per channel, so each channel's mean over the calibration inputs is the
    # original's (least squares with an intercept)
    np.testing.assert_allclose(new_c1.mean(axis=(0, 2, 3)), original_c1.mean(axis=(0, 2, 3)), atol=1e-4)
    # fc has none: a scale per output, whose residual is orthogonal to the pruned layer's own output
    z = new_f @ weights(start.model)["w3"]
    residual = original_y - new_y
    np.testing.assert_allclose((residual * z).sum(0) / (z * z).sum(0), 0, atol=1e-4)


def test_it_reproduces_the_original_better_than_magnitude_on_new_inputs(case):
    model, layers, _, batches = case
    keep = {"conv1": 0.4, "conv2": 0.4, "fc": 0.3}
    held_out = inputs(256, 7)
    (reference,) = tensors(model, held_out, ["y"])
    (calibrated,) = tensors(calibrated_start(model, layers, keep, batches).model, held_out, ["y"])
    (magnitude,) = tensors(magnitude_pruned(model, keep), held_out, ["y"])
    error = lambda y: np.linalg.norm(y - reference) / np.linalg.norm(reference)  # noqa: E731
    assert error(calibrated) < 0.8 * error(magnitude)


def test_the_option_needs_weight_level_target_mode():
    with pytest.raises(OptionError, match="--start calibrated"):
        CompressOptions(start="calibrated")
    with pytest.raises(OptionError, match="--start calibrated"):
        CompressOptions(start="calibrated", target=2.0, structure="channel")
    assert CompressOptions(start="calibrated", sparsity={"fc": 0.5}).start == "calibrated"


def test_compress_starts_from_the_calibrated_model_and_bounds_against_the_original(tmp_path):
    from onnx_dns.options import TrainConfig
    from onnx_dns.pipeline import compress_file

    model = conv_model()
    onnx.save(model, str(tmp_path / "model.onnx"))
    np.savez(tmp_path / "x.npz", x=inputs(160, 3))
    events = []
    options = CompressOptions(data=str(tmp_path / "x.npz"), target=3.0, start="calibrated",
                              train=TrainConfig(iterations=4, batch_size=16, lr=1e-4, eval_every=2,
                                                max_accuracy_drop=None))
    result = compress_file(tmp_path / "model.onnx", tmp_path / "out.onnx", options, progress=events.append)
    kinds = [e["event"] for e in events]
    assert kinds.index("calibrated") < kinds.index("start")
    start = next(e for e in events if e["event"] == "start")
    # the baseline is the original's (it agrees with itself on every sample), not the pruned start's
    assert start["baseline"].fidelity == 100.0
    first = next(e for e in events if e["event"] == "step")
    assert first["compression"] == pytest.approx(3.0, rel=0.05)  # pruned from the first iteration on
    assert result.accuracy_before.fidelity == 100.0


def test_a_model_that_cannot_run_on_the_calibration_feed_is_a_clear_option_error(case):
    model, layers, calibration, _ = case
    with pytest.raises(OptionError, match="--start calibrated could not run .*leave --start at dense"):
        calibrated_start(model, layers, {"conv1": 0.5}, [{"x": calibration[:4, :3]}])  # 3 channels, not 4


def test_a_resumed_calibrated_run_takes_its_start_from_the_checkpoint_and_ends_as_an_uninterrupted_one(
        tmp_path, monkeypatch):
    import os
    import signal

    from onnx_dns import finalize, objective
    from onnx_dns.errors import Interrupted
    from onnx_dns.options import TrainConfig
    from onnx_dns.pipeline import compress_file

    measured = []

    def counted(model, *args, **kwargs):
        measured.append(model)
        return pipeline_measure(model, *args, **kwargs)

    pipeline_measure = objective.measure_model
    monkeypatch.setattr(objective, "measure_model", counted)
    monkeypatch.setattr(finalize, "measure_model", counted)

    onnx.save(conv_model(), str(tmp_path / "model.onnx"))
    np.savez(tmp_path / "x.npz", x=inputs(160, 3))
    options = CompressOptions(data=str(tmp_path / "x.npz"), target=3.0, start="calibrated",
                              train=TrainConfig(iterations=12, batch_size=16, lr=1e-3, eval_every=4,
                                                checkpoint_every=2, threads=1, max_accuracy_drop=None))
    straight = compress_file(tmp_path / "model.onnx", tmp_path / "straight.onnx", options)
    assert len(measured) == 1  # the result; the original is scored from its outputs stored beside the data

    def interrupt(event):
        if event["event"] == "step" and event["iteration"] == 6:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted):
        compress_file(tmp_path / "model.onnx", tmp_path / "split.onnx", options, progress=interrupt)
    events = []
    resumed = compress_file(tmp_path / "model.onnx", tmp_path / "split.onnx", options, progress=events.append,
                            resume=True)
    kinds = [e["event"] for e in events]
    assert "calibrating" not in kinds
    assert resumed.accuracy_before == straight.accuracy_before
    assert resumed.accuracy_after == straight.accuracy_after
    for name, value in weights(straight.model).items():
        np.testing.assert_array_equal(weights(resumed.model)[name], value)
    assert weights(straight.model)["b1"].tolist() != weights(conv_model())["b1"].tolist()  # the refit is kept
