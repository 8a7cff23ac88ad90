"""``harness env``: this machine's fingerprint and what can run here, from the runner's own ``can_run`` answers."""

from __future__ import annotations

import argparse
import json
import shlex
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

from harness import capability, devices, envinfo
from harness.api import DeviceInfo, usable_cpus
from harness.datasets import DataError
from harness.envs.placement import Placer, gigabytes, overview
from harness.exitcode import ExitCode
from harness.plugins import Manager, get_manager, suite_path
from harness.text import plural


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--suite", help="also show which cells of this suite run here")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--results", type=Path, action="append", default=[],
                        help="earlier result directories of this machine, for a duration estimate")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--strict", action="store_true", help="exit 1 if some cell of --suite cannot run here")


def matrix(manager: Manager, device: DeviceInfo) -> list[dict[str, Any]]:
    """ok or the reason, for every registered loader (default params) and backend x precision."""
    rows = [{"kind": "loader", "name": name, "precision": None, "reason": capability.ask(reg, partial(
        reg.impl.can_run, device, {}))} for name, reg in sorted(manager.loaders().items())]
    for name, reg in sorted(manager.backends().items()):
        for precision in reg.impl.precisions:
            reason = capability.backend_blocker(reg, device, precision, 1, {}, None)
            rows.append({"kind": "backend", "name": name, "precision": precision, "reason": reason})
    return rows


def precisions(device: DeviceInfo) -> list[dict[str, str]]:
    """The device's verdict on each dtype, with the reason and expected slowdown where it is not native."""
    return [{"precision": kind, **vars(devices.support(device, kind))} for kind in devices.DTYPES]


def suite_plan(name: str, manager: Manager, device: DeviceInfo, results: list[Path],
               requested: str | None = None) -> dict[str, Any]:
    """How many cells of suite ``name`` will run or be skipped here, and why: each answered in its environment,
    as ``harness run --no-build`` would (``requested``: the device to override the suite's with)."""
    from harness.suite import expand, shared_names

    suite = expand(suite_path(name), manager, device=requested)
    cells = suite.cells
    hint = shlex.join(["harness", "envs", "build", "--suite", name])
    placer = Placer(cells, manager, build=False, hint=hint)
    statuses = {c.id: placer.place(c).blocker for c in cells}
    reasons = Counter(r for r in statuses.values() if r)
    slots = device.count if device.type == "cuda" else usable_cpus()
    return {"suite": name, "cells": len(cells), "run": sum(r is None for r in statuses.values()),
            "skipped": sum(reasons.values()), "reasons": dict(reasons.most_common()),
            "oversized": sum(c.nproc > slots for c in cells), "slots": f"{slots} {device.type.upper()}s",
            "statuses": {cid: ("ok" if r is None else "skipped") for cid, r in statuses.items()},
            "estimate_s": estimate(cells, statuses, results),
            "environments": overview(cells, manager, suite.environments),
            "shared_model_names": shared_names(cells, manager)}


def estimate(cells: list[Any], statuses: dict[str, str | None], results: list[Path]) -> float | None:
    """Seconds the runnable cells should take, from median epoch times of earlier runs of the same cells."""
    if not results:
        return None
    from harness.report.load import load_results

    loaded = load_results(results)
    epochs = loaded.epochs.merge(loaded.cells[["run", "cell_id"]], on="run")
    per_cell = epochs.groupby("cell_id")["epoch_time_s"].median()
    known = [per_cell[c.id] * c.epochs for c in cells if statuses[c.id] is None and c.id in per_cell]
    return float(sum(known)) if known else None


def command(args: argparse.Namespace) -> int:
    for results in args.results:
        if not results.is_dir():
            raise DataError(f"--results {results}: no such result directory")
    manager = get_manager()
    device = envinfo.device_info(args.device)
    report: dict[str, Any] = {
        "environment": envinfo.fingerprint(device, manager.environment()),
        "precisions": precisions(device),
        "capabilities": matrix(manager, device),
        "broken_plugins": {p.name: p.error for p in manager.plugins if p.error},
    }
    if args.suite:
        report["suite"] = suite_plan(args.suite, manager, device, args.results,
                                     None if args.device == "auto" else args.device)
    print(json.dumps(report, indent=2, default=str) if args.json else render(report))
    blocked = args.suite and report["suite"]["skipped"]
    return ExitCode.FAILED if args.strict and blocked else ExitCode.OK


def render(report: dict[str, Any]) -> str:
    lines = ["Environment"]
    lines += [f"  {k:18} {v}" for k, v in report["environment"].items() if v is not None]
    lines.append(f"Precisions on this {report['environment']['device_type'].upper()}")
    for row in report["precisions"]:
        detail = f": {row['reason']}; {row['slowdown']}" if row["level"] != devices.NATIVE else ""
        lines.append(f"  {row['precision']:6} {row['level']}{detail}")
    lines.append("Capabilities on this machine")
    for row in report["capabilities"]:
        name = row["name"] + (f" {row['precision']}" if row["precision"] else "")
        lines.append(f"  {row['kind']:8} {name:28} {row['reason'] or 'ok'}")
    for name, error in report["broken_plugins"].items():
        lines.append(f"  BROKEN plugin {name}: {error}")
    if "suite" in report:
        plan = report["suite"]
        lines.append(f"Suite {plan['suite']}: {plural(plan['cells'], 'cell')}, {plan['run']} run here, "
                     f"{plan['skipped']} skipped")
        lines += [f"  {n:4} x {reason}" for reason, n in plan["reasons"].items()]
        if plan["oversized"]:
            lines.append(f"  {plural(plan['oversized'], 'cell')} need more processes than this machine has "
                         f"{plan['slots']} (on a GPU they are skipped; on the CPU they run oversubscribed)")
        lines += [f"  warning: {line}" for line in plan["shared_model_names"]]
        if plan["estimate_s"] is not None:
            lines.append(f"  estimated duration from earlier results: {plan['estimate_s'] / 60:.1f} min")
        lines.append(f"Environments of suite {plan['suite']}")
        for env in plan["environments"]:
            layer = " (a layer over default)" if env["layer"] else ""
            declared = f" (declared by {', '.join(env['declared_by'])})" if env["declared_by"] else ""
            state = ("the harness's own" if env["hash"] is None else
                     f"built{layer}, {gigabytes(env['size_bytes'])}" if env["built"] else "not built yet")
            lines.append(f"  {env['name']:16} {plural(len(env['cells']), 'cell'):>10}{declared}: {state}, "
                         f"{env['path']}" + (f" [{' '.join(env['requires'])}]" if env["requires"] else ""))
    return "\n".join(lines)


