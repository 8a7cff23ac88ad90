"""The answer first: per suite, device and model a leaderboard and a pick that the data support, the effect of
each factor, and what to be wary of.

A configuration is better only when the data say so at 95 %: the leader's tie set is every configuration whose
ratio to it has an interval that holds 1 (or cannot be computed), and a tie is called a tie. Accuracy
excludes a faster configuration only when it is significantly lower (intervals: :mod:`harness.report.stats`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from harness.report.aggregate import CONFIG, interval
from harness.report.compare_devices import ENV_KEYS, differences
from harness.report.stats import accuracy_interval, ratio_interval, throughput_ratio_interval, wilson
from harness.report.summary import installed
from harness.text import plural

#: Classes of the tutorial's task (its suites are ``flowers`` and ``flowers-*``): chance is 1 / classes.
TASK_CLASSES = {"flowers": 5}
#: Best accuracies below this multiple of chance are "near chance": they rank noise more than configurations.
NEAR_CHANCE = 2.5
#: Fewer optimizer steps than this over a whole run (steps per epoch x epochs) is too little training to rank.
MIN_TRAINING_STEPS = 20
#: A data wait above this share of the training loop means the loader, not the device, sets the speed.
LOADER_BOUND_PCT = 10.0
#: The level each factor is compared against when present; otherwise the level with the most cells.
BASE_LEVELS = {"loader": "torchvision", "backend": "torch", "precision": "fp32", "environment": "default"}
FACTORS = ("loader", "backend", "precision", "environment")


def task(suite: str | None) -> str | None:
    """The task a suite belongs to (``flowers-smoke`` -> ``flowers``), if it is a known one."""
    name = str(suite or "")
    return next((t for t in TASK_CLASSES if name == t or name.startswith(f"{t}-")), None)


def accuracy_step(values: Iterable[float], min_distinct: int = 5, max_images: int = 20_000) -> float | None:
    """The smallest accuracy step the values are consistent with (1 / validation images), or None when too
    few distinct values say it."""
    distinct = np.unique([v for v in values if pd.notna(v) and 0 < v < 1])
    if len(distinct) < min_distinct:
        return None
    for images in range(2, max_images + 1):
        if np.all(np.abs(distinct * images - np.round(distinct * images)) < 1e-6):
            return 1 / images
    return None


def images(step: float | None) -> int | None:
    """Validation images implied by an accuracy step."""
    return round(1 / step) if step else None


def with_accuracy_intervals(summary: pd.DataFrame, steps: Mapping[str, float | None]) -> pd.DataFrame:
    """The summary with each best-accuracy interval widened to the Wilson interval on its validation images."""
    out = summary.copy()
    bounds = [
        accuracy_interval(row["best_val_acc"], row["best_val_acc_ci95_low"], row["best_val_acc_ci95_high"],
                          int(row["runs"]), images(steps.get(str(row["suite"]))))
        if row["status"] == "ok" else (math.nan, math.nan)
        for row in summary.to_dict("records")
    ]
    out["best_val_acc_ci95_low"] = [b[0] for b in bounds]
    out["best_val_acc_ci95_high"] = [b[1] for b in bounds]
    return out


def _not_pickable(row: pd.Series) -> str | None:
    """Why a configuration that ran can never be the pick, if it cannot."""
    if row["precision_support"] == "emulated":
        return "emulated precision: never picked"
    if row["disqualified"]:
        return f"failed a sanity check: {row['disqualified'][0]}"
    if pd.isna(row["throughput_img_s"]):
        return "no measured throughput (timings missing or not finite)"
    return None


@dataclass
class Standing:
    """One configuration's place on a leaderboard: its headline metric and how it compares with the leader."""

    row: pd.Series
    status: str  # pick, tied, slower, less accurate, not reached, or why it cannot be picked
    relative: float = math.nan  # metric / the leader's metric
    low: float = math.nan  # 95 % interval of ``relative`` (:func:`harness.report.stats.ratio_interval`)
    high: float = math.nan
    note: str = ""
    tied: bool = False

    @property
    def significant(self) -> bool:
        return math.isfinite(self.low) and not self.low <= 1 <= self.high


@dataclass
class Board:
    """The ranking of one suite, device and model, and the verdict: a pick, a tie, or no pick (with why)."""

    suite: str
    device: str
    model: str
    metric: str  # "time_to_acc_s" (lower is better) or "throughput_img_s" (higher is better)
    target: float | None
    rule: str
    verdict: str
    standings: list[Standing] = field(default_factory=list)
    best: pd.Series | None = None  # the pick, when the data single one out

    @property
    def tied(self) -> list[Standing]:
        return [s for s in self.standings if s.tied]


def _samples(row: pd.Series, metric: str) -> list[float]:
    return list(row["time_to_acc_samples"] if metric == "time_to_acc_s" else row["throughput_samples"])


def _ratio_interval(row: pd.Series, leader: pd.Series, metric: str) -> tuple[float, float, float]:
    """``row``'s metric over ``leader``'s with its 95 % interval. One run each resamples the timed epochs as
    :func:`throughput_ratio_interval` does, so that the interval holds the ratio of the throughputs printed."""
    one_run_each = metric == "throughput_img_s" and row["runs"] == 1 and leader["runs"] == 1
    return (throughput_ratio_interval if one_run_each else ratio_interval)(_samples(row, metric),
                                                                           _samples(leader, metric))


def _pct(value: float) -> str:
    return f"{100 * value:.1f} %"


def _no_pick(rows: pd.DataFrame, candidates: pd.DataFrame, blocked: Mapping[Any, str | None]) -> str | None:
    """Why the data cannot support any pick for these rows, if they cannot (``blocked``: why each row cannot be)."""
    if candidates.empty:
        return "no configuration that ran can be picked: " + "; ".join(sorted({r for r in blocked.values() if r}))
    best = candidates["best_val_acc"].max()
    classes = TASK_CLASSES.get(task(str(rows["suite"].iloc[0])) or "")
    if classes and best < NEAR_CHANCE / classes:
        return (f"the best accuracy, {_pct(best)}, is near chance ({_pct(1 / classes)} for {classes} classes): "
                "the ranking would rank noise")
    steps = (candidates["optimizer_steps_per_epoch"] * candidates["epochs"]).max()
    if pd.notna(steps) and steps < MIN_TRAINING_STEPS:
        return (f"no configuration trained enough: at most {steps:g} optimizer steps in a run "
                f"(fewer than {MIN_TRAINING_STEPS})")
    return None


def label(row: pd.Series | Mapping, model: bool = False, environment: bool = True) -> str:
    """``tuned · torchvision · torch · fp32 · colossalai``: what tells configurations of one board apart."""
    parts = [row["model"]] if model else []
    parts += [row["recipe"]] if row.get("recipe") else []
    parts += [row["loader"], row["backend"], row["precision"]]
    parts += [row["environment"]] if environment and row["environment"] != "default" else []
    return " · ".join(str(p) for p in parts)


def _board(suite: str, device: str, model: str, rows: pd.DataFrame, target: float | None) -> Board:
    blocked = {i: _not_pickable(row) for i, row in rows.iterrows()}
    candidates = rows[[blocked[i] is None for i in rows.index]]
    reached = candidates[candidates["target_reached_runs"].eq(candidates["runs"]) & candidates["time_to_acc_s"].notna()]
    timed = target is not None and not reached.empty
    metric = "time_to_acc_s" if timed else "throughput_img_s"
    ranked = rows.sort_values(metric, ascending=timed, na_position="last", kind="stable")
    less_accurate: set = set()
    if timed:
        rule = f"reaches {_pct(target or 0)} validation accuracy soonest, in every run"
        admissible = reached
    else:
        accurate = candidates["best_val_acc"].dropna()
        top = candidates.loc[accurate.idxmax()] if len(accurate) else None
        less_accurate = {i for i, row in candidates.iterrows()
                         if top is not None and row["best_val_acc_ci95_high"] < top["best_val_acc_ci95_low"]}
        admissible = candidates.drop(index=list(less_accurate))
        rule = ("has the highest training throughput among those whose best accuracy is not significantly below "
                "the most accurate one's")
        if target is not None:
            rule += f" (none reached {_pct(target)} in every run)"
    leader = admissible.sort_values(metric, ascending=timed, kind="stable").iloc[0] if len(admissible) else None
    standings = []
    for i, row in ranked.iterrows():
        standing = Standing(row, blocked[i] or "")
        if leader is not None and i == leader.name:
            standing.relative = 1.0
        elif leader is not None and pd.notna(row[metric]):
            _, standing.low, standing.high = _ratio_interval(row, leader, metric)
            standing.relative = float(row[metric]) / float(leader[metric])
        if not standing.status:
            if i in less_accurate:
                standing.status = "less accurate"
            elif timed and i not in reached.index:
                standing.status = "not reached" if not row["target_reached_runs"] else (
                    f"reached in {row['target_reached_runs']} of {plural(int(row['runs']), 'run')}")
            elif leader is not None and i == leader.name:
                standing.status, standing.tied = "leader", True
            else:
                standing.tied = not standing.significant
                standing.status = "tied" if standing.tied else "slower"
        standing.note = _cost(standing, leader, metric)
        standings.append(standing)
    why = _no_pick(rows, candidates, blocked)
    tied = [s for s in standings if s.tied]
    board = Board(suite, device, model, metric, target, rule, "", standings)
    if why:
        board.verdict = f"no pick: {why}"
    elif not tied:
        board.verdict = "no pick: no configuration is eligible"
    elif len(tied) == 1:
        board.best = tied[0].row
        tied[0].status = "pick"
        board.verdict = f"pick: {label(board.best)}" + _runner_up(standings, metric)
    else:
        n = int(min(s.row["runs"] for s in tied))
        board.verdict = (f"tie between {len(tied)}: {', '.join(label(s.row) for s in tied)}; their differences are "
                         f"not significant at 95 %" + (" (n=1: one run each, harness run --repeat 3 measures the "
                                                       "spread)" if n == 1 else ""))
    return board


def _cost(standing: Standing, leader: pd.Series | None, metric: str) -> str:
    """How a configuration compares with the leader: ``1.15x faster [1.08, 1.22], -1.9 points, n=1, significant``."""
    if leader is None or standing.row.name == leader.name or not math.isfinite(standing.relative):
        return ""
    r = standing.relative if metric == "throughput_img_s" else 1 / standing.relative
    low, high = sorted((standing.low, standing.high) if metric == "throughput_img_s" else
                       (1 / standing.high, 1 / standing.low))
    speed = f"{r:.2f}x" + (f" [{low:.2f}, {high:.2f}]" if math.isfinite(low) else "")
    points = 100 * (standing.row["best_val_acc"] - leader["best_val_acc"])
    runs = int(min(standing.row["runs"], leader["runs"]))
    test = ("significant" if standing.significant else "not significant" if math.isfinite(standing.low) else
            "not testable")
    return f"{speed} the leader's speed, {points:+.1f} points, n={runs}, {test}"


def _runner_up(standings: list[Standing], metric: str) -> str:
    others = [s for s in standings if s.status == "slower"]
    faster = [s for s in standings if s.status == "less accurate"
              and (s.relative > 1 if metric == "throughput_img_s" else s.relative < 1)]
    text = f"; runner-up {label(others[0].row)}: {others[0].note}" if others else ""
    return text + "".join(f"; faster but less accurate: {label(s.row)}: {s.note}" for s in faster)


def decide(summary: pd.DataFrame, devices: list[str], targets: Mapping[str, float]) -> list[Board]:
    """Per suite, device (in report order) and model, the leaderboard and the verdict (targets per suite)."""
    boards = []
    ok = summary[summary["status"].eq("ok")]
    for suite in dict.fromkeys(ok["suite"]):
        for device in devices:
            ran = ok[(ok["suite"] == suite) & (ok["device_short"] == device)]
            for model in sorted(ran["model"].dropna().unique()):
                boards.append(_board(str(suite), device, model, ran[ran["model"] == model], targets.get(str(suite))))
    return boards


def _why_none(ran: pd.DataFrame) -> str:
    """Why none of the cells that ran can be picked (:func:`candidates`), in the cells' own terms."""
    emulated = ran["precision_support"].eq("emulated")
    reasons = {"used an emulated precision": emulated,
               "had no measured throughput (timings missing or not finite)": ran["throughput_img_s"].isna() & ~emulated}
    why = [text for text, rows in reasons.items() if rows.any()]
    return f"every cell that ran {' or '.join(why)}" if why else "no cell that ran can be picked"


@dataclass
class Effect:
    """Throughput ratio of one level of a factor against its base level, over matched cells."""

    factor: str
    comparison: str
    ratio: float
    low: float
    high: float
    matched: int


def _base(levels: pd.Series, factor: str) -> str:
    """The level a factor is compared against: the usual one when present, else the most common."""
    preferred = BASE_LEVELS.get(factor)
    return preferred if preferred is not None and preferred in set(levels) else str(levels.value_counts().index[0])


def _wide(ok: pd.DataFrame, factor: str, keys: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Throughput, and whether the precision is emulated, with one column per level of ``factor``."""
    indexed = ok.drop_duplicates([*keys, factor]).set_index([*keys, factor])
    emulated = indexed["precision_support"].eq("emulated").unstack(factor, fill_value=False)
    return indexed["throughput_img_s"].unstack(factor), emulated


def _effects(ok: pd.DataFrame, factor: str, base: str, split: str | None, label: str) -> list[Effect]:
    """Ratios of each level to ``base`` over cells equal in every other key; one line per ``split`` value.

    Cells match within one environment; a level that matches nothing there (a backend that runs only in its own
    environment) is matched across environments and says so. An emulated precision is named:
    ``bf16 (emulated) vs fp32 on P40``, ``T4 / P40, bf16 (emulated on P40)``.
    """
    keys = [k for k in [*CONFIG, "device_short", "environment"] if k != factor]
    within = _wide(ok, factor, keys)
    across = _wide(ok, factor, [k for k in keys if k != "environment"])
    out = []
    for level in [str(v) for v in dict.fromkeys(ok[factor]) if v != base]:
        (wide, emulated), note = within, ""
        if wide[[base, level]].dropna().empty and "environment" in keys:
            (wide, emulated), note = across, " (across environments)"
        pairs = wide[[base, level]].dropna()
        for part, matched in pairs.groupby(level=split, sort=False) if split else [(None, pairs)]:
            if matched.empty:
                continue
            mean, low, high = interval(np.log(matched[level] / matched[base]))
            flagged = [g for g in (level, base) if emulated.loc[matched.index, g].any()]
            shown = f"{level} (emulated)" if factor == "precision" and flagged else level
            text = label.format(level=shown, base=base, part=part) + note
            if factor == "device_short" and flagged:
                text += f" (emulated on {', '.join(flagged)})"
            out.append(Effect(factor, text, math.exp(mean), math.exp(low), math.exp(high), len(matched)))
    return out


def effects(summary: pd.DataFrame, baseline_device: str | None) -> list[Effect]:
    """The effect of each factor on training throughput; precision per device, device per precision."""
    ok = summary[summary["status"].eq("ok") & summary["throughput_img_s"].notna()]
    if ok.empty:
        return []
    out = []
    for factor in FACTORS:
        if factor == "precision":
            out += _effects(ok, factor, _base(ok[factor], factor), "device_short", "{level} vs {base} on {part}")
        else:
            out += _effects(ok, factor, _base(ok[factor], factor), None, "{level} vs {base}")
    if baseline_device is not None and baseline_device in set(ok["device_short"]):
        per_precision = _effects(ok, "device_short", baseline_device, "precision", "{level} / {base}, {part}")
        overall = _effects(ok, "device_short", baseline_device, None, "{level} / {base}, all precisions")
        out += [*overall, *per_precision] if len(per_precision) > len(overall) else per_precision
    return out


def caveats(summary: pd.DataFrame, steps: Mapping[str, float | None]) -> list[str]:
    """What to be wary of when reading the numbers (the banner above the answer)."""
    ok = summary[summary["status"].eq("ok")]
    out = []
    if ok.empty:
        return ["no cell ran: nothing was measured"]
    runs = ok["runs"]
    if runs.max() == 1:
        out.append("1 run per cell: the spread over seeds is not measured; throughput intervals resample the timed "
                   "epochs (timing noise only), accuracy intervals are Wilson intervals on the validation images, and "
                   "times to the target have none (harness run --repeat 3 measures the spread)")
    else:
        out.append(f"{_span(runs)} runs per cell: means with 95 % intervals over the runs")
    timed = ok["timed_epochs"]
    epochs = ok["epochs"]
    if epochs.max() > 1:
        out.append(f"{_span(timed)} timed epoch{'s' if timed.max() > 1 else ''} per run (of {_span(epochs)}; the "
                   "first of each process, a resumed run's or a race's next rung's too, is warm-up and not timed)")
    else:
        out.append("1 epoch per run: timings include warm-up")
    out.append(_hardware(ok))
    out += _accuracy_caveats(ok, steps)
    for device, rows in ok.groupby("device_short", sort=False):
        waits = rows["data_wait_pct"].dropna()
        if len(waits) and waits.max() > LOADER_BOUND_PCT:
            low, high = waits.min(), waits.max()
            share = f"{low:.0f}-{high:.0f} %" if round(low) != round(high) else f"{high:.0f} %"
            out.append(f"the loader limits this device: {device} waits for data {share} of the training loop "
                       f"(above {LOADER_BOUND_PCT:.0f} %): its throughputs measure the loader more than the device")
    emulated = ok[ok["precision_support"].eq("emulated")]
    for (precision, device), rows in emulated.groupby(["precision", "device_short"], sort=False):
        out.append(f"{precision} is emulated on {device} ({plural(len(rows), 'cell')}): shown, never picked")
    software = _software(ok)
    if software:
        out.append(software)
    failed = summary[~summary["status"].isin(["ok", "skipped", "eliminated"])]
    if len(failed):
        statuses = ", ".join(sorted(set(failed["status"])))
        out.append(f"{plural(len(failed), 'cell')} did not finish ({statuses}): see below")
    return out


def _span(values: pd.Series) -> str:
    low, high = int(values.min()), int(values.max())
    return str(low) if low == high else f"{low}-{high}"


def _software(ok: pd.DataFrame) -> str | None:
    """Library versions that differ, named by device, environment or both, whichever tells them apart. A library
    missing where a cell ran is one that cell does not use: no difference (``dali None vs 2.4.0``)."""
    for labels in (ok["device_short"], ok["environment"], ok["device_short"] + ", " + ok["environment"]):
        pairs = list(zip(labels, ok["env"], strict=True))
        values = {(label, key): {installed(v) for other, env in pairs if other == label
                                 if (v := env.get(key)) is not None}
                  for label in set(labels) for key in ENV_KEYS}
        if all(len(v) <= 1 for v in values.values()):
            found = differences("", pairs, ENV_KEYS, missing=False)
            return f"software differs between the results compared: {'; '.join(found)}" if found else None
    seen = {key: list(dict.fromkeys(installed(v) for env in ok["env"] if (v := env.get(key)) is not None))
            for key in ENV_KEYS}
    found = [f"{key} {' vs '.join(v)}" for key, v in seen.items() if len(v) > 1]
    return f"software differs within one device and environment name: {'; '.join(found)}"


def _hardware(ok: pd.DataFrame) -> str:
    ordered = ok.sort_values("source_index", kind="stable")
    gpus = list(dict.fromkeys(ordered.loc[ordered["device_type"].eq("cuda"), "device_short"]))
    cpus = list(dict.fromkeys(ordered.loc[~ordered["device_type"].eq("cuda"), "device_short"]))
    if not gpus:
        return f"CPU only ({', '.join(cpus)}): GPU speeds and ratios will differ"
    return f"GPU: {', '.join(gpus)}" + (f"; CPU: {', '.join(cpus)}" if cpus else "")


def _accuracy_caveats(ok: pd.DataFrame, steps: Mapping[str, float | None]) -> list[str]:
    out = []
    for suite, rows in ok.groupby("suite", sort=False):
        step = steps.get(str(suite))
        best = rows["best_val_acc"].max()
        classes = TASK_CLASSES.get(task(str(suite)) or "")
        if classes and best < NEAR_CHANCE / classes:
            out.append(f"accuracies near chance: best {_pct(best)} vs {_pct(1 / classes)} for {classes} classes "
                       f"after {_span(rows['epochs'])} epochs")
        if step:
            low, high = wilson(best, images(step) or 0)
            out.append(f"{suite}: validation accuracy is measured on {images(step)} images ({100 * step:.2f}-point "
                       f"steps): one run's best, {_pct(best)}, has a 95 % Wilson interval of [{100 * low:.1f}, "
                       f"{100 * high:.1f}] %")
    return out
