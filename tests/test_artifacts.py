"""Training artifacts of models too large to hand to generate_artifacts in memory go through a file."""

from __future__ import annotations

import numpy as np
from engine_fixtures import blobs, mlp

from onnx_dns import artifacts, model_io
from onnx_dns.artifacts import BASE_MODEL, build_artifacts
from onnx_dns.insert_masks import insert_masks
from onnx_dns.losses import LossSpec
from onnx_dns.ort_training import api


def first_loss(directory, monkeypatch, threshold: int | None) -> tuple[float, list[str]]:
    if threshold is not None:  # fc1.w (1.5 KB) then goes to external data too
        monkeypatch.setattr(model_io, "EXTERNAL_DATA_THRESHOLD", threshold)
    masked = insert_masks(mlp(6, 64, 3), ["fc1.w", "fc2.w"]).model
    art = build_artifacts(masked, LossSpec("classify", "y", 1.0, 0.0, num_classes=3), directory)
    module = api.Module(str(art.training_model), api.CheckpointState.load_checkpoint(str(art.checkpoint)),
                        str(art.eval_model))
    x, labels = blobs(16, 6, 3)
    module.train()
    loss = float(module(x, np.eye(3, dtype=np.float32)[labels])[0])
    return loss, sorted(p.name for p in directory.iterdir())


def test_a_model_over_the_in_memory_limit_builds_the_same_artifacts_from_a_file(tmp_path, monkeypatch):
    expected, _ = first_loss(tmp_path / "memory", monkeypatch, None)
    written = []

    def save_model(model, path):
        written.append(model_io.save_model(model, path))
        written.append(path.with_name(path.name + ".data").exists())
        return written[0]

    monkeypatch.setattr(artifacts, "save_model", save_model)
    loss, files = first_loss(tmp_path / "file", monkeypatch, 100)  # every model is "too large" now
    assert written == [tmp_path / "file" / BASE_MODEL, True]
    assert loss == expected
    assert BASE_MODEL not in files and BASE_MODEL + ".data" not in files
    assert {"training_model.onnx", "eval_model.onnx", "checkpoint"} <= set(files)
