"""inspect_model / format_report: counts, sparsity, compression, sparse models, untrainable operators."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from graphs import (
    cnn,
    constant_weight,
    conv_transpose,
    make_model,
    mlp,
    set_initializer,
    untrainable_ops,
    value,
)

from onnx_dns.fold import fold_masks
from onnx_dns.insert_masks import insert_masks, mask_name
from onnx_dns.report import format_report, inspect_model, training_support

# zeros planted in mlp(): tensor -> number of exact zeros (mlp's random weights have none of their own)
PLANTED = {"fc1.w": 48, "fc1.b": 3, "fc2.w": 0, "fc2.b": 1}
SIZES = {"fc1.w": 16 * 12, "fc1.b": 12, "fc2.w": 12 * 5, "fc2.b": 5}


def mlp_with_known_zeros() -> onnx.ModelProto:
    model = mlp()
    for t in model.graph.initializer:
        if t.name in PLANTED:
            values = onnx.numpy_helper.to_array(t).copy()
            assert np.count_nonzero(values) == values.size
            values.reshape(-1)[: PLANTED[t.name]] = 0
            set_initializer(model, t.name, values)
    return model


def expected_layer(weight: str, bias: str) -> dict:
    params = SIZES[weight] + SIZES[bias]
    nonzeros = params - PLANTED[weight] - PLANTED[bias]
    return {"params": params, "nonzeros": nonzeros, "sparsity": 100 * (1 - nonzeros / params),
            "weight_params": SIZES[weight], "weight_nonzeros": SIZES[weight] - PLANTED[weight]}


EXPECTED = {"fc1": expected_layer("fc1.w", "fc1.b"), "fc2": expected_layer("fc2.w", "fc2.b")}


def check_counts(report) -> None:
    assert [x.name for x in report.layers] == ["fc1", "fc2"]
    for stats in report.layers:
        want = EXPECTED[stats.name]
        assert stats.params == want["params"]
        assert stats.nonzeros == want["nonzeros"]
        assert stats.weight_params == want["weight_params"]
        assert stats.weight_nonzeros == want["weight_nonzeros"]
        assert stats.sparsity == pytest.approx(want["sparsity"])


def test_counts_nonzeros_and_sparsity_per_layer():
    report = inspect_model(mlp_with_known_zeros())
    check_counts(report)
    assert [x.op for x in report.layers] == ["MatMul", "MatMul"]
    assert [x.shape for x in report.layers] == [[16, 12], [12, 5]]


def test_totals_and_compression_with_and_without_biases():
    report = inspect_model(mlp_with_known_zeros())
    params = sum(SIZES.values())
    nonzeros = params - sum(PLANTED.values())
    weight_params = SIZES["fc1.w"] + SIZES["fc2.w"]
    weight_nonzeros = weight_params - PLANTED["fc1.w"] - PLANTED["fc2.w"]
    assert (report.params, report.nonzeros) == (params, nonzeros)
    assert (report.weight_params, report.weight_nonzeros) == (weight_params, weight_nonzeros)
    assert report.compression == pytest.approx(params / nonzeros)
    assert report.weight_compression == pytest.approx(weight_params / weight_nonzeros)
    assert report.compression != pytest.approx(report.weight_compression)


def test_dense_model_has_compression_one():
    report = inspect_model(cnn())
    assert report.nonzeros == report.params > 0
    assert report.compression == 1.0 and report.weight_compression == 1.0
    assert all(x.sparsity == 0 for x in report.layers)


def test_batchnorm_statistics_are_not_counted():
    model = cnn()
    report = inspect_model(model)
    sizes = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer}
    assert report.params == sizes["conv1.w"] + sizes["conv1.b"] + sizes["fc.w"] + sizes["fc.b"]


def masked_mlp() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    model = mlp()
    masked = insert_masks(model, list(SIZES)).model
    rng = np.random.default_rng(5)
    masks = {}
    for name in SIZES:
        shape = onnx.numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name)).shape
        masks[name] = (rng.random(shape) < 0.15).astype(np.float32)
        set_initializer(masked, mask_name(name), masks[name])
    return masked, masks


def counts_from_masks(masks: dict[str, np.ndarray]) -> dict[str, int]:
    return {"fc1": int(masks["fc1.w"].sum() + masks["fc1.b"].sum()),
            "fc2": int(masks["fc2.w"].sum() + masks["fc2.b"].sum())}


def test_masked_model_counts_its_masks():
    masked, masks = masked_mlp()
    report = inspect_model(masked)
    assert {x.name: x.nonzeros for x in report.layers} == counts_from_masks(masks)
    assert {x.name: x.params for x in report.layers} == {"fc1": 204, "fc2": 65}


@pytest.mark.parametrize("sparse", [True, False], ids=["sparse", "dense"])
def test_folded_model_is_read_correctly(sparse, tmp_path):
    masked, masks = masked_mlp()
    folded = fold_masks(masked, sparse=sparse).model
    assert bool(folded.graph.sparse_initializer) == sparse
    path = tmp_path / "folded.onnx"
    onnx.save_model(folded, str(path))
    report = inspect_model(folded, path)
    assert {x.name: x.nonzeros for x in report.layers} == counts_from_masks(masks)
    assert {x.name: x.params for x in report.layers} == {"fc1": 204, "fc2": 65}
    assert [x.shape for x in report.layers] == [[16, 12], [12, 5]]


def test_file_and_gzip_sizes(tmp_path):
    masked, _ = masked_mlp()
    path = tmp_path / "dense.onnx"
    onnx.save_model(fold_masks(masked, sparse=False).model, str(path))
    report = inspect_model(onnx.load(str(path)), path)
    assert report.path == str(path)
    assert report.file_size == path.stat().st_size
    assert 0 < report.gzip_size < 0.6 * report.file_size  # 85% exact zeros compress well
    assert inspect_model(mlp()).file_size is None


def test_versions_and_opsets():
    report = inspect_model(mlp())
    assert report.ir_version == 8
    assert report.opsets == {"ai.onnx": 17}


def test_lists_operators_without_a_cpu_gradient():
    report = inspect_model(untrainable_ops())
    assert set(report.untrainable) == {"LRN", "PRelu"}
    text = format_report(report)
    lines = [line.strip() for line in text.splitlines()]
    assert any(line.startswith("LRN") for line in lines)
    assert any(line.startswith("PRelu") for line in lines)
    assert "ConvTranspose" in inspect_model(conv_transpose()).untrainable
    assert "rewritten for training" in report.untrainable["LRN"]
    assert "rewritten for training" in inspect_model(conv_transpose()).untrainable["ConvTranspose"]
    assert "cannot pass through" in training_support("CumSum")


def test_trainable_model_lists_no_operator():
    report = inspect_model(cnn())
    assert report.untrainable == {}
    assert "without a CPU gradient" not in format_report(report)


def test_weights_in_constant_nodes_are_counted():
    report = inspect_model(constant_weight())
    assert [(x.name, x.params) for x in report.layers] == [("cmm", 6 * 3 + 3)]


def test_model_without_prunable_layers():
    model = make_model([onnx.helper.make_node("Relu", ["x"], ["y"])], [value("x", [2])], [value("y", [2])], [])
    report = inspect_model(model)
    assert report.layers == [] and report.params == 0
    assert "total" in format_report(report)


def test_format_report_shows_every_layer_and_the_totals():
    report = inspect_model(mlp_with_known_zeros())
    text = format_report(report)
    rows = {line.split()[0]: line for line in text.splitlines() if line.strip()}
    for name, want in EXPECTED.items():
        assert f"{want['params']:,}" in rows[name] and f"{want['nonzeros']:,}" in rows[name]
        assert f"{want['sparsity']:.2f}%" in rows[name]
    total_params = sum(SIZES.values())
    total_nonzeros = total_params - sum(PLANTED.values())
    assert f"{total_params:,}" in rows["total"] and f"{total_nonzeros:,}" in rows["total"]
    assert f"{total_params / total_nonzeros:.1f}x" in text
    assert "IR version 8" in text


def test_to_dict_is_json_and_agrees_with_the_report():
    report = inspect_model(mlp_with_known_zeros())
    data = json.loads(json.dumps(report.to_dict()))
    assert [x["name"] for x in data["layers"]] == ["fc1", "fc2"]
    for layer in data["layers"]:
        want = EXPECTED[layer["name"]]
        assert layer["params"] == want["params"] and layer["nonzeros"] == want["nonzeros"]
        assert layer["sparsity"] == pytest.approx(want["sparsity"], abs=1e-3)
    totals = data["totals"]
    assert totals["params"] == sum(SIZES.values())
    assert totals["nonzeros"] == sum(SIZES.values()) - sum(PLANTED.values())
    assert totals["compression"] == pytest.approx(report.compression, abs=1e-3)
    assert totals["weight_compression"] == pytest.approx(report.weight_compression, abs=1e-3)


def test_inspect_does_not_mutate_the_model():
    for model in (constant_weight(), fold_masks(masked_mlp()[0]).model):
        before = model.SerializeToString()
        inspect_model(model)
        assert model.SerializeToString() == before
