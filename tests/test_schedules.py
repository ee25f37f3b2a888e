"""Learning-rate schedules against independent computations of their formulas."""

from __future__ import annotations

import math

import pytest

from onnx_dns.schedules import LearningRate


def test_inv_is_caffes_policy():
    lr = LearningRate(0.01, "inv", total=20000, gamma=1e-4, power=0.75)
    assert lr(0) == pytest.approx(0.01)
    assert lr(10000) == pytest.approx(0.01 / 2 ** 0.75)  # (1 + 1e-4 * 1e4) = 2
    assert lr(30000) == pytest.approx(0.01 / 4 ** 0.75)
    assert lr(123) == pytest.approx(0.01 * math.pow(1.0123, -0.75))


def test_inv_defaults_are_the_papers():
    assert LearningRate(0.01)(10000) == pytest.approx(0.01 * 2 ** -0.75)


def test_step_multiplies_by_the_factor_every_step_size():
    lr = LearningRate(0.1, "step", total=1000, step_size=100, factor=0.5)
    assert lr(0) == pytest.approx(0.1)
    assert lr(99) == pytest.approx(0.1)
    assert lr(100) == pytest.approx(0.05)
    assert lr(250) == pytest.approx(0.025)
    assert lr(999) == pytest.approx(0.1 / 2 ** 9)


def test_cosine_goes_from_base_to_final():
    lr = LearningRate(0.2, "cosine", total=400, final=0.02)
    assert lr(0) == pytest.approx(0.2)
    assert lr(200) == pytest.approx(0.11)  # halfway: the mean of base and final
    assert lr(100) == pytest.approx(0.02 + 0.18 * (1 + math.sqrt(0.5)) / 2)
    assert lr(400) == pytest.approx(0.02)
    assert lr(1000) == pytest.approx(0.02)  # past the end it stays at final
    values = [lr(i) for i in range(401)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_constant():
    lr = LearningRate(0.3, "constant", total=10)
    assert {lr(i) for i in (0, 5, 10, 10**6)} == {0.3}


@pytest.mark.parametrize("policy", ["inv", "step", "cosine", "constant"])
def test_warmup_ramps_linearly_then_hands_over(policy):
    plain = LearningRate(0.1, policy, total=500, step_size=50, factor=0.5)
    warm = LearningRate(0.1, policy, total=500, step_size=50, factor=0.5, warmup=10)
    for i in range(10):
        assert warm(i) == pytest.approx(plain(i) * (i + 1) / 10)
    for i in (10, 11, 60, 499):
        assert warm(i) == pytest.approx(plain(i))
    assert warm(0) < warm(4) < warm(9)


@pytest.mark.parametrize("kwargs", [{"base": 0.1, "policy": "linear"}, {"base": 0.0}, {"base": -1.0},
                                    {"base": float("nan")}, {"base": float("inf")}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        LearningRate(**kwargs)
