"""The report's statistics: intervals for ratios (Welch's t on logarithms for few values, the bootstrap for many)
and accuracies (Wilson), all from scipy.stats.

Every interval is two-sided 95 %. A percentile bootstrap is too narrow with a handful of values (with 3 it misses
far more often than 5 % of the time), so below :data:`BOOTSTRAP_FROM` values a side the ratio's interval is Welch's
t interval of the difference of mean logarithms (the ratio of geometric means, assuming roughly log-normal
timings). Bootstraps are seeded (``random_state=0``) so a report is reproducible, and modest (999 resamples) so
building one stays fast.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
RESAMPLES = 999
#: Fewer values than this on a side give no interval at all.
MIN_SAMPLES = 3
#: From this many values on each side the interval is a bootstrap; below, Welch's t on logarithms.
BOOTSTRAP_FROM = 10


def _clean(values: Sequence[float]) -> np.ndarray:
    array = np.asarray([float(v) for v in values], dtype=float)
    return array[np.isfinite(array)]


def ratio_interval(top: Sequence[float], bottom: Sequence[float]) -> tuple[float, float, float]:
    """mean(top) / mean(bottom) with a 95 % interval: Welch's t on logarithms below :data:`BOOTSTRAP_FROM` values
    a side, else a percentile bootstrap (each side resampled independently); no interval (NaN) when either side
    has fewer than :data:`MIN_SAMPLES` values."""
    a, b = _clean(top), _clean(bottom)
    if not len(a) or not len(b) or b.mean() == 0:
        return math.nan, math.nan, math.nan
    point = float(a.mean() / b.mean())
    if len(a) < MIN_SAMPLES or len(b) < MIN_SAMPLES:
        return point, math.nan, math.nan
    if min(len(a), len(b)) < BOOTSTRAP_FROM:
        logs = np.log(a), np.log(b)
        if np.ptp(logs[0]) == 0 and np.ptp(logs[1]) == 0:  # no spread at all: the ratio is exact
            return point, point, point
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nearly equal values: scipy warns of precision loss, the interval holds
            ci = stats.ttest_ind(*logs, equal_var=False).confidence_interval(CONFIDENCE)
        return point, float(np.exp(ci.low)), float(np.exp(ci.high))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # identical values: a degenerate but valid (zero-width) interval
        found = stats.bootstrap((a, b), lambda x, y, axis: x.mean(axis) / y.mean(axis), vectorized=True,
                                paired=False, n_resamples=RESAMPLES, confidence_level=CONFIDENCE,
                                method="percentile", random_state=0)
    low, high = found.confidence_interval
    return point, float(low), float(high)


def wilson(accuracy: float, images: int) -> tuple[float, float]:
    """Wilson 95 % interval of an accuracy measured on ``images`` validation images."""
    hits = round(accuracy * images)
    ci = stats.binomtest(hits, images).proportion_ci(CONFIDENCE, method="wilson")
    return float(ci.low), float(ci.high)


def accuracy_interval(mean: float, low: float, high: float, runs: int, images: int | None) -> tuple[float, float]:
    """The wider of the Student-t interval over runs (``low``, ``high``; NaN with one run) and the Wilson interval
    of the pooled validation images (``runs`` x ``images``; none when the image count is unknown), within [0, 1]."""
    lows, highs = [low] if math.isfinite(low) else [], [high] if math.isfinite(high) else []
    if images and math.isfinite(mean):
        w_low, w_high = wilson(mean, images * runs)
        lows.append(w_low)
        highs.append(w_high)
    if not lows:
        return math.nan, math.nan
    return max(min(lows), 0.0), min(max(highs), 1.0)
