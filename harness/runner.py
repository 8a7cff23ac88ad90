"""Runs a suite's cells and owns each cell's life: which cells run (``--resume`` keeps finished ones), where
(placed in their environment), how far (to the end, or to a race's rung: :mod:`harness.race`), and what came of
each (ok / skipped / failed / interrupted / paused / eliminated, recorded here and nowhere else), with retries, time
limits, progress and signals. An executor (:class:`harness.api.Executor`, a plugin: this machine one cell at a
time, a local pool, a Ray cluster) only launches and watches."""

from __future__ import annotations

import argparse
import logging
import math
import signal
import time
from collections import deque
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from harness.api import CellExit, CellSpec, Executor, Outcome
from harness.envs.placement import Placer
from harness.launch import nodes
from harness.plugins import Manager, PluginError
from harness.store import CellStore, StoreError, write_json

if TYPE_CHECKING:
    from harness.race import RaceSettings

#: Handled like Ctrl-C: forwarded to the running cells, which are recorded ``interrupted``.
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
POLL_S = 0.5  # how often the runner reads the cells' progress and checks their time limits
STOP_WAIT_S = 60.0  # how long stopped cells get to end (an executor SIGKILLs local ones after its grace)
DEFAULT_HINT = "harness envs build --suite SUITE"
log = logging.getLogger(__name__)


class OutputExists(RuntimeError):
    """The output directory already holds results and --resume was not given."""


class Interrupted(KeyboardInterrupt):
    """The runner got SIGINT, SIGTERM or SIGHUP; ``outcomes`` are the cells recorded until then."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.outcomes: list[Outcome] = []


def recorded_epochs(store: CellStore) -> int:
    """The cell's progress as data: complete records in its ``epochs.jsonl`` (a torn last line is not one)."""
    try:
        return store.epochs_path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def record(store: CellStore, cell: CellSpec, env: dict[str, Any], ended: CellExit,
           stopped: tuple[str, str] | None) -> None:
    """Decide the cell's outcome from what it recorded: a result it wrote stands (an ``ok`` one whatever its exit
    code: the exit problem becomes a warning), unless the runner stopped a cell that had not finished; a cell that
    left no result is skipped where its executor found it cannot run where it was sent, else failed, with its
    executor's reason or its exit code and last lines."""
    result = store.result()
    if stopped and (result is None or result["status"] == "failed"):  # a cell that finished first keeps its result
        store.write_result(cell, env, *stopped)
    elif result is None and ended.skipped:
        store.write_result(cell, dict(ended.env or env), "skipped", ended.skipped)
    elif result is None:
        store.write_result(cell, env, "failed", ended.error or f"cell process exited with code {ended.code}: "
                           + " | ".join(list(ended.tail)[-5:]))
    elif result["status"] == "ok" and ended.code not in (0, None):
        warn_exit(store, result, ended)


def warn_exit(store: CellStore, result: dict[str, Any], ended: CellExit) -> None:
    """Keep a finished cell's ``ok``; what went wrong at its process's exit becomes the coded warning
    ``exit-after-result`` (e.g. DataLoader workers killed at exit making the process exit 1)."""
    said = " | ".join(list(ended.tail)[-2:])
    warning = {"code": "exit-after-result",
               "message": f"the cell process exited with code {ended.code} after recording its result" + (
                   f": {said}" if said else "")}
    summary = result.setdefault("summary", {})
    summary["warnings"] = [*summary.get("warnings", []), warning]
    write_json(store.result_path, result)


def prepare_resume(cells: Sequence[CellSpec], out: Path, rerun_changed: bool) -> None:
    """Before a resumed run: refuse cells whose stored settings differ (or, with ``rerun_changed``, move them
    aside), and repair the cells that will continue (unreadable epoch lines set aside, a checkpoint that the
    epoch rows agree with)."""
    stores = {cell.id: CellStore(out, cell.id) for cell in cells}
    changed = {cell.id: changes for cell in cells if (changes := stores[cell.id].spec_changes(cell))}
    if changed and not rerun_changed:
        listing = "; ".join(f"{cell_id}: {', '.join(changes)}" for cell_id, changes in changed.items())
        raise StoreError(f"--resume {out}: {len(changed)} cell(s) were run with other settings ({listing}); pass "
                         "--rerun-changed to move their results aside and run them again, or choose another --out")
    for cell_id in changed:
        log.info("%s: settings changed; earlier results moved to %s", cell_id, stores[cell_id].move_aside())
    for cell_id, store in stores.items():
        if cell_id not in changed and not finished(store):
            for message in store.prepare_resume():
                log.warning(message)


def finished(store: CellStore, racing: bool = False) -> dict[str, Any] | None:
    """The cell's result when a resumed run keeps it (``ok``, ``skipped``, and in a race ``eliminated``: a full
    run trains an eliminated cell on from its checkpoint), else None."""
    result = store.result()
    return result if result and keeps(result, racing) else None


def keeps(result: dict[str, Any], racing: bool) -> bool:
    """Whether a resumed run keeps this result as the cell's outcome (see :func:`finished`)."""
    return result["status"] in (("ok", "skipped", "eliminated") if racing else ("ok", "skipped"))


def interrupt(signum: int, frame: object) -> None:
    """Signal handler: stop the run; a second signal must not cut the running cells' shutdown short."""
    for sig in SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    raise Interrupted(signum)


def executor_named(manager: Manager, name: str, args: argparse.Namespace) -> Executor:
    """The executor plugin ``name``'s executor for a run with ``args``."""
    registered = manager.executors()
    if name not in registered:
        raise PluginError(f"unknown executor {name!r}; registered: {', '.join(sorted(registered)) or 'none'}")
    executor: Executor = registered[name].impl.create(args, manager)
    return executor


def run_suite(cells: list[CellSpec], out: Path, manager: Manager, resume: bool = False, build: bool = True,
              hint: str = DEFAULT_HINT, executor: Executor | None = None, rerun_changed: bool = False,
              race: RaceSettings | None = None) -> list[Outcome]:
    """Run every cell with ``executor`` (default: the ``local`` one, one cell after another): each to the end, or
    as a race (``race``: :mod:`harness.race`); finished cells of an earlier run are kept when resuming
    (``rerun_changed``: cells whose settings changed are moved aside and run again). Environments the cells need
    are built as they are reached (with ``build``; without, their cells are skipped naming ``hint``, the command
    that builds them). One outcome per cell, in the order they were first reached.

    SIGINT, SIGTERM and SIGHUP (unless ignored, as under nohup) raise :class:`Interrupted` once the running
    cells are stopped and recorded.
    """
    out = Path(out)
    cells_dir = out / "cells"
    if not resume and cells_dir.exists() and any(cells_dir.iterdir()):
        raise OutputExists(f"{out} already holds results: pass --resume to continue it, or choose a new --out")
    if rerun_changed and not resume:
        raise StoreError("--rerun-changed goes with --resume")
    if resume:
        prepare_resume(cells, out, rerun_changed)
    executor = executor or executor_named(manager, "local", argparse.Namespace(build=build, hint=hint))
    write_json(out / "run.json", {"cells": [c.id for c in cells], **({"race": race.describe()} if race else {})})
    outcomes: dict[str, Outcome] = {}
    previous_handlers = {sig: signal.getsignal(sig) for sig in SIGNALS}
    for sig, handler in previous_handlers.items():
        if handler != signal.SIG_IGN:
            signal.signal(sig, interrupt)
    try:
        Runner(cells, out, manager, executor, resume, build, hint, outcomes).run(race)
    except Interrupted as exc:
        exc.outcomes = list(outcomes.values())
        raise
    finally:
        for sig, handler in previous_handlers.items():
            signal.signal(sig, handler)
    return list(outcomes.values())


@dataclass
class Running:
    """A cell the executor is running: its job, where its outcome goes, and how it is going."""

    cell: CellSpec
    job: Any
    store: CellStore
    env: dict[str, Any]
    python: str | None
    bar: tqdm
    deadline: float
    until: int | None = None  # the epoch it stops after (a race's rung); None: the cell's last
    attempt: int = 1
    lost_on: list[str] = field(default_factory=list)
    stopped: tuple[str, str] | None = None  # the status and reason to record when the runner stopped it
    signal: int | None = None  # the runner's signal that stopped it


@dataclass
class Runner:
    """One run's loop: up to ``executor.slots`` cells at a time; each cell is placed, submitted, watched, and
    its outcome recorded when it ends. A race (:class:`harness.race.Race`) runs the loop once per rung."""

    cells: list[CellSpec]
    out: Path
    manager: Manager
    executor: Executor
    resume: bool
    build: bool
    hint: str
    outcomes: dict[str, Outcome]  # the latest per cell id
    running: list[Running] = field(default_factory=list)
    placer: Placer | None = None
    ended: list[Outcome] = field(default_factory=list)  # of the current :meth:`run_cells`
    racing: bool = False

    def run(self, race: RaceSettings | None = None) -> None:
        """Run the cells to the end, or as a race."""
        from harness.race import Race

        self.racing = race is not None
        self.executor.open([c for c in self.cells
                            if not (self.resume and finished(CellStore(self.out, c.id), self.racing))], self.out)
        try:
            if race:
                Race(self, race).run()
            else:
                self.run_cells(self.cells)
        except Interrupted as exc:
            self.stop_all(exc.signum)
            raise
        finally:
            self.executor.close()

    def run_cells(self, cells: Sequence[CellSpec], until: int | None = None, resume: bool | None = None
                  ) -> list[Outcome]:
        """Run ``cells`` (each to epoch ``until`` where that is before its last; ``resume``: continue what they
        recorded, default the run's ``--resume``); their outcomes."""
        pending, self.ended = deque(cells), []
        resume = self.resume if resume is None else resume
        while pending or self.running:
            while pending and len(self.running) < max(1, self.executor.slots):
                cell = pending.popleft()
                self.start(cell, until if until and until < cell.epochs else None, resume)
            for running in list(self.running):
                self.watch(running)
            if self.running:
                time.sleep(POLL_S)
        return self.ended

    def outcome(self, outcome: Outcome) -> None:
        self.outcomes[outcome.cell.id] = outcome
        self.ended.append(outcome)

    def start(self, cell: CellSpec, until: int | None, resume: bool) -> None:
        """Keep the cell's earlier result (resuming: a finished one, or a pause at or past ``until``), record it
        skipped, or submit it."""
        store = CellStore(self.out, cell.id)
        previous = store.result() if resume else None
        if previous and (keeps(previous, self.racing) or (previous["status"] == "paused" and until
                                             and recorded_epochs(store) >= until)):
            self.outcome(Outcome(cell, previous["status"], previous["reason"]))
            return
        env: dict[str, Any] = {}
        try:
            reason, env, python = self.place(cell)
            if reason:
                store.write_cell(cell)
                store.write_result(cell, env, "skipped", reason)
                tqdm.write(f"[{cell.id}] skipped: {reason}")
                self.outcome(Outcome(cell, "skipped", reason))
                return
            store.write_cell(cell)
            store.result_path.unlink(missing_ok=True)  # a failed earlier attempt's result must not outlive this one
            self.submit(cell, store, env, python, resume, until)
        except OSError as exc:  # e.g. the disk filled up: this cell fails, the suite goes on
            self.failed_recording(cell, store, env, exc)

    def place(self, cell: CellSpec) -> tuple[str | None, dict[str, Any], str | None]:
        """Why the cell cannot run (None: it can), the fingerprint its result carries, and its interpreter."""
        verdict = self.executor.place(cell)
        if verdict is not None:
            return verdict[0], verdict[1], None
        if self.placer is None:
            self.placer = Placer(self.cells, self.manager, self.build, self.hint, log=tqdm.write)
        place = self.placer.place(cell)
        reason = place.blocker
        if not reason and nodes(cell) > 1:
            reason = f"spans {nodes(cell)} nodes (backend parameter nnodes): run it with harness run --executor ray"
        return reason or (None if place.python else "no environment to run it in"), place.env, place.python

    def submit(self, cell: CellSpec, store: CellStore, env: dict[str, Any], python: str | None, resume: bool,
               until: int | None = None, attempt: int = 1, lost_on: Sequence[str] = ()) -> None:
        bar = tqdm(total=cell.epochs, initial=recorded_epochs(store), desc=cell.id, leave=True, unit="epoch",
                   dynamic_ncols=True, disable=None)
        deadline = time.monotonic() + (cell.timeout_s or math.inf)
        # ``until`` only when set: an executor written before races keeps working for full runs
        job = self.executor.submit(cell, self.out, resume, python, **({"until": until} if until else {}))
        self.running.append(Running(cell, job, store, env, python, bar, deadline, until, attempt, list(lost_on)))

    def watch(self, running: Running) -> None:
        """Move the cell's bar, stop it past its time limit, and record it once it has ended."""
        cell, store = running.cell, running.store
        running.bar.update(recorded_epochs(store) - running.bar.n)
        if running.stopped is None and time.monotonic() > running.deadline:
            self.executor.cancel(running.job, signal.SIGTERM)
            running.stopped = ("failed", f"timeout after {cell.timeout_s:g} s ({recorded_epochs(store)} of "
                                         f"{cell.epochs} epochs done)")
        ended = self.executor.poll(running.job)
        if ended is None:
            return
        running.bar.close()
        try:  # until recorded, the cell stays in ``running``: a signal meanwhile has stop_all() record it
            if ended.lost and running.stopped is None and running.signal is None and self.retry(running, ended):
                self.running.remove(running)
                return
            if running.signal is not None:
                done = f"after {recorded_epochs(store)} of {cell.epochs} epochs"
                running.stopped = ("interrupted", f"interrupted on node {', '.join(ended.nodes)} {done}" if ended.nodes
                                   else f"interrupted by {signal.Signals(running.signal).name} {done}")
            record(store, cell, running.env, ended, running.stopped)
        except OSError as exc:
            self.running.remove(running)
            self.failed_recording(cell, store, running.env, exc)
            return
        self.running.remove(running)
        result = store.result()
        if result:
            self.outcome(Outcome(cell, result["status"], result["reason"]))

    def retry(self, running: Running, ended: CellExit) -> bool:
        """After a lost machine: run the cell again (from its checkpoint) while retries are left and a machine
        can take it; else record it failed naming the machines. Whether it was run again."""
        cell, store = running.cell, running.store
        lost_on = [*running.lost_on, *ended.nodes]
        verdict = self.executor.place(cell)
        left = verdict[0] if verdict else None
        if running.attempt > self.executor.retries or left:
            why = f"; no other node can take it: {left}" if left else ""
            store.write_result(cell, running.env, "failed",
                               f"{ended.lost} after {recorded_epochs(store)} of {cell.epochs} epochs; tried "
                               f"{running.attempt} time(s), on node(s) {', '.join(lost_on)}{why}")
            tqdm.write(f"[{cell.id}] failed: {ended.lost}")
            return False
        tries = f"{running.attempt}/{self.executor.retries}"
        tqdm.write(f"[{cell.id}] {ended.lost}; retrying on {ended.retry_on} ({tries})")
        for message in store.prepare_resume():
            log.warning(message)
        store.result_path.unlink(missing_ok=True)
        self.submit(cell, store, running.env, running.python, True, running.until, running.attempt + 1, lost_on)
        return True

    def stop_all(self, signum: int) -> None:
        """Forward the runner's signal to every running cell and record each as it ends."""
        for running in self.running:
            running.signal = signum
            with suppress(Exception):  # one executor's trouble must not leave the other cells running
                self.executor.cancel(running.job, signum)
        deadline = time.monotonic() + STOP_WAIT_S
        while self.running and time.monotonic() < deadline:
            for running in list(self.running):
                self.watch(running)
            time.sleep(0.1)
        for running in self.running:  # not even stopped: say so rather than leave it unrecorded
            reason = f"interrupted by {signal.Signals(signum).name}; its executor did not confirm the stop"
            with suppress(OSError):
                record(running.store, running.cell, running.env, CellExit(None), ("interrupted", reason))
            self.outcome(Outcome(running.cell, "interrupted", reason))

    def failed_recording(self, cell: CellSpec, store: CellStore, env: dict[str, Any], exc: OSError) -> None:
        failure = f"{type(exc).__name__} while recording the cell: {exc}"
        tqdm.write(f"[{cell.id}] failed: {failure}")
        with suppress(OSError):
            store.write_result(cell, env, "failed", failure)
        self.outcome(Outcome(cell, "failed", failure))
