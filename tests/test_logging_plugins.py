"""The built-in lifecycle plugins: TensorBoard scalars per epoch and the best-accuracy checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from test_engine import small_cell

from harness.cell import run
from harness.store import CellStore, write_json


def test_tensorboard_scalars_and_best_checkpoint(generated_photos: Path, tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cell = replace(small_cell(generated_photos, epochs=2, subset=64), options={"tensorboard": True, "save_best": True})
    assert run(cell, tmp_path, resume=False) == 0
    cell_dir = tmp_path / "cells" / cell.id
    events = EventAccumulator(str(cell_dir / "tensorboard"))
    events.Reload()
    assert {"val_acc", "train_loss", "throughput_img_s", "lr"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("val_acc")] == [1, 2]
    assert (cell_dir / "best" / "torch.pt").stat().st_size > 0


def test_a_resumed_cell_replaces_the_best_checkpoint_only_with_a_better_epoch(generated_photos: Path,
                                                                               tmp_path: Path) -> None:
    cell = replace(small_cell(generated_photos, epochs=2, subset=64), options={"save_best": True})
    assert run(cell, tmp_path, resume=False) == 0
    store = CellStore(tmp_path, cell.id)
    longer = replace(cell, epochs=4)
    write_json(tmp_path / "longer.json", longer.describe())
    resumed = subprocess.run(  # a new process, as the runner starts it
        [sys.executable, "-m", "harness.cell", str(tmp_path / "longer.json"), "--out", str(tmp_path), "--resume"],
        capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    accuracies = [e["val_acc"] for e in store.epochs()]
    assert len(accuracies) == 4
    best = json.loads((store.dir / "best" / "best.json").read_text())
    assert best == {"epoch": accuracies.index(max(accuracies)) + 1, "val_acc": max(accuracies)}
