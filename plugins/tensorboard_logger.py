"""Lifecycle-hook plugins: TensorBoard scalars per epoch, and a best-accuracy checkpoint.

Both are off unless the suite (or ``harness run --tensorboard``) turns them on. The best
checkpoint lives in the cell's ``best/`` with ``best.json`` (its epoch and validation accuracy),
which a resumed cell reads so that only a better epoch replaces it.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from harness.api import CellSpec, EpochRecord, RunContext
from harness.hookspecs import hookimpl

_writers: dict[str, Any] = {}
_best: dict[str, float] = {}


def _best_record(out_dir: Path) -> Path:
    return out_dir / "best" / "best.json"


@hookimpl
def harness_run_start(cell: CellSpec, context: RunContext) -> None:
    if cell.options.get("save_best"):
        record = _best_record(context.out_dir)
        _best[cell.id] = json.loads(record.read_text())["val_acc"] if record.exists() else -1.0
    if cell.options.get("tensorboard") and context.rank == 0:
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        _writers[cell.id] = SummaryWriter(log_dir=str(context.out_dir / "tensorboard"))


@hookimpl
def harness_epoch_end(cell: CellSpec, record: EpochRecord, context: RunContext) -> None:
    writer = _writers.get(cell.id)
    if writer is not None:
        for name, value in asdict(record).items():
            if name != "epoch":
                writer.add_scalar(name, value, record.epoch)
        writer.flush()
    if cell.options.get("save_best") and record.val_acc > _best.get(cell.id, -1.0):
        _best[cell.id] = record.val_acc
        best = context.out_dir / "best"
        if context.rank == 0:
            best.mkdir(parents=True, exist_ok=True)
        context.save_checkpoint(best)
        if context.rank == 0:
            _best_record(context.out_dir).write_text(json.dumps({"epoch": record.epoch, "val_acc": record.val_acc}))


@hookimpl
def harness_run_end(cell: CellSpec) -> None:
    writer = _writers.pop(cell.id, None)
    if writer is not None:
        writer.close()
