"""The structured fold: a smaller dense model whose outputs equal the masked training model's."""

from __future__ import annotations

import channel_graphs as cg
import numpy as np
import onnx
import pytest
from graphs import init_arrays, random_feeds, run
from onnx import numpy_helper

from onnx_dns.channel_fold import fold_channels, kept_channels
from onnx_dns.channel_groups import find_channel_groups
from onnx_dns.fold import fold_masks
from onnx_dns.graph import initializers
from onnx_dns.insert_masks import insert_masks, mask_name


def masked_model(model, groups, seed=0):
    """The model with channel masks inserted, about half of each group's channels at 0 (one kept at least)."""
    rng = np.random.default_rng(seed)
    inits = initializers(model.graph)
    shapes = {t: g.mask_shape(t, len(inits[t].dims)) for g in groups.groups.values() for t, _ in g.masked}
    masked = insert_masks(model, list(shapes), shapes).model
    masks, tensors = {}, initializers(masked.graph)
    for group in groups.groups.values():
        keep = rng.random(group.size) < 0.5
        keep[rng.integers(group.size)] = True
        for tensor, _ in group.masked:
            start, count = group.spans[tensor]
            masks[tensor] = keep[start:start + count].astype(np.float32).reshape(shapes[tensor])
            tensors[mask_name(tensor)].CopyFrom(numpy_helper.from_array(masks[tensor], mask_name(tensor)))
    return masked, masks


def structured(model):
    groups = find_channel_groups(model)
    masked, masks = masked_model(model, groups)
    small = fold_channels(fold_masks(masked, sparse=False).model, groups, kept_channels(groups, masks)).model
    return masked, small


GRAPHS = {"residual": cg.residual, "concat": cg.concat, "flatten": cg.flatten_gemm,
          "reshape": lambda: cg.flatten_gemm(reshape=True), "channels_last": cg.channels_last, "c2f": cg.c2f,
          "c2f_plain": lambda: cg.c2f(shortcut=False), "c2f_equal_halves": lambda: cg.c2f(sizes_input=False),
          "swapped_halves": cg.swapped_halves, "yolo_head": cg.yolo_head}


@pytest.mark.parametrize("name", list(GRAPHS))
def test_folded_outputs_equal_the_masked_model(name):
    masked, small = structured(GRAPHS[name]())
    onnx.checker.check_model(small, full_check=True)
    feeds = random_feeds(masked, seed=3, batch=3)
    for want, got in zip(run(masked, feeds), run(small, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert not small.graph.sparse_initializer and not any("__dns" in t.name for t in small.graph.initializer)
    assert sum(a.size for a in init_arrays(small).values()) < sum(a.size for a in init_arrays(masked).values()) / 1.5


def test_weights_lose_whole_filters_and_the_next_layers_input_channels():
    model = cg.residual()
    _, small = structured(model)
    before, after = init_arrays(model), init_arrays(small)
    kept = after["conv1.w"].shape[0]
    assert kept < 8 and after["conv4.w"].shape[1] == kept and after["bn2.var"].shape == (kept,)
    assert after["conv11.w"].shape == (kept, 1, 3, 3)  # depthwise follows the residual group
    depthwise = next(n for n in small.graph.node if n.op_type == "Conv" and n.input[1] == "conv11.w")
    assert next(a.i for a in depthwise.attribute if a.name == "group") == kept
    assert after["gemm19.w"].shape == (4, after["conv14.w"].shape[0]) and before["gemm19.w"].shape == (4, 16)


def test_without_masking_the_batchnorm_the_pruned_channels_would_leak():
    """Negative control: drop the BatchNorm masks and the fold no longer matches (the shift survives)."""
    model = cg.residual()
    groups = find_channel_groups(model)
    masked, masks = masked_model(model, groups)
    for tensor in [t for t in masks if t.startswith("bn")]:
        next(i for i in masked.graph.initializer if i.name == mask_name(tensor)).CopyFrom(
            numpy_helper.from_array(np.ones_like(masks[tensor]), mask_name(tensor)))
    small = fold_channels(fold_masks(masked, sparse=False).model, groups, kept_channels(groups, masks)).model
    feeds = random_feeds(masked, seed=3, batch=3)
    assert not np.allclose(run(masked, feeds)[0], run(small, feeds)[0], atol=1e-4)


@pytest.mark.parametrize("sizes_input", [True, False])
def test_c2f_split_sizes_follow_the_channels_each_half_keeps(sizes_input):
    model = cg.c2f(sizes_input=sizes_input)
    groups = find_channel_groups(model)
    gid = next(g for g, group in groups.groups.items() if group.name == "conv5")
    keeps = {gid: np.array([1, 0, 1, 1, 0, 1, 0, 0], bool)}
    small = fold_channels(model, groups, keeps).model
    split = next(n for n in small.graph.node if n.op_type == "Split")
    assert numpy_helper.to_array(initializers(small.graph)[split.input[1]]).tolist() == [3, 1]
    after = init_arrays(small)
    assert after["conv5.w"].shape[0] == 4 and after["conv14.w"].shape[0] == after["conv23.w"].shape[0] == 1
    assert after["conv10.w"].shape[1] == 1 and after["conv29.w"].shape[1] == 3 + 1 + 1 + 1
    np.testing.assert_array_equal(after["conv14.w"], init_arrays(model)["conv14.w"][1:2])  # channel 5 = 4 + 1


def test_a_half_that_loses_every_channel_keeps_one_zero_channel_and_the_same_outputs():
    model = cg.c2f()
    groups = find_channel_groups(model)
    masked, masks = masked_model(model, groups)
    cv1 = next(group for group in groups.groups.values() if group.name == "conv5")
    for tensor, _ in cv1.masked:
        start, count = cv1.spans[tensor]
        keep = np.array([1, 1, 0, 1, 0, 0, 0, 0], np.float32)[start:start + count]
        masks[tensor] = keep.reshape(masks[tensor].shape)
        next(i for i in masked.graph.initializer if i.name == mask_name(tensor)).CopyFrom(
            numpy_helper.from_array(masks[tensor], mask_name(tensor)))
    small = fold_channels(fold_masks(masked, sparse=False).model, groups, kept_channels(groups, masks)).model
    split = next(n for n in small.graph.node if n.op_type == "Split")
    assert numpy_helper.to_array(initializers(small.graph)[split.input[1]]).tolist() == [3, 1]
    assert not np.any(init_arrays(small)["conv14.w"])  # the kept channel of the second half is a pruned one
    feeds = random_feeds(masked, seed=4, batch=2)
    np.testing.assert_allclose(run(small, feeds)[0], run(masked, feeds)[0], rtol=1e-5, atol=1e-5)


def test_the_fold_does_not_modify_its_input_and_refuses_an_empty_group():
    model = cg.flatten_gemm()
    groups = find_channel_groups(model)
    before = model.SerializeToString()
    fold_channels(model, groups, {g: np.arange(grp.size) % 2 == 0 for g, grp in groups.groups.items()})
    assert model.SerializeToString() == before
    with pytest.raises(ValueError, match="every channel"):
        kept_channels(groups, {t: np.zeros(g.size) for g in groups.groups.values() for t, _ in g.masked})


@pytest.mark.parametrize("name", ["resnet_torchscript", "resnet_dynamo", "depthwise_torchscript", "depthwise_dynamo",
                                  "cnn_bn_dropout_torchscript"])
def test_exporter_fixtures_fold_to_the_masked_models_outputs(name):
    from pathlib import Path

    from onnx_dns.normalize import lift_constants

    model = lift_constants(onnx.load(str(Path(__file__).parent / "fixtures" / f"{name}.onnx"))).model
    masked, small = structured(model)
    onnx.checker.check_model(small, full_check=True)
    feeds = random_feeds(masked, seed=5, batch=3)
    for want, got in zip(run(masked, feeds), run(small, feeds)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert sum(a.size for a in init_arrays(small).values()) < sum(a.size for a in init_arrays(model).values())
