"""Reports: result directories (from any machine) -> summary tables, device comparison, plots.

``harness report DIR [DIR ...] --out DIR`` writes ``summary.csv``, ``comparison.csv``,
``epochs.csv``, ``summary.md``, ``report.html`` (self-contained) and ``plots/*.png``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from harness.report.compare_devices import compare
from harness.report.load import ReportError, load_results
from harness.report.render import Report, labelled_precision, published_references, to_markdown
from harness.report.summary import SUMMARY_COLUMNS, summarize

__all__ = ["FORMATS", "ReportError", "command", "configure", "console_table", "write_report"]

FORMATS = ("md", "csv", "html")


def _check(formats: Iterable[str], target_acc: float | None) -> tuple[str, ...]:
    formats = tuple(dict.fromkeys(f.strip().lower() for f in formats if f.strip()))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ReportError(f"--format: unknown {', '.join(unknown) or '(none)'}; choose from {', '.join(FORMATS)}")
    if target_acc is not None and not 0 < target_acc <= 1:
        raise ReportError(f"--target-acc {target_acc}: give a fraction in (0, 1], e.g. 0.6")
    return formats


def _plots(report: Report, epochs: pd.DataFrame, out: Path) -> None:
    try:
        from harness.report.plots import write_plots
    except ImportError:  # matplotlib is an optional dependency (the "report" extra)
        print("harness report: matplotlib is not installed; skipping plots", file=sys.stderr)
        return
    report.plots = write_plots(report.summary, epochs, out / "plots", report.references)


def write_report(
    dirs: Sequence[Path | str],
    out: Path | str,
    formats: Iterable[str] = FORMATS,
    target_acc: float | None = None,
    by: str = "device",
    baseline: str | None = None,
) -> pd.DataFrame:
    """Read result directories, write the report into ``out``, return the summary table."""
    formats = _check(formats, target_acc)
    out = Path(out)
    results = load_results(dirs)
    summary = summarize(results, target_acc)
    report = Report(
        summary=summary,
        comparison=compare(summary, by, baseline),
        references=published_references(),
        sources=[str(d) for d in dirs],
        target_acc=target_acc,
        by=by,
    )
    out.mkdir(parents=True, exist_ok=True)
    if "csv" in formats:
        summary[SUMMARY_COLUMNS].to_csv(out / "summary.csv", index=False)
        report.comparison.flat().to_csv(out / "comparison.csv", index=False)
        keys = summary[["run", "cell_id", "device", "model", "loader", "backend", "precision"]]
        results.epochs.merge(keys, on="run").to_csv(out / "epochs.csv", index=False)
    if "md" in formats or "html" in formats:
        _plots(report, results.epochs, out)
    if "md" in formats:
        (out / "summary.md").write_text(to_markdown(report))
    if "html" in formats:
        from harness.report.html import to_html

        (out / "report.html").write_text(to_html(report))
    return summary[SUMMARY_COLUMNS]


CONSOLE_COLUMNS = [
    "model",
    "loader",
    "backend",
    "precision",
    "device",
    "status",
    "epochs",
    "epoch_time_s",
    "throughput_img_s",
    "best_val_acc",
    "reason",
]


def console_table(summary: pd.DataFrame, width: int = 60) -> str:
    """The summary's key columns as a plain-text table for the terminal."""
    table = summary[CONSOLE_COLUMNS].copy()
    table["precision"] = labelled_precision(summary)
    table["reason"] = table["reason"].fillna("").str.slice(0, width)
    table["best_val_acc"] = (100 * table["best_val_acc"]).round(2)
    table = table.rename(columns={"best_val_acc": "best_val_acc_%"}).astype(object)
    table = table.where(table.notna(), None)
    return table.to_markdown(index=False, tablefmt="simple", floatfmt=".2f", missingval="")


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``harness report``."""
    parser.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="result directories (any machine)")
    parser.add_argument("--out", type=Path, required=True, help="directory to write the report into")
    parser.add_argument("--by", default="device", help="column groups of the comparison: device (default) or host")
    parser.add_argument("--baseline", help="group the ratios are taken against (default: the first, e.g. P40)")
    parser.add_argument("--format", default=",".join(FORMATS), help=f"comma-separated subset of {','.join(FORMATS)}")
    parser.add_argument("--target-acc", type=float, help="validation accuracy for time-to-accuracy, e.g. 0.6")


def command(args: argparse.Namespace) -> int:
    """Run ``harness report``; exit code 2 on bad input (the message names the file)."""
    try:
        summary = write_report(args.dirs, args.out, args.format.split(","), args.target_acc, args.by, args.baseline)
    except (ReportError, OSError) as exc:
        print(f"harness report: error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # input nothing foresaw: still a one-line error, never a traceback
        print(f"harness report: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(f"harness report: {len(summary)} cell run(s) -> {args.out}")
    return 0
