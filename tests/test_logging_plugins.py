"""The built-in lifecycle plugins: TensorBoard scalars per epoch and the best-accuracy checkpoint."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from test_engine import small_cell

from harness.cell import run


def test_tensorboard_scalars_and_best_checkpoint(photos: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cell = replace(small_cell(photos, epochs=2, subset=64), options={"tensorboard": True, "save_best": True})
    assert run(cell, tmp_path, resume=False) == 0
    cell_dir = tmp_path / "cells" / cell.id
    events = EventAccumulator(str(cell_dir / "tensorboard"))
    events.Reload()
    assert {"val_acc", "train_loss", "throughput_img_s", "lr"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("val_acc")] == [1, 2]
    assert (cell_dir / "best" / "torch.pt").stat().st_size > 0
