"""The Colossal-AI backends: registration and capability everywhere; real training where Colossal-AI is installed.

Colossal-AI 0.5.0 pins torch<=2.5.1, so it lives in its own environment (constraints/colossalai.txt,
``tox -e colossalai``); in the main environment the tests that need it skip, saying so.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import plant_code

from harness.api import BackendPlugin, DeviceInfo, Recipe
from harness.plugins import get_manager
from harness.store import CellStore
from harness.testing import run_harness
from harness_plugins import colossalai_backend as cai

CPU = DeviceInfo("cpu", "cpu")
H100 = DeviceInfo("cuda", "NVIDIA H100 80GB HBM3", capability=(9, 0), bf16_native=True)
T4 = DeviceInfo("cuda", "Tesla T4", capability=(7, 5), bf16_native=False)
WORKER = Path(__file__).with_name("colossalai_worker.py")
INSTALLED = importlib.util.find_spec("colossalai") is not None
needs_colossalai = pytest.mark.skipif(
    not INSTALLED, reason="colossalai is not installed here (it pins torch<=2.5.1): CI runs these in the environment "
                          "the harness builds for it (harness envs build), locally also tox -e colossalai")

# Measured on the 2-core CPU (vit_tiny, 32 px, 160 training / 40 validation photos, 2 epochs, seed 0):
# colossalai-ddp and torch gave the same per-epoch train loss to 4 decimals and the same validation accuracy,
# with 1 and with 2 processes (both are torch DDP underneath). The tolerance allows reduction-order noise:
# 1e-3 in loss, one validation photo.
LOSS_TOLERANCE = 1e-3
VALIDATION_PHOTOS = 40  # the suite's subset (160) caps training photos; validation gets a quarter


def backends() -> dict[str, object]:
    return {name: reg.impl for name, reg in get_manager().backends().items()}


def test_registers_the_four_booster_plugins() -> None:
    found = backends()
    for variant in cai.VARIANTS:
        impl = found[f"colossalai-{variant}"]
        assert isinstance(impl, BackendPlugin)
        assert {"fp32", "fp16", "bf16"} <= set(impl.precisions)
    assert cai.AUTOCAST_BF16 in found["colossalai-ddp"].precisions
    assert cai.AUTOCAST_BF16 not in found["colossalai-zero2"].precisions


@pytest.mark.skipif(INSTALLED, reason="colossalai is installed here")
def test_without_colossalai_every_cell_says_how_to_install_it() -> None:
    for variant in cai.VARIANTS:
        reason = cai.ColossalAI(variant).can_run(H100, "fp16", 1, {})
        assert "colossalai is not installed" in reason and "constraints/colossalai.txt" in reason
    assert cai.harness_environment() is None


@pytest.mark.parametrize(("variant", "device", "precision", "expected"), [
    ("ddp", CPU, "fp32", None),
    ("ddp", CPU, cai.AUTOCAST_BF16, None),
    ("ddp", CPU, "fp16", cai.DDP_FP16_CPU),
    ("ddp", CPU, "bf16", cai.DDP_BF16_STUB),
    ("ddp", H100, "bf16", cai.DDP_BF16_STUB),
    ("ddp", H100, "fp16", None),
    ("zero1", CPU, "fp32", cai.NEEDS_CUDA["zero1"]),
    ("zero2", CPU, "bf16", cai.NEEDS_CUDA["zero2"]),
    ("gemini", CPU, "fp16", cai.NEEDS_CUDA["gemini"]),
    ("gemini", H100, "fp32", cai.GEMINI_FP32),
    ("zero2", H100, "bf16", None),
    ("gemini", H100, "fp16", None),
    ("zero1", T4, "bf16", None),  # the device's verdict (emulated bf16) comes from harness.devices
])
def test_capability_matrix(variant: str, device: DeviceInfo, precision: str, expected: str | None) -> None:
    assert cai.precision_blocker(variant, device, precision) == expected


def test_the_device_refuses_emulated_bf16_before_the_backend_is_asked() -> None:
    from harness import capability

    registration = get_manager().backends()["colossalai-zero1"]
    reason = capability.backend_blocker(registration, T4, "bf16", 1, {}, None)
    assert reason.startswith("bf16 on Tesla T4 (sm_75) is emulated") and "--allow-emulated" in reason


def test_gemini_refuses_a_recipe_without_adam_and_unknown_params_are_named() -> None:
    assert "optimizer 'sgd'" in cai.recipe_blocker("gemini", Recipe(optimizer="sgd"))
    assert cai.recipe_blocker("gemini", Recipe(optimizer="adamw")) is None
    assert cai.recipe_blocker("zero2", Recipe(optimizer="sgd")) is None
    reason = cai.ColossalAI("zero2").can_run(H100, "fp16", 1, {"stage": 3})
    assert reason.startswith("colossalai-zero2 has no parameter 'stage'")


def test_ddp_on_cpu_refuses_batchnorm_models_before_the_cell_starts() -> None:
    import timm

    with torch.device("meta"):
        resnet, vit = (timm.create_model(name, num_classes=2) for name in ("resnet10t", "vit_tiny_patch16_224"))
    ddp = cai.ColossalAI("ddp")
    assert ddp.check_model(resnet, DeviceInfo("cpu", "cpu"), "fp32") == f"{cai.BATCHNORM_CPU} (here 'conv1.1')"
    assert ddp.check_model(vit, DeviceInfo("cpu", "cpu"), "fp32") is None
    assert ddp.check_model(resnet, H100, "fp16") is None
    assert cai.ColossalAI("zero2").check_model(resnet, DeviceInfo("cpu", "cpu"), "fp16") is None


@needs_colossalai
def test_environment_reports_the_installed_version() -> None:
    assert cai.harness_environment() == {"colossalai": cai.installed_version()}
    assert cai.ColossalAI("ddp").can_run(CPU, "fp32", 2, {}) is None


def torchrun(nproc: int, *args: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                           str(WORKER), *args], capture_output=True, text=True, timeout=600)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stdout[-2000:] + done.stderr[-3000:]
    return json.loads(lines[0][len("RESULT "):])


@needs_colossalai
def test_each_refused_combination_really_fails_on_this_cpu() -> None:
    """The reasons can_run gives are what Colossal-AI does here: each refused combination fails as quoted."""
    found = torchrun(1, "claims")
    assert found["ddp-fp32"] == "ok"
    assert found["ddp-bf16"].startswith("TypeError: Can't instantiate abstract class BF16MixedPrecision")
    assert found["ddp-fp16"].startswith("TypeError:") and "context manager" in found["ddp-fp16"]
    for cell in ("zero1-fp32", "zero1-bf16", "zero2-fp32", "zero2-bf16"):
        assert found[cell].startswith("AssertionError: device is required"), found[cell]
    assert "No usable kernel found for CPUAdamLoader" in found["gemini-bf16"]
    assert found["gemini-fp32"].startswith("AssertionError: precision fp32 is not supported")
    assert found["ddp-batchnorm"].startswith("ValueError: SyncBatchNorm layers only work with GPU modules")
    assert found["adapter-batchnorm"].startswith(f"CannotRun: {cai.BATCHNORM_CPU} (here '1')")


@needs_colossalai
@pytest.mark.parametrize("nproc", [1, 2])
def test_backend_protocol_on_real_photos(photos: Path, tmp_path: Path, nproc: int) -> None:
    """prepare, no_sync + accumulation, clipped step, all_reduce and a save/load round trip, under torchrun."""
    (tmp_path / "clipped").mkdir()
    (tmp_path / "free").mkdir()
    clipped = torchrun(nproc, "loop", str(photos), str(tmp_path / "clipped"), "1e-6")
    free = torchrun(nproc, "loop", str(photos), str(tmp_path / "free"), "0")
    for run in (clipped, free):
        assert run["world_size"] == run["processes"] == nproc
        assert run["ranks_agree"] and run["restored"] and run["grads_cleared"]
        assert run["files"] == ["model.pt", "optimizer.pt"]
    assert clipped["losses"] == free["losses"]
    assert clipped["max_update"] <= 0.1 * 1e-6  # lr x max_norm bounds every coordinate of the step
    assert free["max_update"] > 1e-4


COMPARE_SUITE = """
name = "colossalai-vs-torch"
epochs = 2
image_size = 32
subset = 160
seed = 0
recipe = { base = "seed", batch_size = 16, accumulation = 1 }

[matrix]
model = ["vit_tiny_patch16_224"]
loader = ["torchvision"]
backend = ["torch", "colossalai-ddp", "torch-ddp2", "colossalai-ddp2"]
precision = ["fp32"]

[models.vit_tiny_patch16_224]
drop_rate = 0.1

[backends.torch-ddp2]
use = "torch"
nproc = 2

[backends.colossalai-ddp2]
use = "colossalai-ddp"
nproc = 2
"""

SKIP_SUITE = """
name = "colossalai-skips"
epochs = 1
image_size = 32
subset = 40
recipe = "seed"
allow_emulated = true  # the backends' own refusals are under test, not the device's (fp16 is emulated on CPUs)

[matrix]
model = ["vit_tiny_patch16_224"]
loader = ["torchvision"]
backend = ["colossalai-ddp", "colossalai-zero1", "colossalai-zero2", "colossalai-gemini"]
precision = ["fp16", "bf16"]
"""


def results(out: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in (out / "cells").glob("*/result.json")}


@needs_colossalai
@pytest.mark.slow
def test_colossalai_ddp_matches_torch_with_one_and_two_processes(photos: Path, tmp_path: Path) -> None:
    suite = tmp_path / "compare.toml"
    suite.write_text(COMPARE_SUITE)
    done = run_harness("run", "--suite", suite, "--data", photos, "--out", tmp_path / "out", "--device", "cpu",
                       timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    found = results(tmp_path / "out")
    assert {r["status"] for r in found.values()} == {"ok"}, {k: r["reason"] for k, r in found.items()}
    for torch_name, cai_name in (("torch", "colossalai-ddp"), ("torch-ddp2", "colossalai-ddp2")):
        ref = CellStore(tmp_path / "out", f"vit_tiny_patch16_224-torchvision-{torch_name}-fp32").epochs()
        got = CellStore(tmp_path / "out", f"vit_tiny_patch16_224-torchvision-{cai_name}-fp32").epochs()
        assert len(ref) == len(got) == 2
        for a, b in zip(ref, got, strict=True):
            assert abs(a["train_loss"] - b["train_loss"]) <= LOSS_TOLERANCE
            assert abs(a["val_acc"] - b["val_acc"]) <= 1 / VALIDATION_PHOTOS + 1e-9
    env = next(iter(found.values()))["env"]
    assert env["colossalai"] == cai.installed_version()


@needs_colossalai
def test_cells_colossalai_cannot_run_on_cpu_are_skipped_with_reasons(generated_photos: Path, tmp_path: Path) -> None:
    suite = tmp_path / "skips.toml"
    suite.write_text(SKIP_SUITE)
    done = run_harness("run", "--suite", suite, "--data", generated_photos, "--out", tmp_path / "out", "--device",
                       "cpu")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    found = {k.removeprefix("vit_tiny_patch16_224-torchvision-"): r for k, r in results(tmp_path / "out").items()}
    assert len(found) == 8 and {r["status"] for r in found.values()} == {"skipped"}
    assert found["colossalai-ddp-fp16"]["reason"] == cai.DDP_FP16_CPU
    assert found["colossalai-ddp-bf16"]["reason"] == cai.DDP_BF16_STUB
    assert found["colossalai-zero1-bf16"]["reason"] == cai.NEEDS_CUDA["zero1"]
    assert found["colossalai-gemini-fp16"]["reason"] == cai.NEEDS_CUDA["gemini"]


@needs_colossalai
def test_a_booster_checkpoint_that_would_run_code_is_refused_on_resume(generated_photos: Path,
                                                                       tmp_path: Path) -> None:
    """The Booster's own torch.load unpickles anything (weights_only defaults to False on torch 2.5.1)."""
    suite, out = tmp_path / "compare.toml", tmp_path / "out"
    suite.write_text(COMPARE_SUITE)
    args = ("run", "--suite", suite, "--data", generated_photos, "--out", out, "--device", "cpu", "--epochs", "1",
            "--only", "backend=colossalai-ddp")
    done = run_harness(*args)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    cell = CellStore(out, "vit_tiny_patch16_224-torchvision-colossalai-ddp-fp32")
    cell.result_path.unlink()  # as if the run had been killed after the epoch's checkpoint
    planted, marker = cell.checkpoint_path / "model.pt", tmp_path / "code-ran"
    plant_code(planted, marker)
    done = run_harness(*args, "--resume")
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert not marker.exists()
    reason = cell.result()["reason"]
    assert "\n" not in reason and reason.startswith(
        f"UnsafeCheckpoint: {planted}: refused, it holds more than weights (unsupported GLOBAL posix.system"), reason
