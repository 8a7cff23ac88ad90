"""Read result directories (schema version 1) into pandas DataFrames.

The report depends on the result schema only: it reads directories written on other
machines by other versions of the harness, ignores fields it does not know, and refuses
a newer ``schema_version`` with an error that names the file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

SCHEMA_VERSION = 1
CELL_FILES = ("result.json", "epochs.jsonl", "cell.json")
STATUSES = ("ok", "skipped", "failed", "incomplete")

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


class ReportError(ValueError):
    """Bad or unreadable result data; the message names the file (and field)."""


@dataclass
class Results:
    """One row per cell run (``cells``) and one row per completed epoch (``epochs``).

    Both carry ``run`` (the cell directory), the key that joins them.
    """

    cells: pd.DataFrame
    epochs: pd.DataFrame


def find_cell_dirs(root: Path) -> list[Path]:
    """Every directory under ``root`` (or ``root`` itself) that holds a cell's result files."""
    if not root.exists():
        raise ReportError(f"{root}: no such directory")
    if not root.is_dir():
        raise ReportError(f"{root}: not a directory")
    found = {p.parent for name in CELL_FILES for p in root.rglob(name)}
    return sorted(found)


def _check_version(data: Mapping[str, Any], where: str) -> None:
    version = data.get("schema_version")
    if version is None:
        raise ReportError(f"{where}: missing field 'schema_version'")
    if not isinstance(version, int) or isinstance(version, bool):
        raise ReportError(f"{where}: field 'schema_version' must be an integer, got {version!r}")
    if version > SCHEMA_VERSION:
        raise ReportError(
            f"{where}: schema_version {version} is newer than this harness reads ({SCHEMA_VERSION}); "
            "upgrade harness to report on it"
        )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: not valid JSON ({exc})") from exc
    except OSError as exc:
        raise ReportError(f"{path}: cannot read ({exc})") from exc
    if not isinstance(data, dict):
        raise ReportError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _number(value: Any, where: str, name: str) -> float:
    if value is None:
        return math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ReportError(f"{where}: field {name!r} must be a number, got {value!r}")
    return float(value)


def read_epochs(path: Path) -> list[dict[str, Any]]:
    """Epoch records of one ``epochs.jsonl``; a torn last line (a run killed mid-write) is dropped."""
    lines = [(n, line) for n, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    records = []
    for i, (n, line) in enumerate(lines):
        where = f"{path}:{n}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            if i == len(lines) - 1:
                break  # torn last line
            raise ReportError(f"{where}: not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise ReportError(f"{where}: expected a JSON object, got {type(data).__name__}")
        _check_version(data, where)
        missing = [f for f in REQUIRED_EPOCH_FIELDS if f not in data]
        if missing:
            raise ReportError(f"{where}: missing field(s) {', '.join(map(repr, missing))}")
        record = {f: _number(data.get(f), where, f) for f in EPOCH_FIELDS}
        record["_cell"] = data.get("cell")
        record["_env"] = data.get("env")
        records.append(record)
    return records


def _mapping(data: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ReportError(f"{where}: field {key!r} must be an object, got {type(value).__name__}")
    return value


def _load_cell(cell_dir: Path, source: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One cell row and its epoch rows."""
    result_path, epochs_path, spec_path = (cell_dir / name for name in CELL_FILES)
    epochs = read_epochs(epochs_path) if epochs_path.exists() else []
    result: dict[str, Any] = {}
    if result_path.exists():
        result = _read_json(result_path)
        _check_version(result, str(result_path))
    spec: dict[str, Any] = {}
    if spec_path.exists():
        spec = _read_json(spec_path)
    where = str(result_path if result else epochs_path if epochs else spec_path)
    cell = _mapping(result, "cell", where) or (epochs[0]["_cell"] if epochs else None) or spec
    env = _mapping(result, "env", where) or (epochs[0]["_env"] if epochs else None) or {}
    if not isinstance(cell, dict) or not isinstance(env, dict):
        raise ReportError(f"{epochs_path}: fields 'cell' and 'env' must be objects")
    summary = _mapping(result, "summary", where)
    status = result.get("status", "incomplete") if result else "incomplete"
    if status not in STATUSES:
        raise ReportError(f"{where}: field 'status' must be one of {', '.join(STATUSES[:3])}, got {status!r}")
    reason = result.get("reason") if result else "no result.json: run interrupted or still running"
    warnings = summary.get("warnings") or []
    if not isinstance(warnings, list):
        raise ReportError(f"{where}: field 'summary.warnings' must be a list")
    row = {
        "run": str(cell_dir),
        "source": str(source),
        "cell_id": result.get("cell_id") or cell.get("id") or cell_dir.name,
        "suite": cell.get("suite"),
        "model": cell.get("model"),
        "loader": cell.get("loader"),
        "backend": cell.get("backend"),
        "precision": cell.get("precision"),
        "nproc": int(cell.get("nproc") or 1),
        "status": status,
        "reason": reason,
        "started_at": result.get("started_at"),
        "finished_at": result.get("finished_at"),
        "optimizer_steps_per_epoch_recorded": _number(summary.get("optimizer_steps_per_epoch"), where, "summary"),
        "train_flops_per_image": _number(summary.get("train_flops_per_image"), where, "summary.train_flops_per_image"),
        "recorded_warnings": [str(w) for w in warnings],
        "cell": cell,
        "env": env,
    }
    for record in epochs:
        record["run"] = row["run"]
        del record["_cell"], record["_env"]
    return row, epochs


CELL_COLUMNS = [
    "run", "source", "cell_id", "suite", "model", "loader", "backend", "precision", "nproc", "status", "reason",
    "started_at", "finished_at", "optimizer_steps_per_epoch_recorded", "train_flops_per_image",
    "recorded_warnings", "cell", "env",
]  # fmt: skip


def load_results(dirs: Iterable[Path | str]) -> Results:
    """Read every cell under ``dirs`` (result store roots, cell directories, or folders of them)."""
    rows: list[dict[str, Any]] = []
    epochs: list[dict[str, Any]] = []
    for d in dirs:
        root = Path(d)
        cell_dirs = find_cell_dirs(root)
        if not cell_dirs:
            raise ReportError(f"{root}: no results found (no {', '.join(CELL_FILES)} under it)")
        for cell_dir in cell_dirs:
            row, records = _load_cell(cell_dir, root)
            rows.append(row)
            epochs.extend(records)
    cells = pd.DataFrame(rows, columns=CELL_COLUMNS).drop_duplicates("run", ignore_index=True)
    epoch_frame = pd.DataFrame(epochs, columns=["run", *EPOCH_FIELDS])
    epoch_frame = epoch_frame.drop_duplicates(["run", "epoch"], keep="last", ignore_index=True)
    return Results(cells=cells, epochs=epoch_frame.sort_values(["run", "epoch"], ignore_index=True))
