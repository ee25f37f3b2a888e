"""Straight-through gradients: a pruned weight keeps learning while the forward pass sees it as zero.

One real training step through build_artifacts and the Trainer (no mocks), checked against numpy; the control
is the same masked model built without the rewiring, where the pruned entries cannot move.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from engine_fixtures import linear, np_softmax_rows
from graphs import set_initializer

import onnx_dns.artifacts
from onnx_dns.artifacts import build_artifacts
from onnx_dns.dataset import Dataset
from onnx_dns.targets import Targets
from onnx_dns.insert_masks import insert_masks, mask_name
from onnx_dns.losses import LossSpec, attach_loss
from onnx_dns.ort_training import artifacts, captured_stderr
from onnx_dns.straight_through import rewire_straight_through
from onnx_dns.criteria.paper import Paper
from onnx_dns.surgery import LayerPlan, Surgeon
from onnx_dns.options import TrainConfig
from onnx_dns.trainer import Trainer
from onnx_dns.training import TrainingLoop

RNG = np.random.default_rng(0)
W0 = RNG.standard_normal((5, 3)).astype(np.float32)
B0 = RNG.standard_normal(3).astype(np.float32)
X = RNG.standard_normal((8, 5)).astype(np.float32)
LABELS = RNG.integers(0, 3, 8)
MASK_W = (RNG.random((5, 3)) < 0.5).astype(np.float32)
MASK_W[0, 0], MASK_W[0, 1] = 0.0, 1.0
MASK_B = np.array([1, 0, 1], dtype=np.float32)
LR = 0.1
SPEC = LossSpec("classify", "y", 1.0, 0.0, num_classes=3)


def masked_model() -> onnx.ModelProto:
    model = insert_masks(linear(W0, B0), ["fc.w", "fc.b"]).model
    set_initializer(model, mask_name("fc.w"), MASK_W)
    set_initializer(model, mask_name("fc.b"), MASK_B)
    return model


def one_step(art, tmp_path) -> Trainer:
    """One iteration of the real training loop: full batch, constant lr, no decay, no surgery."""
    data = Dataset({"x": X}, LABELS, "train")
    config = TrainConfig(iterations=1, batch_size=len(X), lr=LR, schedule="constant", weight_decay=0.0,
                         eval_every=1, checkpoint_every=1)
    surgeon = Surgeon({"fc": LayerPlan(["fc.w", "fc.b"], stop=0, criterion=Paper(1.0))})
    trainer = Trainer(art, surgeon, config, Targets(SPEC, None, (3,)))
    TrainingLoop(trainer, data, data, tmp_path / "work").run()
    return trainer


def masked_gradients():
    """dL/d(W*T) and dL/d(b*t) of the mean cross-entropy, by hand."""
    z = X.astype(np.float64) @ (W0 * MASK_W) + B0 * MASK_B
    dz = (np_softmax_rows(z) - np.eye(3)[LABELS]) / len(X)
    return X.T.astype(np.float64) @ dz, dz.sum(axis=0)


def forward(trainer: Trainer) -> np.ndarray:
    """The eval graph's output with the trainer's current parameters and masks."""
    module = trainer.module
    module.eval()
    return module(X, np.zeros((len(X), 3), dtype=np.float32))[1]


def test_pruned_entries_learn_but_the_forward_pass_sees_zero(tmp_path):
    art = build_artifacts(masked_model(), SPEC, tmp_path / "art")
    trainer = one_step(art, tmp_path)
    w, b = trainer.params["fc.w"], trainer.params["fc.b"]
    gw, gb = masked_gradients()
    # every entry, pruned or not, took the straight-through step w <- w - lr * dL/d(W*T)
    np.testing.assert_allclose(w, W0 - LR * gw, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(b, B0 - LR * gb, rtol=1e-4, atol=1e-6)
    pruned = MASK_W == 0
    assert np.all(w[pruned] != W0[pruned])
    assert b[1] != B0[1]
    # the masks did not change, and the forward pass multiplies them in
    np.testing.assert_array_equal(trainer.masks["fc.w"], MASK_W)
    y = forward(trainer)
    np.testing.assert_allclose(y, X @ (w * MASK_W) + b * MASK_B, rtol=1e-5, atol=1e-5)
    assert not np.allclose(y, X @ w + b, atol=1e-3)


def test_without_the_rewiring_pruned_entries_stay_put(tmp_path, monkeypatch):
    monkeypatch.setattr(onnx_dns.artifacts, "rewire_straight_through",
                        lambda model, masks: rewire_straight_through(model, {}))
    art = build_artifacts(masked_model(), SPEC, tmp_path / "art")
    trainer = one_step(art, tmp_path)
    w, b = trainer.params["fc.w"], trainer.params["fc.b"]
    pruned = MASK_W == 0
    np.testing.assert_array_equal(w[pruned], W0[pruned])
    assert b[1] == B0[1]
    gw, _ = masked_gradients()
    np.testing.assert_allclose(w[~pruned], (W0 - LR * gw)[~pruned], rtol=1e-4, atol=1e-6)


def test_the_rewiring_replaces_exactly_the_gradient_product(tmp_path):
    model = masked_model()
    with captured_stderr():
        artifacts.generate_artifacts(attach_loss(model, SPEC), requires_grad=["fc.w", "fc.b"],
                                     frozen_params=[mask_name("fc.w"), mask_name("fc.b")], loss=None,
                                     artifact_directory=str(tmp_path))
    training = onnx.load(str(tmp_path / "training_model.onnx"))
    masks = {"fc.w": mask_name("fc.w"), "fc.b": mask_name("fc.b")}

    def readers(graph, name):
        return [n for n in graph.node if name in n.input]

    before = {m: [n.op_type for n in readers(training.graph, m)] for m in masks.values()}
    rewired = rewire_straight_through(training, masks).model
    for weight, mask in masks.items():
        after = readers(rewired.graph, mask)
        # only the forward Mul(W, T) still reads the mask; the gradient Mul became an Identity
        assert [n.op_type for n in after] == ["Mul"] and weight in after[0].input
        assert sorted(before[mask]) == ["Mul", "Mul"]
    assert training.SerializeToString() != rewired.SerializeToString()
    with pytest.raises(ValueError, match="fc.w"):
        rewire_straight_through(rewired, masks)  # nothing left to rewire: refused, naming the weight
