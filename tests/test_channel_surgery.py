"""Channel surgery's rule (pure numpy), its plans' parameter budget, and its straight-through gradient."""

from __future__ import annotations

import channel_graphs as cg
import numpy as np
import pytest
from engine_fixtures import linear, np_softmax_rows
from graphs import set_initializer

from onnx_dns.artifacts import build_artifacts
from onnx_dns.channel_groups import find_channel_groups
from onnx_dns.channel_plans import channel_keep, split_pieces
from onnx_dns.criteria.channel import Channels, block_multiple, channel_norms
from onnx_dns.criteria.paper import Paper
from onnx_dns.criteria.target import Target
from onnx_dns.data import Dataset
from onnx_dns.errors import OptionError
from onnx_dns.insert_masks import insert_masks, mask_name
from onnx_dns.losses import LossSpec
from onnx_dns.options import TrainConfig
from onnx_dns.prunable import find_layers
from onnx_dns.surgery import LayerPlan, Surgeon
from onnx_dns.targets import Targets
from onnx_dns.trainer import Trainer
from onnx_dns.training import TrainingLoop


def test_channel_norms_add_the_squares_of_every_tensor_of_the_group():
    w = np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 10
    b = np.array([3.0, -4.0])
    fc = np.arange(6, dtype=np.float32).reshape(3, 2)  # channels on axis 1
    want = [np.sqrt((w[i] ** 2).sum() + b[i] ** 2 + (fc[:, i] ** 2).sum()) for i in range(2)]
    np.testing.assert_allclose(channel_norms([w, b, fc], [0, 0, 1]), want)


def test_a_tensor_holding_part_of_a_group_adds_to_its_channels_only():
    w = np.arange(24, dtype=np.float32).reshape(4, 6) - 10  # all 4 channels
    half = np.array([[2.0, 1.0], [-3.0, 5.0]], np.float32)  # channels 2, 3 on axis 1
    want = [np.sqrt((w[i] ** 2).sum() + ((half[:, i - 2] ** 2).sum() if i >= 2 else 0)) for i in range(4)]
    np.testing.assert_allclose(channel_norms([w, half], [0, 1], [(0, 4), (2, 2)]), want)


def test_surgery_writes_each_tensor_the_verdicts_of_its_own_channels():
    weights = {"w": np.repeat(np.array([[1.0], [9.0], [8.0], [0.5]], np.float32), 2, axis=1),
               "half": np.array([[0.0, 0.0]], np.float32)}  # channels 2, 3 of the group, on axis 1
    masks = {"w": np.ones((4, 1), np.float32), "half": np.ones((1, 2), np.float32)}
    plan = LayerPlan(["w", "half"], 100, Channels(Target(0.5)), (0, 1), ((0, 4), (2, 2)))
    Surgeon({"g": plan}).keep_above("g", 5.0, weights, masks)
    np.testing.assert_array_equal(masks["w"][:, 0], [0, 1, 1, 0])
    np.testing.assert_array_equal(masks["half"][0], [1, 0])  # channel 2 kept, channel 3 pruned


def surgeon_for(criterion, stop=100):
    return Surgeon({"g": LayerPlan(["w", "b"], stop, Channels(criterion), (0, 0))})


def channel_weights(norms):
    """Weights whose channel norms are `norms` (each filter's 4 entries of equal size, bias 0)."""
    norms = np.asarray(norms, dtype=np.float32)
    return {"w": np.repeat(norms[:, None] / 2, 4, axis=1), "b": np.zeros(len(norms), np.float32)}


def test_prune_below_point_nine_t_splice_above_one_point_one_t_on_channel_norms():
    weights = channel_weights([1.0, 2.0, 3.0, 10.0])
    surgeon = surgeon_for(Paper(0.0))  # t = mean of the pretrained norms = 4
    surgeon.initialize(weights)
    masks = {"w": np.ones((4, 1), np.float32), "b": np.ones(4, np.float32)}
    surgeon.step(0, np.random.default_rng(0), weights, masks)
    np.testing.assert_array_equal(masks["w"][:, 0], [0, 0, 0, 1])
    np.testing.assert_array_equal(masks["b"], masks["w"][:, 0])
    weights = channel_weights([4.2, 4.5, 3.0, 10.0])  # inside the band (3.6, 4.4) stays pruned, above splices
    surgeon.step(1, np.random.default_rng(0), weights, masks)
    np.testing.assert_array_equal(masks["b"], [0, 1, 0, 1])


def test_a_group_never_loses_its_last_channel():
    weights = channel_weights([1.0, 2.0, 3.0])
    surgeon = surgeon_for(Paper(50.0))  # a threshold above every norm
    surgeon.initialize(weights)
    masks = {"w": np.zeros((3, 1), np.float32), "b": np.zeros(3, np.float32)}
    surgeon.step(0, np.random.default_rng(0), weights, masks)
    np.testing.assert_array_equal(masks["b"], [0, 0, 1])


def test_target_keeps_exactly_its_share_of_channels_at_the_stop():
    weights = channel_weights(np.arange(1, 11))
    surgeon = surgeon_for(Target(0.3), stop=5)
    surgeon.initialize(weights)
    masks = {"w": np.ones((10, 1), np.float32), "b": np.ones(10, np.float32)}
    surgeon.step(4, np.random.default_rng(0), weights, masks)
    np.testing.assert_array_equal(masks["b"], [0] * 7 + [1] * 3)


def test_the_probe_starts_from_the_channels_the_target_will_have_cut():
    # the learning-rate probe trains from the state at the stop: with channels it kept every one (the gradual
    # target keeps all at iteration 0), so a detector's probe saw a loss of 0, chose nothing and trained at 3.3e-6
    norms = np.arange(1.0, 9.0)
    criterion = Channels(Target(0.25))
    criterion.initialize([norms])
    assert np.count_nonzero(norms >= criterion.probe_threshold(100, [norms])) == 2
    everything = Channels(Target(0.0))
    everything.initialize([norms])
    assert np.count_nonzero(norms >= everything.probe_threshold(100, [norms])) == 1  # the largest always stays


def test_target_budget_counts_parameters_of_inputs_and_outputs():
    model = cg.flatten_gemm()
    groups = find_channel_groups(model)
    layers = find_layers(model)
    keep = channel_keep(groups, layers, 4.0)
    k_conv = next(k for g, k in keep.items() if groups.groups[g].name == "conv1")
    k_fc = next(k for g, k in keep.items() if groups.groups[g].name == "gemm5")
    # by hand: conv1 162+6 (out), gemm5 960+10 (in from conv1, out), gemm7 30+3 (in from gemm5)
    kept = (162 + 6) * k_conv + 960 * k_conv * k_fc + 10 * k_fc + 30 * k_fc + 3
    total = 162 + 6 + 960 + 10 + 30 + 3
    assert total / kept == pytest.approx(4.0, rel=0.25)
    assert total / ((162 + 6) * k_conv + 960 * k_conv + 10 + 33) < 4.0  # counting outputs only would fall short


def test_a_target_beyond_every_group_at_one_channel_is_refused_with_the_most_it_can_reach():
    model = cg.flatten_gemm()
    groups = find_channel_groups(model)
    layers = find_layers(model)
    # by hand, conv1 down to 1 of 6 channels and gemm5 to one block of 4 of 10 (its multiple from 8 channels on)
    most = (162 + 6 + 960 + 10 + 30 + 3) / (168 / 6 + 960 * 4 / 60 + 4 + 30 * 0.4 + 3)
    assert channel_keep(groups, layers, most * 0.95)  # within reach: kept fractions, no error
    assert channel_keep(groups, layers, most * 1.01)  # as good as reached: every group at one block
    with pytest.raises(OptionError, match=rf"--target 30x cannot be reached .* \({most:.3g}x at most"):
        channel_keep(groups, layers, 30.0)


RNG = np.random.default_rng(0)
W0 = RNG.standard_normal((5, 3)).astype(np.float32)
B0 = RNG.standard_normal(3).astype(np.float32)
X = RNG.standard_normal((8, 5)).astype(np.float32)
LABELS = RNG.integers(0, 3, 8)
KEEP = np.array([1.0, 0.0, 1.0], np.float32)
SPEC = LossSpec("classify", "y", 1.0, 0.0, num_classes=3)


def test_a_pruned_channel_learns_through_its_broadcast_mask(tmp_path):
    model = insert_masks(linear(W0, B0), ["fc.w", "fc.b"], {"fc.w": (1, 3), "fc.b": (3,)}).model
    set_initializer(model, mask_name("fc.w"), KEEP[None, :])
    set_initializer(model, mask_name("fc.b"), KEEP)
    art = build_artifacts(model, SPEC, tmp_path / "art")
    config = TrainConfig(iterations=1, batch_size=len(X), lr=0.1, schedule="constant", weight_decay=0.0,
                         eval_every=1, checkpoint_every=1)
    surgeon = Surgeon({"fc": LayerPlan(["fc.w", "fc.b"], 0, Channels(Paper(1.0)), (1, 0))})
    trainer = Trainer(art, surgeon, config, Targets(SPEC, None, (3,)))
    data = Dataset({"x": X}, LABELS, "train")
    TrainingLoop(trainer, data, data, tmp_path / "work").run()
    z = X.astype(np.float64) @ (W0 * KEEP) + B0 * KEEP
    dz = (np_softmax_rows(z) - np.eye(3)[LABELS]) / len(X)
    np.testing.assert_allclose(trainer.params["fc.w"], W0 - 0.1 * X.T @ dz, rtol=1e-4, atol=1e-6)
    assert np.abs(trainer.params["fc.w"][:, 1] - W0[:, 1]).max() > 1e-3  # the pruned column moved


def test_at_the_stop_a_large_group_keeps_a_whole_number_of_vector_blocks():
    norms = np.linspace(1.0, 32.0, 32)  # paper rule with c = 0 keeps norms >= 0.9 * 16.5: 18 channels
    weights = channel_weights(norms)
    surgeon = Surgeon({"g": LayerPlan(["w", "b"], 10, Channels(Paper(0.0), 8), (0, 0))})
    surgeon.initialize(weights)
    masks = {"w": np.ones((32, 1), np.float32), "b": np.ones(32, np.float32)}
    surgeon.step(9, np.random.default_rng(0), weights, masks)
    np.testing.assert_array_equal(masks["b"], [0] * 16 + [1] * 16)  # 18 -> 16, the largest norms
    small = {"w": np.ones((10, 1), np.float32), "b": np.ones(10, np.float32)}
    Surgeon({"g": LayerPlan(["w", "b"], 10, Channels(Target(0.3), block_multiple(10)), (0, 0))}).step(
        9, np.random.default_rng(0), channel_weights(np.arange(1, 11)), small)
    np.testing.assert_array_equal(small["b"], [0] * 6 + [1] * 4)  # 3 -> one block of 4
    assert [block_multiple(n) for n in (6, 8, 15, 16, 64)] == [1, 4, 4, 8, 8]


def test_a_split_group_rounds_each_piece_to_whole_blocks():
    norms = np.concatenate([np.linspace(10, 11, 16), np.linspace(1, 2, 16)])  # strong first half, weak second
    pieces = Channels(Target(0.5), 8, [(0, 16), (16, 16)])  # Target keeps the 16 largest: the whole first half
    pieces.initialize([norms])
    keep = norms >= pieces.final_threshold(9, 10, [norms])
    assert keep[:16].sum() == 16 and keep[16:].sum() == 8  # the second half keeps one block, not nothing
    whole = Channels(Target(0.5), 8)
    whole.initialize([norms])
    assert (norms >= whole.final_threshold(9, 10, [norms]))[16:].sum() == 0


def test_the_pieces_of_a_group_are_the_stretches_between_split_cuts():
    groups = find_channel_groups(cg.c2f())
    pieces = {groups.groups[g].name: split_pieces(groups, g) for g in groups.groups}
    assert pieces["conv5"] == [(0, 4), (4, 4)] and pieces["conv1"] == [] and pieces["conv29"] == []

