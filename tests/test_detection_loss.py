"""The detection loss of YOLO heads, in onnxruntime, against an independent numpy reference (KL divergence of
Bernoulli scores written on probabilities, boxes weighted by the teacher's confidence)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from graphs import make_model, tensor, value
from onnx import helper
from rewrite_harness import central_difference

from onnx_dns.detection_loss import DetectionHead, class_logits
from onnx_dns.losses import LOSS_OUTPUT, SOFT_TARGET, LossSpec, attach_loss
from onnx_dns.yolo_heads import detection_head
from onnx_dns.ort_training import api, artifacts, captured_stderr, onnxruntime

F, A, K = 5, 7, 3  # features, anchors, classes
FLOOR = 10.0
RNG = np.random.default_rng(0)
W_BOX = RNG.standard_normal((4, F)).astype(np.float32)
W_CLS = RNG.standard_normal((K, F)).astype(np.float32)
X = RNG.standard_normal((2, F, A)).astype(np.float32)


def head_model(anchors_last: bool = True, anchors: int = A, opset: int | None = None) -> onnx.ModelProto:
    """x[N, F, A] -> boxes 20 * (W_box x) + 40 in pixels, scores Sigmoid(W_cls x - 2) -> Concat [N, 4+K, A]
    (transposed to [N, A, 4+K] unless `anchors_last`: its logits are then not seen)."""
    nodes = [helper.make_node("MatMul", ["wb", "x"], ["bm"]), helper.make_node("Mul", ["bm", "twenty"], ["bs"]),
             helper.make_node("Add", ["bs", "forty"], ["box"]), helper.make_node("MatMul", ["wc", "x"], ["cm"]),
             helper.make_node("Sub", ["cm", "two"], ["logits"]), helper.make_node("Sigmoid", ["logits"], ["scores"]),
             helper.make_node("Concat", ["box", "scores"], ["y"], axis=1)]
    if not anchors_last:
        nodes.append(helper.make_node("Transpose", ["y"], ["yt"], perm=[0, 2, 1]))
    inits = [tensor("wb", W_BOX), tensor("wc", W_CLS), tensor("twenty", np.float32(20)),
             tensor("forty", np.float32(40)), tensor("two", np.float32(2))]
    out = value("y", ["N", 4 + K, anchors]) if anchors_last else value("yt", ["N", anchors, 4 + K])
    return make_model(nodes, [value("x", ["N", F, anchors])], [out], inits, **({"opset": opset} if opset else {}))


def forward(x: np.ndarray, wb: np.ndarray, wc: np.ndarray) -> np.ndarray:
    box = 20 * np.einsum("of,nfa->noa", wb, x) + 40
    scores = 1 / (1 + np.exp(-(np.einsum("of,nfa->noa", wc, x) - 2)))
    return np.concatenate([box, scores], axis=1)


def reference(y: np.ndarray, t: np.ndarray, floor: float | None = FLOOR, objectness: bool = False) -> float:
    """(sum c (dbox / size)^2 + sum (c + 0.01) KL(t || y)) / max(sum c, 1), anchors last, in float64 on
    probabilities; size 1 without a floor (a raw head); c the best score, or objectness times the best class."""
    y, t = y.astype(np.float64), t.astype(np.float64)
    conf = t[:, 4] * t[:, 5:].max(axis=1) if objectness else t[:, 4:].max(axis=1)
    size = np.maximum(t[:, 2:4], floor) if floor is not None else np.ones_like(t[:, 2:4])
    box = np.sum(conf[:, None] * ((y[:, :4] - t[:, :4]) / np.concatenate([size, size], axis=1)) ** 2)
    p, q = y[:, 4:], t[:, 4:]
    kl = q * np.log(q / p) + (1 - q) * np.log((1 - q) / (1 - p))
    return float((box + np.sum((conf + 0.01)[:, None] * kl)) / max(conf.sum(), 1.0))


def teacher(seed: int = 1) -> np.ndarray:
    """Another head's outputs: the same model with other weights."""
    rng = np.random.default_rng(seed)
    return forward(X.astype(np.float64), rng.standard_normal((4, F)), rng.standard_normal((K, F))).astype(np.float32)


def spec(model: onnx.ModelProto, anchors_last: bool = True) -> LossSpec:
    logits = class_logits(model, model.graph.output[0].name, anchors_last, K)
    return LossSpec("regress", model.graph.output[0].name, 0.0, 1.0, rank=3,
                    detection=DetectionHead(anchors_last, K, FLOOR, logits))


def loss_of(model: onnx.ModelProto, target: np.ndarray, loss_spec: LossSpec | None = None) -> float:
    attached = attach_loss(model, loss_spec or spec(model))
    session = onnxruntime.InferenceSession(attached.SerializeToString(), providers=["CPUExecutionProvider"])
    return float(session.run([LOSS_OUTPUT], {"x": X, SOFT_TARGET: target})[0])


def test_the_class_scores_are_read_on_the_sigmoids_input_and_a_transposed_head_on_its_scores():
    assert class_logits(head_model(), "y", True, K) == "logits"
    assert class_logits(head_model(), "y", True, K + 1) is None  # not the class part of the output
    assert class_logits(head_model(anchors_last=False), "yt", False, K) is None


def decoded(anchors: int, size: int, raw: bool = False) -> np.ndarray:
    """Outputs [2, 4+K, anchors] of a head over a `size` image: box centres spread over the image and sizes in
    pixels, or (`raw`) YOLOX's undecoded offsets within a cell and log sizes."""
    rng = np.random.default_rng(3)
    out = rng.uniform(0, 1, (2, 4 + K, anchors)).astype(np.float32)
    if raw:
        out[:, 2:4] = np.log(rng.uniform(0.2, 3, (2, 2, anchors)))
    else:
        out[:, :2] *= size
        out[:, 2:4] *= size / 4
    return out


def test_a_head_with_one_anchor_per_cell_of_the_stride_8_16_32_grids_is_distilled_as_detections():
    anchors = 64 + 16 + 4  # a 64 x 64 image
    found = detection_head(head_model(anchors=anchors), "y", decoded(anchors, 64), (64, 64))
    assert found == DetectionHead(True, K, 64 / 32, "logits")
    flipped = detection_head(head_model(False, anchors), "yt", decoded(anchors, 64).transpose(0, 2, 1), (64, 64))
    assert flipped == DetectionHead(False, K, 64 / 32, None)
    assert detection_head(head_model(anchors=anchors), "y", decoded(anchors, 64), (72, 64)) is None
    assert detection_head(head_model(), "y", decoded(A, 64), (64, 64)) is None
    # a raw head (YOLOX without its decoding: cell offsets, log sizes) has its box channels compared as they are
    raw = detection_head(head_model(anchors=anchors), "y", decoded(anchors, 64, raw=True), (64, 64))
    assert raw == DetectionHead(True, K, None, "logits", objectness=True)
    # decoded YOLOX: boxes in pixels, an objectness low on most anchors and class scores that are not
    yolox = decoded(anchors, 64)
    yolox[:, 4] *= 0.001
    assert detection_head(head_model(anchors=anchors), "y", yolox, (64, 64)) == DetectionHead(
        True, K, 64 / 32, "logits", objectness=True)
    yolov8 = decoded(anchors, 64)
    yolov8[:, 4:] *= 0.001  # every score low where there is no object
    assert not detection_head(head_model(anchors=anchors), "y", yolov8, (64, 64)).objectness


@pytest.mark.parametrize("anchors_last", [True, False])
def test_the_loss_is_zero_for_a_student_equal_to_its_teacher(anchors_last):
    model = head_model(anchors_last)
    own = forward(X, W_BOX, W_CLS).astype(np.float32)
    target = own if anchors_last else own.transpose(0, 2, 1)
    assert abs(loss_of(model, target, spec(model, anchors_last))) < 1e-6
    assert loss_of(model, teacher() if anchors_last else teacher().transpose(0, 2, 1),
                   spec(model, anchors_last)) > 0.1


@pytest.mark.parametrize("anchors_last", [True, False])
def test_the_loss_is_the_confidence_weighted_box_error_plus_the_class_kl(anchors_last):
    model = head_model(anchors_last)
    t = teacher()
    got = loss_of(model, t if anchors_last else t.transpose(0, 2, 1), spec(model, anchors_last))
    assert got == pytest.approx(reference(forward(X, W_BOX, W_CLS), t), rel=1e-4)


def test_a_raw_heads_boxes_are_compared_as_they_are():
    model = head_model()
    t = teacher()
    raw = LossSpec("regress", "y", 0.0, 1.0, rank=3, detection=DetectionHead(True, K, None, "logits"))
    got = loss_of(model, t, raw)
    assert got == pytest.approx(reference(forward(X, W_BOX, W_CLS), t, floor=None), rel=1e-4)
    assert got != pytest.approx(reference(forward(X, W_BOX, W_CLS), t), rel=1e-2)  # not in units of box size


def test_a_raw_yolox_head_weighs_anchors_by_objectness_times_the_best_class_score():
    model = head_model()
    t = teacher()
    raw = LossSpec("regress", "y", 0.0, 1.0, rank=3, detection=DetectionHead(True, K, None, "logits", True))
    got = loss_of(model, t, raw)
    assert got == pytest.approx(reference(forward(X, W_BOX, W_CLS), t, None, objectness=True), rel=1e-4)
    assert got != pytest.approx(reference(forward(X, W_BOX, W_CLS), t, None), rel=1e-2)


def test_an_empty_yolox_anchor_with_a_high_class_score_costs_almost_nothing():
    """Objectness 0.001 and class 0.9 (an empty anchor, YOLOX's class scores being conditional on an object):
    its box error weighs 900 times less than at objectness 0.9 and the same class score."""
    passthrough = make_model([helper.make_node("Identity", ["x"], ["y"])], [value("x", ["N", 4 + K, A])],
                             [value("y", ["N", 4 + K, A])], [])
    t = np.zeros((1, 4 + K, A), np.float32)
    t[0, 4] = 0.001
    t[0, 5:] = 0.9
    t[0, 4, 2] = 0.9
    head = LossSpec("regress", "y", 0.0, 1.0, rank=3, detection=DetectionHead(True, K, None, None, True))
    session = onnxruntime.InferenceSession(attach_loss(passthrough, head).SerializeToString(),
                                           providers=["CPUExecutionProvider"])

    def shifted(anchor: int) -> float:
        y = t.copy()
        y[0, 0, anchor] += 0.5
        return float(session.run([LOSS_OUTPUT], {"x": y, SOFT_TARGET: t})[0]) - float(
            session.run([LOSS_OUTPUT], {"x": t, SOFT_TARGET: t})[0])

    assert shifted(2) / shifted(4) == pytest.approx(900.0, rel=1e-2)


def test_box_errors_count_in_proportion_to_the_teachers_confidence():
    """The same box error costs 90 times more at an anchor the teacher scores 0.9 than at one it scores 0.01."""
    passthrough = make_model([helper.make_node("Identity", ["x"], ["y"])], [value("x", ["N", 4 + K, A])],
                             [value("y", ["N", 4 + K, A])], [])
    t = np.zeros((1, 4 + K, A), np.float32)
    t[0, :4] = 50.0
    t[0, 4:] = 0.001
    t[0, 5, 2], t[0, 6, 4] = 0.9, 0.01
    head = LossSpec("regress", "y", 0.0, 1.0, rank=3, detection=DetectionHead(True, K, FLOOR, None))
    session = onnxruntime.InferenceSession(attach_loss(passthrough, head).SerializeToString(),
                                           providers=["CPUExecutionProvider"])

    def shifted(anchor: int | None) -> float:
        y = t.copy()
        if anchor is not None:
            y[0, 0, anchor] += 5.0
        return float(session.run([LOSS_OUTPUT], {"x": y, SOFT_TARGET: t})[0]) - (
            0.0 if anchor is None else shifted(None))  # less the float32 rounding of the equal class scores

    assert shifted(2) / shifted(4) == pytest.approx(90.0, rel=1e-3)
    assert shifted(2) == pytest.approx(0.9 * (5.0 / 50.0) ** 2 / max(t[0, 4:].max(axis=0).sum(), 1.0), rel=1e-4)


@pytest.mark.parametrize("anchors_last, opset", [(True, None), (False, 11)])
def test_its_gradient_matches_finite_differences(tmp_path, anchors_last, opset):
    # a transposed head is distilled on its probabilities, whose bounds must not need ClipGrad (opset 11 lacks
    # the LessOrEqual it is built with: YOLOX exports)
    model = head_model(anchors_last, opset=opset)
    attached = attach_loss(model, spec(model, anchors_last))
    del attached.graph.output[1:]
    with captured_stderr():
        artifacts.generate_artifacts(attached, requires_grad=["wb", "wc"], frozen_params=[], loss=None,
                                     artifact_directory=str(tmp_path))
        state = api.CheckpointState.load_checkpoint(str(tmp_path / "checkpoint"))
        module = api.Module(str(tmp_path / "training_model.onnx"), state, str(tmp_path / "eval_model.onnx"))
        module.train()
        module(X, teacher() if anchors_last else teacher().transpose(0, 2, 1))
    t = teacher().astype(np.float64)
    weights = {"wb": W_BOX.astype(np.float64), "wc": W_CLS.astype(np.float64)}
    for name in weights:
        expected = central_difference(lambda: reference(forward(X.astype(np.float64), weights["wb"], weights["wc"]),
                                                        t), weights[name])
        got = np.array(state.parameters[name].grad, np.float64)
        assert np.abs(expected).max() > 1e-3
        np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-4 * np.abs(expected).max(), err_msg=name)


def yolo_detector(size: int = 64) -> onnx.ModelProto:
    """x[N, 3, size, size] -> one strided Conv per stride 8, 16, 32 to 4+K channels -> anchors concatenated ->
    boxes (offsets from each cell's centre and size, in pixels) and Sigmoid class scores concatenated:
    [N, 4+K, anchors], as ultralytics exports its heads."""
    rng = np.random.default_rng(4)
    nodes, parts = [], []
    inits = [tensor("shape", np.array([0, 4 + K, -1], np.int64)), tensor("sizes", np.array([4, K], np.int64))]
    for s in (8, 16, 32):
        inits.append(tensor(f"w{s}", (0.1 * rng.standard_normal((4 + K, 3, s, s))).astype(np.float32)))
        nodes += [helper.make_node("Conv", ["x", f"w{s}"], [f"c{s}"], strides=[s, s]),
                  helper.make_node("Reshape", [f"c{s}", "shape"], [f"r{s}"])]
        parts.append(f"r{s}")
    centres = [((j + 0.5) * s, (i + 0.5) * s, s, s) for s in (8, 16, 32)
               for i in range(size // s) for j in range(size // s)]
    inits.append(tensor("grid", np.array(centres, np.float32).T[None]))
    nodes += [helper.make_node("Concat", parts, ["raw"], axis=2),
              helper.make_node("Split", ["raw", "sizes"], ["offsets", "logits"], axis=1),
              helper.make_node("Add", ["offsets", "grid"], ["box"]),
              helper.make_node("Sigmoid", ["logits"], ["scores"]),
              helper.make_node("Concat", ["box", "scores"], ["y"], axis=1)]
    return make_model(nodes, [value("x", ["N", 3, size, size])], [value("y", ["N", 4 + K, "A"])], inits)


def test_compress_distils_a_yolo_head_with_the_detection_loss_on_its_logits():
    import onnx_dns

    images = np.random.default_rng(5).standard_normal((16, 3, 64, 64)).astype(np.float32)
    built = []

    def progress(event: dict) -> None:
        if event["event"] == "built":  # read while the temporary work folder exists
            built.append(onnx.load(str(event["artifacts"].training_model)).graph)

    onnx_dns.compress(yolo_detector(), {"x": images}, target="1.5x", iterations=2, batch_size=4, progress=progress)
    graph = built[0]
    nodes = {n.name: n for n in graph.node}
    assert "dns_loss_det_box_w" in nodes and "dns_loss_det_kl" in nodes  # not the per-channel MSE
    assert nodes["dns_loss_det_relu"].input[0] == "logits"


def test_a_decoded_yolox_head_is_scored_on_objectness_times_class():
    """Empty anchors of a YOLOX head score 0.5 on their class but ~0 on objectness: no detections there."""
    from onnx_dns.fidelity import BoxesReproduced

    head = decoded(84, 64)
    head[:, 4] = 0.001
    head[:, 5:] = 0.5
    head[:, 4, 10], head[:, 5, 10] = 0.9, 0.9  # one object per image
    measure = BoxesReproduced()
    measure.add(head, head)
    assert measure.objectness and measure.original == 2 and measure.percent == 100.0
    moved = head.copy()
    moved[:, 4, 10] = 0.1  # its objectness falls below the threshold: 0.1 x 0.9 < 0.25
    measure = BoxesReproduced()
    measure.add(moved, head)
    assert measure.original == 2 and measure.matched == 0
