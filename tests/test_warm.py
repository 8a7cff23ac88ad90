"""Warm cell processes (harness/warm.py): a cell forked from the environment's preloaded interpreter is the
process a cold start would make, and trains exactly as a cold one does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from harness.plugins import MODULES_ENV
from harness.store import CellStore
from harness.testing import run_harness

# A lifecycle plugin that writes down what the cell's process looks like from inside.
PROBE = '''
import json, os, random, sys, tempfile
import torch
from harness.hookspecs import hookimpl

@hookimpl
def harness_run_start(cell, context):
    cmdline = open("/proc/self/cmdline", "rb").read().split(b"\\0")
    facts = {"pid": os.getpid(), "sid": os.getsid(0), "pgid": os.getpgid(0), "cwd": os.getcwd(),
             "cmdline": [a.decode() for a in cmdline if a], "tmp": tempfile.gettempdir(),
             "threads": torch.get_num_threads(), "random": random.random(), "rank": os.environ.get("RANK"),
             "environ_probe": os.environ.get("PROBE_VALUE")}
    with open(os.environ["PROBE_OUT"], "a") as f:
        f.write(json.dumps(facts) + "\\n")
'''

SUITE = """
name = "warm"
epochs = 2
image_size = 32
seed = 0
recipe = { base = "default", optimizer = "adamw", lr = 0.002, batch_size = 8 }
[matrix]
model = ["resnet10t"]
loader = ["torchvision"]
backend = ["torch"]
precision = ["fp32"]
"""

CELL = "resnet10t-torchvision-torch-fp32"


def run(tmp_path: Path, photos: Path, name: str, warm: bool) -> tuple[list[dict], dict]:
    """One cell run warm or cold; its epoch rows and what the probe saw inside its process."""
    (tmp_path / "warm_probe.py").write_text(PROBE)
    suite = tmp_path / "suite.toml"
    suite.write_text(SUITE)
    probe = tmp_path / f"{name}.jsonl"
    done = run_harness("run", "--suite", suite, "--data", photos, "--out", tmp_path / name,
                       plugin_modules=["warm_probe"], pythonpath=[tmp_path],
                       env={"HARNESS_WARM": "1" if warm else "0", "PROBE_OUT": str(probe), "PROBE_VALUE": name})
    assert done.returncode == 0, done.stderr
    return CellStore(tmp_path / name, CELL).epochs(), json.loads(probe.read_text())


def test_a_warm_cell_is_the_process_a_cold_start_makes_and_trains_identically(tmp_path: Path,
                                                                               generated_photos: Path) -> None:
    cold_rows, cold = run(tmp_path, generated_photos, "cold", warm=False)
    warm_rows, warm = run(tmp_path, generated_photos, "warm", warm=True)
    learned = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "optimizer_steps", "train_images")
    assert [[r[k] for k in learned] for r in warm_rows] == [[r[k] for k in learned] for r in cold_rows]
    # a session and process group of its own, as the runner's os.killpg needs
    assert warm["sid"] == warm["pid"] == warm["pgid"]
    # the command line a cold start has, as ps and /proc show it (one string: setproctitle's form)
    assert " ".join(warm["cmdline"]) == " ".join(cold["cmdline"]).replace("cold", "warm")
    # the cell's own environment, working folder, temporary folder and thread count
    assert warm["environ_probe"] == "warm" and warm["rank"] == cold["rank"] == "0" and warm["cwd"] == cold["cwd"]
    assert Path(warm["tmp"]).name.startswith("harness-cell-") and warm["tmp"] != cold["tmp"]
    assert warm["threads"] == cold["threads"] == len(os.sched_getaffinity(0))


def test_warm_cells_get_fresh_random_states(tmp_path: Path, generated_photos: Path) -> None:
    """Two forks of one zygote must not share Python's random state (a cold start seeds it from the OS)."""
    suite = tmp_path / "suite.toml"
    suite.write_text(SUITE.replace('model = ["resnet10t"]', 'model = ["resnet10t", "resnet14t"]')
                     .replace("epochs = 2", "epochs = 1"))
    (tmp_path / "warm_probe.py").write_text(PROBE)
    probe = tmp_path / "probe.jsonl"
    done = run_harness("run", "--suite", suite, "--data", generated_photos, "--out", tmp_path / "out",
                       plugin_modules=["warm_probe"], pythonpath=[tmp_path],
                       env={"PROBE_OUT": str(probe), "PROBE_VALUE": "x"})
    assert done.returncode == 0, done.stderr
    first, second = (json.loads(line) for line in probe.read_text().splitlines())
    assert first["random"] != second["random"] and first["pid"] != second["pid"]
    assert " ".join(first["cmdline"]).startswith(f"{sys.executable} -m harness.cell ")


def test_a_gang_of_warm_ranks_is_what_torchrun_starts_and_trains_identically(tmp_path: Path,
                                                                             generated_photos: Path) -> None:
    """A two-process cell under the runner (each rank forked from the warm interpreter, with torchrun's variables)
    against the same cell under torchrun (``python -m harness.cell --nproc=2``, cold ranks): the same metrics, the
    same rank variables and one OpenMP thread per rank."""
    (tmp_path / "warm_probe.py").write_text(PROBE)
    suite = tmp_path / "suite.toml"
    suite.write_text(SUITE.replace('backend = ["torch"]', 'backend = ["ddp2"]')
                     + '[backends.ddp2]\nuse = "torch"\nnproc = 2\n')
    cell, env = "resnet10t-torchvision-ddp2-fp32", {"PROBE_OUT": str(tmp_path / "gang.jsonl"), "PROBE_VALUE": "x"}
    done = run_harness("run", "--suite", suite, "--data", generated_photos, "--out", tmp_path / "gang",
                       plugin_modules=["warm_probe"], pythonpath=[tmp_path], env=env)
    assert done.returncode == 0, done.stderr
    environ = {**os.environ, **env, "PROBE_OUT": str(tmp_path / "torchrun.jsonl"), MODULES_ENV: "warm_probe",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}
    subprocess.run([sys.executable, "-m", "harness.cell", tmp_path / "gang" / "cells" / cell / "cell.json", "--out",
                    tmp_path / "torchrun", "--nproc=2"], env=environ, check=True, timeout=300)
    learned = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "optimizer_steps", "train_images")
    rows = {run: [[r[k] for k in learned] for r in CellStore(tmp_path / run, cell).epochs()]
            for run in ("gang", "torchrun")}
    assert rows["gang"] == rows["torchrun"] and len(rows["gang"]) == 2
    facts = {run: sorted((json.loads(line) for line in (tmp_path / f"{run}.jsonl").read_text().splitlines()),
                         key=lambda fact: fact["rank"]) for run in ("gang", "torchrun")}
    for gang, torchrun in zip(facts["gang"], facts["torchrun"], strict=True):
        assert gang["rank"] == torchrun["rank"] and gang["threads"] == torchrun["threads"] == 1
        assert gang["sid"] == gang["pid"]  # each rank a session of its own: the runner signals each group
    assert [fact["rank"] for fact in facts["gang"]] == ["0", "1"]
