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
    sizes = [n for *_, n in reader.layout.segments]
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
    ("split", "add3: Add joins different channels of one group"), ("add_constant", "not zero where pruned")])
def test_unsafe_groups_are_refused_and_logged_with_the_node(kind, why, caplog):
    with caplog.at_level(logging.INFO, logger="onnx_dns.channel_groups"):
        groups, found = by_name(cg.refused(kind))
    assert "conv1" not in groups and why in found.refused["conv1"]
    assert any("conv1" in r.message and why in r.message for r in caplog.records)
    assert len(groups) == 1  # the conv after it is still prunable


def test_yolo_c2f_split_parts_cv1s_channels_and_the_residual_bottlenecks_join_the_second_half():
    groups, found = by_name(cg.c2f())
    cv1 = groups["conv5"]  # the conv before the Split
    assert cv1.size == 8 and not found.refused.keys() - {"gemm35"}
    assert cv1.spans["conv5.w"] == (0, 8) and cv1.spans["bn6.scale"] == (0, 8)
    for bottleneck_out in ("conv14", "conv23"):  # x + cv2(cv1(x)): their filters are the second half's channels
        assert (f"{bottleneck_out}.w", 0) in cv1.masked and cv1.spans[f"{bottleneck_out}.w"] == (4, 4)
        assert bottleneck_out not in groups
    assert {"conv10", "conv19", "conv29"} <= set(groups)  # inner bottleneck convs, cv2
    gid = next(g for g, group in found.groups.items() if group is cv1)
    split = next(e for e in found.edits if e.kind == "split")
    assert [x.segments for x in split.layouts] == [((gid, 0, 4),), ((gid, 4, 4),)]
    reader = next(s for s in found.slots if s.tensor == "conv29.w" and s.axis == 1)  # cv2 reads the Concat
    assert reader.layout.segments == ((gid, 0, 4), (gid, 4, 4), (gid, 4, 4), (gid, 4, 4))


@pytest.mark.parametrize("sizes_input", [True, False])
def test_c2f_without_shortcut_keeps_each_bottleneck_its_own_group(sizes_input):
    groups, found = by_name(cg.c2f(shortcut=False, sizes_input=sizes_input))
    assert {"conv5", "conv10", "conv14", "conv18", "conv22", "conv27"} <= set(groups)
    assert set(groups["conv5"].spans.values()) == {(0, 8)}
    reader = next(s for s in found.slots if s.tensor == "conv27.w" and s.axis == 1)
    named = [(found.groups[g].name, start, n) for g, start, n in reader.layout.segments]
    assert named == [("conv5", 0, 4), ("conv5", 4, 4), ("conv14", 0, 4), ("conv22", 0, 4)]


def test_union_places_a_group_inside_a_piece_and_refuses_what_would_only_overlap():
    from onnx_dns.channel_layout import Walk

    walk = Walk(cg.residual(), None)
    big, small, other = walk.new_group(8), walk.new_group(4), walk.new_group(8)
    assert walk.union((small, 0, 4), (big, 4, 4))  # small becomes channels 4..7 of big
    assert walk.locate(small) == (big, 4)
    assert walk.union((small, 2, 2), (big, 6, 2))  # the same channels again: consistent
    assert not walk.union((small, 0, 2), (big, 0, 2))  # channels 4, 5 of big are not 0, 1
    assert not walk.union((other, 0, 4), (small, 0, 4))  # other would hang half outside big
    assert walk.find(other) == other


def test_the_yolo_head_prunes_its_branches_and_keeps_box_class_and_dfl_channels():
    groups, found = by_name(cg.yolo_head())
    assert set(groups) == {"conv1", "conv4", "conv7", "conv11", "conv14"}  # stem and the branches' 3x3 convs
    for fixed in ("conv10", "conv17", "conv24"):  # 4 * reg_max box outputs, class outputs, the DFL conv
        assert "Reshape other than a flatten" in found.refused[fixed]
    assert not any(t in ("dfl.w", "conv10.w", "conv17.w") for g in groups.values() for t, _ in g.masked)


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
