"""The training loop, not mocked: onnxruntime-training steps, host optimizer and surgery on tiny models.

Learning and pruning, target compression, splicing back a weight the task needs, exact resume, label-free
distillation, rollback on a diverging loss, and the accuracy bound.
"""

from __future__ import annotations

import os
import signal
import threading

import numpy as np
import onnx
import pytest
from engine_fixtures import (
    blobs,
    cnn,
    dense_initializers,
    images,
    linear,
    make_trainer,
    mlp,
    paper_plans,
    predict,
    setup_training,
    trained_classifier,
)

from onnx_dns.options import CompressOptions

from onnx_dns.pipeline import compress_file
from onnx_dns.errors import Interrupted, TrainingError
from onnx_dns.criteria.target import Target, allocate_keep
from onnx_dns.surgery import LayerPlan
from onnx_dns.options import TrainConfig


def losses_of(events: list[dict]) -> list[float]:
    return [e["loss"] for e in events if e["event"] == "step"]


# ---------------------------------------------------------------- learning while pruning


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_training_from_scratch_learns_and_prunes(kind, tmp_path):
    if kind == "mlp":
        model, classes = mlp(6, 16, 3, seed=2), 3
        x, y = blobs(384, 6, classes, seed=1)
        val = blobs(300, 6, classes, seed=2)
        config = TrainConfig(iterations=300, batch_size=32, lr=0.05, eval_every=100, checkpoint_every=100)
    else:
        model, classes = cnn(3, seed=1), 3
        x, y = images(384, classes, seed=1)
        val = images(300, classes, seed=2)
        config = TrainConfig(iterations=250, batch_size=32, lr=0.05, eval_every=125, checkpoint_every=125)
    setup = setup_training(model, tmp_path, x, y, val=val)
    events: list[dict] = []
    trainer = make_trainer(setup, paper_plans(setup, 0.25), config, tmp_path / "work", events.append)
    result = trainer.run()
    losses = losses_of(events)
    assert len(losses) == config.iterations and all(np.isfinite(losses))
    assert np.mean(losses[-30:]) < 0.5 * np.mean(losses[:10])
    assert result.baseline.top1 < 70
    assert result.chosen.metrics.top1 > 85  # chance is 33%
    # surgery pruned a good share of the weights while it learned
    assert trainer.trainer.compression() > 1.5
    assert result.chosen.compression == pytest.approx(trainer.trainer.compression())
    # the metrics the trainer reports are those of W * T: run the folded weights through plain onnxruntime
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    for t in folded.graph.initializer:
        if t.name in result.masks:
            t.CopyFrom(onnx.numpy_helper.from_array(result.params[t.name] * result.masks[t.name], t.name))
    accuracy = 100 * np.mean(predict(folded, val[0]).argmax(1) == val[1])
    assert accuracy == pytest.approx(result.chosen.metrics.top1)


def test_target_mode_reaches_the_requested_compression(tmp_path):
    x, y = blobs(600, 10, 3, seed=3)
    model = trained_classifier(x, y, 3, hidden=64)
    onnx.save(model, str(tmp_path / "model.onnx"))
    np.savez(tmp_path / "train.npz", x=x, labels=y)
    options = CompressOptions(data=str(tmp_path / "train.npz"), target=4.0, format="sparse",
                              train=TrainConfig(iterations=160, batch_size=32, lr=0.02, eval_every=80,
                                                checkpoint_every=80))
    events: list[dict] = []
    result = compress_file(tmp_path / "model.onnx", tmp_path / "out.onnx", options, progress=events.append)
    # counted from the written file: every weight and bias of both layers
    arrays = dense_initializers(onnx.load(str(tmp_path / "out.onnx")))
    names = ("fc1.w", "fc1.b", "fc2.w", "fc2.b")
    params = sum(arrays[n].size for n in names)
    nonzeros = sum(int(np.count_nonzero(arrays[n])) for n in names)
    assert params == 10 * 64 + 64 + 64 * 3 + 3
    assert params / nonzeros == pytest.approx(4.0, rel=0.02)
    assert result.compression == pytest.approx(params / nonzeros)
    # the larger layer was pruned harder, as allocated
    kept1 = np.count_nonzero(arrays["fc1.w"]) + np.count_nonzero(arrays["fc1.b"])
    kept2 = np.count_nonzero(arrays["fc2.w"]) + np.count_nonzero(arrays["fc2.b"])
    assert kept1 / (10 * 64 + 64) < kept2 / (64 * 3 + 3)
    keep = allocate_keep({"fc1": 704, "fc2": 195}, 4.0)
    assert kept1 == round(keep["fc1"] * 704) and kept2 == round(keep["fc2"] * 195)
    # the compression stopped changing at the surgery stop (75% of the iterations); progress recounts the
    # kept weights every PROGRESS_EVERY iterations, so the first count after the stop is at iteration 150
    after_stop = {round(e["compression"], 6) for e in events if e["event"] == "step" and e["iteration"] >= 150}
    assert after_stop == {round(result.compression, 6)}
    assert result.accuracy_after.top1 > 80


# ---------------------------------------------------------------- splicing


def test_a_weight_pruned_early_that_the_task_needs_is_spliced_back(tmp_path):
    """Only input 0 carries the label; its weights start tiny, so the first surgery prunes them. The
    straight-through gradient keeps growing them while the mask is 0, until they pass 1.1 t and return."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    w = (rng.choice([-1, 1], (6, 2)) * rng.uniform(0.3, 0.5, (6, 2))).astype(np.float32)
    w[0] = [1e-3, -1e-3]
    setup = setup_training(linear(w, np.array([0.4, -0.4])), tmp_path, x, y)
    config = TrainConfig(iterations=150, batch_size=32, lr=0.1, eval_every=150, checkpoint_every=150)
    history: list[np.ndarray] = []
    trainer = None

    def watch(event):
        if event["event"] == "step":
            history.append(trainer.trainer.masks["fc.w"][0].copy())

    trainer = make_trainer(setup, paper_plans(setup, 0.0), config, tmp_path / "work", watch)
    assert np.all(trainer.trainer.masks["fc.w"][0] == 1)  # starts unpruned
    result = trainer.run()
    assert np.all(history[0] == 0)  # pruned by the surgery of iteration 0
    back = next(i for i, m in enumerate(history) if np.all(m == 1))
    assert back > 0
    assert np.all(result.masks["fc.w"][0] == 1)
    assert np.all(np.abs(result.params["fc.w"][0]) > 1.0)
    assert result.chosen.metrics.top1 > 95


# ---------------------------------------------------------------- resume


@pytest.mark.parametrize("mode", ["sgd-paper", "adamw-target"])
def test_resume_equals_an_uninterrupted_run(mode, tmp_path):
    x, y = blobs(256, 6, 3, seed=4)
    setup = setup_training(mlp(6, 16, 3, seed=5), tmp_path, x, y)
    optimizer, surgery = mode.split("-")
    config = TrainConfig(iterations=120, batch_size=16, lr=0.03 if optimizer == "sgd" else 0.005,
                         optimizer=optimizer, schedule="cosine", warmup=5, eval_every=30, checkpoint_every=20,
                         seed=7, threads=1)

    def plans():
        if surgery == "paper":
            return paper_plans(setup, {"fc1": 0.6, "fc2": 0.3}, stop=100)
        return {layer.name: LayerPlan([t.name for t in layer.tensors], 90, Target(0.3)) for layer in setup.layers}

    gamma = 0.05  # surgery probability 1 / (1 + 0.05 i): the per-iteration draws decide, so they must match
    straight = make_trainer(setup, plans(), config, tmp_path / "straight", gamma=gamma).run()

    def interrupt(event):
        if event["event"] == "step" and event["iteration"] == 50:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does: finish the iteration, checkpoint, stop

    handler = signal.getsignal(signal.SIGINT)
    trainer = make_trainer(setup, plans(), config, tmp_path / "split", interrupt, gamma=gamma)
    with pytest.raises(Interrupted, match=f"--resume {tmp_path / 'split'}"):
        trainer.run()
    assert signal.getsignal(signal.SIGINT) is handler  # the trainer's handler was taken down again

    events: list[dict] = []
    resumed_trainer = make_trainer(setup, plans(), config, tmp_path / "split", events.append, gamma=gamma)
    resumed = resumed_trainer.run(resume=True)
    assert events[0]["event"] == "start" and events[0]["iteration"] == 50
    assert resumed.iterations_run == 70
    for k in straight.params:
        np.testing.assert_array_equal(resumed.params[k], straight.params[k])
    for k in straight.masks:
        np.testing.assert_array_equal(resumed.masks[k], straight.masks[k])
    # surgery acted after the interruption too, so the masks are part of what had to match
    compression = {h["iteration"]: h["compression"] for h in straight.history}
    assert compression[30] != compression[60] != compression[90]
    assert straight.chosen.compression > 1.5
    assert [(h["iteration"], h["compression"]) for h in resumed.history] == \
        [(h["iteration"], h["compression"]) for h in straight.history]
    assert resumed.baseline == straight.baseline


# ---------------------------------------------------------------- distillation


def test_label_free_distillation(tmp_path):
    x, y = blobs(500, 8, 4, seed=6)
    model = trained_classifier(x, y, 4, hidden=32)
    onnx.save(model, str(tmp_path / "model.onnx"))
    np.savez(tmp_path / "inputs.npz", x=x)  # inputs only: no labels anywhere
    # without labels the task is guessed from a final Softmax; this model ends in Gemm, so say it
    options = CompressOptions(data=str(tmp_path / "inputs.npz"), default_c=1.5, task="classify",
                              train=TrainConfig(iterations=300, batch_size=32, lr=0.02, eval_every=100,
                                                checkpoint_every=100, max_accuracy_drop=None))
    result = compress_file(tmp_path / "model.onnx", tmp_path / "out.onnx", options)
    assert result.accuracy_before.fidelity == 100.0 and result.accuracy_before.top1 is None
    assert result.compression > 3
    # pruning this hard without fine-tuning leaves about 2/3 agreement; learning from the teacher restores it
    assert result.accuracy_after.fidelity > 85
    fresh, _ = blobs(400, 8, 4, seed=60)
    agree = np.mean(predict(tmp_path / "out.onnx", fresh).argmax(1) == predict(model, fresh).argmax(1))
    assert agree > 0.9


# ---------------------------------------------------------------- divergence


def orthogonal_regression(n: int = 64, d: int = 4, seed: int = 0):
    """Inputs with X^T X / n = I and zero column means: the Hessian of the MSE loss is 2 I (bias included), so
    SGD with momentum 0.9 is stable exactly for lr < 1.9."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(np.column_stack([np.ones(n), rng.standard_normal((n, d))]))
    x = (np.sqrt(n) * q[:, 1:]).astype(np.float32)
    target = (x @ rng.standard_normal((d, 1)) + 0.5).astype(np.float32)
    return x, target


def test_a_diverging_loss_rolls_back_and_halves_the_learning_rate(tmp_path):
    x, target = orthogonal_regression()
    setup = setup_training(linear(np.full((4, 1), 0.1), np.array([0.1])), tmp_path, x, target, task="regress")
    # lr 12, 6, 3 diverge (lr * 2 > 3.8); lr 1.5 converges; only the starting checkpoint exists
    config = TrainConfig(iterations=200, batch_size=64, lr=12.0, schedule="constant", weight_decay=0.0,
                         eval_every=200, checkpoint_every=1000)
    events: list[dict] = []
    result = make_trainer(setup, paper_plans(setup, 0.0, stop=0), config, tmp_path / "work", events.append).run()
    rollbacks = [e for e in events if e["event"] == "rollback"]
    assert [e["lr_scale"] for e in rollbacks] == [0.5, 0.25, 0.125]
    assert all(e["iteration"] == 0 for e in rollbacks)
    assert np.isfinite(losses_of(events)).all()
    assert result.chosen.metrics.mse < 1e-4  # then it converged to the exact fit
    np.testing.assert_allclose(predict(linear(result.params["fc.w"], result.params["fc.b"]), x), target,
                               atol=1e-2)


def test_a_loss_that_stays_non_finite_fails_after_three_rollbacks(tmp_path):
    x, target = orthogonal_regression()
    x[5, 2] = np.inf  # every full batch holds this sample
    setup = setup_training(linear(np.full((4, 1), 0.1), np.array([0.1])), tmp_path, x, target, task="regress",
                           val=orthogonal_regression())
    config = TrainConfig(iterations=50, batch_size=64, lr=0.1, eval_every=50, checkpoint_every=10)
    events: list[dict] = []
    trainer = make_trainer(setup, paper_plans(setup, 0.0), config, tmp_path / "work", events.append)
    with pytest.raises(TrainingError, match="3 rollbacks"):
        trainer.run()
    assert [e["lr_scale"] for e in events if e["event"] == "rollback"] == [0.5, 0.25, 0.125]
    assert losses_of(events) == []  # no step was ever taken with a non-finite loss


# ---------------------------------------------------------------- the accuracy bound


def bound_setup(tmp_path):
    x, y = blobs(400, 6, 3, seed=9)
    model = trained_classifier(x, y, 3, hidden=16)
    onnx.save(model, str(tmp_path / "model.onnx"))
    np.savez(tmp_path / "train.npz", x=x, labels=y)
    return model


def test_a_missed_accuracy_bound_writes_the_below_bound_model(tmp_path):
    bound_setup(tmp_path)
    original = (tmp_path / "model.onnx").read_bytes()
    options = CompressOptions(data=str(tmp_path / "train.npz"), target=1000.0,
                              train=TrainConfig(iterations=40, batch_size=32, eval_every=40, checkpoint_every=40,
                                                max_accuracy_drop=1.0))
    result = compress_file(tmp_path / "model.onnx", tmp_path / "out.onnx", options)
    assert not result.met_bound
    assert result.output == str(tmp_path / "out.below-bound.onnx")
    assert (tmp_path / "out.below-bound.onnx").exists() and not (tmp_path / "out.onnx").exists()
    assert result.accuracy_after.top1 < result.accuracy_before.top1 - 1.0
    assert (tmp_path / "out.onnx.dns-work" / "checkpoint.npz").exists()  # kept: the work is not lost
    assert (tmp_path / "model.onnx").read_bytes() == original


def test_the_best_state_within_the_bound_is_kept(tmp_path, caplog):
    bound_setup(tmp_path)
    options = CompressOptions(data=str(tmp_path / "train.npz"), target=1000.0, surgery_stop=60,
                              train=TrainConfig(iterations=80, batch_size=32, lr=0.01, eval_every=5,
                                                checkpoint_every=80, max_accuracy_drop=2.0))
    with caplog.at_level("WARNING"):
        result = compress_file(tmp_path / "model.onnx", tmp_path / "out.onnx", options)
    assert f"keeping iteration {result.chosen_iteration} (" in caplog.text  # and it says so
    assert result.met_bound and result.output == str(tmp_path / "out.onnx")
    assert 0 < result.chosen_iteration < 60
    assert result.accuracy_after.top1 >= result.accuracy_before.top1 - 2.0
    final = result.history[-1]
    assert final["metrics"].top1 < result.accuracy_before.top1 - 2.0  # the last state was below the bound
    chosen = next(h for h in result.history if h["iteration"] == result.chosen_iteration)
    assert result.compression == pytest.approx(chosen["compression"], rel=1e-6)
    assert not (tmp_path / "out.onnx.dns-work").exists()


def test_training_runs_outside_the_main_thread(tmp_path):
    """A library caller (a service, a notebook worker) may train in a thread, where no SIGINT handler can go."""
    x, y = blobs(64, 6, 3, seed=13)
    setup = setup_training(mlp(6, 8, 3, seed=1), tmp_path, x, y)
    config = TrainConfig(iterations=20, batch_size=16, eval_every=20, checkpoint_every=10)
    outcome: dict = {}

    def work():
        try:
            outcome["result"] = make_trainer(setup, paper_plans(setup), config, tmp_path / "work").run()
        except Exception as exc:  # noqa: BLE001 - reported below
            outcome["error"] = exc

    handler = signal.getsignal(signal.SIGINT)
    thread = threading.Thread(target=work)
    thread.start()
    thread.join(timeout=60)
    assert "error" not in outcome, outcome.get("error")
    assert outcome["result"].iterations_run == 20
    assert signal.getsignal(signal.SIGINT) is handler
