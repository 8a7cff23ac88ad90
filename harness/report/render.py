"""The report's content, shared by the Markdown and HTML writers: display tables and notes."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from harness.devices import match_device
from harness.report.aggregate import CONFIG
from harness.report.compare_devices import FLAGS, RATIO_BOUNDS, Comparison, incomparable
from harness.report.decision import LOADER_BOUND_PCT, Board, Effect, images, label, task
from harness.report.race import spent, stopped_at
from harness.report.summary import SPEC_KEYS, describe, device_short
from harness.text import plural

#: How each column is measured (the HTML shows them as header tooltips too).
DEFINITIONS = {
    "runs": "repeats of the cell (distinct seeds, `harness run --repeat N`); values are means over them",
    "throughput (img/s)": "training images / training-loop seconds, epochs after the first of each process "
    "(warm-up); mean over runs [Student-t 95 % interval over runs, none from one run]",
    "epoch time (s)": "median wall time of train + validation per epoch after the first of each process, mean over "
    "runs [95 % interval]",
    "best val. accuracy (%)": "best validation top-1 accuracy over the epochs, mean over runs [95 % interval: the "
    "wider of the Student-t interval over runs and the Wilson interval on the validation images]",
    "time to target (s)": "wall time from the start of training until validation accuracy first reached the target",
    "peak memory (GB)": "CUDA max allocated (GPU) or peak process RSS (CPU)",
    "MFU (%)": "throughput x training FLOPs per image / the device's dense peak for the precision; "
    "empty where the peak is unknown (CPUs)",
    "data wait (%)": "share of the training loop spent waiting for the next batch",
    "GFLOP / image": "forward + backward, counted once with torch.utils.flop_counter",
    "vs leader": "the headline metric over the leader's, with a 95 % interval over runs (with one run each, over its "
    "timed epochs: timing noise only); a Welch t interval on the log of the ratio below 10 values, else a bootstrap",
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
    more: list[str] = field(default_factory=list)  # columns shown only on request ("more columns")


@dataclass
class Report:
    """Everything a report shows."""

    runs: pd.DataFrame
    summary: pd.DataFrame
    comparison: Comparison
    boards: list[Board]
    effects: list[Effect]
    caveats: list[str]
    steps: dict[str, float | None]
    references: list[dict[str, Any]]
    plots: list[tuple[str, Path]] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    targets: dict[str, float] = field(default_factory=dict)
    by: str = "device"

    @property
    def target_header(self) -> str | None:
        """``time to 60 % (s)`` when every suite shares one target, ``time to target (s)`` when they differ."""
        values = set(self.targets.values())
        if not values:
            return None
        return target_header(values.pop()) if len(values) == 1 else "time to target (s)"

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
    """``1,234.5``, trailing zeros kept (``30.0``); empty for a missing value."""
    return "" if _missing(value) else f"{value:,.{digits}f}"


def count(value: Any) -> str:
    """A count: an integer as an integer (``2``), a fractional mean with one decimal (``1.4``)."""
    return "" if _missing(value) else f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"


def pct(value: Any) -> str:
    """A fraction as percent with one decimal (validation sets of ~100 images resolve no finer)."""
    return "" if _missing(value) else f"{100 * value:.1f}"


def with_interval(mean: Any, low: Any, high: Any, digits: int = 1, scale: float = 1.0, upper: float | None = None
                  ) -> str:
    """``37.5 [34.1, 40.9]``: the mean and its 95 % interval, clipped at the physical bounds (0, and ``upper``);
    the mean alone without an interval."""
    if _missing(mean):
        return ""
    text = f"{scale * mean:,.{digits}f}"
    if _missing(low) or _missing(high):
        return text
    low, high = max(scale * low, 0.0), scale * high
    high = min(high, upper) if upper is not None else high
    return f"{text} [{low:,.{digits}f}, {high:,.{digits}f}]"


def ratio(value: Any, low: Any = None, high: Any = None) -> str:
    """``0.68x``, ``0.68x [0.61, 0.74]``; empty for a missing value."""
    if _missing(value):
        return ""
    return f"{value:.2f}x" + ("" if _missing(low) or _missing(high) else f" [{low:.2f}, {high:.2f}]")


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


#: Results-table columns shown by default; the others are behind the "more columns" toggle.
DEFAULT_COLUMNS = ("runs", "throughput (img/s)", "best val. accuracy (%)", "data wait (%)", "warnings")


def results_table(report: Report) -> Table:
    """The ok cells, one row per configuration, device and environment, means over repeats [95 % intervals]; a few
    columns by default, the rest (observers' numeric ``extra`` fields too) behind a toggle."""
    s = report.summary[report.summary["status"] == "ok"]
    table = _id_columns(report, s)
    frozen = len(table.columns)
    table["runs"] = s["runs"].astype(str)
    table["throughput (img/s)"] = _interval_column(s, "throughput_img_s", "throughput")
    table["best val. accuracy (%)"] = _interval_column(s, "best_val_acc", "best_val_acc", scale=100, upper=100)
    header = report.target_header
    if header:
        table[header] = [_time_to_target(row) for row in s.to_dict("records")]
    table["data wait (%)"] = s["data_wait_pct"].map(num)
    table["epoch time (s)"] = _interval_column(s, "epoch_time_s", "epoch_time", digits=2)
    table["peak memory (GB)"] = s["peak_mem_gb"].map(lambda v: num(v, 2))
    table["MFU (%)"] = s["mfu"].map(pct)
    table["optimizer steps / epoch"] = s["optimizer_steps_per_epoch"].map(count)
    table["GFLOP / image"] = (s["train_flops_per_image"] / 1e9).map(lambda v: num(v, 2))
    keys = {
        "runs": s["runs"],
        "throughput (img/s)": s["throughput_img_s"],
        "best val. accuracy (%)": s["best_val_acc"],
        "data wait (%)": s["data_wait_pct"],
        "epoch time (s)": s["epoch_time_s"],
        "peak memory (GB)": s["peak_mem_gb"],
        "MFU (%)": s["mfu"],
        "optimizer steps / epoch": s["optimizer_steps_per_epoch"],
        "GFLOP / image": s["train_flops_per_image"],
    }
    extras = sorted({k for extra in s["extra"] for k in extra})
    for name in extras:
        values = s["extra"].map(lambda extra, name=name: extra.get(name, math.nan))
        table[f"extra.{name}"] = values.map(lambda v: num(v, 3))
        keys[f"extra.{name}"] = values
    table["warnings"] = s["warnings"].fillna("")
    if header:
        keys[header] = s["time_to_acc_s"]
    more = [c for c in table.columns[frozen:] if c not in (*DEFAULT_COLUMNS, header)]
    return Table(table.reset_index(drop=True), {k: v.reset_index(drop=True) for k, v in keys.items()}, frozen, more)


def _interval_column(s: pd.DataFrame, metric: str, prefix: str, digits: int = 1, scale: float = 1.0,
                     upper: float | None = None) -> list[str]:
    """A metric's means with their 95 % intervals (``3.02 [2.95, 3.09]``)."""
    return [with_interval(m, lo, hi, digits, scale, upper)
            for m, lo, hi in zip(s[metric], s[f"{prefix}_ci95_low"], s[f"{prefix}_ci95_high"], strict=True)]


def _time_to_target(row: dict[str, Any]) -> str:
    """Mean time to the target over the runs that reached it, saying how many did when not all."""
    reached, runs = row["target_reached_runs"], row["runs"]
    if not reached:
        return "not reached"
    text = with_interval(row["time_to_acc_s"], row["time_to_acc_ci95_low"], row["time_to_acc_ci95_high"])
    return text if reached == runs else f"{text} ({reached} of {plural(int(runs), 'run')})"


def failed_table(report: Report) -> Table:
    """Cells that started but did not finish: failed, interrupted, paused, incomplete (a race's eliminated cells
    are :func:`race_table`'s)."""
    s = report.summary[~report.summary["status"].isin(["ok", "skipped", "eliminated"])]
    table = _id_columns(report, s)
    frozen = len(table.columns)
    table["status"] = s["status"]
    table["epochs done"] = s["epochs"].astype(str)
    table["reason"] = s["reason"].fillna("")
    return Table(table.reset_index(drop=True), frozen=frozen)


def race_table(report: Report) -> Table:
    """The cells a race eliminated: where, and on what evidence (:mod:`harness.race`)."""
    s = report.summary[report.summary["status"] == "eliminated"]
    table = _id_columns(report, s)
    frozen = len(table.columns)
    table["runs"] = s["runs"].astype(str)
    table["eliminated at"] = s["race"].map(lambda race: stopped_at(race or {}))
    table["evidence"] = s["reason"].fillna("")
    return Table(table.reset_index(drop=True), frozen=frozen)


def race_note(report: Report) -> str:
    """What the race spent against the full matrix, in one sentence."""
    found = spent(report.runs)
    if found is None:
        return ""
    return (f"{found.eliminated} of {found.raced} cells eliminated; the race trained {found.epochs} cell-epochs of "
            f"the full matrix's {found.full_epochs} ({100 * found.share:.0f} %). A cell is eliminated when another "
            "configuration of its board is faster beyond the race's margin, or more accurate, at 95 % and not worse "
            "on the other (docs/race.md); ties stay in.")


def config_label(row: pd.Series | dict[str, Any], model: bool = False, environment: bool = False) -> str:
    """``torchvision · torch-ddp2 · bf16 (emulated)`` (after the recipe's name where the suite has that axis): what
    distinguishes a configuration on one device."""
    precision = str(row["precision"]) + (" (emulated)" if row.get("precision_support") == "emulated" else "")
    return label({**dict(row), "precision": precision}, model, environment)


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
    """The device pivot, rows that ran on two groups or more: ratio [95 % interval] first, then each group's
    throughput, accuracy (and time to target), flags."""
    comparison = report.comparison
    table = comparison.table
    ran = pd.concat([table[(g, "status")].eq("ok") for g in comparison.groups], axis=1).sum(axis=1)
    other_settings = table[FLAGS].fillna("").str.contains(r"(?:^|; )spec ")
    table = table[(ran >= 2) & ~other_settings]  # where two groups ran it alike (all rows are in comparison.csv)
    index = table.index.to_frame(index=False)
    out = index.drop(columns=[c for c in ("suite", "environment") if index[c].nunique() <= 1])
    frozen = len(out.columns)
    keys: dict[str, pd.Series] = {}
    for group in comparison.groups:
        if group == comparison.baseline:
            continue
        name = f"{group} / {comparison.baseline}"
        values = [table[(name, c)].reset_index(drop=True) for c in ("throughput_img_s", *RATIO_BOUNDS)]
        out[f"{name} throughput ratio"] = [ratio(*v) for v in zip(*values, strict=True)]
        keys[f"{name} throughput ratio"] = values[0]
    show_pct: Callable[[Any], str] = pct
    columns: list[tuple[str, str, str, Callable[[Any], str]]] = [
        (g, "throughput_img_s", "throughput (img/s)", num) for g in comparison.groups]
    columns += [(g, "best_val_acc", "best val. accuracy (%)", show_pct) for g in comparison.groups]
    if report.targets:
        columns += [(g, "time_to_acc_s", report.target_header or "", num) for g in comparison.groups]
    for group, metric, header, show in columns:
        values = table[(group, metric)].reset_index(drop=True)
        status = table[(group, "status")].reset_index(drop=True)
        name = f"{group} {header}"
        out[name] = [show(v) if s == "ok" else ("" if pd.isna(s) else str(s)) for v, s in zip(values, status,
                                                                                              strict=True)]
        keys[name] = pd.to_numeric(values, errors="coerce")
    out["flags"] = table[FLAGS].fillna("").reset_index(drop=True)
    return Table(out, keys, frozen)


def comparison_note(report: Report) -> str:
    """What the device comparison shows, or why it is empty: the settings that differ between the groups."""
    column = "device_short" if report.by == "device" else report.by
    if comparison_table(report).frame.empty:
        return f"Nothing to compare by {report.by}: {incomparable(report.summary, column)}."
    flags = report.comparison.table[FLAGS].fillna("")
    differ = sorted({f.removeprefix("spec ") for text in flags for f in text.split("; ") if f.startswith("spec ")})
    left_out = f" Left out as other experiments: rows whose settings differ ({'; '.join(differ)})." if differ else ""
    return ("Ratios of training throughput with a 95 % interval over runs (with one run each, over its timed "
            "epochs). Flagged rows differ in more than the device (software, emulation, reruns)." + left_out)


def leaderboard(report: Report, board: Board) -> Table:
    """One board's configurations ranked by its headline metric [interval], as a multiple of the leader's, best
    accuracy [interval], n, data wait; the tie set marked."""
    timed = board.metric == "time_to_acc_s"
    header = (target_header(board.target) if timed and board.target else "throughput (img/s)")
    prefix = "time_to_acc" if timed else "throughput"
    several_envs = report.summary["environment"].nunique() > 1
    rows = []
    keys: dict[str, list[float]] = {header: [], "vs leader": [], "best val. accuracy (%)": []}
    for rank, standing in enumerate(board.standings, 1):
        row = standing.row
        data_wait = num(row["data_wait_pct"])
        if data_wait and row["data_wait_pct"] > LOADER_BOUND_PCT:
            data_wait += " (loader-bound)"
        rows.append({
            "rank": str(rank),
            "tie": "[tie" if standing.tied and len(board.tied) > 1 else "",
            "configuration": label(row, environment=several_envs),
            header: with_interval(row[board.metric], row[f"{prefix}_ci95_low"], row[f"{prefix}_ci95_high"]),
            "vs leader": ratio(standing.relative, standing.low, standing.high),
            "best val. accuracy (%)": with_interval(row["best_val_acc"], row["best_val_acc_ci95_low"],
                                                    row["best_val_acc_ci95_high"], scale=100, upper=100),
            "n": str(row["runs"]),
            "data wait (%)": data_wait,
            "status": standing.status,
        })
        keys[header].append(row[board.metric])
        keys["vs leader"].append(standing.relative)
        keys["best val. accuracy (%)"].append(row["best_val_acc"])
    columns = ["rank", "tie", "configuration", header, "vs leader", "best val. accuracy (%)", "n", "data wait (%)",
               "status"]
    return Table(pd.DataFrame(rows, columns=columns), {k: pd.Series(v, dtype=float) for k, v in keys.items()}, 3)


def board_title(report: Report, board: Board) -> str:
    """``flowers-cpu · CPU AMD EPYC · resnet18``: the parts that differ between boards."""
    parts = [board.suite] if len({b.suite for b in report.boards}) > 1 else []
    return " · ".join([*parts, board.device, board.model])


def board_rule(board: Board) -> str:
    """How the board is ranked and what counts as a difference."""
    return (f"Ranked by {'time to the target' if board.metric == 'time_to_acc_s' else 'training throughput'}; "
            f"the pick {board.rule}, and is called only when every other eligible configuration is significantly "
            "slower (the 95 % interval of the ratio excludes 1); otherwise the tied set is named.")


def effects_table(report: Report) -> Table:
    """Each factor's effect on training throughput (geometric mean ratio over matched cells)."""
    rows = [
        {
            "factor": e.factor.replace("device_short", "device"),
            "comparison": e.comparison,
            "throughput ratio": ratio(e.ratio, e.low, e.high),
            "matched cells": str(e.matched) + ("" if math.isfinite(e.low) else " (no interval)"),
        }
        for e in report.effects
    ]
    frame = pd.DataFrame(rows, columns=["factor", "comparison", "throughput ratio", "matched cells"])
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
            notes.append(f"validation accuracy of {suite} is measured on {images(step)} images: it moves in "
                         f"{100 * step:.2f}-point steps")
    return notes


MARKDOWN_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "|": "\\|"})


def escape(text: Any) -> str:
    """Text safe in a Markdown table cell or an HTML-in-Markdown label: ``&``, ``<``, ``>`` as entities, ``|``
    escaped (a Markdown viewer that renders HTML then shows the text and runs nothing)."""
    return str(text).translate(MARKDOWN_ESCAPES)


def _markdown(table: Table) -> str:
    frame = table.frame.copy()
    lists = [c for c in frame.columns if frame[c].map(lambda v: isinstance(v, list)).any()]
    extra = []
    for column in lists:
        for name, cells in zip(frame.iloc[:, 0], frame[column], strict=True):
            extra += [f"<details><summary>{escape(name)} ({len(cells)})</summary>", "",
                      escape(", ".join(cells)), "", "</details>"]
        frame[column] = frame[column].map(lambda cells: f"{len(cells)}, listed below")
    if frame.empty:
        return "(none)"
    frame = frame.map(escape)
    frame.columns = [escape(c) for c in frame.columns]
    return "\n".join([frame.to_markdown(index=False, disable_numparse=True), "", *extra]).rstrip()


def _bullets(items: list[str]) -> list[str]:
    return [f"- {escape(item)}" for item in items]


def to_markdown(report: Report, image_dir: str = "plots") -> str:
    """The whole report as Markdown (images referenced relative to the report); the answer first."""
    ok = report.summary[report.summary["status"] == "ok"]
    skipped = report.summary[report.summary["status"] == "skipped"]
    failed = failed_table(report)
    parts = [f"# {escape(report.title)}", "", f"Results from: {', '.join(f'`{s}`' for s in report.sources)}", ""]
    parts += ["## Answer", "", *[escape(rule) for rule in dict.fromkeys(board_rule(b) for b in report.boards)], ""]
    for board in report.boards:
        parts += [f"### {escape(board_title(report, board))}: {escape(board.verdict)}", "",
                  _markdown(leaderboard(report, board)), ""]
    if not report.boards:
        parts += ["No configuration ran: nothing to rank.", ""]
    parts += ["**Read with care:**", "", *_bullets(report.caveats), ""]
    if report.effects:
        parts += ["### Effect of each factor on training throughput", "", EFFECTS_NOTE, "",
                  _markdown(effects_table(report)), ""]
    table = results_table(report)
    parts += [f"## Results: {plural(len(ok), 'cell')} that ran ({plural(int(ok['runs'].sum()), 'run')})", ""]
    parts += [*_bullets(definitions(report)), "", _markdown(Table(table.frame.drop(columns=table.more))), "",
              "<details><summary>More columns</summary>", "", _markdown(table), "", "</details>", ""]
    note = race_note(report)
    if note:
        eliminated = race_table(report)
        parts += ["## Race", "", escape(note), "", *([_markdown(eliminated), ""] if len(eliminated.frame) else [])]
    if len(failed.frame):
        parts += [f"## Did not finish: {plural(len(failed.frame), 'cell')}", "", _markdown(failed), ""]
    if len(skipped):
        parts += [f"## Not run: {plural(len(skipped), 'cell')}", "", _markdown(skipped_table(report)), ""]
    if len(report.comparison.groups) > 1:
        parts += [f"## Comparison by {report.by} (ratios against {escape(report.comparison.baseline)})", "",
                  escape(comparison_note(report)), ""]
        if len(comparison_table(report).frame):
            parts += [_markdown(comparison_table(report)), ""]
    if report.plots:
        parts += ["## Plots", "", *[f"![{escape(title)}]({image_dir}/{path.name})\n" for title, path in report.plots]]
    if report.references:
        parts += ["## Published reference (not measured here)", "", _markdown(reference_table(report)), ""]
        parts += [f"Source: {ref['source']}" for ref in report.references] + [""]
    parts += ["## Device facts", "", _markdown(facts_table(report)), ""]
    return "\n".join(parts)
