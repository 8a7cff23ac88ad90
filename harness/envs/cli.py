"""``harness envs list|build|remove``: the environments cells run in (docs/environments.md)."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

from harness import envinfo, paths
from harness.envs.build import build, locked
from harness.envs.layers import marker, problem, ready
from harness.envs.placement import disk_usage, gigabytes, groups
from harness.envs.spec import BuildError, Environment, Spec, declared_by, extras_of, satisfied
from harness.exitcode import ExitCode
from harness.plugins import Manager, get_manager, suite_path
from harness.redact import redact
from harness.suite import expand, select

logger = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="envs_command", required=True)
    listing = sub.add_parser("list", help="the environments built so far, with their size and build time")
    listing.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    build_parser = sub.add_parser("build", help="build the environments a suite's cells need (without --suite: "
                                                "those plugins declare)")
    build_parser.add_argument("names", nargs="*", help="only these environments")
    build_parser.add_argument("--suite", help="a registered suite name or a path to a suite TOML file")
    build_parser.add_argument("--only", action="append", default=[], metavar="KEY=VALUE",
                              help="only the environments of matching cells (as harness run --only)")
    remove = sub.add_parser("remove", help="remove built environments")
    remove.add_argument("names", nargs="+", help="environment names (every build of one) or folders NAME-HASH")


def command(args: argparse.Namespace) -> int:
    commands = {"list": list_command, "build": build_command, "remove": remove_command}
    return commands[args.envs_command](args)


def built() -> list[dict[str, Any]]:
    """Every folder under the environments folder: what its marker says (an unfinished build has none), whether it
    is usable (else why not), and its size."""
    rows = []
    for path in sorted(p for p in paths.envs_dir().glob("*") if p.is_dir()):
        recorded = marker(path) or {"name": path.name.rpartition("-")[0]}
        rows.append({"folder": path.name, "path": str(path), "problem": problem(path), "size_bytes": disk_usage(path),
                     "layer_over": None, **recorded})
    return rows


def list_command(args: argparse.Namespace) -> int:
    rows = built()
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return ExitCode.OK
    for row in rows:
        over = row["layer_over"] and f", a layer over {row['layer_over']['prefix']}"
        state = (f"built {row['built_at']} in {row['build_s']:.0f} s with {row['tool']}{over or ''}"
                 if row["problem"] is None else f"{row['problem']}: the next build redoes it")
        print(f"{row['folder']:32} {gigabytes(row['size_bytes']):>8}  {state}  {' '.join(row.get('requires', []))}")
    print(f"{len(rows)} environments in {paths.envs_dir()}, {gigabytes(disk_usage(paths.envs_dir()) if rows else 0)} "
          "on disk (files hard-linked from uv's cache are shared with it)")
    return ExitCode.OK


def declared_specs(manager: Manager) -> list[Spec]:
    """The environments registered plugins declare and this interpreter does not satisfy, each with the harness
    extras of every registered plugin (any loader may run in a backend's environment)."""
    registrations = [r for kind in ("loaders", "models", "backends") for r in manager.registries[kind].values()]
    extras = sorted({e for r in registrations for e in extras_of(r)})
    specs: dict[Environment, Spec] = {}
    for reg in registrations:
        environment = declared_by(reg, manager)
        if environment and not satisfied(environment) and environment not in specs:
            third_party = [] if reg.builtin or not envinfo.version(reg.distribution) else [reg.distribution]
            specs[environment] = Spec.of(environment, third_party, extras)
    return list(specs.values())


def build_command(args: argparse.Namespace) -> int:
    manager = get_manager()
    if args.suite:
        cells = select(expand(suite_path(args.suite), manager).cells, args.only)
        specs = [Spec.for_cells(env, members, manager) for env, members in groups(cells).items() if not env.is_default]
    else:
        specs = declared_specs(manager)
    unknown = sorted(set(args.names) - {s.environment.name for s in specs})
    if unknown:
        known = ", ".join(sorted({s.environment.name for s in specs})) or "none"
        print(f"harness: no environment {unknown[0]!r} to build here (needed: {known})", file=sys.stderr)
        return ExitCode.USAGE
    failed = 0
    for spec in specs:
        if args.names and spec.environment.name not in args.names:
            continue
        if ready(spec.path):
            print(f"environment {spec.environment.name} is built: {spec.path}")
            continue
        try:
            build(spec)
        except BuildError as exc:
            print(redact(f"harness: {exc}"), file=sys.stderr)
            failed += 1
    return ExitCode.FAILED if failed else ExitCode.OK


def remove_command(args: argparse.Namespace) -> int:
    rows = [r for r in built() if r["folder"] in args.names or r["name"] in args.names]
    missing = sorted(set(args.names) - {r["folder"] for r in rows} - {r["name"] for r in rows})
    for row in rows:
        path = Path(row["path"])
        with locked(path, logger.info):
            shutil.rmtree(path)
        print(f"removed {path}")
    if missing:
        print(f"harness: no environment {missing[0]!r} in {paths.envs_dir()} (see harness envs list)", file=sys.stderr)
        return ExitCode.USAGE
    return ExitCode.OK
