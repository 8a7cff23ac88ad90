"""The ``tensorboard`` plugin: every epoch's record as TensorBoard scalars (observers' fields as
``extra/<plugin>.<field>``), in the cell's ``tensorboard/``.

Off unless the suite (or ``harness run --tensorboard``) sets the ``tensorboard`` option.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from harness.api import CellSpec, EpochRecord, RunContext
from harness.hookspecs import hookimpl

_writers: dict[str, Any] = {}


@hookimpl
def harness_run_start(cell: CellSpec, context: RunContext) -> None:
    if cell.options.get("tensorboard") and context.rank == 0:
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        _writers[cell.id] = SummaryWriter(log_dir=str(context.out_dir / "tensorboard"))


@hookimpl
def harness_epoch_end(cell: CellSpec, record: EpochRecord) -> None:
    writer = _writers.get(cell.id)
    if writer is None:
        return
    fields = {**asdict(record), **{f"extra/{key}": value for key, value in record.extra.items()}}
    for name, value in fields.items():
        if name not in ("epoch", "extra"):
            writer.add_scalar(name, value, record.epoch)
    writer.flush()


@hookimpl
def harness_run_end(cell: CellSpec) -> None:
    writer = _writers.pop(cell.id, None)
    if writer is not None:
        writer.close()
