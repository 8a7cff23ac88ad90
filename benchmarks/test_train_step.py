"""Training-step throughput of each backend x precision on a fixed synthetic batch, through the engine.

Each round runs ``Trainer.train_epoch`` over ``HARNESS_BENCH_STEPS`` steps of one fixed uint8 batch.
Before each harness step the batch iterator runs one step of a plain PyTorch loop on a copy of
the model (the *reference*, same precision), timed apart. pytest-benchmark's clock leaves the
reference time out, so ``stats.data`` is the harness's seconds per round; and
``extra_info["samples"]["time_vs_reference"]`` holds, per round, harness time / reference time.
Both sides run interleaved step by step, so the machine's speed of the moment (other jobs on a
shared CI machine) cancels out of that ratio: it is what this project's CI gate compares
(docs/ci.md).

``HARNESS_BENCH_SLOWDOWN=0.2`` (test only) makes the harness do 20 % more work per credited step:
it runs ``round(steps * 1.2)`` real training steps for every ``steps`` it is credited with
(images/s, reference steps). The reference never slows down.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from harness.api import IMAGENET_MEAN_255, IMAGENET_STD_255, CellSpec, DataSplits, DeviceInfo, Recipe
from harness.engine import Trainer
from harness.plugins import Manager
from harness.store import CellStore

NUM_CLASSES = 5
RECIPE = Recipe(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=0.0, schedule="constant")


class Reference:
    """A plain PyTorch training loop: what a step costs without the harness."""

    def __init__(self, model: torch.nn.Module, device: torch.device, precision: str) -> None:
        self.model = model.to(device).train()
        self.device = device
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=RECIPE.lr, momentum=RECIPE.momentum)
        self.dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
        self.mean = torch.tensor(IMAGENET_MEAN_255, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD_255, device=device).view(1, 3, 1, 1)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        """Seconds for one training step, its GPU work included."""
        start = time.perf_counter()
        x = (images.to(self.device).float() - self.mean) / self.std
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            loss = F.cross_entropy(self.model(x), labels.to(self.device))
        loss.backward()
        float(loss)  # the engine checks every step's loss for NaN: one sync per step on both sides
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.synchronize()
        return time.perf_counter() - start


class ReferenceClock:
    """``perf_counter`` minus the seconds spent in reference steps: pytest-benchmark's timer here."""

    def __init__(self) -> None:
        self.reference_s = 0.0

    def __call__(self) -> float:
        return time.perf_counter() - self.reference_s

    def __repr__(self) -> str:
        return "perf_counter minus reference steps"


CLOCK = ReferenceClock()


class InterleavedBatches:
    """The fixed batch ``work_steps`` times per iteration; ``steps`` of them, evenly spread, after a reference step."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, steps: int, work_steps: int,
                 reference: Reference) -> None:
        self.images, self.labels, self.steps, self.work_steps = images, labels, steps, work_steps
        self.reference = reference
        self.round_reference_s = 0.0
        self.round_reference_steps = 0

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.round_reference_s, self.round_reference_steps = 0.0, 0
        for i in range(self.work_steps):
            if (i * self.steps) // self.work_steps != ((i + 1) * self.steps) // self.work_steps:
                self.reference.synchronize()  # the harness's queued GPU work is the harness's time
                seconds = self.reference.step(self.images, self.labels)
                CLOCK.reference_s += seconds
                self.round_reference_s += seconds
                self.round_reference_steps += 1
            yield self.images, self.labels

    def __len__(self) -> int:
        return self.work_steps


def synthetic_batch(batch: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8, generator=generator)
    return images, torch.randint(0, NUM_CLASSES, (batch,), generator=generator)


def build_trainer(manager: Manager, device: DeviceInfo, backend_name: str, precision: str, settings: Any,
                  model: torch.nn.Module, batches: InterleavedBatches, out: Any) -> Trainer:
    backend = manager.backends()[backend_name].impl.create(device, precision, {})
    cell = CellSpec(id=f"bench-{backend_name}-{precision}", suite="benchmarks", model=settings.model,
                    loader="synthetic", backend=backend_name, precision=precision, loader_plugin="synthetic",
                    backend_plugin=backend_name, epochs=1, image_size=settings.image_size, data="(synthetic)",
                    seed=0, recipe=dataclasses.replace(RECIPE, batch_size=settings.batch_size))
    data = DataSplits(train=batches, validation=[], classes=[str(i) for i in range(NUM_CLASSES)],
                      train_size=settings.steps * settings.batch_size, validation_size=0)
    return Trainer.create(cell, model, data, backend, CellStore(out, cell.id), manager, {})


@pytest.mark.benchmark(timer=CLOCK)
def test_train_step(benchmark: Any, backend_precision: tuple[str, str], manager: Manager, device: DeviceInfo,
                    settings: Any, record: Any, tmp_path: Any) -> None:
    backend_name, precision = backend_precision
    family = manager.model_family(settings.model)
    if family is None:
        pytest.fail(f"HARNESS_BENCH_MODEL={settings.model!r}: no registered model family knows it")
    torch.manual_seed(0)
    model = family.impl.build(settings.model, num_classes=NUM_CLASSES, image_size=settings.image_size)
    reference = Reference(copy.deepcopy(model), torch.device("cuda" if device.type == "cuda" else "cpu"), precision)
    images, labels = synthetic_batch(settings.batch_size, settings.image_size)
    work_steps = round(settings.steps * (1 + settings.slowdown))
    batches = InterleavedBatches(images, labels, settings.steps, work_steps, reference)
    trainer = build_trainer(manager, device, backend_name, precision, settings, model, batches, tmp_path)
    harness_s: list[float] = []
    ratios: list[float] = []

    def one_round() -> None:
        start = CLOCK()
        trained = trainer.train_epoch(1)
        harness_s.append(CLOCK() - start)
        ratios.append(harness_s[-1] / batches.round_reference_s)
        # the ratio compares these: every batch trained by the harness, ``steps`` bare steps
        assert (trained["optimizer_steps"], batches.round_reference_steps) == (work_steps, settings.steps)

    try:
        benchmark.pedantic(one_round, rounds=settings.rounds, warmup_rounds=1)
    finally:
        trainer.backend.close()
    skip = 1 if len(ratios) > 1 else 0  # the warm-up round (none with --benchmark-disable)
    images_per_round = settings.steps * settings.batch_size
    registration = manager.backends()[backend_name]
    record(benchmark, kind="train_step", backend=backend_name, precision=precision, model=settings.model,
           plugin=registration.plugin, distribution=registration.distribution, images_per_round=images_per_round,
           work_steps_per_round=work_steps)
    benchmark.extra_info["samples"] = {"time_vs_reference": ratios[skip:]}
    timed = sorted(harness_s[skip:])
    benchmark.extra_info["throughput_img_s"] = images_per_round / timed[len(timed) // 2]
    assert len(ratios[skip:]) == (1 if benchmark.disabled else settings.rounds)
