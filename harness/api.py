"""Public types shared by the harness and its plugins: the plugin API, with :mod:`harness.hookspecs`.

Plugins import from here and from :mod:`harness.hookspecs` only (their tests also from
:mod:`harness.testing`); every other module of ``harness`` is internal and may change without
notice. Heavy libraries (torch, DALI, Colossal-AI) are never imported at module level here.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from harness.checkpoints import UnsafeCheckpoint, load_weights, weights_only
from harness.datasets import DataError, Dataset, Sample, discover, select

if TYPE_CHECKING:
    import torch

__all__ = [
    "API_VERSION",
    "IMAGENET_MEAN_255",
    "IMAGENET_STD_255",
    "Backend",
    "BackendPlugin",
    "CannotRun",
    "CellExit",
    "CellSpec",
    "DataError",
    "DataSpec",
    "DataSplits",
    "Dataset",
    "DeviceInfo",
    "EpochRecord",
    "Executor",
    "ExecutorError",
    "ExecutorPlugin",
    "LoaderPlugin",
    "ModelPlugin",
    "Outcome",
    "Recipe",
    "RunContext",
    "Sample",
    "UnsafeCheckpoint",
    "discover",
    "load_weights",
    "select",
    "usable_cpus",
    "weights_only",
]

#: Version of the hook API. Plugins may declare ``HARNESS_API = ">=1,<2"``.
API_VERSION = 1

def usable_cpus() -> int:
    """CPUs this process may use: its affinity mask (``taskset``, a pool worker's share, Ray), bounded by its
    cgroup's CPU quota (a container's ``--cpus``), never less than 1. Size workers and threads with this, not
    ``os.cpu_count()`` (the machine's)."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(count, math.ceil(quota) if quota else count))


def _cgroup_quota() -> float | None:
    """This process's cgroup CPU limit in CPUs (cgroup v2 ``cpu.max``, else v1 ``cpu.cfs_quota_us``), or None."""
    try:
        own = next((line.split(":", 2)[2].strip() for line in Path("/proc/self/cgroup").read_text().splitlines()
                    if line.startswith("0::")), "/")
    except OSError:
        return None
    for folder in (Path("/sys/fs/cgroup") / own.lstrip("/"), Path("/sys/fs/cgroup")):
        try:
            quota, period = (folder / "cpu.max").read_text().split()
            return None if quota == "max" else int(quota) / int(period)
        except (OSError, ValueError):
            continue
    try:
        quota_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 else None


#: Per-channel ImageNet statistics on the 0..255 scale, shared by every loader.
IMAGENET_MEAN_255 = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD_255 = (0.229 * 255, 0.224 * 255, 0.225 * 255)

class CannotRun(Exception):
    """Raised by a plugin when a cell turns out not to run here (e.g. a model it cannot wrap on this device).

    The cell is recorded as ``skipped`` with the message as its reason, not as ``failed``.
    Prefer answering in ``can_run``, which decides before the cell starts.
    """


#: The random-resized training crop's smallest share of the photo in ImageNet training (and torchvision's default).
IMAGENET_MIN_CROP_AREA = 0.08


@dataclass(frozen=True)
class DeviceInfo:
    """What the cell will run on, as far as capability checks need to know."""

    type: str  # "cpu" or "cuda"
    name: str  # "cpu" model string or e.g. "NVIDIA H100 80GB HBM3"
    capability: tuple[int, int] | None = None  # CUDA compute capability
    bf16_native: bool = False
    count: int = 1  # visible devices of this type
    fp16_native: bool = False
    isa: str | None = None  # CPUs: torch's kernel capability, e.g. "AVX2", "AVX512"

    @property
    def label(self) -> str:
        cap = f" (sm_{self.capability[0]}{self.capability[1]})" if self.capability else ""
        return f"{self.name}{cap}"


@dataclass(frozen=True)
class Recipe:
    """Optimisation recipe. ``seed`` in :mod:`harness.recipes` is the tutorial's."""

    optimizer: str = "sgd"  # "sgd" or "adamw"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "cosine-epoch"  # "cosine-epoch", "cosine-step" or "constant"
    warmup_epochs: float = 0.0
    batch_size: int = 128
    accumulation: int = 1
    clip_grad_norm: float | None = None
    label_smoothing: float = 0.0
    mixup_alpha: float = 0.0
    randaugment: bool = False
    min_crop_area: float = IMAGENET_MIN_CROP_AREA  # the random-resized crop's smallest share of the photo


@dataclass(frozen=True)
class DataSpec:
    """Everything a loader needs to build its train and validation iterables."""

    root: Path | None  # prepared train/ + validation/ folders, or raw class folders; None if --data was not given
    image_size: int
    batch_size: int  # per process
    randaugment: bool
    seed: int
    device: DeviceInfo
    subset: int | None = None  # at most this many training photos (validation: a quarter), class-balanced
    rank: int = 0
    world_size: int = 1
    params: Mapping[str, Any] = field(default_factory=dict)  # the suite's loader params
    min_crop_area: float = IMAGENET_MIN_CROP_AREA  # training crops: the recipe's ``min_crop_area``

    @property
    def data_dir(self) -> Path:
        """``root``, for loaders that read photos (``harness run`` requires ``--data`` for them)."""
        if self.root is None:
            raise DataError("this loader reads photos: pass --data DIR")
        return self.root


@dataclass
class DataSplits:
    """Batches of ``(images, labels)``.

    ``images`` are uint8 NCHW tensors (the engine normalises them once, on the
    device, with the ImageNet statistics above) or float tensors already normalised.
    ``labels`` are int64 class indices into ``classes`` (sorted class names).
    ``train`` is iterated once per epoch. If it has ``set_epoch(epoch)``, the engine
    calls it first, so shuffling and augmentation can be a pure function of
    (seed, epoch): a resumed run then sees exactly the batches an uninterrupted one saw.
    """

    train: Iterable[tuple[torch.Tensor, torch.Tensor]]
    validation: Iterable[tuple[torch.Tensor, torch.Tensor]]
    classes: list[str]
    train_size: int  # photos in this process's training shard
    validation_size: int
    info: dict[str, Any] = field(default_factory=dict)  # resolved settings (threads, prefetch, ...) to record


@runtime_checkable
class LoaderPlugin(Protocol):
    """A data loader, registered through ``register_loaders``.

    A loader that never reads ``DataSpec.root`` (generated data) sets the class attribute
    ``reads_data = False``; suites whose cells use only such loaders then run without ``--data``.
    Optional: ``check_params(params) -> str | None``, what is wrong with a suite's loader table
    (None if nothing): the suite is then rejected before anything runs, as a typo deserves.
    """

    def can_run(self, device: DeviceInfo, params: Mapping[str, Any]) -> str | None:
        """None if the loader works here with these params, else the reason it cannot."""

    def build(self, spec: DataSpec) -> DataSplits:
        """Build this process's train and validation iterables."""


@runtime_checkable
class ModelPlugin(Protocol):
    """A model family, registered through ``register_models``."""

    def knows(self, name: str) -> bool:
        """Whether this family can build the model ``name``."""

    def build(self, name: str, num_classes: int, image_size: int, **kwargs: Any) -> torch.nn.Module:
        """Build an untrained model (unless kwargs ask for pretrained weights)."""


class Backend(Protocol):
    """One training run's backend: a thin adapter, as HF Accelerate or Colossal-AI's Booster.

    The engine calls, in order: ``prepare`` once; per step ``autocast()``,
    ``backward(loss)``, ``no_sync(model)`` while accumulating, ``step(...)``;
    ``all_reduce`` for metrics; ``save``/``load`` for checkpoints; ``close`` at the end.
    """

    device: torch.device
    rank: int
    world_size: int
    warnings: list[str]  # caveats the result row should carry (e.g. slow fp16 on this GPU)

    def prepare(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer
    ) -> tuple[torch.nn.Module, torch.optim.Optimizer]: ...

    def autocast(self) -> AbstractContextManager[None]: ...

    def backward(self, loss: torch.Tensor) -> None: ...

    def no_sync(self, model: torch.nn.Module) -> AbstractContextManager[None]: ...

    def step(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, clip_grad_norm: float | None) -> None:
        """Unscale, clip, step and zero the gradients (the scaler may skip the step)."""

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over all processes (identity on one process)."""

    def save(self, directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Write model, optimizer and scaler state into ``directory`` (rank 0 writes; all ranks call)."""

    def load(self, directory: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Restore what ``save`` wrote."""

    def close(self) -> None: ...


@runtime_checkable
class BackendPlugin(Protocol):
    """A training backend family, registered through ``register_backends``.

    Optional, as for loaders: ``check_params(params) -> str | None`` validates a suite's backend table.
    """

    precisions: tuple[str, ...]

    def can_run(self, device: DeviceInfo, precision: str, nproc: int, params: Mapping[str, Any],
                recipe: Recipe | None = None) -> str | None:
        """None if this backend runs here in ``precision`` on ``nproc`` processes with ``recipe``, else why not."""

    def create(self, device: DeviceInfo, precision: str, params: Mapping[str, Any],
               recipe: Recipe | None = None) -> Backend:
        """Set up (process group, device) and return the backend for this process."""


@dataclass(frozen=True)
class CellSpec:
    """One cell of a suite's matrix, as the cell process receives it."""

    id: str
    suite: str
    model: str
    loader: str  # name as written in the suite (may be a variant of a plugin)
    backend: str
    precision: str
    loader_plugin: str
    backend_plugin: str
    epochs: int
    image_size: int
    data: str
    seed: int
    recipe: Recipe
    recipe_name: str = ""  # the recipe's name when the suite has a recipe axis
    nproc: int = 1
    subset: int | None = None
    model_plugin: str = ""  # the model family (registered name) that builds ``model``; set when the suite expands
    device: str = "auto"  # "auto", "cpu" or "cuda"
    model_params: Mapping[str, Any] = field(default_factory=dict)
    loader_params: Mapping[str, Any] = field(default_factory=dict)
    backend_params: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)  # tensorboard, save_best: for the lifecycle plugins
    allow_emulated: bool = False  # run a precision this device only emulates (refused by default)
    timeout_s: float | None = None  # the cell is killed and recorded failed past this wall time
    # the Python environment the cell runs in: name, requires, constraints (docs/environments.md); empty: the harness's
    environment: Mapping[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """The cell's parameters as plain JSON data."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CellSpec:
        return cls(**{**data, "recipe": Recipe(**data["recipe"])})


@dataclass
class EpochRecord:
    """Metrics of one completed epoch; written to the result store as one JSON line."""

    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float
    epoch_time_s: float  # train + validation wall time
    train_time_s: float
    throughput_img_s: float  # training images per second, training loop only
    data_wait_s: float  # time the training loop spent waiting for batches
    peak_mem_gb: float  # this epoch's peak, GB (1e9 bytes): CUDA max allocated on GPU, process peak RSS on CPU
    optimizer_steps: int
    train_images: int
    wall_time_s: float  # since the cell's training started, for time-to-accuracy
    val_images: int = 0  # validation images evaluated, all processes (0: not counted)
    epoch_in_process: int = 0  # its place among the epochs its process trained (1: the first after a start or a
    # resume, whose timings include warm-up: left out of timings); 0: not counted
    extra: dict[str, float] = field(default_factory=dict)  # observers' fields, "<plugin>.<field>": number


class RunContext(Protocol):
    """What lifecycle hooks receive besides the cell."""

    out_dir: Path  # this cell's directory in the result store
    rank: int
    world_size: int
    env: dict[str, Any]  # the environment fingerprint

    def save_checkpoint(self, directory: Path) -> None:
        """Save the training state (model, optimizer, scaler) into ``directory``; call on every rank."""



@dataclass
class Outcome:
    """What came of a cell in a run (``harness.runner.run_suite`` returns one per cell)."""

    cell: CellSpec
    status: str  # ok, skipped, failed, interrupted, paused, eliminated (harness.results.STATUSES)
    reason: str | None


@dataclass
class CellExit:
    """How a launched cell's processes ended, as its executor saw them. The runner decides the cell's outcome
    from what the cell recorded, and from this only where it recorded nothing."""

    code: int | None  # the exit code (negative: the signal that killed it); None when unknown
    tail: Sequence[str] = ()  # its last output lines, for the reason of a cell that left no result
    error: str | None = None  # why the executor could not run it (e.g. no result came home from its nodes)
    lost: str | None = None  # the machine under it was lost: the runner may run it again (``retries``)
    nodes: Sequence[str] = ()  # the machines it ran on, named in reasons
    retry_on: str = "another node"  # where a retry after ``lost`` goes, for the message
    skipped: str | None = None  # why the machine it was sent to cannot run it (judged there): recorded skipped
    env: Mapping[str, Any] | None = None  # that machine's fingerprint, for the runner's record


class Executor(Protocol):
    """Where a suite's cells run. It only launches and watches: the runner (:mod:`harness.runner`) decides which
    cells run, places them, records every outcome, retries, keeps time limits and handles signals."""

    slots: int  # cells run at once
    retries: int  # a cell whose machine was lost is run again up to this many times

    def expand(self, cells: list[CellSpec]) -> list[CellSpec]:
        """The cells to run for the suite's ``cells`` (e.g. each once per device kind); most return them as is."""

    def open(self, cells: list[CellSpec], out: Path) -> None:
        """Get ready to run ``cells`` into ``out`` (nothing is written yet)."""

    def place(self, cell: CellSpec) -> tuple[str | None, dict[str, Any]] | None:
        """None: the runner places the cell in its environment on this machine. Else the executor's own verdict:
        why the cell cannot run (None: it can) and the fingerprint a result written now carries."""

    def submit(self, cell: CellSpec, out: Path, resume: bool, python: str | None, until: int | None = None) -> Any:
        """Start the cell (its ``cell.json`` is written) under ``python`` (None: the executor places it); a job.
        ``until``: the cell stops after that epoch (``python -m harness.cell --until``), a race's rung."""

    def poll(self, job: Any) -> CellExit | None:
        """None while the job runs, else how it ended."""

    def cancel(self, job: Any, signum: int) -> None:
        """Stop the job (``signum``: the runner's signal, or SIGTERM at a time limit); do not wait for it."""

    def close(self) -> None:
        """Release what :meth:`open` took."""


@runtime_checkable
class ExecutorPlugin(Protocol):
    """An executor as registered through ``register_executors``: its ``harness run`` options and a factory."""

    help: str  # one line for ``harness run --help``

    def configure(self, group: argparse._ArgumentGroup) -> None:
        """Add this executor's options to ``harness run`` (they are refused with another ``--executor``)."""

    def create(self, args: argparse.Namespace, manager: Any) -> Executor:
        """The executor for a run with ``args`` (``args.build``, ``args.hint``: build environments as reached, and
        the command that builds them). Raise :class:`ExecutorError` when it cannot be used as asked."""


class ExecutorError(RuntimeError):
    """An executor cannot be used as asked (a missing library, no cluster at an address): one line, exit 2."""
