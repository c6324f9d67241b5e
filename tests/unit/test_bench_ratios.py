"""The overhead bench's paired ratio: geometric mean of per-round ratios with a 95 % t-interval."""

import math

import pytest

from backends.trl_backend.step_timing import halfwidth, paired_ratio


def test_constant_ratio_has_a_zero_width_interval():
    ratio, low, high = paired_ratio([1.1, 2.2, 0.55], [1.0, 2.0, 0.5])
    assert ratio == pytest.approx(1.1) and low == pytest.approx(1.1) and high == pytest.approx(1.1)


def test_interval_matches_a_t_interval_on_log_ratios():
    num, den = [1.0, 1.3, 0.9, 1.2], [1.0, 1.0, 1.0, 1.0]
    logs = [math.log(x) for x in num]
    mean = sum(logs) / 4
    sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / 3)
    half = 3.182446305284263 * sd / 2  # t(0.975, 3) * sd / sqrt(4)
    ratio, low, high = paired_ratio(num, den)
    assert (ratio, low, high) == pytest.approx((math.exp(mean), math.exp(mean - half), math.exp(mean + half)))


def test_pairing_removes_shared_round_to_round_noise():
    # step times swing 10x between rounds (generation steps) but occ is always 2 % slower than policy
    policy = [0.1, 1.0, 0.1, 0.1, 1.0, 0.1]
    occ = [t * 1.02 for t in policy]
    _, low, high = paired_ratio(occ, policy)
    assert high - low < 1e-9


def test_halfwidth_is_the_larger_relative_distance_to_an_end():
    assert halfwidth(1.0, 0.98, 1.03) == pytest.approx(0.03)
    assert halfwidth(2.0, 1.9, 2.02) == pytest.approx(0.05)
    assert halfwidth(1.0, float("nan"), float("nan")) == math.inf  # one round: no interval, never resolved
