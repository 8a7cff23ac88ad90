"""Device comparison: one row per configuration, one column group per device, ratios, flags.

Rows compare like with like: when the runs being compared differ in more than the device
(library versions, or the cell's own parameters such as epochs or image size), the row is
flagged in the ``flags`` column rather than silently compared. Groups keep the order in which
their result directories were given; the first is the baseline unless ``--baseline`` names one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from harness.report.aggregate import CONFIG
from harness.report.load import ReportError
from harness.report.stats import ratio_interval
from harness.report.summary import SPEC_KEYS, describe, installed

ROW_KEYS = [*CONFIG, "environment"]
METRICS = ["status", "runs", "throughput_img_s", "epoch_time_s", "best_val_acc", "time_to_acc_s", "mfu"]
RATIO_METRICS = ["throughput_img_s"]
#: Columns of a ratio's group holding its 95 % interval (:func:`harness.report.stats.ratio_interval`).
RATIO_BOUNDS = ("throughput_ci95_low", "throughput_ci95_high")
#: Environment fields whose difference makes a comparison across devices unfair.
ENV_KEYS = ("torch", "torchvision", "timm", "cuda_version", "cudnn_version", "dali", "colossalai", "harness")
GROUP_COLUMNS = {"device": "device_short", "host": "host"}
FLAGS = ("check", "flags")


@dataclass
class Comparison:
    """The pivot (MultiIndex columns: ``(group, metric)``), its groups in order, and the baseline."""

    table: pd.DataFrame
    groups: list[str]
    baseline: str | None

    def flat(self, target: bool = True) -> pd.DataFrame:
        """The pivot with flat column names (``"T4 throughput_img_s"``, ``"T4 / P40 throughput_img_s"``);
        without a target accuracy, no time-to-accuracy columns."""
        flat = self.table if target else self.table.drop(columns="time_to_acc_s", level=1)
        flat = flat.copy()
        flat.columns = [metric if group == FLAGS[0] else f"{group} {metric}" for group, metric in flat.columns]
        return flat.reset_index()


def group_column(summary: pd.DataFrame, by: str) -> str:
    """The summary column that ``--by`` names."""
    column = GROUP_COLUMNS.get(by, by)
    if column not in summary.columns:
        choices = ", ".join([*GROUP_COLUMNS, "suite", "loader", "backend", "precision"])
        raise ReportError(f"--by {by!r}: not a column to group by (try {choices})")
    return column


def ordered_groups(summary: pd.DataFrame, column: str) -> list[str]:
    """Groups in the order their result directories were given."""
    ordered = summary.sort_values("source_index", kind="stable")[column].dropna().astype(str)
    return list(dict.fromkeys(ordered))


def differences(label: str, values: Iterable[tuple[str, Mapping[str, Any]]], keys: tuple[str, ...],
                missing: bool = True) -> list[str]:
    """``"torch 2.1 (P40) vs 2.3 (T4)"`` for every key whose value differs between groups (library versions:
    ``not installed`` for none; ``missing=False``: a group without the key, such as a package its cells do not
    use, differs from none)."""
    show = installed if keys == ENV_KEYS else describe
    out = []
    values = list(values)
    for key in keys:
        seen: dict[str, list[str]] = {}
        for group, mapping in values:
            if not missing and mapping.get(key) is None:
                continue
            groups = seen.setdefault(show(mapping.get(key)), [])
            groups += [group] if group not in groups else []
        if len(seen) > 1:
            out.append(f"{label}{key} " + " vs ".join(f"{v} ({', '.join(g)})" for v, g in seen.items()))
    return out


def _flags(rows: pd.DataFrame, column: str) -> dict[tuple, str]:
    flags = {}
    for key, runs in rows.groupby(ROW_KEYS, dropna=False, sort=False):
        envs = list(zip(runs[column], runs["env"], strict=True))
        specs = list(zip(runs[column], runs["cell"], strict=True))
        found = differences("env ", envs, ENV_KEYS) + differences("spec ", specs, SPEC_KEYS)
        found += [note for notes in runs["notes"] for note in notes]
        emulated = [g for g, level in zip(runs[column], runs["precision_support"], strict=True) if level == "emulated"]
        if emulated:
            found.insert(0, f"EMULATED precision on {', '.join(map(str, emulated))}")
        flags[key] = "; ".join(found)
    return flags


def incomparable(summary: pd.DataFrame, column: str) -> str:
    """Why no configuration ran on two groups alike: the settings whose values differ between the groups."""
    ok = summary[summary["status"].eq("ok")]
    ran = list(dict.fromkeys(ok[column].astype(str)))
    if len(ran) < 2:
        return f"only {', '.join(ran) or 'none'} has cells that ran"
    values: dict[str, dict[str, set[str]]] = {}
    for group, rows in ok.groupby(column, sort=False):
        for key in ROW_KEYS:
            values.setdefault(key, {})[str(group)] = {describe(v) for v in rows[key]}
        for key in SPEC_KEYS:
            values.setdefault(key, {})[str(group)] = {describe(cell.get(key)) for cell in rows["cell"]}
    found = [f"{key.replace('_', ' ')} " + " vs ".join(f"{', '.join(sorted(v))} ({g})" for g, v in seen.items())
             if not any(text.startswith("{") for v in seen.values() for text in v) else f"{key} settings differ"
             for key, seen in values.items() if not set.intersection(*seen.values())]
    return "no configuration ran on two of them with the same settings: " + ("; ".join(found) or "nothing in common")


def compare(summary: pd.DataFrame, by: str = "device", baseline: str | None = None) -> Comparison:
    """Pivot the summary (:func:`harness.report.aggregate.aggregate`) by device (or host, ...)."""
    column = group_column(summary, by)
    groups = ordered_groups(summary, column)
    if baseline is not None and baseline not in groups:
        raise ReportError(f"--baseline {baseline!r} is not among the groups ({', '.join(groups)})")
    baseline = baseline or (groups[0] if groups else None)
    rows = summary.sort_values("finished_at", na_position="first", kind="stable")
    rows = rows.drop_duplicates([*ROW_KEYS, column], keep="last")  # other settings on one device: the latest
    pivot = rows.pivot(index=ROW_KEYS, columns=column, values=METRICS)
    pivot = pivot.swaplevel(axis=1).reindex(columns=pd.MultiIndex.from_product([groups, METRICS]))
    samples = {(*key, group): values for *key, group, values in
               rows[[*ROW_KEYS, column, "throughput_samples"]].itertuples(index=False)}
    for group in groups:
        if group == baseline:
            continue
        found = [ratio_interval(samples.get((*key, group), []), samples.get((*key, baseline), []))
                 for key in pivot.index]
        name = f"{group} / {baseline}"
        metric = RATIO_METRICS[0]
        pivot[(name, metric)] = pivot[(group, metric)].astype(float) / pivot[(baseline, metric)].astype(float)
        pivot[(name, RATIO_BOUNDS[0])] = [f[1] for f in found]
        pivot[(name, RATIO_BOUNDS[1])] = [f[2] for f in found]
    flags = _flags(rows, column)
    pivot[FLAGS] = [flags.get(key, "") for key in pivot.index]
    return Comparison(table=pivot, groups=groups, baseline=baseline)
