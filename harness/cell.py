"""The cell process: ``python -m harness.cell CELL_JSON --out OUT [--nproc N] [--resume] [--until EPOCH]``.

Started by the runner, once per cell, under the interpreter of the cell's environment
(:mod:`harness.envs`), so CUDA, DALI and Colossal-AI global state, crashes and
out-of-memory stay contained. With ``--nproc N > 1`` it runs torchrun in-process, which starts
the N ranks (each again ``python -m harness.cell``); the local executors instead start the ranks
themselves, each ``python -m harness.cell`` with torchrun's variables (:mod:`harness.launch`).
Every one of these processes dies with its parent, even when the parent is SIGKILLed.

``python -m harness.cell --check CELLS_JSON`` (a list of cells) answers for an environment the
runner does not run in: it prints, as JSON, this environment's fingerprint per device and each
cell's capability verdict (:func:`harness.capability.blocker`, None when it can run).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import multiprocessing
import os
import shutil
import signal
import sys
import traceback
from contextlib import redirect_stdout, suppress
from pathlib import Path
from typing import Any

import torch

from harness import capability, contract, envinfo
from harness.api import CannotRun, CellSpec, DataSpec, DeviceInfo
from harness.engine import Trainer
from harness.paths import PARENT_ENV, setting  # the pid this process must die with: the runner, or torchrun
from harness.plugins import Manager, get_manager
from harness.store import CellStore, now

PR_SET_PDEATHSIG = 1
FULL_DISK_BYTES = 1 << 20  # less free space than this where results go: the disk is called full


def die_with_parent() -> None:
    """Have Linux SIGKILL this process when its parent dies; exit now if it already has (Linux only)."""
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if str(os.getppid()) != setting(PARENT_ENV, str(os.getppid())):  # died before prctl took effect
        os._exit(1)


def launch(cell_json: Path, out: Path, nproc: int, resume: bool, until: int | None = None, nnodes: int = 1,
           node_rank: int = 0, endpoint: str | None = None, rdzv_id: str = "harness") -> int:
    """Start ``nproc`` ranks of the cell with torchrun, in this process; they die with it. With ``nnodes > 1``
    this node's torchrun joins a c10d rendezvous at ``endpoint`` (HOST:PORT, hosted by node 0's torchrun) with
    the other nodes' (:mod:`harness.fleet` starts one per node). The rendezvous, not ``node_rank``, assigns
    global ranks; whichever node holds rank 0 writes the results."""
    from torch.distributed.run import main as torchrun

    os.environ[PARENT_ENV] = str(os.getpid())
    where = ["--standalone"] if nnodes == 1 else [
        f"--nnodes={nnodes}", "--rdzv_backend=c10d", f"--rdzv_endpoint={endpoint}",
        f"--rdzv_id={rdzv_id}", f"--rdzv_conf=is_host={int(node_rank == 0)}"]
    torchrun([*where, f"--nproc_per_node={nproc}", "-m", "harness.cell", str(cell_json), "--out", str(out),
              *(["--resume"] if resume else []), *([f"--until={until}"] if until else [])])
    return 0


def run(cell: CellSpec, out: Path, resume: bool, until: int | None = None) -> int:
    """Train ``cell`` and record its result (``until``: stop after that epoch, recorded ``paused``: a race's
    rung); return the process exit code."""
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
        loader = manager.loaders()[cell.loader_plugin]
        data = contract.checked_splits(loader.impl.build(DataSpec(
            root=Path(cell.data) if cell.data else None, image_size=cell.image_size, batch_size=cell.recipe.batch_size,
            randaugment=cell.recipe.randaugment, seed=cell.seed, device=device, subset=cell.subset,
            rank=backend.rank, world_size=backend.world_size, params=cell.loader_params,
            min_crop_area=cell.recipe.min_crop_area)),
            manager.owner("loaders", loader))
        family = manager.family_of(cell)
        if family is None:
            where = envinfo.current_environment()["environment"]
            raise CannotRun(f"no model family builds {cell.model!r} in environment {where}")
        model = family.impl.build(cell.model, num_classes=len(data.classes), image_size=cell.image_size,
                                  **cell.model_params)
        contract.check_model(model, manager.owner("models", family), cell.model)
        summary = Trainer.create(cell, model, data, backend, store, manager, env).run(resume=resume, until=until)
    except CannotRun as exc:
        if rank == 0:
            store.write_result(cell, env, "skipped", str(exc), started_at=started)
        return 0
    except Exception as exc:
        with suppress(OSError):  # the reason below matters more than the log (e.g. on a full disk)
            store.dir.mkdir(parents=True, exist_ok=True)
            store.write_log(f"error-rank{rank}.log" if rank else "error.log", traceback.format_exc())
        if rank == 0:
            store.write_result(cell, env, "failed", failure_reason(exc, out, store), started_at=started)
        traceback.print_exc()
        return 1
    finally:
        if backend is not None:
            backend.close()
    if rank == 0 and summary["epochs"] < cell.epochs:
        store.write_result(cell, env, "paused", f"paused after {summary['epochs']} of {cell.epochs} epochs (a race's "
                           "rung)", summary=summary, started_at=started)
    elif rank == 0:
        store.write_result(cell, env, "ok", summary=summary, started_at=started)
    return 0


def failure_reason(exc: Exception, out: Path, store: CellStore) -> str:
    """The exception, its first line saying whether the disk holding the results is full (torch reports a full
    disk as an unexplained ``RuntimeError`` from its zip writer) and, before it, the errors other ranks logged
    (their failure usually is the cause, rank 0's a broken collective); the store records that first line."""
    first, newline, rest = f"{type(exc).__name__}: {exc}".partition("\n")
    with suppress(OSError):
        free = shutil.disk_usage(out).free
        if free < FULL_DISK_BYTES:
            first += f" (the disk holding {out} is full: {free} bytes free)"
    for log in sorted(store.dir.glob("error-rank*.log"), key=lambda path: path.stat().st_mtime, reverse=True):
        said = log.read_text(errors="replace").strip().splitlines()
        first = f"rank {log.stem.removeprefix('error-rank')} failed: {said[-1] if said else '?'}; rank 0: {first}"
    return first + newline + rest


def check(cells_json: Path) -> dict[str, Any]:
    """This environment's fingerprint per device and verdict per cell, for the cells listed in ``cells_json``."""
    cells = [CellSpec.from_dict(data) for data in json.loads(cells_json.read_text())]
    manager = get_manager()
    devices = {name: envinfo.device_info(name) for name in {c.device for c in cells}}
    return {"fingerprints": {name: envinfo.fingerprint(d, manager.environment()) for name, d in devices.items()},
            "blockers": {c.id: blocker(c, manager, devices[c.device]) for c in cells}}


def blocker(cell: CellSpec, manager: Manager, device: DeviceInfo) -> str | None:
    """:func:`harness.capability.blocker`, or which of the cell's plugins this environment lacks."""
    for kind, name in (("loaders", cell.loader_plugin), ("backends", cell.backend_plugin)):
        if name not in manager.registries[kind]:
            where = envinfo.current_environment()["environment"]
            return f"no {kind[:-1]} {name!r} in environment {where}{manager.broken_hint(kind, name)}"
    return capability.blocker(cell, manager, device)


def main(argv: list[str] | None = None) -> int:
    die_with_parent()
    parser = argparse.ArgumentParser(prog="python -m harness.cell")
    parser.add_argument("cell_json", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--nproc", type=int, default=1, help="ranks to start under torchrun (1: train here)")
    parser.add_argument("--nnodes", type=int, default=1, help="nodes the cell spans (each runs this command)")
    parser.add_argument("--node-rank", type=int, default=0, help="with --nnodes > 1: this node's rank")
    parser.add_argument("--rdzv-endpoint", metavar="HOST:PORT", help="with --nnodes > 1: the c10d rendezvous")
    parser.add_argument("--rdzv-id", default="harness", help="with --nnodes > 1: the rendezvous id, one per cell")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--until", type=int, metavar="EPOCH", help="stop after this epoch, recorded paused (a race)")
    parser.add_argument("--check", action="store_true",
                        help="CELL_JSON lists cells: print whether each can run in this environment, as JSON")
    args = parser.parse_args(argv)
    if args.check:
        with redirect_stdout(sys.stderr):  # what plugins print must not garble the answer
            answer = check(args.cell_json)
        print(json.dumps(answer, default=str))
        return 0
    if args.out is None:
        parser.error("--out is required")
    if args.nnodes > 1 and not args.rdzv_endpoint:
        parser.error("--nnodes > 1 needs --rdzv-endpoint")
    if args.nproc > 1 or args.nnodes > 1:
        return launch(args.cell_json, args.out, args.nproc, args.resume, args.until, args.nnodes, args.node_rank,
                      args.rdzv_endpoint, args.rdzv_id)
    cell = CellSpec.from_dict(json.loads(args.cell_json.read_text()))
    return run(cell, args.out, args.resume, args.until)


def exit_now(code: int) -> None:
    """End the cell's process with ``code``. Results are already fsynced: interpreter teardown is skipped, since
    persistent DataLoader workers with pinned memory otherwise add ~5 s per worker at exit (pytorch/pytorch#81794),
    minutes per cell. The workers are stopped first: orphaned, they notice only at their 5 s watchdog tick, and
    until then they hold the runner's output pipe open (measured: 4.9 s per cell)."""
    sys.stdout.flush()
    sys.stderr.flush()
    for child in multiprocessing.active_children():
        child.kill()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
