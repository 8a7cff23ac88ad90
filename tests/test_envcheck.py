"""``harness env``: the capability matrix agrees with what a real run records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness import devices, envinfo
from harness.testing import run_harness

SMOKE_SLICE = ("--only", "model=resnet18")  # every loader, backend and precision of flowers-smoke, one model


@pytest.fixture(scope="session")
def smoke_run(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real ``flowers-smoke`` suite for one model, one epoch per cell (the whole suite runs in CI's quick-start
    check, .ci/run)."""
    out = tmp_path_factory.mktemp("smoke") / "out"
    result = run_harness("run", "--suite", "flowers-smoke", "--data", photos, "--out", out, "--epochs", "1",
                         *SMOKE_SLICE, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


@pytest.mark.slow
def test_env_suite_agrees_row_by_row_with_a_real_run(smoke_run: Path) -> None:
    env = run_harness("env", "--suite", "flowers-smoke", "--json")
    assert env.returncode == 0, env.stderr
    plan = json.loads(env.stdout)["suite"]
    recorded = {p.parent.name: json.loads(p.read_text()) for p in (smoke_run / "cells").glob("*/result.json")}
    assert len(recorded) == 30 and set(recorded) <= set(plan["statuses"])
    assert {cid: plan["statuses"][cid] for cid in recorded} == {cid: r["status"] for cid, r in recorded.items()}
    skipped = {r["reason"] for r in recorded.values() if r["status"] == "skipped"}
    assert skipped <= set(plan["reasons"])
    assert sum(r["status"] == "ok" for r in recorded.values()) > 0


@pytest.mark.slow
def test_env_reports_fingerprint_capabilities_and_estimate(smoke_run: Path) -> None:
    result = run_harness("env", "--suite", "flowers-smoke", "--results", smoke_run, "--json")
    report = json.loads(result.stdout)
    assert report["environment"]["device_type"] == "cpu"
    assert {"torch", "timm", "pluggy", "pandas", "harness", "cpu_model", "hostname"} <= set(report["environment"])
    rows = {(r["name"], r["precision"]): r["reason"] for r in report["capabilities"]}
    assert rows[("torch", "fp32")] is None
    assert rows[("torch", "fp16")] == devices.support(envinfo.device_info("cpu"), "fp16").refusal(False)
    assert report["suite"]["estimate_s"] > 0
    text = run_harness("env", "--suite", "flowers-smoke")
    assert "Capabilities on this machine" in text.stdout and "Suite flowers-smoke: 60 cells" in text.stdout


def test_env_strict_fails_when_cells_cannot_run() -> None:
    assert run_harness("env", "--suite", "flowers-smoke", "--strict").returncode == 1
    assert run_harness("env").returncode == 0


BF16_CELL = ("--only", "id=resnet18-torchvision-torch-bf16")


def bf16_support(forced: str) -> devices.Support:
    """What ``harness env`` says of bf16 with the CPU probe forced to ``forced``."""
    done = run_harness("env", "--suite", "flowers-smoke", "--json", env={devices.FORCE_CPU_BF16: forced})
    row = {r["precision"]: r for r in json.loads(done.stdout)["precisions"]}["bf16"]
    return devices.Support(row["level"], row["reason"], row["slowdown"])


def test_emulated_bf16_is_refused_naming_the_cpu_and_the_missing_feature(tmp_path: Path,
                                                                         generated_photos: Path) -> None:
    """The CPU probe forced to 'emulated' (as on an AVX2-only AMD EPYC): the cell is skipped with the device rules'
    refusal (its wording: tests/test_devices.py); forced 'native', bf16 runs."""
    emulated = bf16_support(devices.EMULATED)
    assert emulated.level == devices.EMULATED
    run = run_harness("run", "--suite", "flowers-smoke", "--data", generated_photos, "--out", tmp_path / "out",
                      *BF16_CELL, env={devices.FORCE_CPU_BF16: devices.EMULATED})
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads((tmp_path / "out" / "cells" / BF16_CELL[1][3:] / "result.json").read_text())
    assert result["status"] == "skipped"
    assert result["reason"] == emulated.refusal(allow_emulated=False)
    assert emulated.reason.startswith(f"bf16 on {result['env']['cpu_model']} is emulated")
    assert bf16_support(devices.NATIVE).level == devices.NATIVE


def test_allow_emulated_runs_the_cell_and_labels_it_everywhere(tmp_path: Path, generated_photos: Path) -> None:
    out = tmp_path / "out"
    run = run_harness("run", "--suite", "flowers-smoke", "--data", generated_photos, "--out", out, "--epochs", "1",
                      *BF16_CELL, "--allow-emulated", env={devices.FORCE_CPU_BF16: devices.EMULATED})
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads((out / "cells" / BF16_CELL[1][3:] / "result.json").read_text())
    assert result["status"] == "ok" and result["env"]["precision_support"]["bf16"] == "emulated"
    assert "emulated-precision" in [w["code"] for w in result["summary"]["warnings"]]
    summary = (out / "summary.csv").read_text().splitlines()
    header, row = summary[0].split(","), summary[1].split(",")
    assert row[header.index("precision_support")] == "emulated"
    assert "emulated" in (out / "summary.md").read_text()


RAISING_LOADER_PLUGIN = '''
from harness.hookspecs import hookimpl

class Raising:
    def can_run(self, device, params):
        raise RuntimeError("probe failed")

    def build(self, spec):
        raise AssertionError("never built")

@hookimpl
def register_loaders(register):
    register("raising", Raising())
'''

MANY_PROCESS_SUITE = """
name = "many-procs"
epochs = 1
image_size = 32
recipe = "default"
[matrix]
model = ["resnet10t"]
loader = ["torchvision", "raising"]
backend = ["torch", "torch-ddp64"]
precision = ["fp32"]
[backends.torch-ddp64]
use = "torch"
nproc = 64
"""


def test_env_reports_a_raising_plugin_and_oversized_cells_without_crashing(tmp_path: Path) -> None:
    (tmp_path / "raising_plugin.py").write_text(RAISING_LOADER_PLUGIN)
    (tmp_path / "suite.toml").write_text(MANY_PROCESS_SUITE)
    plugin = {"plugin_modules": ["raising_plugin"], "pythonpath": [tmp_path]}
    result = run_harness("env", "--suite", tmp_path / "suite.toml", "--json", **plugin)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    rows = {(r["name"], r["precision"]): r["reason"] for r in report["capabilities"]}
    assert rows[("raising", None)] == "plugin 'raising_plugin' raised in can_run: RuntimeError('probe failed')"
    plan = report["suite"]
    assert (plan["cells"], plan["run"], plan["oversized"]) == (4, 2, 2)
    text = run_harness("env", "--suite", tmp_path / "suite.toml", **plugin).stdout
    assert "2 cells need more processes than this machine has" in text


NO_BATCHNORM_BACKEND_PLUGIN = '''
import torch
from harness.hookspecs import hookimpl
from harness_plugins.torch_backend import TorchBackend

class NoBatchNorm:
    precisions = ("fp32",)

    def can_run(self, device, precision, nproc, params, recipe=None):
        return None

    def check_model(self, model, device, precision):
        if any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()):
            return "no-batchnorm backend: this model has BatchNorm"
        return None

    def create(self, device, precision, params, recipe=None):
        return TorchBackend(device, precision)

@hookimpl
def register_backends(register):
    register("no-batchnorm", NoBatchNorm())
'''

MODEL_DEPENDENT_SUITE = """
name = "model-dependent"
epochs = 1
image_size = 32
subset = 40
recipe = { base = "default", batch_size = 8 }
[matrix]
model = ["resnet10t", "vit_tiny_patch16_224"]
loader = ["torchvision"]
backend = ["no-batchnorm"]
precision = ["fp32"]
"""


def test_model_dependent_refusals_agree_between_env_and_run(tmp_path: Path, generated_photos: Path) -> None:
    (tmp_path / "no_batchnorm_plugin.py").write_text(NO_BATCHNORM_BACKEND_PLUGIN)
    (tmp_path / "suite.toml").write_text(MODEL_DEPENDENT_SUITE)
    plugin = {"plugin_modules": ["no_batchnorm_plugin"], "pythonpath": [tmp_path]}
    plan = json.loads(run_harness("env", "--suite", tmp_path / "suite.toml", "--json", **plugin).stdout)["suite"]
    assert plan["statuses"] == {"resnet10t-torchvision-no-batchnorm-fp32": "skipped",
                                "vit_tiny_patch16_224-torchvision-no-batchnorm-fp32": "ok"}
    assert plan["reasons"] == {"no-batchnorm backend: this model has BatchNorm": 1}
    run = run_harness("run", "--suite", tmp_path / "suite.toml", "--data", generated_photos, "--out", tmp_path / "out",
                      **plugin)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    recorded = {p.parent.name: json.loads(p.read_text()) for p in (tmp_path / "out" / "cells").glob("*/result.json")}
    assert {cid: r["status"] for cid, r in recorded.items()} == plan["statuses"]
