"""Which outputs are YOLO detection heads, and how to distil one (`detection_loss`).

A head [B, 4+K, A] (or [B, A, 4+K]) has one anchor per cell of the stride 8, 16 and 32 grids over the image. It
holds boxes in pixels (ultralytics' exports decode them), or, exported without its decoding, YOLOX's raw offsets
within a cell and log sizes with objectness and class scores in [0, 1] (`fidelity.raw_yolox_side`).
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from onnx_dns.detection_loss import FLOOR_FRACTION, DetectionHead, class_logits
from onnx_dns.fidelity import YOLO_STRIDES, has_objectness, in_pixels, raw_yolox_side


def yolo_layout(shape: tuple[int, ...], size: tuple[int, int] | None) -> bool | None:
    """Whether an output [B, 4+K, A] (True) or [B, A, 4+K] (False) has exactly one anchor per cell of the
    stride 8, 16 and 32 grids over an image of `size`; None when it has not."""
    if size is None or len(shape) != 3:
        return None
    anchors = sum(math.ceil(size[0] / s) * math.ceil(size[1] / s) for s in YOLO_STRIDES)
    if shape[2] == anchors and shape[1] >= 5:
        return True
    return False if shape[1] == anchors and shape[2] >= 5 else None


def is_yolo_head(sample: np.ndarray, size: tuple[int, int] | None) -> bool:
    """Whether outputs are a YOLO head (`yolo_layout`) with boxes in pixels: centres across the image and sizes
    of no less than 0. A raw head (YOLOX exported without its decoding: offsets within a cell and log sizes)
    holds no boxes to score."""
    layout = yolo_layout(sample.shape, size)
    return layout is not None and in_pixels(_anchors_last(sample, layout), size)


def is_raw_yolox(sample: np.ndarray, size: tuple[int, int] | None) -> bool:
    """Whether outputs are a raw YOLOX head (`fidelity.raw_yolox_side`) over a square image of `size`, which the
    boxes measure decodes."""
    layout = yolo_layout(sample.shape, size)
    return layout is not None and raw_yolox_side(_anchors_last(sample, layout)) == size[0] == size[1]


def detection_head(model: onnx.ModelProto, output: str, sample: np.ndarray,
                   size: tuple[int, int] | None) -> DetectionHead | None:
    """How to distil `output` (the original's `sample` of it, batch first) as a YOLO head (`yolo_layout`), its
    boxes in units of their size when they are in pixels, as they are in a raw YOLOX head (whose first score is
    its objectness), with the logits of its class scores when a Sigmoid makes them; None when it is neither."""
    anchors_last = yolo_layout(sample.shape, size)
    if anchors_last is None:
        return None
    classes = sample.shape[1 if anchors_last else 2] - 4
    logits = class_logits(model, output, anchors_last, classes)
    head = _anchors_last(sample, anchors_last)
    if in_pixels(head, size):
        return DetectionHead(anchors_last, classes, FLOOR_FRACTION * max(size), logits, has_objectness(head))
    if raw_yolox_side(head) is not None:
        return DetectionHead(anchors_last, classes, None, logits, objectness=True)
    return None  # neither boxes in pixels nor a raw head's offsets and scores: a plain regression


def _anchors_last(sample: np.ndarray, layout: bool) -> np.ndarray:
    return sample if layout else np.moveaxis(sample, 2, 1)
