"""fold_masks: exact outputs of the zeroed original, sparse and dense storage, graph and metadata kept."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from graphs import (
    RUNNABLE,
    cnn,
    dense_from_sparse,
    init_arrays,
    mlp,
    random_feeds,
    run,
    set_initializer,
    with_zeros,
)

import onnx_dns
from onnx_dns.fold import METADATA_KEY, fold_masks, read_metadata
from onnx_dns.insert_masks import insert_masks, mask_name, masked_name
from onnx_dns.normalize import densify_sparse, lift_constants
from onnx_dns.prunable import find_layers


def masked_with_random_masks(model: onnx.ModelProto, keep_probability: float, seed: int = 7):
    """(masked model, {weight: boolean keep pattern}) with a random mask on every prunable tensor."""
    rng = np.random.default_rng(seed)
    names = [t.name for layer in find_layers(model) for t in layer.tensors]
    masked = insert_masks(model, names).model
    arrays = init_arrays(model)
    keep = {}
    for name in names:
        pattern = rng.random(arrays[name].shape) < keep_probability
        pattern.reshape(-1)[0] = True  # never all-zero, never all-one by chance on tiny biases
        pattern.reshape(-1)[-1] = pattern.size == 1
        keep[name] = pattern
        set_initializer(masked, mask_name(name), pattern.astype(np.float32))
    return masked, keep


@pytest.mark.parametrize("sparse", [True, False], ids=["sparse", "dense"])
@pytest.mark.parametrize("name", sorted(RUNNABLE))
def test_fold_gives_exactly_the_zeroed_original(name, sparse):
    model = lift_constants(RUNNABLE[name]()).model
    masked, keep = masked_with_random_masks(model, keep_probability=0.3)
    folded = fold_masks(masked, sparse=sparse)
    assert folded.modified
    # onnx shape inference (full_check) types sparse initializers as sparse tensors and fails on them
    onnx.checker.check_model(folded.model, full_check=not sparse)
    reference = with_zeros(model, keep)
    feeds = random_feeds(model)
    for got, want in zip(run(folded.model, feeds), run(reference, feeds)):
        np.testing.assert_array_equal(got, want)


def stored_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    arrays = init_arrays(model)
    arrays.update({s.values.name: dense_from_sparse(s) for s in model.graph.sparse_initializer})
    return arrays


@pytest.mark.parametrize("sparse", [True, False], ids=["sparse", "dense"])
def test_folded_values_are_the_weights_times_the_masks(sparse):
    model = cnn()
    masked, keep = masked_with_random_masks(model, keep_probability=0.2)
    stored = stored_weights(fold_masks(masked, sparse=sparse).model)
    original = init_arrays(model)
    assert set(stored) == set(original)
    for name, values in original.items():
        expected = np.where(keep[name], values, 0) if name in keep else values
        np.testing.assert_array_equal(stored[name], expected)
        assert stored[name].dtype == values.dtype


def test_sparse_and_dense_folds_agree_and_the_sparse_file_is_smaller(tmp_path):
    model = cnn()
    masked, _ = masked_with_random_masks(model, keep_probability=0.1)
    sparse = fold_masks(masked, sparse=True).model
    dense = fold_masks(masked, sparse=False).model
    assert sparse.graph.sparse_initializer and not dense.graph.sparse_initializer
    feeds = random_feeds(model, batch=4)
    for a, b in zip(run(sparse, feeds), run(dense, feeds)):
        np.testing.assert_array_equal(a, b)
    onnx.save_model(sparse, str(tmp_path / "sparse.onnx"))
    onnx.save_model(dense, str(tmp_path / "dense.onnx"))
    onnx.save_model(model, str(tmp_path / "original.onnx"))
    sparse_size = (tmp_path / "sparse.onnx").stat().st_size
    dense_size = (tmp_path / "dense.onnx").stat().st_size
    assert dense_size == pytest.approx((tmp_path / "original.onnx").stat().st_size, rel=0.05)
    assert sparse_size < 0.6 * dense_size


def test_sparse_initializers_have_int64_indices_and_pass_the_checker():
    masked, keep = masked_with_random_masks(cnn(), keep_probability=0.1)
    folded = fold_masks(masked, sparse=True).model
    onnx.checker.check_model(folded)
    names = set()
    for sp in folded.graph.sparse_initializer:
        names.add(sp.values.name)
        assert sp.indices.data_type == onnx.TensorProto.INT64
        assert list(sp.dims) == list(keep[sp.values.name].shape)
        assert len(onnx.numpy_helper.to_array(sp.values)) == int(keep[sp.values.name].sum())
    assert {"conv1.w", "fc.w"} <= names
    # a sparse initializer replaces the dense one: no name is stored twice
    assert not names & {t.name for t in folded.graph.initializer}


def test_sparse_storage_only_where_it_is_smaller():
    # float32 COO costs 12 bytes a nonzero against 4 a dense entry: at half density dense is smaller
    model = mlp()
    masked = insert_masks(model, ["fc1.w", "fc2.w"]).model
    set_initializer(masked, mask_name("fc1.w"), (np.arange(16 * 12) % 2).reshape(16, 12))  # 50% kept
    set_initializer(masked, mask_name("fc2.w"), (np.arange(12 * 5) % 5 == 0).reshape(12, 5))  # 20% kept
    folded = fold_masks(masked, sparse=True).model
    assert [s.values.name for s in folded.graph.sparse_initializer] == ["fc2.w"]
    assert "fc1.w" in {t.name for t in folded.graph.initializer}


def test_fully_pruned_weight_folds_and_runs():
    model = mlp()
    masked = insert_masks(model, ["fc1.w"]).model
    set_initializer(masked, mask_name("fc1.w"), np.zeros((16, 12)))
    folded = fold_masks(masked, sparse=True).model
    assert folded.graph.sparse_initializer[0].values.dims == [0]
    onnx.checker.check_model(folded)
    feeds = random_feeds(model)
    reference = with_zeros(model, {"fc1.w": np.zeros((16, 12), bool)})
    np.testing.assert_array_equal(run(folded, feeds)[0], run(reference, feeds)[0])


def test_fold_keeps_the_graph_interface_names_metadata_and_doc_strings():
    model = cnn()
    model.doc_string = "model doc"
    model.graph.doc_string = "graph doc"
    model.producer_version = "9.9"
    model.model_version = 3
    model.metadata_props.add(key="author", value="someone")
    masked, _ = masked_with_random_masks(model, keep_probability=0.5)
    folded = fold_masks(masked).model
    assert folded.doc_string == "model doc"
    assert folded.graph.doc_string == "graph doc"
    assert folded.graph.name == model.graph.name
    assert (folded.producer_name, folded.producer_version, folded.model_version) == ("onnx-dns-tests", "9.9", 3)
    assert folded.ir_version == model.ir_version
    assert list(folded.opset_import) == list(model.opset_import)
    assert list(folded.graph.input) == list(model.graph.input)
    assert list(folded.graph.output) == list(model.graph.output)
    assert [n.SerializeToString() for n in folded.graph.node] == [n.SerializeToString() for n in model.graph.node]
    props = {p.key: p.value for p in folded.metadata_props}
    assert props["author"] == "someone"


def test_fold_removes_every_mask_and_mul():
    masked, _ = masked_with_random_masks(cnn(), keep_probability=0.5)
    assert any(n.op_type == "Mul" for n in masked.graph.node)
    folded = fold_masks(masked, sparse=False).model
    assert not any(n.op_type == "Mul" for n in folded.graph.node)
    names = [t.name for t in folded.graph.initializer] + [s.values.name for s in folded.graph.sparse_initializer]
    assert not any("mask" in n for n in names)
    assert not any("mask" in i for n in folded.graph.node for i in list(n.input) + list(n.output))
    assert sorted(names) == sorted(t.name for t in cnn().graph.initializer)


def test_fold_keeps_a_users_own_mul_nodes():
    model = mlp()
    scale = onnx.numpy_helper.from_array(np.full((5,), 2.0, np.float32), "scale")
    model.graph.initializer.append(scale)
    model.graph.node[-1].output[0] = "pre"
    model.graph.node.append(onnx.helper.make_node("Mul", ["pre", "scale"], ["y"], name="user_mul"))
    masked = insert_masks(model, ["fc1.w"]).model
    folded = fold_masks(masked).model
    assert [n.name for n in folded.graph.node if n.op_type == "Mul"] == ["user_mul"]
    feeds = random_feeds(model)
    np.testing.assert_array_equal(run(folded, feeds)[0], run(model, feeds)[0])


def test_metadata_records_tool_version_storage_and_the_record():
    masked, _ = masked_with_random_masks(mlp(), keep_probability=0.5)
    for sparse, storage in ((True, "sparse"), (False, "dense")):
        folded = fold_masks(masked, sparse=sparse, record={"epochs": 3, "layers": ["fc1", "fc2"]}).model
        raw = [p.value for p in folded.metadata_props if p.key == METADATA_KEY]
        assert len(raw) == 1
        data = json.loads(raw[0])
        assert data["version"] == onnx_dns.__version__
        assert data["storage"] == storage
        assert data["epochs"] == 3 and data["layers"] == ["fc1", "fc2"]
        assert read_metadata(folded) == data
    assert read_metadata(mlp()) is None


def test_refolding_a_folded_model_replaces_its_metadata_entry():
    masked, _ = masked_with_random_masks(mlp(), keep_probability=0.5)
    once = fold_masks(masked, record={"round": 1}).model
    again = fold_masks(insert_masks(densify_sparse(once).model, ["fc2.w"]).model, record={"round": 2}).model
    assert [p.key for p in again.metadata_props].count(METADATA_KEY) == 1
    assert read_metadata(again)["round"] == 2


def test_fold_without_masks_is_a_no_op():
    model = mlp()
    result = fold_masks(model)
    assert not result.modified
    assert result.model.SerializeToString() == model.SerializeToString()


def test_no_pass_mutates_its_input():
    model = cnn()
    before = model.SerializeToString()
    masked, _ = masked_with_random_masks(model, keep_probability=0.3)
    assert model.SerializeToString() == before
    masked_before = masked.SerializeToString()
    sparse = fold_masks(masked, sparse=True, record={"x": 1}).model
    fold_masks(masked, sparse=False)
    assert masked.SerializeToString() == masked_before
    sparse_before = sparse.SerializeToString()
    densify_sparse(sparse)
    lift_constants(sparse)
    assert sparse.SerializeToString() == sparse_before
    const = RUNNABLE["constant_weight"]()
    const_before = const.SerializeToString()
    lift_constants(const)
    assert const.SerializeToString() == const_before


def test_densify_sparse_gives_the_dense_fold():
    masked, _ = masked_with_random_masks(cnn(), keep_probability=0.1)
    sparse = fold_masks(masked, sparse=True).model
    dense = fold_masks(masked, sparse=False).model
    densified = densify_sparse(sparse)
    assert densified.modified
    assert not densified.model.graph.sparse_initializer
    onnx.checker.check_model(densified.model, full_check=True)
    got, want = init_arrays(densified.model), init_arrays(dense)
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
        assert got[name].dtype == want[name].dtype
    assert not densify_sparse(dense).modified


def test_fold_refuses_a_masked_weight_that_is_a_graph_output():
    masked = insert_masks(mlp(), ["fc1.w"]).model
    masked.graph.output.append(onnx.helper.make_tensor_value_info(masked_name("fc1.w"), onnx.TensorProto.FLOAT,
                                                                  [16, 12]))
    with pytest.raises(ValueError, match="graph output"):
        fold_masks(masked)


@pytest.mark.parametrize("sparse", [True, False], ids=["sparse", "dense"])
def test_fold_takes_trained_values_by_name_without_touching_the_model(sparse):
    model = cnn()
    masked, _ = masked_with_random_masks(model, keep_probability=0.5)
    before = masked.SerializeToString()
    rng = np.random.default_rng(3)
    original = init_arrays(model)
    names = [t.name for layer in find_layers(model) for t in layer.tensors]
    trained = {n: rng.standard_normal(original[n].shape) for n in names}  # float64: stored as the model's dtype
    keep = {n: rng.random(original[n].shape) < 0.3 for n in names}
    values = trained | {mask_name(n): keep[n].astype(np.float32) for n in names}
    stored = stored_weights(fold_masks(masked, sparse=sparse, values=values).model)
    assert masked.SerializeToString() == before
    assert set(stored) == set(original)
    for name, value in original.items():
        expected = np.where(keep[name], trained[name], 0).astype(value.dtype) if name in keep else value
        np.testing.assert_array_equal(stored[name], expected)
        assert stored[name].dtype == value.dtype


def test_fold_refuses_a_value_of_the_wrong_shape():
    masked, _ = masked_with_random_masks(cnn(), keep_probability=0.5)
    name = next(t.name for t in masked.graph.initializer if not t.name.endswith("__dns_mask"))
    with pytest.raises(ValueError, match="shape"):
        fold_masks(masked, values={name: np.zeros((1, 2, 3, 4, 5), np.float32)})


@pytest.mark.parametrize("sparse, expected", [(True, 6), (False, 4)], ids=["sparse", "dense"])
def test_sparse_initializers_raise_an_old_ir_version_to_six(sparse, expected):
    model = cnn()
    model.ir_version = 4
    masked, _ = masked_with_random_masks(model, keep_probability=0.1)
    folded = fold_masks(masked, sparse=sparse).model
    assert bool(folded.graph.sparse_initializer) == sparse
    assert folded.ir_version == expected


def test_fold_refuses_values_for_names_the_model_does_not_have():
    masked, _ = masked_with_random_masks(cnn(), keep_probability=0.5)
    with pytest.raises(ValueError, match="no initializer"):
        fold_masks(masked, values={"conv9.w": np.zeros(3, np.float32)})
