"""Lifecycle-hook plugins: TensorBoard scalars per epoch, and a best-accuracy checkpoint.

Both are off unless the suite (or ``harness run --tensorboard``) turns them on.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from harness.api import CellSpec, EpochRecord, RunContext
from harness.hookspecs import hookimpl

_writers: dict[str, Any] = {}
_best: dict[str, float] = {}


@hookimpl
def harness_run_start(cell: CellSpec, context: RunContext) -> None:
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


@hookimpl
def harness_run_end(cell: CellSpec) -> None:
    writer = _writers.pop(cell.id, None)
    if writer is not None:
        writer.close()
