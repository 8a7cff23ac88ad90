"""``harness history bisect GOOD BAD -- COMMAND``: the first commit of a change, by interleaved A/B runs.

A binary search over the first-parent commits after GOOD up to BAD. Each step benchmarks the middle commit
against GOOD with :mod:`harness.ab`'s machinery (both checked out as worktrees, runs alternating ABBA,
samples pooled and judged as ``harness compare`` does), one round (a run per side) at a time, and stops as
soon as the noise allows a decision:

- **bad** (the change is at or before the middle): a selected benchmark ``regressed`` (Mann-Whitney U
  significant and worse by at least ``--threshold``);
- **good**: after at least one ABBA pair, no selected benchmark is worse by half the threshold or more;
- otherwise another round, up to ``--rounds`` (10), where the verdict decides (a regression or not), the
  step being marked "undecided by the noise".

BAD is taken to be bad and GOOD good (``harness history check`` reports that range); nothing is spent on
confirming them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness import ab, compare
from harness.compare import Options, Row
from harness.history.records import HistoryError, git

logger = logging.getLogger(__name__)


@dataclass
class Step:
    """One probe of the search: ``commit`` against GOOD."""

    commit: str
    subject: str
    decision: str  # "good" or "bad"
    rounds: int
    worse: float  # the largest oriented change of a selected benchmark (positive: worse)
    undecided: bool  # max rounds reached without a clear verdict
    rows: list[dict[str, Any]]


def candidates(repo: Path, good: str, bad: str) -> list[str]:
    """The first-parent commits after ``good`` up to ``bad``, oldest first."""
    commits = git(repo, "rev-list", "--first-parent", "--reverse", f"{good}..{bad}").split()
    if not commits:
        raise HistoryError(f"no commits after {good} up to {bad}: is GOOD an ancestor of BAD?")
    return commits


def worse_by(row: Row) -> float:
    """How much worse the candidate is, as a positive fraction (negative: better)."""
    return 1 / row.ratio - 1 if row.direction == "higher" else row.ratio - 1


def decide(rows: Sequence[Row], threshold: float, rounds: int, last: bool) -> str | None:
    """"bad", "good", or None for another round."""
    if not rows:
        raise HistoryError("the benchmark command gave no benchmark that --select keeps")
    if any(r.verdict == "regressed" for r in rows):
        return "bad"
    if last or (rounds >= 2 and max(worse_by(r) for r in rows) < threshold / 2):
        return "good"
    return None


def probe(repo: Path, good: str, commit: str, command: Sequence[str], out: Path, options: Options,
          max_rounds: int, reference: str | None, fastest: float | None, setup: str | None = None) -> Step:
    """Rounds of GOOD vs ``commit`` until :func:`decide` decides (``setup`` run once in each worktree first)."""
    runs: list[ab.Run] = []
    with ab.worktrees(repo, {"base": good, "candidate": commit}) as trees:
        for side, tree in trees.items():
            if setup:
                out.mkdir(parents=True, exist_ok=True)
                ab.execute(setup, tree, ab.side_env(tree, side), out / f"setup-{side}.log")
        for number in range(1, max_rounds + 1):
            for side in ab.order(number)[-2:]:
                runs.append(ab.run_once(command, side, number, trees[side], out))
            sides = ab.pooled(runs, out, reference, fastest)
            rows = compare.compare_sides(sides["base"], sides["candidate"], options)
            rows = [r for r in rows if r.verdict not in ("new", "missing")]
            decision = decide(rows, options.threshold, number, number == max_rounds)
            if decision:
                worst = max(worse_by(r) for r in rows)
                undecided = number == max_rounds and decision == "good" and worst >= options.threshold / 2
                return Step(commit, git(repo, "show", "-s", "--format=%s", commit), decision, number, worst,
                            undecided, [asdict(r) for r in rows])
    raise AssertionError("unreachable: the last round always decides")


def bisect(repo: Path, good: str, bad: str, command: Sequence[str], out: Path, options: Options,
           max_rounds: int = 10, reference: str | None = None, fastest: float | None = None,
           setup: str | None = None) -> tuple[str, list[Step]]:
    """The first bad commit and the steps that found it; progress on stderr."""
    good, bad = ab.resolve(repo, good), ab.resolve(repo, bad)
    commits = candidates(repo, good, bad)
    low, high = -1, len(commits) - 1  # commits[low] (or GOOD) is good, commits[high] bad
    steps: list[Step] = []
    while high - low > 1:
        middle = (low + high) // 2
        step = probe(repo, good, commits[middle], command, out / f"step-{len(steps) + 1:02d}-{commits[middle][:10]}",
                     options, max_rounds, reference, fastest, setup)
        steps.append(step)
        low, high = (low, middle) if step.decision == "bad" else (middle, high)
        logger.info(f"bisect step {len(steps)}: {step.commit[:10]} {step.decision} ({step.worse:+.1%} vs GOOD, "
                    f"{step.rounds} round{'s' * (step.rounds > 1)}"
                    f"{', undecided by the noise' if step.undecided else ''}); {high - low - 1} commits left")
    return commits[high], steps


def configure(parser: argparse.ArgumentParser) -> None:
    """``harness ab``'s arguments, GOOD and BAD for its two revisions; ``--rounds``: the most one step takes."""
    ab.configure(parser)
    parser.description = ("Find the first commit of a change between GOOD and BAD by interleaved A/B runs against "
                          "GOOD (harness ab's machinery), each step stopping as soon as the noise allows.")
    revisions = {"base": ("GOOD", "a revision without the change"), "candidate": ("BAD", "a revision with it")}
    for action in parser._actions:
        if action.dest in revisions:
            action.metavar, action.help = revisions[action.dest]


def command(args: argparse.Namespace) -> int:
    """Bisect; print the first bad commit. 0 found, 2 bad input or a failing command, 128+N on signal N."""
    cmd = ab.benchmark_command(args)
    if args.rounds < 2:
        raise HistoryError(f"--rounds {args.rounds}: give at least 2 (one ABBA pair)")
    fastest = compare.parse_fraction(args.fastest, "--fastest") if args.fastest else None
    repo = Path(git(args.repo, "rev-parse", "--show-toplevel"))
    out = (args.out or Path("runs") / f"bisect-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    try:
        with ab.interruptible():
            first, steps = bisect(repo, args.base, args.candidate, cmd, out, compare.options_from(args), args.rounds,
                                  args.reference, fastest, args.setup)
    except ab.Interrupted as exc:
        print(f"harness history bisect: interrupted by {exc}; worktrees removed", file=sys.stderr)
        return 128 + exc.signum
    subject = git(repo, "show", "-s", "--format=%s", first)
    runs = sum(2 * s.rounds for s in steps)
    print(f"first bad commit: {first} {subject} ({len(steps)} steps, {runs} runs)")
    out.mkdir(parents=True, exist_ok=True)
    (out / "bisect.json").write_text(json.dumps({
        "good": args.base, "bad": args.candidate, "first_bad": first, "subject": subject, "command": cmd,
        "threshold": compare.parse_fraction(args.threshold), "runs": runs,
        "steps": [asdict(s) for s in steps]}, indent=2) + "\n")
    return 0
