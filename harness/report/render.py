"""The report's content, shared by the Markdown and HTML writers: display tables and notes."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from harness.devices import match_device
from harness.report.compare_devices import FLAGS, Comparison
from harness.report.summary import device_short

NOTES = [
    "epoch_time_s: median (and p90) wall time of train + validation over the epochs after the first.",
    "throughput_img_s: training images / training-loop seconds over the epochs after the first; "
    "the 95 % interval is over the per-epoch throughputs (Student t).",
    "time_to_acc_s: wall time since training started until validation accuracy first reached the target.",
    "mfu: throughput x training FLOPs per image (forward + backward, counted once with "
    "torch.utils.flop_counter) / the device's dense peak for the cell's precision (fp16/bf16: tensor-core "
    "rate, never below the fp32 rate); empty where the peak is unknown (CPUs).",
    "Published reference rows come from the tutorial, not from this harness: they are never mixed into measured rows.",
]


@dataclass
class Report:
    """Everything a report shows."""

    summary: pd.DataFrame
    comparison: Comparison
    references: list[dict[str, Any]]
    plots: list[tuple[str, Path]] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    target_acc: float | None = None
    by: str = "device"


def published_references() -> list[dict[str, Any]]:
    """The tutorial's published figures (``harness/data/published.json``)."""
    text = (Path(__file__).resolve().parent.parent / "data" / "published.json").read_text()
    return list(json.loads(text)["references"])


def _num(value: Any, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)) or value is pd.NA:
        return ""
    if isinstance(value, (int, float)):
        return f"{value:,.{digits}f}"
    return str(value)


def _pct(value: Any, digits: int = 2) -> str:
    text = _num(value if not isinstance(value, (int, float)) else 100 * value, digits)
    return f"{text} %" if text else ""


METRIC_FORMATS = {
    "throughput_img_s": lambda v: _num(v, 1),
    "epoch_time_s": _num,
    "epoch_time_p90_s": _num,
    "best_val_acc": _pct,
    "time_to_acc_s": lambda v: _num(v, 1),
    "mfu": lambda v: _pct(v, 1),
    "peak_mem_gb": _num,
    "optimizer_steps_per_epoch": lambda v: _num(v, 1),
    "data_wait_pct": lambda v: _num(v, 1),
    "train_flops_per_image": lambda v: f"{v / 1e9:,.2f} G" if isinstance(v, float) and math.isfinite(v) else "",
}


def labelled_precision(summary: pd.DataFrame) -> pd.Series:
    """``bf16``, or ``bf16 (emulated)`` for a cell that ran in a precision its device only emulates."""
    emulated = summary["precision_support"] == "emulated"
    return summary["precision"].where(~emulated, summary["precision"] + " (emulated)")


def summary_table(report: Report) -> pd.DataFrame:
    """The measured summary, formatted for reading."""
    s = report.summary
    ci = [  # throughput cannot be negative: a wide interval from few epochs is clipped at 0 for reading
        f"{_num(max(lo, 0.0), 1)} – {_num(hi, 1)}" if math.isfinite(lo) else ""
        for lo, hi in zip(s["throughput_ci95_low"], s["throughput_ci95_high"], strict=True)
    ]
    table = pd.DataFrame({"suite": s["suite"]} if s["suite"].nunique() > 1 else {}, index=s.index)
    for col in ["model", "loader", "backend"]:
        table[col] = s[col]
    table["precision"] = labelled_precision(s)
    table["device"] = s["device_short"]
    table["status"] = s["status"]
    table["reason"] = s["reason"].fillna("")
    table["epochs"] = s["epochs"]
    for col in ["epoch_time_s", "epoch_time_p90_s", "throughput_img_s"]:
        table[col] = s[col].map(METRIC_FORMATS[col])
    table["throughput 95 % CI"] = ci
    table["best_val_acc"] = s["best_val_acc"].map(_pct)
    table["best_epoch"] = s["best_epoch"].map(lambda v: "" if pd.isna(v) else str(v))
    if report.target_acc is not None:
        table[f"time_to_{100 * report.target_acc:g}%_s"] = s["time_to_acc_s"].map(METRIC_FORMATS["time_to_acc_s"])
    for col in ["peak_mem_gb", "optimizer_steps_per_epoch", "data_wait_pct", "train_flops_per_image", "mfu"]:
        table[col] = s[col].map(METRIC_FORMATS[col])
    table["warnings"] = s["warnings"]
    return table.reset_index(drop=True)


def comparison_table(report: Report) -> pd.DataFrame:
    """The device pivot, formatted, with flat ``"T4 throughput_img_s"`` headers."""
    table = report.comparison.table.copy()
    if report.target_acc is None:
        table = table.drop(columns="time_to_acc_s", level=1)
    for group, metric in table.columns:
        if (group, metric) == FLAGS or metric == "status":
            table[(group, metric)] = table[(group, metric)].fillna("")
        elif " / " in group:
            table[(group, metric)] = table[(group, metric)].map(lambda v: f"{_num(v)}x" if _num(v) else "")
        else:
            table[(group, metric)] = table[(group, metric)].map(METRIC_FORMATS.get(metric, _num))
    flat = Comparison(table, report.comparison.groups, report.comparison.baseline).flat()
    if flat["suite"].nunique() <= 1:
        flat = flat.drop(columns="suite")
    return flat


def reference_table(report: Report) -> pd.DataFrame:
    """Published figures, clearly labelled as such."""
    rows = [
        {
            "kind": "PUBLISHED (not measured here)",
            "label": ref["label"],
            "device": ref["device"],
            "model": ref["model"],
            "loader": ref["loader"],
            "backend": ref["backend"],
            "precision": ref["precision"],
            "recipe": ref["recipe"],
            "epochs": ref["epochs"],
            "epoch_time_s": ref["epoch_time_s"],
            "best_val_acc": _pct(ref["best_val_acc"]),
        }
        for ref in report.references
    ]
    return pd.DataFrame(rows)


def facts_table(report: Report) -> pd.DataFrame:
    """Peak figures of the devices in this report (CPUs: unknown peak)."""
    rows = []
    for name in dict.fromkeys(report.summary["device"]):
        facts = match_device(name) if not name.startswith("CPU") else None
        if facts is None:
            rows.append({"device": name, "key": device_short(name), "notes": "unknown peak: MFU not computed"})
            continue
        peaks = facts["peak_tflops"]
        rows.append(
            {
                "device": name,
                "key": facts["key"],
                "architecture": facts["architecture"],
                "capability": facts["capability"],
                "fp32 TFLOP/s": _num(peaks["fp32"]),
                "fp16 TFLOP/s": _num(peaks["fp16"]) or "none",
                "bf16 TFLOP/s": _num(peaks["bf16"]) or "none",
                "memory GB": str(facts["memory_gb"]),
                "bandwidth GB/s": str(facts["bandwidth_gbs"]),
                "notes": facts["notes"],
                "sources": " ".join(facts["sources"]),
            }
        )
    return pd.DataFrame(rows).fillna("")


def headline(report: Report) -> list[str]:
    """One-line answers: the fastest ok configuration per device."""
    ok = report.summary[(report.summary["status"] == "ok") & report.summary["throughput_img_s"].notna()]
    lines = []
    for device, runs in ok.groupby("device_short", sort=True):
        best = runs.loc[runs["throughput_img_s"].idxmax()]
        lines.append(
            f"{device}: fastest is {best['model']} {best['loader']}/{best['backend']}/{best['precision']} at "
            f"{best['throughput_img_s']:,.1f} img/s, {_num(best['epoch_time_s'])} s/epoch, "
            f"best validation accuracy {_pct(best['best_val_acc'])}."
        )
    return lines


def to_markdown(report: Report, image_dir: str = "plots") -> str:
    """The whole report as Markdown (images referenced relative to the report)."""
    parts = ["# harness report", ""]
    parts += [f"Results from: {', '.join(f'`{s}`' for s in report.sources)}", ""]
    parts += [f"- {line}" for line in headline(report)] + [""]
    parts += ["## Published reference (not measured here)", "", reference_table(report).to_markdown(index=False), ""]
    parts += [f"Source: {ref['source']}" for ref in report.references] + [""]
    parts += ["## Summary (measured)", "", summary_table(report).to_markdown(index=False), ""]
    title = f"## Comparison by {report.by}"
    if report.comparison.baseline and len(report.comparison.groups) > 1:
        title += f" (ratios against {report.comparison.baseline})"
    parts += [title, "", comparison_table(report).to_markdown(index=False), ""]
    parts += ["## Device facts", "", facts_table(report).to_markdown(index=False), ""]
    if report.plots:
        parts += ["## Plots", ""]
        parts += [f"![{title}]({image_dir}/{path.name})\n" for title, path in report.plots]
    parts += ["## Definitions", "", *[f"- {note}" for note in NOTES], ""]
    return "\n".join(parts)
