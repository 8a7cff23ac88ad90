"""The report's content, shared by the Markdown and HTML writers: display tables and notes."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from harness.devices import match_device
from harness.report.aggregate import CONFIG
from harness.report.compare_devices import FLAGS, Comparison
from harness.report.decision import Effect, Pick, margin, task
from harness.report.load import DEFAULT_ENVIRONMENT
from harness.report.summary import SPEC_KEYS, describe, device_short

#: How each column is measured (the HTML shows them as header tooltips too).
DEFINITIONS = {
    "runs": "repeats of the cell (distinct seeds, `harness run --repeat N`); values are means over them",
    "throughput (img/s)": "training images / training-loop seconds, epochs after the first (warm-up)",
    "throughput 95 % interval (img/s)": "Student-t interval of the mean over runs; none from a single run",
    "epoch time (s)": "median wall time of train + validation per epoch after the first, mean over runs "
    "(± half the 95 % interval)",
    "best val. accuracy (%)": "best validation top-1 accuracy over the epochs, mean over runs",
    "time to target (s)": "wall time from the start of training until validation accuracy first reached the target",
    "peak memory (GB)": "CUDA max allocated (GPU) or peak process RSS (CPU)",
    "MFU (%)": "throughput x training FLOPs per image / the device's dense peak for the precision; "
    "empty where the peak is unknown (CPUs)",
    "data wait (%)": "share of the training loop spent waiting for the next batch",
    "GFLOP / image": "forward + backward, counted once with torch.utils.flop_counter",
}
SEP = " · "


@dataclass
class Table:
    """A display table: strings to show, numbers to sort by, and how many leading id columns to freeze.

    A cell holding a list (of cell ids) is shown collapsed (HTML ``<details>``; Markdown: listed below).
    """

    frame: pd.DataFrame
    keys: dict[str, pd.Series] = field(default_factory=dict)
    frozen: int = 0


@dataclass
class Report:
    """Everything a report shows."""

    runs: pd.DataFrame
    summary: pd.DataFrame
    comparison: Comparison
    picks: list[Pick]
    effects: list[Effect]
    caveats: list[str]
    steps: dict[str, float | None]
    references: list[dict[str, Any]]
    plots: list[tuple[str, Path]] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    target_acc: float | None = None
    by: str = "device"

    @property
    def title(self) -> str:
        suites = ", ".join(dict.fromkeys(str(s) for s in self.summary["suite"].dropna()))
        return f"harness report: {suites}" if suites else "harness report"


def published_references(suites: pd.Series) -> list[dict[str, Any]]:
    """The tutorial's published figures (``harness/data/published.json``), for suites of its task only."""
    if not any(task(s) == "flowers" for s in suites.dropna().unique()):
        return []
    text = (Path(__file__).resolve().parent.parent / "data" / "published.json").read_text()
    return list(json.loads(text)["references"])


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and not math.isfinite(value))


def num(value: Any, digits: int = 1) -> str:
    """``1,234.5``; empty for a missing value."""
    return "" if _missing(value) else f"{value:,.{digits}f}"


def pct(value: Any) -> str:
    """A fraction as percent with one decimal (validation sets of ~100 images resolve no finer)."""
    return "" if _missing(value) else f"{100 * value:.1f}"


def with_spread(mean: Any, low: Any, high: Any, digits: int = 1, scale: float = 1.0) -> str:
    """``37.5 ± 3.1`` (half the 95 % interval), or the mean alone without an interval."""
    if _missing(mean):
        return ""
    text = f"{scale * mean:,.{digits}f}"
    return text if _missing(low) else f"{text} ± {scale * (high - low) / 2:,.{digits}f}"


def interval_text(low: Any, high: Any, runs: int, digits: int = 1) -> str:
    """``236.2–246.6``, or why there is none."""
    if _missing(low):
        return f"{runs} run, no interval" if runs == 1 else "no interval"
    return f"{max(low, 0.0):,.{digits}f}–{high:,.{digits}f}"  # throughput is never negative: clip for reading


def ratio(value: Any) -> str:
    """``0.68x``; empty for a missing value."""
    return "" if _missing(value) else f"{value:.2f}x"


def labelled_precision(summary: pd.DataFrame) -> pd.Series:
    """``bf16``, or ``bf16 (emulated)`` for a cell that ran in a precision its device only emulates."""
    emulated = summary["precision_support"] == "emulated"
    return summary["precision"].where(~emulated, summary["precision"] + " (emulated)")


def _id_columns(report: Report, rows: pd.DataFrame) -> pd.DataFrame:
    """What identifies a row: suite, model, recipe, loader, backend, precision, device, environment and the
    settings that differ (those that vary)."""
    table = pd.DataFrame(index=rows.index)
    if report.summary["suite"].nunique() > 1:
        table["suite"] = rows["suite"]
    table["model"] = rows["model"]
    if report.summary["recipe"].nunique() > 1:
        table["recipe"] = rows["recipe"]
    for column in ("loader", "backend"):
        table[column] = rows[column]
    table["precision"] = labelled_precision(rows)
    if report.summary["device_short"].nunique() > 1:
        table["device"] = rows["device_short"]
    if report.summary["environment"].nunique() > 1:
        table["environment"] = rows["environment"]
    varying = _varying_settings(report.summary)
    if varying:  # runs with other settings are other experiments: say which
        table["settings"] = rows["cell"].map(lambda c: ", ".join(f"{k} {describe(c.get(k))}" for k in varying))
    return table


def _varying_settings(summary: pd.DataFrame) -> list[str]:
    """The settings (epochs, image size, ...) in which rows of one configuration, device and environment differ."""
    keys = [*CONFIG, "device", "environment"]
    twins = summary[summary.duplicated(keys, keep=False)]
    return [k for k in SPEC_KEYS
            if twins.groupby(keys)["cell"].agg(lambda cells, k=k: len({describe(c.get(k)) for c in cells})).gt(1).any()]


def target_header(target: float) -> str:
    """``time to 60 % (s)``."""
    return f"time to {100 * target:g} % (s)"


def results_table(report: Report) -> Table:
    """The ok cells, one row per configuration, device and environment, means over repeats."""
    s = report.summary[report.summary["status"] == "ok"]
    table = _id_columns(report, s)
    frozen = len(table.columns)
    table["runs"] = s["runs"].astype(str)
    table["throughput (img/s)"] = s["throughput_img_s"].map(num)
    table["throughput 95 % interval (img/s)"] = [
        interval_text(lo, hi, n)
        for lo, hi, n in zip(s["throughput_ci95_low"], s["throughput_ci95_high"], s["runs"], strict=True)
    ]
    table["epoch time (s)"] = _spread_column(s, "epoch_time", digits=2)
    table["best val. accuracy (%)"] = _spread_column(s, "best_val_acc", scale=100)
    if report.target_acc is not None:
        table[target_header(report.target_acc)] = [
            _time_to_target(row) for row in s.to_dict("records")
        ]
    table["peak memory (GB)"] = s["peak_mem_gb"].map(lambda v: num(v, 2))
    table["MFU (%)"] = s["mfu"].map(pct)
    table["data wait (%)"] = s["data_wait_pct"].map(num)
    table["optimizer steps / epoch"] = s["optimizer_steps_per_epoch"].map(num)
    table["GFLOP / image"] = (s["train_flops_per_image"] / 1e9).map(lambda v: num(v, 2))
    table["warnings"] = s["warnings"].fillna("")
    keys = {
        "runs": s["runs"],
        "throughput (img/s)": s["throughput_img_s"],
        "throughput 95 % interval (img/s)": s["throughput_ci95_low"],
        "epoch time (s)": s["epoch_time_s"],
        "best val. accuracy (%)": s["best_val_acc"],
        "peak memory (GB)": s["peak_mem_gb"],
        "MFU (%)": s["mfu"],
        "data wait (%)": s["data_wait_pct"],
        "optimizer steps / epoch": s["optimizer_steps_per_epoch"],
        "GFLOP / image": s["train_flops_per_image"],
    }
    if report.target_acc is not None:
        keys[target_header(report.target_acc)] = s["time_to_acc_s"]
    return Table(table.reset_index(drop=True), {k: v.reset_index(drop=True) for k, v in keys.items()}, frozen)


def _spread_column(s: pd.DataFrame, prefix: str, digits: int = 1, scale: float = 1.0) -> list[str]:
    """A metric's means with half their 95 % intervals (``3.02 ± 0.05``)."""
    metric = prefix if prefix == "best_val_acc" else f"{prefix}_s"
    return [
        with_spread(m, lo, hi, digits, scale)
        for m, lo, hi in zip(s[metric], s[f"{prefix}_ci95_low"], s[f"{prefix}_ci95_high"], strict=True)
    ]


def _time_to_target(row: dict[str, Any]) -> str:
    """Mean time to the target over the runs that reached it, saying how many did when not all."""
    reached, runs = row["target_reached_runs"], row["runs"]
    if not reached:
        return "not reached"
    text = with_spread(row["time_to_acc_s"], row["time_to_acc_ci95_low"], row["time_to_acc_ci95_high"])
    return text if reached == runs else f"{text} ({reached} of {runs} runs)"


def failed_table(report: Report) -> Table:
    """Cells that started but did not finish: failed, interrupted, incomplete."""
    s = report.summary[~report.summary["status"].isin(["ok", "skipped"])]
    table = _id_columns(report, s)
    frozen = len(table.columns)
    table["status"] = s["status"]
    table["epochs done"] = s["epochs"].astype(str)
    table["reason"] = s["reason"].fillna("")
    return Table(table.reset_index(drop=True), frozen=frozen)


def config_label(row: pd.Series | dict[str, Any], model: bool = False, environment: bool = False) -> str:
    """``torchvision · torch-ddp2 · bf16`` (after the recipe's name where the suite has that axis): what
    distinguishes a configuration on one device."""
    precision = str(row["precision"]) + (" (emulated)" if row.get("precision_support") == "emulated" else "")
    parts = [row["model"]] if model else []
    parts += [row["recipe"]] if row.get("recipe") else []
    parts += [row["loader"], row["backend"], precision]
    parts += [row["environment"]] if environment and row["environment"] != DEFAULT_ENVIRONMENT else []
    return SEP.join(str(p) for p in parts)


def skipped_table(report: Report) -> Table:
    """Skipped cells, one row per reason, with the cells listed."""
    s = report.summary[report.summary["status"] == "skipped"]
    several = s["device_short"].nunique() > 1 or s["environment"].nunique() > 1
    rows = []
    for reason, cells in s.groupby(s["reason"].fillna("(no reason recorded)"), sort=False):
        names = [
            config_label(row, model=True) + (f" ({row['device_short']}, {row['environment']})" if several else "")
            for row in cells.to_dict("records")
        ]
        rows.append({"reason": reason, "cells": len(cells), "devices": ", ".join(dict.fromkeys(cells["device_short"])),
                     "which cells": names})
    frame = pd.DataFrame(rows, columns=["reason", "cells", "devices", "which cells"])
    frame = frame.sort_values("cells", ascending=False, kind="stable", ignore_index=True)
    keys = {"cells": frame["cells"]}
    frame["cells"] = frame["cells"].astype(str)
    return Table(frame, keys)


def comparison_table(report: Report) -> Table:
    """The device pivot, rows that ran on two groups or more: ratio first, then each group's throughput, accuracy
    (and time to target), flags."""
    comparison = report.comparison
    table = comparison.table
    ran = pd.concat([table[(g, "status")].eq("ok") for g in comparison.groups], axis=1).sum(axis=1)
    table = table[ran >= 2]  # a row compares only where two groups ran it (all rows are in comparison.csv)
    index = table.index.to_frame(index=False)
    out = index.drop(columns=[c for c in ("suite", "environment") if index[c].nunique() <= 1])
    frozen = len(out.columns)
    keys: dict[str, pd.Series] = {}
    columns = [(f"{g} / {comparison.baseline}", "throughput_img_s", "throughput ratio", ratio)
               for g in comparison.groups if g != comparison.baseline]
    columns += [(g, "throughput_img_s", "throughput (img/s)", num) for g in comparison.groups]
    columns += [(g, "best_val_acc", "best val. accuracy (%)", pct) for g in comparison.groups]
    if report.target_acc is not None:
        columns += [(g, "time_to_acc_s", target_header(report.target_acc), num) for g in comparison.groups]
    for group, metric, header, show in columns:
        values = table[(group, metric)].reset_index(drop=True)
        status = table[(group, "status")].reset_index(drop=True) if " / " not in group else None
        name = f"{group} {header}"
        out[name] = [
            show(v) if status is None or s == "ok" else ("" if pd.isna(s) else str(s))
            for v, s in zip(values, status if status is not None else [None] * len(values), strict=True)
        ]
        keys[name] = pd.to_numeric(values, errors="coerce")
    out["flags"] = table[FLAGS].fillna("").reset_index(drop=True)
    return Table(out, keys, frozen)


def decision_table(report: Report) -> Table:
    """Per device (and model): the pick, its runner-up, and whether the difference beats the spread."""
    several_models = len({p.model for p in report.picks}) > 1
    environments = report.summary["environment"].nunique() > 1
    rows = []
    for pick in report.picks:
        row = {"device": pick.device}
        if several_models:
            row["model"] = pick.model
        if pick.best is None:
            rows.append({**row, "pick": pick.rule})
            continue
        timed = pick.metric == "time_to_acc_s"
        header = target_header(report.target_acc) if timed and report.target_acc else "throughput (img/s)"
        row["pick"] = config_label(pick.best, environment=environments)
        row[header] = _metric(pick.best, pick.metric)
        row["best val. accuracy (%)"] = with_spread(pick.best["best_val_acc"], pick.best["best_val_acc_ci95_low"],
                                                   pick.best["best_val_acc_ci95_high"], scale=100)
        if pick.runner_up is None:
            row["runner-up"] = "none other reached the target" if timed else "none within the margin"
        else:
            unit = "s" if timed else "img/s"
            other = pick.runner_up
            row["runner-up"] = f"{config_label(other, environment=environments)}: {_metric(other, pick.metric)} {unit}"
            what = "time" if timed else "throughput"
            row["difference"] = f"{pick.ratio():.2f}x the runner-up's {what}; {pick.verdict()}"
        rows.append(row)
    return Table(pd.DataFrame(rows).fillna(""))


def _metric(row: pd.Series, metric: str) -> str:
    """A summary row's metric with half its 95 % interval."""
    prefix = metric.removesuffix("_s").removesuffix("_img")
    return with_spread(row[metric], row[f"{prefix}_ci95_low"], row[f"{prefix}_ci95_high"])


def decision_rule(report: Report) -> str:
    """How the picks were made, in one sentence."""
    picks = [p for p in report.picks if p.best is not None]
    rules = list(dict.fromkeys(p.rule for p in picks))
    if len(rules) == 1:
        text = f"Pick per device: the configuration that {rules[0]}"
    elif rules:
        text = "Pick: " + "; ".join(f"for {p.model} on {p.device}, the configuration that {p.rule}" for p in picks)
    else:
        text = "No configuration to pick"
    return text + (". Emulated precisions are never picked; the difference to the runner-up counts as larger than "
                   "the spread when their 95 % intervals over runs do not overlap.")


def effects_table(report: Report) -> Table:
    """Each factor's effect on training throughput (geometric mean ratio over matched cells)."""
    rows = [
        {
            "factor": e.factor.replace("device_short", "device"),
            "comparison": e.comparison,
            "throughput ratio": ratio(e.ratio),
            "95 % interval": f"{ratio(e.low)}–{ratio(e.high)}" if math.isfinite(e.low) else
            f"{e.matched} matched cell, no interval",
            "matched cells": str(e.matched),
        }
        for e in report.effects
    ]
    frame = pd.DataFrame(rows, columns=["factor", "comparison", "throughput ratio", "95 % interval", "matched cells"])
    keys = {"throughput ratio": pd.Series([e.ratio for e in report.effects], dtype=float),
            "matched cells": pd.Series([e.matched for e in report.effects], dtype=float)}
    return Table(frame, keys)


EFFECTS_NOTE = ("Throughput ratio of each level against the base level over matched cells (equal in every other "
                "factor, device and environment), as a geometric mean with a 95 % interval over the matched cells; "
                "> 1 is faster.")


def reference_table(report: Report) -> Table:
    """Published figures, clearly labelled as such."""
    rows = [
        {
            "source": ref["label"],
            "device": ref["device"],
            "model": ref["model"],
            "loader": ref["loader"],
            "backend": ref["backend"],
            "precision": ref["precision"],
            "epochs": str(ref["epochs"]),
            "epoch time (s)": ref["epoch_time_s"],
            "best val. accuracy (%)": pct(ref["best_val_acc"]),
            "recipe": ref["recipe"],
        }
        for ref in report.references
    ]
    return Table(pd.DataFrame(rows))


def facts_table(report: Report) -> Table:
    """Peak figures of the devices in this report (CPUs: unknown peak)."""
    rows = []
    for name in dict.fromkeys(report.summary["device"]):
        facts = match_device(name) if not name.startswith("CPU") else None
        if facts is None:
            rows.append({"device": device_short(name), "name": name, "notes": "unknown peak: MFU not computed"})
            continue
        peaks = facts["peak_tflops"]
        rows.append(
            {
                "device": facts["key"],
                "name": name,
                "architecture": facts["architecture"],
                "capability": facts["capability"],
                "fp32 TFLOP/s": num(peaks["fp32"]),
                "fp16 TFLOP/s": num(peaks["fp16"]) or "none",
                "bf16 TFLOP/s": num(peaks["bf16"]) or "none",
                "memory (GB)": str(facts["memory_gb"]),
                "bandwidth (GB/s)": str(facts["bandwidth_gbs"]),
                "notes": facts["notes"],
                "sources": " ".join(facts["sources"]),
            }
        )
    return Table(pd.DataFrame(rows).fillna(""))


def definitions(report: Report) -> list[str]:
    """The definitions of the results table's columns."""
    notes = [f"{name}: {text}" for name, text in DEFINITIONS.items()]
    for suite, step in report.steps.items():
        if step:
            notes.append(f"validation accuracy of {suite} resolves {100 * step:.2f} points (one image); "
                         f"accuracies within {100 * margin(step):.1f} points count as tied")
    return notes


def _markdown(table: Table) -> str:
    frame = table.frame.copy()
    lists = [c for c in frame.columns if frame[c].map(lambda v: isinstance(v, list)).any()]
    extra = []
    for column in lists:
        for label, cells in zip(frame.iloc[:, 0], frame[column], strict=True):
            extra += [f"<details><summary>{label} ({len(cells)})</summary>", "", ", ".join(cells), "", "</details>"]
        frame[column] = frame[column].map(lambda cells: f"{len(cells)}, listed below")
    if frame.empty:
        return "(none)"
    return "\n".join([frame.to_markdown(index=False), "", *extra]).rstrip()


def to_markdown(report: Report, image_dir: str = "plots") -> str:
    """The whole report as Markdown (images referenced relative to the report); the answer first."""
    ok = report.summary[report.summary["status"] == "ok"]
    skipped = report.summary[report.summary["status"] == "skipped"]
    failed = failed_table(report)
    parts = [f"# {report.title}", "", f"Results from: {', '.join(f'`{s}`' for s in report.sources)}", ""]
    parts += ["## Answer", "", "**Read with care:**", "", *[f"- {c}" for c in report.caveats], ""]
    parts += [decision_rule(report), "", _markdown(decision_table(report)), ""]
    if report.effects:
        parts += ["### Effect of each factor on training throughput", "", EFFECTS_NOTE, "",
                  _markdown(effects_table(report)), ""]
    parts += [f"## Results: {len(ok)} cells that ran ({int(ok['runs'].sum())} runs)", ""]
    parts += [*[f"- {d}" for d in definitions(report)], "", _markdown(results_table(report)), ""]
    if len(failed.frame):
        parts += [f"## Did not finish: {len(failed.frame)} cells", "", _markdown(failed), ""]
    if len(skipped):
        parts += [f"## Not run: {len(skipped)} cells", "", _markdown(skipped_table(report)), ""]
    if len(report.comparison.groups) > 1:
        parts += [f"## Comparison by {report.by} (ratios against {report.comparison.baseline})", "",
                  _markdown(comparison_table(report)), ""]
    if report.plots:
        parts += ["## Plots", "", *[f"![{title}]({image_dir}/{path.name})\n" for title, path in report.plots]]
    if report.references:
        parts += ["## Published reference (not measured here)", "", _markdown(reference_table(report)), ""]
        parts += [f"Source: {ref['source']}" for ref in report.references] + [""]
    parts += ["## Device facts", "", _markdown(facts_table(report)), ""]
    return "\n".join(parts)
