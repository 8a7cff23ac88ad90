"""Reports: result directories (from any machine) -> the answer, summary tables, device comparison, plots.

``harness report DIR [DIR ...] --out DIR`` writes ``summary.csv`` (one row per configuration, device and
environment, means over repeats), ``runs.csv`` (every run), ``comparison.csv``, ``epochs.csv``, ``summary.md``,
``report.html`` (self-contained) and ``plots/*.svg``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from harness.exitcode import ExitCode, unforeseen_input
from harness.report import race
from harness.report.aggregate import SUMMARY_COLUMNS, aggregate
from harness.report.compare_devices import compare, group_column, ordered_groups
from harness.report.decision import accuracy_step, caveats, decide, effects, with_accuracy_intervals
from harness.report.load import ReportError, Results, load_results
from harness.report.render import Report, labelled_precision, published_references, to_markdown
from harness.report.summary import RUN_COLUMNS, summarize

__all__ = ["FORMATS", "ReportError", "build_report", "command", "configure", "console_table", "write_report"]

FORMATS = ("md", "csv", "html")


def _check(formats: Iterable[str], target_acc: float | None) -> tuple[str, ...]:
    formats = tuple(dict.fromkeys(f.strip().lower() for f in formats if f.strip()))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise ReportError(f"--format: unknown {', '.join(unknown) or '(none)'}; choose from {', '.join(FORMATS)}")
    if target_acc is not None and not 0 < target_acc <= 1:
        raise ReportError(f"--target-acc {target_acc}: give a fraction in (0, 1], e.g. 0.6")
    return formats


def build_report(results: Results, sources: Sequence[str], target_acc: float | None = None, by: str = "device",
                 baseline: str | None = None) -> Report:
    """Everything the report shows, computed from the results. ``target_acc`` applies to every suite; without it,
    each suite's own (recorded in its cells), so one suite's target never changes another's pick."""
    targets = suite_targets(results, target_acc)
    runs = summarize(results, targets)
    ok = runs[runs["status"] == "ok"]
    steps = {str(suite): accuracy_step(results.epochs.loc[results.epochs["run"].isin(rows["run"]), "val_acc"])
             for suite, rows in ok.groupby("suite")}
    summary = with_accuracy_intervals(aggregate(runs), steps)
    column = group_column(summary, by)
    grouped = summary if column == "device_short" else aggregate(runs, [column])
    comparison = compare(grouped, by, baseline)
    devices = ordered_groups(summary, "device_short")
    base_device = comparison.baseline if column == "device_short" else (devices[0] if devices else None)
    return Report(
        runs=runs,
        summary=summary,
        comparison=comparison,
        boards=decide(summary, devices, targets),
        effects=effects(summary, base_device),
        caveats=[*caveats(summary, steps), *filter(None, [race.caveat(runs)])],
        steps=steps,
        references=published_references(summary["suite"]),
        sources=[str(s) for s in sources],
        targets=targets,
        by=by,
    )


def suite_targets(results: Results, target_acc: float | None = None) -> dict[str, float]:
    """Per suite, its target accuracy: ``target_acc`` for all when given, else the ``target_acc`` the suite's
    cells record (suites without one are left out)."""
    suites = [str(s) for s in results.cells["suite"]]
    if target_acc is not None:
        return dict.fromkeys(suites, target_acc)
    targets: dict[str, float] = {}
    for suite, cell in zip(suites, results.cells["cell"], strict=True):
        options = cell.get("options") if isinstance(cell, dict) else None
        if isinstance(options, dict) and options.get("target_acc") is not None:
            targets.setdefault(suite, float(options["target_acc"]))
    return targets


def _plots(report: Report, epochs: pd.DataFrame, out: Path) -> None:
    from harness.report.plots import write_plots

    report.plots = write_plots(report.summary, report.runs, epochs, out / "plots", report.references)


def write_report(
    dirs: Sequence[Path | str],
    out: Path | str,
    formats: Iterable[str] = FORMATS,
    target_acc: float | None = None,
    by: str = "device",
    baseline: str | None = None,
) -> pd.DataFrame:
    """Read result directories, write the report into ``out``, return the summary table. Without ``target_acc``,
    each suite's own target (``target_acc`` in the suite file)."""
    formats = _check(formats, target_acc)
    out = Path(out)
    results = load_results(dirs)
    report = build_report(results, [str(d) for d in dirs], target_acc, by, baseline)
    out.mkdir(parents=True, exist_ok=True)
    if "csv" in formats:
        report.summary[SUMMARY_COLUMNS].to_csv(out / "summary.csv", index=False)
        flat_extra(report.runs[[*RUN_COLUMNS, "extra"]]).to_csv(out / "runs.csv", index=False)
        report.comparison.flat(target=bool(report.targets)).to_csv(out / "comparison.csv", index=False)
        keys = report.runs[["run", "cell_id", "device", "environment", "seed", "model", "loader", "backend",
                            "precision", "recipe"]]
        flat_extra(results.epochs.merge(keys, on="run")).to_csv(out / "epochs.csv", index=False)
    if "md" in formats or "html" in formats:
        _plots(report, results.epochs, out)
    if "md" in formats:
        (out / "summary.md").write_text(to_markdown(report))
    if "html" in formats:
        from harness.report.html import to_html

        (out / "report.html").write_text(to_html(report))
    return report.summary[SUMMARY_COLUMNS]


def flat_extra(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its ``extra`` dicts (observers' fields) as ``extra.<plugin>.<field>`` columns, for a CSV."""
    extra = pd.DataFrame([e or {} for e in frame["extra"]], index=frame.index).add_prefix("extra.")
    return pd.concat([frame.drop(columns="extra"), extra], axis=1)


CONSOLE_COLUMNS = ["model", "recipe", "loader", "backend", "precision", "device", "environment", "status", "runs",
                   "epochs", "epoch_time_s", "throughput_img_s", "best_val_acc", "time_to_acc_s", "reason"]


def console_table(summary: pd.DataFrame, width: int = 60) -> str:
    """The summary's key columns as a plain-text table for the terminal (recipe and environment only when they
    differ between rows, time to the target accuracy only when the suite has one)."""
    shown = [c for c in CONSOLE_COLUMNS if not (c in ("recipe", "environment") and summary[c].nunique() < 2)
             and not (c == "time_to_acc_s" and summary[c].isna().all())]
    table = summary[shown].copy()
    table["precision"] = labelled_precision(summary)
    table["reason"] = table["reason"].fillna("").str.slice(0, width)
    table["best_val_acc"] = (100 * table["best_val_acc"]).round(1)
    table = table.rename(columns={"best_val_acc": "best_val_acc_%"}).astype(object)
    table = table.where(table.notna(), None)
    return table.to_markdown(index=False, tablefmt="simple", floatfmt=".2f", missingval="")


def configure(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``harness report``."""
    parser.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="result directories (any machine)")
    parser.add_argument("--out", type=Path, required=True, help="directory to write the report into")
    parser.add_argument("--by", default="device", help="column groups of the comparison: device (default) or host")
    parser.add_argument("--baseline", help="group the ratios are taken against, e.g. P40 (default: the group of the "
                                           "first DIR given)")
    parser.add_argument("--format", default=",".join(FORMATS), help=f"comma-separated subset of {','.join(FORMATS)}")
    parser.add_argument("--target-acc", type=float, help="validation accuracy for time-to-accuracy, e.g. 0.6, for "
                                                          "every suite (default: each suite's own target_acc)")


def command(args: argparse.Namespace) -> int:
    """Run ``harness report``; exit code 2 on bad input (the message names the file)."""
    try:
        summary = write_report(args.dirs, args.out, args.format.split(","), args.target_acc, args.by, args.baseline)
    except (ReportError, OSError) as exc:
        print(f"harness report: error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except Exception as exc:  # input nothing foresaw: still a one-line error, never a traceback
        return unforeseen_input("harness report", exc, args)
    print(f"harness report: {len(summary)} cell(s), {int(summary['runs'].sum())} run(s) -> {args.out}")
    return ExitCode.OK
