"""Placing cells: which interpreter runs each, whether it can run there, and what a suite's environments are."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import capability, envinfo
from harness.api import CellSpec, DeviceInfo
from harness.envs.build import ask, build
from harness.envs.layers import Log, layered, problem, ready
from harness.envs.spec import BuildError, Environment, Spec, of_cell
from harness.plugins import Manager

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Placement:
    """Where a cell runs: the interpreter (None: nowhere), the fingerprint its result carries, why it cannot run."""

    python: str | None
    env: dict[str, Any]
    blocker: str | None


class Placer:
    """Places cells: in the harness's own environment, or in theirs, found (with ``build``, built) once and asked
    once about all its cells."""

    def __init__(self, cells: Iterable[CellSpec], manager: Manager, build: bool = True,
                 hint: str = "harness envs build --suite SUITE", log: Log = logger.info) -> None:
        self.cells, self.manager, self.build, self.hint, self.log = list(cells), manager, build, hint, log
        self.probes: dict[str, tuple[DeviceInfo, dict[str, Any]]] = {}  # one probe per device, not per cell
        self.elsewhere: dict[Environment, Callable[[CellSpec], Placement]] = {}

    def place(self, cell: CellSpec) -> Placement:
        environment = of_cell(cell)
        if environment.is_default:
            device, env = self.probe(cell.device)
            return Placement(sys.executable, env, capability.blocker(cell, self.manager, device))
        if environment not in self.elsewhere:
            self.elsewhere[environment] = self.enter(environment)
        return self.elsewhere[environment](cell)

    def probe(self, device: str) -> tuple[DeviceInfo, dict[str, Any]]:
        if device not in self.probes:
            probed = envinfo.device_info(device)
            self.probes[device] = (probed, envinfo.fingerprint(probed, self.manager.environment()))
        return self.probes[device]

    def enter(self, environment: Environment) -> Callable[[CellSpec], Placement]:
        """Find or build ``environment`` and ask it about its cells; on failure each of them gets the reason."""
        cells = [c for c in self.cells if of_cell(c) == environment]
        spec = None
        try:
            spec = Spec.for_cells(environment, cells, self.manager)
            state = problem(spec.path)
            if state:
                if not self.build:
                    raise BuildError(f"environment {environment.name} is {state}; build it with: "
                                     f"{self.hint} {environment.name}")
                build(spec, self.log)
            answers = ask(spec, cells)
        except (BuildError, OSError) as exc:
            reason, key = str(exc), spec.key if spec else None
            return lambda cell: Placement(None, self.stand_in(cell, environment.name, key), reason)
        python = str(spec.python)
        return lambda cell: Placement(python, answers["fingerprints"][cell.device], answers["blockers"][cell.id])

    def stand_in(self, cell: CellSpec, name: str, key: str | None) -> dict[str, Any]:
        """The fingerprint of a cell whose environment is missing: this machine's, library versions unknown."""
        unknown = {k: None for k in envinfo.PACKAGES if k != "harness"}
        return {**self.probe(cell.device)[1], **unknown, "environment": name, "environment_hash": key}


def groups(cells: Iterable[CellSpec]) -> dict[Environment, list[CellSpec]]:
    found: dict[Environment, list[CellSpec]] = {}
    for cell in cells:
        found.setdefault(of_cell(cell), []).append(cell)
    return found


def overview(cells: Iterable[CellSpec], manager: Manager,
             declarers: Mapping[str, list[str]] | None = None) -> list[dict[str, Any]]:
    """Each environment ``cells`` need: its name, hash, requirements, folder, whether it is built (and a layer over
    the default), its size on disk, who declared it (``declarers``: part name -> objects, from the suite), and its
    cells."""
    rows = []
    for environment, members in groups(cells).items():
        if environment.is_default:
            row: dict[str, Any] = {"hash": None, "path": sys.prefix, "built": True, "size_bytes": None, "layer": False}
        else:
            spec = Spec.for_cells(environment, members, manager)
            built = ready(spec.path)
            row = {"hash": spec.key, "path": str(spec.path), "built": built,
                   "size_bytes": disk_usage(spec.path) if built else None,
                   "layer": built and layered(spec.path), "extras": list(spec.extras)}
        declared = [] if environment.is_default else [
            who for part in environment.parts for who in (declarers or {}).get(part, [])]
        rows.append({"name": environment.name, **row, "requires": list(environment.requires),
                     "declared_by": declared, "cells": [c.id for c in members]})
    return rows


def disk_usage(path: Path) -> int:
    """Bytes ``path`` takes on disk, as ``du`` counts them (a file hard-linked twice counts once)."""
    seen, total = set(), 0
    for folder, dirs, files in os.walk(path):
        for name in dirs + files:
            stat = os.lstat(os.path.join(folder, name))
            if (stat.st_dev, stat.st_ino) not in seen:
                seen.add((stat.st_dev, stat.st_ino))
                total += stat.st_blocks * 512
    return total


def gigabytes(size: int | None) -> str:
    return "?" if size is None else f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.0f} MiB"
