"""The original model's metrics, the bound's baseline: measured once, from its outputs stored beside unlabelled
validation data when they exist, and never by evaluating the model being trained at iteration 0."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from graphs import init_arrays, mlp, set_initializer

from onnx_dns.dataset import Dataset
from onnx_dns.evaluate import session_runner
from onnx_dns.losses import LossSpec
from onnx_dns.objective import Objective, measure_model, measure_original
from onnx_dns.options import CompressOptions, TrainConfig
from onnx_dns.pipeline import compress_file
from onnx_dns.targets import TEACHER, Targets, with_teacher
from onnx_dns.trainer import Trainer

CLASSIFY = LossSpec("classify", "y", 0.0, 1.0, 2.0, 5)
REGRESS = LossSpec("regress", "y", 0.0, 1.0)


def _data(n: int, seed: int = 0) -> Dataset:
    x = np.random.default_rng(seed).standard_normal((n, 1, 4, 4)).astype(np.float32)
    return Dataset({"x": x}, None, "data")


def _objective(spec: LossSpec, model: onnx.ModelProto, val: Dataset, store: bool) -> Objective:
    teacher = session_runner(model, "y")
    val = with_teacher(val, teacher, 8) if store else val
    return Objective(_data(16, seed=1), val, spec, teacher, Targets(spec, teacher, (5,)), 8, {})


def _perturbed() -> onnx.ModelProto:
    model = mlp()
    weight = init_arrays(model)["fc2.w"]
    noise = np.random.default_rng(0).standard_normal(weight.shape).astype(np.float32)
    set_initializer(model, "fc2.w", weight + noise * weight.std())
    return model


def test_stored_outputs_give_the_original_its_measured_metrics_without_running_it():
    for spec in (CLASSIFY, REGRESS):
        objective = _objective(spec, mlp(), _data(30), store=True)
        # an empty model cannot run: the stored outputs must be all it reads
        assert measure_original(onnx.ModelProto(), objective, 8, None) == measure_model(mlp(), objective, 8, None)
    # without stored outputs the model given is run: another model scores differently against the original
    objective = _objective(CLASSIFY, mlp(), _data(30), store=False)
    assert measure_original(_perturbed(), objective, 8, None).fidelity < 100
    assert measure_original(mlp(), objective, 8, None).fidelity == 100


def test_labelled_validation_data_runs_the_original(tmp_path):
    """Stored outputs say nothing of accuracy against labels: the original is run."""
    val = _data(30)
    labels = session_runner(mlp(), "y")(val.inputs).argmax(axis=-1)
    labelled = Dataset(val.inputs, labels, "val")
    objective = _objective(CLASSIFY, mlp(), labelled, store=True)
    assert measure_original(mlp(), objective, 8, None).top1 == 100
    assert measure_original(_perturbed(), objective, 8, None).top1 < 100


def test_a_label_free_run_evaluates_the_model_being_trained_only_at_its_intervals(tmp_path, monkeypatch):
    evaluated = []
    trainer_evaluate = Trainer.evaluate

    def counted(self, *args, **kwargs):
        evaluated.append(self)
        return trainer_evaluate(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "evaluate", counted)
    onnx.save(mlp(), str(tmp_path / "model.onnx"))
    np.savez(tmp_path / "x.npz", x=_data(80).inputs["x"])
    options = CompressOptions(data=str(tmp_path / "x.npz"), target=2.0,
                              train=TrainConfig(iterations=8, batch_size=16, lr=1e-3, eval_every=4, threads=1))
    events = []
    result = compress_file(tmp_path / "model.onnx", tmp_path / "out.onnx", options, progress=events.append)
    assert len(evaluated) == 2  # iterations 4 and 8, none at 0
    start = next(e for e in events if e["event"] == "start")
    assert start["baseline"] == result.accuracy_before
    assert result.accuracy_before.fidelity == 100


def test_outputs_with_the_batch_on_their_second_axis_are_scored_sample_first():
    """[T, B, C] logits: the last batch holds as many samples as there are steps, and must not be read as
    [B, T, C] against the stored outputs (which are sample first)."""
    from onnx import TensorProto, helper

    steps, classes = 3, 5
    graph = helper.make_graph([helper.make_node("Transpose", ["x"], ["y"], perm=[1, 0, 2])], "tbc",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", steps, classes])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [steps, "N", classes])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = np.random.default_rng(0).standard_normal((7, steps, classes)).astype(np.float32)
    run = session_runner(model, "y")
    val = with_teacher(Dataset({"x": x}, None, "val"), run, 4, axis=1)  # batches of 4 and 3
    np.testing.assert_array_equal(val.aligned[TEACHER], x)
    from onnx_dns.evaluate import measure

    assert measure(run, val, "classify", 4, axis=1).fidelity == 100
    spec = LossSpec("classify", "y", 0.0, 1.0, 2.0, classes)
    objective = Objective(val, val, spec, run, Targets(spec, run, (steps, classes), axis=1), 4, {})
    assert measure_model(model, objective, 4, None).fidelity == 100  # the objective's axis reaches the pass
    from onnx_dns.gate import evaluate_model

    labels = x.argmax(axis=-1)  # the model's own top class at each step: 100% top-1 when read sample first
    assert evaluate_model(model, {"x": x, "labels": labels}, batch_size=4, task="classify").metrics.top1 == 100


def _steps_first(steps: int, features: int = 4, classes: int = 5) -> onnx.ModelProto:
    """x [N, T, F] -> MatMul W [F, C] -> Transpose -> y [T, N, C]: logits with the batch on their second axis."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(1).standard_normal((features, classes)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["z"]), helper.make_node("Transpose", ["z"], ["y"], perm=[1, 0, 2])],
        "tnc", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", steps, features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [steps, "N", classes])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("steps,batch", [(8, 8), (8, 5), (2, 6)])
def test_the_batch_axis_is_found_when_another_axis_has_the_batch_size(steps, batch):
    from onnx_dns.sequence_batch import samples_interact
    from onnx_dns.targets import find_batch_axis

    run = session_runner(_steps_first(steps), "y")
    inputs = {"x": np.random.default_rng(0).standard_normal((batch, steps, 4)).astype(np.float32)}
    output = run(inputs)
    assert find_batch_axis(run, inputs, output) == 1
    assert not samples_interact(run, inputs, output, 1)  # independent samples, even with two steps


def test_a_model_with_as_many_steps_as_its_batch_compresses(tmp_path):
    import onnx_dns

    x = np.random.default_rng(0).standard_normal((64, 8, 4)).astype(np.float32)
    result = onnx_dns.compress(_steps_first(8), {"x": x}, target=2, iterations=2, batch_size=8, lr=1e-3,
                               max_accuracy_drop=None, task="classify")
    assert result.accuracy_before.positions == 8 and result.accuracy_before.fidelity == 100
    assert result.accuracy_after.samples == result.accuracy_before.samples == 6
