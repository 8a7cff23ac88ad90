"""Plugins that keep the contract's shape but not its meaning (issue 31), each reproduced with small inline
plugins, in-process: sanity checks with coded, disqualifying warnings (or a failure under ``strict``), and
observers whose fields reach the epoch records and the result."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from helpers import one_cell_suite

from harness import api, capability, cli, sanity
from harness.api import CellSpec, DataSplits, Recipe
from harness.cell import run
from harness.hookspecs import hookimpl
from harness.plugins import MODULES_ENV, PluginError, build_manager, suite_path
from harness.store import CellStore
from harness.suite import SuiteError, expand
from harness.testing import results, suite_cells
from harness_plugins.torch_backend import TorchBackend

Register = Callable[..., Any]
SIZE = 16
REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "plugins" / "examples" / "harness-synthetic"


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
    def __init__(self, known: tuple[str, ...] = ("tiny",)) -> None:
        self.known = known

    def knows(self, name: str) -> bool:
        return name in self.known

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


def test_the_reports_loader_carries_observer_fields(harness_plugin: Register, tmp_path: Path) -> None:
    from harness.report.load import load_results

    harness_plugin(Observer(), name="gap")
    result = train(harness_plugin, tmp_path, Shades(), epochs=2)
    loaded = load_results([tmp_path / "out"])
    rows = CellStore(tmp_path / "out", cell().id).epochs()
    assert [e["gap.acc_gap"] for e in loaded.epochs["extra"]] == [r["extra"]["gap.acc_gap"] for r in rows]
    assert loaded.cells["extra"].tolist() == [{"gap.best_pct": 100 * result["summary"]["best_val_acc"]}]


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


def test_the_example_packages_observer_adds_a_per_epoch_field(harness_plugin: Register, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLE / "src"))
    from harness_synthetic import hooks

    harness_plugin(hooks, name="synthetic")
    spec = cell(id="tinycnn-synthetic-torch-fp32", model="tinycnn", model_plugin="tinycnn", loader="synthetic",
                loader_plugin="synthetic", backend="torch", backend_plugin="torch", epochs=2,
                loader_params={"train_size": 64, "classes": 2})
    CellStore(tmp_path / "out", spec.id).write_cell(spec)  # as the runner does before the cell starts
    assert run(spec, tmp_path / "out", resume=False) == 0
    rows = CellStore(tmp_path / "out", spec.id).epochs()
    assert [sorted(r["extra"]) for r in rows] == [["synthetic.cpu_util"]] * 2
    assert all(0 < r["extra"]["synthetic.cpu_util"] < 8 for r in rows)
    assert results(tmp_path / "out")[spec.id]["summary"]["extra"]["synthetic.cpu_s"] > 0


def test_the_example_package_loads_without_importing_torch() -> None:
    """docs/plugins.md: import heavy libraries inside can_run/build, not at module level; the example does."""
    done = subprocess.run([sys.executable, "-c", "import sys, harness_synthetic.hooks; print('torch' in sys.modules)"],
                          capture_output=True, text=True, env={"PYTHONPATH": str(EXAMPLE / "src")}, timeout=120)
    assert (done.returncode, done.stdout.strip()) == (0, "False"), done.stderr


# -- 2 model-name ownership --------------------------------------------------------------------------------------
SHARED = ("model 'resnet18' is also known to model family 'shadow' of plugin 'shadow' (distribution (registered "
          "in-process)); model family 'timm' of plugin 'timm' (distribution harness 0.1.0) builds it (a built-in "
          'family keeps a name it knows; pin another with [models.resnet18] family = "NAME")')


def shadowing(loader: Shades | None = None) -> SimpleNamespace:
    """A family that also answers timm's ``resnet18`` (issue 31, finding 2), and a loader."""
    return SimpleNamespace(register_loaders=hookimpl(lambda register: register("shades", loader or Shades())),
                           register_models=hookimpl(lambda register: register("shadow", Family(("resnet18",)))))


def suite(path: Path, models: str = "") -> Path:
    return one_cell_suite(path, "resnet18", "shades", name="shared", batch_size=4, tables=models)


def test_a_shadowing_family_is_named_before_the_run_starts(harness_plugin: Register, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 31, finding 2: a third-party family answering resnet18 silently took over timm's cells."""
    seen = {}

    class Asking(Shades):
        def can_run(self, device: object, params: object) -> str | None:
            seen["before"] = capsys.readouterr().err  # what harness run said before asking about the first cell
            return "refused on purpose"

    harness_plugin(shadowing(Asking()), name="shadow")
    assert cli.main(["run", "--suite", str(suite(tmp_path / "suite.toml")), "--out", str(tmp_path / "out")]) == 0
    assert f"harness: warning: {SHARED}\n" in seen["before"]
    assert results(tmp_path / "out")["resnet18-shades-torch-fp32"]["cell"]["model_plugin"] == "timm"


def test_harness_plugins_and_env_name_the_shadowing_family(harness_plugin: Register, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    harness_plugin(shadowing(), name="shadow")
    assert cli.main(["plugins"]) == 0
    listing = capsys.readouterr().out
    assert re.search(r"^shadow +\(registered in-process\)\n(?: {15}.*\n)* {15}warning: its model families know 1 "
                     r"name\(s\) another family knows too: resnet18; a built-in family keeps such a name unless a "
                     r'suite pins another \(\[models.NAME\] family = "F"\)$', listing, re.MULTILINE), listing
    assert cli.main(["env", "--suite", str(suite(tmp_path / "suite.toml")), "--device", "cpu"]) == 0
    assert f"  warning: {SHARED}\n" in capsys.readouterr().out


def test_a_suite_pins_the_family_and_the_result_records_it(harness_plugin: Register, tmp_path: Path) -> None:
    harness_plugin(shadowing(), name="shadow")
    [spec] = suite_cells(suite(tmp_path / "suite.toml", '[models.resnet18]\nfamily = "shadow"\n'))
    assert (spec.model_plugin, spec.model_params) == ("shadow", {})
    assert run(spec, tmp_path / "out", resume=False) == 0
    result = results(tmp_path / "out")[spec.id]
    assert result["cell"]["model_plugin"] == "shadow"
    assert {"code": "model-name-shared", "message": (
        "model 'resnet18' is also known to model family 'timm' of plugin 'timm' (distribution harness 0.1.0); model "
        "family 'shadow' of plugin 'shadow' (distribution (registered in-process)) builds it (the suite pins it: "
        '[models.resnet18] family = "shadow")')} in result["summary"]["warnings"]


@pytest.mark.parametrize(("family", "error"), [
    ("nope", "key 'models.resnet18.family': unknown model family 'nope'; registered: "),
    ("shadow-too", "key 'models.resnet18.family': model family 'shadow-too' of plugin 'shadow' (distribution "
                   "(registered in-process)) does not know model 'resnet18'"),
])
def test_a_pin_to_a_family_that_cannot_build_the_model_is_refused(harness_plugin: Register, tmp_path: Path,
                                                                  family: str, error: str) -> None:
    mine = shadowing()
    mine.register_models = hookimpl(lambda register: register("shadow-too", Family()))
    harness_plugin(mine, name="shadow")
    with pytest.raises(SuiteError, match=re.escape(error)):
        suite_cells(suite(tmp_path / "suite.toml", f'[models.resnet18]\nfamily = "{family}"\n'))


def rule(path: Path) -> str:
    text = path.read_text()
    found = re.search(r"<!-- model-family-rule\b.*?-->\n(.*?)<!-- /model-family-rule -->", text, re.DOTALL)
    assert found, f"{path} has no model-family-rule paragraph"
    return " ".join(found.group(1).split())


def test_readme_and_the_guide_state_one_clash_rule() -> None:
    assert rule(REPO / "README.md") == rule(REPO / "docs" / "plugins.md")
    assert "a built-in family first" in rule(REPO / "README.md")


# -- 3 unknown names name the plugins that might provide them ----------------------------------------------------
def distribution(site: Path, name: str, entry_points: str = "") -> None:
    info = site / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    if entry_points:
        (info / "entry_points.txt").write_text(entry_points)


def test_an_unknown_suite_names_the_broken_plugin_and_the_unloaded_distributions(
        site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 31, finding 4: a misspelt hook broke the plugin providing the suite; "unknown suite" said no more."""
    (site / "misspelt.py").write_text("from harness.hookspecs import hookimpl\n"
                                      "@hookimpl\ndef register_suite(register):\n    register('mine', 'mine.toml')\n")
    monkeypatch.setenv(MODULES_ENV, "misspelt")
    distribution(site, "harness-extras", "[harness_plugins]\nextras = extras_mod\n")
    distribution(site, "harness-bare")
    distribution(site, "unrelated", "[console_scripts]\nx = y:z\n")
    with pytest.raises(PluginError) as caught:
        suite_path("mine")
    message = str(caught.value)
    assert message.startswith("unknown suite 'mine'; registered suites: ")
    assert message.endswith(
        "; plugin 'misspelt' that may provide it is broken: ContractError: unknown hook 'register_suite'; did you "
        "mean 'register_suites'?"
        "; distribution harness-bare 0.1 declares no [project.entry-points.harness] table, so its plugins are never "
        "loaded"
        "; distribution harness-extras 0.1 declares no [project.entry-points.harness] table (it has "
        "[project.entry-points.harness_plugins]), so its plugins are never loaded"), message
    assert "unrelated" not in message


def test_an_unknown_model_names_the_entry_points_the_allow_list_leaves_out(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HARNESS_PLUGINS", "torch,torchvision")
    with pytest.raises(SuiteError, match=r"unknown model 'resnet18'; no model family knows it \(\).*; plugin 'timm' "
                                         r"is not loaded: HARNESS_PLUGINS=torch,torchvision(;|$)"):
        expand(suite(tmp_path / "suite.toml"), build_manager())


# -- 7 docs that agree: a backend's own refusal is not hidden ------------------------------------------------------
def test_the_devices_emulation_refusal_does_not_hide_the_backends_own_reason(harness_plugin: Register) -> None:
    class Picky(Backends):
        precisions = ("fp32", "fp16")

        def can_run(self, *args: object, **kwargs: object) -> str | None:
            return "fp16 needs the picky GPU kernels"

    manager = harness_plugin(SimpleNamespace(register_backends=hookimpl(lambda register: register("picky", Picky(
        "plain")))), name="picky")
    picky, cpu = manager.backends()["picky"], api.DeviceInfo("cpu", "AMD EPYC 7B13")
    reason = capability.backend_blocker(picky, cpu, "fp16", 1, {}, None)
    assert reason is not None and reason.startswith("fp16 on AMD EPYC 7B13 is emulated")
    assert reason.endswith("; and backend picky refuses: fp16 needs the picky GPU kernels")
    assert capability.backend_blocker(picky, cpu, "fp16", 1, {}, None, allow_emulated=True) == (
        "fp16 needs the picky GPU kernels")
