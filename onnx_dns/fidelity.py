"""Task-aware fidelity of a label-free regression output to the original model's, tallied batch by batch.

Relative error 100 * ||y - t|| / ||t|| punishes changes a task does not see (a probability map that moves from
0.9 to 0.8 everywhere keeps every decision), so an output that a task reads in a known way is scored the task's
way, in percent of the original (the original scores 100 against itself):

- decisions: Dice overlap 200 |A & B| / (|A| + |B|) of the positive decisions, A = {t > 0.5}, B = {y > 0.5}
  over every element of every sample (100 when both are empty): probability maps, masks, VAD frames.
- cosine: mean over vectors of y.t / (||y|| ||t||) along the last axis (1 for two zero vectors, 0 for one):
  embeddings, hidden states.
- boxes: an ultralytics YOLOv8-style head [B, 4+K, A] (or [B, A, 4+K]; the anchor axis is the longer one) of
  cx, cy, w, h and K class scores per anchor. Per image: anchors whose best class score reaches 0.25, class-wise
  greedy NMS at IoU 0.45, at most 300 detections; each of the original's detections, best first, takes the
  best unmatched detection of the same class at IoU >= 0.5. Score: the share of the original's detections so
  reproduced (100 when neither model detects anything, 0 when only the new one does).
  A raw YOLOX head over a square image (exported without its decoding: [B, 5+K, A] of offsets within each cell
  of the stride 8, 16 and 32 grids, log sizes, objectness and K class scores; its boxes are not in pixels) is
  decoded first as YOLOX does: centre (offset + cell) * stride, size exp(log size) * stride, scores objectness
  times class score. A YOLOX head decoded in the graph (boxes in pixels, then objectness and class scores,
  told by an objectness low on most anchors where the best class score is not) is scored on objectness times
  class score too.
  A single-channel probability map instead ([B, 1, H, W] or [B, H, W] whose original values lie in [0, 1], such
  as a DBNet text map) has as detections the bounding boxes of its 4-connected regions of values > 0.5
  (`onnx_dns.regions`), all of one class, the original's taken largest (most pixels) first, ties in the raster
  order of their first pixel, and is scored the same way. The first batch decides which of the two an output is
  (a [B, H, W] head in [0, 1] reads as a map: a YOLO head's pixel coordinates exceed 1).

Each accumulator keeps a few counters, so memory does not grow with the data.
"""

from __future__ import annotations

import numpy as np

from onnx_dns.errors import DataError
from onnx_dns.regions import region_boxes

MEASURES = ("relative-error", "decisions", "cosine", "boxes")
CHOICES = ("auto", *MEASURES)
DECISION_THRESHOLD = 0.5
BOX_CONFIDENCE = 0.25
NMS_IOU = 0.45
MATCH_IOU = 0.5
MAX_DETECTIONS = 300
YOLO_STRIDES = (8, 16, 32)  # the grids a YOLO head has one anchor per cell of
RAW_OFFSET_CELLS = 4  # a raw YOLOX head's centre offsets stay within this many cells; a pixel head's go beyond
OBJECTNESS_LOW = 0.01  # median first score of a head with objectness: most anchors hold no object
CLASS_GIVEN = 0.1  # median best class score there: conditional on an object, so not low where there is none
LABELS = {"decisions": f"decision overlap at {DECISION_THRESHOLD:g}", "cosine": "cosine similarity",
          "boxes": "detections reproduced"}
REGIONS_HINT = "--fidelity boxes judges a one-channel map by its regions"


class DecisionOverlap:
    """Dice overlap of the decisions above 0.5 of two outputs, summed over all batches; `one_channel_map` says
    whether every batch was a map [B, 1, H, W] (which `--fidelity boxes` may judge by its regions instead)."""

    def __init__(self) -> None:
        self.both = self.new = self.original = 0
        self.one_channel_map = False
        self.batches = 0

    def add(self, outputs: np.ndarray, target: np.ndarray) -> None:
        is_map = outputs.ndim == 4 and outputs.shape[1] == 1
        self.one_channel_map = is_map and (self.one_channel_map or not self.batches)
        self.batches += 1
        new, original = outputs > DECISION_THRESHOLD, target.reshape(outputs.shape) > DECISION_THRESHOLD
        self.both += int(np.count_nonzero(new & original))
        self.new += int(np.count_nonzero(new))
        self.original += int(np.count_nonzero(original))

    @property
    def percent(self) -> float:
        total = self.new + self.original
        return 100.0 if total == 0 else 200.0 * self.both / total


class CosineSimilarity:
    """Mean cosine similarity of the vectors along the last axis."""

    def __init__(self) -> None:
        self.total = 0.0
        self.count = 0

    def add(self, outputs: np.ndarray, target: np.ndarray) -> None:
        new = outputs.reshape(-1, outputs.shape[-1]).astype(np.float64)
        original = target.reshape(new.shape).astype(np.float64)
        norms = np.linalg.norm(new, axis=1) * np.linalg.norm(original, axis=1)
        dot = np.einsum("ij,ij->i", new, original)
        both_zero = ~new.any(axis=1) & ~original.any(axis=1)
        cosine = np.where(norms > 0, dot / np.where(norms > 0, norms, 1.0), np.where(both_zero, 1.0, 0.0))
        self.total += float(cosine.sum())
        self.count += len(cosine)

    @property
    def percent(self) -> float:
        return 100.0 * self.total / self.count if self.count else 100.0


class BoxesReproduced:
    """The share of the original's detections (a YOLO head's, or a probability map's regions) that the new
    output reproduces, over all images."""

    def __init__(self) -> None:
        self.original = self.new = self.matched = 0
        self.maps: bool | None = None
        self.raw_side: int | None = None  # the image side of a raw YOLOX head, decoded before it is read
        self.objectness = False  # a decoded YOLOX head: its scores are objectness x class

    def add(self, outputs: np.ndarray, target: np.ndarray) -> None:
        target = target.reshape(outputs.shape)
        if self.maps is None:
            self.maps = is_probability_map(target)
            self.raw_side = None if self.maps else raw_yolox_side(anchors_last(target))
            self.objectness = not self.maps and self.raw_side is None and has_objectness(anchors_last(target))
        if self.maps:
            images, find = zip(image_maps(outputs), image_maps(target)), region_detections
        else:
            heads = [anchors_last(outputs), anchors_last(target)]
            if self.raw_side is not None:
                heads = [decode_yolox(h, self.raw_side) for h in heads]
            elif self.objectness:
                heads = [fold_objectness(h) for h in heads]
            images, find = zip(*heads), detections
        for new, original in images:
            mine, theirs = find(new), find(original)
            self.original += len(theirs[0])
            self.new += len(mine[0])
            self.matched += matched(theirs, mine)

    @property
    def percent(self) -> float:
        if self.original == 0:
            return 100.0 if self.new == 0 else 0.0
        return 100.0 * self.matched / self.original


def accumulator(measure: str) -> DecisionOverlap | CosineSimilarity | BoxesReproduced:
    """The streaming accumulator of a task measure (not relative error, which `Tally` sums itself)."""
    return {"decisions": DecisionOverlap, "cosine": CosineSimilarity, "boxes": BoxesReproduced}[measure]()


def is_probability_map(outputs: np.ndarray) -> bool:
    """Whether a batch of outputs is a single-channel map [B, 1, H, W] or [B, H, W] with values in [0, 1]."""
    shaped = outputs.ndim == 3 or (outputs.ndim == 4 and outputs.shape[1] == 1)
    return shaped and bool(np.all((outputs >= 0) & (outputs <= 1)))


def image_maps(outputs: np.ndarray) -> np.ndarray:
    """A probability map [B, 1, H, W] or [B, H, W] as [B, H, W]."""
    return outputs.reshape(len(outputs), *outputs.shape[-2:])


def region_detections(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One image's map [H, W] -> (corner boxes [n, 4] of its 4-connected regions above 0.5, largest first,
    classes [n], all 0)."""
    boxes, sizes = region_boxes(image > DECISION_THRESHOLD)
    order = np.argsort(-sizes, kind="stable")
    return boxes[order], np.zeros(len(order), np.int64)


def anchors_last(outputs: np.ndarray) -> np.ndarray:
    """A YOLO head [B, 4+K, A] or [B, A, 4+K] as [B, 4+K, A] (the anchor axis is the longer one)."""
    if outputs.ndim != 3 or min(outputs.shape[1:]) < 5:
        raise DataError(f"--fidelity boxes: the output has shape {list(outputs.shape)}, neither a YOLO head "
                        "[batch, 4+classes, anchors] nor a probability map [batch, 1, H, W] in [0, 1]; choose "
                        "another --fidelity")
    return outputs if outputs.shape[2] >= outputs.shape[1] else outputs.transpose(0, 2, 1)


def square_side(anchors: int) -> int | None:
    """The side of the square image whose stride 8, 16 and 32 grids have `anchors` cells in all, or None."""
    cells = round(np.sqrt(anchors * 16 / 21))  # n^2 (1 + 1/4 + 1/16) cells at stride 8 for a side of 8n
    return 8 * cells if cells % 4 == 0 and cells * cells * 21 == anchors * 16 else None


def in_pixels(head: np.ndarray, side: tuple[int, int]) -> bool:
    """Whether a YOLO head [B, 4+K, A] holds boxes in pixels over an image of `side` (height, width): centres
    across the image and sizes of no less than 0 (a raw head's offsets within a cell are not)."""
    boxes = head[:, :4]
    return bool(boxes[:, 0].max() > side[1] / 2 and boxes[:, 1].max() > side[0] / 2 and (boxes[:, 2:] >= 0).all())


def raw_yolox_side(head: np.ndarray) -> int | None:
    """The square image side of a raw YOLOX head [B, 5+K, A] (box centres within a few cells of their own cell,
    objectness and class scores in [0, 1]), or None for another head."""
    side = square_side(head.shape[2])
    if side is None or head.shape[1] < 6 or np.abs(head[:, :2]).max() > RAW_OFFSET_CELLS:
        return None
    return side if bool(((head[:, 4:] >= 0) & (head[:, 4:] <= 1)).all()) else None


def has_objectness(sample: np.ndarray) -> bool:
    """Whether a head's first score [B, 4+K, A] is an objectness (YOLOX decoded in the graph): low on most
    anchors while the best of the others, class scores given an object, is not (median 0.47 on ddddocr's
    detector); a YOLOv8 head's scores are all low where there is no object."""
    scores = sample[:, 4:]
    if scores.shape[1] < 2:
        return False
    return bool(np.median(scores[:, 0]) < OBJECTNESS_LOW and np.median(scores[:, 1:].max(axis=1)) > CLASS_GIVEN)


def fold_objectness(head: np.ndarray) -> np.ndarray:
    """A head [B, 5+K, A] with objectness as [B, 4+K, A] whose scores are objectness x class, as YOLOX scores."""
    return np.concatenate([head[:, :4], head[:, 4:5] * head[:, 5:]], axis=1)


def decode_yolox(head: np.ndarray, side: int) -> np.ndarray:
    """A raw YOLOX head [B, 5+K, A] over a `side` x `side` image as [B, 4+K, A] of boxes cx, cy, w, h in pixels
    and K scores objectness x class, the anchors taken grid by grid (stride 8, 16, 32), row by row."""
    cells = [(s, np.divmod(np.arange((side // s) ** 2), side // s)) for s in YOLO_STRIDES]
    stride = np.concatenate([np.full(len(row), s, np.float64) for s, (row, _) in cells])
    gx = np.concatenate([col for _, (_, col) in cells]).astype(np.float64)
    gy = np.concatenate([row for _, (row, _) in cells]).astype(np.float64)
    out = fold_objectness(head.astype(np.float64))
    out[:, 0] = (head[:, 0] + gx) * stride
    out[:, 1] = (head[:, 1] + gy) * stride
    out[:, 2:4] = np.exp(np.minimum(head[:, 2:4], 30.0)) * stride
    return out


def corners(xywh: np.ndarray) -> np.ndarray:
    """Boxes cx, cy, w, h [n, 4] as x0, y0, x1, y1."""
    return np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], axis=1)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix [n, m] of corner boxes a [n, 4] and b [m, 4]."""
    low = np.maximum(a[:, None, :2], b[None, :, :2])
    high = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(high - low, 0, None), axis=-1)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=-1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def detections(head: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One image's head [4+K, A] -> (corner boxes [n, 4], classes [n]), best first, after the confidence
    threshold and class-wise greedy NMS."""
    scores_all = head[4:].astype(np.float64)
    classes, scores = scores_all.argmax(axis=0), scores_all.max(axis=0)
    pick = np.flatnonzero(scores >= BOX_CONFIDENCE)
    pick = pick[np.argsort(-scores[pick], kind="stable")]
    boxes, classes = corners(head[:4, pick].T.astype(np.float64)), classes[pick]
    keep = nms(boxes, classes)
    return boxes[keep], classes[keep]


def nms(boxes: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Indices kept by greedy NMS at IoU 0.45 within each class, of boxes sorted best first (at most 300).
    Classes are kept apart by shifting each class's boxes beyond every other's."""
    if not len(boxes):
        return np.zeros(0, np.int64)
    span = float(boxes.max() - boxes.min()) + 1.0
    shifted = boxes + (classes * span)[:, None]
    order, keep = np.arange(len(boxes)), []
    while len(order) and len(keep) < MAX_DETECTIONS:
        best, order = order[0], order[1:]
        keep.append(best)
        order = order[iou(shifted[best:best + 1], shifted[order])[0] <= NMS_IOU]
    return np.array(keep, np.int64)


def matched(original: tuple[np.ndarray, np.ndarray], new: tuple[np.ndarray, np.ndarray]) -> int:
    """How many of the original's detections (best first) find an unmatched new one of the same class at
    IoU >= 0.5, each taking the best such one."""
    if not len(original[0]) or not len(new[0]):
        return 0
    overlap = iou(original[0], new[0]) * (original[1][:, None] == new[1][None, :])
    free = np.ones(len(new[0]), bool)
    count = 0
    for row in overlap:
        candidates = np.where(free, row, -1.0)
        best = int(candidates.argmax())
        if candidates[best] >= MATCH_IOU:
            free[best] = False
            count += 1
    return count
