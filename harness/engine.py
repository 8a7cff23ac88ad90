"""The one training loop every backend, loader and model runs through.

Per epoch: train, evaluate, write the epoch's record, checkpoint, fire ``harness_epoch_end``.
The engine knows backends, loaders and models only through the protocols in
:mod:`harness.api`.
"""

from __future__ import annotations

import copy
import math
import resource
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from harness import contract, devices
from harness.api import IMAGENET_MEAN_255, IMAGENET_STD_255, Backend, CellSpec, DataSplits, EpochRecord, Recipe
from harness.plugins import Manager
from harness.store import CellStore

FEW_STEPS = 10  # warn below this many optimizer steps per epoch


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
    """LR multiplier for a step ending ``fraction`` of the way through 0-based ``epoch``: linear warmup, then
    the schedule.

    ``cosine-epoch`` gives every step of an epoch, its last included, that epoch's rate, as the
    tutorial's per-epoch CosineAnnealingLR; ``cosine-step`` decays it smoothly per optimizer step.
    """
    progress = epoch + fraction
    if progress < recipe.warmup_epochs:
        return (progress + 1e-9) / recipe.warmup_epochs
    if recipe.schedule == "constant":
        return 1.0
    if recipe.schedule == "cosine-epoch":
        progress = epoch
    span = max(epochs - recipe.warmup_epochs, 1e-9)
    return 0.5 * (1 + math.cos(math.pi * min((progress - recipe.warmup_epochs) / span, 1.0)))


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


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB on Linux


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
        sums = torch.stack([self.loss, self.correct, torch.tensor(float(self.count), device=self.device,
                                                                   dtype=torch.float64)])
        loss, correct, count = backend.all_reduce(sums).tolist()
        return loss / max(count, 1), correct / max(count, 1), int(count)


@dataclass
class Trainer:
    cell: CellSpec
    model: torch.nn.Module
    data: DataSplits
    backend: Backend
    store: CellStore
    manager: Manager
    env: dict[str, Any]
    optimizer: torch.optim.Optimizer = field(init=False)
    steps: int = 0
    best_acc: float = -1.0
    best_epoch: int = 0
    restored_wall: float = 0.0  # wall time of the epochs a resumed run skips
    warnings: list[dict[str, str]] = field(default_factory=list)  # {"code": stable id, "message": text}

    def __post_init__(self) -> None:
        self.recipe = self.cell.recipe
        self.device = self.backend.device
        self.is_main = self.backend.rank == 0
        self.mean = torch.tensor(IMAGENET_MEAN_255, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD_255, device=self.device).view(1, 3, 1, 1)
        self.model.to(self.device)
        self.flops = measure_train_flops(self.model, self.cell.image_size, self.device)
        self.model, self.optimizer = self.backend.prepare(self.model, build_optimizer(self.model, self.recipe))
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        self.warnings += [{"code": "backend", "message": w} for w in self.backend.warnings]
        if devices.recorded_support(self.env, self.cell.precision) == devices.EMULATED:
            self.warn("emulated-precision", f"{self.cell.precision} is emulated on {self.env.get('device_name')}: "
                                            "run on request (--allow-emulated); its timings are not the hardware's")
        self.context = Context(self.store.dir, self.backend.rank, self.backend.world_size, self.env, self)
        self.model_owner = self.manager.model_owner(self.cell)  # names the model in contract errors
        # train_size is this process's shard: each process takes the same number of steps.
        self.nominal_steps = self.data.train_size / (self.recipe.batch_size * self.recipe.accumulation)
        if self.nominal_steps < FEW_STEPS:
            self.warn("few-steps", f"only {self.nominal_steps:.1f} optimizer steps per epoch "
                      f"({self.data.train_size * self.backend.world_size} images / "
                      f"(batch {self.recipe.batch_size} x {self.backend.world_size} processes x "
                      f"accumulation {self.recipe.accumulation}))")

    def warn(self, code: str, message: str) -> None:
        """Record a caveat under a stable ``code`` (``few-steps``, ``emulated-precision``, ...)."""
        self.warnings.append({"code": code, "message": message})
        if self.is_main:
            warnings.warn(f"{self.cell.id}: {message}", stacklevel=2)

    # -- one epoch -----------------------------------------------------------------------------
    def prepare_batch(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = images.to(self.device, non_blocking=True)
        if images.dtype == torch.uint8:
            images = (images.float() - self.mean) / self.std
        return images, labels.to(self.device, non_blocking=True)

    def set_lr(self, epoch: int, fraction: float = 0.0) -> float:
        factor = lr_factor(self.recipe, epoch, fraction, self.cell.epochs)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = base * factor
        return self.base_lrs[0] * factor

    def train_epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        generator = torch.Generator().manual_seed(self.cell.seed * 100_003 + epoch * 101 + self.backend.rank)
        if hasattr(self.data.train, "set_epoch"):
            self.data.train.set_epoch(epoch)
        batches = max(len(self.data.train), 1) if hasattr(self.data.train, "__len__") else None
        totals, wait, pending, window_loss = Totals(self.device), 0.0, 0, 0.0
        steps_before, micro = self.steps, 0
        accumulation, smoothing = self.recipe.accumulation, self.recipe.label_smoothing
        start = tick = time.perf_counter()
        for micro, (images, labels) in enumerate(self.data.train, start=1):
            wait += time.perf_counter() - tick
            images, labels = self.prepare_batch(images, labels)
            images, perm, lam = mixup(images, self.recipe.mixup_alpha, generator)
            sync = pending + 1 == accumulation or micro == batches
            with nullcontext() if sync else self.backend.no_sync(self.model):
                with self.backend.autocast():
                    logits = self.model(images)
                    contract.check_logits(logits, labels.shape[0], len(self.data.classes), self.model_owner)
                    loss = mixed(partial(F.cross_entropy, logits, label_smoothing=smoothing), labels, perm, lam)
                self.backend.backward(loss / accumulation)
            pending += 1
            window_loss += loss.detach()
            predicted = logits.detach().argmax(1)
            totals.add(loss, mixed(predicted.eq, labels, perm, lam).sum(), labels.shape[0])
            if sync:
                self.check_finite(window_loss, epoch, micro)
                self.set_lr(epoch - 1, micro / (batches or micro))
                self.backend.step(self.model, self.optimizer, self.recipe.clip_grad_norm)
                self.steps, pending, window_loss = self.steps + 1, 0, 0.0
            tick = time.perf_counter()
        if micro == 0:  # nothing trained: the cell must fail, not record an untrained model as ok
            size, batch = self.data.train_size, self.recipe.batch_size
            raise RuntimeError(f"0 training batches: {size} photos < batch {batch} with drop_last" if size < batch
                               else f"0 training batches from the loader ({size} training photos, batch {batch})")
        if pending:  # an iterable without len(): flush the last accumulation window
            self.check_finite(window_loss, epoch, micro)
            self.backend.step(self.model, self.optimizer, self.recipe.clip_grad_norm)
            self.steps += 1
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        train_time = time.perf_counter() - start
        loss, acc, count = totals.reduce(self.backend)
        return {"train_loss": loss, "train_acc": acc, "train_time_s": train_time, "data_wait_s": wait,
                "train_images": count, "throughput_img_s": count / train_time if train_time else 0.0,
                "optimizer_steps": self.steps - steps_before}

    def check_finite(self, loss: torch.Tensor | float, epoch: int, step: int) -> None:
        if not math.isfinite(float(loss)):
            raise NonFiniteLoss(f"loss is {float(loss)} at epoch {epoch}, step {step}")

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        self.model.eval()
        totals = Totals(self.device)
        for images, labels in self.data.validation:
            images, labels = self.prepare_batch(images, labels)
            with self.backend.autocast():
                logits = self.model(images)
            totals.add(F.cross_entropy(logits.float(), labels), (logits.argmax(1) == labels).sum(), labels.shape[0])
        loss, acc, _ = totals.reduce(self.backend)
        return loss, acc

    # -- the run -------------------------------------------------------------------------------
    def run(self, resume: bool = False) -> dict[str, Any]:
        if not resume and self.is_main:
            self.store.truncate_epochs(0)  # rows of an earlier attempt that died before its first checkpoint
        first = self.restore() + 1 if resume else 1
        self.manager.call("harness_run_start", cell=self.cell, context=self.context)
        wall_start = time.perf_counter() - self.restored_wall
        for epoch in range(first, self.cell.epochs + 1):
            torch.manual_seed(self.cell.seed * 1009 + epoch)  # dropout etc.: a function of (seed, epoch)
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)
            lr = self.set_lr(epoch - 1)
            epoch_start = time.perf_counter()
            train = self.train_epoch(epoch)
            val_loss, val_acc = self.evaluate()
            record = EpochRecord(epoch=epoch, val_loss=val_loss, val_acc=val_acc, lr=lr,
                                 epoch_time_s=time.perf_counter() - epoch_start,
                                 peak_mem_gb=peak_memory_gb(self.device),
                                 wall_time_s=time.perf_counter() - wall_start, **train)
            if val_acc > self.best_acc:
                self.best_acc, self.best_epoch = val_acc, epoch
            self.end_epoch(record)
        summary = self.summary()
        self.manager.call("harness_run_end", cell=self.cell, summary=summary, context=self.context)
        return summary

    def end_epoch(self, record: EpochRecord) -> None:
        if self.is_main:
            self.store.append_epoch(self.cell, self.env, record)
            print(f"[{self.cell.id}] epoch {record.epoch}/{self.cell.epochs} loss {record.train_loss:.4f} "
                  f"val_acc {record.val_acc:.4f} {record.throughput_img_s:.1f} img/s "
                  f"{record.epoch_time_s:.1f}s", flush=True)
        self.checkpoint(record)
        self.manager.call("harness_epoch_end", cell=self.cell, record=record, context=self.context)

    def checkpoint(self, record: EpochRecord) -> None:
        """Replace the cell's checkpoint atomically (:meth:`CellStore.checkpoint`)."""
        with self.store.checkpoint(main=self.is_main) as directory:
            self.backend.save(directory, self.model, self.optimizer)
            if self.is_main:
                torch.save({"epoch": record.epoch, "steps": self.steps, "best_acc": self.best_acc,
                            "best_epoch": self.best_epoch, "wall_time_s": record.wall_time_s},
                           directory / "trainer.pt")

    def restore(self) -> int:
        """Load the last complete checkpoint, drop the epoch rows after it; return its epoch (0 when none).

        A process killed inside ``checkpoint``'s rename window leaves only ``.old``: that one is used.
        """
        final = self.store.checkpoint_path
        found = [p for p in (final, final.with_name(final.name + ".old")) if (p / "trainer.pt").exists()]
        epoch = 0
        if found:
            self.backend.load(found[0], self.model, self.optimizer)
            state = torch.load(found[0] / "trainer.pt", weights_only=True)
            self.steps, self.best_acc, self.best_epoch = state["steps"], state["best_acc"], state["best_epoch"]
            self.restored_wall, epoch = state["wall_time_s"], state["epoch"]
        if self.is_main:
            self.store.truncate_epochs(epoch)
        return epoch

    def summary(self) -> dict[str, Any]:
        return {"epochs": self.cell.epochs, "best_val_acc": self.best_acc, "best_epoch": self.best_epoch,
                "optimizer_steps_per_epoch": self.steps / max(self.cell.epochs, 1),
                "nominal_optimizer_steps_per_epoch": self.nominal_steps,
                "train_flops_per_image": self.flops, "warnings": self.warnings, "loader_info": self.data.info}

