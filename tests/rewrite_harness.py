"""What the rewrite tests share: a case (op nodes behind a trainable 1x1 Conv, with a numpy reference), its
model, inputs and loss, the training step of onnxruntime-training and central finite differences."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime
from graphs import make_model, value
from onnx import helper, numpy_helper

from onnx_dns.ort_training import api, artifacts, captured_stderr

N, C = 2, 6
H = helper.make_node


@dataclass(frozen=True)
class Case:
    """One op under test: `nodes` read `c` and write `y`; `ref(c, params)` is its numpy reference."""

    id: str
    nodes: tuple
    ref: object
    opset: int = 17
    spatial: tuple = (4, 5)
    params: dict = field(default_factory=dict)  # initializers the op reads, name -> float array
    trainable: tuple = ()  # of those, the ones whose gradient is checked
    ort_runs_original: bool = True  # onnxruntime's LRN kernel only takes 4-D inputs and odd sizes
    static_only: bool = False  # the rewrite needs known spatial sizes

    @property
    def op(self) -> str:
        return next(n.op_type for n in self.nodes if n.op_type not in ("Constant", "Concat"))


def weight_array(spatial) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((C, C) + (1,) * len(spatial))


def op_model(case: Case, symbolic_spatial: bool = False) -> onnx.ModelProto:
    """x -> Conv 1x1 (W, no bias) -> c -> case.nodes -> y; the batch axis is symbolic, the others static unless
    `symbolic_spatial` (some onnxruntime gradients silently give zeros when spatial sizes are symbolic)."""
    inits = [numpy_helper.from_array(weight_array(case.spatial).astype(np.float32), "W")]
    inits += [numpy_helper.from_array(np.asarray(a, np.float32), n) for n, a in case.params.items()]
    nodes = [H("Conv", ["x", "W"], ["c"], name="conv"), *case.nodes]
    y_shape = ["N", *loss_weights(case).shape[1:]]
    spatial = list(case.spatial)
    if symbolic_spatial:
        spatial = [f"d{i}" for i in range(len(spatial))]
        y_shape = ["N"] + [f"y{i}" for i in range(1, len(y_shape))]
    return make_model(nodes, [value("x", ["N", C, *spatial])], [value("y", y_shape)], inits,
                      name="op", opset=case.opset)


def inputs(case: Case, seed: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((N, C, *case.spatial)).astype(np.float32)


def reference(case: Case, x: np.ndarray, w: np.ndarray, params: dict) -> np.ndarray:
    c = np.einsum("oi,ni...->no...", w.reshape(C, C), x)
    if case.op in ("Sum", "Mean"):
        return case.ref(c, params, x)
    return case.ref(c, params)


def loss_weights(case: Case) -> np.ndarray:
    shape = reference(case, inputs(case).astype(np.float64), weight_array(case.spatial),
                      {k: np.asarray(v, np.float64) for k, v in case.params.items()}).shape
    return np.random.default_rng(3).standard_normal(shape)


def with_loss(model: onnx.ModelProto, r: np.ndarray) -> onnx.ModelProto:
    """The model with `loss = mean(y * R)` as its only output."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    out.graph.initializer.append(numpy_helper.from_array(r.astype(np.float32), "loss.r"))
    out.graph.node.extend([H("Mul", ["y", "loss.r"], ["loss.yr"], name="loss.mul"),
                           H("ReduceMean", ["loss.yr"], ["loss"], name="loss.mean", keepdims=0)])
    del out.graph.output[:]
    out.graph.output.append(value("loss", []))
    return out


def generate(model: onnx.ModelProto, requires_grad, directory) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    with captured_stderr():
        artifacts.generate_artifacts(model, requires_grad=list(requires_grad), frozen_params=[], loss=None,
                                     artifact_directory=str(directory))


def train_step_gradients(directory, x: np.ndarray, names) -> dict[str, np.ndarray]:
    """Run one forward/backward pass of the training model; return the accumulated gradients."""
    with captured_stderr():
        state = api.CheckpointState.load_checkpoint(str(directory / "checkpoint"))
        module = api.Module(str(directory / "training_model.onnx"), state, str(directory / "eval_model.onnx"))
        module.train()
        module(x)
    return {n: np.array(state.parameters[n].grad, dtype=np.float64) for n in names}


def finite_difference(case: Case, x: np.ndarray, r: np.ndarray, name: str, eps: float = 1e-6) -> np.ndarray:
    x, r = x.astype(np.float64), r.astype(np.float32).astype(np.float64)  # what the ONNX model holds
    tensors = {"W": weight_array(case.spatial).astype(np.float32).astype(np.float64)}
    tensors |= {k: np.asarray(v, np.float32).astype(np.float64) for k, v in case.params.items()}

    def loss() -> float:
        params = {k: v for k, v in tensors.items() if k != "W"}
        return float(np.mean(reference(case, x, tensors["W"], params) * r))

    return central_difference(loss, tensors[name], eps)


def central_difference(loss, target: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """d loss / d target by central differences, one entry at a time (`target` is changed and restored)."""
    grad = np.zeros_like(target)
    for index in np.ndindex(target.shape):
        saved = target[index]
        target[index] = saved + eps
        up = loss()
        target[index] = saved - eps
        down = loss()
        target[index] = saved
        grad[index] = (up - down) / (2 * eps)
    return grad


def run_on_x(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """The first output of `model` fed `x` as its input "x", in onnxruntime."""
    return onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]


def op_types(model: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in model.graph.node}


def chain_model(op_nodes, params: dict, spatial, opset: int, batch="N") -> onnx.ModelProto:
    """x -> Conv 1x1 (W, C -> C) -> c -> op_nodes -> y, with `params` (name -> array) as initializers as given."""
    inits = [numpy_helper.from_array(weight_array(spatial).astype(np.float32), "W")]
    inits += [numpy_helper.from_array(np.asarray(a), n) for n, a in params.items()]
    nodes = [H("Conv", ["x", "W"], ["c"], name="conv"), *op_nodes]
    y_shape = [f"y{i}" for i in range(len(spatial) + 2)]
    return make_model(nodes, [value("x", [batch, C, *spatial])], [value("y", y_shape)], inits, opset=opset)


def ort_finite_difference(model: onnx.ModelProto, x: np.ndarray, r: np.ndarray, names, eps: float = 0.5) -> dict:
    """dL/dT of each initializer T named, L = mean(y * R), by central differences of onnxruntime's inference of
    `model` (the original op): exact up to float32 rounding where y is affine in T, as through Resize and
    ConvTranspose behind a Conv."""
    loss_model = with_loss(model, r)
    values = {t.name: numpy_helper.to_array(t).astype(np.float32) for t in loss_model.graph.initializer
              if t.name in names}
    kept = [t for t in loss_model.graph.initializer if t.name not in names]
    del loss_model.graph.initializer[:]
    loss_model.graph.initializer.extend(kept)
    loss_model.graph.input.extend([value(n, list(v.shape)) for n, v in values.items()])
    session = onnxruntime.InferenceSession(loss_model.SerializeToString(), providers=["CPUExecutionProvider"])

    def loss(feeds) -> float:
        return float(session.run(None, {"x": x, **feeds})[0])

    grads = {}
    for name, base in values.items():
        grad = np.zeros(base.shape)
        for index in np.ndindex(base.shape):
            up, down = base.copy(), base.copy()
            up[index] += eps
            down[index] -= eps
            grad[index] = (loss({**values, name: up}) - loss({**values, name: down})) / (2 * eps)
        grads[name] = grad
    return grads


def check_gradients(model: onnx.ModelProto, rewritten: onnx.ModelProto, x: np.ndarray, names, directory) -> None:
    """One training step of `rewritten` gives the gradients onnxruntime's inference of `model` implies."""
    y = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x})[0]
    r = np.random.default_rng(3).standard_normal(y.shape).astype(np.float32)
    generate(with_loss(rewritten, r), names, directory)
    got = train_step_gradients(directory, x, names)
    expected = ort_finite_difference(model, x, r, names)
    for name in names:
        assert np.abs(expected[name]).max() > 1e-4, name
        np.testing.assert_allclose(got[name], expected[name], rtol=2e-3, atol=2e-3 * np.abs(expected[name]).max(),
                                   err_msg=name)
