"""benchmarks/ picks up third-party plugins by itself and skips what cannot run with the plugin's reason.

A plugin module of the test's own (a loader and a backend wrapping the built-in ones, bf16 refused)
is loaded through ``HARNESS_PLUGIN_MODULES``, and the real benchmarks run in a subprocess with tiny
settings (a timm test model, 2 steps per round) on generated photos.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from harness.plugins import MODULES_ENV
from harness.testing import make_photos

REPO = Path(__file__).resolve().parent.parent

PLUGIN = """
from harness.hookspecs import hookimpl
from harness_plugins.torch_backend import Torch
from harness_plugins.torchvision_loader import TorchvisionLoader


class ThirdPartyBackend(Torch):
    precisions = ("fp32", "bf16")

    def can_run(self, device, precision, nproc, params):
        return "bf16 needs a TPU" if precision == "bf16" else super().can_run(device, precision, nproc, params)


@hookimpl
def register_loaders(register):
    register("acme-loader", TorchvisionLoader())


@hookimpl
def register_backends(register):
    register("acme", ThirdPartyBackend())
"""


def test_benchmarks_cover_a_third_party_plugin(tmp_path: Path) -> None:
    (tmp_path / "acme_plugin.py").write_text(textwrap.dedent(PLUGIN))
    photos = make_photos(tmp_path / "photos", classes=3, per_class=10, size=40)
    env = {**os.environ, MODULES_ENV: "acme_plugin", "HARNESS_BENCH_DATA": str(photos),
           "HARNESS_BENCH_MODEL": "test_resnet", "HARNESS_BENCH_STEPS": "2", "HARNESS_BENCH_SUBSET": "16",
           "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rs", "-k", "acme",
         "benchmarks/test_loaders.py", "benchmarks/test_train_step.py", f"--benchmark-json={out}"],
        cwd=REPO, capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "acme bf16: bf16 needs a TPU" in proc.stdout
    benchmarks = {b["name"]: b for b in json.loads(out.read_text())["benchmarks"]}
    assert set(benchmarks) == {"test_loader_throughput[acme-loader]", "test_train_step[acme-fp32]"}
    step = benchmarks["test_train_step[acme-fp32]"]
    assert step["extra_info"]["params"]["plugin"] == "acme_plugin"
    assert step["extra_info"]["env"]["torch"] and step["extra_info"]["settings"]["model"] == "test_resnet"
    assert len(step["extra_info"]["samples"]["time_vs_reference"]) == 10
