"""Persistent shifts in a results history: E-Divisive change points (Apache Otava), per machine, configuration and
metric.

Each commit is one value per series: the median of all samples recorded for it (several runs of one commit
pool). Otava's ``compute_change_points`` (the E-Divisive means split over sliding windows, each candidate kept
only if a two-sample t-test across it gives ``p <= max_pvalue``; Fleming et al., ICPE 2023) finds the change
points; nothing here hand-sets a noise threshold. The size (``--threshold``) only decides which shifts fail
the check, never which are found.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from harness.history.records import Point

#: Significance level of a change point (Otava's default is 0.001; at 0.0001 no A/A history of 40 commits with
#: Gaussian noise gave one in 300 tries, docs/ci.md).
MAX_PVALUE = 0.0001
#: Otava's sliding window, in commits.
WINDOW = 30


@dataclass(frozen=True)
class Commit:
    """One commit of a series: its median over every sample recorded for it."""

    commit: str
    date: str
    depth: int
    subject: str
    value: float
    samples: int
    report: str | None


@dataclass(frozen=True)
class Series:
    """The history of one (machine, configuration, metric) over commits, oldest first."""

    machine: str
    key: str
    metric: str
    higher_is_better: bool
    commits: tuple[Commit, ...]

    @property
    def name(self) -> str:
        return f"{self.key} on {self.machine}"


@dataclass(frozen=True)
class Change:
    """A change point: the level moved between ``before`` and ``first`` (the first commit at the new level)."""

    series: Series
    index: int  # of ``first`` in series.commits
    mean_before: float
    mean_after: float
    p_value: float

    @property
    def before(self) -> Commit:
        return self.series.commits[self.index - 1]

    @property
    def first(self) -> Commit:
        return self.series.commits[self.index]

    @property
    def change(self) -> float:
        """Relative change of the mean level, after / before - 1."""
        return self.mean_after / self.mean_before - 1 if self.mean_before else 0.0

    @property
    def regression(self) -> bool:
        return (self.change < 0) if self.series.higher_is_better else (self.change > 0)

    @property
    def confidence(self) -> float:
        return 1 - self.p_value

    def describe(self) -> str:
        kind = "regression" if self.regression else "improvement"
        return (f"{self.series.name}: {kind} {self.change:+.1%} ({self.mean_before:.4g} -> {self.mean_after:.4g}) "
                f"between {self.before.commit[:10]} and {self.first.commit[:10]} ({self.first.subject[:60]}), "
                f"confidence {self.confidence:.4f} (p = {self.p_value:.2g})")


def series_of(points: Iterable[Point]) -> list[Series]:
    """Points grouped by (machine, key), one :class:`Commit` per commit, ordered by ancestry (then date)."""
    groups: dict[tuple[str, str], list[Point]] = defaultdict(list)
    for p in points:
        groups[(p.machine, p.key)].append(p)
    result = []
    for (machine, key), group in sorted(groups.items()):
        by_commit: dict[str, list[Point]] = defaultdict(list)
        for p in group:
            by_commit[p.commit].append(p)
        commits = sorted((_commit(ps) for ps in by_commit.values()),
                         key=lambda c: (c.depth, datetime.fromisoformat(c.date)))
        result.append(Series(machine, key, group[0].metric, group[0].higher_is_better, tuple(commits)))
    return result


def _commit(points: Sequence[Point]) -> Commit:
    samples = [v for p in points for v in p.samples]
    latest = max(points, key=lambda p: p.report or "")
    first = points[0]
    return Commit(first.commit, first.commit_date, first.commit_depth, first.subject, statistics.median(samples),
                  len(samples), latest.report)


def change_points(series: Series, max_pvalue: float = MAX_PVALUE, window: int = WINDOW) -> list[Change]:
    """Otava's change points of one series."""
    from otava.analysis import compute_change_points  # scipy.stats: seconds to import, only when checking

    values = [c.value for c in series.commits]
    if len(values) < 3:
        return []
    found, _ = compute_change_points(values, window_len=window, max_pvalue=max_pvalue)
    return [Change(series, int(cp.index), float(cp.stats.mean_1), float(cp.stats.mean_2), float(cp.stats.pvalue))
            for cp in found]


def failing(changes: Iterable[Change], threshold: float, recent: int) -> list[Change]:
    """The regressions of at least ``threshold`` whose first commit is among their series' newest ``recent``."""
    return [c for c in changes if c.regression and abs(c.change) >= threshold
            and c.index >= len(c.series.commits) - recent]
