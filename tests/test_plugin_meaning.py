"""Plugins that keep the contract's shape but not its meaning (issue 31), each reproduced with small inline
plugins, in-process: sanity checks with coded, disqualifying warnings (or a failure under ``strict``), and
observers whose fields reach the epoch records and the result."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from harness import api, sanity
from harness.api import CellSpec, DataSplits, Recipe
from harness.cell import run
from harness.hookspecs import hookimpl
from harness.store import CellStore
from harness.testing import results
from harness_plugins.torch_backend import TorchBackend

Register = Callable[..., Any]
SIZE = 16


class Batches:
    """Fixed batches of a split; ``hog_mib`` allocates (and frees) that much memory during epoch 1 only."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch: int, hog_mib: int = 0) -> None:
        self.images, self.labels, self.batch, self.hog_mib, self.epoch = images, labels, batch, hog_mib, 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.labels) // self.batch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.hog_mib and self.epoch == 1:
            torch.ones(self.hog_mib << 18).add_(1)  # float32: 256 Ki per MiB
        for start in range(0, len(self) * self.batch, self.batch):
            yield self.images[start : start + self.batch], self.labels[start : start + self.batch]


class Shades:
    """Two classes told apart by brightness (dark / bright, noisy), shuffled; ``fault`` breaks one meaning."""

    reads_data = False

    def __init__(self, fault: str | None = None, train: int = 64, batch: int = 4, hog_mib: int = 0) -> None:
        self.fault, self.train, self.batch, self.hog_mib = fault, train, batch, hog_mib

    def can_run(self, device: object, params: object) -> str | None:
        return None

    def split(self, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        generator = torch.Generator().manual_seed(seed)
        labels = torch.arange(count) % 2
        if self.fault != "one-class-first":
            labels = labels[torch.randperm(count, generator=generator)]
        else:
            labels = labels.sort().values
        noise = torch.randint(-40, 40, (count, 3, SIZE, SIZE), generator=generator)
        images = (70 + 110 * labels.view(-1, 1, 1, 1) + noise).clamp(0, 255).to(torch.uint8)
        if self.fault == "random-labels":
            labels = torch.randint(0, 2, (count,), generator=generator)
        if self.fault == "float-0-1":
            return images.float() / 255, labels
        return images, labels

    def build(self, spec: api.DataSpec) -> DataSplits:
        train, validation = self.split(self.train, 1), self.split(64, 2)
        return DataSplits(Batches(*train, self.batch, self.hog_mib), Batches(*validation, 16), ["dark", "bright"],
                          train_size=self.train, validation_size=64)


class Family:
    def knows(self, name: str) -> bool:
        return name == "tiny"

    def build(self, name: str, num_classes: int, image_size: int, **kwargs: Any) -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * image_size**2, num_classes))


class Backends:
    """The built-in torch backend, or one whose ``step`` breaks: ``no-step`` only zeroes the gradients (the
    issue's backend), ``ascent`` steps up the gradient."""

    precisions = ("fp32",)

    def __init__(self, fault: str) -> None:
        self.fault = fault

    def can_run(self, *args: object, **kwargs: object) -> str | None:
        return None

    def create(self, device: api.DeviceInfo, precision: str, params: object, recipe: object = None) -> TorchBackend:
        backend = TorchBackend(device, precision)
        if self.fault == "no-step":
            backend.step = lambda model, optimizer, clip: optimizer.zero_grad(set_to_none=True)  # type: ignore[method-assign]
        elif self.fault == "ascent":
            def ascend(model: torch.nn.Module, optimizer: torch.optim.Optimizer, clip: float | None) -> None:
                for p in model.parameters():
                    p.grad.neg_()  # type: ignore[union-attr]
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            backend.step = ascend  # type: ignore[method-assign]
        return backend


def plugin(loader: Shades, backend: str = "plain", **hooks: Any) -> SimpleNamespace:
    return SimpleNamespace(
        register_loaders=hookimpl(lambda register: register("shades", loader)),
        register_models=hookimpl(lambda register: register("tiny-family", Family())),
        register_backends=hookimpl(lambda register: register("steps", Backends(backend))), **hooks)


def cell(**changes: Any) -> CellSpec:
    spec = CellSpec(id="tiny-shades-steps-fp32", suite="meaning", model="tiny", loader="shades", backend="steps",
                    precision="fp32", loader_plugin="shades", backend_plugin="steps", model_plugin="tiny-family",
                    epochs=1, image_size=SIZE, data="", seed=0, device="cpu",
                    recipe=Recipe(optimizer="adamw", lr=1e-2, weight_decay=0.0, batch_size=4))
    return replace(spec, **changes)


def train(harness_plugin: Register, tmp_path: Path, loader: Shades, backend: str = "plain", hooks: Any = None,
          **changes: Any) -> dict[str, Any]:
    harness_plugin(plugin(loader, backend, **(hooks or {})), name="inline")
    spec = cell(**changes)
    run(spec, tmp_path / "out", resume=False)
    return results(tmp_path / "out")[spec.id]


def flags(result: dict[str, Any]) -> dict[str, str]:
    """code -> message of the result's disqualifying warnings."""
    return {w["code"]: w["message"] for w in result["summary"]["warnings"] if w.get("disqualifies")}


# -- 1 sanity checks --------------------------------------------------------------------------------------------
def test_a_sound_cell_has_no_disqualifying_warning(harness_plugin: Register, tmp_path: Path) -> None:
    result = train(harness_plugin, tmp_path, Shades(train=128, batch=2), epochs=1)
    assert result["status"] == "ok" and result["summary"]["best_val_acc"] > 0.9
    assert flags(result) == {}


def test_a_backend_that_never_steps_gets_a_disqualifying_warning(harness_plugin: Register, tmp_path: Path) -> None:
    """Issue 31, finding 1: 'ok', exit 0, optimizer steps counted, faster than a correct backend."""
    result = train(harness_plugin, tmp_path, Shades(), "no-step")
    assert result["status"] == "ok"
    assert flags(result)["params-unchanged"] == ("the model's parameters are unchanged after 16 optimizer steps: the "
                                                 "backend does not step the optimizer")


def test_a_strict_suite_fails_the_cell_instead(harness_plugin: Register, tmp_path: Path) -> None:
    result = train(harness_plugin, tmp_path, Shades(), "no-step", options={"strict": True})
    assert result["status"] == "failed"
    assert result["reason"].startswith("SanityError: params-unchanged: the model's parameters are unchanged")
    assert result["reason"].endswith("(the suite is strict)")


def test_a_float_image_loader_gets_a_warning_naming_the_observed_range(harness_plugin: Register,
                                                                       tmp_path: Path) -> None:
    """Issue 31, finding 3: float images in [0, 1] instead of uint8 or normalised floats ran 'ok'."""
    loader = Shades("float-0-1")
    first = loader.split(loader.train, 1)[0][: loader.batch]
    result = train(harness_plugin, tmp_path, loader)
    assert flags(result)["image-range"] == (
        f"train batch: float images span {float(first.min()):.4g}..{float(first.max()):.4g}: not normalised "
        "(x / 255?); expected uint8 0..255 (the engine normalises) or float (x / 255 - mean) / std, about -2.1..2.6")
    assert 0 <= first.min() < first.max() <= 1


def test_unshuffled_training_labels_are_flagged(harness_plugin: Register, tmp_path: Path) -> None:
    result = train(harness_plugin, tmp_path, Shades("one-class-first"))
    assert flags(result)["label-range"] == ("the first 4 training batches hold only class 0 of 2: the training "
                                            "split is unshuffled or its labels are wrong")


def test_a_loss_that_does_not_fall_is_flagged(harness_plugin: Register, tmp_path: Path) -> None:
    result = train(harness_plugin, tmp_path, Shades(train=100, batch=2), "ascent",
                   recipe=Recipe(optimizer="sgd", lr=1e-3, momentum=0.0, weight_decay=0.0, batch_size=2))
    assert flags(result)["loss-not-decreasing"].startswith("training loss did not fall over the first 50 optimizer "
                                                           "steps: mean ")


def test_accuracy_near_chance_after_the_planned_epochs_is_flagged(harness_plugin: Register, tmp_path: Path) -> None:
    result = train(harness_plugin, tmp_path, Shades("random-labels"))
    assert result["summary"]["best_val_acc"] < 0.65
    assert flags(result)["near-chance"].startswith(f"best validation accuracy {result['summary']['best_val_acc']:.1%}"
                                                   " after 1 epoch(s) is not above chance (50.0% for 2 classes) on "
                                                   "64 validation images (binomial test p = ")


@pytest.mark.parametrize(("images", "problem"), [
    (torch.zeros(2, 3, 4, 4, dtype=torch.uint8) + torch.tensor([0, 1], dtype=torch.uint8).view(2, 1, 1, 1),
     "uint8 images span 0..1; expected pixel values 0..255"),
    (torch.zeros(2, 3, 4, 4), "every image value of the batch is 0: blank images"),
    (torch.linspace(-2, 2.5, 96).view(2, 3, 4, 4), None),
    (torch.arange(96, dtype=torch.uint8).view(2, 3, 4, 4), None),
])
def test_image_values_the_engine_expects(images: torch.Tensor, problem: str | None) -> None:
    assert sanity.image_problem(images) == problem


def test_throughput_above_the_devices_peak_is_flagged() -> None:
    """Where the device's peak is known (GPUs of harness/data/devices.json): MFU above 100 %."""
    assert sanity.mfu_problem(100.0, 1e9, "Tesla T4", "fp32", 1) is None  # 100 GFLOP/s of 8.1 TFLOP/s
    assert sanity.mfu_problem(10_000.0, 1e9, "Tesla T4", "fp32", 1) == (
        "10000.0 img/s x 1 GFLOP per image is 123% of the peak of 1 x Tesla T4 (8.1 TFLOP/s in fp32): steps "
        "skipped, or work not done")
    assert sanity.mfu_problem(10_000.0, 1e9, None, "fp32", 1) is None  # a CPU: no known peak


# -- 4 observers -------------------------------------------------------------------------------------------------
class Observer:
    """Adds a per-epoch field and a run-level field."""

    @hookimpl
    def harness_epoch_metrics(self, record: api.EpochRecord) -> dict[str, float]:
        return {"acc_gap": record.train_acc - record.val_acc}

    @hookimpl
    def harness_run_metrics(self, summary: dict[str, Any]) -> dict[str, float]:
        return {"best_pct": 100 * summary["best_val_acc"]}


def test_observer_fields_reach_the_epoch_records_and_the_summary(harness_plugin: Register, tmp_path: Path) -> None:
    harness_plugin(Observer(), name="gap")
    result = train(harness_plugin, tmp_path, Shades(), epochs=2)
    rows = CellStore(tmp_path / "out", cell().id).epochs()
    assert [r["extra"] for r in rows] == [{"gap.acc_gap": r["train_acc"] - r["val_acc"]} for r in rows]
    assert result["summary"]["extra"] == {"gap.best_pct": 100 * result["summary"]["best_val_acc"]}


def test_an_observer_answering_no_number_fails_the_cell_naming_it(harness_plugin: Register, tmp_path: Path) -> None:
    hooks = {"harness_epoch_metrics": hookimpl(lambda record: {"when": "now"})}
    result = train(harness_plugin, tmp_path, Shades(), hooks=hooks)
    assert (result["status"], result["reason"]) == (
        "failed", "ContractError: plugin 'inline' (distribution (registered in-process)): harness_epoch_metrics "
                  "returned 'when': 'now' (str); expected a number")


def test_peak_memory_is_per_epoch_in_gigabytes(harness_plugin: Register, tmp_path: Path) -> None:
    """200 MiB allocated during epoch 1 only: epoch 1's peak holds them, epoch 2's does not."""
    train(harness_plugin, tmp_path, Shades(hog_mib=200), epochs=2)
    first, second = (r["peak_mem_gb"] for r in CellStore(tmp_path / "out", cell().id).epochs())
    assert first - second == pytest.approx(200 * 2**20 / 1e9, abs=0.03)
    status = Path("/proc/self/status").read_text()
    rss_kib = int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])
    assert second >= 0.5 * rss_kib * 1024 / 1e9  # GB, not KiB / 1e6: the process's resident set, roughly


def test_epoch_records_keep_extra_as_json(harness_plugin: Register, tmp_path: Path) -> None:
    train(harness_plugin, tmp_path, Shades())
    line = json.loads((tmp_path / "out" / "cells" / cell().id / "epochs.jsonl").read_text().splitlines()[0])
    assert line["extra"] == {}
