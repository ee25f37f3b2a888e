"""Shared test setup: import the package from this checkout, quiet onnxruntime, small fixtures."""

from __future__ import annotations

import sys
from pathlib import Path

import onnx
import onnxruntime
import pytest

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, Path(__file__).resolve().parent):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

onnxruntime.set_default_logger_severity(3)


@pytest.fixture
def save(tmp_path):
    """save(model, name) writes `model` under tmp_path with plain onnx.save and returns the path."""

    def _save(model: onnx.ModelProto, name: str = "model.onnx") -> Path:
        path = tmp_path / name
        onnx.save_model(model, str(path))
        return path

    return _save
