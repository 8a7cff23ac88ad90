"""The ``harness`` command line."""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

from harness.api import CellSpec, ExecutorError
from harness.datasets import DataError, discover
from harness.plugins import LABELS, Manager, PluginError, get_manager, suite_path
from harness.store import OutputLock, StoreError, show_warnings_briefly
from harness.suite import SuiteError, check_count

# Subcommands implemented in their own modules as ``configure(parser)`` + ``command(args) -> int``.
COMMANDS = {
    "report": ("harness.report", "build reports from result directories (several machines merge)"),
    "compare": ("harness.compare", "compare a baseline and a candidate; exit 1 on a regression"),
    "ab": ("harness.ab", "benchmark two git revisions interleaved (ABBA) and compare; exit 1 on a regression"),
    "env": ("harness.envcheck", "this machine's fingerprint and which cells can run here"),
    "envs": ("harness.environments", "list, build or remove the environments cells run in"),
}


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
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        try:
            return check_count(value, minimum)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return parse


def add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run every cell of a suite")
    p.add_argument("--suite", required=True, help="a registered suite name or a path to a suite TOML file")
    p.add_argument("--data", type=Path,
                   help="prepared train/+validation/ folders or raw class folders (required unless no loader reads it)")
    p.add_argument("--out", type=Path, help="output directory (default: runs/SUITE-TIMESTAMP)")
    p.add_argument("--epochs", type=count(1), help="override the suite's epoch count")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="override the suite's device")
    p.add_argument("--seed", type=count(0), help="override the suite's seed")
    p.add_argument("--repeat", type=count(1), metavar="N",
                   help="run each cell N times, seeds seed, seed+1, ... (ids ID, ID-r2, ...); the report aggregates")
    p.add_argument("--nproc", type=count(1), help="processes per cell (torchrun when > 1)")
    p.add_argument("--only", action="append", default=[], metavar="KEY=VALUE",
                   help="run only matching cells (id, model, loader, backend, precision, recipe, environment); "
                        "repeatable")
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
    add_executors(p)


def add_executors(p: argparse.ArgumentParser) -> None:
    """``--executor`` and each registered executor's own options (refused with another executor)."""
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
    for name, actions in args.executor_options.items():
        given = [a.option_strings[0] for a in actions if name != args.executor and getattr(args, a.dest) != a.default]
        if given:
            raise SuiteError(f"{', '.join(given)} go with --executor {name}")


def check_data(data: Path | None, cells: list[CellSpec], manager: Manager) -> None:
    """Fail before any cell starts if ``--data`` is missing, empty, or absent while some loader reads it."""
    if data is not None:
        discover(data)
        return
    loaders = manager.loaders()
    readers = sorted({c.loader_plugin for c in cells if getattr(loaders[c.loader_plugin].impl, "reads_data", True)})
    if readers:
        raise SuiteError(f"--data is required: the cells' loaders read photos ({', '.join(readers)})")


def cmd_run(args: argparse.Namespace) -> int:
    from harness import report
    from harness.runner import Interrupted, OutputExists, executor_named, run_suite
    from harness.suite import expand, select

    misplaced_options(args)
    manager = get_manager()
    suite = expand(suite_path(args.suite), manager, data=args.data and args.data.resolve(), epochs=args.epochs,
                   device=args.device, seed=args.seed, repeat=args.repeat, nproc=args.nproc,
                   tensorboard=args.tensorboard, allow_emulated=args.allow_emulated, timeout_s=args.cell_timeout,
                   target_acc=args.target_acc)
    cells = select(suite.cells, args.only)
    if not cells:
        raise SuiteError(f"--only {' '.join(args.only)}: no cell of suite {suite.name!r} matches")
    check_data(args.data, cells, manager)
    args.build = not args.no_build
    args.hint = shlex.join(["harness", "envs", "build", "--suite", args.suite, *(f"--only={o}" for o in args.only)])
    executor = executor_named(manager, args.executor, args)  # before anything is written: an unusable one exits 2
    cells = executor.expand(cells)
    out = args.out or Path("runs") / f"{suite.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    _lock = OutputLock(out, shlex.join(sys.argv))  # held until cmd_run returns; a second run on OUT exits 2
    interrupted = None
    try:
        outcomes = run_suite(cells, out, manager, resume=args.resume, build=args.build, hint=args.hint,
                             executor=executor, rerun_changed=args.rerun_changed)
    except OutputExists as exc:
        print(f"harness: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        interrupted, outcomes = exc, exc.outcomes
        print(f"\nharness: interrupted by {exc}; finished cells are kept. Continue with --resume --out {out}",
              file=sys.stderr)
    counts = {s: sum(o.status == s for o in outcomes) for s in ("ok", "skipped", "failed", "interrupted")}
    print(f"{len(outcomes)} cells: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    if outcomes:  # none when interrupted before the first cell
        try:
            table = report.write_report([out], out, target_acc=args.target_acc)
        except OSError as exc:  # e.g. a full disk: the cells' results are written, the report can be made later
            print(f"harness: could not write the report into {out}: {exc}; once fixed: harness report {out} "
                  f"--out {out}", file=sys.stderr)
            return 1
        print(report.console_table(table))
        print(f"results and report in {out}")
    if interrupted:
        return 128 + interrupted.signum  # what a shell reports for a process the signal killed
    return 1 if counts["failed"] else 0


def cmd_suites(args: argparse.Namespace) -> int:
    from harness.suite import expand

    manager = get_manager()
    for name, registration in sorted(manager.suites().items()):
        try:
            suite = expand(Path(registration.impl), manager)
            print(f"{name:24} {len(suite.cells):4} cells  {suite.description}")
        except (SuiteError, PluginError) as exc:
            print(f"{name:24} invalid: {exc}")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    manager = get_manager()
    environment = manager.environment_by_plugin()
    provided: dict[str, list[str]] = {}
    for kind in ("loaders", "models", "backends", "suites"):
        for name, reg in manager.registries[kind].items():
            provided.setdefault(reg.plugin, []).append(f"{LABELS[kind]} {name}")
    for info in manager.plugins:
        version = f" {info.version}" if info.version else ""
        if info.error:
            print(f"{info.name:14} {info.distribution}{version}  BROKEN: {info.error}")
            continue
        print(f"{info.name:14} {info.distribution}{version}")
        print(f"{'':14} hooks: {', '.join(info.hooks)}")
        if provided.get(info.name):
            print(f"{'':14} provides: {', '.join(provided[info.name])}")
        if fields := environment.get(info.name):
            print(f"{'':14} environment: {', '.join(f'{k}={v}' for k, v in fields.items())}")
        for warning in info.warnings:
            print(f"{'':14} warning: {warning}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="harness", description="Benchmark image-classifier training, cell by cell.")
    sub = p.add_subparsers(dest="command", required=True)
    add_run(sub)
    sub.add_parser("suites", help="list suites with their cell counts")
    sub.add_parser("plugins", help="list plugins, their distributions, versions and hooks")
    for name, (module, help_text) in COMMANDS.items():
        importlib.import_module(module).configure(sub.add_parser(name, help=help_text))
    data = sub.add_parser("data", help="data preparation").add_subparsers(dest="data_command", required=True)
    importlib.import_module("harness.prepare").configure(data.add_parser("prepare", help="download, verify, split"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    show_warnings_briefly()
    handlers = {"run": cmd_run, "suites": cmd_suites, "plugins": cmd_plugins}
    try:
        if args.command in handlers:
            return handlers[args.command](args)
        module = "harness.prepare" if args.command == "data" else COMMANDS[args.command][0]
        return importlib.import_module(module).command(args)
    except (SuiteError, DataError, PluginError, StoreError, ExecutorError) as exc:
        print(f"harness: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, a read-only or vanished folder: one line, not a traceback
        print(f"harness: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
