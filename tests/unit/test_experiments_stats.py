"""A/B statistics against hand computations (math.erf, not scipy)."""

from __future__ import annotations

import math

import pytest

from gateway.rollout.stats import two_proportion, welch


def normal_cdf(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def test_two_proportion_z_test_matches_a_hand_computation() -> None:
    # Baseline converts 120 of 1000, challenger 150 of 1000.
    got = two_proportion(120, 1000, 150, 1000)
    assert got is not None
    # By hand: pooled p = 270/2000 = 0.135; se = sqrt(0.135 * 0.865 * (1/1000 + 1/1000)).
    se = math.sqrt(0.135 * 0.865 * 0.002)
    z = (0.15 - 0.12) / se
    p = 2 * (1 - normal_cdf(z))
    assert z == pytest.approx(1.96304, abs=1e-4)
    assert p == pytest.approx(0.04964, abs=1e-4)
    assert got.z == pytest.approx(z, rel=1e-9)
    assert got.p_value == pytest.approx(p, rel=1e-6)
    assert got.baseline_rate == 0.12 and got.challenger_rate == 0.15
    assert got.difference == pytest.approx(0.03)
    assert got.lift == pytest.approx(0.25)  # 0.03 / 0.12
    # 95% interval of the difference, unpooled: 0.03 +- 1.959964 * sqrt(p1 q1/n1 + p2 q2/n2).
    half = 1.959964 * math.sqrt(0.12 * 0.88 / 1000 + 0.15 * 0.85 / 1000)
    assert got.ci_low == pytest.approx(0.03 - half, abs=1e-6)
    assert got.ci_high == pytest.approx(0.03 + half, abs=1e-6)
    assert got.ci_low > 0  # significant at 5%: the interval excludes 0


def test_two_proportion_is_symmetric_and_handles_degenerate_counts() -> None:
    ahead = two_proportion(120, 1000, 150, 1000)
    behind = two_proportion(150, 1000, 120, 1000)
    assert ahead is not None and behind is not None
    assert behind.z == pytest.approx(-ahead.z)
    assert behind.p_value == pytest.approx(ahead.p_value)
    assert two_proportion(0, 0, 5, 10) is None  # no samples on one side
    same = two_proportion(10, 10, 20, 20)  # everyone converts on both sides: no evidence
    assert same is not None and same.z == 0.0 and same.p_value == 1.0
    zero = two_proportion(0, 50, 5, 50)
    assert zero is not None and zero.lift is None  # no relative lift over a zero rate


def test_ninety_nine_percent_interval_is_wider() -> None:
    at95 = two_proportion(120, 1000, 150, 1000, 0.95)
    at99 = two_proportion(120, 1000, 150, 1000, 0.99)
    assert at95 is not None and at99 is not None
    assert at99.ci_low < at95.ci_low and at99.ci_high > at95.ci_high
    half = 2.575829 * math.sqrt(0.12 * 0.88 / 1000 + 0.15 * 0.85 / 1000)
    assert at99.ci_high - at99.difference == pytest.approx(half, abs=1e-6)


def test_welch_statistic_and_degrees_of_freedom_by_hand() -> None:
    # Baseline rewards: mean 1.0, variance 4.0, 50 samples; challenger: 2.0, 1.0, 40.
    got = welch(1.0, 4.0, 50, 2.0, 1.0, 40)
    assert got is not None
    se = math.sqrt(4.0 / 50 + 1.0 / 40)
    t = (2.0 - 1.0) / se
    dof = (4.0 / 50 + 1.0 / 40) ** 2 / ((4.0 / 50) ** 2 / 49 + (1.0 / 40) ** 2 / 39)
    assert got.t == pytest.approx(t, rel=1e-9)
    assert got.dof == pytest.approx(dof, rel=1e-9)
    # With ~75 degrees of freedom the t distribution is close to normal: p is a bit
    # above the normal tail's, and well below 0.05 for t = 3.09.
    normal_p = 2 * (1 - normal_cdf(t))
    assert normal_p < got.p_value < normal_p * 1.5
    assert got.lift == pytest.approx(1.0)
    assert welch(1.0, 0.0, 5, 1.0, 0.0, 5) is None  # no variance: nothing to test
    assert welch(1.0, 1.0, 1, 2.0, 1.0, 10) is None  # one sample: no variance estimate
