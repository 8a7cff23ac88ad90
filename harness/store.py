"""The result store and its schema: the one module that writes and reads result files.

Layout (schema version 1, documented in docs/results.md)::

    OUT/.lock                          held (flock) by the ``harness run`` writing OUT
    OUT/run.json                       ids of the cells the run was asked to run
    OUT/cells/<cell_id>/cell.json      the cell's parameters
    OUT/cells/<cell_id>/epochs.jsonl   one JSON object per completed epoch, flushed at once
    OUT/cells/<cell_id>/result.json    status (ok / skipped / failed / interrupted), reason and summary
    OUT/cells/<cell_id>/checkpoint.pt  the last epoch's training state (for --resume)
    OUT/cells/<cell_id>/epochs.corrupt.jsonl   lines of epochs.jsonl that could not be read, set aside

Writers (runner, cell process, engine) and readers (``harness report``, ``harness compare``,
``--resume``) all go through this module. Reading is tolerant and loud: a line or file that
cannot be read is reported with a :class:`ResultWarning` naming the file (and line) and
skipped, everything readable is kept; only a newer ``schema_version`` is refused
(:class:`SchemaError`), because its fields may not mean what this version thinks.
Nothing here imports torch at module level (the report and compare read results without it).
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
import shutil
import socket
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from harness.api import CellSpec, EpochRecord, Recipe

SCHEMA_VERSION = 1
#: What ``result.json`` may record. Readers derive one more, :data:`INCOMPLETE`.
STATUSES = ("ok", "skipped", "failed", "interrupted")
#: A cell without a usable ``result.json`` (still running, killed, or its result unreadable).
INCOMPLETE = "incomplete"
REPORT_STATUSES = (*STATUSES, INCOMPLETE)
CELL_FILES = ("result.json", "epochs.jsonl", "cell.json")
CORRUPT_EPOCHS = "epochs.corrupt.jsonl"
LOCK_FILE = ".lock"
#: A recorded reason is one line of at most this many characters (the longest deliberate ones, skip reasons
#: with their hints, are ~300); a longer or multi-line reason's full text goes to :data:`REASON_LOG`.
REASON_CHARS = 500
REASON_LOG = "reason.log"
#: Suffix of a cell directory moved aside by ``--rerun-changed`` (``cells/<id>.old-<timestamp>``).
ASIDE = re.compile(r"\.old-\d{8}-\d{6}(-\d+)?$")
#: CellSpec fields whose change makes stored results a different experiment (``--resume`` compares them).
SPEC_KEYS = ("model", "loader", "backend", "precision", "model_plugin", "loader_plugin", "backend_plugin", "recipe",
             "epochs", "image_size", "subset", "seed", "data", "nproc", "model_params", "loader_params",
             "backend_params", "allow_emulated")
#: Fields added to a spec key's table since results were first written, with the value they had before.
SUB_KEY_DEFAULTS = {"recipe": {f.name: f.default for f in fields(Recipe)}}


class ResultWarning(UserWarning):
    """Something in a result directory could not be read and was skipped; the message names it."""


class StoreError(ValueError):
    """The result store cannot be used as asked; the message names the file or cell (exit code 2)."""


class SchemaError(StoreError):
    """A result file has a newer ``schema_version`` than this harness reads."""


class OutputLocked(StoreError):
    """Another ``harness run`` holds the output directory."""


def warn(message: str) -> None:
    warnings.warn(ResultWarning(message), stacklevel=3)


def show_warnings_briefly() -> None:
    """Format every :class:`ResultWarning` as one ``harness: warning: ...`` line (for the command line).

    Only the formatting changes (``warnings.formatwarning``): filters and ``catch_warnings`` work as usual.
    """
    original = warnings.formatwarning
    if getattr(original, "_harness_brief", False):
        return

    def brief(message: Warning | str, category: type[Warning], filename: str, lineno: int,
              line: str | None = None) -> str:
        if issubclass(category, ResultWarning):
            return f"harness: warning: {message}\n"
        return original(message, category, filename, lineno, line)

    brief._harness_brief = True  # type: ignore[attr-defined]
    warnings.formatwarning = brief


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


@dataclass(frozen=True)
class Line:
    """One non-blank line of a JSON Lines file: its record, or why it has none."""

    number: int  # 1-based
    text: str  # as read (undecodable bytes backslash-escaped)
    record: dict[str, Any] | None
    problem: str | None = None


def version_problem(data: Mapping[str, Any], where: str) -> str | None:
    """Why ``data``'s ``schema_version`` is unusable (None if fine); raise :class:`SchemaError` when newer."""
    version = data.get("schema_version")
    if version is None:
        return "missing field 'schema_version'"
    if not isinstance(version, int) or isinstance(version, bool):
        return f"field 'schema_version' must be an integer, got {version!r}"
    if version > SCHEMA_VERSION:
        raise SchemaError(f"{where}: schema_version {version} is newer than this harness reads ({SCHEMA_VERSION}); "
                          "upgrade harness to read it")
    if version < 1:
        return f"unknown schema_version {version}"
    return None


def epoch_problem(data: Any, where: str) -> str | None:
    """Why a parsed ``epochs.jsonl`` line is not an epoch record (None if it is)."""
    if not isinstance(data, dict):
        return f"expected a JSON object, got {type(data).__name__}"
    problem = version_problem(data, where)
    if problem:
        return problem
    epoch = data.get("epoch")
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 1:
        return f"field 'epoch' must be a positive integer, got {epoch!r}"
    return None


def read_lines(path: Path, refuse_newer: bool = True) -> list[Line]:
    """Every non-blank line of an ``epochs.jsonl``, parsed and checked; [] when the file is absent.

    With ``refuse_newer`` a record of a newer schema raises :class:`SchemaError`; otherwise it is
    a line with a problem like any other.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    chunks = raw.split(b"\n")
    lines = []
    for number, chunk in enumerate(chunks, 1):
        if not chunk.strip():
            continue
        text = chunk.decode("utf-8", "backslashreplace")
        where = f"{path}:{number}"
        try:
            data = json.loads(chunk.decode("utf-8"))
        except UnicodeDecodeError:
            lines.append(Line(number, text, None, "not UTF-8"))
            continue
        except json.JSONDecodeError as exc:
            torn = number == len(chunks)  # no newline after it: the writer was killed mid-line
            lines.append(Line(number, text, None, f"{'torn last line, ' if torn else ''}not valid JSON ({exc})"))
            continue
        try:
            problem = epoch_problem(data, where)
        except SchemaError:
            if refuse_newer:
                raise
            problem = f"schema_version {data.get('schema_version')} is newer than this harness reads"
        lines.append(Line(number, text, None if problem else data, problem))
    return lines


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


def latest_per_epoch(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last record of each epoch number (a resumed run may repeat one), by epoch."""
    by_epoch = {r["epoch"]: r for r in records}
    return [by_epoch[e] for e in sorted(by_epoch)]


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object file; None when absent; None with a warning when unreadable or not an object."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        warn(f"{path}: unreadable ({exc}); ignored")
        return None
    if not isinstance(data, dict):
        warn(f"{path}: expected a JSON object, got {type(data).__name__}; ignored")
        return None
    return data


def read_result(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """``(result, problem)`` of a ``result.json``: ``(None, None)`` when absent.

    Unreadable files give ``(None, problem)``; an unknown status gives the data with a problem
    (the cell then counts as :data:`INCOMPLETE`). Problems are warned about; a newer schema raises.
    """
    if not path.exists():
        return None, None
    data = read_json(path)
    if data is None:
        return None, f"{path.name} unreadable"
    problem = version_problem(data, str(path))
    if problem:
        warn(f"{path}: {problem}; ignored")
        return None, f"{path.name}: {problem}"
    if data.get("status") not in STATUSES:
        problem = f"field 'status' must be one of {', '.join(STATUSES)}, got {data.get('status')!r}"
        warn(f"{path}: {problem}")
        return data, f"{path.name}: {problem}"
    return data, None


def is_set_aside(name: str) -> bool:
    """A cell directory name that ``--rerun-changed`` moved aside (readers skip it unless pointed at it)."""
    return bool(ASIDE.search(name))


def find_cell_dirs(root: Path) -> list[Path]:
    """Every directory under ``root`` (or ``root`` itself) holding a cell's files, set-aside ones left out."""
    found = {p.parent for name in CELL_FILES for p in root.rglob(name)}
    return sorted(d for d in found if not any(is_set_aside(part) for part in d.relative_to(root).parts))


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
                     summary: dict[str, Any] | None = None, started_at: str | None = None) -> None:
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
            "finished_at": now(),
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


def spec_changes(stored: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """``"key old -> new"`` for every :data:`SPEC_KEYS` field that differs between two ``cell.json`` objects."""
    new = json.loads(json.dumps(dict(new), default=str))  # as it would read back from cell.json
    changes = []
    for key in SPEC_KEYS:
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
    """An exclusive ``flock`` on ``OUT/.lock``, held while a ``harness run`` writes OUT.

    The file holds the holder's pid, host and command line, for the message a second run gets.
    The file itself is left in place (removing it would let two runs lock two different files).
    """

    def __init__(self, out: Path, command: str) -> None:
        self.path, self.fd = Path(out) / LOCK_FILE, None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(f"{out}: cannot use as the output directory ({exc.strerror or exc})") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(self.fd, 4096, 0).decode("utf-8", "backslashreplace").strip() or "unknown process"
            os.close(self.fd)
            self.fd = None
            raise OutputLocked(f"{out} is in use by another harness run ({holder}); wait for it to finish "
                               "or choose another --out") from None
        holder = f"pid {os.getpid()} on {socket.gethostname()} since {now()}: {command}"
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, holder.encode("utf-8", "backslashreplace") + b"\n", 0)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the only descriptor releases the lock
            self.fd = None

    def __del__(self) -> None:  # a lock bound to a local variable lasts as long as the function holding it
        self.release()

    def __enter__(self) -> OutputLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
