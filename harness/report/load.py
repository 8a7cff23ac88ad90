"""Read result directories (schema version 1) into pandas DataFrames.

The report depends on the result schema only (:mod:`harness.store`, which reads every
result file): it reads directories written on other machines by other versions of the
harness, ignores fields it does not know, and refuses a newer ``schema_version`` with an
error that names the file. Anything else it cannot read (a corrupt line, a bad field, an
unreadable ``result.json``) is warned about (:class:`harness.store.ResultWarning`, naming
the file and line), shown in the cell's warnings, and skipped; the rest is kept.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from harness import store
from harness.store import CELL_FILES, INCOMPLETE, SCHEMA_VERSION, SchemaError

STATUSES = store.REPORT_STATUSES
__all__ = ["CELL_FILES", "SCHEMA_VERSION", "STATUSES", "ReportError", "Results", "find_cell_dirs", "load_results",
           "read_epochs"]

#: Epoch fields the report needs; anything else in a record is kept if known, ignored if not.
REQUIRED_EPOCH_FIELDS = ("epoch", "val_acc", "epoch_time_s", "train_time_s", "train_images", "wall_time_s")
OPTIONAL_EPOCH_FIELDS = (
    "train_loss",
    "train_acc",
    "val_loss",
    "lr",
    "throughput_img_s",
    "data_wait_s",
    "peak_mem_gb",
    "optimizer_steps",
)
EPOCH_FIELDS = REQUIRED_EPOCH_FIELDS + OPTIONAL_EPOCH_FIELDS
#: The environment of results whose fingerprint names none (a name such as "colossalai" tells venvs apart).
DEFAULT_ENVIRONMENT = "default"


class ReportError(ValueError):
    """Bad or unreadable result data; the message names the file (and field)."""


@dataclass
class Results:
    """One row per cell run (``cells``) and one row per completed epoch (``epochs``).

    Both carry ``run`` (the cell directory), the key that joins them. Observers' numbers are the epochs'
    ``extra.<plugin>.<field>`` columns and the cells' ``extra`` dicts (run-level, keyed the same way).
    """

    cells: pd.DataFrame
    epochs: pd.DataFrame


def find_cell_dirs(root: Path) -> list[Path]:
    """Every directory under ``root`` (or ``root`` itself) that holds a cell's result files."""
    if not root.exists():
        raise ReportError(f"{root}: no such directory")
    if not root.is_dir():
        raise ReportError(f"{root}: not a directory")
    return store.find_cell_dirs(root)


def _number(value: Any, where: str, name: str, problems: list[str] | None = None) -> float:
    """``value`` as a float; a non-number is warned about (and listed in ``problems``) and read as NaN."""
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _problem(problems, f"{where}: field {name!r} must be a number, got {value!r}; read as empty")
        return math.nan
    return float(value)


def _problem(problems: list[str] | None, message: str) -> None:
    store.warn(message)
    if problems is not None:
        problems.append(message)


def read_epochs(path: Path, problems: list[str] | None = None) -> list[dict[str, Any]]:
    """Epoch records of one ``epochs.jsonl``.

    A line that is not an epoch record (torn, corrupt, no epoch number) is warned about and
    skipped; a missing or non-numeric metric is warned about and read as NaN. ``problems``
    collects the warnings for the cell's row.
    """
    records = []
    for line in store.read_lines(path):
        where = f"{path}:{line.number}"
        if line.record is None:
            _problem(problems, f"{where}: {line.problem}; line skipped")
            continue
        data = line.record
        missing = [f for f in REQUIRED_EPOCH_FIELDS if f not in data]
        if missing:
            _problem(problems, f"{where}: missing field(s) {', '.join(map(repr, missing))}; read as empty")
        record: dict[str, Any] = {f: _number(data.get(f), where, f, problems) for f in EPOCH_FIELDS}
        record.update(_extra(data, where, problems))
        record["_cell"] = data.get("cell")
        record["_env"] = data.get("env")
        records.append(record)
    return records


def _extra(data: Mapping[str, Any], where: str, problems: list[str] | None) -> dict[str, float]:
    """Observers' numbers (``extra``: ``{"<plugin>.<field>": number}``) as ``{"extra.<plugin>.<field>": float}``."""
    extra = data.get("extra") or {}
    if not isinstance(extra, dict):
        _problem(problems, f"{where}: field 'extra' must be an object, got {type(extra).__name__}; ignored")
        return {}
    return {f"extra.{key}": _number(value, where, f"extra.{key}", problems) for key, value in extra.items()}


def _mapping(data: Mapping[str, Any] | None, key: str, where: str, problems: list[str]) -> dict[str, Any]:
    value = (data or {}).get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        _problem(problems, f"{where}: field {key!r} must be an object, got {type(value).__name__}; ignored")
        return {}
    return value


def _load_cell(cell_dir: Path, source: Path, index: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One cell row and its epoch rows; ``index`` is the position of ``source`` among the directories given."""
    result_path, epochs_path, spec_path = (cell_dir / name for name in CELL_FILES)
    problems: list[str] = []
    epochs = read_epochs(epochs_path, problems)
    result, result_problem = store.read_result(result_path)
    if result_problem:
        problems.append(f"{result_path}: {result_problem.split(': ', 1)[-1]}")
    result = result or {}
    spec = store.read_json(spec_path) or {}
    where = str(result_path if result else epochs_path if epochs else spec_path)
    first_cell, first_env = (epochs[0]["_cell"], epochs[0]["_env"]) if epochs else (None, None)
    cell = _mapping(result, "cell", where, problems) or (first_cell if isinstance(first_cell, dict) else None) or spec
    env = _mapping(result, "env", where, problems) or (first_env if isinstance(first_env, dict) else None) or {}
    summary = _mapping(result, "summary", where, problems)
    reason: str | None
    if result_problem or not result:
        status = INCOMPLETE
        reason = result_problem or "no result.json: run interrupted or still running"
    else:
        status, reason = result["status"], result.get("reason")
    corrupt = store.read_lines(cell_dir / store.CORRUPT_EPOCHS, refuse_newer=False)
    if corrupt:
        problems.append(f"{len(corrupt)} unreadable line(s) of epochs.jsonl were set aside in "
                        f"{cell_dir / store.CORRUPT_EPOCHS}")
    warnings = summary.get("warnings") or []
    if not isinstance(warnings, list):
        _problem(problems, f"{where}: field 'summary.warnings' must be a list; ignored")
        warnings = []
    try:
        nproc = int(cell.get("nproc") or 1)
    except (TypeError, ValueError):
        _problem(problems, f"{where}: field 'cell.nproc' must be an integer, got {cell.get('nproc')!r}; read as 1")
        nproc = 1
    row = {
        "run": str(cell_dir),
        "source": str(source),
        "source_index": index,
        "cell_id": result.get("cell_id") or cell.get("id") or cell_dir.name,
        "suite": cell.get("suite"),
        "model": cell.get("model"),
        "recipe": str(cell.get("recipe_name") or ""),
        "loader": cell.get("loader"),
        "backend": cell.get("backend"),
        "precision": cell.get("precision"),
        "nproc": nproc,
        "seed": cell.get("seed"),
        "environment": str(env.get("environment") or DEFAULT_ENVIRONMENT),
        "status": status,
        "reason": reason,
        "started_at": result.get("started_at"),
        "finished_at": result.get("finished_at"),
        "optimizer_steps_per_epoch_recorded": _number(summary.get("optimizer_steps_per_epoch"), where,
                                                      "summary.optimizer_steps_per_epoch", problems),
        "train_flops_per_image": _number(summary.get("train_flops_per_image"), where, "summary.train_flops_per_image",
                                         problems),
        "recorded_warnings": [*(str(w.get("message")) if isinstance(w, dict) else str(w) for w in warnings),
                              *problems],
        "warning_codes": [str(w.get("code")) for w in warnings if isinstance(w, dict)],
        "extra": _extra(summary, where, problems),  # run-level observer numbers, {"extra.<plugin>.<field>": x}
        "cell": cell,
        "env": env,
    }
    for record in epochs:
        record["run"] = row["run"]
        del record["_cell"], record["_env"]
    return row, epochs


CELL_COLUMNS = [
    "run", "source", "source_index", "cell_id", "suite", "model", "recipe", "loader", "backend", "precision", "nproc",
    "seed", "environment", "status", "reason",
    "started_at", "finished_at", "optimizer_steps_per_epoch_recorded", "train_flops_per_image",
    "recorded_warnings", "warning_codes", "extra", "cell", "env",
]  # fmt: skip


def load_results(dirs: Iterable[Path | str]) -> Results:
    """Read every cell under ``dirs`` (result store roots, cell directories, or folders of them)."""
    rows: list[dict[str, Any]] = []
    epochs: list[dict[str, Any]] = []
    for index, d in enumerate(dirs):
        root = Path(d)
        cell_dirs = find_cell_dirs(root)
        if not cell_dirs:
            raise ReportError(f"{root}: no results found (no {', '.join(CELL_FILES)} under it)")
        for cell_dir in cell_dirs:
            try:
                row, records = _load_cell(cell_dir, root, index)
            except SchemaError as exc:
                raise ReportError(str(exc)) from None
            except OSError as exc:
                raise ReportError(f"{exc.filename or cell_dir}: cannot read ({exc.strerror or exc})") from None
            rows.append(row)
            epochs.extend(records)
    cells = pd.DataFrame(rows, columns=CELL_COLUMNS).drop_duplicates("run", ignore_index=True)
    extra = sorted({key for record in epochs for key in record if key.startswith("extra.")})
    epoch_frame = pd.DataFrame(epochs, columns=["run", *EPOCH_FIELDS, *extra])
    epoch_frame = epoch_frame.drop_duplicates(["run", "epoch"], keep="last", ignore_index=True)
    return Results(cells=cells, epochs=epoch_frame.sort_values(["run", "epoch"], ignore_index=True))
