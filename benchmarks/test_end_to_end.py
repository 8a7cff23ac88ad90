"""One end-to-end smoke cell through ``harness run``: suite validation, the cell process, loader, engine, store.

A single round (a cold start of the cell process dominates it), so ``harness compare`` reports
it as "unchanged (too few samples)" unless ``HARNESS_BENCH_E2E_ROUNDS`` asks for more.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harness.plugins import Manager

LOADER, BACKEND, PRECISION = "torchvision", "torch", "fp32"

SUITE = """\
name = "bench-e2e"
description = "benchmarks/test_end_to_end.py: one small cell"
epochs = 1
image_size = {image_size}
subset = {subset}
seed = 0
device = "cpu"
recipe = {{ base = "default", batch_size = {batch_size} }}

[matrix]
model = ["{model}"]
loader = ["{loader}"]
backend = ["{backend}"]
precision = ["{precision}"]
"""


def test_end_to_end_cell(benchmark: Any, manager: Manager, settings: Any, data_root: Path, record: Any,
                         tmp_path: Path) -> None:
    if LOADER not in manager.loaders() or BACKEND not in manager.backends():
        pytest.skip(f"the built-in {LOADER} loader and {BACKEND} backend are not loaded (HARNESS_PLUGINS?)")
    suite = tmp_path / "suite.toml"
    suite.write_text(SUITE.format(image_size=settings.image_size, subset=settings.subset,
                                  batch_size=settings.batch_size, model=settings.model, loader=LOADER,
                                  backend=BACKEND, precision=PRECISION))
    env = {**os.environ, **({"OMP_NUM_THREADS": str(settings.threads)} if settings.threads else {})}
    runs: list[Path] = []

    def new_out() -> tuple[tuple[Path], dict[str, Any]]:
        runs.append(tmp_path / f"out{len(runs)}")
        return (runs[-1],), {}

    def harness_run(out: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "harness.cli", "run", "--suite", str(suite), "--data",
                               str(data_root), "--out", str(out)], env=env, capture_output=True, text=True,
                              timeout=900)

    rounds = int(os.environ.get("HARNESS_BENCH_E2E_ROUNDS", "1"))
    proc = benchmark.pedantic(harness_run, setup=new_out, rounds=rounds)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    cell_dir = next((runs[-1] / "cells").iterdir())
    result = json.loads((cell_dir / "result.json").read_text())
    assert result["status"] == "ok", result["reason"]
    epoch = json.loads((cell_dir / "epochs.jsonl").read_text().splitlines()[-1])
    record(benchmark, kind="end_to_end", cell_id=result["cell_id"], model=settings.model, loader=LOADER,
           backend=BACKEND, precision=PRECISION, epochs=1)
    benchmark.extra_info["throughput_img_s"] = epoch["throughput_img_s"]
    benchmark.extra_info["val_acc"] = epoch["val_acc"]
