"""The result store and its schema: the one module that writes and reads result files.

Layout (schema version 1, documented in docs/results.md)::

    OUT/.lock                          held (flock) by the ``harness run`` writing OUT
    OUT/run.json                       ids of the cells the run was asked to run
    OUT/cells/<cell_id>/cell.json      the cell's parameters
    OUT/cells/<cell_id>/epochs.jsonl   one JSON object per completed epoch, flushed at once
    OUT/cells/<cell_id>/result.json    status (ok / skipped / failed / interrupted), reason and summary
    OUT/cells/<cell_id>/checkpoint.pt  the last epoch's training state (for --resume)
    OUT/cells/<cell_id>/epochs.corrupt.jsonl   lines of epochs.jsonl that could not be read, set aside

Writers (runner, cell process, engine) and ``--resume`` go through this module; every file is read
through the results model, :mod:`harness.results` (tolerant and loud; a newer ``schema_version`` refused).
Nothing here imports torch at module level (the report and compare read results without it).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from harness.api import CellSpec, EpochRecord, Recipe
from harness.results import (
    CORRUPT_EPOCHS,
    SCHEMA_VERSION,
    STATUSES,
    Line,
    SchemaError,
    StoreError,
    read_json,
    read_lines,
    read_result,
    warn,
)

LOCK_FILE = ".lock"
#: A recorded reason is one line of at most this many characters (the longest deliberate ones, skip reasons
#: with their hints, are ~300); a longer or multi-line reason's full text goes to :data:`REASON_LOG`.
REASON_CHARS = 500
REASON_LOG = "reason.log"
#: CellSpec fields whose change makes stored results a different experiment (``--resume`` compares them).
SPEC_KEYS = ("model", "loader", "backend", "precision", "model_plugin", "loader_plugin", "backend_plugin", "recipe",
             "epochs", "image_size", "subset", "seed", "data", "nproc", "model_params", "loader_params",
             "backend_params", "allow_emulated")
#: Fields added to a spec key's table since results were first written, with the value they had before.
SUB_KEY_DEFAULTS = {"recipe": {f.name: f.default for f in fields(Recipe)}}


class OutputLocked(StoreError):
    """Another ``harness run`` holds the output directory."""


# ---------------------------------------------------------------- writing


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def timestamp() -> str:
    """A local ``YYYYmmdd-HHMMSS`` for names of things moved aside."""
    return time.strftime("%Y%m%d-%H%M%S")


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON atomically (:func:`_write_atomically`)."""
    _write_atomically(path, json.dumps(data, indent=2, default=str).encode("utf-8", "backslashreplace"))


def _write_atomically(path: Path, data: bytes) -> None:
    """A temporary file, fsync, then rename: readers see the old file or the new one, and the temporary file
    never outlives a failure (a full disk)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: Path, data: bytes) -> None:
    """Write a file's bytes atomically: a result file that came from elsewhere (a Ray node, harness/fleet.py)."""
    _write_atomically(path, data)


def write_text(path: Path, text: str) -> None:
    """Write a log: any text (tracebacks naming non-UTF-8 file names included) is written, never refused."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", errors="backslashreplace") as fh:
        fh.write(text)


def _append_line(path: Path, line: str) -> None:
    """Append one line and fsync; a torn last line left by a killed writer is first closed off with a newline."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("ab+") as fh:
        if fh.seek(0, os.SEEK_END) > 0:
            fh.seek(-1, os.SEEK_END)
            if fh.read(1) != b"\n":
                fh.write(b"\n")
        fh.write(line.encode("utf-8", "backslashreplace") + b"\n")
        fh.flush()
        os.fsync(fh.fileno())


def _rewrite(path: Path, lines: Iterable[str]) -> None:
    _write_atomically(path, "".join(line + "\n" for line in lines).encode("utf-8", "backslashreplace"))


# ---------------------------------------------------------------- reading


def read_epochs(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, record)`` of every readable epoch record, in file order; each bad line is warned about."""
    records = []
    for line in read_lines(path):
        if line.problem:
            warn(f"{path}:{line.number}: {line.problem}; line skipped")
        else:
            assert line.record is not None
            records.append((line.number, line.record))
    return records


# ---------------------------------------------------------------- one cell


class CellStore:
    """Reads and writes one cell's directory."""

    def __init__(self, out: Path, cell_id: str) -> None:
        self.out = Path(out)
        self.dir = self.out / "cells" / cell_id
        self.epochs_path = self.dir / "epochs.jsonl"
        self.result_path = self.dir / "result.json"
        self.checkpoint_path = self.dir / "checkpoint.pt"
        self.corrupt_path = self.dir / CORRUPT_EPOCHS

    def write_cell(self, cell: CellSpec) -> None:
        write_json(self.dir / "cell.json", cell.describe())

    @contextmanager
    def checkpoint(self, main: bool = True) -> Iterator[Path]:
        """Write a checkpoint atomically: yield a temporary directory to fill, then rotate it into
        ``checkpoint.pt`` (the previous one is ``checkpoint.pt.old`` until the rename is done). A write that
        fails (a full disk) leaves the previous checkpoint and no temporary directory. Every process of a
        cell enters; only the ``main`` one creates, rotates and cleans up."""
        final = self.checkpoint_path
        tmp, old = final.with_name(final.name + ".tmp"), final.with_name(final.name + ".old")
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        try:
            yield tmp
        except BaseException:
            if main:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        if main:
            if final.exists():
                final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)

    def write_log(self, name: str, text: str) -> None:
        """Write ``name`` (e.g. ``error.log``) in the cell's directory; undecodable characters are escaped."""
        write_text(self.dir / name, text)

    def append_epoch(self, cell: CellSpec, env: dict[str, Any], record: EpochRecord) -> None:
        line = {"schema_version": SCHEMA_VERSION, "cell_id": cell.id, "cell": cell.describe(), "env": env,
                **asdict(record)}
        _append_line(self.epochs_path, json.dumps(line, default=str))

    def epochs(self) -> list[dict[str, Any]]:
        """The readable epoch records in file order (bad lines are warned about and skipped)."""
        return [record for _, record in read_epochs(self.epochs_path)]

    def set_aside(self, lines: Iterable[Line], why: str) -> None:
        """Append ``lines`` to ``epochs.corrupt.jsonl``: one object with the line's number, problem and text."""
        for line in lines:
            _append_line(self.corrupt_path, json.dumps({"line": line.number, "problem": line.problem or why,
                                                        "text": line.text, "moved_at": now()}))

    def truncate_epochs(self, keep: int) -> list[str]:
        """Keep the epoch rows up to epoch ``keep`` (a resumed cell rewrites what its checkpoint lacks).

        Lines that cannot be read are moved to ``epochs.corrupt.jsonl``, never dropped, and the
        valid rows around them are kept as they were. Returns one message per line moved.
        """
        lines = read_lines(self.epochs_path, refuse_newer=False)
        if not lines:
            return []
        bad = [line for line in lines if line.problem]
        self.set_aside(bad, "unreadable")
        kept = [line.text for line in lines if line.record is not None and line.record["epoch"] <= keep]
        _rewrite(self.epochs_path, kept)
        return [f"{self.epochs_path}:{line.number}: {line.problem}; moved to {self.corrupt_path.name}"
                for line in bad]

    def write_result(self, cell: CellSpec, env: dict[str, Any], status: str, reason: str | None = None,
                     summary: dict[str, Any] | None = None, started_at: str | None = None,
                     finished_at: str | None = None, race: dict[str, Any] | None = None) -> None:
        """Write ``result.json`` (``race``: the cell's part in a race, :mod:`harness.race`)."""
        if status not in STATUSES:
            raise ValueError(f"status {status!r}: expected one of {', '.join(STATUSES)}")
        reason = self.brief(reason)
        write_json(self.result_path, {
            "schema_version": SCHEMA_VERSION,
            "cell_id": cell.id,
            "cell": cell.describe(),
            "env": env,
            "status": status,
            "reason": reason,
            "summary": summary or {},
            "started_at": started_at,
            "finished_at": finished_at or now(),
            **({"race": race} if race else {}),
        })

    def brief(self, reason: str | None) -> str | None:
        """``reason`` as recorded: its first line, at most :data:`REASON_CHARS` long; when that cuts anything,
        the full text goes to the cell's :data:`REASON_LOG`, which the line names."""
        if reason is None:
            return None
        first = (reason.strip().splitlines() or [""])[0].rstrip()
        if first == reason and len(reason) <= REASON_CHARS:
            return reason
        try:
            self.write_log(REASON_LOG, reason)
            where = f" [... full text: cells/{self.dir.name}/{REASON_LOG}]"
        except OSError as exc:  # e.g. a full disk: the reason is still recorded
            where = f" [... cut; {REASON_LOG} could not be written: {exc.strerror or exc}]"
        return first[:max(REASON_CHARS - len(where), 0)] + where

    def result(self) -> dict[str, Any] | None:
        """The cell's result, or None when absent or unusable (warned about)."""
        try:
            return read_result(self.result_path)[0]
        except SchemaError as exc:
            warn(str(exc))
            return None

    # -- resuming ------------------------------------------------------------------------------

    def spec_changes(self, cell: CellSpec) -> list[str] | None:
        """What differs between the stored ``cell.json`` and ``cell`` (None when nothing is stored)."""
        if not (self.dir / "cell.json").exists():
            return None
        stored = read_json(self.dir / "cell.json")
        if stored is None:
            return ["cell.json unreadable"]
        return spec_changes(stored, cell.describe())

    def move_aside(self) -> Path:
        """Rename the cell's directory to ``cells/<id>.old-<timestamp>``; return the new path."""
        base = self.dir.with_name(f"{self.dir.name}.old-{timestamp()}")
        target, n = base, 1
        while target.exists():
            target, n = base.with_name(f"{base.name}-{n}"), n + 1
        self.dir.rename(target)
        return target

    def prepare_resume(self) -> list[str]:
        """Before a resumed cell starts: set unreadable lines aside, keep only a checkpoint the rows agree with.

        A checkpoint agrees when the kept rows hold its epoch's row with the same ``wall_time_s``
        (the engine appends an epoch's row, then checkpoints it). The newest agreeing one
        (``checkpoint.pt``, else ``checkpoint.pt.old``) is kept for the engine to resume from;
        one that disagrees is renamed ``<name>.stale-<timestamp>``. With none agreeing the cell
        restarts from epoch 1, and its old rows are kept as ``epochs.stale-<timestamp>.jsonl``.
        Returns what was done, one message per action.
        """
        messages = []
        lines = read_lines(self.epochs_path, refuse_newer=False)
        bad = [line for line in lines if line.problem]
        if bad:
            self.set_aside(bad, "unreadable")
            _rewrite(self.epochs_path, [line.text for line in lines if line.record is not None])
            messages += [f"{self.epochs_path}:{line.number}: {line.problem}; moved to {self.corrupt_path.name}"
                         for line in bad]
        rows = {line.record["epoch"]: line.record for line in lines if line.record is not None}
        candidates = [p for p in (self.checkpoint_path, self.checkpoint_path.with_name("checkpoint.pt.old"))
                      if (p / "trainer.pt").exists()]
        agreeing = None
        for path in candidates:
            if _checkpoint_agrees(path, rows):
                agreeing = path
                break
            stale = path.with_name(f"{path.name}.stale-{timestamp()}")
            path.rename(stale)
            messages.append(f"{path}: its epoch's row is missing or differs in {self.epochs_path.name}; "
                            f"not resumed from, kept as {stale.name}")
        if candidates and agreeing is None and rows:
            kept = self.epochs_path.with_name(f"epochs.stale-{timestamp()}.jsonl")
            self.epochs_path.rename(kept)
            messages.append(f"{self.dir.name}: no checkpoint agrees with the epoch rows; the cell restarts from "
                            f"epoch 1 and its old rows are kept in {kept.name}")
        return messages


def _checkpoint_agrees(path: Path, rows: Mapping[int, Mapping[str, Any]]) -> bool:
    import torch  # only a resume reads checkpoints

    try:
        state = torch.load(path / "trainer.pt", weights_only=True)
    except Exception:  # an unreadable checkpoint agrees with nothing
        return False
    epoch = state.get("epoch") if isinstance(state, dict) else None
    row = rows.get(epoch) if isinstance(epoch, int) else None
    wall, recorded = (state.get("wall_time_s"), row.get("wall_time_s")) if row else (None, None)
    return (isinstance(wall, (int, float)) and isinstance(recorded, (int, float))
            and math.isclose(wall, recorded, rel_tol=1e-9, abs_tol=1e-9))


def spec_changes(stored: Mapping[str, Any], new: Mapping[str, Any], keys: Iterable[str] = SPEC_KEYS) -> list[str]:
    """``"key old -> new"`` for every field of ``keys`` that differs between two ``cell.json`` objects."""
    new = json.loads(json.dumps(dict(new), default=str))  # as it would read back from cell.json
    changes = []
    for key in keys:
        if key not in stored:  # written before the key existed: nothing to compare against
            continue
        before, after = stored.get(key), new.get(key)
        if before == after:
            continue
        if isinstance(before, dict) and isinstance(after, dict):
            before = {**SUB_KEY_DEFAULTS.get(key, {}), **before}  # written before a field existed: its default
            for sub in sorted(set(before) | set(after), key=str):
                if before.get(sub) != after.get(sub):
                    changes.append(f"{key}.{sub} {before.get(sub)!r} -> {after.get(sub)!r}")
        else:
            changes.append(f"{key} {before!r} -> {after!r}")
    return changes


# ---------------------------------------------------------------- the output directory


class OutputLock:
    """An exclusive lock (:mod:`filelock`: ``flock`` on Unix, ``msvcrt`` on Windows) on ``OUT/.lock``, held while a
    ``harness run`` writes OUT.

    The file holds the holder's pid, host and command line, for the message a second run gets.
    The file itself is left in place (removing it would let two runs lock two different files).
    """

    def __init__(self, out: Path, command: str) -> None:
        self.path = Path(out) / LOCK_FILE
        holder = f"pid {os.getpid()} on {socket.gethostname()} since {now()}: {command}"

        def write_holder(fd: int) -> None:
            os.ftruncate(fd, 0)
            os.write(fd, holder.encode("utf-8", "backslashreplace") + b"\n")

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.lock: FileLock | None = FileLock(self.path, timeout=0, preserve_lock_file=True,
                                                  on_acquired=write_holder)
            self.lock.acquire()
        except Timeout:
            held = self.path.read_bytes().decode("utf-8", "backslashreplace").strip() or "unknown process"
            self.lock = None
            raise OutputLocked(f"{out} is in use by another harness run ({held}); wait for it to finish "
                               "or choose another --out") from None
        except OSError as exc:
            self.lock = None
            raise StoreError(f"{out}: cannot use as the output directory ({exc.strerror or exc})") from None

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def __del__(self) -> None:  # a lock bound to a local variable lasts as long as the function holding it
        if hasattr(self, "lock"):
            self.release()

    def __enter__(self) -> OutputLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
