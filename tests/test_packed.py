"""Packed storage: exact outputs, onnx.checker, the reference evaluator, constant folding in onnxruntime,
weight sharing, and fallbacks."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from graphs import RUNNABLE, init_arrays, make_model, random_feeds, run, tensor, value, with_zeros
from onnx import helper
from onnx.reference import ReferenceEvaluator

from onnx_dns import packed as packed_module
from onnx_dns.bitpack import best_index_bits, entry_count
from onnx_dns.fold import read_metadata
from onnx_dns.normalize import lift_constants
from onnx_dns.ort_training import onnxruntime
from onnx_dns.prunable import find_layers
from onnx_dns.repack import format_sizes, repack, unpack_model

REBUILD_OPS = {"Range", "CumSum", "ScatterND", "ConstantOfShape", "Where", "Split", "Equal", "Not"}


def pruned(model: onnx.ModelProto, keep_probability: float, seed: int = 3) -> onnx.ModelProto:
    """`model` with each prunable tensor zeroed at random (test-side, independent of the library)."""
    rng = np.random.default_rng(seed)
    arrays = init_arrays(model)
    names = [t.name for layer in find_layers(model) for t in layer.tensors]
    return with_zeros(model, {n: rng.random(arrays[n].shape) < keep_probability for n in names})


def wide_mlp(opset: int = 17, seed: int = 0, keep: float = 0.03) -> onnx.ModelProto:
    """Gemm 300->200 -> Relu -> Gemm 200->10 with most weights zero."""
    rng = np.random.default_rng(seed)
    inits = [tensor("w1", rng.normal(size=(300, 200)).astype(np.float32)), tensor("b1", rng.normal(size=200).astype(np.float32)),
             tensor("w2", rng.normal(size=(200, 10)).astype(np.float32)), tensor("b2", np.zeros(10, np.float32))]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="fc2")]
    model = make_model(nodes, [value("x", ["N", 300])], [value("y", ["N", 10])], inits, opset=opset)
    return pruned(model, keep, seed)


def ops(model: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in model.graph.node}


@pytest.mark.parametrize("name", sorted(RUNNABLE))
def test_packed_float_values_give_exactly_the_dense_outputs(name):
    model = pruned(lift_constants(RUNNABLE[name]()).model, 0.3)
    packed = repack(model, "packed").model
    onnx.checker.check_model(packed, full_check=True)
    feeds = random_feeds(model)
    for got, want in zip(run(packed, feeds), run(model, feeds)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("opset", [11, 12, 13, 17, 21])
def test_every_opset_from_11_checks_runs_exactly_and_reads_in_the_reference_evaluator(opset):
    model = wide_mlp(opset)
    packed = repack(model, "packed", 4).model
    assert "ScatterND" in ops(packed) and not packed.graph.sparse_initializer
    onnx.checker.check_model(packed, full_check=True)
    quantized = repack(model, "dense", 4).model
    feeds = random_feeds(model, batch=3)
    np.testing.assert_array_equal(run(packed, feeds)[0], run(quantized, feeds)[0])
    np.testing.assert_array_equal(ReferenceEvaluator(packed).run(None, feeds)[0],
                                  ReferenceEvaluator(quantized).run(None, feeds)[0])


def test_onnxruntime_folds_the_rebuild_into_constants(tmp_path):
    packed = repack(wide_mlp(), "packed", 4).model
    assert REBUILD_OPS & ops(packed)
    options = onnxruntime.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    onnxruntime.InferenceSession(packed.SerializeToString(), options, providers=["CPUExecutionProvider"])
    optimized = onnx.load(str(tmp_path / "optimized.onnx"))
    assert not ops(optimized) & (REBUILD_OPS | {"Gather", "Cast", "Mod", "Div", "Reshape"})


def test_packed_is_smaller_than_sparse_and_auto_picks_the_smaller():
    model = wide_mlp()
    sizes = format_sizes(model)
    assert sizes["packed"] < sizes["sparse"] < sizes["dense"]
    assert repack(model).model.ByteSize() == sizes["packed"]
    tiny = pruned(lift_constants(RUNNABLE["gemm_transb"]()).model, 0.9)
    auto = repack(tiny).model
    assert auto.ByteSize() == min(repack(tiny, f).model.ByteSize() for f in ("sparse", "packed"))


def test_weight_sharing_keeps_zeros_and_uses_at_most_2_to_the_bits_values():
    model = wide_mlp(keep=0.2)
    before = init_arrays(model)
    after = init_arrays(unpack_model(repack(model, "packed", 3).model).model)
    for name in ("w1", "w2", "b1"):
        np.testing.assert_array_equal(after[name] != 0, before[name] != 0)
        assert len(np.unique(after[name][after[name] != 0])) <= 8
        assert np.mean((after[name] - before[name]) ** 2) < 0.05 * np.mean(before[name][before[name] != 0] ** 2)


def test_a_tensor_with_no_nonzeros_between_others_keeps_the_codebook_offsets_right():
    model = wide_mlp(keep=0.1)
    for t in model.graph.initializer:
        if t.name == "b1":
            t.CopyFrom(onnx.numpy_helper.from_array(np.zeros(200, np.float32), "b1"))
    quantized = init_arrays(repack(model, "dense", 2).model)
    rebuilt = init_arrays(unpack_model(repack(model, "packed", 2).model).model)
    for name in ("w1", "b1", "w2"):
        np.testing.assert_array_equal(rebuilt[name], quantized[name])


def test_unpack_gives_plain_initializers_and_repack_does_not_touch_its_input():
    model = wide_mlp()
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    packed = repack(model, "packed").model
    assert model == copy
    plain = unpack_model(packed).model
    assert not REBUILD_OPS & ops(plain)
    for name, array in init_arrays(model).items():
        np.testing.assert_array_equal(init_arrays(plain)[name], array)
    assert read_metadata(packed)["packed"] == ["w1", "b1", "w2", "b2"]
    assert read_metadata(plain)["storage"] == "dense" and "packed" not in read_metadata(plain)


def test_before_opset_11_packed_falls_back_to_sparse():
    model = wide_mlp(opset=10)
    out = repack(model, "packed").model
    assert not REBUILD_OPS & ops(out) and out.graph.sparse_initializer
    assert read_metadata(out)["storage"] == "sparse"


def test_unknown_format_refused():
    with pytest.raises(ValueError, match="'zip'"):
        repack(wide_mlp(), "zip")


@pytest.mark.parametrize("dtype,proto", [(np.float64, onnx.TensorProto.DOUBLE), (np.float16, onnx.TensorProto.FLOAT16)])
def test_float64_and_float16_weights_pack_exactly(dtype, proto):
    rng = np.random.default_rng(0)
    inits = [tensor("w", rng.normal(size=(300, 20)).astype(dtype)), tensor("b", rng.normal(size=20).astype(dtype))]
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc")]
    model = pruned(make_model(nodes, [value("x", ["N", 300], proto)], [value("y", ["N", 20], proto)], inits), 0.05)
    packed = repack(model, "packed").model
    assert "ScatterND" in ops(packed)
    onnx.checker.check_model(packed, full_check=True)
    feeds = {"x": rng.normal(size=(2, 300)).astype(dtype)}
    np.testing.assert_array_equal(run(packed, feeds)[0], run(model, feeds)[0])


def grid_ops(model: onnx.ModelProto) -> dict[str, int]:
    """Rebuild nodes that only the grid decoding writes (a bit-field shift, a prefix sum along rows)."""
    axes = {t.name: int(onnx.numpy_helper.to_array(t)) for t in model.graph.initializer if t.dims == []}
    return {"BitShift": sum(n.op_type == "BitShift" for n in model.graph.node),
            "row sums": sum(n.op_type == "CumSum" and axes.get(n.input[1]) == 1 for n in model.graph.node)}


@pytest.mark.parametrize("keep,bits", [(0.5, None), (0.5, 3), (0.1, None), (0.1, 4), (0.004, None)])
def test_long_streams_decode_as_a_grid_exactly_in_onnxruntime_and_the_reference_evaluator(monkeypatch, keep, bits):
    monkeypatch.setattr(packed_module, "GRID_FROM", 64)
    monkeypatch.setattr(packed_module, "ROW", 24)  # no stream here fills its last row
    model = wide_mlp(keep=keep)
    packed = repack(model, "packed", bits).model
    onnx.checker.check_model(packed, full_check=True)
    assert grid_ops(packed)["row sums"] >= 1
    assert grid_ops(packed)["BitShift"] >= 1 or keep < 0.01  # 1/250 kept: 8- or 16-bit gaps, read as whole bytes
    dense = repack(model, "dense", bits).model
    feeds = random_feeds(model, batch=3)
    np.testing.assert_array_equal(run(packed, feeds)[0], run(dense, feeds)[0])
    for name, array in init_arrays(unpack_model(packed).model).items():
        np.testing.assert_array_equal(array, init_arrays(dense)[name])


def test_short_streams_keep_the_plain_decoding():
    packed = repack(wide_mlp(keep=0.5), "packed").model
    assert grid_ops(packed) == {"BitShift": 0, "row sums": 0}


def test_a_long_stream_is_stored_at_a_width_the_grid_reads(monkeypatch):
    positions = np.cumsum(np.random.default_rng(0).integers(3, 8, size=5000))
    assert best_index_bits(positions) == 3
    assert packed_module.index_bits(positions) == 3
    monkeypatch.setattr(packed_module, "GRID_FROM", 1000)
    assert packed_module.index_bits(positions) in packed_module.GRID_BITS
    assert packed_module.index_bits(positions) == best_index_bits(positions, packed_module.GRID_BITS)


def test_a_float16_grid_with_zeros_past_its_last_row_folds_completely(monkeypatch, tmp_path):
    monkeypatch.setattr(packed_module, "GRID_FROM", 64)
    monkeypatch.setattr(packed_module, "ROW", 24)
    rng = np.random.default_rng(0)
    w = (rng.normal(size=(30, 100)) * (rng.random((30, 100)) < 0.5)).astype(np.float16)
    inits = [tensor("w", w), tensor("b", np.zeros(100, np.float16))]  # 100 zeros at the end: past the grid
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["y"])]
    model = make_model(nodes, [value("x", ["N", 30], onnx.TensorProto.FLOAT16)],
                       [value("y", ["N", 100], onnx.TensorProto.FLOAT16)], inits)
    packed = repack(model, "packed").model
    assert grid_ops(packed)["row sums"] >= 1
    options = onnxruntime.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    onnxruntime.InferenceSession(packed.SerializeToString(), options, providers=["CPUExecutionProvider"])
    assert not ops(onnx.load(str(tmp_path / "optimized.onnx"))) & (REBUILD_OPS | {"Pad", "Gather", "BitShift"})
    x = rng.normal(size=(2, 30)).astype(np.float16)
    np.testing.assert_array_equal(run(packed, {"x": x})[0], run(model, {"x": x})[0])


def test_a_wider_width_that_would_not_make_a_grid_is_not_taken(monkeypatch):
    rng = np.random.default_rng(0)
    gaps = np.where(rng.random(6000) < 0.15, rng.integers(32, 63, 6000), rng.integers(16, 32, 6000))
    positions = np.cumsum(gaps) - 1
    best = best_index_bits(positions)
    assert best not in packed_module.GRID_BITS
    monkeypatch.setattr(packed_module, "GRID_FROM", entry_count(positions, best))  # a grid at the best width only
    assert entry_count(positions, best_index_bits(positions, packed_module.GRID_BITS)) < packed_module.GRID_FROM
    assert packed_module.index_bits(positions) == best
