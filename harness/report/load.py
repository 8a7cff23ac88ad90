"""Read result directories (schema version 1) into pandas DataFrames.

The report depends on the results model only (:mod:`harness.results`, which reads every result file):
it reads directories written on other machines by other versions of the harness, ignores fields it
does not know, and refuses a newer ``schema_version`` with an error that names the file. Anything else
it cannot read (a corrupt line, a bad field, an unreadable ``result.json``) is warned about
(:class:`harness.results.ResultWarning`, naming the file and line), shown in the cell's warnings, and
skipped; the rest is kept. Observers' numeric ``extra`` fields become epoch columns of their own name.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from harness import results
from harness.results import EPOCH_FIELDS, SchemaError, StoreError

STATUSES = results.REPORT_STATUSES
__all__ = ["STATUSES", "ReportError", "Results", "load_results"]

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


def _load_cell(cell_dir: Path, source: Path, index: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One cell row and its epoch rows; ``index`` is the position of ``source`` among the directories given."""
    cell = results.read_cell(cell_dir)
    epochs = [{"run": str(cell_dir), **record.metrics, "extra": record.extra} for record in cell.epochs()]
    spec, summary, problems = cell.spec, cell.summary, cell.problems
    where = str(cell_dir / "result.json")
    warnings = summary.get("warnings") or []
    try:
        nproc = int(spec.get("nproc") or 1)
    except (TypeError, ValueError):
        message = f"{where}: field 'cell.nproc' must be an integer, got {spec.get('nproc')!r}; read as 1"
        results.warn(message)
        problems.append(message)
        nproc = 1
    row = {
        "run": str(cell_dir),
        "source": str(source),
        "source_index": index,
        "cell_id": cell.cell_id,
        "suite": spec.get("suite"),
        "model": spec.get("model"),
        "recipe": str(spec.get("recipe_name") or ""),
        "loader": spec.get("loader"),
        "backend": spec.get("backend"),
        "precision": spec.get("precision"),
        "nproc": nproc,
        "seed": spec.get("seed"),
        "environment": str(cell.env.get("environment") or DEFAULT_ENVIRONMENT),
        "status": cell.status,
        "reason": cell.reason,
        "started_at": cell.started_at,
        "finished_at": cell.finished_at,
        "optimizer_steps_per_epoch_recorded": summary.get("optimizer_steps_per_epoch", math.nan),
        "train_flops_per_image": summary.get("train_flops_per_image", math.nan),
        "recorded_warnings": [*(str(w.get("message")) if isinstance(w, dict) else str(w) for w in warnings),
                              *problems],
        "warning_codes": [str(w.get("code")) for w in warnings if isinstance(w, dict)],
        "disqualified": [str(w.get("message")) for w in warnings if isinstance(w, dict) and w.get("disqualifies")],
        "extra": summary.get("extra") or {},
        "race": cell.race,
        "cell": spec,
        "env": cell.env,
    }
    return row, epochs


CELL_COLUMNS = [
    "run", "source", "source_index", "cell_id", "suite", "model", "recipe", "loader", "backend", "precision", "nproc",
    "seed", "environment", "status", "reason",
    "started_at", "finished_at", "optimizer_steps_per_epoch_recorded", "train_flops_per_image",
    "recorded_warnings", "warning_codes", "disqualified", "extra", "race", "cell", "env",
]  # fmt: skip


def load_results(dirs: Iterable[Path | str]) -> Results:
    """Read every cell under ``dirs`` (result store roots, cell directories, or folders of them)."""
    rows: list[dict[str, Any]] = []
    epochs: list[dict[str, Any]] = []
    for index, d in enumerate(dirs):
        root = Path(d)
        try:
            cell_dirs = results.find_cells(root)
        except StoreError as exc:
            raise ReportError(str(exc)) from None
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
    epoch_frame = pd.DataFrame(epochs, columns=["run", *EPOCH_FIELDS, "extra"])
    epoch_frame = epoch_frame.drop_duplicates(["run", "epoch"], keep="last", ignore_index=True)
    return Results(cells=cells, epochs=epoch_frame.sort_values(["run", "epoch"], ignore_index=True))
