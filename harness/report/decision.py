"""The answer first: per device the configuration to use, the effect of each factor, and what to be wary of."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from harness.report.aggregate import CONFIG, interval
from harness.report.compare_devices import ENV_KEYS, differences
from harness.report.summary import describe

#: Classes of the tutorial's task (its suites are ``flowers`` and ``flowers-*``): chance is 1 / classes.
TASK_CLASSES = {"flowers": 5}
#: Best accuracies below this multiple of chance are "near chance": they rank noise more than configurations.
NEAR_CHANCE = 2.5
#: Without a target, configurations this many validation images (at least MIN_MARGIN) below the best count as tied.
MARGIN_IMAGES = 2
MIN_MARGIN = 0.01
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


def margin(step: float | None) -> float:
    """Accuracies closer than this to the best count as tied."""
    return max(MARGIN_IMAGES * step, MIN_MARGIN) if step else 2 * MIN_MARGIN


def candidates(summary: pd.DataFrame) -> pd.DataFrame:
    """Rows a decision may pick: ok, measured, and in a precision the device runs natively."""
    ok = summary["status"].eq("ok") & summary["throughput_img_s"].notna()
    return summary[ok & summary["precision_support"].ne("emulated")]


@dataclass
class Pick:
    """The configuration to use on one device (for one model), its runner-up and how they differ."""

    device: str
    model: str
    rule: str
    metric: str  # "time_to_acc_s" (lower is better) or "throughput_img_s" (higher is better)
    best: pd.Series | None
    runner_up: pd.Series | None

    def ratio(self) -> float:
        """The pick's metric over the runner-up's."""
        if self.best is None or self.runner_up is None:
            return math.nan
        return float(self.best[self.metric]) / float(self.runner_up[self.metric])

    def verdict(self) -> str:
        """Whether the difference to the runner-up is larger than the measured spread."""
        if self.best is None or self.runner_up is None:
            return ""
        prefix = self.metric.removesuffix("_s").removesuffix("_img")
        low, high = f"{prefix}_ci95_low", f"{prefix}_ci95_high"
        if any(pd.isna(row[c]) for row in (self.best, self.runner_up) for c in (low, high)):
            runs = min(int(self.best["runs"]), int(self.runner_up["runs"]))
            return f"spread not measured ({runs} run{'s' if runs > 1 else ''})"
        if self.metric == "time_to_acc_s":
            apart = self.best[high] < self.runner_up[low]
        else:
            apart = self.best[low] > self.runner_up[high]
        return "larger than the spread" if apart else "within the spread (95 % intervals overlap)"


def _pct(value: float) -> str:
    return f"{100 * value:.1f} %"


def _pick(device: str, model: str, rows: pd.DataFrame, target: float | None, step: float | None) -> Pick:
    if target is not None:
        reached = rows[rows["target_reached_runs"].eq(rows["runs"]) & rows["time_to_acc_s"].notna()]
        if len(reached):
            ranked = reached.sort_values("time_to_acc_s", kind="stable")
            rule = f"reaches {_pct(target)} validation accuracy soonest (in every run)"
            return Pick(device, model, rule, "time_to_acc_s", ranked.iloc[0], _second(ranked))
    tie = margin(step)
    best = rows["best_val_acc"].max()
    ranked = rows[rows["best_val_acc"] >= best - tie - 1e-9].sort_values("throughput_img_s", ascending=False,
                                                                          kind="stable")
    rule = f"is the fastest (training images/s) within {100 * tie:.1f} points of the best accuracy on that device"
    if target is not None:
        rule += f" (none reached {_pct(target)} in every run)"
    return Pick(device, model, rule, "throughput_img_s", ranked.iloc[0], _second(ranked))


def _second(ranked: pd.DataFrame) -> pd.Series | None:
    return ranked.iloc[1] if len(ranked) > 1 else None


def decide(summary: pd.DataFrame, devices: list[str], target: float | None, steps: Mapping[str, float | None]
           ) -> list[Pick]:
    """Per device (in report order) and model, the configuration to use."""
    picks = []
    allowed = candidates(summary)
    for device in devices:
        ran = summary[(summary["device_short"] == device) & summary["status"].eq("ok")]
        for model in sorted(ran["model"].dropna().unique()):
            rows = allowed[(allowed["device_short"] == device) & (allowed["model"] == model)]
            if rows.empty:
                picks.append(Pick(device, model, f"none: {_why_none(ran[ran['model'] == model])}", "", None, None))
                continue
            step = steps.get(str(rows["suite"].iloc[0]))
            picks.append(_pick(device, model, rows, target, step))
    return picks


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
        out.append("1 run per cell: the spread is not measured, so small differences may be noise "
                   "(harness run --repeat 3 measures it)")
    else:
        out.append(f"{_span(runs)} runs per cell: means with 95 % intervals over the runs")
    timed = ok["timed_epochs"]
    epochs = ok["epochs"]
    if epochs.max() > 1:
        out.append(f"{_span(timed)} timed epoch{'s' if timed.max() > 1 else ''} per run (of {_span(epochs)}; the "
                   "first is warm-up and not timed)")
    else:
        out.append("1 epoch per run: timings include warm-up")
    out.append(_hardware(ok))
    out += _accuracy_caveats(ok, steps)
    emulated = ok[ok["precision_support"].eq("emulated")]
    for (precision, device), rows in emulated.groupby(["precision", "device_short"], sort=False):
        out.append(f"{precision} is emulated on {device} ({len(rows)} cells): shown, never picked")
    software = _software(ok)
    if software:
        out.append(software)
    failed = summary[~summary["status"].isin(["ok", "skipped"])]
    if len(failed):
        out.append(f"{len(failed)} cell(s) did not finish ({', '.join(sorted(set(failed['status'])))}): see below")
    return out


def _span(values: pd.Series) -> str:
    low, high = int(values.min()), int(values.max())
    return str(low) if low == high else f"{low}-{high}"


def _software(ok: pd.DataFrame) -> str | None:
    """Library versions that differ, named by device or by environment, whichever tells them apart. A library
    missing where a cell ran is one that cell does not use: no difference (``dali None vs 2.4.0``)."""
    for labels in (ok["device_short"], ok["environment"]):
        pairs = list(zip(labels, ok["env"], strict=True))
        values = {(label, key): {describe(env.get(key)) for other, env in pairs if other == label} - {"None"}
                  for label in set(labels) for key in ENV_KEYS}
        if all(len(v) <= 1 for v in values.values()):
            found = differences("", pairs, ENV_KEYS, missing=False)
            return f"software differs between the results compared: {'; '.join(found)}" if found else None
    seen = {key: list(dict.fromkeys(describe(v) for env in ok["env"] if (v := env.get(key)) is not None))
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
            out.append(f"validation accuracy moves in {100 * step:.2f}-point steps (1 of ~{round(1 / step)} images): "
                       f"differences under {100 * margin(step):.1f} points are treated as ties")
    return out
