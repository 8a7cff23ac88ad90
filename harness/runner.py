"""Runs a suite's cells, each in its own process group under its environment's interpreter, and records ok /
skipped / failed / interrupted."""

from __future__ import annotations

import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tqdm import tqdm

from harness import environments
from harness.api import CellSpec
from harness.cell import PARENT_ENV
from harness.plugins import Manager
from harness.store import CellStore, write_json

#: Handled like Ctrl-C: forwarded to the running cell, which is recorded ``interrupted``.
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
GRACE_S = 10.0  # a signalled cell's process group gets this long to exit before SIGKILL
POLL_S = 0.5  # how often the runner reads the cell's progress and checks its time limit
SCRATCH = "harness-cell-"  # prefix of the per-cell temporary folders (the cell's TMPDIR)


class OutputExists(RuntimeError):
    """The output directory already holds results and --resume was not given."""


class Interrupted(KeyboardInterrupt):
    """The runner got SIGINT, SIGTERM or SIGHUP; ``outcomes`` are the cells recorded until then."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.outcomes: list[Outcome] = []


@dataclass
class Outcome:
    cell: CellSpec
    status: str
    reason: str | None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(cell_json: Path, out: Path, nproc: int, resume: bool, python: str = sys.executable,
            launch: Sequence[str] = ()) -> list[str]:
    """The cell process command line (with ``nproc > 1`` it starts the ranks through torchrun, in-process;
    ``launch`` adds :mod:`harness.cell`'s multi-node options, e.g. ``--nnodes=2 --rdzv-endpoint=HOST:PORT``)."""
    return [python, "-m", "harness.cell", str(cell_json), "--out", str(out), f"--nproc={nproc}", *launch,
            *(["--resume"] if resume else [])]


def cell_env(nproc: int, python: str = sys.executable) -> dict[str, str]:
    """The cell's process environment: ``python``'s environment activated when it is not the runner's, and for
    single-process cells the rendezvous variables torchrun would set, so backends need no special case."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **{PARENT_ENV: str(os.getpid())})
    if python != sys.executable:
        env = environments.activated(Path(python).parent.parent, env)
    # Loader threads and workers share the CPU with torch's OpenMP threads; spinning OpenMP threads
    # then starve them (measured here: a DALI cell at 4 img/s spinning vs 35 img/s passive).
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if nproc == 1:
        env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    return env


def nodes(cell: CellSpec) -> int:
    """How many nodes the cell spans: its backend table's ``nnodes`` (``nproc`` ranks on each), 1 by default."""
    return int(cell.backend_params.get("nnodes", 1))


def recorded_epochs(store: CellStore) -> int:
    """The cell's progress as data: complete records in its ``epochs.jsonl`` (a torn last line is not one)."""
    try:
        return store.epochs_path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def relay(stream: Iterable[bytes], tail: deque[str]) -> None:
    """Echo the cell's output above the progress bar, keeping its last lines for a failure reason. Bytes that
    are not UTF-8 are replaced, never fatal: a relay that died would leave the pipe to fill and the cell blocked."""
    for raw in stream:
        line = raw.decode("utf-8", "replace").rstrip()
        tail.append(line)
        tqdm.write(line)


def stop(proc: subprocess.Popen, signum: int) -> None:
    """Send ``signum`` to the cell's process group; SIGKILL what is left of the group after ``GRACE_S``."""
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signum)
    with suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=GRACE_S)
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def watch(proc: subprocess.Popen, store: CellStore, cell: CellSpec, bar: tqdm) -> tuple[str, str] | None:
    """Wait for the cell's process, moving ``bar`` with its epoch records; stop it past ``cell.timeout_s``.

    Returns the status and reason to record when the runner stopped the cell, else None.
    """
    deadline = time.monotonic() + (cell.timeout_s or math.inf)
    while proc.poll() is None:
        bar.update(recorded_epochs(store) - bar.n)
        if time.monotonic() > deadline:
            stop(proc, signal.SIGTERM)
            done = recorded_epochs(store)
            return "failed", f"timeout after {cell.timeout_s:g} s ({done} of {cell.epochs} epochs done)"
        time.sleep(POLL_S)
    return None


def record(store: CellStore, cell: CellSpec, env: dict, code: int | None, tail: deque[str],
           stopped: tuple[str, str] | None, expect_result: bool = True) -> None:
    """Record what the cell's process could not: why the runner stopped it, or how it died. Without
    ``expect_result`` (one node of a multi-node cell, which may not hold global rank 0) a clean exit that wrote
    no result is not a failure."""
    result = store.result()
    if stopped and (result is None or result["status"] == "failed"):  # a cell that finished first keeps its result
        store.write_result(cell, env, *stopped)
    elif result is None and code == 0 and not expect_result:
        return
    elif result is None:
        store.write_result(cell, env, "failed", f"cell process exited with code {code}: " + " | ".join(list(tail)[-5:]))
    elif result["status"] == "ok" and code != 0:  # it recorded every epoch and its result: it finished
        warn_exit(store, result, code, tail)


def warn_exit(store: CellStore, result: dict, code: int | None, tail: deque[str]) -> None:
    """Keep a finished cell's ``ok``; what went wrong at its process's exit becomes the coded warning
    ``exit-after-result`` (e.g. DataLoader workers killed at exit making the process exit 1)."""
    said = " | ".join(list(tail)[-2:])
    warning = {"code": "exit-after-result",
               "message": f"the cell process exited with code {code} after recording its result" + (
                   f": {said}" if said else "")}
    summary = result.setdefault("summary", {})
    summary["warnings"] = [*summary.get("warnings", []), warning]
    write_json(store.result_path, result)


def sweep(tmp: Path, prefix: str) -> None:
    """Remove the folders ``tmp/PREFIX*`` whose owner process (the pid in their ``.pid``) is gone: a runner or a
    Ray worker killed outright (SIGKILL) could not remove them itself."""
    for folder in tmp.glob(prefix + "*"):
        try:
            os.kill(int((folder / ".pid").read_text()), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except (OSError, ValueError):  # not ours to judge (another user's, or being created)
            continue


def scratch_folder() -> str:
    """A fresh per-cell temporary folder naming its owner (this process), after sweeping orphaned ones."""
    sweep(Path(tempfile.gettempdir()), SCRATCH)
    folder = tempfile.mkdtemp(prefix=SCRATCH)
    Path(folder, ".pid").write_text(str(os.getpid()))
    return folder


def run_cell(cell: CellSpec, out: Path, resume: bool, env: dict, python: str = sys.executable,
             launch: Sequence[str] = (), expect_result: bool = True) -> int | None:
    """Run the cell in its own process group, relay its output, and record what its process could not; return
    the process's exit code. ``launch`` and ``expect_result``: one node's share of a multi-node cell
    (:mod:`harness.fleet`).

    On :class:`Interrupted` the group gets the runner's signal, the cell is recorded interrupted and the
    exception goes on.
    """
    store = CellStore(out, cell.id)
    store.write_cell(cell)
    store.result_path.unlink(missing_ok=True)  # a failed earlier attempt's result must not outlive this one
    tail: deque[str] = deque(maxlen=20)
    bar = tqdm(total=cell.epochs, initial=recorded_epochs(store), desc=cell.id, leave=True, unit="epoch",
               dynamic_ncols=True, disable=None)
    # A session of its own: the runner's signals reach the whole group (cell or torchrun, loader workers), the
    # terminal's Ctrl-C only the runner, which forwards it.
    # A temporary folder of its own, removed afterwards: libraries' leftovers (DALI's autograph writes
    # /tmp/__autograph_generated_file*.py, ~50 per cell) go with it.
    # Short: DataLoader workers put Unix sockets under it (pymp-*/listener-*), whose paths may not exceed 107
    # bytes; a long name under a deep TMPDIR made workers fail and the cell hang.
    scratch = scratch_folder()
    proc = subprocess.Popen(command(store.dir / "cell.json", out, cell.nproc, resume, python, launch),
                            env={**cell_env(cell.nproc * nodes(cell), python), "TMPDIR": scratch},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    reader = threading.Thread(target=relay, args=(proc.stdout, tail), daemon=True)
    reader.start()
    stopped = None
    try:
        stopped = watch(proc, store, cell, bar)
    except Interrupted as exc:
        stop(proc, exc.signum)
        stopped = "interrupted", f"interrupted by {exc} after {recorded_epochs(store)} of {cell.epochs} epochs"
        raise
    finally:
        bar.close()
        reader.join(timeout=GRACE_S)  # orphaned loader workers may hold the pipe open a little longer
        shutil.rmtree(scratch, ignore_errors=True)
        record(store, cell, env, proc.returncode, tail, stopped, expect_result)
    return proc.returncode


def interrupt(signum: int, frame: object) -> None:
    """Signal handler: stop the run; a second signal must not cut the running cell's shutdown short."""
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    raise Interrupted(signum)


class Executor(Protocol):
    """Where cells run: :class:`LocalExecutor` (this machine, one cell at a time) or
    :class:`harness.fleet.RayExecutor` (a Ray cluster). Both write the same result layout into ``out``."""

    def run(self, cells: list[CellSpec], out: Path, resume: bool, outcomes: list[Outcome]) -> None:
        """Run or skip each cell, appending its outcome to ``outcomes`` (the interrupted ones' too)."""


@dataclass
class LocalExecutor:
    """Each cell in a process of its own on this machine, one after another, under its environment's
    interpreter (built as reached with ``build``; without, skipped naming ``hint``)."""

    manager: Manager
    build: bool = True
    hint: str = "harness envs build --suite SUITE"

    def run(self, cells: list[CellSpec], out: Path, resume: bool, outcomes: list[Outcome]) -> None:
        placer = environments.Placer(cells, self.manager, self.build, self.hint, log=tqdm.write)
        run_cells(cells, out, placer, resume, outcomes)


def run_suite(cells: list[CellSpec], out: Path, manager: Manager, resume: bool = False, build: bool = True,
              hint: str = "harness envs build --suite SUITE", executor: Executor | None = None) -> list[Outcome]:
    """Run every cell with ``executor`` (default: :class:`LocalExecutor` with ``build`` and ``hint``); finished
    cells of an earlier run are kept when resuming. Environments the cells need are built as they are reached
    (with ``build``; without, their cells are skipped naming ``hint``, the command that builds them).

    SIGINT, SIGTERM and SIGHUP (unless ignored, as under nohup) raise :class:`Interrupted` once the running
    cell is stopped and recorded.
    """
    out = Path(out)
    cells_dir = out / "cells"
    if not resume and cells_dir.exists() and any(cells_dir.iterdir()):
        raise OutputExists(f"{out} already holds results: pass --resume to continue it, or choose a new --out")
    write_json(out / "run.json", {"cells": [c.id for c in cells]})
    outcomes: list[Outcome] = []
    previous_handlers = {sig: signal.getsignal(sig) for sig in SIGNALS}
    for sig, handler in previous_handlers.items():
        if handler != signal.SIG_IGN:
            signal.signal(sig, interrupt)
    try:
        (executor or LocalExecutor(manager, build, hint)).run(cells, out, resume, outcomes)
    except Interrupted as exc:
        exc.outcomes = outcomes
        raise
    finally:
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)
    return outcomes


def run_cells(cells: list[CellSpec], out: Path, placer: environments.Placer, resume: bool,
              outcomes: list[Outcome]) -> None:
    """Run or skip each cell, appending its outcome to ``outcomes`` (the interrupted one's too)."""
    for cell in cells:
        store = CellStore(out, cell.id)
        previous = store.result()
        if resume and previous and previous["status"] in ("ok", "skipped"):
            outcomes.append(Outcome(cell, previous["status"], previous["reason"]))
            continue
        place = placer.place(cell)
        env, reason = place.env, place.blocker
        if not reason and nodes(cell) > 1:
            reason = f"spans {nodes(cell)} nodes (backend parameter nnodes): run it with harness run --executor ray"
        failure = None
        try:
            if reason or place.python is None:
                store.write_cell(cell)
                store.write_result(cell, env, "skipped", reason)
                tqdm.write(f"[{cell.id}] skipped: {reason}")
            else:
                run_cell(cell, out, resume, env, place.python)
        except OSError as exc:  # e.g. the disk filled up: this cell fails, the suite goes on
            failure = f"{type(exc).__name__} while recording the cell: {exc}"
            tqdm.write(f"[{cell.id}] failed: {failure}")
            with suppress(OSError):
                store.write_result(cell, env, "failed", failure)
        finally:
            result = store.result()
            if failure and not (result and result["status"] == "failed"):
                outcomes.append(Outcome(cell, "failed", failure))  # not even the failure could be written
            elif result:
                outcomes.append(Outcome(cell, result["status"], result["reason"]))
