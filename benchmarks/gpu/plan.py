"""Helpers for validate.sh: size the long run from the short pass, and print the final table.

    python benchmarks/gpu/plan.py epochs SHORT_DIR SECONDS_LEFT SHORT_WALL   -> "PRECISION EPOCHS"
    python benchmarks/gpu/plan.py table SUMMARY_CSV DIR...        -> short table of every cell
"""
from __future__ import annotations

import itertools
import json
import statistics
import sys
from pathlib import Path

import pandas as pd

MAX_EPOCHS = 200  # the tutorial's full run


def epoch_walls(cell: Path) -> list[float]:
    """Wall seconds of each completed epoch (training + validation), from the store's epochs.jsonl."""
    rows = [json.loads(line) for line in (cell / "epochs.jsonl").read_text().splitlines() if line.strip()]
    walls = [r["wall_time_s"] for r in rows]
    if len(walls) > 1 and all(b > a for a, b in itertools.pairwise(walls)):
        return [b - a for a, b in itertools.pairwise(walls)]
    return [r["epoch_time_s"] for r in rows]


def cell_overhead_s(short: Path, short_wall: float) -> float:
    """Seconds per cell process not spent in epochs: start, decode cache, model, FLOP count and exit.

    Taken from the short pass's wall time, not from result.json: a cell process can take long after
    writing its result to exit (DataLoader workers with persistent_workers + pin_memory wait 5 s each).
    """
    cells = [c for c in (short / "cells").iterdir() if (c / "epochs.jsonl").exists()]
    in_epochs = sum(json.loads(line)["epoch_time_s"] for c in cells
                    for line in (c / "epochs.jsonl").read_text().splitlines() if line.strip())
    return max(short_wall - in_epochs, 0.0) / max(len(cells), 1)


def plan_epochs(short: Path, seconds_left: float, short_wall: float) -> tuple[str, int]:
    """The faster of bf16/fp16 and how many epochs of it fit in ``seconds_left`` (10 % margin)."""
    timings = {}
    for cell in sorted((short / "cells").iterdir()):
        spec = json.loads((cell / "cell.json").read_text())
        done = (cell / "result.json").exists() and json.loads((cell / "result.json").read_text())["status"] == "ok"
        if spec["precision"] in ("bf16", "fp16") and done:
            timings[spec["precision"]] = statistics.median(epoch_walls(cell)[-3:])
    if not timings:
        raise SystemExit(f"{short}: no finished bf16/fp16 cell to size the long run from")
    precision = min(timings, key=timings.__getitem__)
    epochs = int((seconds_left - 1.2 * cell_overhead_s(short, short_wall)) * 0.9 / timings[precision])
    return precision, max(0, min(MAX_EPOCHS, epochs))


def table(summary_csv: Path) -> str:
    """Key columns of the report's summary, one row per cell."""
    df = pd.read_csv(summary_csv)
    cols = {"run": "pass", "precision": "prec", "status": "status", "epochs": "epochs", "epoch_time_s": "epoch_s",
            "throughput_img_s": "img/s", "data_wait_pct": "data_wait_%", "peak_mem_gb": "mem_GB", "mfu": "MFU",
            "best_val_acc": "best_val_acc"}
    df = df[[c for c in cols if c in df.columns]].rename(columns=cols)
    if "pass" in df:
        df["pass"] = df["pass"].astype(str).map(lambda s: Path(s).parent.parent.name)  # short or long
    return df.to_string(index=False, float_format=lambda v: f"{v:.4g}")


def main(argv: list[str]) -> int:
    if argv[:1] == ["epochs"] and len(argv) == 4:
        precision, epochs = plan_epochs(Path(argv[1]), float(argv[2]), float(argv[3]))
        print(precision, epochs)
        return 0
    if argv[:1] == ["table"] and len(argv) == 2:
        print(table(Path(argv[1])))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
