"""The report's statistics: intervals for ratios of means (a Welch t interval on the log of the ratio for few
values, the bootstrap for many) and accuracies (Wilson), all from scipy.stats.

Every interval is two-sided 95 % and holds its point, the ratio of the means. A percentile bootstrap is too narrow
with a handful of values (with 3 it misses far more often than 5 % of the time), so below :data:`BOOTSTRAP_FROM`
values a side the interval is ``ratio x exp(+-t x se)``: ``se`` the delta method's standard error of the log of
the ratio of means, ``sqrt(var_a / (n_a mean_a^2) + var_b / (n_b mean_b^2))``, and ``t`` Student's quantile with
the Welch-Satterthwaite degrees of freedom. (An interval for the ratio of geometric means, as this module once
used, can miss the ratio of means it is printed beside when a few timings are far off, e.g. epochs slowed by
another job.) Bootstraps are seeded (``random_state=0``) so a report is reproducible, and modest (999 resamples)
so building one stays fast.
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
#: From this many values on each side the interval is a bootstrap; below, the delta method's Welch t interval.
BOOTSTRAP_FROM = 10


def _clean(values: Sequence[float]) -> np.ndarray:
    array = np.asarray([float(v) for v in values], dtype=float)
    return array[np.isfinite(array)]


def ratio_interval(top: Sequence[float], bottom: Sequence[float]) -> tuple[float, float, float]:
    """mean(top) / mean(bottom) with a 95 % interval: the delta method's Welch t interval on the log of the ratio
    below :data:`BOOTSTRAP_FROM` values a side, else a percentile bootstrap (each side resampled independently);
    no interval (NaN) when either side has fewer than :data:`MIN_SAMPLES` values or a mean is not positive."""
    a, b = _clean(top), _clean(bottom)
    if not len(a) or not len(b) or b.mean() == 0:
        return math.nan, math.nan, math.nan
    point = float(a.mean() / b.mean())
    if len(a) < MIN_SAMPLES or len(b) < MIN_SAMPLES or point <= 0:
        return point, math.nan, math.nan
    if min(len(a), len(b)) < BOOTSTRAP_FROM:
        terms = [x.var(ddof=1) / (len(x) * x.mean() ** 2) for x in (a, b)]  # relative variances of the two means
        if not sum(terms):  # no spread at all: the ratio is exact
            return point, point, point
        freedom = sum(terms) ** 2 / sum(t**2 / (len(x) - 1) for t, x in zip(terms, (a, b), strict=True))
        half = float(stats.t.ppf((1 + CONFIDENCE) / 2, freedom)) * math.sqrt(sum(terms))
        return point, point * math.exp(-half), point * math.exp(half)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # identical values: a degenerate but valid (zero-width) interval
        found = stats.bootstrap((a, b), lambda x, y, axis: x.mean(axis) / y.mean(axis), vectorized=True,
                                paired=False, n_resamples=RESAMPLES, confidence_level=CONFIDENCE,
                                method="percentile", random_state=0)
    low, high = found.confidence_interval
    return point, float(low), float(high)


def throughput_ratio_interval(top: Sequence[float], bottom: Sequence[float]) -> tuple[float, float, float]:
    """Epoch throughputs ``top`` over ``bottom`` as images over seconds, with :func:`ratio_interval`'s 95 % interval
    over the epochs' seconds per image (``bottom``'s mean over ``top``'s): a slow epoch weighs by the time it took,
    as in a throughput of training images / training seconds, which the interval then holds."""
    return ratio_interval([1 / v for v in bottom if v > 0], [1 / v for v in top if v > 0])


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
