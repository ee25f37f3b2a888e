"""find_layers: exactly the weights and biases of Conv/ConvTranspose/Gemm/MatMul(+Add), nothing else."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from graphs import EXPECTED_LAYERS, cnn, constant_weight, embedding, identity_weight, mlp, shared_weight

from onnx_dns.insert_masks import insert_masks
from onnx_dns.normalize import densify_sparse, lift_constants
from onnx_dns.prunable import find_layers


def found(model: onnx.ModelProto, **kwargs) -> dict[str, tuple[str, str | None]]:
    return {
        layer.name: (layer.weight.name, layer.bias.name if layer.bias else None)
        for layer in find_layers(model, **kwargs)
    }


def prunable_names(model: onnx.ModelProto, **kwargs) -> set[str]:
    return {t.name for layer in find_layers(model, **kwargs) for t in layer.tensors}


@pytest.mark.parametrize("name", sorted(EXPECTED_LAYERS))
def test_finds_exactly_the_weights_and_biases(name):
    builder, expected = EXPECTED_LAYERS[name]
    assert found(builder()) == expected


@pytest.mark.parametrize("name", sorted(EXPECTED_LAYERS))
def test_layer_shapes_ops_and_sizes_match_the_initializers(name):
    model = EXPECTED_LAYERS[name][0]()
    inits = {t.name: tuple(t.dims) for t in model.graph.initializer}
    ops = {n.name: n.op_type for n in model.graph.node}
    for layer in find_layers(model):
        assert layer.op == ops[layer.name]
        assert layer.weight.role == "weight"
        assert layer.weight.shape == inits[layer.weight.name]
        assert layer.weight.size == int(np.prod(inits[layer.weight.name]))
        if layer.bias is not None:
            assert layer.bias.role == "bias"
            assert layer.bias.shape == inits[layer.bias.name]
        assert layer.params == sum(int(np.prod(inits[t.name])) for t in layer.tensors)


def test_layers_come_in_graph_order():
    assert [layer.name for layer in find_layers(cnn())] == ["conv1", "fc"]
    assert [layer.name for layer in find_layers(mlp())] == ["fc1", "fc2"]


def test_batchnorm_stats_shape_constants_and_embedding_tables_are_not_prunable():
    names = prunable_names(cnn()) | prunable_names(mlp()) | prunable_names(embedding())
    for left_alone in ("bn.scale", "bn.bias", "bn.mean", "bn.var", "shape", "emb.table"):
        assert left_alone not in names


def test_shared_weight_is_one_layer():
    layers = find_layers(shared_weight())
    assert len(layers) == 1
    assert layers[0].weight.name == "sw.w"


def test_weight_in_constant_node_is_found_after_lift_constants():
    model = constant_weight()
    assert "cw.w" not in prunable_names(model)
    lifted = lift_constants(model)
    assert lifted.modified
    assert not any(n.op_type == "Constant" for n in lifted.model.graph.node)
    assert found(lifted.model) == {"cmm": ("cw.w", "cw.b")}
    const = next(n for n in model.graph.node if n.op_type == "Constant")
    lifted_tensor = next(t for t in lifted.model.graph.initializer if t.name == "cw.w")
    np.testing.assert_array_equal(
        onnx.numpy_helper.to_array(lifted_tensor), onnx.numpy_helper.to_array(const.attribute[0].t)
    )
    onnx.checker.check_model(lifted.model, full_check=True)


def test_lift_constants_without_constants_changes_nothing():
    model = mlp()
    result = lift_constants(model)
    assert not result.modified
    assert result.model.SerializeToString() == model.SerializeToString()


def test_weight_behind_identity_is_the_initializer():
    assert found(identity_weight()) == {"imm": ("iw.w", None)}


def test_include_globs_match_layer_or_weight_name():
    model = cnn()
    assert set(found(model, include=("conv*",))) == {"conv1"}
    assert set(found(model, include=("fc.w",))) == {"fc"}
    assert set(found(model, include=("conv1", "fc"))) == {"conv1", "fc"}
    assert found(model, include=("nothing*",)) == {}


def test_exclude_globs_match_layer_or_weight_name():
    model = cnn()
    assert set(found(model, exclude=("conv*",))) == {"fc"}
    assert set(found(model, exclude=("fc.*",))) == {"conv1"}
    assert set(found(model, include=("*",), exclude=("*",))) == set()


def test_biases_false_leaves_biases_unmasked():
    model = cnn()
    layers = find_layers(model, biases=False)
    assert [layer.weight.name for layer in layers] == ["conv1.w", "fc.w"]
    assert all(layer.bias is None for layer in layers)
    assert prunable_names(model, biases=False) == {"conv1.w", "fc.w"}


def test_weight_that_is_a_graph_input_is_not_prunable():
    # an initializer listed as a graph input can be overridden at run time: not a fixed weight
    model = mlp()
    model.graph.input.append(onnx.helper.make_tensor_value_info("fc2.w", onnx.TensorProto.FLOAT, [12, 5]))
    assert set(found(model)) == {"fc1"}


def test_integer_initializers_are_never_prunable():
    model = mlp()
    for t in model.graph.initializer:
        if t.name == "fc2.w":
            t.CopyFrom(onnx.numpy_helper.from_array(np.ones((12, 5), dtype=np.int32), "fc2.w"))
    assert "fc2.w" not in prunable_names(model)


def test_masked_model_has_the_same_layers():
    model = mlp()
    masked = insert_masks(model, ["fc1.w", "fc1.b", "fc2.w"]).model
    assert found(masked) == found(model)


def test_unnamed_nodes_keep_their_names_in_the_masked_model():
    model = mlp()
    for node in model.graph.node:
        node.name = ""
    names = found(model)
    assert len(names) == 2 and len(set(names)) == 2
    masked = insert_masks(model, ["fc1.w", "fc2.w"]).model
    assert found(masked) == names


def test_densified_sparse_model_has_the_same_layers():
    model = mlp()
    sparse = onnx.ModelProto()
    sparse.CopyFrom(model)
    w = next(t for t in sparse.graph.initializer if t.name == "fc1.w")
    dims = tuple(w.dims)
    array = onnx.numpy_helper.to_array(w).reshape(-1)
    idx = np.arange(0, array.size, 3, dtype=np.int64)
    sp = onnx.helper.make_sparse_tensor(
        onnx.numpy_helper.from_array(array[idx], "fc1.w"), onnx.numpy_helper.from_array(idx, "fc1.w_idx"), dims
    )
    sparse.graph.initializer.remove(w)
    sparse.graph.sparse_initializer.append(sp)
    assert "fc1" not in found(sparse)
    dense = densify_sparse(sparse)
    assert dense.modified and not dense.model.graph.sparse_initializer
    assert found(dense.model) == found(model)
    expected = np.zeros(array.size, np.float32)
    expected[idx] = array[idx]
    restored = next(t for t in dense.model.graph.initializer if t.name == "fc1.w")
    np.testing.assert_array_equal(onnx.numpy_helper.to_array(restored), expected.reshape(dims))


def test_find_layers_does_not_mutate_the_model():
    model = cnn()
    before = model.SerializeToString()
    find_layers(model, include=("*",), exclude=("fc",), biases=False)
    assert model.SerializeToString() == before
