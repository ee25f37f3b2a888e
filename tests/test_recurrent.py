"""LSTM, GRU and RNN nodes: prunable layers with W, R and B, unrolled for training into ops with CPU gradients.

Checked: the unrolled graph computes what onnxruntime's own LSTM/GRU/RNN kernels compute (every direction, both
layouts, with and without initial states, peepholes, linear_before_reset 0 and 1); a numpy reference written
here from the ONNX spec agrees with those kernels, and in float64 gives central finite differences that the
gradients of W, R and B from a real training step of the unrolled graph must equal; what cannot be unrolled is
left alone and named; find_layers finds W, R and B; and a CNN + bidirectional LSTM compresses end to end.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper
from rewrite_harness import central_difference
from test_exporter_fixtures import eval_graph_outputs

from onnx_dns.checkpoint import CHECKPOINT
from onnx_dns.insert_masks import insert_masks, mask_name
from onnx_dns.normalize import densify_sparse
from onnx_dns.ort_training import api, artifacts, captured_stderr
from onnx_dns.prunable import find_layers
from onnx_dns.straight_through import rewire_straight_through
from onnx_dns.rewrites import rewrite_for_training, untrainable_message, untrainable_nodes
from onnx_dns.options import CompressOptions, TrainConfig
from onnx_dns.pipeline import compress_file

T, N, I, HIDDEN = 4, 2, 3, 5
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


@dataclass(frozen=True)
class Case:
    op: str
    direction: str = "forward"
    layout: int = 0
    initial: bool = False
    bias: bool = True
    peepholes: bool = False
    linear_before_reset: int = 0
    activations: tuple = ()

    @property
    def dirs(self) -> int:
        return 2 if self.direction == "bidirectional" else 1

    @property
    def id(self) -> str:
        return "-".join(str(v) for v in (self.op, self.direction, f"layout{self.layout}", "init" * self.initial,
                                          "nobias" * (not self.bias), "peep" * self.peepholes,
                                          f"lbr{self.linear_before_reset}", *self.activations) if v)


def params(case: Case, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    g, d = GATES[case.op], case.dirs
    out = {"W": rng.normal(size=(d, g * HIDDEN, I)) * 0.6, "R": rng.normal(size=(d, g * HIDDEN, HIDDEN)) * 0.6}
    if case.bias:
        out["B"] = rng.normal(size=(d, 2 * g * HIDDEN)) * 0.5
    if case.peepholes:
        out["P"] = rng.normal(size=(d, 3 * HIDDEN)) * 0.5
    return {k: v.astype(np.float32) for k, v in out.items()}


def state_shape(case: Case) -> tuple:
    return (N, case.dirs, HIDDEN) if case.layout else (case.dirs, N, HIDDEN)


def model_of(case: Case, opset: int = 17, steps=T) -> onnx.ModelProto:
    """X (and initial states) -> one recurrent node -> all its outputs."""
    p = params(case)
    names = ["x", "W", "R", "B" if case.bias else ""]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, (N, steps, I) if case.layout else (steps, N, I))]
    if case.initial:
        names += ["", "h0"] + (["c0"] if case.op == "LSTM" else [])
        inputs += [helper.make_tensor_value_info(s, TensorProto.FLOAT, state_shape(case)) for s in names[5:]]
    if case.peepholes:
        names += [""] * (7 - len(names)) + ["P"]
    outputs = ["y", "y_h"] + (["y_c"] if case.op == "LSTM" else [])
    attrs = {"hidden_size": HIDDEN, "direction": case.direction}
    attrs |= {"layout": 1} if case.layout else {}
    attrs |= {"linear_before_reset": 1} if case.linear_before_reset else {}
    attrs |= {"activations": list(case.activations)} if case.activations else {}
    while names[-1] == "":
        names.pop()
    node = helper.make_node(case.op, names, outputs, name="rec", **attrs)
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info(o, TensorProto.FLOAT, None)
                                                    for o in outputs],
                              [numpy_helper.from_array(v, k) for k, v in p.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def feeds(case: Case, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {"x": rng.normal(size=(N, T, I) if case.layout else (T, N, I)).astype(np.float32)}
    if case.initial:
        out["h0"] = rng.normal(size=state_shape(case)).astype(np.float32)
        if case.op == "LSTM":
            out["c0"] = rng.normal(size=state_shape(case)).astype(np.float32)
    return out


def run(model: onnx.ModelProto, inputs: dict) -> list[np.ndarray]:
    return onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None,
                                                                                                             inputs)


def run_kernel(case: Case, inputs: dict) -> list[np.ndarray]:
    """onnxruntime's own kernel of the case. It refuses layout 1 ("Batchwise recurrent operations (layout == 1) are
    not supported"), so a batch-first case runs as its sequence-first twin on transposed inputs and outputs."""
    if not case.layout:
        return run(model_of(case), inputs)
    twin = Case(**{**case.__dict__, "layout": 0})
    outputs = run(model_of(twin), {k: v.transpose(1, 0, 2) for k, v in inputs.items()})
    return [outputs[0].transpose(2, 0, 1, 3)] + [o.transpose(1, 0, 2) for o in outputs[1:]]


# ---------------------------------------------------------------- numpy reference of the ONNX spec


ACT = {"Sigmoid": lambda v: 1 / (1 + np.exp(-v)), "Tanh": np.tanh, "Relu": lambda v: np.maximum(v, 0)}


def reference(case: Case, p: dict, inputs: dict) -> list[np.ndarray]:
    x = inputs["x"].transpose(1, 0, 2) if case.layout else inputs["x"]
    h0, c0 = (inputs.get(k) for k in ("h0", "c0"))
    if case.layout:
        h0, c0 = (None if s is None else s.transpose(1, 0, 2) for s in (h0, c0))
    default = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}[case.op]
    names = list(case.activations) or default * case.dirs
    k = len(default)
    ys, hs, cs = [], [], []
    for d in range(case.dirs):
        acts = [ACT[a] for a in names[d * k:(d + 1) * k]]
        h = np.zeros((N, HIDDEN)) if h0 is None else h0[d]
        c = np.zeros((N, HIDDEN)) if c0 is None else c0[d]
        y = [None] * T
        reverse = case.direction == "reverse" or d == 1
        for t in (reversed(range(T)) if reverse else range(T)):
            h, c = step(case, p, d, acts, x[t], h, c)
            y[t] = h
        ys.append(np.stack(y))
        hs.append(h)
        cs.append(c)
    y, y_h, y_c = np.stack(ys, 1), np.stack(hs), np.stack(cs)
    if case.layout:
        y, y_h, y_c = y.transpose(2, 0, 1, 3), y_h.transpose(1, 0, 2), y_c.transpose(1, 0, 2)
    return [y, y_h, y_c] if case.op == "LSTM" else [y, y_h]


def step(case: Case, p: dict, d: int, acts, x, h, c):
    g = GATES[case.op]
    w, r = p["W"][d], p["R"][d]
    b = p["B"][d] if "B" in p else np.zeros(2 * g * HIDDEN)
    wb, rb = b[:g * HIDDEN], b[g * HIDDEN:]

    def block(m, k):
        return m[k * HIDDEN:(k + 1) * HIDDEN]

    def gate(k):
        return x @ block(w, k).T + h @ block(r, k).T + block(wb, k) + block(rb, k)

    if case.op == "RNN":
        return acts[0](gate(0)), c
    if case.op == "GRU":
        f, gg = acts
        z, rr = f(gate(0)), f(gate(1))
        if case.linear_before_reset:
            cand = gg(x @ block(w, 2).T + block(wb, 2) + rr * (h @ block(r, 2).T + block(rb, 2)))
        else:
            cand = gg(x @ block(w, 2).T + block(wb, 2) + (rr * h) @ block(r, 2).T + block(rb, 2))
        return (1 - z) * cand + z * h, c
    f, gg, hh = acts
    pi, po, pf = (block(p["P"][d], k) for k in range(3)) if "P" in p else (0, 0, 0)
    i, fo = f(gate(0) + pi * c), f(gate(2) + pf * c)
    c = fo * c + i * gg(gate(3))
    o = f(gate(1) + po * c)
    return o * hh(c), c


# ---------------------------------------------------------------- forward equivalence

CASES = [
    *(Case(op, direction, layout, initial)
      for op in ("LSTM", "GRU", "RNN") for direction in ("forward", "reverse", "bidirectional")
      for layout in (0, 1) for initial in (False, True)),
    Case("LSTM", "bidirectional", 0, True, peepholes=True),
    Case("LSTM", "forward", 1, False, bias=False, peepholes=True),
    Case("GRU", "forward", 0, True, linear_before_reset=1),
    Case("GRU", "bidirectional", 1, False, linear_before_reset=1),
    Case("GRU", "reverse", 0, False, bias=False, linear_before_reset=1),
    Case("RNN", "bidirectional", 0, True, activations=("Relu", "Sigmoid")),
    Case("GRU", "forward", 0, True, activations=("Tanh", "Relu")),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_unrolled_graph_computes_what_onnxruntime_computes(case):
    model = model_of(case)
    rewritten = rewrite_for_training(model)
    assert rewritten.modified
    assert case.op not in {n.op_type for n in rewritten.model.graph.node}
    inputs = feeds(case)
    expected = run_kernel(case, inputs)
    got = run(rewritten.model, inputs)
    ours = reference(case, {k: v.astype(np.float64) for k, v in params(case).items()},
                     {k: v.astype(np.float64) for k, v in inputs.items()})
    assert len(got) == len(expected)
    for e, g, o in zip(expected, got, ours):
        assert g.shape == e.shape
        np.testing.assert_allclose(g, e, atol=2e-6, rtol=1e-5)
        np.testing.assert_allclose(o, e, atol=2e-6, rtol=1e-5)  # the reference used for gradients is right


def test_lstm_with_initial_h_but_no_initial_c():
    case = Case("LSTM", "bidirectional", 0, True)
    model = model_of(case)
    del model.graph.node[0].input[6:]
    model.graph.input.remove(next(v for v in model.graph.input if v.name == "c0"))
    inputs = {k: v for k, v in feeds(case).items() if k != "c0"}
    for got, expected in zip(run(rewrite_for_training(model).model, inputs), run(model, inputs)):
        np.testing.assert_allclose(got, expected, atol=2e-6, rtol=1e-5)


def test_linear_before_reset_changes_the_result():
    """Negative control: the two GRU forms differ, so the equivalence above tells them apart."""
    inputs = feeds(Case("GRU"))
    a = run(model_of(Case("GRU")), inputs)[0]
    b = run(rewrite_for_training(model_of(Case("GRU", linear_before_reset=1))).model, inputs)[0]
    assert np.abs(a - b).max() > 1e-3


@pytest.mark.parametrize("opset", [11, 21])
def test_unrolling_works_at_both_ends_of_the_opset_range(opset):
    case = Case("LSTM", "bidirectional", 0, True)
    model = model_of(case, opset=opset)
    np.testing.assert_allclose(run(rewrite_for_training(model).model, feeds(case))[0], run(model, feeds(case))[0],
                               atol=2e-6)


# ---------------------------------------------------------------- gradients


def with_loss(model: onnx.ModelProto, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """`model` with `loss = sum over outputs o of mean(o * weights[o])` as its only output."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    terms = []
    for name, r in weights.items():
        out.graph.initializer.append(numpy_helper.from_array(r.astype(np.float32), f"loss.{name}"))
        out.graph.node.extend([helper.make_node("Mul", [name, f"loss.{name}"], [f"loss.{name}.m"]),
                               helper.make_node("ReduceMean", [f"loss.{name}.m"], [f"loss.{name}.r"], keepdims=0)])
        terms.append(f"loss.{name}.r")
    total = terms[0]
    for i, term in enumerate(terms[1:]):
        out.graph.node.append(helper.make_node("Add", [total, term], [f"loss.sum{i}"]))
        total = f"loss.sum{i}"
    out.graph.node.append(helper.make_node("Identity", [total], ["loss"]))
    del out.graph.output[:]
    out.graph.output.append(helper.make_tensor_value_info("loss", TensorProto.FLOAT, []))
    return out


def loss_weights(case: Case) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    shapes = [o.shape for o in reference(case, params(case), feeds(case))]
    return {name: rng.normal(size=shape) for name, shape in zip(("y", "y_h", "y_c"), shapes)}


def finite_difference(case: Case, p: dict, name: str, inputs: dict, r: dict, eps: float = 1e-6) -> np.ndarray:
    p = {k: v.astype(np.float64) for k, v in p.items()}
    inputs = {k: v.astype(np.float64) for k, v in inputs.items()}
    r = [v.astype(np.float32).astype(np.float64) for v in r.values()]

    def loss() -> float:
        return sum(float(np.mean(o * w)) for o, w in zip(reference(case, p, inputs), r))

    return central_difference(loss, p[name], eps)


def training_gradients(model: onnx.ModelProto, trainable, masks: dict[str, str], inputs: dict, directory):
    """Build artifacts as build_artifacts does (rewrite, frozen masks, straight-through) and run one step."""
    directory.mkdir(parents=True, exist_ok=True)
    with captured_stderr():
        artifacts.generate_artifacts(model, requires_grad=list(trainable), frozen_params=list(masks.values()),
                                     loss=None, artifact_directory=str(directory))
        path = directory / "training_model.onnx"
        onnx.save(rewire_straight_through(onnx.load(str(path)), masks).model, str(path))
        state = api.CheckpointState.load_checkpoint(str(directory / "checkpoint"))
        module = api.Module(str(path), state, str(directory / "eval_model.onnx"))
        module.train()
        module(*[inputs[i.name] for i in model.graph.input])
    return {n: np.array(state.parameters[n].grad, dtype=np.float64) for n in trainable}


GRADIENT_CASES = [
    Case("LSTM", "bidirectional", 1, True, peepholes=True),
    Case("LSTM", "reverse", 0, False),
    Case("GRU", "reverse", 0, True, linear_before_reset=1),
    Case("GRU", "bidirectional", 1, False),
    Case("RNN", "forward", 0, True),
]


@pytest.mark.parametrize("case", GRADIENT_CASES, ids=lambda c: c.id)
def test_straight_through_gradients_of_w_r_b_equal_finite_differences(case, tmp_path):
    """Masked W, R, B with a third of each pruned: the forward pass sees W * T, and the straight-through gradient
    of every entry, pruned or not, is the finite difference of the reference at W * T."""
    p = params(case)
    names = [n for n in ("W", "R", "B") if n in p]
    masked = insert_masks(model_of(case), names).model
    rng = np.random.default_rng(7)
    masks = {n: (rng.random(p[n].shape) > 1 / 3).astype(np.float32) for n in names}
    for tensor in masked.graph.initializer:
        if tensor.name in {mask_name(n) for n in names}:
            tensor.CopyFrom(numpy_helper.from_array(masks[tensor.name[:-len("__dns_mask")]], tensor.name))
    r = loss_weights(case)
    inputs = feeds(case)
    trainable = names + (["P"] if "P" in p else [])
    grads = training_gradients(with_loss(rewrite_for_training(masked).model, r), trainable,
                               {n: mask_name(n) for n in names}, inputs, tmp_path)
    effective = {k: v * masks[k] if k in masks else v for k, v in p.items()}
    for name in trainable:
        expected = finite_difference(case, effective, name, inputs, r)
        np.testing.assert_allclose(grads[name], expected, atol=1e-5, rtol=1e-3, err_msg=name)
        pruned = masks[name] == 0 if name in masks else np.zeros(p[name].shape, bool)
        assert not pruned.any() or np.abs(grads[name][pruned]).max() > 1e-4  # pruned entries can grow back


# ---------------------------------------------------------------- what is refused, and why a rewrite is needed


def refused(model: onnx.ModelProto) -> str:
    result = rewrite_for_training(model)
    assert not result.modified
    blocked = untrainable_nodes(result.model)
    assert [op for _, op in blocked] == [model.graph.node[0].op_type]
    return untrainable_message(result.model, blocked)


def test_sequence_lens_is_refused_by_name():
    model = model_of(Case("LSTM", "bidirectional"))
    node = model.graph.node[0]
    assert len(node.input) == 4
    node.input.append("lens")
    model.graph.input.append(helper.make_tensor_value_info("lens", TensorProto.INT32, [N]))
    assert "sequence_lens" in refused(model)


def test_unknown_sequence_length_is_refused():
    assert "sequence length" in refused(model_of(Case("GRU"), steps="T"))


@pytest.mark.parametrize("attrs, word", [({"clip": 3.0}, "clip"), ({"input_forget": 1}, "input_forget"),
                                         ({"activations": ["HardSigmoid", "Tanh", "Tanh"]}, "HardSigmoid")])
def test_unsupported_attributes_are_refused_by_name(attrs, word):
    model = model_of(Case("LSTM"))
    model.graph.node[0].attribute.extend(helper.make_attribute(k, v) for k, v in attrs.items())
    assert word in refused(model)


def test_unrolled_nodes_are_not_reported():
    for case in (Case("LSTM", "bidirectional", 1, True), Case("GRU", linear_before_reset=1), Case("RNN")):
        assert untrainable_nodes(rewrite_for_training(model_of(case)).model) == []


@pytest.mark.parametrize("op", ["LSTM", "RNN"])
def test_the_original_node_cannot_be_trained(op, tmp_path):
    """LSTM: "Type 'tensor(float)' of input parameter (y) of operator (LSTMGrad) ... is invalid"; RNN: no builder."""
    case = Case(op)
    with pytest.raises(Exception, match="LSTMGrad|gradient builder has not been registered"):
        training_gradients(with_loss(model_of(case), loss_weights(case)), ["W"], {}, feeds(case), tmp_path)


# ---------------------------------------------------------------- prunable layers


def test_find_layers_gives_each_recurrent_node_w_r_and_b():
    lstm = Case("LSTM", "bidirectional", peepholes=True, initial=True)
    p_lstm = params(lstm)
    model = model_of(lstm)
    # y_h of the bidirectional LSTM, (2, N, H), is read by a GRU without bias as a sequence of 2 steps of width H
    inits = {"gru.W": np.ones((1, 3 * HIDDEN, HIDDEN)), "gru.R": np.ones((1, 3 * HIDDEN, HIDDEN)),
             "h_init": np.zeros((1, N, HIDDEN))}
    model.graph.initializer.extend(numpy_helper.from_array(v.astype(np.float32), k) for k, v in inits.items())
    model.graph.node.append(helper.make_node("GRU", ["y_h", "gru.W", "gru.R", "", "", "h_init"], ["g"], name="gru",
                                             hidden_size=HIDDEN))
    layers = {layer.name: layer for layer in find_layers(model)}
    assert set(layers) == {"rec", "gru"}
    rec = layers["rec"]
    assert [(t.name, t.role) for t in rec.tensors] == [("W", "weight"), ("R", "recurrence"), ("B", "bias")]
    assert rec.params == p_lstm["W"].size + p_lstm["R"].size + p_lstm["B"].size == 2 * 4 * HIDDEN * (I + HIDDEN + 2)
    assert [(t.name, t.role) for t in layers["gru"].tensors] == [("gru.W", "weight"), ("gru.R", "recurrence")]
    assert [t.name for t in find_layers(model, biases=False)[0].tensors] == ["W", "R"]
    masked = insert_masks(model, [t.name for layer in layers.values() for t in layer.tensors]).model
    assert find_layers(masked) == list(layers.values())  # seen through the masks' Mul nodes


def test_a_recurrent_node_whose_weights_are_inputs_is_not_a_layer():
    model = model_of(Case("RNN"))
    w = next(t for t in model.graph.initializer if t.name == "W")
    model.graph.input.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, list(w.dims)))
    model.graph.initializer.remove(w)
    assert find_layers(model) == []


# ---------------------------------------------------------------- end to end


def cnn_bilstm(seed: int = 0, hidden: int = 12) -> onnx.ModelProto:
    """x (N, 1, 8, 16) -> Conv 3x3 (4 channels) -> Relu -> 16 steps of 32 features (the image's columns) ->
    bidirectional LSTM -> both final hidden states -> MatMul + Add classifier over 3 classes."""
    rng = np.random.default_rng(seed)
    g = 4 * hidden
    inits = {"conv.w": rng.normal(size=(4, 1, 3, 3)) * 0.5, "conv.b": np.zeros(4),
             "lstm.W": rng.normal(size=(2, g, 32)) * 0.2, "lstm.R": rng.normal(size=(2, g, hidden)) * 0.2,
             "lstm.B": rng.normal(size=(2, 2 * g)) * 0.1, "fc.w": rng.normal(size=(2 * hidden, 3)) * 0.3,
             "fc.b": np.zeros(3), "seq_shape": np.array([16, -1, 32]), "flat_shape": np.array([-1, 2 * hidden])}
    nodes = [
        helper.make_node("Conv", ["x", "conv.w", "conv.b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Transpose", ["r"], ["cols"], name="columns", perm=[3, 0, 1, 2]),  # (16, N, 4, 8)
        helper.make_node("Reshape", ["cols", "seq_shape"], ["seq"], name="to_sequence"),
        helper.make_node("LSTM", ["seq", "lstm.W", "lstm.R", "lstm.B"], ["", "h"], name="lstm",
                         hidden_size=hidden, direction="bidirectional"),
        helper.make_node("Transpose", ["h"], ["h_batch"], name="batch_first", perm=[1, 0, 2]),
        helper.make_node("Reshape", ["h_batch", "flat_shape"], ["feat"], name="flatten"),
        helper.make_node("MatMul", ["feat", "fc.w"], ["logits0"], name="fc"),
        helper.make_node("Add", ["logits0", "fc.b"], ["y"], name="fc_bias"),
    ]
    graph = helper.make_graph(
        nodes, "crnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(v.astype(np.int64 if k.endswith("shape") else np.float32), k)
         for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


def test_cnn_bilstm_compresses_2x_counting_the_lstm_and_keeps_its_lstm(tmp_path):
    model = cnn_bilstm()
    path = tmp_path / "crnn.onnx"
    onnx.save(model, str(path))
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 480)
    x = 0.5 * rng.normal(size=(480, 1, 8, 16)).astype(np.float32)
    for k in range(3):  # the class is where along the sequence the bright columns are
        x[labels == k, :, :, 5 * k:5 * k + 5] += 1.0
    np.savez(tmp_path / "train.npz", x=x, labels=labels)
    work = tmp_path / "work"
    options = CompressOptions(data=str(tmp_path / "train.npz"), target=2.0, format="sparse", work_dir=str(work), keep_work=True,
                              train=TrainConfig(iterations=60, batch_size=32, lr=0.02, eval_every=60,
                                                checkpoint_every=60))
    result = compress_file(path, tmp_path / "out.onnx", options)

    lstm = next(s for s in result.layers_before if s.op == "LSTM")
    assert lstm.params == 2 * 48 * (32 + 12 + 2)  # W, R and B of both directions
    assert lstm.weight_params == 2 * 48 * (32 + 12)  # R counts as a weight in the weights-only figures
    assert lstm.params > sum(s.params for s in result.layers_before) / 2
    assert result.compression == pytest.approx(2.0, rel=0.02)
    out = onnx.load(str(tmp_path / "out.onnx"))
    assert [n.op_type for n in out.graph.node] == [n.op_type for n in model.graph.node]  # the LSTM is kept
    before = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in densify_sparse(out).model.graph.initializer}
    with np.load(work / CHECKPOINT) as saved:
        masks = {k[len("mask/"):]: saved[k] for k in saved.files if k.startswith("mask/")}
    assert {"lstm.W", "lstm.R", "lstm.B"} <= set(masks)
    for name in ("lstm.W", "lstm.R", "lstm.B"):
        np.testing.assert_array_equal(after[name] == 0, masks[name] == 0)
        kept = after[name] != 0
        assert 0 < kept.mean() < 1 and np.abs(after[name][kept] - before[name][kept]).max() > 1e-6, name
    lstm_after = next(s for s in result.layers_after if s.op == "LSTM")
    assert lstm_after.weight_nonzeros == sum(int(np.count_nonzero(after[n])) for n in ("lstm.W", "lstm.R"))

    feed = {"x": x[:32]}
    got = onnxruntime.InferenceSession(str(tmp_path / "out.onnx"), providers=["CPUExecutionProvider"]).run(
        None, feed)[0]
    np.testing.assert_allclose(got, eval_graph_outputs(work, feed)["y"], rtol=1e-4, atol=1e-5)
    assert not np.allclose(got, run(model, feed)[0], atol=1e-3)  # pruning changed it: the comparison is not trivial
