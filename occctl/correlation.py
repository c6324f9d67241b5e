"""How two per-step series co-vary, and how much of it a shared trend alone explains (pure; numpy and scipy).

The paper's Fig. 8 reports one r of |c_hat| against |c| over a run. That r mixes two things: whether c_hat follows
c from step to step (the pairing a per-step estimator needs), and whether both drift the same way over the run
(a shared trend, e.g. c decaying from the steep to the flat phase). Averaging points (bins, a running mean) keeps
the trend and averages the step noise away, so a shared trend alone gives a high r. Each statistic here therefore
comes with a *shuffle control*: the same statistic after the pairing is destroyed and the trend kept (the second
series is split into its running-mean trend and residuals, and the residuals are rotated in time). What a statistic
exceeds its control by is what the pairing contributes.

* ``pearson`` over the points as given (one per step);
* ``binned_means``: means of consecutive, non-overlapping bins of ``size`` points (a stand-in for the paper's far
  larger batches);
* ``running_mean``: a trailing running mean (smoothed points, overlapping windows);
* ``detrended``: residuals from a centred running mean (a high-pass filter: what is left after the trend).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import stats

Series = list[float]


def _defined(x: Series, y: Series) -> bool:
    """Whether a correlation of ``x`` and ``y`` is defined: ≥ 3 pairs, neither series constant."""
    if len(x) != len(y):
        raise ValueError("series differ in length")
    return len(x) >= 3 and len(set(x)) > 1 and len(set(y)) > 1


def pearson(x: Series, y: Series) -> float:
    """Pearson r; NaN when fewer than 3 pairs or a constant series."""
    if not _defined(x, y):
        return float("nan")
    return float(stats.pearsonr(x, y).statistic)


def spearman(x: Series, y: Series) -> float:
    """Spearman rank r; NaN when fewer than 3 pairs or a constant series."""
    if not _defined(x, y):
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.spearmanr(x, y).statistic)


def running_mean(x: Series, window: int) -> Series:
    """Trailing running mean: one point per complete window."""
    return [sum(x[i - window + 1:i + 1]) / window for i in range(window - 1, len(x))]


def binned_means(x: Series, size: int) -> Series:
    """Means of consecutive, non-overlapping bins of ``size`` points (an incomplete last bin is dropped)."""
    return [sum(x[i:i + size]) / size for i in range(0, len(x) - size + 1, size)]


def centred_trend(x: Series, window: int) -> Series:
    """Centred running mean over ``window`` points (shorter at the ends): the slow part of ``x``."""
    a = np.asarray(x, dtype=float)
    half = window // 2
    csum = np.concatenate([[0.0], np.cumsum(a)])
    lo = np.clip(np.arange(len(a)) - half, 0, len(a))
    hi = np.clip(np.arange(len(a)) + half + 1, 0, len(a))
    return list((csum[hi] - csum[lo]) / (hi - lo))


def detrended(x: Series, window: int) -> Series:
    """``x`` minus its centred running mean: what a shared slow trend cannot explain."""
    return [v - t for v, t in zip(x, centred_trend(x, window))]


def shuffled_pairing(y: Series, window: int, rng: np.random.Generator) -> Series:
    """``y`` with its pairing to any other series destroyed and its trend kept: the centred trend plus the residuals
    rotated by a random offset of at least ``window`` points (a rotation, not a permutation, keeps the residuals'
    own autocorrelation, so bins and running means average them exactly as they average the original's)."""
    trend = np.asarray(centred_trend(y, window))
    residuals = np.asarray(y, dtype=float) - trend
    if len(y) < 2 * window + 1:
        return list(trend + rng.permutation(residuals))
    return list(trend + np.roll(residuals, int(rng.integers(window, len(y) - window + 1))))


Statistic = Callable[[Series, Series], float]


@dataclass(frozen=True)
class Controlled:
    """A statistic on the paired series, and the same statistic with the pairing destroyed (trend kept)."""

    r: float
    shuffled: float  # mean over the shuffles
    shuffled_hi: float  # 95th percentile over the shuffles

    @property
    def corrected(self) -> float:
        """What the pairing adds to r beyond the shared trend (``r - shuffled``)."""
        return self.r - self.shuffled


def with_shuffle_control(statistic: Statistic, x: Series, y: Series, trend_window: int, shuffles: int = 50,
                         seed: int = 0) -> Controlled:
    """``statistic(x, y)`` and its shuffle control (``shuffles`` draws, seeded: the same numbers every time)."""
    r = statistic(x, y)
    rng = np.random.default_rng(seed)
    draws = [statistic(x, shuffled_pairing(y, trend_window, rng)) for _ in range(shuffles)]
    draws = [d for d in draws if math.isfinite(d)]
    if not draws:
        return Controlled(r, float("nan"), float("nan"))
    return Controlled(r, float(np.mean(draws)), float(np.percentile(draws, 95)))


def fig8_correlations(x: Series, y: Series, bin_size: int = 32, window: int = 32,
                      shuffles: int = 50) -> dict[str, Controlled]:
    """Fig. 8's r taken four ways, each with its shuffle control: ``step`` (one point per step), ``binned``
    (bins of ``bin_size``), ``smoothed`` (running mean over ``window``) and ``detrended`` (after removing a centred
    running mean over ``window``). The shuffles keep the trend at the scale of ``window``."""
    ways: dict[str, Statistic] = {
        "step": pearson,
        "binned": lambda a, b: pearson(binned_means(a, bin_size), binned_means(b, bin_size)),
        "smoothed": lambda a, b: pearson(running_mean(a, window), running_mean(b, window)),
        "detrended": lambda a, b: pearson(detrended(a, window), detrended(b, window)),
    }
    return {name: with_shuffle_control(stat, x, y, window, shuffles) for name, stat in ways.items()}
