"""The loss attached as ONNX nodes, evaluated in a plain onnxruntime InferenceSession, against numpy."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from engine_fixtures import linear, numpy_cross_entropy
from graphs import make_model, tensor, value
from onnx import helper

from onnx_dns.errors import ModelError
from onnx_dns.losses import HARD_TARGET, LOSS_OUTPUT, SOFT_TARGET, LossSpec, attach_loss, logits_name, loss_output
from onnx_dns.ort_training import onnxruntime

RNG = np.random.default_rng(0)
W = RNG.standard_normal((6, 4)).astype(np.float32)
B = RNG.standard_normal(4).astype(np.float32)
X = RNG.standard_normal((9, 6)).astype(np.float32)
LABELS = RNG.integers(0, 4, 9)
LOGITS = X.astype(np.float64) @ W + B


def run(model: onnx.ModelProto, **feeds) -> list[np.ndarray]:
    onnx.checker.check_model(model)
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert session.get_outputs()[0].name == LOSS_OUTPUT
    return session.run(None, {k: v.astype(np.float32) for k, v in feeds.items()})


def onehot(labels, classes=4):
    return np.eye(classes)[labels]


def np_softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def soft_kl(logits, teacher_logits, t):
    """T^2 * mean over the batch of KL(softmax(teacher/T) || softmax(z/T)): Hinton et al.'s soft cross-entropy
    -sum_c p_c log q_c less the teacher's entropy."""
    p = np_softmax(teacher_logits / t)
    z = logits / t
    z = z - z.max(axis=1, keepdims=True)
    logq = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(t * t * np.mean((p * (np.log(p) - logq)).sum(axis=1)))


def test_hard_loss_is_cross_entropy():
    model = linear(W, B)
    out = attach_loss(model, LossSpec("classify", "y", 1.0, 0.0, num_classes=4))
    loss, y = run(out, x=X, **{HARD_TARGET: onehot(LABELS)})
    assert float(loss) == pytest.approx(numpy_cross_entropy(LOGITS, LABELS), rel=1e-5)
    np.testing.assert_allclose(y, LOGITS, rtol=1e-5, atol=1e-5)  # the model's own output is still there
    assert [i.name for i in out.graph.input] == ["x", HARD_TARGET]


def test_attach_loss_leaves_the_model_alone():
    model = linear(W, B)
    before = model.SerializeToString()
    attach_loss(model, LossSpec("classify", "y", 1.0, 0.0, num_classes=4))
    assert model.SerializeToString() == before


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_distillation_loss_is_t_squared_kl_divergence(temperature):
    teacher = RNG.standard_normal((9, 4)) * 3
    soft = np_softmax(teacher / temperature)
    out = attach_loss(linear(W, B), LossSpec("classify", "y", 0.0, 1.0, temperature, num_classes=4))
    loss = run(out, x=X, **{SOFT_TARGET: soft})[0]
    assert float(loss) == pytest.approx(soft_kl(LOGITS, teacher, temperature), rel=1e-5)
    assert [i.name for i in out.graph.input] == ["x", SOFT_TARGET]


def test_mixed_loss_weights_both_terms():
    teacher = RNG.standard_normal((9, 4))
    t = 2.0
    out = attach_loss(linear(W, B), LossSpec("classify", "y", 0.3, 0.7, t, num_classes=4))
    loss = run(out, x=X, **{HARD_TARGET: onehot(LABELS), SOFT_TARGET: np_softmax(teacher / t)})[0]
    want = 0.3 * numpy_cross_entropy(LOGITS, LABELS) + 0.7 * soft_kl(LOGITS, teacher, t)
    assert float(loss) == pytest.approx(want, rel=1e-5)


def test_a_softmax_ended_model_trains_on_its_logits():
    model = linear(W, B, softmax=True)
    assert logits_name(model, "y") == "logits"
    out = attach_loss(model, LossSpec("classify", "y", 1.0, 0.0, num_classes=4))
    loss, y = run(out, x=X, **{HARD_TARGET: onehot(LABELS)})
    assert float(loss) == pytest.approx(numpy_cross_entropy(LOGITS, LABELS), rel=1e-5)
    np.testing.assert_allclose(y, np_softmax(LOGITS), rtol=1e-5, atol=1e-6)  # output stays probabilities
    # log_softmax applied to the probabilities would give a visibly different number
    assert abs(numpy_cross_entropy(np_softmax(LOGITS), LABELS) - float(loss)) > 0.05


def test_a_softmax_behind_identity_nodes_is_seen_through():
    """skl2onnx writes probabilities = Identity(Softmax(z))."""
    model = linear(W, B, softmax=True)
    softmax = model.graph.node[1]
    softmax.output[0] = "p0"
    model.graph.node.extend([helper.make_node("Identity", ["p0"], ["p1"], name="id0"),
                             helper.make_node("Identity", ["p1"], ["y"], name="id1")])
    assert logits_name(model, "y") == "logits"
    loss, _ = run(attach_loss(model, LossSpec("classify", "y", 1.0, 0.0, num_classes=4)), x=X,
                  **{HARD_TARGET: onehot(LABELS)})
    assert float(loss) == pytest.approx(numpy_cross_entropy(LOGITS, LABELS), rel=1e-5)


def written_out_softmax(axis: int = 1) -> onnx.ModelProto:
    """jax2tf's softmax: z = logits - max(logits); y = Exp(z) / Expand(Reshape(ReduceSum(Exp(z), axis)))."""
    model = linear(W, B, softmax=False)
    model.graph.node[-1].output[0] = "logits"
    model.graph.initializer.extend([tensor("axes", np.array([axis], np.int64)),
                                    tensor("column", np.array([-1, 1], np.int64))])
    model.graph.node.extend([
        helper.make_node("ReduceMax", ["logits"], ["m"], name="max", axes=[1], keepdims=1),
        helper.make_node("Sub", ["logits", "m"], ["z"], name="shift"),
        helper.make_node("Exp", ["z"], ["e"], name="exp"),
        helper.make_node("ReduceSum", ["e", "axes"], ["total"], name="sum", keepdims=0),
        helper.make_node("Reshape", ["total", "column"], ["total_col"], name="col"),
        helper.make_node("Div", ["e", "total_col"], ["y"], name="div")])
    return model


def test_a_written_out_softmax_trains_on_the_exps_input():
    model = written_out_softmax()
    assert logits_name(model, "y") == "z"
    loss, y = run(attach_loss(model, LossSpec("classify", "y", 1.0, 0.0, num_classes=4)), x=X,
                  **{HARD_TARGET: onehot(LABELS)})
    np.testing.assert_allclose(y, np_softmax(LOGITS), rtol=1e-5, atol=1e-6)
    assert float(loss) == pytest.approx(numpy_cross_entropy(LOGITS, LABELS), rel=1e-5)


def test_a_division_that_is_not_a_softmax_over_the_last_axis_keeps_its_output():
    assert logits_name(written_out_softmax(axis=0), "y") == "y"  # a sum over the batch normalizes something else
    model = written_out_softmax()
    model.graph.node[-1].input[0] = "logits"  # logits / sum(exp(z)): not exp(z) on top
    assert logits_name(model, "y") == "y"


def classifier_with_label_output(zipmap: bool) -> onnx.ModelProto:
    """What skl2onnx writes for a classifier: an int64 label first, then the probabilities (a tensor, or with
    ZipMap a sequence of maps from class to probability)."""
    model = linear(W, B, softmax=True)
    model.graph.node.append(helper.make_node("ArgMax", ["y"], ["label"], name="argmax", axis=1, keepdims=0))
    model.graph.output.insert(0, value("label", ["N"], onnx.TensorProto.INT64))
    if zipmap:
        model.graph.node.append(helper.make_node("ZipMap", ["y"], ["probs"], name="zipmap", domain="ai.onnx.ml",
                                                 classlabels_int64s=[0, 1, 2, 3]))
        model.opset_import.append(helper.make_opsetid("ai.onnx.ml", 1))
        probs = helper.make_value_info("probs", helper.make_sequence_type_proto(helper.make_map_type_proto(
            onnx.TensorProto.INT64, helper.make_tensor_type_proto(onnx.TensorProto.FLOAT, []))))
        del model.graph.output[1:]
        model.graph.output.append(probs)
    return model


def test_the_loss_reads_the_first_float_output_unless_one_is_named():
    model = classifier_with_label_output(zipmap=False)
    assert [o.name for o in model.graph.output] == ["label", "y"]
    assert loss_output(model) == "y"
    assert loss_output(model, "y") == "y"
    with pytest.raises(ModelError, match=r"m.onnx: output 'label' is of type int64 tensor"):
        loss_output(model, "label", "m.onnx")
    with pytest.raises(ModelError, match=r"no output or tensor named 'nope'; outputs: label \(int64 tensor\), y \(fl"):
        loss_output(model, "nope")
    zipmap = classifier_with_label_output(zipmap=True)
    onnx.checker.check_model(zipmap)
    behind = loss_output(zipmap)  # every output is an int64 label or a sequence of maps: the float tensor behind
    assert behind in {n.output[0] for n in zipmap.graph.node} and behind not in {o.name for o in zipmap.graph.output}


def test_the_teacher_runs_on_full_batches_only():
    """A model exported with a fixed batch size refuses a short last batch: it is padded, the padding dropped."""
    from onnx_dns.dataset import Dataset
    from onnx_dns.targets import TEACHER, with_teacher

    def teacher(inputs):
        assert len(inputs["x"]) == 4
        return inputs["x"] @ W

    data = Dataset({"x": X}, None, "train")
    taught = with_teacher(data, teacher, 4)
    np.testing.assert_allclose(taught.inputs[TEACHER], X @ W, rtol=1e-6)
    assert TEACHER not in data.inputs  # the caller's data is left as it was


def test_a_logsoftmax_ended_model_trains_on_its_output():
    inits = [tensor("fc.w", W), tensor("fc.b", B)]
    nodes = [helper.make_node("Gemm", ["x", "fc.w", "fc.b"], ["z"], name="fc"),
             helper.make_node("LogSoftmax", ["z"], ["y"], name="logsoftmax", axis=-1)]
    model = make_model(nodes, [value("x", ["N", 6])], [value("y", ["N", 4])], inits)
    out = attach_loss(model, LossSpec("classify", "y", 1.0, 0.0, num_classes=4))
    loss = run(out, x=X, **{HARD_TARGET: onehot(LABELS)})[0]
    assert float(loss) == pytest.approx(numpy_cross_entropy(LOGITS, LABELS), rel=1e-5)


def test_regression_loss_is_mean_squared_error():
    target = RNG.standard_normal((9, 4))
    out = attach_loss(linear(W, B), LossSpec("regress", "y", 1.0, 0.0))
    loss = run(out, x=X, **{HARD_TARGET: target})[0]
    assert float(loss) == pytest.approx(np.mean((LOGITS - target) ** 2), rel=1e-5)


def test_a_regression_target_takes_the_datas_rank_where_the_declared_output_shape_is_wrong():
    target = RNG.standard_normal((9, 4))
    model = linear(W, B)
    dims = model.graph.output[0].type.tensor_type.shape.dim
    del dims[:]
    for size in (1, "seqlen", 7):  # a torch export's declared shape, of another rank than what it returns
        dims.add().CopyFrom(onnx.helper.make_tensor_value_info("d", 1, [size]).type.tensor_type.shape.dim[0])
    out = attach_loss(model, LossSpec("regress", "y", 1.0, 0.0, rank=2))
    loss = run(out, x=X, **{HARD_TARGET: target})[0]
    assert float(loss) == pytest.approx(np.mean((LOGITS - target) ** 2), rel=1e-5)


def test_regression_with_labels_and_teacher_mixes_both():
    labels, teacher = RNG.standard_normal((9, 4)), RNG.standard_normal((9, 4))
    out = attach_loss(linear(W, B), LossSpec("regress", "y", 0.25, 0.75))
    loss = run(out, x=X, **{HARD_TARGET: labels, SOFT_TARGET: teacher})[0]
    want = 0.25 * np.mean((LOGITS - labels) ** 2) + 0.75 * np.mean((LOGITS - teacher) ** 2)
    assert float(loss) == pytest.approx(want, rel=1e-5)


def test_loss_spec_lists_the_targets_it_needs():
    assert LossSpec("classify", "y", 1.0, 0.0, num_classes=3).targets == (HARD_TARGET,)
    assert LossSpec("classify", "y", 0.0, 1.0, num_classes=3).targets == (SOFT_TARGET,)
    assert LossSpec("classify", "y", 0.5, 0.5, num_classes=3).targets == (HARD_TARGET, SOFT_TARGET)


@pytest.mark.parametrize("spec, words", [
    (LossSpec("classify", "nope", 1.0, 0.0, num_classes=4), "'nope' is neither an output nor a float tensor"),
    (LossSpec("classify", "y", 1.0, 0.0), "num_classes"),
    (LossSpec("classify", "y", 0.0, 0.0, num_classes=4), "no term"),
    (LossSpec("segment", "y", 1.0, 0.0), "unknown task"),
])
def test_bad_specs_are_refused(spec, words):
    with pytest.raises(ValueError, match=words):
        attach_loss(linear(W, B), spec)


# ---------------------------------------------------------------- the targets fed beside each batch


def test_targets_are_one_hot_labels_and_softened_teacher_outputs():
    from onnx_dns.targets import Targets

    teacher_logits = RNG.standard_normal((9, 4)).astype(np.float32)
    spec = LossSpec("classify", "y", 0.5, 0.5, 3.0, num_classes=4)
    targets = Targets(spec, lambda inputs: teacher_logits, (4,))
    hard, soft = targets.for_batch({"x": X}, LABELS)
    np.testing.assert_array_equal(hard, onehot(LABELS))
    np.testing.assert_allclose(soft, np_softmax(teacher_logits.astype(np.float64) / 3.0), rtol=1e-5)
    assert hard.dtype == soft.dtype == np.float32
    # fed to the attached graph they give the loss computed in numpy
    loss = run(attach_loss(linear(W, B), spec), x=X, **{HARD_TARGET: hard, SOFT_TARGET: soft})[0]
    want = 0.5 * numpy_cross_entropy(LOGITS, LABELS) + 0.5 * soft_kl(LOGITS, teacher_logits, 3.0)
    assert float(loss) == pytest.approx(want, rel=1e-5)


def test_metrics_top1_top5_fidelity_and_mse():
    from onnx_dns.evaluate import compute_metrics

    outputs = np.random.default_rng(5).standard_normal((40, 7))  # no ties
    labels = np.random.default_rng(6).integers(0, 7, 40)
    m = compute_metrics("classify", outputs, labels, None)
    ranked = np.argsort(-outputs, axis=1)
    assert m.top1 == pytest.approx(100 * np.mean(ranked[:, 0] == labels)) and m.score == m.top1
    assert m.top5 == pytest.approx(100 * np.mean([labels[i] in ranked[i, :5] for i in range(40)]))
    assert m.top1 < m.top5 < 100
    outputs = np.zeros((4, 7))
    outputs[np.arange(4), [0, 1, 2, 3]] = 10  # predicted classes 0 1 2 3
    reference = np.zeros((4, 7))
    reference[np.arange(4), [0, 1, 6, 6]] = 1
    f = compute_metrics("classify", outputs, None, reference)
    assert f.fidelity == 50.0 and f.top1 is None and f.score == 50.0
    r = compute_metrics("regress", np.array([[1.0], [3.0]]), np.array([0.0, 1.0]), None)
    assert r.mse == pytest.approx(2.5)
    assert r.relative_error == pytest.approx(100 * np.sqrt(5.0)) and r.score == -r.relative_error  # ||(1, 2)|| / ||(0, 1)||


def test_per_position_metrics_count_every_position_and_move_with_the_model():
    from onnx_dns.evaluate import compute_metrics

    rng = np.random.default_rng(9)
    reference = rng.standard_normal((5, 12, 9))  # [batch, positions, classes]
    same = compute_metrics("classify", reference.copy(), None, reference)
    assert same.fidelity == 100.0 and same.positions == 12 and same.label == "per-position agreement"
    changed = reference.copy()
    changed[0, :3] = -changed[0, :3]  # 3 of 60 positions now predict another class
    moved = compute_metrics("classify", changed, None, reference)
    assert moved.fidelity == pytest.approx(100 * 57 / 60)
    labels = reference.argmax(-1)
    labels[1, 0] = (labels[1, 0] + 1) % 9
    assert compute_metrics("classify", reference, labels, None).top1 == pytest.approx(100 * 59 / 60)


def test_distilling_a_rank_3_output_weighs_each_channel_by_its_spread():
    from onnx_dns.objective import channel_scale

    rng = np.random.default_rng(3)
    teacher = rng.standard_normal((4, 3, 7)) * np.array([500.0, 1.0, 0.01])[None, :, None]  # pixels and scores
    scale = np.array(channel_scale(teacher))
    assert scale == pytest.approx(teacher.transpose(1, 0, 2).reshape(3, -1).std(axis=1))
    w = rng.standard_normal((5, 21)).astype(np.float32)
    inits = [tensor("fc.w", w), tensor("shape", np.array([-1, 3, 7], np.int64))]
    nodes = [helper.make_node("MatMul", ["x", "fc.w"], ["h"]), helper.make_node("Reshape", ["h", "shape"], ["y"])]
    model = make_model(nodes, [value("x", ["N", 5])], [value("y", ["N", 3, 7])], inits)
    spec = LossSpec("regress", "y", 0.0, 1.0, rank=3, channel_scale=tuple(scale))
    x = rng.standard_normal((4, 5)).astype(np.float32)
    target = teacher.astype(np.float32)
    loss = run(attach_loss(model, spec), x=x, **{SOFT_TARGET: target})[0]
    y = (x @ w).reshape(4, 3, 7)
    want = np.mean(((y - target) / scale[None, :, None].astype(np.float32)) ** 2)
    assert float(loss) == pytest.approx(float(want), rel=1e-4)
    plain = run(attach_loss(model, LossSpec("regress", "y", 0.0, 1.0, rank=3)), x=x, **{SOFT_TARGET: target})[0]
    assert float(plain) == pytest.approx(float(np.mean((y - target) ** 2)), rel=1e-4)


def test_distillation_loss_is_zero_for_a_student_equal_to_its_teacher():
    out = attach_loss(linear(W, B), LossSpec("classify", "y", 0.0, 1.0, 4.0, num_classes=4))
    loss = run(out, x=X, **{SOFT_TARGET: np_softmax(LOGITS / 4.0)})[0]
    assert abs(float(loss)) < 1e-5


def top_share(logits: np.ndarray, t: float) -> float:
    """Mean probability of the top class of softmax(logits / t), written here independently of the library."""
    z = logits / t
    p = np.exp(z - z.max(axis=-1, keepdims=True))
    return float((p.max(axis=-1) / p.sum(axis=-1)).mean())


@pytest.mark.parametrize("classes,margin", [(2, 3.0), (10, 6.0), (6625, 8.0), (6625, 30.0)])
def test_the_temperature_is_the_softest_at_which_the_top_class_keeps_half(classes, margin):
    from onnx_dns.targets import choose_temperature

    logits = np.random.default_rng(0).standard_normal((16, 5, classes)) * 0.5
    logits[..., 0] += margin
    chosen = choose_temperature(logits)
    softer = [t for t in (4.0, 2.0, 1.0) if t > chosen]
    assert top_share(logits, chosen) >= 0.5 or chosen == 1.0
    assert all(top_share(logits, t) < 0.5 for t in softer)


def test_without_temperature_a_many_class_distillation_sharpens_and_a_given_one_is_kept():
    from onnx_dns.objective import loss_spec
    from onnx_dns.options import CompressOptions

    logits = np.zeros((8, 40, 6625), np.float32)
    logits[..., 0], logits[..., 1] = 20.0, 12.0  # like PP-OCR's recognizer: the top class keeps 2% at 4, 76% at 2
    assert loss_spec("classify", "y", None, logits, CompressOptions()).temperature == 2.0
    assert loss_spec("classify", "y", None, logits, CompressOptions(temperature=4.0)).temperature == 4.0
    two = np.zeros((8, 2), np.float32)
    two[:, 0] = 8.0
    assert loss_spec("classify", "y", None, two, CompressOptions()).temperature == 4.0
