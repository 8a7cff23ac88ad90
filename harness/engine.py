"""The one training loop every backend, loader and model runs through.

Per epoch: train, evaluate, ask observers for extra fields (``harness_epoch_metrics``), write the epoch's
record, run the sanity checks (:mod:`harness.sanity`), checkpoint, fire ``harness_epoch_end``. Epochs count
from 1 everywhere. The engine knows backends, loaders and models only through the
protocols in :mod:`harness.api`.
"""

from __future__ import annotations

import copy
import math
import resource
import time
import warnings
from collections.abc import Iterable, Iterator, Sized
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from functools import cached_property, partial
from pathlib import Path
from typing import Any, TypedDict, TypeVar

import torch
import torch.nn.functional as F

from harness import checkpoints, contract, devices, sanity
from harness.api import IMAGENET_MEAN_255, IMAGENET_STD_255, Backend, CellSpec, DataSplits, EpochRecord, Recipe
from harness.plugins import Manager
from harness.store import CellStore

FEW_STEPS = 10  # warn below this many optimizer steps per epoch
Batch = TypeVar("Batch")


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the message names the epoch and step."""


@dataclass
class Context:
    """The :class:`harness.api.RunContext` lifecycle hooks receive."""

    out_dir: Path
    rank: int
    world_size: int
    env: dict[str, Any]
    trainer: Trainer

    def save_checkpoint(self, directory: Path) -> None:
        self.trainer.backend.save(Path(directory), self.trainer.model, self.trainer.optimizer)


def lr_factor(recipe: Recipe, epoch: int, fraction: float, epochs: int) -> float:
    """LR multiplier for a step ending ``fraction`` of the way through ``epoch`` (from 1): linear warmup, then
    the schedule.

    ``cosine-epoch`` gives every step of an epoch, its last included, that epoch's rate, as the
    tutorial's per-epoch CosineAnnealingLR; ``cosine-step`` decays it smoothly per optimizer step.
    """
    done = epoch - 1 + fraction  # epochs trained when the step ends
    if done < recipe.warmup_epochs:
        return (done + 1e-9) / recipe.warmup_epochs
    if recipe.schedule == "constant":
        return 1.0
    if recipe.schedule == "cosine-epoch":
        done = epoch - 1
    span = max(epochs - recipe.warmup_epochs, 1e-9)
    return 0.5 * (1 + math.cos(math.pi * min((done - recipe.warmup_epochs) / span, 1.0)))


def build_optimizer(model: torch.nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                           nesterov=recipe.nesterov, weight_decay=recipe.weight_decay)


def mixup(
    images: torch.Tensor, alpha: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """Mix each image with a permuted partner: ``lam * x + (1 - lam) * x[perm]``, lam ~ Beta(alpha, alpha).

    Applied here, on the device, for every loader alike. Returns ``perm=None`` when alpha is 0.
    """
    if alpha <= 0:
        return images, None, 1.0
    lam = float(torch.distributions.Beta(alpha, alpha).sample())  # global RNG, seeded per epoch
    perm = torch.randperm(images.shape[0], generator=generator).to(images.device)
    return lam * images + (1 - lam) * images[perm], perm, lam


def mixed(per_target: Any, labels: torch.Tensor, perm: torch.Tensor | None, lam: float) -> torch.Tensor:
    """``lam * f(labels) + (1 - lam) * f(labels[perm])``: the mixup-aware loss or accuracy."""
    if perm is None:
        return per_target(labels)
    return lam * per_target(labels) + (1 - lam) * per_target(labels[perm])


def measure_train_flops(model: torch.nn.Module, image_size: int, device: torch.device) -> float | None:
    """FLOPs of one training image (forward + backward), counted by torch's FlopCounterMode on a copy."""
    from torch.utils.flop_counter import FlopCounterMode

    probe = copy.deepcopy(model).train()  # the copy keeps BatchNorm statistics and gradients untouched
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            probe(torch.zeros(2, 3, image_size, image_size, device=device)).sum().backward()
    except Exception:  # a model the counter cannot trace still trains; MFU is left empty
        return None
    return counter.get_total_flops() / 2


CLEAR_REFS = Path("/proc/self/clear_refs")  # writing "5" resets the peak RSS (Linux 4.0+)
STATUS = Path("/proc/self/status")


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak: CUDA's allocator statistics, or the process's peak RSS (Linux; elsewhere it stays the
    process's lifetime peak)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with suppress(OSError):
        CLEAR_REFS.write_text("5")


def peak_memory_gb(device: torch.device) -> float:
    """Peak memory since :func:`reset_peak_memory`, in GB (1e9 bytes): CUDA memory allocated on a GPU, the
    process's resident set (``VmHWM``, or ``ru_maxrss``, both KiB) on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    try:
        kib = next(int(line.split()[1]) for line in STATUS.read_text().splitlines() if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError, IndexError):
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib * 1024 / 1e9


class Totals:
    """Loss and correct summed on the device (no per-step sync), all-reduced at the end."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.float64, device=device)
        self.count = 0

    def add(self, loss: torch.Tensor, correct: torch.Tensor, count: int) -> None:
        self.loss += loss.detach() * count
        self.correct += correct.detach()
        self.count += count

    def reduce(self, backend: Backend) -> tuple[float, float, int]:
        """Mean loss, accuracy and image count over all processes."""
        count = torch.tensor(float(self.count), device=self.device, dtype=torch.float64)
        loss, correct, total = backend.all_reduce(torch.stack([self.loss, self.correct, count])).tolist()
        return loss / max(total, 1), correct / max(total, 1), int(total)


class DataWait:
    """Seconds a loop spends waiting for its batches: from the end of one step to the next batch's arrival."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def timed(self, batches: Iterable[Batch]) -> Iterator[Batch]:
        """``batches``, with the wait for each (creating the iterator included) added to :attr:`seconds`."""
        tick = time.perf_counter()
        for batch in batches:
            self.seconds += time.perf_counter() - tick
            yield batch
            tick = time.perf_counter()


class Accumulation:
    """Gradient accumulation windows, as HF Accelerate's ``accumulate()``.

    The optimizer steps after every ``size`` micro-batches and after the epoch's last one (when
    the loader has a length); the micro-batches before a step skip the backend's gradient sync.
    """

    def __init__(self, backend: Backend, model: torch.nn.Module, size: int, batches: int | None) -> None:
        self.backend, self.model, self.size, self.batches = backend, model, size, batches
        self.micro = 0  # micro-batches begun this epoch
        self.pending = 0  # of them, since the last optimizer step
        self.loss: torch.Tensor | float = 0.0  # their summed loss

    @property
    def sync(self) -> bool:
        """Whether the current micro-batch ends the window: its gradients are synced and the optimizer steps."""
        return self.pending == self.size or self.micro == self.batches

    @property
    def fraction(self) -> float:
        """How far through the epoch the current micro-batch is (1.0 when the loader has no length)."""
        return self.micro / (self.batches or self.micro)

    @contextmanager
    def accumulate(self) -> Iterator[None]:
        """Wrap one micro-batch's forward and backward."""
        self.micro += 1
        self.pending += 1
        with nullcontext() if self.sync else self.backend.no_sync(self.model):
            yield

    def add(self, loss: torch.Tensor) -> None:
        self.loss = self.loss + loss.detach()

    def reset(self) -> None:
        """Open the next window (after the optimizer step)."""
        self.pending, self.loss = 0, 0.0


def batch_count(batches: Iterable[Any]) -> int | None:
    """How many batches an epoch yields (at least 1), or None when the loader has no length."""
    return max(len(batches), 1) if isinstance(batches, Sized) else None


class TrainMetrics(TypedDict):
    """One epoch's training metrics: these fields of :class:`harness.api.EpochRecord`."""

    train_loss: float
    train_acc: float
    train_time_s: float
    data_wait_s: float
    train_images: int
    throughput_img_s: float
    optimizer_steps: int


@dataclass
class Trainer:
    """Trains one cell: :meth:`run` its epochs, or :meth:`train_epoch` one at a time. Epochs count from 1.

    Build it with :meth:`create`, which prepares the model and optimizer through the backend.
    """

    cell: CellSpec
    model: torch.nn.Module  # as the backend prepared it (e.g. wrapped in DDP)
    optimizer: torch.optim.Optimizer
    data: DataSplits
    backend: Backend
    store: CellStore
    manager: Manager
    env: dict[str, Any]
    base_lrs: list[float]  # each parameter group's rate before the schedule
    mean: torch.Tensor  # ImageNet statistics on the device, [1, 3, 1, 1]
    std: torch.Tensor
    model_owner: str  # names the model in contract errors
    checks: sanity.Checks  # the sanity checks' state
    flops: float | None = None  # FLOPs of one training image; None when the counter cannot trace the model
    steps: int = 0  # optimizer steps, all epochs together
    best_acc: float = -1.0
    best_epoch: int = 0
    restored_wall: float = 0.0  # wall time of the epochs a resumed run skips
    val_images: int = 0  # validation images of the last evaluation, all processes
    # {"code": stable id, "message": text}, and "disqualifies": True for a failed sanity check
    warnings: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def create(cls, cell: CellSpec, model: torch.nn.Module, data: DataSplits, backend: Backend, store: CellStore,
               manager: Manager, env: dict[str, Any]) -> Trainer:
        """Count the model's FLOPs on the backend's device, let the backend prepare it with a new optimizer,
        and record the setup's warnings."""
        device = backend.device
        mean, std = (torch.tensor(s, device=device).view(1, 3, 1, 1) for s in (IMAGENET_MEAN_255, IMAGENET_STD_255))
        model.to(device)
        flops = measure_train_flops(model, cell.image_size, device)
        model, optimizer = backend.prepare(model, build_optimizer(model, cell.recipe))
        trainer = cls(cell, model, optimizer, data, backend, store, manager, env,
                      base_lrs=[group["lr"] for group in optimizer.param_groups], mean=mean, std=std,
                      model_owner=manager.model_owner(cell), checks=sanity.Checks(len(data.classes)), flops=flops)
        trainer.warn_about_setup()
        return trainer

    @property
    def recipe(self) -> Recipe:
        return self.cell.recipe

    @property
    def device(self) -> torch.device:
        return self.backend.device

    @property
    def is_main(self) -> bool:
        return self.backend.rank == 0

    @property
    def nominal_steps(self) -> float:
        """Optimizer steps per epoch the data set allows (``train_size`` is this process's shard)."""
        return self.data.train_size / (self.recipe.batch_size * self.recipe.accumulation)

    @cached_property
    def context(self) -> Context:
        return Context(self.store.dir, self.backend.rank, self.backend.world_size, self.env, self)

    def warn(self, code: str, message: str, disqualifies: bool = False) -> None:
        """Record a caveat under a stable ``code`` (``few-steps``, ``emulated-precision``, ...)."""
        self.warnings.append({"code": code, "message": message, **({"disqualifies": True} if disqualifies else {})})
        if self.is_main:
            warnings.warn(f"{self.cell.id}: {message}", stacklevel=2)

    def flag(self, problems: list[sanity.Problem]) -> None:
        """Failed sanity checks: warnings that disqualify the cell's numbers, or its failure under ``strict``."""
        for code, message in problems:
            if self.cell.options.get("strict"):
                raise sanity.SanityError(f"{code}: {message} (the suite is strict)")
            self.warn(code, message, disqualifies=True)

    def warn_about_setup(self) -> None:
        """The backend's caveats, an emulated precision, a model name several families know, too few optimizer
        steps per epoch."""
        self.warnings += [{"code": "backend", "message": w} for w in self.backend.warnings]
        if devices.recorded_support(self.env, self.cell.precision) == devices.EMULATED:
            self.warn("emulated-precision", f"{self.cell.precision} is emulated on {self.env.get('device_name')}: "
                                            "run on request (--allow-emulated); its timings are not the hardware's")
        shared = self.manager.shared_name(self.cell.model, self.cell.model_plugin)
        if shared:
            self.warn("model-name-shared", shared)
        if self.nominal_steps < FEW_STEPS:
            world = self.backend.world_size
            self.warn("few-steps", f"only {self.nominal_steps:.1f} optimizer steps per epoch "
                                   f"({self.data.train_size * world} images / (batch {self.recipe.batch_size} x "
                                   f"{world} processes x accumulation {self.recipe.accumulation}))")

    # -- one epoch -----------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> TrainMetrics:
        """Train one epoch over ``data.train``; return its metrics."""
        self.model.train()
        if hasattr(self.data.train, "set_epoch"):
            self.data.train.set_epoch(epoch)
        generator = torch.Generator().manual_seed(self.cell.seed * 100_003 + epoch * 101 + self.backend.rank)
        window = Accumulation(self.backend, self.model, self.recipe.accumulation, batch_count(self.data.train))
        wait, totals, steps_before = DataWait(), Totals(self.device), self.steps
        start = time.perf_counter()
        for images, labels in wait.timed(self.data.train):
            if self.checks.watching_batches:
                self.flag(self.checks.batch("train", images, labels))
            images, labels = self.prepare_batch(images, labels)
            images, perm, lam = mixup(images, self.recipe.mixup_alpha, generator)
            with window.accumulate():
                logits, loss = self.forward(images, labels, perm, lam)
                self.backend.backward(loss / self.recipe.accumulation)
            window.add(loss)
            totals.add(loss, mixed(logits.detach().argmax(1).eq, labels, perm, lam).sum(), labels.shape[0])
            if window.sync:
                self.optimizer_step(epoch, window)
        if window.micro == 0:  # nothing trained: the cell must fail, not record an untrained model as ok
            raise self.no_batches()
        if window.pending:  # a loader without a length: the epoch's end closes the last window
            self.optimizer_step(epoch, window)
        train_time = self.seconds_since(start)
        mean_loss, accuracy, count = totals.reduce(self.backend)
        return TrainMetrics(train_loss=mean_loss, train_acc=accuracy, train_time_s=train_time, data_wait_s=wait.seconds,
                            train_images=count, throughput_img_s=count / train_time if train_time else 0.0,
                            optimizer_steps=self.steps - steps_before)

    def prepare_batch(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both on the device; uint8 images normalised with the ImageNet statistics."""
        images = images.to(self.device, non_blocking=True)
        if images.dtype == torch.uint8:
            images = (images.float() - self.mean) / self.std
        return images, labels.to(self.device, non_blocking=True)

    def forward(self, images: torch.Tensor, labels: torch.Tensor, perm: torch.Tensor | None,
                lam: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and the (mixup-aware, label-smoothed) loss, under the backend's autocast."""
        with self.backend.autocast():
            logits = self.model(images)
            contract.check_logits(logits, labels.shape[0], len(self.data.classes), self.model_owner)
            per_target = partial(F.cross_entropy, logits, label_smoothing=self.recipe.label_smoothing)
            return logits, mixed(per_target, labels, perm, lam)

    def optimizer_step(self, epoch: int, window: Accumulation) -> None:
        """Check the window's loss, set the scheduled rate, step, and open the next window."""
        loss = float(window.loss)
        self.check_finite(loss, epoch, window.micro)
        self.checks.step(loss / window.pending)
        self.set_lr(epoch, window.fraction)
        self.backend.step(self.model, self.optimizer, self.recipe.clip_grad_norm)
        self.steps += 1
        window.reset()

    def set_lr(self, epoch: int, fraction: float = 0.0) -> float:
        """Set every group's rate for ``fraction`` of the way through ``epoch``; return the first group's."""
        factor = lr_factor(self.recipe, epoch, fraction, self.cell.epochs)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * factor
        return self.base_lrs[0] * factor

    def check_finite(self, loss: float, epoch: int, step: int) -> None:
        if not math.isfinite(loss):
            raise NonFiniteLoss(f"loss is {loss} at epoch {epoch}, step {step}")

    def no_batches(self) -> RuntimeError:
        size, batch = self.data.train_size, self.recipe.batch_size
        if size < batch:
            return RuntimeError(f"0 training batches: {size} photos < batch {batch} with drop_last")
        return RuntimeError(f"0 training batches from the loader ({size} training photos, batch {batch})")

    def seconds_since(self, start: float) -> float:
        """Wall time since ``start``, the device's queued work included."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - start

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """Validation loss and accuracy."""
        self.model.eval()
        totals = Totals(self.device)
        for images, labels in self.data.validation:
            if "image-range-validation" not in self.checks.done:
                self.flag(self.checks.batch("validation", images, labels))
            images, labels = self.prepare_batch(images, labels)
            with self.backend.autocast():
                logits = self.model(images)
            totals.add(F.cross_entropy(logits.float(), labels), (logits.argmax(1) == labels).sum(), labels.shape[0])
        loss, acc, self.val_images = totals.reduce(self.backend)
        return loss, acc

    # -- the run -------------------------------------------------------------------------------
    def run(self, resume: bool = False, until: int | None = None) -> dict[str, Any]:
        """Train the cell's epochs (with ``resume``, those after its checkpoint; with ``until``, up to that epoch:
        a race's rung, where the run-end checks and hooks wait for the real end); return the summary."""
        if resume:
            first = self.restore() + 1
        else:
            first = 1
            if self.is_main:
                self.store.truncate_epochs(0)  # rows of an earlier attempt that died before its first checkpoint
        self.manager.call("harness_run_start", cell=self.cell, context=self.context)
        self.checks.start(self.model)
        wall_start = time.perf_counter() - self.restored_wall
        last = min(until or self.cell.epochs, self.cell.epochs)
        for epoch in range(first, last + 1):
            self.end_epoch(self.run_epoch(epoch, wall_start, epoch - first + 1))
        if last < self.cell.epochs:
            return self.summary(last)
        self.flag(self.checks.run_end(self.best_acc, self.val_images, self.cell.epochs))
        summary = self.summary()
        summary["extra"] = self.manager.metrics("harness_run_metrics", cell=self.cell, summary=summary,
                                                context=self.context)
        self.manager.call("harness_run_end", cell=self.cell, summary=summary, context=self.context)
        return summary

    def run_epoch(self, epoch: int, wall_start: float, in_process: int) -> EpochRecord:
        """Train and evaluate one epoch (the ``in_process``-th this process trains); its record."""
        torch.manual_seed(self.cell.seed * 1009 + epoch)  # dropout etc.: a function of (seed, epoch)
        reset_peak_memory(self.device)
        lr = self.set_lr(epoch)
        start = time.perf_counter()
        train = self.train_epoch(epoch)
        val_loss, val_acc = self.evaluate()
        if val_acc > self.best_acc:
            self.best_acc, self.best_epoch = val_acc, epoch
        return EpochRecord(epoch=epoch, val_loss=val_loss, val_acc=val_acc, lr=lr,
                           epoch_time_s=time.perf_counter() - start, peak_mem_gb=peak_memory_gb(self.device),
                           wall_time_s=time.perf_counter() - wall_start, val_images=self.val_images,
                           epoch_in_process=in_process, **train)

    def end_epoch(self, record: EpochRecord) -> None:
        """Add the observers' fields, write the epoch's row, check, checkpoint, fire ``harness_epoch_end``."""
        record.extra = self.manager.metrics("harness_epoch_metrics", cell=self.cell, record=record,
                                            context=self.context)
        if self.is_main:
            self.store.append_epoch(self.cell, self.env, record)
            print(f"[{self.cell.id}] epoch {record.epoch}/{self.cell.epochs} loss {record.train_loss:.4f} "
                  f"val_acc {record.val_acc:.4f} {record.throughput_img_s:.1f} img/s "
                  f"{record.epoch_time_s:.1f}s", flush=True)
        self.flag(self.checks.epoch_end(self.model, self.steps, record.epoch == self.cell.epochs,
                                        record.throughput_img_s, self.flops, self.env.get("device_name")
                                        if self.device.type == "cuda" else None, self.cell.precision,
                                        self.backend.world_size))
        self.checkpoint(record)  # after the checks: a resumed run goes on with them as they are now
        self.manager.call("harness_epoch_end", cell=self.cell, record=record, context=self.context)

    def checkpoint(self, record: EpochRecord) -> None:
        """Replace the cell's checkpoint atomically (:meth:`CellStore.checkpoint`)."""
        with self.store.checkpoint(main=self.is_main) as directory:
            self.backend.save(directory, self.model, self.optimizer)
            if self.is_main:
                torch.save({"epoch": record.epoch, "steps": self.steps, "best_acc": self.best_acc,
                            "best_epoch": self.best_epoch, "wall_time_s": record.wall_time_s,
                            "checks": self.checks.state(), "warnings": self.warnings}, directory / "trainer.pt")

    def restore(self) -> int:
        """Load the last complete checkpoint (the training state, the sanity checks' state and the warnings so
        far), drop the epoch rows after it; return its epoch (0 when none).

        A process killed inside ``checkpoint``'s rename window leaves only ``.old``: that one is used.
        """
        final = self.store.checkpoint_path
        found = [p for p in (final, final.with_name(final.name + ".old")) if (p / "trainer.pt").exists()]
        epoch = 0
        if found:
            self.backend.load(found[0], self.model, self.optimizer)
            state = checkpoints.load_weights(found[0] / "trainer.pt")
            self.steps, self.best_acc, self.best_epoch = state["steps"], state["best_acc"], state["best_epoch"]
            self.restored_wall, epoch = state["wall_time_s"], state["epoch"]
            if "checks" in state:  # checkpoints written before these were kept start the checks afresh
                self.checks.restore(state["checks"])
                self.warnings = list(state["warnings"])  # the setup's, as this process made them, and what was flagged
        if self.is_main:
            self.store.truncate_epochs(epoch)
        return epoch

    def summary(self, epochs: int | None = None) -> dict[str, Any]:
        """What ``result.json`` records of the run after ``epochs`` (default: all the cell's)."""
        epochs = epochs or self.cell.epochs
        return {"epochs": epochs, "best_val_acc": self.best_acc, "best_epoch": self.best_epoch,
                "optimizer_steps_per_epoch": self.steps / max(epochs, 1),
                "nominal_optimizer_steps_per_epoch": self.nominal_steps,
                "train_flops_per_image": self.flops, "warnings": self.warnings, "loader_info": self.data.info}
