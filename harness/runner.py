"""Runs a suite's cells, each in its own process, and records ok / skipped / failed."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from harness import capability, envinfo
from harness.api import CellSpec, DeviceInfo
from harness.plugins import Manager
from harness.store import CellStore, write_json

EPOCH_LINE = re.compile(r"^\[(?P<id>[^\]]+)\] epoch (?P<epoch>\d+)/(?P<epochs>\d+)")


class OutputExists(RuntimeError):
    """The output directory already holds results and --resume was not given."""


@dataclass
class Outcome:
    cell: CellSpec
    status: str
    reason: str | None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(cell_json: Path, out: Path, nproc: int, resume: bool) -> list[str]:
    """The cell process command line: plain Python, or torchrun for several processes."""
    tail = ["-m", "harness.cell", str(cell_json), "--out", str(out), *(["--resume"] if resume else [])]
    if nproc == 1:
        return [sys.executable, *tail]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *tail]


def cell_env(nproc: int) -> dict[str, str]:
    """Single-process cells get the rendezvous variables torchrun would set, so backends need no special case."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # Loader threads and workers share the CPU with torch's OpenMP threads; spinning OpenMP threads
    # then starve them (measured here: a DALI cell at 4 img/s spinning vs 35 img/s passive).
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if nproc == 1:
        env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    return env


def run_cell(cell: CellSpec, out: Path, resume: bool, env: dict) -> None:
    """Start the cell's process, show its progress, and record a failure its process could not."""
    store = CellStore(out, cell.id)
    store.write_cell(cell)
    store.result_path.unlink(missing_ok=True)  # a failed earlier attempt's result must not outlive this one
    tail: deque[str] = deque(maxlen=20)
    bar = tqdm(total=cell.epochs, desc=cell.id, leave=True, unit="epoch", dynamic_ncols=True, disable=None)
    proc = subprocess.Popen(command(store.dir / "cell.json", out, cell.nproc, resume), env=cell_env(cell.nproc),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    try:
        for line in proc.stdout:
            tail.append(line.rstrip())
            match = EPOCH_LINE.match(line)
            if match:
                bar.n = int(match["epoch"])
                bar.refresh()
                tqdm.write(line.rstrip())
        code = proc.wait()
    except KeyboardInterrupt:
        proc.terminate()
        proc.wait(timeout=30)
        raise
    finally:
        bar.close()
    result = store.result()
    if result is None or (result["status"] == "ok" and code != 0):
        reason = f"cell process exited with code {code}: " + " | ".join(list(tail)[-5:])
        store.write_result(cell, env, "failed", reason)


def run_suite(cells: list[CellSpec], out: Path, manager: Manager, resume: bool = False) -> list[Outcome]:
    """Run every cell; finished cells of an earlier run are kept when resuming."""
    out = Path(out)
    cells_dir = out / "cells"
    if not resume and cells_dir.exists() and any(cells_dir.iterdir()):
        raise OutputExists(f"{out} already holds results: pass --resume to continue it, or choose a new --out")
    write_json(out / "run.json", {"cells": [c.id for c in cells]})
    outcomes = []
    probes: dict[str, tuple[DeviceInfo, dict]] = {}  # one device probe and fingerprint per device, not per cell
    for cell in cells:
        store = CellStore(out, cell.id)
        previous = store.result()
        if resume and previous and previous["status"] in ("ok", "skipped"):
            outcomes.append(Outcome(cell, previous["status"], previous["reason"]))
            continue
        if cell.device not in probes:
            probed = envinfo.device_info(cell.device)
            probes[cell.device] = (probed, envinfo.fingerprint(probed, manager.environment()))
        device, env = probes[cell.device]
        reason = capability.blocker(cell, manager, device)
        if reason:
            store.write_cell(cell)
            store.write_result(cell, env, "skipped", reason)
            tqdm.write(f"[{cell.id}] skipped: {reason}")
        else:
            run_cell(cell, out, resume, env)
        result = store.result()
        outcomes.append(Outcome(cell, result["status"], result["reason"]))
    return outcomes
