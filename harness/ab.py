"""``harness ab BASE CAND -- COMMAND``: interleaved A/B benchmark runs of two git revisions.

Both revisions are checked out side by side as detached git worktrees. COMMAND (a pytest-benchmark run
that writes its JSON to ``{json}``) runs in each worktree, alternately, in the ABBA order
(base candidate, candidate base, ...), so that both sides share the machine's load swings. Every
raw sample of a side (or, with ``--fastest``, each run's fastest share of them) is pooled and judged
by :mod:`harness.compare` (Mann-Whitney U + threshold).

Calibration: with ``--reference NAME`` every per-round time is divided by the median time of the
reference benchmark measured in the same run (file), which cancels a machine speed difference
that lasts over the run (not load switching within it: docs/ci.md). :func:`fixed_work` is a fixed
CPU workload to use as that reference, inside a suite (``benchmark(fixed_work)``) or, as
``harness:fixed-work``, timed by ``harness ab`` itself right before and after each run.
``harness compare A.json B.json --reference NAME`` uses the same code.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any

from harness import compare
from harness.compare import (
    BENCH_METRIC,
    CompareError,
    Options,
    Series,
    Side,
    calibrate,
    drop_reference,
    find_reference,
    shift,
)
from harness.exitcode import ExitCode, unforeseen_input
from harness.paths import AB_SIDE

logger = logging.getLogger(__name__)
#: Where each run writes its pytest-benchmark JSON, in COMMAND.
PLACEHOLDER = "{json}"
SIDES = ("base", "candidate")
#: The reference ``harness ab`` measures itself around each run (``--reference harness:fixed-work``).
FIXED_WORK_KEY = "harness:fixed-work"
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
GRACE_S = 5.0  # a signalled benchmark command's process group gets this long before SIGKILL
_BUFFER = bytes(range(256)) * 256  # 64 KiB


class AbError(CompareError):
    """``harness ab`` cannot go on (a bad revision, a failing command); exit status 2."""


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP arrived; the worktrees are removed before exiting with 128 + signum."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class Run:
    """One run of the benchmark command on one side."""

    round: int  # 1-based
    side: str  # "base" or "candidate"
    json: Path
    seconds: float
    fixed_work_s: list[float] = field(default_factory=list)  # harness:fixed-work, timed before and after


# ---------------------------------------------------------------- the fixed-work reference


def fixed_work(blocks: int = 64) -> str:
    """A fixed, deterministic CPU workload: ``blocks`` chained SHA-256 digests of a 64 KiB buffer (~2 ms)."""
    digest = b""
    for _ in range(blocks):
        digest = hashlib.sha256(digest + _BUFFER).digest()
    return digest.hex()


def time_fixed_work(repeats: int = 5) -> list[float]:
    """Seconds per :func:`fixed_work` call, ``repeats`` times."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fixed_work()
        times.append(time.perf_counter() - start)
    return times


# ---------------------------------------------------------------- the interleaved runs


def order(rounds: int) -> list[str]:
    """The sides in run order, ABBA-counterbalanced: base candidate, candidate base, base candidate, ..."""
    return [side for r in range(rounds) for side in (SIDES if r % 2 == 0 else SIDES[::-1])]


def git(repo: Path, *args: str) -> str:
    """``git -C repo ARGS``'s stdout; an :class:`AbError` with git's message when it fails."""
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if done.returncode:
        raise AbError(f"git {' '.join(args)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout.strip()


def resolve(repo: Path, revision: str) -> str:
    """The commit a revision names."""
    try:
        return git(repo, "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}")
    except AbError:
        raise AbError(f"{revision!r} is not a commit of the git repository {repo}") from None


@contextlib.contextmanager
def worktrees(repo: Path, commits: dict[str, str]) -> Iterator[dict[str, Path]]:
    """A detached worktree per side in a temporary folder; removed (``--force``) and pruned on exit."""
    folder = Path(tempfile.mkdtemp(prefix="harness-ab-"))
    paths: dict[str, Path] = {}
    try:
        for side, commit in commits.items():
            paths[side] = folder / side
            git(repo, "worktree", "add", "--detach", str(paths[side]), commit)
        yield paths
    finally:
        for path in paths.values():
            subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(path)], capture_output=True)
        subprocess.run(["git", "-C", str(repo), "worktree", "prune"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP raise :class:`Interrupted` (once: a second signal cannot cut the cleanup short)."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        for sig in SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        raise Interrupted(signum)

    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
    for sig, handler in previous.items():
        if handler != signal.SIG_IGN:
            signal.signal(sig, interrupt)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def side_env(worktree: Path, side: str) -> dict[str, str]:
    """This environment with the worktree first on the import path, and ``HARNESS_AB_SIDE``."""
    pythonpath = os.pathsep.join(filter(None, [str(worktree), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": pythonpath, AB_SIDE: side}


def execute(argv: Sequence[str] | str, worktree: Path, env: dict[str, str], log: Path) -> None:
    """Run a command (argv, or a shell string) in ``worktree``, output to ``log``; AbError unless it exits 0."""
    with log.open("w") as out:
        try:
            proc = subprocess.Popen(argv, cwd=worktree, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    shell=isinstance(argv, str), start_new_session=True)
        except OSError as exc:
            raise AbError(f"cannot start {argv!r}: {exc}") from None
        try:
            code = proc.wait()
        finally:
            if proc.poll() is None:  # interrupted: stop the command's whole process group first
                stop(proc)
    if code:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-15:])
        raise AbError(f"{argv if isinstance(argv, str) else ' '.join(argv)} exited with {code} in {worktree} "
                      f"(log: {log}):\n{tail}")


def stop(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM to the process group, SIGKILL after :data:`GRACE_S`."""
    for sig, wait in ((signal.SIGTERM, GRACE_S), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=wait)
            return


def run_rounds(command: Sequence[str], trees: dict[str, Path], rounds: int, out: Path) -> list[Run]:
    """The command ``rounds`` times per side in :func:`order`; progress and time left on stderr."""
    runs: list[Run] = []
    started = time.monotonic()
    for i, side in enumerate(order(rounds)):
        runs.append(run_once(command, side, i // 2 + 1, trees[side], out))
        if i % 2:
            logger.info(progress(runs, rounds, time.monotonic() - started))
    return runs


def run_once(command: Sequence[str], side: str, number: int, tree: Path, out: Path) -> Run:
    """One run of the command in ``tree``, writing ``OUT/runs/rNN-SIDE.json``; fixed work timed before and after."""
    path = (out / "runs" / f"r{number:02d}-{side}.json").resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    argv = [arg.replace(PLACEHOLDER, str(path)) for arg in command]
    fixed = time_fixed_work()
    start = time.perf_counter()
    execute(argv, tree, side_env(tree, side), path.with_suffix(".log"))
    seconds = time.perf_counter() - start
    if not path.is_file():
        raise AbError(f"{' '.join(argv)} wrote no {path}: does the command pass {PLACEHOLDER} to --benchmark-json?")
    return Run(number, side, path, seconds, fixed + time_fixed_work())


def progress(runs: Sequence[Run], rounds: int, elapsed: float) -> str:
    """``round 3/10: base 1.2 s, candidate 1.3 s; about 18 s left`` (from the measured rounds)."""
    done = runs[-1].round
    last = ", ".join(f"{r.side} {r.seconds:.1f} s" for r in runs[-2:])
    return f"round {done}/{rounds}: {last}; about {elapsed / done * (rounds - done):.0f} s left"


# ---------------------------------------------------------------- judging


def fixed_work_series(samples: list[float]) -> Series:
    """``harness:fixed-work`` as a series of per-call seconds."""
    return Series(FIXED_WORK_KEY, FIXED_WORK_KEY, BENCH_METRIC, samples, False)


def load_run(run: Run, reference: str | None, fastest: float | None = None) -> Side:
    """One run's file: its ``fastest`` fraction of samples per series; with ``reference``, calibrated by it and
    without it (``harness:fixed-work`` added first)."""
    side = compare.load_side(run.json)
    if reference == FIXED_WORK_KEY:
        side.series[FIXED_WORK_KEY] = fixed_work_series(run.fixed_work_s)
    if fastest:
        side = keep_fastest(side, fastest)
    return drop_reference(calibrate(side, reference), reference)[0] if reference else side


def keep_fastest(side: Side, fraction: float) -> Side:
    """Each series cut to its best ``fraction`` of samples (at least one): the lowest, or highest if better."""
    def best(s: Series) -> list[float]:
        return sorted(s.samples, reverse=s.higher_is_better)[: max(1, round(len(s.samples) * fraction))]

    return replace(side, series={key: replace(s, samples=best(s)) for key, s in side.series.items()})


def merge(parts: Sequence[Side], path: Path) -> Side:
    """All runs of one side as one :class:`Side`: the samples of each key pooled."""
    merged = Side(path, "pytest-benchmark", {})
    for part in parts:
        for key, s in part.series.items():
            if key in merged.series:
                merged.series[key].samples.extend(s.samples)
            else:
                merged.series[key] = replace(s, samples=list(s.samples))
        for name, values in part.env.items():
            merged.env.setdefault(name, set()).update(values)
        merged.absent.update(part.absent)
    return merged


def pooled(runs: Sequence[Run], out: Path, reference: str | None, fastest: float | None = None) -> dict[str, Side]:
    """Each side's runs pooled."""
    return {name: merge([load_run(r, reference, fastest) for r in runs if r.side == name], out / "runs" / name)
            for name in SIDES}


def run_reference(run: Run, name: str) -> Series:
    """The raw reference series of one run."""
    if name == FIXED_WORK_KEY:
        return fixed_work_series(run.fixed_work_s)
    return find_reference(compare.load_side(run.json), name)


def reference_pairs(runs: Sequence[Run], reference: str | None) -> list[tuple[Series, Series]]:
    """(base, candidate) raw samples, pooled, of ``reference`` and of ``harness:fixed-work``."""
    pairs = []
    for name in dict.fromkeys(n for n in (reference, FIXED_WORK_KEY) if n):
        base, cand = ([run_reference(r, name) for r in runs if r.side == side] for side in SIDES)
        pairs.append((pool(base), pool(cand)))
    return pairs


def pool(series: Sequence[Series]) -> Series:
    """One series holding the samples of all."""
    return replace(series[0], samples=[v for s in series for v in s.samples])


def verdicts(runs: Sequence[Run], out: Path, options: Options, reference: str | None,
             fastest: float | None = None) -> dict[str, Any]:
    """Judge the pooled sides, print the table and the references' shifts; the ``ab.json`` summary."""
    sides = pooled(runs, out, reference, fastest)
    rows = compare.compare_sides(sides["base"], sides["candidate"], options)
    print(compare.table(rows))
    print("\n" + ", ".join(f"{n} {v}" for v, n in compare.summary(rows).items())
          + f" (threshold {options.threshold:.0%}, alpha {options.alpha:g}, Mann-Whitney U on interleaved runs)")
    pairs = reference_pairs(runs, reference)
    for i, (base, cand) in enumerate(pairs):
        used = "calibrated by it" if reference and i == 0 else "timed around each run: the load each side saw"
        print(f"{shift(base, cand)}; {used}")
    report = compare.to_json(rows, sides["base"], sides["candidate"], options)
    report["references"] = [{"key": b.key, "baseline_median_s": statistics.median(b.samples),
                             "candidate_median_s": statistics.median(c.samples)} for b, c in pairs]
    return report


# ---------------------------------------------------------------- CLI


def add_options(parser: argparse.ArgumentParser) -> None:
    """The options (also accepted between CAND and ``--``)."""
    parser.add_argument("--rounds", type=int, default=10, help="runs per side, interleaved ABBA (default 10)")
    parser.add_argument("--out", type=Path, help="the runs' JSON files, logs and ab.json (default runs/ab-TIMESTAMP)")
    parser.add_argument("--repo", type=Path, default=Path("."), help="the git repository (default: the current one)")
    parser.add_argument("--setup", metavar="SHELL", help="run once in each worktree before the rounds, e.g. a build")
    parser.add_argument("--reference", metavar="NAME",
                        help=f"calibrate by this benchmark (fullname, test name or glob); {FIXED_WORK_KEY}: "
                        "a fixed SHA-256 workload timed by harness ab around each run")
    parser.add_argument("--fastest", metavar="PCT",
                        help="judge only the fastest PCT (e.g. 25%%) of each run's samples per benchmark: for "
                        "CPU-bound code, which other load can only slow down")
    parser.add_argument("--threshold", default="10%", help="minimum change of the median (default 10%%)")
    parser.add_argument("--threshold-for", action="append", default=[], metavar="PATTERN=PCT",
                        help="threshold for matching benchmarks (repeatable, last match wins)")
    parser.add_argument("--alpha", type=float, default=0.05, help="Mann-Whitney U significance level (default 0.05)")
    parser.add_argument("--select", action="append", default=[], metavar="PATTERN",
                        help="judge only matching benchmarks (glob; repeatable)")
    parser.add_argument("--higher-is-better", action="append", dest="directions", type=lambda p: (p, True),
                        metavar="PATTERN", help="matching metrics are higher-is-better (repeatable)")
    parser.add_argument("--lower-is-better", action="append", dest="directions", type=lambda p: (p, False),
                        metavar="PATTERN", help="matching metrics are lower-is-better (repeatable)")
    parser.add_argument("--fail-on-missing", action="store_true", help="exit 1 also when a benchmark is missing")


def configure(parser: argparse.ArgumentParser) -> None:
    """Add ``harness ab``'s arguments."""
    parser.description = ("Benchmark two git revisions in worktrees, interleaved ABBA, and compare them as harness "
                          "compare does. Exit status: 0 ok, 1 a regression, 2 bad input.")
    add_options(parser)
    parser.add_argument("base", help="baseline revision (a branch, tag or commit)")
    parser.add_argument("candidate", help="candidate revision")
    parser.add_argument("benchmark", nargs=argparse.REMAINDER, metavar="-- COMMAND",
                        help=f"-- then the benchmark command, run in each worktree; {PLACEHOLDER} is its JSON path")
    parser.set_defaults(metric=None, keep_warmup=False, allow_different=[])  # harness result options: not used here


def benchmark_command(args: argparse.Namespace) -> list[str]:
    """The command after ``--`` (options given between CAND and ``--`` are parsed into ``args``)."""
    command = list(args.benchmark)
    if command and command[0].startswith("-"):  # options after the revisions: argparse left them, and --, here
        if "--" not in command:
            raise AbError("put the benchmark command after --: harness ab BASE CAND [options] -- COMMAND")
        split = command.index("--")
        options = argparse.ArgumentParser(prog="harness ab", add_help=False)
        add_options(options)
        options.parse_args(command[:split], namespace=args)
        command = command[split + 1:]
    if not any(PLACEHOLDER in arg for arg in command):
        raise AbError(f"the benchmark command must write its JSON to {PLACEHOLDER}, e.g. "
                      f"harness ab main HEAD -- pytest benchmarks --benchmark-json {PLACEHOLDER}")
    return command


def command(args: argparse.Namespace) -> int:
    """Run the interleaved rounds and judge them: 0 ok, 1 regression, 2 bad input, 128+N on signal N."""
    try:
        with interruptible():
            return _command(args)
    except Interrupted as exc:
        print(f"harness ab: interrupted by {exc}; worktrees removed", file=sys.stderr)
        return ExitCode.signalled(exc.signum)
    except (CompareError, OSError) as exc:
        print(f"harness ab: error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except Exception as exc:  # an input nobody foresaw is still an input error, as in harness compare
        return unforeseen_input("harness ab", exc, args)


def _command(args: argparse.Namespace) -> int:
    cmd = benchmark_command(args)
    if args.rounds < 2:
        raise AbError(f"--rounds {args.rounds}: give at least 2 (one ABBA pair)")
    options = compare.options_from(args)
    fastest = compare.parse_fraction(args.fastest, "--fastest") if args.fastest else None
    if fastest is not None and not 0 < fastest <= 1:
        raise AbError(f"--fastest {args.fastest}: give a share of the samples in (0%, 100%]")
    repo = Path(git(args.repo, "rev-parse", "--show-toplevel"))
    commits = {"base": resolve(repo, args.base), "candidate": resolve(repo, args.candidate)}
    out = (args.out or Path("runs") / f"ab-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    if (out / "runs").exists():
        raise AbError(f"{out} already holds runs: choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    logger.info(f"ab: base {args.base} ({commits['base'][:10]}), candidate {args.candidate} "
                f"({commits['candidate'][:10]}); {args.rounds} rounds, order base candidate candidate base ...; "
                f"results in {out}")
    with worktrees(repo, commits) as trees:
        if args.setup:
            for side, tree in trees.items():
                execute(args.setup, tree, side_env(tree, side), out / f"setup-{side}.log")
        runs = run_rounds(cmd, trees, args.rounds, out)
    report = verdicts(runs, out, options, args.reference, fastest)
    revisions = {"base": [args.base, commits["base"]], "candidate": [args.candidate, commits["candidate"]]}
    report |= {"revisions": revisions,
               "command": cmd, "rounds": args.rounds, "fastest": fastest,
               "runs": [asdict(r) | {"json": str(r.json)} for r in runs]}
    (out / "ab.json").write_text(json.dumps(report, indent=2) + "\n")
    counts = report["summary"]
    failed = counts["regressed"] or (args.fail_on_missing and counts["missing"])
    return ExitCode.FAILED if failed else ExitCode.OK
