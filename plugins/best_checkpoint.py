"""The ``best-checkpoint`` plugin: the training state of the epoch with the best validation accuracy.

Off unless the suite sets the ``save_best`` option. The checkpoint lives in the cell's ``best/``
with ``best.json`` (its epoch and validation accuracy), which a resumed cell reads so that only a
better epoch replaces it.
"""

from __future__ import annotations

import json
from pathlib import Path

from harness.api import CellSpec, EpochRecord, RunContext
from harness.hookspecs import hookimpl

_best: dict[str, float] = {}  # cell id -> the best validation accuracy saved


def _record(out_dir: Path) -> Path:
    return out_dir / "best" / "best.json"


@hookimpl
def harness_run_start(cell: CellSpec, context: RunContext) -> None:
    if cell.options.get("save_best"):
        record = _record(context.out_dir)
        _best[cell.id] = json.loads(record.read_text())["val_acc"] if record.exists() else -1.0


@hookimpl
def harness_epoch_end(cell: CellSpec, record: EpochRecord, context: RunContext) -> None:
    if not cell.options.get("save_best") or record.val_acc <= _best.get(cell.id, -1.0):
        return
    _best[cell.id] = record.val_acc
    best = context.out_dir / "best"
    if context.rank == 0:
        best.mkdir(parents=True, exist_ok=True)
    context.save_checkpoint(best)
    if context.rank == 0:
        _record(context.out_dir).write_text(json.dumps({"epoch": record.epoch, "val_acc": record.val_acc}))
