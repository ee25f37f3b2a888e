"""Task-aware fidelity: each measure against small hand-computed cases, its streaming over batches, and the
automatic choice on small built graphs (whole runs: test_fidelity_runs.py)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from graphs import make_model, run, tensor, value
from onnx import helper

from onnx_dns.dataset import Dataset
from onnx_dns.errors import OptionError
from onnx_dns.evaluate import Metrics, compute_metrics, measure
from onnx_dns.fidelity import BoxesReproduced, CosineSimilarity, DecisionOverlap, detections, matched
from onnx_dns.objective import choose_fidelity
from onnx_dns.selection import within_bound


def head(boxes: list[tuple[float, float, float, float, int, float]], classes: int = 2,
         anchors: int = 8) -> np.ndarray:
    """A YOLOv8-style head [4+K, A]: one (cx, cy, w, h, class, score) per anchor, the other anchors empty."""
    out = np.zeros((4 + classes, anchors), np.float32)
    for a, (cx, cy, w, h, cls, score) in enumerate(boxes):
        out[:4, a] = cx, cy, w, h
        out[4 + cls, a] = score
    return out


ORIGINAL = [(10, 10, 4, 4, 0, 0.9),   # kept
            (11, 10, 4, 4, 0, 0.8),   # IoU 12/20 = 0.6 with the first, same class: suppressed by NMS
            (10, 10, 4, 4, 1, 0.7),   # same place, other class: kept (NMS is class-wise)
            (30, 30, 6, 6, 1, 0.3),   # kept
            (50, 50, 4, 4, 0, 0.2)]   # below the 0.25 confidence


def test_detections_apply_confidence_and_class_wise_nms():
    boxes, classes = detections(head(ORIGINAL))
    assert classes.tolist() == [0, 1, 1]
    np.testing.assert_allclose(boxes, [[8, 8, 12, 12], [8, 8, 12, 12], [27, 27, 33, 33]])


def test_a_shifted_box_is_no_longer_reproduced():
    shifted = [*ORIGINAL[:3], (34, 30, 6, 6, 1, 0.3), ORIGINAL[4]]  # IoU 12/60 = 0.2 with the original
    tally = BoxesReproduced()
    tally.add(head(shifted)[None], head(ORIGINAL)[None])
    assert (tally.original, tally.new, tally.matched) == (3, 3, 2)
    assert tally.percent == pytest.approx(200 / 3)
    same = BoxesReproduced()
    same.add(head(ORIGINAL)[None], head(ORIGINAL)[None])
    assert same.percent == 100.0


def test_a_box_of_another_class_is_not_a_match_and_the_layout_may_be_transposed():
    relabelled = [ORIGINAL[0], ORIGINAL[1], ORIGINAL[2], (30, 30, 6, 6, 0, 0.3)]
    tally = BoxesReproduced()
    tally.add(head(relabelled)[None].transpose(0, 2, 1), head(ORIGINAL)[None].transpose(0, 2, 1))
    assert (tally.original, tally.matched) == (3, 2)


def test_matching_is_one_to_one():
    # two original boxes (IoU 60/140 = 0.43, both kept) each overlap one new box at IoU 80/120 = 0.67
    original = detections(head([(5, 5, 10, 10, 0, 0.9), (9, 5, 10, 10, 0, 0.8)]))
    new = detections(head([(7, 5, 10, 10, 0, 0.9)]))
    assert len(original[0]) == 2 and matched(original, new) == 1


def test_no_detection_on_either_side_is_full_fidelity_and_only_new_ones_are_none():
    empty = head([])[None]
    both = BoxesReproduced()
    both.add(empty, empty)
    assert both.percent == 100.0
    spurious = BoxesReproduced()
    spurious.add(head([ORIGINAL[0]])[None], empty)
    assert spurious.percent == 0.0


def test_decision_overlap_is_dice_at_one_half():
    original = np.array([[0.9, 0.2, 0.7, 0.6, 0.5]])
    new = np.array([[0.8, 0.6, 0.1, 0.7, 0.4]])
    tally = DecisionOverlap()
    tally.add(new, original)  # A = {0, 2, 3}, B = {0, 1, 3}; 0.5 itself is not above the threshold
    assert tally.percent == pytest.approx(100 * 2 * 2 / (3 + 3))
    empty = DecisionOverlap()
    empty.add(np.zeros((2, 3)), np.full((2, 3), 0.5))
    assert empty.percent == 100.0


def test_decision_overlap_sums_over_batches_instead_of_averaging_them():
    tally = DecisionOverlap()
    tally.add(np.array([[0.9, 0.9, 0.9]]), np.array([[0.9, 0.9, 0.9]]))  # 3 of 3
    tally.add(np.array([[0.9, 0.1, 0.1]]), np.array([[0.1, 0.1, 0.1]]))  # 0 of 1
    assert tally.percent == pytest.approx(100 * 2 * 3 / (4 + 3))  # not the mean of 100 and 0


def test_cosine_similarity_per_vector():
    original = np.array([[[1, 0], [0, 0], [1, 2], [0, 0]]], np.float32)
    new = np.array([[[1, 1], [0, 0], [-1, -2], [1, 0]]], np.float32)
    tally = CosineSimilarity()
    tally.add(new, original)  # 1/sqrt(2), both zero: 1, opposite: -1, one zero: 0
    assert tally.percent == pytest.approx(100 * (2 ** -0.5 + 1 - 1 + 0) / 4)
    scaled = CosineSimilarity()
    scaled.add(3 * original + 0.0, original)
    assert scaled.percent == pytest.approx(100.0)


def test_metrics_name_the_measure_and_score_it():
    original = np.random.default_rng(0).uniform(size=(4, 1, 6, 6)).astype(np.float32)
    flipped = original.copy()
    flipped[:, :, :2] = 1 - flipped[:, :, :2]  # a third of the map decides the other way
    metrics = compute_metrics("regress", flipped, None, original, "decisions")
    a, b = original > 0.5, flipped > 0.5
    assert metrics.fidelity == pytest.approx(200 * np.sum(a & b) / (a.sum() + b.sum())) and metrics.fidelity < 80
    assert metrics.score == metrics.fidelity and metrics.measure == "decisions"
    assert metrics.describe().startswith("decision overlap at 0.5 ") and metrics.relative_error > 0
    itself = compute_metrics("regress", original, None, original, "decisions")
    assert itself.score == 100.0
    plain = compute_metrics("regress", flipped, None, original)
    assert plain.measure == "relative-error" and plain.score == -plain.relative_error


def test_the_bound_reads_the_task_measure_not_the_relative_error():
    baseline = Metrics("regress", 10, fidelity=100.0, relative_error=0.0, measure="boxes")
    kept_boxes = Metrics("regress", 10, fidelity=100.0, relative_error=26.0, measure="boxes")
    lost_boxes = Metrics("regress", 10, fidelity=90.0, relative_error=1.0, measure="boxes")
    assert within_bound(kept_boxes, baseline, 5.0) and not within_bound(lost_boxes, baseline, 5.0)
    assert kept_boxes.describe() == "detections reproduced 100.00%"


def test_a_missed_bound_says_what_fell_in_the_measures_own_words():
    boxes = Metrics("regress", 10, fidelity=90.0, relative_error=1.0, measure="boxes")
    assert boxes.fall_from(Metrics("regress", 10, fidelity=100.0, measure="boxes")) == \
        "detections reproduced dropped 10.00 points"
    error = Metrics("regress", 10, relative_error=20.5, measure="relative-error")
    assert error.fall_from(Metrics("regress", 10, relative_error=0.0, measure="relative-error")) == \
        "relative error rose 20.50 points"  # not "accuracy dropped": an error that grows
    agreement = Metrics("classify", 10, fidelity=84.0, positions=40)
    assert agreement.fall_from(Metrics("classify", 10, fidelity=100.0, positions=40)) == \
        "per-position agreement with the original dropped 16.00 points"
    labelled = Metrics("classify", 10, top1=95.5)
    assert labelled.fall_from(Metrics("classify", 10, top1=99.0)) == "top-1 accuracy dropped 3.50 points"


def test_measure_streams_batches_to_the_same_figure():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((10, 3, 20)).astype(np.float32)
    data = Dataset({"x": x}, None, "arrays")
    noisy = lambda feed: feed["x"] + 0.5 * np.sin(feed["x"])  # noqa: E731
    streamed = measure(noisy, data, "regress", 3, reference=lambda feed: feed["x"], fidelity="cosine")
    y = noisy({"x": x})
    cos = np.sum(x * y, -1) / np.linalg.norm(x, axis=-1) / np.linalg.norm(y, axis=-1)
    assert streamed.fidelity == pytest.approx(100 * cos.mean()) and streamed.samples == 10


# ---------------------------------------------------------------- the automatic choice


def conv_model(last: str | None, width: int = 8, extra: list[onnx.NodeProto] = ()) -> onnx.ModelProto:
    """x[N, 2, 8, width] -> Conv 3x3 to one channel -> `last` (none: the Conv's output) -> `extra`."""
    w = np.random.default_rng(0).standard_normal((1, 2, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["z"], pads=[1, 1, 1, 1])]
    out = "z"
    if last is not None:
        nodes.append(helper.make_node(last, ["z"], ["p"]))
        out = "p"
    for node in extra:
        nodes.append(node)
        out = node.output[0]
    return make_model(nodes, [value("x", ["N", 2, 8, width])], [value(out, None)], [tensor("w", w)], check=False)


def auto(model: onnx.ModelProto, feed: dict[str, np.ndarray], labels=None, task: str = "regress") -> str:
    output = model.graph.output[-1].name
    return choose_fidelity("auto", model, output, task, labels, run(model, feed)[-1], feed)


X = {"x": np.random.default_rng(2).standard_normal((2, 2, 8, 8)).astype(np.float32)}


def test_auto_scores_a_sigmoid_map_by_decisions():
    assert auto(conv_model("Sigmoid"), X) == "decisions"
    reshape = helper.make_node("Flatten", ["p"], ["flat"])
    assert auto(conv_model("HardSigmoid", extra=[reshape]), X) == "decisions"
    assert auto(conv_model(None), X) == "relative-error"
    assert auto(conv_model("Sigmoid"), X, labels=np.zeros((2, 1, 8, 8), np.float32)) == "relative-error"


def test_auto_scores_a_mean_of_sigmoids_by_decisions_as_silero_op18_writes_its_vad_output():
    mean = conv_model("Sigmoid", extra=[helper.make_node("ReduceMean", ["p"], ["m"], axes=[2, 3], keepdims=0)])
    assert auto(mean, X) == "decisions"
    summed = conv_model("Sigmoid", extra=[helper.make_node("ReduceSum", ["p", "axes"], ["m"], keepdims=0)])
    summed.graph.initializer.append(tensor("axes", np.array([2, 3], np.int64)))
    assert auto(summed, X) == "relative-error"  # a sum of probabilities is not one


def test_auto_does_not_take_the_rows_of_a_convolution_for_feature_vectors():
    wide = {"x": np.random.default_rng(3).standard_normal((2, 2, 8, 32)).astype(np.float32)}
    assert auto(conv_model("Relu", width=32), wide) == "relative-error"


def yolo_model(size: int, strides: tuple[int, ...] = (8, 16, 32), transpose: bool = False,
               decode: bool = True) -> onnx.ModelProto:
    """x[N, 3, size, size] -> one strided Conv per stride to 4+2 channels -> flattened -> Concat over anchors ->
    (`decode`) plus each cell's centre and stride on the box channels, so boxes are in pixels."""
    rng = np.random.default_rng(4)
    nodes, inits, parts = [], [tensor("shape", np.array([0, 6, -1], np.int64))], []
    for s in strides:
        inits.append(tensor(f"w{s}", (0.05 * rng.standard_normal((6, 3, s, s))).astype(np.float32)))
        nodes += [helper.make_node("Conv", ["x", f"w{s}"], [f"c{s}"], strides=[s, s]),
                  helper.make_node("Reshape", [f"c{s}", "shape"], [f"r{s}"])]
        parts.append(f"r{s}")
    nodes.append(helper.make_node("Concat", parts, ["raw" if decode else "y"], axis=2))
    if decode:
        cells = [((j + 0.5) * s, (i + 0.5) * s, s, s, 0, 0) for s in strides
                 for i in range(size // s) for j in range(size // s)]
        inits.append(tensor("grid", np.array(cells, np.float32).T[None]))
        nodes.append(helper.make_node("Add", ["raw", "grid"], ["y"]))
    if transpose:
        nodes.append(helper.make_node("Transpose", ["y"], ["yt"], perm=[0, 2, 1]))
    return make_model(nodes, [value("x", ["N", 3, size, size])], [value("yt" if transpose else "y", None)], inits,
                      check=False)


def test_auto_recognises_a_yolo_head_by_its_anchor_count_and_its_boxes_in_pixels():
    image = {"x": np.random.default_rng(5).standard_normal((1, 3, 64, 64)).astype(np.float32)}
    assert run(yolo_model(64), image)[0].shape == (1, 6, 64 + 16 + 4)
    assert auto(yolo_model(64), image) == "boxes"
    assert auto(yolo_model(64, transpose=True), image) == "boxes"
    assert auto(yolo_model(64, strides=(8, 16)), image) != "boxes"  # 80 anchors, not 84
    # channels neither in pixels nor a raw YOLOX head's offsets and scores in [0, 1]: no boxes to count
    assert auto(yolo_model(64, decode=False), image) != "boxes"


def raw_yolox(col: int = 3) -> np.ndarray:
    """A raw YOLOX head [1, 5+1, 84] over a 64 x 64 image with one object in the stride 8 cell of row 2 and
    column `col`: offsets 0.5, log size log 2 (16 pixels), objectness 0.9, class 0.8."""
    head = np.zeros((1, 6, 84), np.float32)
    head[0, 4] = 0.01
    anchor = 2 * 8 + col  # stride 8 grid of 8 x 8 cells first, row by row
    head[0, :, anchor] = [0.5, 0.5, np.log(2.0), np.log(2.0), 0.9, 0.8]
    return head


def test_a_raw_yolox_head_is_decoded_before_its_boxes_are_counted():
    from onnx_dns.fidelity import decode_yolox
    boxes, classes = detections(decode_yolox(raw_yolox(), 64)[0])
    np.testing.assert_allclose(boxes, [[20.0, 12.0, 36.0, 28.0]])  # centre (3.5 * 8, 2.5 * 8), 16 pixels wide
    same, moved = BoxesReproduced(), BoxesReproduced()
    same.add(raw_yolox(), raw_yolox())
    moved.add(raw_yolox(col=4), raw_yolox())  # one cell on: IoU 1/3
    assert (same.original, same.percent, moved.percent) == (1, 100.0, 0.0)
    image = {"x": np.zeros((1, 3, 64, 64), np.float32)}
    assert choose_fidelity("auto", make_model([], [value("x", ["N", 3, 64, 64])], [value("x", None)], [],
                                              check=False), "x", "regress", None, raw_yolox(), image) == "boxes"


def test_a_pixel_head_over_a_wide_image_is_not_taken_for_a_raw_one():
    # 320 x 1280 has the anchors of a 640 x 640 square (8,400): its centres, in pixels, are not a raw head's
    from onnx_dns.fidelity import raw_yolox_side
    head = np.zeros((1, 6, 8400), np.float32)
    head[0, 0] = np.linspace(4, 1276, 8400)
    head[0, 1] = np.linspace(4, 316, 8400)
    head[0, 2:4] = 16.0
    assert raw_yolox_side(head) is None
    assert raw_yolox_side(decode_free(head)) == 640


def decode_free(head: np.ndarray) -> np.ndarray:
    """The same head as a raw YOLOX one would hold it: offsets within a cell, log sizes, scores in [0, 1]."""
    raw = head.copy()
    raw[0, :2] = 0.5
    raw[0, 2:4] = 0.0
    raw[0, 4:] = 0.1
    return raw


def test_auto_scores_an_embedding_by_cosine():
    w = np.random.default_rng(6).standard_normal((8, 32)).astype(np.float32)
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["e"])], [value("x", ["N", 5, 8])],
                       [value("e", ["N", 5, 32])], [tensor("w", w)])
    tokens = {"x": np.random.default_rng(7).standard_normal((2, 5, 8)).astype(np.float32)}
    assert auto(model, tokens) == "cosine"
    narrow = make_model([helper.make_node("MatMul", ["x", "w"], ["e"])], [value("x", ["N", 5, 8])],
                        [value("e", ["N", 5, 4])], [tensor("w", w[:, :4])])
    assert auto(narrow, tokens) == "relative-error"


def test_a_chosen_measure_is_kept_and_a_classification_refuses_one():
    model = conv_model("Sigmoid")
    sample = run(model, X)[0]
    assert choose_fidelity("cosine", model, "p", "regress", None, sample, X) == "cosine"
    with pytest.raises(OptionError, match="--fidelity boxes scores a regression output.*--task regress"):
        choose_fidelity("boxes", model, "p", "classify", None, sample, X)
    with pytest.raises(OptionError, match="--fidelity 'dice'"):
        choose_fidelity("dice", model, "p", "regress", None, sample, X)


def test_a_pooled_embedding_is_not_taken_for_class_scores():
    from onnx_dns.objective import guess_task

    w = np.random.default_rng(8).standard_normal((8, 32)).astype(np.float32)
    tokens = {"x": np.random.default_rng(9).standard_normal((3, 5, 8)).astype(np.float32)}
    pooled = make_model([helper.make_node("MatMul", ["x", "w"], ["t"]),
                         helper.make_node("ReduceMean", ["t"], ["e"], axes=[1], keepdims=0)],
                        [value("x", ["N", 5, 8])], [value("e", ["N", 32])], [tensor("w", w)], opset=17)
    sample = run(pooled, tokens)[0]
    assert guess_task(pooled, "e", None, sample) == "regress"
    assert choose_fidelity("auto", pooled, "e", "regress", None, sample, tokens) == "cosine"
    logits = make_model([helper.make_node("ReduceMean", ["x"], ["m"], axes=[1], keepdims=0),
                         helper.make_node("MatMul", ["m", "w"], ["e"])],
                        [value("x", ["N", 5, 8])], [value("e", ["N", 32])], [tensor("w", w)], opset=17)
    assert guess_task(logits, "e", None, run(logits, tokens)[0]) == "classify"  # a classifier layer after pooling


def test_a_written_out_softmax_is_taken_for_class_scores_and_an_l2_normalization_for_an_embedding():
    from onnx_dns.objective import guess_task

    w = np.random.default_rng(8).standard_normal((8, 32)).astype(np.float32)
    x = {"x": np.random.default_rng(9).standard_normal((3, 8)).astype(np.float32)}
    axes = tensor("axes", np.array([1], np.int64))
    softmax = make_model([helper.make_node("MatMul", ["x", "w"], ["z"]),  # jax2tf's softmax (magika-v3.3)
                          helper.make_node("ReduceMax", ["z"], ["m"], axes=[1], keepdims=1),
                          helper.make_node("Sub", ["z", "m"], ["s"]), helper.make_node("Exp", ["s"], ["ex"]),
                          helper.make_node("ReduceSum", ["ex", "axes"], ["t"], keepdims=1),
                          helper.make_node("Div", ["ex", "t"], ["p"])],
                         [value("x", ["N", 8])], [value("p", ["N", 32])], [tensor("w", w), axes], opset=17)
    assert guess_task(softmax, "p", None, run(softmax, x)[0]) == "classify"
    normalized = make_model([helper.make_node("MatMul", ["x", "w"], ["z"]),
                             helper.make_node("ReduceL2", ["z"], ["n"], axes=[1], keepdims=1),
                             helper.make_node("Div", ["z", "n"], ["p"])],
                            [value("x", ["N", 8])], [value("p", ["N", 32])], [tensor("w", w)], opset=17)
    assert guess_task(normalized, "p", None, run(normalized, x)[0]) == "regress"
