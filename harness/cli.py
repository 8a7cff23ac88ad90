"""The ``harness`` command line."""

from __future__ import annotations

import argparse
import importlib
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

from harness.api import CellSpec
from harness.datasets import DataError, check_apart, discover
from harness.plugins import LABELS, Manager, PluginError, get_manager, suite_path
from harness.results import show_warnings_briefly
from harness.store import CellStore, OutputLock, StoreError
from harness.suite import SuiteError, check_count

# Subcommands implemented in their own modules as ``configure(parser)`` + ``command(args) -> int``.
COMMANDS = {
    "report": ("harness.report", "build reports from result directories (several machines merge)"),
    "compare": ("harness.compare", "compare a baseline and a candidate; exit 1 on a regression"),
    "ab": ("harness.ab", "benchmark two git revisions interleaved (ABBA) and compare; exit 1 on a regression"),
    "env": ("harness.envcheck", "this machine's fingerprint and which cells can run here"),
    "envs": ("harness.envs.cli", "list, build or remove the environments cells run in"),
    "history": ("harness.history.cli", "benchmark results per commit: record, change points, page, bisect"),
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


def kinds(text: str) -> list[str]:
    """A comma-separated list of device kinds (``T4,P40``)."""
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"{text!r}: give distinct device kinds separated by commas, e.g. T4,P40")
    return names


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
    fleet = p.add_argument_group("many machines (docs/many-machines.md)")
    fleet.add_argument("--executor", choices=("local", "ray"), default="local",
                       help="where cells run: this machine, one after another (default), or a Ray cluster")
    fleet.add_argument("--address", metavar="auto|HOST:PORT",
                       help="with --executor ray: the cluster to join (default: the running one, else a new local one)")
    fleet.add_argument("--devices", type=kinds, metavar="KIND[,KIND...]",
                       help="with --executor ray: run the suite once per device kind (Ray accelerator_type or custom "
                            "node resource, e.g. T4,P40), in parallel across the fleet")
    fleet.add_argument("--data-copy", action="store_true",
                       help="with --executor ray: copy --data once to each node (checksummed) instead of reading a "
                            "path every node shares")
    fleet.add_argument("--retries", type=count(0), metavar="N",
                       help="with --executor ray: run a cell whose node is lost again on another node up to N times "
                            "(default 2)")


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
    from harness.runner import Interrupted, OutputExists, run_suite
    from harness.suite import expand, select, shared_names

    if args.executor != "ray" and (args.devices or args.address or args.data_copy or args.retries is not None):
        raise SuiteError("--devices, --address, --data-copy and --retries go with --executor ray")
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
        print(f"harness: warning: {line}", file=sys.stderr)
    executor = None
    hint = shlex.join(["harness", "envs", "build", "--suite", args.suite, *(f"--only={o}" for o in args.only)])
    if args.executor == "ray":
        from harness import fleet

        cells, kinds_of = fleet.per_kind(cells, args.devices or [])
        try:  # before anything is written: without Ray, or without a cluster at --address, exit 2
            executor = fleet.RayExecutor(manager, address=args.address, kinds=kinds_of,
                                         retries=2 if args.retries is None else args.retries,
                                         data_copy=args.data_copy, build=not args.no_build, hint=hint)
            executor.connect()
        except fleet.FleetError as exc:
            print(f"harness: {exc}", file=sys.stderr)
            return 2
    _lock = OutputLock(out, shlex.join(sys.argv))  # held until cmd_run returns; a second run on OUT exits 2
    check_resume(cells, out, args.resume, args.rerun_changed)
    interrupted = None
    try:
        outcomes = run_suite(cells, out, manager, resume=args.resume, build=not args.no_build, hint=hint,
                             executor=executor)
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


def check_resume(cells: list[CellSpec], out: Path, resume: bool, rerun_changed: bool) -> None:
    """Before a resumed run: refuse cells whose stored settings differ (or, with ``rerun_changed``, move them
    aside), and repair the cells that will continue (unreadable epoch lines set aside, a checkpoint that the
    epoch rows agree with)."""
    if rerun_changed and not resume:
        raise StoreError("--rerun-changed goes with --resume")
    if not resume:
        return
    stores = {cell.id: CellStore(out, cell.id) for cell in cells}
    changed = {cell.id: changes for cell in cells if (changes := stores[cell.id].spec_changes(cell))}
    if changed and not rerun_changed:
        listing = "; ".join(f"{cell_id}: {', '.join(changes)}" for cell_id, changes in changed.items())
        raise StoreError(f"--resume {out}: {len(changed)} cell(s) were run with other settings ({listing}); pass "
                         "--rerun-changed to move their results aside and run them again, or choose another --out")
    for cell_id in changed:
        print(f"harness: {cell_id}: settings changed; earlier results moved to {stores[cell_id].move_aside()}",
              file=sys.stderr)
    for cell_id, store in stores.items():
        previous = store.result()
        if cell_id not in changed and not (previous and previous["status"] in ("ok", "skipped")):
            for message in store.prepare_resume():
                print(f"harness: warning: {message}", file=sys.stderr)


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
    from harness.suite import registered_models

    manager = get_manager()
    environment = manager.environment_by_plugin()
    provided: dict[str, list[str]] = {}
    for kind in ("loaders", "models", "backends", "suites"):
        for name, reg in manager.registries[kind].items():
            provided.setdefault(reg.plugin, []).append(f"{LABELS[kind]} {name}")
    shadowing = manager.shadowing(registered_models(manager))
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
        if names := shadowing.get(info.name):
            shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
            print(f"{'':14} warning: its model families know {len(names)} name(s) another family knows too: {shown}; "
                  'a built-in family keeps such a name unless a suite pins another ([models.NAME] family = "F")')
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
    except (SuiteError, DataError, PluginError, StoreError) as exc:
        print(f"harness: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, a read-only or vanished folder: one line, not a traceback
        print(f"harness: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
