"""Runs -> one row per cell, device and environment: merging directories, and the mean over repeats.

Merging: of several results for the same cell, device, environment and seed (the same directory read
twice, a rerun, a cell skipped in one environment and run in another), the best-ranked one counts
(ok > failed / interrupted / incomplete > skipped > skipped because software is not installed), the
latest among equals; the others are noted. A cell skipped because its software is not installed
in one environment is dropped when another environment has a result for it on that device.
Repeats (distinct seeds) are aggregated: mean and a 95 % Student-t interval over the ok runs.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import pandas as pd
from scipy import stats

#: What makes a configuration: every matrix axis (recipe: its name where the suite has that axis, else "").
CONFIG = ["suite", "model", "recipe", "loader", "backend", "precision"]
#: A summary row: one configuration with one set of settings (epochs, image size, ...) on one device in one
#: environment.
ROW = [*CONFIG, "device", "environment", "settings"]
NOT_INSTALLED = re.compile(r"\bnot installed\b", re.IGNORECASE)
#: Metrics averaged over repeats, each with a 95 % interval (``<metric>_ci95_low`` / ``_high``).
MEAN_METRICS = ["throughput_img_s", "epoch_time_s", "best_val_acc", "time_to_acc_s"]

#: Columns of ``summary.csv``, in order.
SUMMARY_COLUMNS = [
    *CONFIG, "precision_support", "device", "environment", "status", "reason", "runs", "seeds", "epochs",
    "timed_epochs", "throughput_img_s", "throughput_ci95_low", "throughput_ci95_high", "epoch_time_s",
    "epoch_time_ci95_low", "epoch_time_ci95_high", "best_val_acc", "best_val_acc_ci95_low", "best_val_acc_ci95_high",
    "time_to_acc_s", "time_to_acc_ci95_low", "time_to_acc_ci95_high", "target_reached_runs", "best_epoch",
    "peak_mem_gb", "optimizer_steps_per_epoch", "data_wait_pct", "train_flops_per_image", "mfu", "warnings", "host",
    "nproc", "cell_id", "run",
]  # fmt: skip


def interval(values: Sequence[float]) -> tuple[float, float, float]:
    """Mean and two-sided 95 % Student-t interval of ``values`` (NaNs dropped); no interval below 2 values."""
    clean = [float(v) for v in values if pd.notna(v) and math.isfinite(v)]
    if not clean:
        return math.nan, math.nan, math.nan
    mean = sum(clean) / len(clean)
    if len(clean) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.975, len(clean) - 1)) * pd.Series(clean).std(ddof=1) / math.sqrt(len(clean))
    return mean, mean - half, mean + half


def _rank(status: str, reason: str | None) -> int:
    if status == "ok":
        return 3
    if status != "skipped":
        return 2
    return 0 if reason and NOT_INSTALLED.search(reason) else 1


def _ranks(runs: pd.DataFrame) -> list[int]:
    return [_rank(s, r) for s, r in zip(runs["status"], runs["reason"], strict=True)]


def pick_runs(runs: pd.DataFrame, keys: Sequence[str] = ROW) -> pd.DataFrame:
    """One run per configuration, device, environment and seed; ``notes`` names reruns (a skip for missing
    software is no rerun)."""
    ranked = runs.assign(_rank=_ranks(runs)).sort_values(["_rank", "finished_at"], na_position="first", kind="stable")
    key = [*keys, "seed"]
    counts = ranked["_rank"].gt(0).groupby([ranked[k] for k in key], dropna=False).transform("sum")
    picked = ranked.assign(_count=counts).drop_duplicates(key, keep="last")
    picked["notes"] = [
        [f"{n} runs on {device} with seed {seed}: latest {status} shown"] if n > 1 else []
        for n, device, seed, status in zip(
            picked["_count"], picked["device_short"], picked["seed"], picked["status"], strict=True
        )
    ]
    return picked.drop(columns=["_rank", "_count"]).reset_index(drop=True)


def _aggregate_group(group: pd.DataFrame) -> dict:
    """One summary row from the picked runs of one configuration, device and environment."""
    ranked = group.assign(_rank=_ranks(group)).sort_values(["_rank", "seed"], ascending=[False, True])
    lead = ranked.iloc[0]
    used = ranked[ranked["status"] == lead["status"]]
    notes = [note for notes in group["notes"] for note in notes]
    if lead["status"] == "ok":  # a failed repeat is reported; a repeat skipped for missing software is not
        others = ranked[(ranked["status"] != "ok") & (ranked["_rank"] > 0)]
        for (status, reason), runs in others.groupby(["status", "reason"], dropna=False):
            notes.append(f"{len(runs)} of {len(group)} runs {status}: {reason}")
    warnings = dict.fromkeys(w for text in used["warnings"] if text for w in text.split("; "))
    row = {column: lead[column] for column in [*ROW, "device_short", "source_index", "device_type", "env", "cell",
                                               "nproc", "cell_id", "train_flops_per_image", "race"]}
    row.update(
        status=lead["status"],
        reason=lead["reason"],
        runs=len(used),
        seeds=" ".join(str(s) for s in sorted(used["seed"].dropna().astype(int))),
        epochs=int(used["epochs"].median()),
        timed_epochs=int(used["timed_epochs"].median()),
        target_reached_runs=int(used["time_to_acc_s"].notna().sum()),
        peak_mem_gb=used["peak_mem_gb"].max(),
        optimizer_steps_per_epoch=used["optimizer_steps_per_epoch"].median(),
        data_wait_pct=used["data_wait_pct"].mean(),
        mfu=used["mfu"].mean(),
        precision_support="emulated" if (used["precision_support"] == "emulated").any() else lead["precision_support"],
        warnings="; ".join([*warnings, *dict.fromkeys(notes)]),
        host=", ".join(dict.fromkeys(str(h) for h in used["host"].dropna())),
        run="; ".join(used["run"]),
        best_epoch=used["best_epoch"].median(),
        finished_at=used["finished_at"].max(),
        notes=list(dict.fromkeys(notes)),
        # what the decision's intervals resample: per run, or one run's timed epochs (timing noise only)
        throughput_samples=list(used["throughput_img_s"]) if len(used) > 1 else
        [v for each in used["epoch_throughputs"] for v in each],
        time_to_acc_samples=list(used["time_to_acc_s"].dropna()),
        extra=pd.DataFrame(list(used["extra"])).mean().to_dict(),
        disqualified=list(dict.fromkeys(m for messages in used["disqualified"] for m in messages)),
    )
    for metric in MEAN_METRICS:
        prefix = metric.removesuffix("_s").removesuffix("_img")
        row[metric], row[f"{prefix}_ci95_low"], row[f"{prefix}_ci95_high"] = interval(used[metric])
    return row


def aggregate(runs: pd.DataFrame, extra_keys: Sequence[str] = ()) -> pd.DataFrame:
    """The summary: one row per configuration, device and environment (and ``extra_keys``, e.g. host)."""
    keys = [*ROW, *extra_keys]
    picked = pick_runs(runs, keys)
    rows = [_aggregate_group(group) for _, group in picked.groupby(keys, dropna=False, sort=False)]
    extra = [k for k in extra_keys if k not in SUMMARY_COLUMNS]
    summary = pd.DataFrame(rows, columns=[*SUMMARY_COLUMNS, *extra, "device_short", "source_index",
                                          "device_type", "settings", "finished_at", "notes", "env", "cell",
                                          "throughput_samples", "time_to_acc_samples", "extra", "disqualified",
                                          "race"])
    summary = _drop_superseded_skips(summary)
    summary["best_epoch"] = pd.to_numeric(summary["best_epoch"]).round().astype("Int64")  # median over repeats
    return summary.sort_values([*CONFIG, "source_index", "device", "environment"], ignore_index=True)


def _drop_superseded_skips(summary: pd.DataFrame) -> pd.DataFrame:
    """Drop "not installed" skips of a cell and device that another environment has a better result for."""
    rank = pd.Series(_ranks(summary), summary.index, dtype=int)
    best = rank.groupby([summary[k] for k in [*CONFIG, "device"]], dropna=False).transform("max")
    return summary[(rank > 0) | (best == 0)].reset_index(drop=True)
