"""Shared helpers of the engine tests: tiny trainable models, synthetic data, and a Trainer set up the way
`compress` sets it up (insert masks -> build artifacts -> Surgeon -> Trainer), but with every piece in reach.

Everything here is written independently of the code under test where it computes an expected value
(numpy cross-entropy, softmax, counting nonzeros of a written file).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from graphs import make_model, tensor, value
from onnx import helper, numpy_helper

# ---------------------------------------------------------------- data


def blobs(n: int, dim: int, classes: int, seed: int = 0, spread: float = 0.6,
          centres_seed: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """`n` float32 points in `classes` Gaussian blobs (centres at distance 2 from 0, fixed by `centres_seed`;
    `seed` draws the points) and their int64 labels."""
    centres = np.random.default_rng(centres_seed).standard_normal((classes, dim)).astype(np.float32)
    rng = np.random.default_rng(seed)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True) / 2.0
    labels = rng.integers(0, classes, n).astype(np.int64)
    x = centres[labels] + spread * rng.standard_normal((n, dim)).astype(np.float32)
    return x.astype(np.float32), labels


def images(n: int, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, 1, 8, 8) images: class k lights up its own quadrant-ish pattern, plus noise; int64 labels."""
    rng = np.random.default_rng(seed)
    patterns = np.zeros((classes, 8, 8), dtype=np.float32)
    for k in range(classes):
        patterns[k, 2 * k:2 * k + 3, :] = 1.0 if k % 2 == 0 else 0.0
        patterns[k, :, 2 * k:2 * k + 3] += 1.0
    labels = rng.integers(0, classes, n).astype(np.int64)
    x = patterns[labels] + 0.3 * rng.standard_normal((n, 8, 8)).astype(np.float32)
    return x[:, None].astype(np.float32), labels


def numpy_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> float:
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(labels)), labels].mean())


# ---------------------------------------------------------------- models


def mlp(dim: int, hidden: int, classes: int, seed: int = 0, scale: float = 0.5) -> onnx.ModelProto:
    """x[N, dim] -> Gemm fc1 -> Relu -> Gemm fc2 -> y[N, classes]; random weights times `scale`."""
    rng = np.random.default_rng(seed)
    inits = [
        tensor("fc1.w", (scale * rng.standard_normal((dim, hidden))).astype(np.float32)),
        tensor("fc1.b", (0.1 * rng.standard_normal(hidden)).astype(np.float32)),
        tensor("fc2.w", (scale * rng.standard_normal((hidden, classes))).astype(np.float32)),
        tensor("fc2.b", (0.1 * rng.standard_normal(classes)).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "fc1.w", "fc1.b"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Gemm", ["r", "fc2.w", "fc2.b"], ["y"], name="fc2"),
    ]
    return make_model(nodes, [value("x", ["N", dim])], [value("y", ["N", classes])], inits, name="tiny_mlp")


def linear(w: np.ndarray, b: np.ndarray, name: str = "fc", softmax: bool = False) -> onnx.ModelProto:
    """x[N, d] -> Gemm(w, b) -> y[N, k] (optionally followed by a Softmax whose output is `y`)."""
    d, k = w.shape
    inits = [tensor(f"{name}.w", w.astype(np.float32)), tensor(f"{name}.b", b.astype(np.float32))]
    if softmax:
        nodes = [helper.make_node("Gemm", ["x", f"{name}.w", f"{name}.b"], ["logits"], name=name),
                 helper.make_node("Softmax", ["logits"], ["y"], name="softmax", axis=-1)]
    else:
        nodes = [helper.make_node("Gemm", ["x", f"{name}.w", f"{name}.b"], ["y"], name=name)]
    return make_model(nodes, [value("x", ["N", d])], [value("y", ["N", k])], inits, name="linear")


def cnn(classes: int = 3, seed: int = 0) -> onnx.ModelProto:
    """x[N,1,8,8] -> Conv(4, 3x3, pad 1) -> Relu -> MaxPool 2 -> Flatten -> Gemm -> y[N, classes]."""
    rng = np.random.default_rng(seed)
    inits = [
        tensor("conv1.w", (0.4 * rng.standard_normal((4, 1, 3, 3))).astype(np.float32)),
        tensor("conv1.b", (0.1 * rng.standard_normal(4)).astype(np.float32)),
        tensor("fc.w", (0.2 * rng.standard_normal((64, classes))).astype(np.float32)),
        tensor("fc.b", (0.1 * rng.standard_normal(classes)).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "conv1.w", "conv1.b"], ["c"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["y"], name="fc"),
    ]
    return make_model(nodes, [value("x", ["N", 1, 8, 8])], [value("y", ["N", classes])], inits, name="tiny_cnn")


def trained_classifier(x: np.ndarray, labels: np.ndarray, classes: int, hidden: int = 16,
                       seed: int = 0, steps: int = 300) -> onnx.ModelProto:
    """A 'pretrained' MLP: fitted here with plain numpy gradient descent (no onnx_dns code involved)."""
    rng = np.random.default_rng(seed)
    dim = x.shape[1]
    w1 = 0.5 * rng.standard_normal((dim, hidden))
    b1 = np.zeros(hidden)
    w2 = 0.5 * rng.standard_normal((hidden, classes))
    b2 = np.zeros(classes)
    onehot = np.eye(classes)[labels]
    xs = x.astype(np.float64)
    for _ in range(steps):
        h = xs @ w1 + b1
        r = np.maximum(h, 0)
        z = r @ w2 + b2
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        dz = (p - onehot) / len(xs)
        dw2, db2 = r.T @ dz, dz.sum(0)
        dr = dz @ w2.T
        dh = dr * (h > 0)
        dw1, db1 = xs.T @ dh, dh.sum(0)
        for p_, g in ((w1, dw1), (b1, db1), (w2, dw2), (b2, db2)):
            p_ -= 0.5 * g
    inits = [tensor("fc1.w", w1.astype(np.float32)), tensor("fc1.b", b1.astype(np.float32)),
             tensor("fc2.w", w2.astype(np.float32)), tensor("fc2.b", b2.astype(np.float32))]
    nodes = [
        helper.make_node("Gemm", ["x", "fc1.w", "fc1.b"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Gemm", ["r", "fc2.w", "fc2.b"], ["y"], name="fc2"),
    ]
    return make_model(nodes, [value("x", ["N", dim])], [value("y", ["N", classes])], inits, name="pretrained")


# ---------------------------------------------------------------- reading models back


def dense_initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """All initializers of `model`, sparse ones densified here (not with onnx_dns code)."""
    from graphs import dense_from_sparse

    arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for sparse in model.graph.sparse_initializer:
        arrays[sparse.values.name] = dense_from_sparse(sparse)
    return arrays


def predict(model: onnx.ModelProto | str | Path, x: np.ndarray, output: str | None = None) -> np.ndarray:
    import onnxruntime

    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(str(model))
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return session.run([output] if output else None, {name: x})[0]


# ---------------------------------------------------------------- a trainer set up by hand


@dataclass
class Setup:
    """What `setup_training` built: the artifacts and the pieces a Trainer needs, to build trainers from."""

    art: object
    layers: list
    spec: object
    targets: object
    train: object
    val: object


def setup_training(model: onnx.ModelProto, directory: Path, x: np.ndarray, labels: np.ndarray | None,
                   *, val: tuple[np.ndarray, np.ndarray | None] | None = None, task: str = "classify",
                   distill: bool = False, layers: list[str] | None = None) -> Setup:
    """Insert masks on the model's prunable layers and build training artifacts (validation data defaults to
    a copy of the training data)."""
    from onnx_dns.artifacts import build_artifacts
    from onnx_dns.dataset import Dataset
    from onnx_dns.evaluate import session_runner
    from onnx_dns.targets import Targets, with_teacher
    from onnx_dns.insert_masks import insert_masks
    from onnx_dns.losses import LossSpec
    from onnx_dns.prunable import find_layers

    found = [layer for layer in find_layers(model) if layers is None or layer.name in layers]
    masked = insert_masks(model, [t.name for layer in found for t in layer.tensors]).model
    output = model.graph.output[0].name
    classes = model.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    if task == "classify":
        spec = LossSpec("classify", output, 0.0 if distill else 1.0, 1.0 if distill else 0.0, 2.0, classes)
        sample_shape = (classes,)
    else:
        spec = LossSpec("regress", output, 1.0, 0.0)
        sample_shape = (classes,)
    art = build_artifacts(masked, spec, directory / "artifacts")
    teacher = session_runner(model, output) if distill else None

    train = Dataset({"x": x}, labels, "train")
    vx, vy = val if val is not None else (x.copy(), None if labels is None else labels.copy())
    val = Dataset({"x": vx}, vy, "val")
    if distill:
        train = with_teacher(train, teacher, 256)
        val = with_teacher(val, teacher, 256)
    targets = Targets(spec, teacher, sample_shape)
    return Setup(art, found, spec, targets, train, val)


def paper_plans(setup: Setup, c: float | dict[str, float] = 1.0, stop: int = 10**9) -> dict:
    from onnx_dns.criteria.paper import Paper
    from onnx_dns.surgery import LayerPlan

    return {layer.name: LayerPlan([t.name for t in layer.tensors], stop,
                                  Paper(c[layer.name] if isinstance(c, dict) else c)) for layer in setup.layers}


def make_trainer(setup: Setup, plans: dict, config, work_dir: Path, progress=None, gamma: float | None = None):
    """The training loop (its `.trainer` holds the parameter and mask views)."""
    from onnx_dns.surgery import GAMMA, Surgeon
    from onnx_dns.trainer import Trainer
    from onnx_dns.training import TrainingLoop

    surgeon = Surgeon(plans, gamma=GAMMA if gamma is None else gamma)
    return TrainingLoop(Trainer(setup.art, surgeon, config, setup.targets), setup.train, setup.val, work_dir, progress)


def np_softmax_rows(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
