"""insert_masks: one mask and one Mul per weight; masks at 1 compute the original; zeros start masked."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from graphs import RUNNABLE, init_arrays, mlp, random_feeds, run, set_initializer, shared_weight

from onnx_dns.insert_masks import insert_masks, mask_name, mask_pairs, masked_name, read_masks
from onnx_dns.normalize import lift_constants
from onnx_dns.prunable import find_layers


def prepared(name: str) -> onnx.ModelProto:
    return lift_constants(RUNNABLE[name]()).model


def all_tensors(model: onnx.ModelProto) -> list[str]:
    return [t.name for layer in find_layers(model) for t in layer.tensors]


@pytest.mark.parametrize("name", sorted(RUNNABLE))
def test_masks_at_one_give_the_original_outputs(name):
    model = prepared(name)
    names = all_tensors(model)
    assert names
    masked = insert_masks(model, names).model
    onnx.checker.check_model(masked, full_check=True)
    assert all(np.all(m == 1) for m in read_masks(masked).values())
    feeds = random_feeds(model)
    for got, want in zip(run(masked, feeds), run(model, feeds)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("name", sorted(RUNNABLE))
def test_one_mask_and_one_mul_per_weight_and_consumers_read_the_masked_value(name):
    model = prepared(name)
    names = all_tensors(model)
    masked = insert_masks(model, names).model
    inits = {t.name: t for t in masked.graph.initializer}
    muls = [n for n in masked.graph.node if n.op_type == "Mul"]
    assert len(muls) == len(names)
    assert mask_pairs(masked) == {n: mask_name(n) for n in names}
    for n in names:
        assert inits[mask_name(n)].dims == inits[n].dims
        assert inits[mask_name(n)].data_type == inits[n].data_type
        readers = [node for node in masked.graph.node if n in node.input]
        assert [(r.op_type, list(r.input), list(r.output)) for r in readers] == [
            ("Mul", [n, mask_name(n)], [masked_name(n)])
        ]
    # every node of the original is there, reading the masked names instead of the weights
    original = [(n.op_type, [masked_name(i) if i in names else i for i in n.input], list(n.output))
                for n in model.graph.node]
    rest = [(n.op_type, list(n.input), list(n.output)) for n in masked.graph.node if n.op_type != "Mul"]
    assert rest == original


def test_shared_weight_gets_one_mask_read_by_both_matmuls():
    model = shared_weight()
    masked = insert_masks(model, ["sw.w"]).model
    assert [t.name for t in masked.graph.initializer].count(mask_name("sw.w")) == 1
    readers = [n.name for n in masked.graph.node if masked_name("sw.w") in n.input]
    assert readers == ["first", "second"]


def test_masks_start_at_zero_where_the_weight_is_already_zero():
    model = mlp(zero_fraction=0.5)
    weights = init_arrays(model)
    assert np.mean(weights["fc1.w"] == 0) == pytest.approx(0.5, abs=0.01)
    masked = insert_masks(model, ["fc1.w", "fc1.b", "fc2.w"]).model
    masks = read_masks(masked)
    for name in ("fc1.w", "fc1.b", "fc2.w"):
        np.testing.assert_array_equal(masks[name], (weights[name] != 0).astype(np.float32))
    feeds = random_feeds(model)
    np.testing.assert_array_equal(run(masked, feeds)[0], run(model, feeds)[0])


def test_changing_a_mask_changes_the_output():
    model = mlp()
    masked = insert_masks(model, ["fc1.w"]).model
    feeds = random_feeds(model)
    set_initializer(masked, mask_name("fc1.w"), np.zeros((16, 12)))
    # with fc1.w fully masked, the first layer is relu(bias): the output no longer depends on the input
    out = run(masked, feeds)[0]
    np.testing.assert_allclose(out[0], out[1], rtol=1e-6)
    assert not np.allclose(out, run(model, feeds)[0])


def test_insert_masks_does_not_mutate_its_input():
    model = mlp()
    before = model.SerializeToString()
    insert_masks(model, ["fc1.w", "fc2.w"])
    assert model.SerializeToString() == before


def test_duplicate_names_get_one_mask():
    masked = insert_masks(mlp(), ["fc1.w", "fc1.w"]).model
    assert len(mask_pairs(masked)) == 1
    assert sum(n.op_type == "Mul" for n in masked.graph.node) == 1


def test_no_weights_is_a_no_op():
    model = mlp()
    result = insert_masks(model, [])
    assert not result.modified
    assert result.model.SerializeToString() == model.SerializeToString()


def test_unknown_initializer_is_refused():
    with pytest.raises(KeyError, match="nope"):
        insert_masks(mlp(), ["fc1.w", "nope"])


def test_masking_twice_is_refused():
    masked = insert_masks(mlp(), ["fc1.w"]).model
    with pytest.raises(ValueError, match="already has a mask"):
        insert_masks(masked, ["fc1.w"])


def test_mask_names_do_not_collide_with_the_weight_names():
    assert mask_name("w") != "w" and masked_name("w") != "w" and mask_name("w") != masked_name("w")
