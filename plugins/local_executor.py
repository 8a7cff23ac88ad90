"""Executors on this machine: ``local`` (one cell after another, the default) and ``pool`` (``--workers N``
cells at once, each pinned to its share of the CPUs, and on CUDA to its share of the GPUs)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.api import CellExit, CellSpec, ExecutorError, usable_cpus
from harness.hookspecs import hookimpl
from harness.store import CellStore

if TYPE_CHECKING:
    from harness.launch import CellProcess
    from harness.warm import Launcher


@dataclass
class LocalExecutor:
    """Each cell in a process group of its own, under the interpreter the runner placed it in."""

    slots: int = 1
    retries: int = 0
    launcher: Launcher | None = None  # forks cells from a warm interpreter per environment (harness.warm)

    def expand(self, cells: list[CellSpec]) -> list[CellSpec]:
        return cells

    def open(self, cells: list[CellSpec], out: Path) -> None:
        from harness.warm import Launcher  # imported here: cell processes load this plugin too

        self.launcher = Launcher(tag=str(out))

    def place(self, cell: CellSpec) -> None:
        return None  # the runner places cells in their environments on this machine

    def submit(self, cell: CellSpec, out: Path, resume: bool, python: str | None, until: int | None = None) -> Any:
        from harness.launch import CellProcess  # imported here: cell processes load this plugin too

        assert python is not None, "the runner places local cells"
        return CellProcess.start(cell, CellStore(out, cell.id).dir / "cell.json", out, resume, python,
                                 launcher=self.launcher, until=until)

    def poll(self, job: Any) -> CellExit | None:
        return job.poll()

    def cancel(self, job: Any, signum: int) -> None:
        job.signal(signum)

    def close(self) -> None:
        if self.launcher is not None:
            self.launcher.close()


def split(items: Sequence[int], parts: int) -> list[list[int]]:
    """``items`` in ``parts`` contiguous shares, as even as can be (the first ones one longer)."""
    size, extra = divmod(len(items), parts)
    shares, start = [], 0
    for index in range(parts):
        end = start + size + (index < extra)
        shares.append(list(items[start:end]))
        start = end
    return shares


@dataclass
class PoolJob:
    process: CellProcess
    worker: int


@dataclass
class PoolExecutor(LocalExecutor):
    """``slots`` cells at once. Worker ``i`` owns the ``i``-th share of this process's CPUs (its cells are pinned
    to them, with as many OpenMP threads) and, when CUDA devices are visible, the ``i``-th share of them
    (``CUDA_VISIBLE_DEVICES``)."""

    cpus: list[list[int]] = field(default_factory=list)
    gpus: list[list[int]] = field(default_factory=list)
    free: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.free = list(range(self.slots))

    def submit(self, cell: CellSpec, out: Path, resume: bool, python: str | None,
               until: int | None = None) -> PoolJob:
        from harness.launch import CellProcess

        assert python is not None, "the runner places local cells"
        worker = self.free.pop(0)
        env = {"OMP_NUM_THREADS": str(len(self.cpus[worker]))}
        if self.gpus and cell.device != "cpu":
            env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, self.gpus[worker]))
        try:
            process = CellProcess.start(cell, CellStore(out, cell.id).dir / "cell.json", out, resume, python,
                                        cpus=self.cpus[worker], env=env, prefix=f"[{worker}] ",
                                        launcher=self.launcher, until=until)
        except BaseException:
            self.free.insert(0, worker)
            raise
        return PoolJob(process, worker)

    def poll(self, job: PoolJob) -> CellExit | None:
        ended = job.process.poll()
        if ended is not None and job.worker not in self.free:
            self.free.append(job.worker)
        return ended

    def cancel(self, job: PoolJob, signum: int) -> None:
        job.process.signal(signum)


def cuda_devices() -> int:
    """CUDA devices visible to this process (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


class Local:
    help = "this machine, one cell after another (the default)"

    def configure(self, group: argparse._ArgumentGroup) -> None:
        pass

    def create(self, args: argparse.Namespace, manager: Any) -> LocalExecutor:
        return LocalExecutor()


class Pool:
    help = "this machine, --workers cells at once, each pinned to its share of the CPUs (and GPUs)"

    def configure(self, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--workers", type=int, metavar="N",
                           help="with --executor pool: cells at once (default: one per GPU, else 2)")

    def create(self, args: argparse.Namespace, manager: Any) -> PoolExecutor:
        cpus, gpus = sorted(os.sched_getaffinity(0)), cuda_devices()
        workers = args.workers or gpus or 2
        if workers < 1:
            raise ExecutorError(f"--workers {workers}: give at least 1")
        if workers > usable_cpus():
            raise ExecutorError(f"--workers {workers}: this process may use {usable_cpus()} CPU(s); each worker "
                                "needs one")
        if gpus and workers > gpus:
            raise ExecutorError(f"--workers {workers}: this machine has {gpus} CUDA device(s), one per worker at most")
        return PoolExecutor(slots=workers, cpus=split(cpus, workers), gpus=split(range(gpus), workers) if gpus else [])


@hookimpl
def register_executors(register: Any) -> None:
    register("local", Local())
    register("pool", Pool())
