"""The surgery policy in pure numpy (no onnxruntime): mask updates, thresholds, schedules, allocation, Surgeon."""

from __future__ import annotations

import json
import statistics

import numpy as np
import pytest

from onnx_dns.criteria.paper import MagnitudeStats, Paper, magnitude_stats, paper_threshold
from onnx_dns.criteria.target import Target, allocate_keep, cubic_keep
from onnx_dns.surgery import LayerPlan, Surgeon, surgery_probability, update_mask

# ---------------------------------------------------------------- update_mask


def reference_update(weight: np.ndarray, mask: np.ndarray, low: float, high: float) -> np.ndarray:
    """The paper's rule, entry by entry."""
    out = mask.copy()
    for i, (w, m) in enumerate(zip(weight.ravel(), mask.ravel())):
        if m == 1 and abs(w) < low:
            out.flat[i] = 0
        elif m == 0 and abs(w) > high:
            out.flat[i] = 1
    return out


def test_update_mask_prunes_splices_and_keeps_in_between():
    low, high = 0.9, 1.1
    # |w| below a, between a and b, above b; each with mask 1 and mask 0; signs both ways
    weight = np.array([0.5, -0.5, 1.0, -1.0, 2.0, -2.0, 0.5, 1.0, -2.0, 0.0], dtype=np.float32)
    mask = np.array([1, 1, 1, 0, 1, 0, 0, 0, 0, 1], dtype=np.float32)
    expected = np.array([0, 0, 1, 0, 1, 1, 0, 0, 1, 0], dtype=np.float32)
    out = update_mask(weight, mask, low, high)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(mask, expected)  # written in place: the mask is a view of onnxruntime's state


@pytest.mark.parametrize("seed", range(5))
def test_update_mask_matches_the_rule_on_random_tensors(seed):
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((7, 5, 3)).astype(np.float32)
    mask = (rng.random(weight.shape) < 0.5).astype(np.float32)
    low, high = 0.9 * 0.7, 1.1 * 0.7
    expected = reference_update(weight, mask, low, high)
    in_between = (np.abs(weight) >= low) & (np.abs(weight) <= high)
    assert in_between.any() and (mask[in_between] == 0).any() and (mask[in_between] == 1).any()
    update_mask(weight, mask, low, high)
    np.testing.assert_array_equal(mask, expected)


# ---------------------------------------------------------------- thresholds


def test_magnitude_stats_use_the_nonzero_entries_of_weights_and_biases():
    weight = np.array([[0.0, -1.0], [2.0, 0.0], [-4.0, 0.0]], dtype=np.float32)
    bias = np.array([0.0, 3.0, -0.5], dtype=np.float32)
    values = [1.0, 2.0, 4.0, 3.0, 0.5]  # |w| of the nonzero entries of both tensors
    stats = magnitude_stats([weight, bias])
    assert stats.mean == pytest.approx(statistics.fmean(values))
    assert stats.std == pytest.approx(statistics.pstdev(values))


def test_magnitude_stats_of_all_zeros_is_zero():
    assert magnitude_stats([np.zeros(4), np.zeros((2, 2))]) == MagnitudeStats(0.0, 0.0)


@pytest.mark.parametrize("c, expected", [(0.0, 2.0), (1.0, 2.5), (3.0, 3.5), (-2.0, 1.0), (-10.0, 0.0)])
def test_paper_threshold_is_mean_plus_c_std_clamped_at_zero(c, expected):
    assert paper_threshold(MagnitudeStats(2.0, 0.5), c) == pytest.approx(expected)


@pytest.mark.parametrize("iteration, gamma, power, expected", [
    (0, 1e-4, 1.0, 1.0),
    (10000, 1e-4, 1.0, 0.5),
    (30000, 1e-4, 1.0, 0.25),
    (3, 1.0, 2.0, 1 / 16),
    (8, 0.5, 0.5, 1 / 5 ** 0.5),
])
def test_surgery_probability(iteration, gamma, power, expected):
    assert surgery_probability(iteration, gamma, power) == pytest.approx(expected)


def test_surgery_probability_defaults_are_the_papers():
    assert surgery_probability(10000) == pytest.approx(0.5)  # gamma 1e-4, power 1


# ---------------------------------------------------------------- Surgeon: when layers operate


def one_layer_surgeon(stop: int, *, gamma: float = 0.0, power: float = 1.0, c: float = 0.0):
    """A paper-mode layer whose threshold is 1.0 (mean 1, std 0 of the 'pretrained' magnitudes)."""
    plans = {"fc": LayerPlan(["fc.w"], stop, Paper(c))}
    surgeon = Surgeon(plans, gamma=gamma, power=power)
    surgeon.initialize({"fc.w": np.ones(6, dtype=np.float32)})
    return surgeon


def test_a_layer_operates_before_its_stop_and_never_at_or_after_it():
    surgeon = one_layer_surgeon(stop=5)  # gamma 0: probability 1, operates at every iteration before the stop
    weights = {"fc.w": np.array([0.1, 5.0, 0.1, 5.0, 0.1, 5.0], dtype=np.float32)}
    for iteration in (5, 6, 50, 10**6):
        masks = {"fc.w": np.array([1, 0, 1, 0, 1, 0], dtype=np.float32)}
        assert surgeon.step(iteration, np.random.default_rng(iteration), weights, masks) == []
        np.testing.assert_array_equal(masks["fc.w"], [1, 0, 1, 0, 1, 0])
    for iteration in (0, 4):
        masks = {"fc.w": np.array([1, 0, 1, 0, 1, 0], dtype=np.float32)}
        assert surgeon.step(iteration, np.random.default_rng(iteration), weights, masks) == ["fc"]
        np.testing.assert_array_equal(masks["fc.w"], [0, 1, 0, 1, 0, 1])


def test_paper_threshold_bounds_are_point_nine_and_one_point_one_t():
    surgeon = one_layer_surgeon(stop=10)  # t = 1
    weights = {"fc.w": np.array([0.89, 0.91, 1.09, 1.11, 0.89, 1.11], dtype=np.float32)}
    masks = {"fc.w": np.array([1, 1, 0, 0, 0, 1], dtype=np.float32)}
    surgeon.step(0, np.random.default_rng(0), weights, masks)
    np.testing.assert_array_equal(masks["fc.w"], [0, 1, 0, 1, 0, 1])


@pytest.mark.parametrize("iteration, gamma, power", [(9, 1.0, 1.0), (3, 1.0, 1.0), (2, 1.0, 2.0)])
def test_layers_operate_with_the_scheduled_probability(iteration, gamma, power):
    surgeon = one_layer_surgeon(stop=10**6, gamma=gamma, power=power)
    weights = {"fc.w": np.full(6, 5.0, dtype=np.float32)}
    trials = 4000
    operated = 0
    for seed in range(trials):
        masks = {"fc.w": np.zeros(6, dtype=np.float32)}
        operated += bool(surgeon.step(iteration, np.random.default_rng(seed), weights, masks))
    expected = (1 + gamma * iteration) ** -power
    assert operated / trials == pytest.approx(expected, abs=4 * (expected * (1 - expected) / trials) ** 0.5 + 1e-3)


def test_one_draw_per_layer_is_taken_even_for_stopped_layers():
    plans = {name: LayerPlan([f"{name}.w"], stop, Paper(0.0)) for name, stop in (("a", 0), ("b", 100), ("c", 0))}
    surgeon = Surgeon(plans)
    weights = {f"{n}.w": np.ones(3, dtype=np.float32) for n in "abc"}
    surgeon.initialize(weights)
    rng = np.random.default_rng(5)
    surgeon.step(10, rng, weights, {f"{n}.w": np.ones(3, dtype=np.float32) for n in "abc"})
    reference = np.random.default_rng(5)
    reference.random(3)
    assert rng.random() == reference.random()


# ---------------------------------------------------------------- allocation and the cubic schedule


def test_allocate_keep_reaches_the_target_and_prunes_larger_layers_harder():
    sizes = {"conv1": 520, "conv2": 25050, "fc1": 400500, "fc2": 5010}
    keep = allocate_keep(sizes, 50.0)
    kept = sum(keep[k] * n for k, n in sizes.items())
    assert kept == pytest.approx(sum(sizes.values()) / 50.0, rel=1e-6)
    by_size = sorted(sizes, key=sizes.get)
    fractions = [keep[k] for k in by_size]
    assert all(a > b for a, b in zip(fractions, fractions[1:])), fractions
    assert all(0 < f <= 1 for f in fractions)


def test_allocate_keep_saturates_small_layers_at_one():
    sizes = {"tiny": 4, "big": 10000}
    keep = allocate_keep(sizes, 2.0)
    assert keep["tiny"] == 1.0
    assert keep["tiny"] * 4 + keep["big"] * 10000 == pytest.approx(10004 / 2, rel=1e-6)


def test_allocate_keep_honours_fixed_fractions():
    sizes = {"a": 1000, "b": 4000, "c": 9000}
    keep = allocate_keep(sizes, 10.0, fixed={"b": 0.2})
    assert keep["b"] == 0.2
    assert sum(keep[k] * n for k, n in sizes.items()) == pytest.approx(14000 / 10, rel=1e-6)
    assert keep["a"] > keep["c"]


def test_allocate_keep_at_target_one_keeps_everything():
    assert allocate_keep({"a": 10, "b": 1000}, 1.0) == {"a": 1.0, "b": 1.0}


def test_allocate_keep_refuses_impossible_targets():
    with pytest.raises(ValueError):
        allocate_keep({"a": 10}, 0.5)
    with pytest.raises(ValueError):
        allocate_keep({"a": 100, "b": 100}, 10.0, fixed={"a": 0.5})  # 'a' alone keeps more than 200/10


def test_cubic_keep_endpoints_and_shape():
    start, end, k0, kf = 100, 1100, 0.9, 0.1
    assert cubic_keep(0, start, end, k0, kf) == k0
    assert cubic_keep(start, start, end, k0, kf) == k0
    assert cubic_keep(end, start, end, k0, kf) == pytest.approx(kf)
    assert cubic_keep(5000, start, end, k0, kf) == pytest.approx(kf)
    # halfway through, (1 - 1/2)^3 = 1/8 of the way from kf back to k0 remains
    assert cubic_keep(600, start, end, k0, kf) == pytest.approx(kf + (k0 - kf) / 8)
    values = [cubic_keep(i, start, end, k0, kf) for i in range(0, 1300, 7)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    # pruning is fastest at the start: the first tenth removes more than the last half
    first = cubic_keep(start, start, end, k0, kf) - cubic_keep(200, start, end, k0, kf)
    last = cubic_keep(600, start, end, k0, kf) - cubic_keep(end, start, end, k0, kf)
    assert first > last


# ---------------------------------------------------------------- target mode


def test_target_mode_snaps_to_exactly_the_kept_fraction_at_stop_minus_one():
    rng = np.random.default_rng(3)
    weights = {"l.w": rng.standard_normal((20, 10)).astype(np.float32),
               "l.b": rng.standard_normal(10).astype(np.float32)}
    masks = {k: np.ones_like(v) for k, v in weights.items()}
    keep, stop = 0.17, 30
    surgeon = Surgeon({"l": LayerPlan(["l.w", "l.b"], stop, Target(keep, refresh=5))})
    surgeon.initialize(weights)
    for iteration in range(stop):
        for w in weights.values():
            w += 0.05 * rng.standard_normal(w.shape).astype(np.float32)  # training moves the weights
        operated = surgeon.step(iteration, np.random.default_rng(iteration), weights, masks)
        if iteration == stop - 1:
            assert operated == ["l"]
    total = sum(w.size for w in weights.values())
    kept = sum(int(m.sum()) for m in masks.values())
    assert kept == round(keep * total)
    # exactly the largest magnitudes, over weight and bias together
    magnitudes = np.concatenate([np.abs(weights["l.w"]).ravel(), np.abs(weights["l.b"]).ravel()])
    chosen = np.concatenate([masks["l.w"].ravel(), masks["l.b"].ravel()]).astype(bool)
    assert magnitudes[chosen].min() > magnitudes[~chosen].max()
    # after the stop the masks never change again, whatever the weights do
    frozen = {k: v.copy() for k, v in masks.items()}
    for iteration in range(stop, stop + 20):
        for w in weights.values():
            w[...] = rng.standard_normal(w.shape)
        assert surgeon.step(iteration, np.random.default_rng(iteration), weights, masks) == []
    for k in masks:
        np.testing.assert_array_equal(masks[k], frozen[k])


def test_target_mode_prunes_gradually_along_the_schedule():
    rng = np.random.default_rng(4)
    weights = {"l.w": rng.standard_normal(2000).astype(np.float32)}
    masks = {"l.w": np.ones(2000, dtype=np.float32)}
    surgeon = Surgeon({"l": LayerPlan(["l.w"], 100, Target(0.1, refresh=1))}, gamma=0.0)
    surgeon.initialize(weights)
    densities = []
    for iteration in range(100):
        surgeon.step(iteration, np.random.default_rng(iteration), weights, masks)
        densities.append(masks["l.w"].mean())
    assert all(a >= b for a, b in zip(densities, densities[1:]))
    # with the weights standing still, after iteration i the layer keeps exactly |w| >= t_i, where t_i is the
    # magnitude that keeps the scheduled fraction (target mode prunes below t itself)
    magnitudes = np.sort(np.abs(weights["l.w"]))[::-1]
    for i in (10, 49, 80):
        scheduled = 0.1 + 0.9 * (1 - i / 100) ** 3
        t = magnitudes[int(round(scheduled * 2000)) - 1]
        assert densities[i] == pytest.approx(np.mean(np.abs(weights["l.w"]) >= t))
        assert abs(densities[i] - scheduled) <= 1 / 2000
    assert densities[-1] == pytest.approx(0.1)


def test_a_short_target_schedule_prunes_in_many_small_steps_not_one_cut():
    rng = np.random.default_rng(5)
    weights = {"l.w": rng.standard_normal(5000).astype(np.float32)}
    masks = {"l.w": np.ones(5000, dtype=np.float32)}
    stop = 28  # a 37-iteration run's schedule: one refresh every 20 iterations would be a single cut at 20
    surgeon = Surgeon({"l": LayerPlan(["l.w"], stop, Target(0.1))}, gamma=0.0)
    surgeon.initialize(weights)
    densities = [1.0]
    for iteration in range(stop):
        surgeon.step(iteration, np.random.default_rng(iteration), weights, masks)
        densities.append(float(masks["l.w"].mean()))
    drops = -np.diff(densities)
    assert densities[11] < 0.5  # pruning is under way long before iteration 20
    assert drops.max() < 0.15  # the cubic's first step is the steepest: 0.9 * (1 - (27/28)^3) = 0.09
    assert densities[-1] == pytest.approx(0.1)


def test_target_mode_starts_from_the_pretrained_density():
    weights = {"l.w": np.array([0, 0, 0, 0, 1, 2, 3, 4, 5, 6], dtype=np.float32)}
    surgeon = Surgeon({"l": LayerPlan(["l.w"], 10, Target(0.9))})
    surgeon.initialize(weights)
    assert surgeon.plans["l"].criterion.keep_0 == pytest.approx(0.6)
    masks = {"l.w": (weights["l.w"] != 0).astype(np.float32)}
    surgeon.step(9, np.random.default_rng(0), weights, masks)  # stop - 1: the final mask
    assert masks["l.w"].sum() == 6  # never keeps more than the model started with


# ---------------------------------------------------------------- state_dict


def test_state_dict_roundtrip_reproduces_the_same_masks():
    rng = np.random.default_rng(8)
    shapes = {"p.w": (30, 8), "p.b": (8,), "t.w": (40, 5), "t.b": (5,)}
    start = {k: rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    start["t.w"][:4] = 0.0  # a partly sparse pretrained layer: the schedule starts from its density
    plans = lambda: {"p": LayerPlan(["p.w", "p.b"], 60, Paper(0.8)),  # noqa: E731
                     "t": LayerPlan(["t.w", "t.b"], 50, Target(0.3, refresh=7))}
    steps = [{k: 0.1 * rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()} for _ in range(60)]

    def run(surgeon, weights, masks, iterations):
        for i in iterations:
            for k in weights:
                weights[k] += steps[i][k]
            surgeon.step(i, np.random.default_rng([0, i, 1]), weights, masks)

    reference = Surgeon(plans())
    ref_w = {k: v.copy() for k, v in start.items()}
    ref_m = {k: np.ones_like(v) for k, v in start.items()}
    reference.initialize(ref_w)
    run(reference, ref_w, ref_m, range(60))

    first = Surgeon(plans())
    w = {k: v.copy() for k, v in start.items()}
    m = {k: np.ones_like(v) for k, v in start.items()}
    first.initialize(w)
    run(first, w, m, range(23))  # 23: in the middle of a refresh period
    state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint stores

    resumed = Surgeon(plans())  # never initialized: everything comes from the state
    resumed.load_state_dict(state)
    assert resumed.plans["p"].criterion.stats == first.plans["p"].criterion.stats != MagnitudeStats(0.0, 0.0)
    assert resumed.plans["t"].criterion.keep_0 == first.plans["t"].criterion.keep_0
    # mid-period, target mode uses the threshold computed at the last refresh (iteration 22: a 50-iteration schedule
    # refreshes every 2), not one from the weights of now: the resumed surgeon must know it
    assert resumed.thresholds("t", 23, w) == first.thresholds("t", 23, w)
    assert resumed.thresholds("t", 23, w) != Surgeon(plans()).thresholds("t", 23, w)
    run(resumed, w, m, range(23, 60))
    for k in shapes:
        np.testing.assert_array_equal(m[k], ref_m[k])

    # the roundtrip matters: a surgeon that lost its state (mu and sigma zero, as in the released code after a
    # resume) decides differently from the same point on
    w2 = {k: v.copy() for k, v in start.items()}
    m2 = {k: np.ones_like(v) for k, v in start.items()}
    again = Surgeon(plans())
    again.initialize(w2)
    run(again, w2, m2, range(23))
    run(Surgeon(plans()), w2, m2, range(23, 60))
    assert any(not np.array_equal(m2[k], ref_m[k]) for k in shapes)
