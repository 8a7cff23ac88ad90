"""The results model: what a result directory holds (schema version 1) and the one way to read it.

:func:`find_cells` finds the cell directories under any folder, :func:`read_cell` reads one cell's
``result.json`` and ``cell.json`` into a :class:`Cell`, :func:`iter_epochs` streams its
``epochs.jsonl`` as :class:`Epoch` records (one line in memory at a time) and :func:`timed_epochs` is
the warm-up rule. The report, ``harness compare`` (and ``harness ab`` through it), the Ray executor and
``--resume`` (:mod:`harness.store`, which writes these files) read result files through this module only.

Reading is tolerant and loud: what cannot be read is warned about (:class:`ResultWarning`, naming the
file and line) and skipped or read as empty, everything readable is kept; only a newer
``schema_version`` is refused (:class:`SchemaError`), because its fields may not mean what this version
thinks. ``python -m harness.results --schema`` prints the files' JSON Schema (docs/results.md).
Nothing here imports torch or pandas.
"""

from __future__ import annotations

import json
import math
import re
import sys
import typing
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from harness.api import EpochRecord

SCHEMA_VERSION = 1
#: What ``result.json`` may record. Readers derive one more, :data:`INCOMPLETE`. ``paused`` and ``eliminated`` are a
#: race's (:mod:`harness.race`): a cell stopped at a rung, to go on or to be eliminated there.
STATUSES = ("ok", "skipped", "failed", "interrupted", "paused", "eliminated")
#: A cell without a usable ``result.json`` (still running, killed, or its result unreadable).
INCOMPLETE = "incomplete"
REPORT_STATUSES = (*STATUSES, INCOMPLETE)
CELL_FILES = ("result.json", "epochs.jsonl", "cell.json")
CORRUPT_EPOCHS = "epochs.corrupt.jsonl"
#: Suffix of a cell directory moved aside by ``--rerun-changed`` (``cells/<id>.old-<timestamp>``).
ASIDE = re.compile(r"\.old-\d{8}-\d{6}(-\d+)?$")

#: The metrics of an ``epochs.jsonl`` record and their types: :class:`harness.api.EpochRecord`'s fields but ``extra``
#: (the observers' numbers, read apart: :attr:`Epoch.extra`).
EPOCH_FIELDS: dict[str, type] = {f.name: typing.get_type_hints(EpochRecord)[f.name] for f in fields(EpochRecord)
                                 if f.name != "extra"}
#: The metrics a record is warned about when it lacks them (the report's timings and accuracy need them).
REQUIRED_EPOCH_FIELDS = ("epoch", "val_acc", "epoch_time_s", "train_time_s", "train_images", "wall_time_s")
#: What ``result.json``'s ``summary`` holds (written by :meth:`harness.engine.Trainer.summary`).
SUMMARY_FIELDS: dict[str, type] = {
    "epochs": int, "best_val_acc": float, "best_epoch": int, "optimizer_steps_per_epoch": float,
    "nominal_optimizer_steps_per_epoch": float, "train_flops_per_image": float, "warnings": list, "loader_info": dict,
    "extra": dict,
}  # fmt: skip
#: What ``result.json``'s ``race`` holds for a raced cell (written by :mod:`harness.race`).
RACE_FIELDS: dict[str, Any] = {
    "rungs": ("array", "the epochs after which the race compared its cells, the last being the full training"),
    "first": ("integer", "the first rung's epochs"),
    "factor": ("number", "each rung's epochs are the previous one's times this"),
    "margin": ("number", "eliminated as slower only when surely more than this share slower"),
    "stopped_at": (["integer", "null"], "the rung (1, 2, ...) the cell was eliminated at; null when it was not"),
    "kept": ("boolean", "the user kept the cell to the end (--keep): never eliminated"),
    "evidence": ("object", "why it was eliminated: against (the configuration that beat it), metric, ratio, "
                           "low and high (95 % interval of ratio), accuracy and its rival's, epochs, text"),
}  # fmt: skip
#: The environment fingerprint's name for the CPU model (pytest-benchmark's ``cpu.brand_raw`` is read as it).
CPU_MODEL = "cpu_model"
#: The epochs a process trains first that are warm-up (compilation, caches, loader start) and left out of timings.
WARMUP_EPOCHS = 1

Rows = TypeVar("Rows", bound=Sequence[Any])


class ResultWarning(UserWarning):
    """Something in a result directory could not be read and was skipped; the message names it."""


class StoreError(ValueError):
    """The result store cannot be used as asked; the message names the file or cell (exit code 2)."""


class SchemaError(StoreError):
    """A result file has a newer ``schema_version`` than this harness reads."""


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


def _problem(problems: list[str] | None, message: str) -> None:
    warn(message)
    if problems is not None:
        problems.append(message)


# ---------------------------------------------------------------- lines and files


@dataclass(frozen=True)
class Line:
    """One non-blank line of a JSON Lines file: its record, or why it has none."""

    number: int  # 1-based
    raw: bytes  # as read, without the newline
    record: dict[str, Any] | None
    problem: str | None = None

    @property
    def text(self) -> str:
        """The line as text, undecodable bytes backslash-escaped."""
        return self.raw.decode("utf-8", "backslashreplace")


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


def iter_lines(path: Path, refuse_newer: bool = True) -> Iterator[Line]:
    """Every non-blank line of an ``epochs.jsonl``, parsed and checked, one at a time; none when the file is absent.

    With ``refuse_newer`` a record of a newer schema raises :class:`SchemaError`; otherwise it is
    a line with a problem like any other. A last line without its newline is a torn write.
    """
    try:
        fh = path.open("rb")
    except FileNotFoundError:
        return
    with fh:
        for number, chunk in enumerate(fh, 1):
            if not chunk.strip():
                continue
            torn = not chunk.endswith(b"\n")  # only the last line can lack it: the writer was killed mid-line
            chunk = chunk.rstrip(b"\n")
            try:
                data = json.loads(chunk.decode("utf-8"))
            except UnicodeDecodeError:
                yield Line(number, chunk, None, "not UTF-8")
                continue
            except json.JSONDecodeError as exc:
                yield Line(number, chunk, None, f"{'torn last line, ' if torn else ''}not valid JSON ({exc})")
                continue
            try:
                problem = epoch_problem(data, f"{path}:{number}")
            except SchemaError:
                if refuse_newer:
                    raise
                problem = f"schema_version {data.get('schema_version')} is newer than this harness reads"
            yield Line(number, chunk, None if problem else data, problem)


def read_lines(path: Path, refuse_newer: bool = True) -> list[Line]:
    """:func:`iter_lines` as a list (for rewriting a file: ``--resume``)."""
    return list(iter_lines(path, refuse_newer))


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


def status_of(blob: bytes) -> str | None:
    """The status a ``result.json``'s bytes record (None when unreadable or not a result): for files in transit."""
    try:
        data = json.loads(blob)
    except ValueError:
        return None
    status = data.get("status") if isinstance(data, dict) else None
    return status if status in STATUSES else None


# ---------------------------------------------------------------- finding cells


def is_set_aside(name: str) -> bool:
    """A cell directory name that ``--rerun-changed`` moved aside (readers skip it unless pointed at it)."""
    return bool(ASIDE.search(name))


def find_cell_dirs(root: Path) -> list[Path]:
    """Every directory under ``root`` (or ``root`` itself) holding a cell's files, set-aside ones left out."""
    found = {p.parent for name in CELL_FILES for p in root.rglob(name)}
    return sorted(d for d in found if not any(is_set_aside(part) for part in d.relative_to(root).parts))


def find_cells(root: Path | str) -> list[Path]:
    """The cell directories under ``root`` (an output directory, a cell directory, or a folder of them).

    Raises :class:`StoreError` naming ``root`` when it is missing, not a directory, or holds no results.
    """
    root = Path(root)
    if not root.exists():
        raise StoreError(f"{root}: no such directory")
    if not root.is_dir():
        raise StoreError(f"{root}: not a directory")
    found = find_cell_dirs(root)
    if not found:
        raise StoreError(f"{root}: no results found (no {', '.join(CELL_FILES)} under it)")
    return found


# ---------------------------------------------------------------- typed records


@dataclass(frozen=True)
class Epoch:
    """One epoch record as read: every metric of :data:`EPOCH_FIELDS` (NaN when missing, not a number or not
    finite), the observers' ``extra`` numbers, and the cell and environment the line names."""

    line: int
    epoch: int
    metrics: dict[str, float]
    extra: dict[str, float]
    cell: dict[str, Any] | None
    env: dict[str, Any] | None


@dataclass
class Cell:
    """One cell directory as read. ``status`` is one of :data:`REPORT_STATUSES`; ``problems`` lists what could not
    be read (each also warned about), and grows as :meth:`epochs` streams."""

    dir: Path
    cell_id: str
    status: str
    reason: str | None
    spec: dict[str, Any]  # the CellSpec (result.json's, else the first epoch's, else cell.json)
    env: dict[str, Any]  # the environment fingerprint, from the same place
    summary: dict[str, Any]  # SUMMARY_FIELDS, validated; unknown keys kept as written
    race: dict[str, Any]  # the cell's part in a race (RACE_FIELDS); empty when it was not raced
    started_at: str | None = None
    finished_at: str | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def epochs_path(self) -> Path:
        return self.dir / "epochs.jsonl"

    def epochs(self) -> Iterator[Epoch]:
        """Stream the cell's epoch records in file order (see :func:`iter_epochs`)."""
        return iter_epochs(self.epochs_path, self.problems)


def number(value: Any) -> tuple[float, str | None]:
    """``value`` as a float, or NaN and why not (absent, not a number, not finite)."""
    if value is None:
        return math.nan, "missing"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return math.nan, f"must be a number, got {value!r}"
    if not math.isfinite(value):
        return math.nan, f"is not finite ({value})"
    return float(value), None


def numbers(data: Any, where: str, name: str, problems: list[str] | None) -> dict[str, float]:
    """A flat ``{name: number}`` object such as ``extra``; entries that are not finite numbers are warned about and
    dropped."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        _problem(problems, f"{where}: field {name!r} must be an object, got {type(data).__name__}; ignored")
        return {}
    out = {}
    for key, value in data.items():
        got, why = number(value)
        if why:
            _problem(problems, f"{where}: field '{name}.{key}' {why}; ignored")
        else:
            out[str(key)] = got
    return out


def iter_epochs(path: Path, problems: list[str] | None = None) -> Iterator[Epoch]:
    """Stream the epoch records of one ``epochs.jsonl`` (linear time, one line in memory at a time).

    A line that is not an epoch record (torn, corrupt, no epoch number) is warned about and skipped;
    a missing or non-numeric metric is warned about per line and read as NaN; non-finite values
    (NaN, inf: a diverged run) read as NaN with one warning per field and file. ``problems`` collects
    the warnings (for the cell's row in the report).
    """
    not_finite: dict[str, list[int]] = {}
    for line in iter_lines(path):
        where = f"{path}:{line.number}"
        if line.record is None:
            _problem(problems, f"{where}: {line.problem}; line skipped")
            continue
        data = line.record
        missing = [name for name in REQUIRED_EPOCH_FIELDS if name not in data]
        if missing:
            _problem(problems, f"{where}: missing field(s) {', '.join(map(repr, missing))}; read as empty")
        metrics = {}
        for name in EPOCH_FIELDS:
            value: Any = data.get(name)
            if type(value) in (float, int) and math.isfinite(value):  # the common case, first (no bools)
                metrics[name] = float(value)
                continue
            metrics[name], why = number(value)
            if why and why.startswith("must"):
                _problem(problems, f"{where}: field {name!r} {why}; read as empty")
            elif why and why.startswith("is not finite"):
                not_finite.setdefault(name, []).append(line.number)
        cell, env = data.get("cell"), data.get("env")
        yield Epoch(line.number, data["epoch"], metrics, numbers(data.get("extra"), where, "extra", problems),
                    cell if isinstance(cell, dict) else None, env if isinstance(env, dict) else None)
    for name, lines in not_finite.items():
        more = f" (and {len(lines) - 1} more line(s))" if len(lines) > 1 else ""
        _problem(problems, f"{path}:{lines[0]}: field {name!r} is not finite (NaN or inf){more}; read as empty")


def latest_per_epoch(records: Iterator[Epoch] | Sequence[Epoch]) -> list[Epoch]:
    """The last record of each epoch number (a resumed run may repeat one), by epoch."""
    by_epoch = {r.epoch: r for r in records}
    return [by_epoch[e] for e in sorted(by_epoch)]


def timed_epochs(epochs: Rows, in_process: Sequence[float] | None = None) -> Rows:
    """The epochs that count for timings: neither the first :data:`WARMUP_EPOCHS` of the cell nor those of any later
    process (``epoch_in_process``: a resumed cell, a race's next rung), whose timings include warm-up; when that
    leaves none, all but the cell's first when there are more.

    ``epochs`` is sorted by epoch: a DataFrame (its ``epoch_in_process`` column, if any) or a list of metric
    mappings or of rows (``in_process``: each row's ``epoch_in_process``, NaN where unknown).
    """
    frame: Any = epochs if hasattr(epochs, "columns") else None
    if in_process is None and frame is not None:
        in_process = list(frame.get("epoch_in_process", [math.nan] * len(epochs)))
    elif in_process is None:
        in_process = [row.get("epoch_in_process", math.nan) if isinstance(row, Mapping) else math.nan
                      for row in epochs]
    keep = [i for i, n in enumerate(in_process) if i >= WARMUP_EPOCHS and not 1 <= n <= WARMUP_EPOCHS]
    if not keep:
        keep = list(range(WARMUP_EPOCHS if len(epochs) > WARMUP_EPOCHS else 0, len(epochs)))
    return typing.cast(Rows, frame.iloc[keep] if frame is not None else [epochs[i] for i in keep])


def _first_epoch_record(path: Path) -> dict[str, Any]:
    """The first readable epoch record (its cell and env stand in for a missing ``result.json``), quietly."""
    try:
        return next(line.record for line in iter_lines(path, refuse_newer=False) if line.record is not None)
    except StopIteration:
        return {}


def _mapping(data: Mapping[str, Any], key: str, where: str, problems: list[str]) -> dict[str, Any]:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        _problem(problems, f"{where}: field {key!r} must be an object, got {type(value).__name__}; ignored")
        return {}
    return value


def _summary(data: dict[str, Any], where: str, problems: list[str]) -> dict[str, Any]:
    """``summary`` with each :data:`SUMMARY_FIELDS` entry of its type (a number as a float; anything else
    dropped with a warning)."""
    out = dict(data)
    for name, kind in SUMMARY_FIELDS.items():
        if name not in data or data[name] is None:
            continue
        if name == "extra":
            out[name] = numbers(data[name], where, "summary.extra", problems)
        elif kind in (int, float):
            value, why = number(data[name])
            if why:
                _problem(problems, f"{where}: field 'summary.{name}' {why}; read as empty")
                del out[name]
            else:
                out[name] = value
        elif not isinstance(data[name], kind):
            _problem(problems, f"{where}: field 'summary.{name}' must be {_JSON_TYPES[kind]}; ignored")
            del out[name]
    return out


def read_cell(cell_dir: Path) -> Cell:
    """One cell directory's ``result.json`` and ``cell.json`` (epochs are streamed by :meth:`Cell.epochs`).

    A missing or unusable ``result.json`` makes the cell :data:`INCOMPLETE` with the problem as its reason.
    Raises :class:`SchemaError` for a newer schema.
    """
    result_path, epochs_path, spec_path = (cell_dir / name for name in CELL_FILES)
    problems: list[str] = []
    result, problem = read_result(result_path)
    if problem:
        problems.append(f"{result_path}: {problem.split(': ', 1)[-1]}")
    result = result or {}
    where = str(result_path if result else epochs_path)
    first = {} if result.get("cell") and result.get("env") else _first_epoch_record(epochs_path)
    spec = (_mapping(result, "cell", where, problems) or _mapping(first, "cell", where, problems)
            or read_json(spec_path) or {})
    env = _mapping(result, "env", where, problems) or _mapping(first, "env", where, problems)
    summary = _summary(_mapping(result, "summary", where, problems), where, problems)
    race = _mapping(result, "race", where, problems)
    status, reason = ((INCOMPLETE, problem or "no result.json: run interrupted or still running")
                      if problem or not result else (str(result["status"]), result.get("reason")))
    corrupt = sum(1 for _ in iter_lines(cell_dir / CORRUPT_EPOCHS, refuse_newer=False))
    if corrupt:
        problems.append(f"{corrupt} unreadable line(s) of epochs.jsonl were set aside in {cell_dir / CORRUPT_EPOCHS}")
    cell_id = result.get("cell_id") or spec.get("id") or cell_dir.name
    return Cell(cell_dir, str(cell_id), status, reason, spec, env, summary, race, result.get("started_at"),
                result.get("finished_at"), problems)


# ---------------------------------------------------------------- the JSON Schema


_JSON_TYPES = {int: "integer", float: "number", str: "string", bool: "boolean", dict: "object", list: "array"}
_NUMBERS = {"type": "object", "additionalProperties": {"type": "number"},
            "description": "observer fields: {'<plugin_name>.<field>': number}"}
_WARNING = {"type": "object", "required": ["code", "message"], "properties": {
    "code": {"type": "string"}, "message": {"type": "string"},
    "disqualifies": {"type": "boolean", "description": "the cell's numbers must not be trusted (never picked)"}}}


def _typed(kind: Any) -> dict[str, Any]:
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if args:  # Optional[X]
        return {"type": [_JSON_TYPES[args[0]], "null"]}
    return {"type": _JSON_TYPES[kind]}


def json_schema() -> dict[str, Any]:
    """The JSON Schema of an ``epochs.jsonl`` line and of ``result.json`` (unknown fields are allowed: readers
    ignore them)."""
    envelope = {"schema_version": {"type": "integer", "minimum": 1, "maximum": SCHEMA_VERSION},
                "cell_id": {"type": "string"}, "cell": {"type": "object", "description": "the CellSpec"},
                "env": {"type": "object", "description": "the environment fingerprint"}}
    summary = {name: _typed(kind) for name, kind in SUMMARY_FIELDS.items()}
    summary["warnings"] = {"type": "array", "items": {"anyOf": [_WARNING, {"type": "string"}]}}
    summary["extra"] = _NUMBERS
    epoch = {name: _typed(kind) for name, kind in EPOCH_FIELDS.items()}
    epoch["epoch"]["minimum"] = 1
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"harness result files, schema version {SCHEMA_VERSION}",
        "$defs": {
            "epoch": {"description": "one line of epochs.jsonl", "type": "object",
                      "required": ["schema_version", "epoch"],
                      "properties": {**envelope, **epoch, "extra": _NUMBERS}},
            "result": {"description": "result.json", "type": "object",
                       "required": ["schema_version", "status"],
                       "properties": {**envelope, "status": {"enum": list(STATUSES)},
                                      "reason": {"type": ["string", "null"]},
                                      "started_at": {"type": ["string", "null"]},
                                      "finished_at": {"type": ["string", "null"]},
                                      "summary": {"type": "object", "properties": summary},
                                      "race": {"type": "object", "description": "the cell's part in a race",
                                               "properties": {name: {"type": kind, "description": text}
                                                              for name, (kind, text) in RACE_FIELDS.items()}}}},
        },
    }


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m harness.results --schema``: print the JSON Schema."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m harness.results", description=__doc__.split("\n\n")[0])
    parser.add_argument("--schema", action="store_true", help="print the result files' JSON Schema")
    if not parser.parse_args(argv).schema:
        parser.print_help()
        return 2
    print(json.dumps(json_schema(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
