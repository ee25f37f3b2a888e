"""Distillation loss for a YOLO-style detection head, written as plain ONNX nodes.

The head y is [B, 4 + K, A] (or [B, A, 4 + K], transposed first): per anchor a, a box cx, cy, w, h in pixels and
K class scores in [0, 1]; t is the original model's output. Almost every anchor scores ~0 and the few that
score high carry all the detections, so a plain mean squared error on y is ruled by the box pixels of anchors
nobody reads. Instead, with c_ba = max_k t_bka the teacher's confidence in anchor a of image b:

    box = sum_ba c_ba * sum_j ((y_jba - t_jba) / s_jba)^2,   s = max(teacher's w (for cx, w) or h (cy, h), floor)
    cls = sum_ba (c_ba + e) * sum_k KL(Bernoulli(t_bka) || Bernoulli(sigmoid(z_bka)))
        = sum_ba (c_ba + e) * sum_k softplus(z) - t z + t log t + (1 - t) log(1 - t)
    loss = weight * (box + cls) / max(sum_ba c_ba, 1)

Box errors are measured in units of the teacher's own box size, as IoU measures them (the floor, a fraction
of the image size, bounds the error of anchors whose teacher box is degenerate); a raw head (YOLOX exported
without its decoding: offsets within a cell and log sizes, in units of its stride already) compares them as
they are, s = 1, its K scores being the objectness and the class scores, and its confidence c_ba the
objectness times the best class score, as YOLOX scores a detection (its class scores are conditional on an
object: on ddddocr's detector their median over all anchors is 0.47, so their maximum alone weighted the box
errors of the ~99% of empty anchors as much as those of the text). Errors count in proportion to
how confident the teacher is that the anchor holds an object. Class scores are distilled as binary
cross-entropy less the teacher's entropy (0 for a student equal to its teacher), anchor by anchor weighted as
the boxes are, plus e = 0.01 so that an anchor the teacher leaves empty may not light up unnoticed (unweighted,
on a YOLOv8n pruned to 1.4x, the drift of the ~1e-4 scores of the anchors the teacher scores below 0.01
outweighed that of the anchors it scores 0.25 or more 5.5 to 1; weighted, the objects outweigh them 6 to 1).
They are read on the logits z when the scores come out of a Sigmoid (z = the Sigmoid's input: softplus(z) =
Relu(z) + log(1 + exp(-|z|)) never overflows), else on z = log(p / (1 - p)) of the clipped scores. Dividing
by the teacher's total confidence (YOLOv8's target_scores_sum) makes the loss a mean over the objects in the
batch, not over the anchors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from onnx_dns.graph import attribute, axes_are_input, inferred_values, producers, source

BOX = 4
ENTROPY_EPS = 1e-30  # t log t is computed as t log max(t, eps): 0 where t is 0
SCORE_CLIP = 1e-6  # scores read without their logits are clipped to [eps, 1 - eps] before the logit
FLOOR_FRACTION = 1 / 32  # of the image's longer side: the smallest box size an error is measured against
EMPTY_WEIGHT = 0.01  # the weight of an anchor's class scores beyond the teacher's confidence in it


@dataclass(frozen=True)
class DetectionHead:
    """How to read a YOLO head: `anchors_last` for [B, 4+K, A]; `logits` the tensor of class logits (laid out
    as the head) or None to take the logits of the scores; `floor` in pixels (`FLOOR_FRACTION` of the image),
    None for a raw head whose box channels are compared as they are; `objectness` when the first score is an
    objectness (YOLOX), an anchor's confidence then being objectness times its best class score."""

    anchors_last: bool
    classes: int
    floor: float | None
    logits: str | None = None
    objectness: bool = False


def class_logits(model: onnx.ModelProto, output: str, anchors_last: bool, classes: int) -> str | None:
    """The input of the Sigmoid that makes the class scores of `output`: its producer (through Identity) is a
    Concat along the channel axis whose last input, of `classes` channels, is a Sigmoid's output. Else None."""
    made_by = producers(model.graph)
    concat = source(made_by, output, ("Identity",))
    if concat is None or concat.op_type != "Concat":
        return None
    axis = attribute(concat, "axis", 0)
    if axis not in ((1, -2) if anchors_last else (2, -1)):
        return None
    sigmoid = source(made_by, concat.input[-1], ("Identity",))
    if sigmoid is None or sigmoid.op_type != "Sigmoid":
        return None
    value = inferred_values(model).get(sigmoid.input[0])
    dims = value.type.tensor_type.shape.dim if value is not None else []
    if len(dims) != 3 or dims[axis].dim_value != classes:
        return None
    return sigmoid.input[0]


class DetectionTerms:
    """Appends the nodes of the detection loss to a loss builder (`losses._LossBuilder`)."""

    def __init__(self, builder, opset: int) -> None:
        self.b = builder
        self.opset = opset

    def ints(self, name: str, values: list[int]) -> str:
        full = f"dns_loss_det_{name}"
        self.b.graph.initializer.append(numpy_helper.from_array(np.array(values, np.int64), full))
        return full

    def channels(self, x: str, start: int, end: int, name: str) -> str:
        starts, ends, axes = self.ints(f"{name}_start", [start]), self.ints(f"{name}_end", [end]), self.ints(
            f"{name}_axis", [1])
        return self.b.node("Slice", [x, starts, ends, axes], f"det_{name}")

    def max_over_classes(self, scores: str) -> str:
        if axes_are_input("ReduceMax", self.opset):
            return self.b.node("ReduceMax", [scores, self.ints("class_axis", [1])], "det_conf", keepdims=1)
        return self.b.node("ReduceMax", [scores], "det_conf", axes=[1], keepdims=1)

    def confidence(self, t: str, scores_t: str, head: DetectionHead) -> str:
        """The teacher's confidence in each anchor [B, 1, A]: its best score, or with an objectness, objectness
        times the best class score (YOLOX's class scores are high on empty anchors too)."""
        if not head.objectness:
            return self.max_over_classes(scores_t)
        end = BOX + head.classes
        best = self.max_over_classes(self.channels(t, BOX + 1, end, "classes_t"))
        return self.b.node("Mul", [self.channels(t, BOX, BOX + 1, "objectness_t"), best], "det_conf_obj")

    def anchors_last(self, x: str, head: DetectionHead, name: str) -> str:
        return x if head.anchors_last else self.b.node("Transpose", [x], f"det_{name}_t", perm=[0, 2, 1])

    def build(self, output: str, target: str, head: DetectionHead, weight: float) -> str:
        """The weighted loss of `output` against the teacher's `target` (both as the head lays them out)."""
        b = self.b
        y, t = self.anchors_last(output, head, "y"), self.anchors_last(target, head, "t")
        end = BOX + head.classes
        box_y, box_t = self.channels(y, 0, BOX, "box_y"), self.channels(t, 0, BOX, "box_t")
        scores_t = self.channels(t, BOX, end, "scores_t")
        conf = self.confidence(t, scores_t, head)
        diff = b.node("Sub", [box_y, box_t], "det_box_diff")
        if head.floor is not None:
            size = b.node("Max", [self.channels(box_t, 2, BOX, "size_t"), b.const("det_floor", head.floor)],
                          "det_size")
            diff = b.node("Div", [diff, b.node("Concat", [size, size], "det_scale", axis=1)], "det_box_rel")
        box = b.node("ReduceSum", [b.node("Mul", [b.node("Mul", [diff, diff], "det_box_sq"), conf], "det_box_w")],
                     "det_box_sum", keepdims=0)
        z = self.logits(y, head)
        anchor = b.node("Add", [conf, b.const("det_empty", EMPTY_WEIGHT)], "det_anchor_w")
        cls = b.node("ReduceSum", [b.node("Mul", [self.bernoulli_kl(z, scores_t), anchor], "det_kl_w")],
                     "det_cls_sum", keepdims=0)
        total = b.node("ReduceSum", [conf], "det_conf_sum", keepdims=0)
        norm = b.node("Max", [total, b.const("det_one", 1.0)], "det_norm")
        mean = b.node("Div", [b.node("Add", [box, cls], "det_sum"), norm], "det_mean")
        return b.node("Mul", [mean, b.const("det_weight", weight)], "det_term")

    def logits(self, y: str, head: DetectionHead) -> str:
        b = self.b
        if head.logits is not None:
            return self.anchors_last(head.logits, head, "z")
        # Max and Min, not Clip: ClipGrad is built with LessOrEqual, which an opset-11 graph lacks (YOLOX)
        low = b.node("Max", [self.channels(y, BOX, BOX + head.classes, "scores_y"), b.const("det_low", SCORE_CLIP)],
                     "det_p_low")
        p = b.node("Min", [low, b.const("det_high", 1 - SCORE_CLIP)], "det_p")
        q = b.node("Sub", [b.const("det_unit", 1.0), p], "det_q")
        return b.node("Sub", [b.node("Log", [p], "det_log_p"), b.node("Log", [q], "det_log_q")], "det_z")

    def bernoulli_kl(self, z: str, t: str) -> str:
        """softplus(z) - t z + t log t + (1 - t) log(1 - t), elementwise."""
        b = self.b
        exp = b.node("Exp", [b.node("Neg", [b.node("Abs", [z], "det_abs")], "det_neg_abs")], "det_exp")
        log1p = b.node("Log", [b.node("Add", [b.const("det_one_p", 1.0), exp], "det_one_plus")], "det_log1p")
        softplus = b.node("Add", [b.node("Relu", [z], "det_relu"), log1p], "det_softplus")
        cross = b.node("Sub", [softplus, b.node("Mul", [t, z], "det_tz")], "det_cross")
        eps = b.const("det_eps", ENTROPY_EPS)
        t_log_t = b.node("Mul", [t, b.node("Log", [b.node("Max", [t, eps], "det_t_safe")], "det_log_t")], "det_tlt")
        u = b.node("Sub", [b.const("det_unit_t", 1.0), t], "det_u")
        u_log_u = b.node("Mul", [u, b.node("Log", [b.node("Max", [u, eps], "det_u_safe")], "det_log_u")], "det_ulu")
        return b.node("Add", [cross, b.node("Add", [t_log_t, u_log_u], "det_entropy")], "det_kl")
