"""Fig. 8's r four ways: a shared trend without pairing must look correlated when binned and vanish after the
shuffle control; real step-level pairing must survive it."""

import math

import numpy as np
import pytest

from occctl.correlation import (binned_means, centred_trend, detrended, fig8_correlations, running_mean,
                                shuffled_pairing)

N = 2048


def _trend() -> np.ndarray:
    return 10.0 * np.exp(-np.log(10.0) * np.arange(N) / N)  # a shared 10x decay over the run


def test_a_shared_trend_without_pairing_is_high_binned_and_zero_after_the_shuffle_control():
    rng = np.random.default_rng(1)
    trend = _trend()
    x = list(trend + 8.0 * rng.standard_normal(N))  # per-step noise far above the trend's step-to-step change
    y = list(trend + 8.0 * rng.standard_normal(N))  # independent of x's noise: no pairing at all
    out = fig8_correlations(x, y)
    assert abs(out["step"].r) < 0.25  # one point per step: the noise hides the trend
    assert out["binned"].r > 0.6 and out["smoothed"].r > 0.6  # averaging keeps the trend: "high r"
    assert abs(out["binned"].corrected) < 0.1 and abs(out["smoothed"].corrected) < 0.1
    assert abs(out["detrended"].r) < 0.1  # nothing left after the trend


def test_step_level_pairing_survives_the_shuffle_control():
    rng = np.random.default_rng(2)
    trend, shared = _trend(), 8.0 * rng.standard_normal(N)
    x = list(trend + shared + 4.0 * rng.standard_normal(N))
    y = list(trend + shared + 4.0 * rng.standard_normal(N))  # x and y share their step noise: real pairing
    out = fig8_correlations(x, y)
    assert out["step"].r > 0.7 and out["detrended"].r > 0.7
    assert out["step"].corrected > 0.5 and out["detrended"].corrected > 0.5
    assert out["detrended"].shuffled_hi < 0.2  # the control itself is near 0 once the trend is gone


def test_the_shuffle_keeps_the_trend_and_the_values():
    rng = np.random.default_rng(3)
    y = list(_trend() + rng.standard_normal(N))
    s = shuffled_pairing(y, 32, np.random.default_rng(0))
    assert sorted(np.subtract(s, centred_trend(y, 32))) == pytest.approx(sorted(np.subtract(y, centred_trend(y, 32))))
    assert np.corrcoef(binned_means(s, 64), binned_means(y, 64))[0, 1] > 0.99  # same trend
    assert abs(np.corrcoef(detrended(s, 32), detrended(y, 32))[0, 1]) < 0.1  # pairing gone


def test_the_averaging_helpers():
    assert binned_means([1.0, 3.0, 5.0, 7.0, 9.0], 2) == [2.0, 6.0]  # incomplete last bin dropped
    assert running_mean([1.0, 2.0, 3.0, 4.0], 2) == [1.5, 2.5, 3.5]
    assert centred_trend([1.0, 2.0, 3.0, 4.0, 5.0], 3) == pytest.approx([1.5, 2.0, 3.0, 4.0, 4.5])
    assert detrended([2.0, 2.0, 2.0], 3) == [0.0, 0.0, 0.0]
    out = fig8_correlations([1.0] * 100, list(range(100)))
    assert math.isnan(out["step"].r) and math.isnan(out["binned"].corrected)  # a constant series: undefined
