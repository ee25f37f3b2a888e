"""The bundled reference models: the paper's architectures, settings that name their layers, and compressed
copies that load in onnxruntime, agree between sparse and dense storage, and are as sparse as they say."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime
import pytest

from onnx_dns.fold import read_metadata
from onnx_dns.idx import load_mnist_split
from onnx_dns.model_io import load_model
from onnx_dns.prunable import find_layers
from onnx_dns.report import inspect_model

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
PAPER_PARAMS = {"lenet5": 431_080, "lenet300": 266_610}


@pytest.fixture(scope="module")
def mnist_test():
    images, labels = load_mnist_split(MODELS / "data" / "mnist", "t10k")
    return images[:2000].astype(np.float32) / 256, labels[:2000]


def _feed(name: str, images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), 1, 28, 28) if name == "lenet5" else images.reshape(len(images), 784)


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_reference_model_has_the_papers_parameter_count(name):
    report = inspect_model(load_model(MODELS / name / "model.onnx"))
    assert report.params == PAPER_PARAMS[name]


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_settings_name_existing_layers(name):
    settings = json.loads((MODELS / name / "dns.json").read_text())
    layers = {layer.name for layer in find_layers(load_model(MODELS / name / "model.onnx"))}
    for key in ("c", "stop", "sparsity"):
        assert set(settings.get(key, {})) <= layers
    assert (MODELS / name / settings["data"]).resolve().is_dir()


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_dense_reference_model_is_accurate(name, mnist_test):
    images, labels = mnist_test
    session = onnxruntime.InferenceSession(str(MODELS / name / "model.onnx"))
    logits = session.run(None, {"input": _feed(name, images)})[0]
    assert np.mean(logits.argmax(1) == labels) > 0.97


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_bundled_compressed_models_agree_and_are_sparse(name, mnist_test):
    images, labels = mnist_test
    sparse_path = MODELS / name / "model.dns.onnx"
    dense_path = MODELS / name / "model.dns.dense.onnx"
    feed = {"input": _feed(name, images)}
    sparse_out = onnxruntime.InferenceSession(str(sparse_path)).run(None, feed)[0]
    dense_out = onnxruntime.InferenceSession(str(dense_path)).run(None, feed)[0]
    np.testing.assert_array_equal(sparse_out, dense_out)
    assert np.mean(sparse_out.argmax(1) == labels) > 0.97
    assert sparse_path.stat().st_size * 10 < (MODELS / name / "model.onnx").stat().st_size
    model = load_model(dense_path)
    report = inspect_model(model)
    recorded = read_metadata(load_model(sparse_path))
    assert report.nonzeros == sum(layer["nonzeros"] for layer in recorded["layers"].values())
    assert report.compression > 20
