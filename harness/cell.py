"""The cell process: ``python -m harness.cell CELL_JSON --out OUT [--resume]``.

Started by the runner, once per cell (under ``torchrun`` when ``nproc > 1``), so CUDA,
DALI and Colossal-AI global state, crashes and out-of-memory stay contained.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import traceback
from pathlib import Path

import torch

from harness import envinfo
from harness.api import CannotRun, CellSpec, DataSpec
from harness.engine import Trainer
from harness.plugins import get_manager
from harness.store import CellStore, now


def run(cell: CellSpec, out: Path, resume: bool) -> int:
    """Train ``cell`` and record its result; return the process exit code."""
    manager = get_manager()
    device = envinfo.device_info(cell.device)
    env = envinfo.fingerprint(device, manager.environment())
    store, started = CellStore(out, cell.id), now()
    rank = int(os.environ.get("RANK", 0))
    backend = None
    try:
        backend = manager.backends()[cell.backend_plugin].impl.create(device, cell.precision, cell.backend_params,
                                                                      recipe=cell.recipe)
        torch.manual_seed(cell.seed)
        data = manager.loaders()[cell.loader_plugin].impl.build(DataSpec(
            root=Path(cell.data) if cell.data else None, image_size=cell.image_size, batch_size=cell.recipe.batch_size,
            randaugment=cell.recipe.randaugment, seed=cell.seed, device=device, subset=cell.subset,
            rank=backend.rank, world_size=backend.world_size, params=cell.loader_params))
        family = manager.model_family(cell.model)
        model = family.impl.build(cell.model, num_classes=len(data.classes), image_size=cell.image_size,
                                  **cell.model_params)
        summary = Trainer(cell, model, data, backend, store, manager, env).run(resume=resume)
    except CannotRun as exc:
        if rank == 0:
            store.write_result(cell, env, "skipped", str(exc), started_at=started)
        return 0
    except Exception as exc:
        if rank == 0:
            store.dir.mkdir(parents=True, exist_ok=True)
            (store.dir / "error.log").write_text(traceback.format_exc())
            store.write_result(cell, env, "failed", f"{type(exc).__name__}: {exc}", started_at=started)
        traceback.print_exc()
        return 1
    finally:
        if backend is not None:
            backend.close()
    if rank == 0:
        store.write_result(cell, env, "ok", summary=summary, started_at=started)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.cell")
    parser.add_argument("cell_json", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args(argv)
    cell = CellSpec.from_dict(json.loads(args.cell_json.read_text()))
    return run(cell, args.out, args.resume)


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Results are already fsynced. Skip interpreter teardown: persistent DataLoader workers with
    # pinned memory otherwise add ~5 s per worker at exit (pytorch/pytorch#81794), minutes per cell.
    # Stop the workers first: orphaned, they notice only at their 5 s watchdog tick, and until then
    # they hold the runner's output pipe open (measured: 4.9 s per cell).
    for child in multiprocessing.active_children():
        child.kill()
    os._exit(code)
