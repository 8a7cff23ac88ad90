"""The training loop: real training on real photos; determinism, resume and the recipe mechanics on generated ones."""

from __future__ import annotations

import json
import math
import shutil
import statistics
from dataclasses import replace
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from harness import capability, devices
from harness.api import CellSpec, DataSplits, DeviceInfo, Recipe
from harness.cell import run
from harness.engine import Trainer, lr_factor, mixed, mixup
from harness.hookspecs import hookimpl
from harness.plugins import get_manager, registered
from harness.store import CellStore
from harness_plugins.torch_backend import TorchBackend

CPU = DeviceInfo("cpu", "cpu")
# Measured on the 2-core CI machine: resnet10t, 32 px, 400 photos, 4 epochs reaches 0.53-0.58
# validation accuracy (chance is 0.20); 0.40 leaves room for thread-count noise.
LEARNED = 0.40


def small_cell(photos: Path, **changes: object) -> CellSpec:
    cell = CellSpec(
        id="resnet10t-torchvision-torch-fp32", suite="test", model="resnet10t", loader="torchvision",
        backend="torch", precision="fp32", loader_plugin="torchvision", backend_plugin="torch", epochs=4,
        image_size=32, data=str(photos), seed=0, subset=400,
        recipe=Recipe(optimizer="adamw", lr=2e-3, weight_decay=0.05, batch_size=32))
    return replace(cell, **changes)


def epochs(out: Path, cell: CellSpec) -> list[dict]:
    return CellStore(out, cell.id).epochs()


def metrics(rows: list[dict]) -> list[tuple]:
    return [(r["epoch"], r["train_loss"], r["train_acc"], r["val_loss"], r["val_acc"], r["lr"]) for r in rows]


@pytest.mark.slow
def test_small_real_run_learns(photos: Path, tmp_path: Path) -> None:
    cell = small_cell(photos)
    assert run(cell, tmp_path, resume=False) == 0
    rows = epochs(tmp_path, cell)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert rows[-1]["val_acc"] > LEARNED
    result = json.loads((tmp_path / "cells" / cell.id / "result.json").read_text())
    assert result["status"] == "ok"
    assert result["summary"]["best_val_acc"] == max(r["val_acc"] for r in rows)
    assert result["summary"]["train_flops_per_image"] > 0
    assert all(r["throughput_img_s"] > 0 and r["data_wait_s"] >= 0 and r["peak_mem_gb"] > 0 for r in rows)


def test_same_seed_gives_identical_metrics(generated_photos: Path, tmp_path: Path) -> None:
    cell = small_cell(generated_photos, epochs=2, subset=64,
                      recipe=Recipe(batch_size=16, mixup_alpha=0.2, randaugment=True))
    run(cell, tmp_path / "a", resume=False)
    run(cell, tmp_path / "b", resume=False)
    assert metrics(epochs(tmp_path / "a", cell)) == metrics(epochs(tmp_path / "b", cell))


class StopAfter:
    """A lifecycle plugin that interrupts training after a given epoch."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    @hookimpl
    def harness_epoch_end(self, record) -> None:
        if record.epoch == self.epoch:
            raise KeyboardInterrupt


def test_interrupted_then_resumed_equals_uninterrupted(generated_photos: Path, tmp_path: Path) -> None:
    cell = small_cell(generated_photos, epochs=3, subset=64,
                      recipe=Recipe(batch_size=16, mixup_alpha=0.2, accumulation=2))
    run(cell, tmp_path / "straight", resume=False)
    with registered(StopAfter(2), "stop-after-2"), pytest.raises(KeyboardInterrupt):
        run(cell, tmp_path / "resumed", resume=False)
    assert len(epochs(tmp_path / "resumed", cell)) == 2
    assert run(cell, tmp_path / "resumed", resume=True) == 0
    assert metrics(epochs(tmp_path / "resumed", cell)) == metrics(epochs(tmp_path / "straight", cell))
    # the resumed process's first epoch is marked: its timings include the new process's warm-up
    assert [e["epoch_in_process"] for e in epochs(tmp_path / "resumed", cell)] == [1, 2, 1]
    assert [e["epoch_in_process"] for e in epochs(tmp_path / "straight", cell)] == [1, 2, 3]


def test_restarts_never_duplicate_epoch_rows(tmp_path: Path) -> None:
    batches = [(torch.randn(4, 3, 2, 2), torch.randint(0, 3, (4,))) for _ in range(2)]
    trained = linear_trainer(tmp_path, 4, 1, batches, epochs=2)
    trained.run()
    store, checkpoint = trained.store, trained.store.checkpoint_path
    # Killed inside the checkpoint's rename window: only the previous checkpoint, .old, is left.
    checkpoint.rename(checkpoint.with_name(checkpoint.name + ".old"))
    assert linear_trainer(tmp_path, 4, 1, batches, epochs=2).restore() == 2
    # Killed before the first checkpoint: a restart, resumed or not, begins the rows anew.
    shutil.rmtree(checkpoint.with_name(checkpoint.name + ".old"))
    for resume in (True, False):
        linear_trainer(tmp_path, 4, 1, batches, epochs=2).run(resume=resume)
        assert [e["epoch"] for e in store.epochs()] == [1, 2]


def test_a_resumed_run_goes_on_with_the_sanity_checks_and_warnings_where_they_were(tmp_path: Path) -> None:
    """A race's next rung or a --resume: the first steps' loss check, settled before the restart, is not judged
    again on the later (flat, converged) steps, and what was flagged before the restart stays in the result."""
    torch.manual_seed(2)
    batches = [(torch.randn(4, 3, 2, 2), torch.randint(0, 3, (4,))) for _ in range(60)]  # 60 steps an epoch
    first = linear_trainer(tmp_path, 4, 1, batches, epochs=3)
    first.flag([("image-range", "planted before the restart")])
    first.run(until=1)
    assert "loss-not-decreasing" in first.checks.done and len(first.checks.losses) == 50
    resumed = linear_trainer(tmp_path, 4, 1, batches, epochs=3)
    assert resumed.restore() == 1
    assert resumed.checks.done == first.checks.done and resumed.checks.losses == first.checks.losses
    assert resumed.warnings == first.warnings
    assert any(w["message"] == "planted before the restart" for w in resumed.warnings)


def test_mixup_mixes_images_and_targets() -> None:
    torch.manual_seed(0)
    images = torch.arange(8.0).view(8, 1, 1, 1).expand(8, 3, 2, 2)  # image i: every pixel i
    lams = [mixup(images, 0.2, torch.Generator().manual_seed(s))[2] for s in range(200)]
    assert 0.4 < statistics.mean(lams) < 0.6 and statistics.pstdev(lams) > 0.35  # Beta(0.2, 0.2): 0.5 +- 0.42
    mixed_images, perm, lam = mixup(images, 0.2, torch.Generator().manual_seed(0))
    assert perm is not None and sorted(perm.tolist()) == list(range(8)) and 0 < lam < 1
    # every image is lam of itself and 1 - lam of its partner; the partner moved at least one image
    assert torch.allclose(mixed_images[:, 0, 0, 0], lam * torch.arange(8.0) + (1 - lam) * perm.float())
    assert (perm != torch.arange(8)).any()
    # the targets mix with the same lam and partners: the loss is the cross-entropy against mixed one-hot targets
    labels, logits = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]), torch.randn(8, 3)
    targets = lam * F.one_hot(labels, 3).float() + (1 - lam) * F.one_hot(labels[perm], 3).float()
    loss = mixed(partial(F.cross_entropy, logits), labels, perm, lam)
    assert float(loss) == pytest.approx(float(F.cross_entropy(logits, targets)))
    same = int((labels[perm] == labels).sum())
    assert float(mixed(labels.eq, labels, perm, lam).sum()) == pytest.approx(8 * lam + (1 - lam) * same)
    assert mixup(images, 0.0, torch.Generator()) == (images, None, 1.0)


def test_lr_schedule_warmup_then_cosine() -> None:
    per_epoch = Recipe(schedule="cosine-epoch", warmup_epochs=0)
    assert [round(lr_factor(per_epoch, e, 0.0, 4), 4) for e in (1, 2, 3, 4)] == [1.0, 0.8536, 0.5, 0.1464]
    # constant within an epoch, its last step included
    assert lr_factor(per_epoch, 2, 0.7, 4) == lr_factor(per_epoch, 2, 1.0, 4) == lr_factor(per_epoch, 2, 0.0, 4)
    warm = Recipe(schedule="cosine-step", warmup_epochs=2)
    assert lr_factor(warm, 1, 0.5, 10) == pytest.approx(0.25)
    assert lr_factor(warm, 2, 1.0, 10) == pytest.approx(1.0)
    assert lr_factor(warm, 7, 0.0, 10) == pytest.approx(0.5)
    assert lr_factor(Recipe(schedule="constant"), 8, 0.0, 10) == 1.0


def test_every_step_of_an_epoch_uses_that_epochs_rate(tmp_path: Path) -> None:
    """cosine-epoch, as the tutorial's per-epoch CosineAnnealingLR: the epoch's last step too."""
    batches = [(torch.randn(4, 3, 2, 2), torch.randint(0, 3, (4,))) for _ in range(3)]
    trainer = linear_trainer(tmp_path, 4, 1, batches, schedule="cosine-epoch", epochs=2)
    rates: list[float] = []
    trainer.optimizer.register_step_pre_hook(lambda opt, *_: rates.append(opt.param_groups[0]["lr"]))
    for epoch in (1, 2):
        trainer.train_epoch(epoch)
    assert rates == [0.5, 0.5, 0.5, 0.25, 0.25, 0.25]


def linear_trainer(tmp_path: Path, batch: int, accumulation: int, batches: list, schedule: str = "constant",
                   epochs: int = 1) -> Trainer:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    recipe = Recipe(lr=0.5, momentum=0.0, weight_decay=0.0, batch_size=batch, accumulation=accumulation,
                    schedule=schedule)
    cell = replace(small_cell(tmp_path, epochs=epochs, image_size=2), recipe=recipe)
    data = DataSplits(batches, batches[:1], ["a", "b", "c"], train_size=sum(len(b[1]) for b in batches),
                      validation_size=len(batches[0][1]))
    return Trainer.create(cell, model, data, TorchBackend(CPU, "fp32"), CellStore(tmp_path, cell.id), get_manager(),
                          {})


def test_gradient_accumulation_equals_one_large_batch(tmp_path: Path) -> None:
    torch.manual_seed(1)
    images, labels = torch.randn(32, 3, 2, 2), torch.randint(0, 3, (32,))
    large = linear_trainer(tmp_path / "large", 32, 1, [(images, labels)])
    small = linear_trainer(tmp_path / "small", 8, 4, [(images[i:i + 8], labels[i:i + 8]) for i in range(0, 32, 8)])
    assert large.train_epoch(1)["optimizer_steps"] == small.train_epoch(1)["optimizer_steps"] == 1
    for a, b in zip(large.model.parameters(), small.model.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


class Unsized:
    """A loader without ``len()``: the engine learns its length only at the epoch's end."""

    def __init__(self, batches: list) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)


def test_a_loader_without_length_steps_after_its_last_partial_window(tmp_path: Path) -> None:
    batches = [(torch.randn(4, 3, 2, 2), torch.randint(0, 3, (4,))) for _ in range(5)]
    sized = linear_trainer(tmp_path / "sized", 4, 2, batches)
    unsized = linear_trainer(tmp_path / "unsized", 4, 2, batches)
    unsized.data.train = Unsized(batches)
    assert sized.train_epoch(1)["optimizer_steps"] == unsized.train_epoch(1)["optimizer_steps"] == 3  # 2 + 2 + 1
    for a, b in zip(sized.model.parameters(), unsized.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_clip_grad_norm_scales_the_update() -> None:
    weight = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([weight], lr=1.0)
    weight.grad = torch.tensor([6.0, 8.0])  # norm 10
    TorchBackend(CPU, "fp32").step(torch.nn.ParameterList([weight]), optimizer, clip_grad_norm=1.0)
    assert torch.allclose(weight.detach(), torch.tensor([-0.6, -0.8]))
    assert weight.grad is None


def test_precisions_the_cpu_only_emulates_are_skipped_unless_allowed(tmp_path: Path) -> None:
    """The cell gets the device rules' refusal (its wording: tests/test_devices.py)."""
    amx = DeviceInfo("cpu", "Xeon with AMX", bf16_native=True, isa="AVX512")
    avx2 = DeviceInfo("cpu", "AMD EPYC 7B13", bf16_native=False, isa="AVX2")
    fp16, bf16 = small_cell(tmp_path, precision="fp16"), small_cell(tmp_path, precision="bf16")
    manager = get_manager()
    assert capability.blocker(fp16, manager, amx) == devices.support(amx, "fp16").refusal(allow_emulated=False)
    assert capability.blocker(bf16, manager, amx) is None
    assert capability.blocker(bf16, manager, avx2) == devices.support(avx2, "bf16").refusal(allow_emulated=False)
    assert capability.blocker(replace(bf16, allow_emulated=True), manager, avx2) is None


class NanModels:
    def knows(self, name: str) -> bool:
        return name == "nan-net"

    def build(self, name: str, num_classes: int, image_size: int, **kwargs: object) -> torch.nn.Module:
        class NanNet(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.linear = torch.nn.Linear(3, num_classes)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.linear(x.mean((2, 3))) * math.nan

        return NanNet()


class NanPlugin:
    @hookimpl
    def register_models(self, register) -> None:
        register("nan-net", NanModels())


def test_nan_loss_fails_the_cell_naming_epoch_and_step(generated_photos: Path, tmp_path: Path) -> None:
    cell = small_cell(generated_photos, model="nan-net", epochs=1, subset=64, loader_params={"workers": 0})
    with registered(NanPlugin(), "nan"):
        assert run(cell, tmp_path, resume=False) == 1
    result = CellStore(tmp_path, cell.id).result()
    assert result["status"] == "failed"
    assert result["reason"] == "NonFiniteLoss: loss is nan at epoch 1, step 1"


def test_few_optimizer_steps_warn_and_are_recorded(generated_photos: Path, tmp_path: Path) -> None:
    cell = small_cell(generated_photos, epochs=1, subset=48, recipe=Recipe(batch_size=16, accumulation=16))
    with pytest.warns(UserWarning, match="optimizer steps per epoch"):
        run(cell, tmp_path, resume=False)
    summary = CellStore(tmp_path, cell.id).result()["summary"]
    assert summary["nominal_optimizer_steps_per_epoch"] == pytest.approx(48 / (16 * 16))
    assert summary["optimizer_steps_per_epoch"] == 1
    assert summary["warnings"][0]["code"] == "few-steps"
    assert "only 0.2 optimizer steps per epoch" in summary["warnings"][0]["message"]
