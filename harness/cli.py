"""The ``harness`` command line. Only the subcommand being run is imported (``harness --help`` imports none of
pandas, scipy or torch); every command exits with a :class:`harness.exitcode.ExitCode`."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from contextlib import redirect_stdout
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness import __version__
from harness.exitcode import ExitCode
from harness.text import plural

if TYPE_CHECKING:
    from harness.api import CellSpec
    from harness.plugins import Manager
    from harness.race import RaceSettings
    from harness.suite import Suite

# Subcommands implemented in their own modules as ``configure(parser)`` + ``command(args) -> int``.
COMMANDS = {
    "report": ("harness.report", "build reports from result directories (several machines merge)"),
    "compare": ("harness.compare", "compare a baseline and a candidate; exit 1 on a regression"),
    "ab": ("harness.ab", "benchmark two git revisions interleaved (ABBA) and compare; exit 1 on a regression"),
    "env": ("harness.envcheck", "this machine's fingerprint and which cells can run here"),
    "envs": ("harness.envs.cli", "list, build or remove the environments cells run in"),
    "history": ("harness.history.cli", "benchmark results per commit: record, change points, page, bisect"),
    "data": ("harness.prepare", "data preparation: harness data prepare flowers ..."),
}
log = logging.getLogger("harness")


def fraction(text: str) -> float:
    """An accuracy in (0, 1], checked before any cell runs."""
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text}: give a fraction in (0, 1], e.g. 0.6")
    return value


def seconds(text: str) -> float:
    """A positive number of seconds."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text}: give a positive number of seconds")
    return value


def count(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``minimum`` (0 is an error where it would mean 'none')."""
    def parse(text: str) -> int:
        from harness.suite import check_count

        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        try:
            return check_count(value, minimum)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return parse


def configure_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("--suite", required=True, help="a registered suite name or a path to a suite TOML file")
    p.add_argument("--data", type=Path,
                   help="prepared train/+validation/ folders or raw class folders (required unless no loader reads it)")
    p.add_argument("--out", type=Path, help="output directory (default: runs/SUITE-TIMESTAMP)")
    p.add_argument("--epochs", type=count(1), help="override the suite's epoch count")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="override the suite's device")
    p.add_argument("--seed", type=count(0), help="override the suite's seed")
    p.add_argument("--repeat", type=count(1), metavar="N",
                   help="run each cell N times, seeds seed, seed+1, ... (ids ID, ID-r2, ...); the report aggregates")
    p.add_argument("--nproc", type=count(1), help="processes (DDP ranks) per cell")
    p.add_argument("--only", action="append", default=[], metavar="KEY=VALUE",
                   help="run only matching cells (id, model, loader, backend, precision, recipe, environment); "
                        "repeatable: a cell matches every key given and one of the values given for a key")
    p.add_argument("--resume", action="store_true", help="continue OUT: keep finished cells, resume from checkpoints")
    p.add_argument("--no-build", action="store_true",
                   help="use only environments already built; skip the cells of the others (harness envs build)")
    p.add_argument("--rerun-changed", action="store_true",
                   help="with --resume: move aside (cells/ID.old-TIMESTAMP) and rerun cells whose settings changed")
    p.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=None,
                   help="write TensorBoard scalars per epoch")
    p.add_argument("--target-acc", type=fraction, help="validation accuracy for time-to-accuracy, e.g. 0.6")
    p.add_argument("--cell-timeout", type=seconds, metavar="SECONDS",
                   help="kill a cell running longer and record it failed (overrides the suite's timeout_s)")
    p.add_argument("--allow-emulated", action="store_true", default=None,
                   help="also run precisions this device only emulates (bf16 on AVX2 CPUs, ...), labelled 'emulated'")
    p.add_argument("--json", action="store_true",
                   help="print the run's summary as JSON on stdout (cells' output and progress go to stderr)")
    strategy = p.add_mutually_exclusive_group()
    strategy.add_argument("--race", action="store_true",
                          help="race the cells: after each rung, stop those that another beats with 95 %% confidence "
                               "(docs/race.md); the suite's [race] settings")
    strategy.add_argument("--full-matrix", action="store_true",
                          help="run every cell to the end, also where the suite says strategy = \"race\"")
    p.add_argument("--keep", action="append", default=[], metavar="KEY=VALUE",
                   help="in a race: run matching cells to the end whatever the race shows (filters as --only)")
    add_executors(p)


def add_executors(p: argparse.ArgumentParser) -> None:
    """``--executor`` and each registered executor's own options (refused with another executor)."""
    from harness.plugins import get_manager

    registered = get_manager().executors()
    p.add_argument("--executor", choices=sorted(registered), default="local",
                   help="where cells run: " + "; ".join(f"{name}: {reg.impl.help}" for name, reg in
                                                       sorted(registered.items())))
    options = {}
    for name, reg in sorted(registered.items()):
        group = p.add_argument_group(f"--executor {name}")
        reg.impl.configure(group)
        options[name] = list(group._group_actions)
    p.set_defaults(executor_options=options)


def misplaced_options(args: argparse.Namespace) -> None:
    """Refuse options of an executor other than the chosen one."""
    from harness.suite import SuiteError

    for name, actions in args.executor_options.items():
        given = [a.option_strings[0] for a in actions if name != args.executor and getattr(args, a.dest) != a.default]
        if given:
            raise SuiteError(f"{', '.join(given)} go with --executor {name}")


def check_data(data: Path | None, cells: list[CellSpec], manager: Manager) -> None:
    """Fail before any cell starts if ``--data`` is missing, empty, or absent while some loader reads it."""
    from harness.datasets import discover
    from harness.suite import SuiteError

    if data is not None:
        discover(data)
        return
    loaders = manager.loaders()
    readers = sorted({c.loader_plugin for c in cells if getattr(loaders[c.loader_plugin].impl, "reads_data", True)})
    if readers:
        raise SuiteError(f"--data is required: the cells' loaders read photos ({', '.join(readers)})")


def chosen_race(args: argparse.Namespace, suite: Suite, out: Path) -> RaceSettings | None:
    """The race to run, if any: a resumed race goes on as it began; else ``--race`` or the suite's ``strategy``,
    unless ``--full-matrix``; ``--keep`` adds kept cells."""
    from harness.race import RaceSettings
    from harness.suite import SuiteError

    recorded = RaceSettings.recorded(out) if args.resume else None
    race = None if args.full_matrix else recorded or (suite.race if args.race or suite.strategy == "race" else None)
    if args.keep and race is None:
        raise SuiteError("--keep goes with a race: --race, or a suite with strategy = \"race\"")
    return replace(race, keep=(*race.keep, *args.keep)) if race and args.keep else race


def cmd_run(args: argparse.Namespace) -> int:
    """``harness run``; with ``--json`` everything but the summary goes to stderr."""
    if not args.json:
        return run(args)
    with redirect_stdout(sys.stderr):
        code = run(args)
    print(json.dumps(args.summary, indent=2, default=str))
    return code


def run(args: argparse.Namespace) -> int:
    from harness import report
    from harness.datasets import check_apart
    from harness.plugins import get_manager, suite_path
    from harness.runner import Interrupted, OutputExists, executor_named, run_suite
    from harness.store import OutputLock
    from harness.suite import SuiteError, expand, select, shared_names

    misplaced_options(args)
    manager = get_manager()
    suite = expand(suite_path(args.suite), manager, data=args.data and args.data.resolve(), epochs=args.epochs,
                   device=args.device, seed=args.seed, repeat=args.repeat, nproc=args.nproc,
                   tensorboard=args.tensorboard, allow_emulated=args.allow_emulated, timeout_s=args.cell_timeout,
                   target_acc=args.target_acc)
    cells = select(suite.cells, args.only)
    if not cells:
        raise SuiteError(f"--only {' '.join(args.only)}: no cell of suite {suite.name!r} matches")
    out = args.out or Path("runs") / f"{suite.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.data is not None:
        check_apart(args.data, out)
    check_data(args.data, cells, manager)
    for line in shared_names(cells, manager):  # before any cell starts: who builds a name others know too
        log.warning(line)
    args.build = not args.no_build
    args.hint = shlex.join(["harness", "envs", "build", "--suite", args.suite, *(f"--only={o}" for o in args.only)])
    executor = executor_named(manager, args.executor, args)  # before anything is written: an unusable one exits 2
    race = chosen_race(args, suite, out)
    cells = executor.expand(cells)
    if race and race.keep:  # a bad filter exits 2 before anything runs
        race = replace(race, kept=frozenset(c.id for c in select(cells, list(race.keep))))
    _lock = OutputLock(out, shlex.join(sys.argv))  # held until cmd_run returns; a second run on OUT exits 2
    interrupted = None
    try:
        outcomes = run_suite(cells, out, manager, resume=args.resume, build=args.build, hint=args.hint,
                             executor=executor, rerun_changed=args.rerun_changed, race=race)
    except OutputExists as exc:
        print(f"harness: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except Interrupted as exc:
        interrupted, outcomes = exc, exc.outcomes
        print(f"\nharness: interrupted by {exc}; finished cells are kept. Continue with --resume --out {out}",
              file=sys.stderr)
    counts = {s: sum(o.status == s for o in outcomes)
              for s in ("ok", "skipped", "failed", "interrupted", "eliminated", "paused")}
    args.summary = {"out": str(out), "cells": len(outcomes), **counts,
                    "interrupted_by": interrupted and str(interrupted),
                    "outcomes": [{"id": o.cell.id, "status": o.status, "reason": o.reason} for o in outcomes]}
    print(f"{plural(len(outcomes), 'cell')}: " + ", ".join(f"{n} {s}" for s, n in counts.items()
                                                 if n or s not in ("eliminated", "paused")))
    if outcomes:  # none when interrupted before the first cell
        try:
            table = report.write_report([out], out, target_acc=args.target_acc)
        except OSError as exc:  # e.g. a full disk: the cells' results are written, the report can be made later
            print(f"harness: could not write the report into {out}: {exc}; once fixed: harness report {out} "
                  f"--out {out}", file=sys.stderr)
            return ExitCode.FAILED
        print(report.console_table(table))
        print(f"results and report in {out}")
    if interrupted:
        return ExitCode.signalled(interrupted.signum)  # what a shell reports for a process the signal killed
    return ExitCode.FAILED if counts["failed"] else ExitCode.OK


def configure_listing(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output on stdout")


def cmd_suites(args: argparse.Namespace) -> int:
    from harness.plugins import PluginError, get_manager
    from harness.suite import SuiteError, expand

    manager = get_manager()
    rows: list[dict[str, Any]] = []
    for name, registration in sorted(manager.suites().items()):
        try:
            suite = expand(Path(registration.impl), manager)
            rows.append({"name": name, "cells": len(suite.cells), "description": suite.description, "error": None})
        except (SuiteError, PluginError) as exc:
            rows.append({"name": name, "cells": None, "description": None, "error": str(exc)})
    if args.json:
        print(json.dumps(rows, indent=2))
    for row in [] if args.json else rows:
        print(f"{row['name']:24} invalid: {row['error']}" if row["error"] else
              f"{row['name']:24} {plural(row['cells'], 'cell'):>10}  {row['description']}")
    return ExitCode.OK


def cmd_plugins(args: argparse.Namespace) -> int:
    from harness.plugins import KINDS, LABELS, get_manager
    from harness.suite import registered_models

    manager = get_manager()
    environment = manager.environment_by_plugin()
    provided: dict[str, list[str]] = {}
    for kind in KINDS:
        for name, reg in manager.registries[kind].items():
            provided.setdefault(reg.plugin, []).append(f"{LABELS[kind]} {name}")
    shadowing = manager.shadowing(registered_models(manager))
    rows: list[dict[str, Any]] = [
        {"name": info.name, "distribution": info.distribution, "version": info.version or None, "error": info.error,
         "hooks": info.hooks, "provides": provided.get(info.name, []), "environment": environment.get(info.name) or {},
         "warnings": info.warnings, "shadows": shadowing.get(info.name, [])} for info in manager.plugins]
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return ExitCode.OK
    for row in rows:
        version = f" {row['version']}" if row["version"] else ""
        if row["error"]:
            print(f"{row['name']:14} {row['distribution']}{version}  BROKEN: {row['error']}")
            continue
        print(f"{row['name']:14} {row['distribution']}{version}")
        print(f"{'':14} hooks: {', '.join(row['hooks'])}")
        if row["provides"]:
            print(f"{'':14} provides: {', '.join(row['provides'])}")
        if row["environment"]:
            print(f"{'':14} environment: {', '.join(f'{k}={v}' for k, v in row['environment'].items())}")
        for warning in row["warnings"]:
            print(f"{'':14} warning: {warning}")
        if names := row["shadows"]:
            shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
            print(f"{'':14} warning: its model families know {len(names)} name(s) another family knows too: {shown}; "
                  'a built-in family keeps such a name unless a suite pins another ([models.NAME] family = "F")')
    return ExitCode.OK


def configure_data(p: argparse.ArgumentParser) -> None:
    data = p.add_subparsers(dest="data_command", required=True)
    importlib.import_module("harness.prepare").configure(data.add_parser("prepare", help="download, verify, split"))


#: The subcommands of this module: configure, handler, help.
BUILTIN: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]] = {
    "run": (configure_run, cmd_run, "run every cell of a suite"),
    "suites": (configure_listing, cmd_suites, "list suites with their cell counts"),
    "plugins": (configure_listing, cmd_plugins, "list plugins, their distributions, versions and hooks"),
}


def versions() -> str:
    """``harness --version``: the harness, torch, and every plugin distribution, from package metadata (nothing is
    imported)."""
    from importlib import metadata

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    plugins = sorted({f"{ep.dist.name} {ep.dist.version}" for ep in metadata.entry_points(group="harness")
                      if ep.dist is not None and ep.dist.name != "harness"})
    return "\n".join([f"harness {__version__} (Python {sys.version.split()[0]})", f"torch {version('torch')}",
                      f"plugins: {', '.join(plugins) or 'built-in only'}"])


class Versions(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        print(versions())
        parser.exit()


def parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The command line; only the subcommand ``argv`` names is configured (its module imported)."""
    p = argparse.ArgumentParser(prog="harness", description="Benchmark image-classifier training, cell by cell.",
                                epilog="exit codes: 0 ok, 1 a cell failed / a regression, 2 bad input, 3 internal "
                                       "error, 130 / 143 / 129 stopped by SIGINT / SIGTERM / SIGHUP")
    p.add_argument("--version", action=Versions, nargs=0, help="show the harness's, torch's and plugins' versions")
    p.add_argument("--traceback", action="store_true", help="show the stack of an internal error")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more messages (debug)")
    p.add_argument("-q", "--quiet", action="count", default=0, dest="quietness",
                   help="fewer messages (warnings and errors only)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = next((arg for arg in argv if not arg.startswith("-")), None)
    for name, (configure, _, help_text) in BUILTIN.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            configure(command)
    for name, (module, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            (configure_data if name == "data" else importlib.import_module(module).configure)(command)
    return p


class Formatter(logging.Formatter):
    """``harness: warning: ...`` for warnings and errors, ``harness: ...`` for the rest."""

    def format(self, record: logging.LogRecord) -> str:
        level = f"{record.levelname.lower()}: " if record.levelno >= logging.WARNING else ""
        return f"harness: {level}{record.getMessage()}"


def configure_logging(verbosity: int) -> None:
    """Messages of the ``harness`` logger on stderr: warnings and up with ``-q``, info by default, debug with
    ``-v``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(Formatter())
    log.handlers[:] = [handler]
    log.setLevel(logging.WARNING if verbosity < 0 else logging.INFO if verbosity == 0 else logging.DEBUG)
    log.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser(argv).parse_args(argv)
    configure_logging(args.verbose - args.quietness)
    from harness.api import ExecutorError
    from harness.datasets import DataError
    from harness.plugins import PluginError
    from harness.results import StoreError, show_warnings_briefly
    from harness.suite import SuiteError

    show_warnings_briefly()
    try:
        if args.command in BUILTIN:
            return int(BUILTIN[args.command][1](args))
        return int(importlib.import_module(COMMANDS[args.command][0]).command(args))
    except (SuiteError, DataError, PluginError, StoreError, ExecutorError) as exc:
        print(f"harness: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except OSError as exc:  # a full disk, a read-only or vanished folder: one line, not a traceback
        print(f"harness: {exc}", file=sys.stderr)
        return ExitCode.FAILED
    except Exception as exc:
        if args.traceback:
            traceback.print_exc()
        print(f"harness: internal error: {type(exc).__name__}: {exc}" + (
            "" if args.traceback else " (harness --traceback ... shows where)"), file=sys.stderr)
        return ExitCode.INTERNAL


if __name__ == "__main__":
    sys.exit(main())
