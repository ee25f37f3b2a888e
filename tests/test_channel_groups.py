"""The channel dependency pass: which tensors' channels are removed together, and which groups are refused."""

from __future__ import annotations

import logging

import channel_graphs as cg
import numpy as np
import pytest

from onnx_dns.channel_groups import find_channel_groups


def by_name(model):
    groups = find_channel_groups(model)
    return {g.name: g for g in groups.groups.values()}, groups


def test_residual_add_couples_both_branches_with_their_batchnorms_and_the_depthwise_conv():
    groups, _ = by_name(cg.residual())
    coupled = {t for t, _ in groups["conv1"].masked}
    assert {"conv1.w", "conv1.b", "bn2.scale", "bn2.bias", "conv7.w", "bn8.scale"} <= coupled
    assert {"conv11.w", "conv11.b", "bn12.scale"} <= coupled  # the depthwise conv carries the group through
    assert {t for t, _ in groups["conv4"].masked} == {"conv4.w", "conv4.b", "bn5.scale", "bn5.bias"}
    assert "conv7" not in groups and groups["conv14"].size == 16


def test_readers_and_statistics_are_sliced_on_the_right_axis():
    _, found = by_name(cg.residual())
    slots = {(s.tensor, s.axis): s for s in found.slots}
    assert ("conv4.w", 1) in slots and not slots["conv4.w", 1].masked  # reads conv1's channels
    assert ("bn2.mean", 0) in slots and not slots["bn2.mean", 0].masked
    assert ("gemm19.w", 1) in slots  # the head reads conv14's channels
    assert slots["gemm19.w", 0].layout.segments[0][0] not in found.groups  # its own outputs are kept
    assert [e.kind for e in found.edits] == ["group"]


def test_concat_lays_groups_side_by_side_and_split_parts_them_again():
    groups, found = by_name(cg.concat())
    reader = next(s for s in found.slots if s.tensor == "conv8.w" and s.axis == 1)
    sizes = [n for _, n in reader.layout.segments]
    assert sizes == [6, 3, 4]  # conv1, the graph input (kept whole), conv3
    assert {"conv1", "conv3", "conv8"} <= set(groups)
    assert [len(e.layouts) for e in found.edits if e.kind == "split"] == [2]


@pytest.mark.parametrize("reshape", [False, True])
def test_flatten_into_gemm_spreads_each_channel_over_its_block(reshape):
    _, found = by_name(cg.flatten_gemm(reshape=reshape))
    slot = next(s for s in found.slots if s.tensor == "gemm5.w" and s.axis == 0)
    assert (slot.layout.outer, slot.layout.inner) == (1, 16)
    assert [e.kind for e in found.edits] == (["reshape"] if reshape else [])


def test_channels_last_transposes_move_the_channel_axis():
    groups, found = by_name(cg.channels_last())
    slot = next(s for s in found.slots if s.tensor == "fc.w")
    assert (slot.axis, slot.layout.outer, slot.layout.inner) == (0, 16, 1)  # NHWC flattened: channel is fastest
    assert any(s.tensor == "scale" and s.axis == 0 for s in found.slots)
    assert "conv2" in groups


@pytest.mark.parametrize("kind, why", [
    ("sigmoid", "not zero where pruned"), ("grouped", "grouped convolution"), ("softmax", "Softmax has no channel"),
    ("split", "Split cuts through"), ("add_constant", "not zero where pruned")])
def test_unsafe_groups_are_refused_and_logged_with_the_node(kind, why, caplog):
    with caplog.at_level(logging.INFO, logger="onnx_dns.channel_groups"):
        groups, found = by_name(cg.refused(kind))
    assert "conv1" not in groups and why in found.refused["conv1"]
    assert any("conv1" in r.message and why in r.message for r in caplog.records)
    assert len(groups) == 1  # the conv after it is still prunable


def test_yolo_c2f_block_prunes_what_it_can_and_names_the_split_it_cannot_cross():
    groups, found = by_name(cg.c2f())
    assert "split9" in found.refused["conv5"] and "Split cuts through" in found.refused["conv5"]
    assert "split9_out1" in found.refused["conv14"]  # the bottleneck's residual joins the fixed half
    assert {"conv1", "conv10", "conv20"} <= set(groups)  # SiLU (x * Sigmoid(x)) keeps pruned channels zero
    assert not any(s.tensor == "conv20.w" and s.axis == 1 for s in found.slots)  # cv2 keeps its inputs


def test_graph_outputs_keep_their_channels():
    _, found = by_name(cg.residual())
    assert "graph output" in found.refused["gemm19"]


def test_a_weight_shared_by_two_convs_is_refused():
    net = cg.Net(1)
    x = net.conv("x", 3, 6)
    y = net.op("Conv", [x, "conv1.w"], pads=[1, 1, 1, 1])
    z = net.op("Conv", ["x", "conv1.w"], pads=[1, 1, 1, 1])
    shared = net.model({"x": ["N", 3, 6, 6]}, [cg.head(net, net.op("Add", [net.op("Relu", [x]), z]), 6), y])
    found = find_channel_groups(shared)
    assert "shared" in " ".join(found.refused.values())
    assert not np.any([t == "conv1.w" for g in found.groups.values() for t, _ in g.masked])


def test_the_pass_does_not_modify_its_input():
    model = cg.residual()
    before = model.SerializeToString()
    find_channel_groups(model)
    assert model.SerializeToString() == before


def test_a_reshape_that_does_not_flatten_per_sample_is_refused():
    net = cg.Net(0)
    p = net.op("Relu", [net.conv("x", 3, 6)])  # [N, 6, 4, 4]
    rows = net.op("Reshape", [p, net.const("rows", np.array([-1, 16]))])  # [N * 6, 16]: not a flatten
    found = find_channel_groups(net.model({"x": [2, 3, 4, 4]}, [net.gemm(rows, 16, 3)]))
    assert "Reshape other than a flatten" in found.refused["conv1"]


def test_a_value_read_inside_an_if_body_is_refused():
    from onnx import TensorProto, helper

    net = cg.Net(0)
    c = net.op("Relu", [net.conv("x", 3, 6)])
    body = helper.make_graph([helper.make_node("Identity", [c], ["branch"])], "body", [],
                             [helper.make_tensor_value_info("branch", TensorProto.FLOAT, None)])
    net.nodes.append(helper.make_node("If", [net.const("flag", np.array(True))], ["chosen"], name="if",
                                      then_branch=body, else_branch=body))
    y = net.op("Relu", [net.conv(c, 6, 6)])
    model = net.model({"x": ["N", 3, 4, 4]}, [cg.head(net, y, 6), "chosen"])
    found = find_channel_groups(model)
    assert "body of If" in found.refused["conv1"]
