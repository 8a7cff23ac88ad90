"""The ``harness`` command line."""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

from harness.api import CellSpec
from harness.datasets import DataError, discover
from harness.plugins import Manager, PluginError, get_manager, suite_path
from harness.suite import SuiteError

# Subcommands implemented in their own modules as ``configure(parser)`` + ``command(args) -> int``.
COMMANDS = {
    "report": ("harness.report", "build reports from result directories (several machines merge)"),
    "compare": ("harness.compare", "compare a baseline and a candidate; exit 1 on a regression"),
    "env": ("harness.envcheck", "this machine's fingerprint and which cells can run here"),
}


def fraction(text: str) -> float:
    """An accuracy in (0, 1], checked before any cell runs."""
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text}: give a fraction in (0, 1], e.g. 0.6")
    return value


def add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run every cell of a suite")
    p.add_argument("--suite", required=True, help="a registered suite name or a path to a suite TOML file")
    p.add_argument("--data", type=Path,
                   help="prepared train/+validation/ folders or raw class folders (required unless no loader reads it)")
    p.add_argument("--out", type=Path, help="output directory (default: runs/SUITE-TIMESTAMP)")
    p.add_argument("--epochs", type=int, help="override the suite's epoch count")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="override the suite's device")
    p.add_argument("--seed", type=int, help="override the suite's seed")
    p.add_argument("--nproc", type=int, help="processes per cell (torchrun when > 1)")
    p.add_argument("--only", action="append", default=[], metavar="KEY=VALUE",
                   help="run only matching cells (id, model, loader, backend, precision); repeatable")
    p.add_argument("--resume", action="store_true", help="continue OUT: keep finished cells, resume from checkpoints")
    p.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=None,
                   help="write TensorBoard scalars per epoch")
    p.add_argument("--target-acc", type=fraction, help="validation accuracy for time-to-accuracy, e.g. 0.6")


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
    from harness.runner import OutputExists, run_suite
    from harness.suite import expand, select

    manager = get_manager()
    suite = expand(suite_path(args.suite), manager, data=args.data and args.data.resolve(), epochs=args.epochs,
                   device=args.device, seed=args.seed, nproc=args.nproc, tensorboard=args.tensorboard)
    cells = select(suite.cells, args.only)
    if not cells:
        raise SuiteError(f"--only {' '.join(args.only)}: no cell of suite {suite.name!r} matches")
    check_data(args.data, cells, manager)
    out = args.out or Path("runs") / f"{suite.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        outcomes = run_suite(cells, out, manager, resume=args.resume)
    except OutputExists as exc:
        print(f"harness: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\nharness: interrupted; finished cells are kept. Continue with --resume --out {out}", file=sys.stderr)
        return 130
    counts = {s: sum(o.status == s for o in outcomes) for s in ("ok", "skipped", "failed")}
    print(f"{len(outcomes)} cells: {counts['ok']} ok, {counts['skipped']} skipped, {counts['failed']} failed")
    table = report.write_report([out], out, target_acc=args.target_acc)
    print(report.console_table(table))
    print(f"results and report in {out}")
    return 1 if counts["failed"] else 0


def cmd_suites(args: argparse.Namespace) -> int:
    from harness.suite import expand

    manager = get_manager()
    for name, registration in sorted(manager.suites().items()):
        try:
            suite = expand(Path(registration.impl), manager)
            print(f"{name:24} {len(suite.cells):4} cells  {suite.description}")
        except SuiteError as exc:
            print(f"{name:24} invalid: {exc}")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    manager = get_manager()
    provided: dict[str, list[str]] = {}
    for kind in ("loaders", "models", "backends", "suites"):
        for name, reg in manager.registries[kind].items():
            provided.setdefault(reg.plugin, []).append(f"{kind[:-1]} {name}")
    for info in manager.plugins:
        version = f" {info.version}" if info.version else ""
        if info.error:
            print(f"{info.name:14} {info.distribution}{version}  BROKEN: {info.error}")
            continue
        print(f"{info.name:14} {info.distribution}{version}")
        print(f"{'':14} hooks: {', '.join(info.hooks)}")
        if provided.get(info.name):
            print(f"{'':14} provides: {', '.join(provided[info.name])}")
    extra = {k: v for fields in manager.environment() for k, v in (fields or {}).items()}
    for key, value in extra.items():
        print(f"{key}: {value}")
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
    handlers = {"run": cmd_run, "suites": cmd_suites, "plugins": cmd_plugins}
    try:
        if args.command in handlers:
            return handlers[args.command](args)
        module = "harness.prepare" if args.command == "data" else COMMANDS[args.command][0]
        return importlib.import_module(module).command(args)
    except (SuiteError, DataError, PluginError) as exc:
        print(f"harness: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
