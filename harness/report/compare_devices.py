"""Device comparison: one row per configuration, one column group per device, ratios, flags.

Rows compare like with like: when the runs being compared differ in more than the device
(library versions, or the cell's own parameters such as epochs or image size), the row is
flagged in the ``flags`` column rather than silently compared.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from harness.report.load import ReportError

ROW_KEYS = ["suite", "model", "loader", "backend", "precision"]
METRICS = ["status", "throughput_img_s", "epoch_time_s", "best_val_acc", "time_to_acc_s", "mfu"]
RATIO_METRICS = ["throughput_img_s"]
#: Environment fields whose difference makes a comparison across devices unfair.
ENV_KEYS = ("torch", "torchvision", "timm", "cuda_version", "cudnn_version", "dali", "colossalai", "harness")
#: Cell fields that must agree (everything that changes the work done, not where it runs).
SPEC_KEYS = (
    "epochs",
    "image_size",
    "seed",
    "subset",
    "nproc",
    "recipe",
    "model_params",
    "loader_params",
    "backend_params",
)
GROUP_COLUMNS = {"device": "device_short", "host": "host"}
FLAGS = ("check", "flags")


@dataclass
class Comparison:
    """The pivot (MultiIndex columns: ``(group, metric)``), its groups in order, and the baseline."""

    table: pd.DataFrame
    groups: list[str]
    baseline: str | None

    def flat(self) -> pd.DataFrame:
        """The pivot with flat column names (``"T4 throughput_img_s"``, ``"T4 / P40 throughput_img_s"``)."""
        flat = self.table.copy()
        flat.columns = [metric if group == FLAGS[0] else f"{group} {metric}" for group, metric in flat.columns]
        return flat.reset_index()


def group_column(summary: pd.DataFrame, by: str) -> str:
    """The summary column that ``--by`` names."""
    column = GROUP_COLUMNS.get(by, by)
    if column not in summary.columns:
        choices = ", ".join([*GROUP_COLUMNS, "suite", "loader", "backend", "precision"])
        raise ReportError(f"--by {by!r}: not a column to group by (try {choices})")
    return column


def _pick_runs(summary: pd.DataFrame, column: str) -> tuple[pd.DataFrame, dict[tuple, str]]:
    """One run per configuration and group: the latest ok one. Also notes where runs were dropped."""
    ranked = summary.assign(_ok=summary["status"].eq("ok")).sort_values(["_ok", "finished_at"], na_position="first")
    keys = [*ROW_KEYS, column]
    counts = ranked.groupby(keys, dropna=False).size()
    notes = {k[:-1]: f"{n} runs on {k[-1]}: latest shown" for k, n in counts.items() if n > 1}
    return ranked.drop_duplicates(keys, keep="last").drop(columns="_ok"), notes


def _describe(value: Any) -> str:
    return json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)


def _differences(label: str, values: Mapping[str, Mapping[str, Any]], keys: tuple[str, ...]) -> list[str]:
    """``"torch 2.1 (P40) vs 2.3 (T4)"`` for every key whose value differs between groups."""
    out = []
    for key in keys:
        seen = {group: _describe(values[group].get(key)) for group in sorted(values)}
        if len(set(seen.values())) > 1:
            out.append(f"{label} {key} " + " vs ".join(f"{v} ({g})" for g, v in seen.items()))
    return out


def _flags(picked: pd.DataFrame, column: str, notes: Mapping[tuple, str]) -> dict[tuple, str]:
    rows = {}
    for key, runs in picked.groupby(ROW_KEYS, dropna=False, sort=False):
        envs = {g: env for g, env in zip(runs[column], runs["env"], strict=True)}
        specs = {g: cell for g, cell in zip(runs[column], runs["cell"], strict=True)}
        found = _differences("env", envs, ENV_KEYS) + _differences("spec", specs, SPEC_KEYS)
        if key in notes:
            found.append(notes[key])
        emulated = [g for g, level in zip(runs[column], runs["precision_support"], strict=True) if level == "emulated"]
        if emulated:
            found.insert(0, f"EMULATED precision on {', '.join(map(str, emulated))}")
        rows[key] = "; ".join(found)
    return rows


def compare(summary: pd.DataFrame, by: str = "device", baseline: str | None = None) -> Comparison:
    """Pivot ``summary`` (from :func:`harness.report.summary.summarize`) by device (or host, ...)."""
    column = group_column(summary, by)
    picked, notes = _pick_runs(summary, column)
    groups = sorted(picked[column].dropna().astype(str).unique(), key=lambda g: (g.startswith("CPU"), g))
    if baseline is not None and baseline not in groups:
        raise ReportError(f"baseline {baseline!r} is not among the groups ({', '.join(groups)})")
    baseline = baseline or (groups[0] if groups else None)
    pivot = picked.pivot(index=ROW_KEYS, columns=column, values=METRICS)
    pivot = pivot.swaplevel(axis=1).reindex(columns=pd.MultiIndex.from_product([groups, METRICS]))
    for group in groups:
        if group == baseline:
            continue
        for metric in RATIO_METRICS:
            ratio = pivot[(group, metric)].astype(float) / pivot[(baseline, metric)].astype(float)
            pivot[(f"{group} / {baseline}", metric)] = ratio
    flags = _flags(picked, column, notes)
    pivot[FLAGS] = [flags.get(key, "") for key in pivot.index]
    return Comparison(table=pivot, groups=groups, baseline=baseline)
