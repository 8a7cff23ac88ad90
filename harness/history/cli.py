"""The ``harness history`` subcommands (``record``, ``check``, ``page``, ``bisect``): exit 0 ok, 1 a new regression
(``check``), 2 bad input."""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys
from pathlib import Path

from harness import compare
from harness.compare import CompareError
from harness.exitcode import ExitCode
from harness.history import bisect, changes, page, records
from harness.history.changes import Change, Series


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``record``, ``check``, ``page`` and ``bisect`` subcommands."""
    parser.description = "Benchmark results per commit: record runs, find change points, a history page, bisect."
    sub = parser.add_subparsers(dest="history_command", required=True)
    rec = sub.add_parser("record", help="file finished runs under the commit they measured")
    rec.add_argument("history", type=Path, help="the history folder (created if absent)")
    rec.add_argument("runs", type=Path, nargs="+", metavar="RUN",
                     help="a harness output directory or a pytest-benchmark JSON file")
    rec.add_argument("--commit", help="the revision measured (default: the JSON's commit_info, else HEAD)")
    rec.add_argument("--repo", type=Path, default=Path("."), help="the git repository (default: the current one)")
    rec.add_argument("--machine", help="a name for this machine (default: a hash of its hardware fingerprint)")
    rec.add_argument("--report", metavar="URL", help="link points to this report instead of a copy of the run's own")
    for name, text in (("check", "find persistent shifts; exit 1 for a new regression past --threshold"),
                       ("page", "write the static history page")):
        p = sub.add_parser(name, help=text)
        p.add_argument("history", type=Path, help="the history folder")
        p.add_argument("--select", action="append", default=[], metavar="PATTERN",
                       help="only series whose key matches (glob; repeatable), e.g. '*time_vs_reference'")
        p.add_argument("--machine", action="append", default=[], help="only this machine (repeatable)")
        p.add_argument("--max-pvalue", type=float, default=changes.MAX_PVALUE,
                       help=f"significance of a change point (default {changes.MAX_PVALUE:g})")
    check = sub.choices["check"]
    check.add_argument("--threshold", default="5%", help="a regression at least this large fails (default 5%%)")
    check.add_argument("--recent", type=int, default=5,
                       help="a change point is new when it starts within its series' newest N commits (default 5)")
    check.add_argument("--json", action="store_true",
                       help="print the change points as JSON on stdout (the readable lines go to stderr)")
    sub.choices["page"].add_argument("--out", type=Path, required=True, help="folder for index.html")
    sub.choices["page"].add_argument("--title", default="Benchmark history", help="the page's title")
    bisect.configure(sub.add_parser("bisect", help="find the first commit of a change by interleaved A/B runs"))


def command(args: argparse.Namespace) -> int:
    """Run a history subcommand: 0 ok, 1 a new regression (check), 2 bad input."""
    try:
        return {"record": _record, "check": _check, "page": _page, "bisect": bisect.command}[args.history_command](args)
    except (CompareError, OSError) as exc:
        print(f"harness history {args.history_command}: error: {exc}", file=sys.stderr)
        return ExitCode.USAGE


def _record(args: argparse.Namespace) -> int:
    for run in args.runs:
        path = records.record(args.history, run, args.repo, args.commit, args.machine, args.report)
        print(f"recorded {run} as {path}")
    return ExitCode.OK


def selected(args: argparse.Namespace) -> list[Series]:
    """The history's series that ``--select`` and ``--machine`` keep."""
    if not 0 < args.max_pvalue < 1:
        raise CompareError(f"--max-pvalue {args.max_pvalue}: must be between 0 and 1")
    found = changes.series_of(records.load(args.history))
    kept = [s for s in found if (not args.machine or s.machine in args.machine)
            and (not args.select or any(fnmatch.fnmatchcase(s.key, p) for p in args.select))]
    if not kept:
        raise CompareError(f"{args.history}: no series {'matches the filters' if found else 'recorded yet'}")
    return kept


def found_changes(args: argparse.Namespace, series: list[Series]) -> dict[str, list[Change]]:
    return {s.name: changes.change_points(s, args.max_pvalue) for s in series}


def _check(args: argparse.Namespace) -> int:
    threshold = compare.parse_fraction(args.threshold)
    if args.recent < 1:
        raise CompareError(f"--recent {args.recent}: give at least 1")
    series = selected(args)
    found = [c for s in series for c in found_changes(args, [s])[s.name]]
    fail = changes.failing(found, threshold, args.recent)
    readable = sys.stderr if args.json else sys.stdout
    for c in found:
        print(("FAIL " if c in fail else "") + c.describe(), file=readable)
    print(f"{len(series)} series, {len(found)} change points, {len(fail)} new regressions of at least "
          f"{threshold:.0%} (in the newest {args.recent} commits); significance p <= {args.max_pvalue:g}",
          file=readable)
    if args.json:
        print(json.dumps({"threshold": threshold, "recent": args.recent, "changes": [
            {"machine": c.series.machine, "key": c.series.key, "metric": c.series.metric,
             "last_before": c.before.commit, "first_after": c.first.commit, "change": c.change,
             "mean_before": c.mean_before, "mean_after": c.mean_after, "p_value": c.p_value,
             "regression": c.regression, "fails": c in fail} for c in found]}, indent=2))
    return ExitCode.FAILED if fail else ExitCode.OK


def _page(args: argparse.Namespace) -> int:
    series = selected(args)
    path = page.write(args.history, args.out, series, found_changes(args, series), args.title)
    print(f"wrote {path}")
    return ExitCode.OK
