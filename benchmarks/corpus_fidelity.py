"""Task fidelity of a compressed model against the original, measured on the task's own terms.

Each measure takes the original's and the compressed model's output arrays (and the model file, for a character
list) and returns {"fidelity": fraction in [0, 1], ...details}. Detectors: the share of the original's boxes that
the compressed model reproduces (same class, IoU >= 0.5). Recognizers: the share of lines decoded to the identical
text (greedy CTC with the model's own character list). Classifiers: top-1 agreement. Embeddings: mean cosine.
VAD: agreement of speech decisions at 0.5, and the mean absolute difference of the probabilities.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx


def charset(model_path: Path) -> list[str]:
    """PP-OCR's CTC classes: blank, the characters of metadata_props 'character', and a space (use_space_char)."""
    model = onnx.load(str(model_path), load_external_data=False)
    chars = next(p.value for p in model.metadata_props if p.key == "character").splitlines()
    return ["", *chars, " "]


def ctc_classes(probs: np.ndarray) -> list[tuple[int, ...]]:
    """Greedy CTC of [N, T, C] scores: best class per step, repeats merged, blanks (class 0) dropped."""
    sequences = []
    for row in probs.argmax(-1):
        keep = np.concatenate([[True], row[1:] != row[:-1]]) & (row != 0)
        sequences.append(tuple(int(i) for i in row[keep]))
    return sequences


def ctc_decode(probs: np.ndarray, chars: list[str]) -> list[str]:
    """Greedy CTC decoding of [N, T, C] scores into text with the character list `chars`."""
    return ["".join(chars[i] for i in sequence) for sequence in ctc_classes(probs)]


def ctc_text(ref: np.ndarray, new: np.ndarray, model_path: Path) -> dict:
    """Share of text lines decoded identically."""
    chars = charset(model_path)
    a, b = ctc_decode(ref, chars), ctc_decode(new, chars)
    return {"fidelity": float(np.mean([x == y for x, y in zip(a, b)])), "examples": list(zip(a, b))[:3]}


def ctc_time_first(ref: np.ndarray, new: np.ndarray, model_path: Path) -> dict:
    """Share of text lines whose greedy CTC class sequences are identical, for time-first [T, N, C] scores
    (PyTorch's CTC layout, ddddocr); class indices are compared, so no character list is needed."""
    a, b = ctc_classes(ref.transpose(1, 0, 2)), ctc_classes(new.transpose(1, 0, 2))
    return {"fidelity": float(np.mean([x == y for x, y in zip(a, b)])), "examples": list(zip(a, b))[:3]}


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of boxes a [n,4] and b [m,4] as x0, y0, x1, y1."""
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), -1)
    area = lambda x: np.prod(x[:, 2:] - x[:, :2], -1)
    return inter / (area(a)[:, None] + area(b)[None, :] - inter + 1e-9)


def _reproduced(ref: list[tuple], new: list[tuple]) -> tuple[int, int, int]:
    """(original boxes, of which matched one-to-one by a new box of the same class at IoU >= 0.5, new boxes)."""
    total = matched = found = 0
    for (ref_boxes, ref_cls), (new_boxes, new_cls) in zip(ref, new):
        total, found = total + len(ref_boxes), found + len(new_boxes)
        if not len(ref_boxes) or not len(new_boxes):
            continue
        iou = _iou(ref_boxes, new_boxes) * (ref_cls[:, None] == new_cls[None, :])
        used = set()
        for i in np.argsort(-iou.max(1)):
            j = next((j for j in np.argsort(-iou[i]) if iou[i, j] >= 0.5 and j not in used), None)
            if j is not None:
                used.add(j)
                matched += 1
    return total, matched, found


def _detection_result(ref: list[tuple], new: list[tuple]) -> dict:
    total, matched, found = _reproduced(ref, new)
    return {"fidelity": matched / total if total else float(found == 0), "boxes_original": total,
            "boxes_compressed": found, "boxes_reproduced": matched}


def _nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    order, keep = list(np.argsort(-scores)), []
    while order:
        best = order.pop(0)
        keep.append(best)
        order = [i for i in order if _iou(boxes[best:best + 1], boxes[i:i + 1])[0, 0] < threshold]
    return keep


def yolo_detections(output: np.ndarray, conf: float = 0.25, iou: float = 0.45) -> list[tuple]:
    """Ultralytics-style [N, 4+K, A] (cx, cy, w, h, class scores) -> per image (boxes, classes) after class-wise NMS."""
    result = []
    for pred in output.transpose(0, 2, 1):
        scores, classes = pred[:, 4:].max(1), pred[:, 4:].argmax(1)
        pick = scores >= conf
        xywh, scores, classes = pred[pick, :4], scores[pick], classes[pick]
        boxes = np.concatenate([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1)
        keep = []
        for c in np.unique(classes):
            index = np.flatnonzero(classes == c)
            keep += [index[k] for k in _nms(boxes[index], scores[index], iou)]
        result.append((boxes[keep], classes[keep]))
    return result


def yolo_boxes(ref: np.ndarray, new: np.ndarray, model_path: Path) -> dict:
    """Share of the original's YOLO detections reproduced."""
    return _detection_result(yolo_detections(ref), yolo_detections(new))


def yolox_grid(size: int, strides: tuple[int, ...] = (8, 16, 32)) -> tuple[np.ndarray, np.ndarray]:
    """The anchors of a YOLOX head over a square `size` input: cell (x, y) [A, 2] and stride [A, 1], finest first."""
    cells, steps = [], []
    for stride in strides:
        ys, xs = np.meshgrid(np.arange(size // stride), np.arange(size // stride), indexing="ij")
        cells.append(np.stack([xs.ravel(), ys.ravel()], 1))
        steps.append(np.full((xs.size, 1), stride))
    return np.concatenate(cells).astype(np.float32), np.concatenate(steps).astype(np.float32)


def yolox_detections(output: np.ndarray, size: int = 416, conf: float = 0.1, iou: float = 0.45) -> list[tuple]:
    """A raw YOLOX head [N, A, 5+K] -> per image (boxes, classes), as ddddocr's DetectionEngine.get_bbox decodes
    it: centre (offset + cell) * stride, size exp(log size) * stride, score objectness * class, kept above `conf`,
    then class-agnostic NMS at `iou` (ddddocr's thresholds 0.1 and 0.45)."""
    cells, strides = yolox_grid(size)
    result = []
    for pred in output:
        centre, half = (pred[:, :2] + cells) * strides, np.exp(pred[:, 2:4]) * strides / 2
        scores = pred[:, 4:5] * pred[:, 5:]
        best, classes = scores.max(1), scores.argmax(1)
        pick = best > conf
        boxes = np.concatenate([centre - half, centre + half], 1)[pick]
        keep = _nms(boxes, best[pick], iou)
        result.append((boxes[keep], classes[pick][keep]))
    return result


def yolox_boxes(ref: np.ndarray, new: np.ndarray, model_path: Path) -> dict:
    """Share of the original's YOLOX detections reproduced."""
    return _detection_result(yolox_detections(ref), yolox_detections(new))


def _components(mask: np.ndarray) -> np.ndarray:
    """4-connected component labels of a boolean map (0 = background), by propagating the minimum label."""
    labels = np.where(mask, np.arange(1, mask.size + 1).reshape(mask.shape), mask.size + 1)
    while True:
        padded = np.pad(labels, 1, constant_values=mask.size + 1)
        neighbours = np.minimum.reduce([padded[1:-1, 1:-1], padded[:-2, 1:-1], padded[2:, 1:-1],
                                        padded[1:-1, :-2], padded[1:-1, 2:]])
        updated = np.where(mask, neighbours, mask.size + 1)
        if np.array_equal(updated, labels):
            return np.where(mask, labels, 0)
        labels = updated


def db_detections(maps: np.ndarray, thresh: float = 0.3, box_thresh: float = 0.5, min_size: int = 3) -> list:
    """DBNet probability maps [N,1,H,W] -> per image (boxes, classes): bounding boxes of connected regions above
    `thresh` whose mean probability reaches `box_thresh` (rapidocr's settings; its polygon unclip is left out)."""
    result = []
    for prob in maps[:, 0]:
        labels = _components(prob > thresh)
        boxes = []
        for label in np.unique(labels[labels > 0]):
            ys, xs = np.nonzero(labels == label)
            if min(np.ptp(xs), np.ptp(ys)) + 1 >= min_size and prob[ys, xs].mean() >= box_thresh:
                boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        boxes = np.array(boxes, np.float32).reshape(-1, 4)
        result.append((boxes, np.zeros(len(boxes), np.int64)))
    return result


def db_boxes(ref: np.ndarray, new: np.ndarray, model_path: Path) -> dict:
    """Share of the original's text boxes reproduced."""
    return _detection_result(db_detections(ref), db_detections(new))


def top1(ref: np.ndarray, new: np.ndarray, model_path: Path) -> dict:
    """Top-1 agreement."""
    return {"fidelity": float(np.mean(ref.argmax(-1) == new.argmax(-1)))}


def cosine(ref: np.ndarray, new: np.ndarray, model_path: Path) -> dict:
    """Mean and minimum cosine similarity of the embeddings."""
    a, b = ref.reshape(len(ref), -1), new.reshape(len(new), -1)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    return {"fidelity": float(cos.mean()), "cosine_min": float(cos.min())}


def vad(ref: np.ndarray, new: np.ndarray, model_path: Path) -> dict:
    """Agreement of speech / no-speech decisions at 0.5 and the mean absolute probability difference."""
    a, b = ref.reshape(-1), new.reshape(-1)
    return {"fidelity": float(np.mean((a >= 0.5) == (b >= 0.5))), "mean_abs_diff": float(np.abs(a - b).mean())}


MEASURES = {f.__name__: f for f in (ctc_text, ctc_time_first, yolo_boxes, yolox_boxes, db_boxes, top1, cosine,
                                    vad)}


def against_truth(model_path: Path, reference: np.ndarray, truth: dict) -> float | None:
    """How well the original model does on what the generator knows (rendered text, orientation, voiced frames):
    a check that the inputs are read as intended. None where the generator knows nothing to check. Text truth may
    bring its own character list ("chars") and say that the scores are time-first [T, N, C] ("time_first")."""
    if "texts" in truth:
        scores = reference.transpose(1, 0, 2) if truth.get("time_first") else reference
        decoded = ctc_decode(scores, truth.get("chars") or charset(model_path))
        return float(np.mean([a == b for a, b in zip(decoded, truth["texts"])]))
    if "labels" in truth:
        return float(np.mean(reference.argmax(-1) == np.array(truth["labels"])))
    if "voiced" in truth:
        return float(np.mean((reference.reshape(-1) >= 0.5) == np.array(truth["voiced"])))
    return None
