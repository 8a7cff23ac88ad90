"""``harness run --executor ray`` on a real local multi-node Ray cluster (several raylets on this host).

One cluster for the module: a head that runs nothing, two 1-CPU nodes standing in for T4 machines (custom
resource ``T4``) and one 2-CPU node for a P40 machine (``P40``). The harness runs as a subprocess driver that
joins it with ``--address``, as a user's would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from harness.store import CellStore
from harness.testing import results, run_harness

ray = pytest.importorskip("ray")
cluster_utils = pytest.importorskip("ray.cluster_utils")

SUITE = """
name = "fleettest"
epochs = {epochs}
image_size = 32
recipe = {{ base = "default", optimizer = "adamw", lr = 0.002, weight_decay = 0.05, batch_size = 8 }}
[matrix]
model = ["resnet10t"]
loader = ["torchvision"]
backend = {backends}
precision = ["fp32"]
[backends.torch-2n]
use = "torch"
nnodes = 2                         # one rank on each of two nodes, c10d rendezvous
[backends.torch-ddp2]
use = "torch"
nproc = 2                          # two ranks on one node
"""
CELL = "resnet10t-torchvision-{backend}-fp32-{kind}"
NODE = {"object_store_memory": 80 * 2**20}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    # The raylets' workers inherit this process's environment: the data cache of --data-copy goes to a temp dir.
    os.environ["HARNESS_FLEET_CACHE"] = str(tmp_path_factory.mktemp("fleet-cache"))
    fleet = cluster_utils.Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, **NODE})
    fleet.kinds = {}
    for kind, cpus in (("T4", 1), ("T4", 1), ("P40", 2)):
        node = fleet.add_node(num_cpus=cpus, resources={kind: 1}, **NODE)
        fleet.kinds[node.node_id] = (kind, node)
    fleet.wait_for_nodes()
    yield fleet
    fleet.shutdown()
    os.environ.pop("HARNESS_FLEET_CACHE", None)


def suite(tmp_path: Path, epochs: int, backends: str) -> Path:
    path = tmp_path / "suite.toml"
    path.write_text(SUITE.format(epochs=epochs, backends=backends))
    return path


def harness_cli(cluster: Any, *args: str | Path) -> list[str]:
    return [sys.executable, "-m", "harness.cli", "run", "--executor", "ray", "--address", cluster.address,
            *map(str, args)]


def node_of(epoch: dict[str, Any], cluster: Any) -> Any:
    """The cluster node an epoch record was trained on (its fingerprint's ``fleet_node``: 'IP NODE_ID[:12]')."""
    short = epoch["env"]["fleet_node"].split()[1]
    return next(node for node_id, (_, node) in cluster.kinds.items() if node_id.startswith(short))


def leftovers() -> list[str]:
    """Processes of this host running a Ray task of the harness, or a cell process it started (their command line
    names the task's node-local folder, ``harness-fleet-*``)."""
    # -ww: whole command lines (ps cut them at 80 columns under pytest, losing the folder under a long $TMPDIR)
    ps = subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True).stdout.splitlines()
    return [line for line in ps if "ray::node_cell" in line or ("harness.cell" in line and "harness-fleet-" in line)]


def test_without_ray_the_executor_exits_2_with_the_install_hint(tmp_path: Path, generated_photos: Path) -> None:
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "__init__.py").write_text("raise ImportError('No module named ray')\n")
    result = run_harness("run", "--executor", "ray", "--suite", suite(tmp_path, 1, '["torch"]'), "--data",
                         generated_photos, "--out", tmp_path / "out", pythonpath=[tmp_path])
    assert result.returncode == 2, result.stderr
    assert "pip install 'harness[ray]'" in result.stderr and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_suite_runs_once_per_device_kind_across_the_fleet(cluster: Any, tmp_path: Path,
                                                            generated_photos: Path) -> None:
    out = tmp_path / "out"
    run = subprocess.run(harness_cli(cluster, "--suite", suite(tmp_path, 2, '["torch", "torch-2n", "torch-ddp2"]'),
                                     "--data", generated_photos, "--out", out, "--devices", "T4,P40,V100",
                                     "--data-copy"), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    found = results(out)
    status = {cell: record["status"] for cell, record in found.items()}
    assert status == {
        CELL.format(backend="torch", kind="T4"): "ok", CELL.format(backend="torch", kind="P40"): "ok",
        CELL.format(backend="torch-2n", kind="T4"): "ok",  # the two T4 nodes, reserved together
        CELL.format(backend="torch-ddp2", kind="P40"): "ok",  # the 2-CPU P40 node
        CELL.format(backend="torch-2n", kind="P40"): "skipped",  # one P40 node only
        CELL.format(backend="torch-ddp2", kind="T4"): "skipped",  # T4 nodes have 1 CPU
        **{CELL.format(backend=b, kind="V100"): "skipped" for b in ("torch", "torch-2n", "torch-ddp2")}}
    reasons = {cell: record["reason"] for cell, record in found.items()}
    assert reasons[CELL.format(backend="torch", kind="V100")] == (
        "no node of the Ray cluster offers device kind 'V100' (kinds there: P40, T4)")
    assert reasons[CELL.format(backend="torch-2n", kind="P40")] == (
        "needs 2 node(s) of kind P40 with 1 CPU(s) each; the Ray cluster has 1")
    # Each result carries the fingerprint of the node that trained it, with its kind.
    for kind in ("T4", "P40"):
        record = found[CELL.format(backend="torch", kind=kind)]
        assert record["env"]["fleet_kind"] == kind
        assert cluster.kinds[node_of(record, cluster).node_id][0] == kind
        # --data-copy: the node trained on its own verified copy, not the driver's folder.
        assert record["cell"]["data"].startswith(os.environ["HARNESS_FLEET_CACHE"])
        assert json.loads((out / "cells" / CELL.format(backend="torch", kind=kind) / "cell.json").read_text())[
            "data"] == str(generated_photos)
    assert list(Path(os.environ["HARNESS_FLEET_CACHE"]).glob("*/verified"))

    # The 2-node gloo DDP cell against the 2-process one: same global batch, data, seeds and one OpenMP thread
    # per rank, so the same training. Measured here: identical losses and accuracies (difference 0 at float64
    # print precision); the tolerance leaves room for other CPUs' summation order (docs/many-machines.md).
    two_nodes = CellStore(out, CELL.format(backend="torch-2n", kind="T4")).epochs()
    two_procs = CellStore(out, CELL.format(backend="torch-ddp2", kind="P40")).epochs()
    assert [e["epoch"] for e in two_nodes] == [e["epoch"] for e in two_procs] == [1, 2]
    for a, b in zip(two_nodes, two_procs, strict=True):
        assert a["train_images"] == b["train_images"] == 64  # 2 ranks x 4 batches of 8 from 72 photos
        assert abs(a["train_loss"] - b["train_loss"]) <= 1e-4 and abs(a["val_loss"] - b["val_loss"]) <= 1e-4
        assert a["train_acc"] == b["train_acc"] and a["val_acc"] == b["val_acc"]

    # The driver's --out is a local run's layout: the report reads it; --resume keeps every finished cell.
    again = subprocess.run(harness_cli(cluster, "--suite", tmp_path / "suite.toml", "--data", generated_photos,
                                       "--out", out, "--devices", "T4,P40,V100", "--resume"),
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "9 cells: 4 ok, 5 skipped" in again.stdout, again.stdout + again.stderr
    report = run_harness("report", out, "--out", tmp_path / "report", "--by", "device")
    assert report.returncode == 0, report.stderr
    groups = [c.split(" status")[0] for c in pd.read_csv(tmp_path / "report" / "comparison.csv").columns
              if c.endswith(" status")]
    assert any("(T4)" in g for g in groups) and any("(P40)" in g for g in groups), groups  # the kind names the CPU


@pytest.mark.slow
def test_a_cell_its_node_cannot_run_is_recorded_skipped_by_the_runner_with_the_nodes_reason(
        cluster: Any, tmp_path: Path, generated_photos: Path) -> None:
    """Capability is judged on the node (fp16 is emulated on these CPUs): the node only says why, the runner
    records the cell skipped, with the node's reason and fingerprint; the run exits 0 and the cell stays
    skipped on --resume."""
    path = suite(tmp_path, 1, '["torch"]')
    path.write_text(path.read_text().replace('precision = ["fp32"]', 'precision = ["fp16"]'))
    out, args = tmp_path / "out", ["--suite", path, "--data", generated_photos, "--devices", "T4"]
    run = subprocess.run(harness_cli(cluster, *args, "--out", out), capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    record = results(out)["resnet10t-torchvision-torch-fp16-T4"]
    assert record["status"] == "skipped" and record["reason"].startswith("fp16 on ") and "emulated" in record["reason"]
    assert record["env"]["fleet_kind"] == "T4" and cluster.kinds[node_of(record, cluster).node_id][0] == "T4"
    assert "1 cell: 0 ok, 1 skipped, 0 failed" in run.stdout, run.stdout


@pytest.mark.slow
def test_a_race_on_the_fleet_pauses_each_cell_at_its_rung_and_resumes_it_from_its_checkpoint(
        cluster: Any, tmp_path: Path, generated_photos: Path) -> None:
    """``--race`` through the Ray executor: each cell trains to the first rung on a node (``paused``), its checkpoint
    comes home, and the next rung continues from it on a node again; every process's first epoch is marked. Both
    cells are kept (``--keep``), so the test does not depend on which of two equal configurations a shared machine
    happens to slow down."""
    path = suite(tmp_path, 8, '["torch", "torch-too"]')
    path.write_text(path.read_text() + '[backends.torch-too]\nuse = "torch"\n')
    out = tmp_path / "out"
    run = subprocess.run(harness_cli(cluster, "--suite", path, "--data", generated_photos, "--out", out, "--devices",
                                     "T4", "--race", "--keep", "model=resnet10t"),
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "race rung 1 (4 epochs): 0 eliminated, 2 go on" in run.stderr + run.stdout
    for backend in ("torch", "torch-too"):
        cell = CELL.format(backend=backend, kind="T4")
        record = results(out)[cell]
        assert record["status"] == "ok" and record["race"]["rungs"] == [4, 8] and record["race"]["kept"] is True
        epochs = CellStore(out, cell).epochs()
        assert [e["epoch"] for e in epochs] == list(range(1, 9))
        assert [e["epoch_in_process"] for e in epochs] == [1, 2, 3, 4, 1, 2, 3, 4]  # two processes, two warm-ups
        assert {e["env"]["fleet_kind"] for e in epochs} == {"T4"}


@pytest.mark.slow
def test_a_lost_node_retries_the_cell_elsewhere_and_ctrl_c_leaves_no_task_running(
        cluster: Any, tmp_path: Path, generated_photos: Path) -> None:
    out = tmp_path / "out"
    t4, p40 = (CELL.format(backend="torch", kind=kind) for kind in ("T4", "P40"))
    # 1000 epochs: far more than the test waits for (it interrupts the run), so both cells, the retried one resumed
    # from its checkpoint and the P40 one on its 2 CPUs (which once finished 40 epochs first, in CI), are surely
    # still training when the test presses Ctrl-C. The test's length is set by its waits, not by the epochs.
    proc = subprocess.Popen(harness_cli(cluster, "--suite", suite(tmp_path, 1000, '["torch"]'), "--data",
                                        generated_photos, "--out", out, "--devices", "T4,P40", "--retries", "1"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        def wait_for(condition: Any, what: str, timeout: float = 240) -> None:
            deadline = time.monotonic() + timeout
            while not condition():
                assert proc.poll() is None and time.monotonic() < deadline, f"gave up waiting for {what}"
                time.sleep(0.2)

        # Epoch records come home while the cell runs; they name the node, which we then take down.
        wait_for(lambda: CellStore(out, t4).epochs(), "the T4 cell's first epoch")
        first = node_of(CellStore(out, t4).epochs()[0], cluster)
        cluster.remove_node(first, allow_graceful=False)
        wait_for(lambda: any(node_of(e, cluster) is not first for e in CellStore(out, t4).epochs()),
                 "the T4 cell's first epoch on the other T4 node")
        second = node_of(CellStore(out, t4).epochs()[-1], cluster)
        assert cluster.kinds[second.node_id][0] == "T4"
        # Ctrl-C while both cells have epochs to go.
        running = leftovers()
        assert any("ray::node_cell" in line for line in running) and any("harness.cell" in line for line in running), (
            running)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the driver's group only
        output = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        cluster.kinds.pop(first.node_id, None)
    assert proc.returncode == 130, output[-3000:]
    assert f"Ray node {first.node_id[:12]}) lost" in output and "retrying on another T4 (1/1)" in output
    interrupted = CellStore(out, t4).result()
    assert interrupted["status"] == "interrupted", interrupted
    assert interrupted["reason"].startswith("interrupted on node ") and second.node_id[:12] in interrupted["reason"]
    assert CellStore(out, p40).result()["status"] == "interrupted"
    deadline = time.monotonic() + 30
    while leftovers() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not leftovers()
    from harness import fleet

    fleet.sweep(Path(tempfile.gettempdir()))  # what the node's next task does with the killed tasks' folders
    assert not [p for p in Path(tempfile.gettempdir()).glob(fleet.NODE_FOLDER + "*") if (p / ".pid").exists()]


def test_a_cell_whose_nodes_keep_dying_is_failed_naming_them(tmp_path: Path, generated_photos: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # The retry bookkeeping without a cluster: every attempt's node dies (the cluster test kills a real one).
    from harness import fleet
    from harness.plugins import get_manager
    from harness.runner import run_suite
    from harness.testing import suite_cells

    tries: list[str] = []

    def dies(self: Any, cell: Any, kind: Any, request: Any, store: CellStore, attempt: Any, seed: Any,
             resume: bool) -> None:
        tries.append(f"10.0.0.{len(tries) + 1} (gpu-{len(tries) + 1}, Ray node {len(tries) + 1:012d})")
        attempt.nodes.append(tries[-1])
        attempt.env = {"fleet_kind": kind}
        raise fleet.NodeLost(tries[-1], ray.exceptions.NodeDiedError("the raylet is gone"))

    monkeypatch.setattr(fleet.RayExecutor, "attempt", dies)
    monkeypatch.setattr(fleet.RayExecutor, "request", lambda self, cell, kind: (None, {}))
    cells, kinds = fleet.per_kind(suite_cells(suite(tmp_path, 1, '["torch"]')), ["T4"])
    executor = fleet.RayExecutor(get_manager(), kinds=kinds, retries=2)
    run_suite(cells[:1], tmp_path / "out", get_manager(), executor=executor)
    result = CellStore(tmp_path / "out", cells[0].id).result()
    assert result["status"] == "failed" and len(tries) == 3
    assert result["reason"].startswith(f"node {tries[-1]} lost (NodeDiedError: the raylet is gone) after 0 of 1 "
                                       f"epochs; tried 3 time(s), on node(s) {', '.join(tries)}")


def test_a_node_sweeps_the_folders_of_killed_tasks(tmp_path: Path) -> None:
    from harness import fleet

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for name, pid in (("killed", dead.pid), ("running", os.getpid())):
        (tmp_path / f"{fleet.NODE_FOLDER}{name}").mkdir()
        (tmp_path / f"{fleet.NODE_FOLDER}{name}" / ".pid").write_text(str(pid))
    (tmp_path / f"{fleet.NODE_FOLDER}starting").mkdir()  # no pid yet: left alone
    fleet.sweep(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{fleet.NODE_FOLDER}running", f"{fleet.NODE_FOLDER}starting"]


def test_fleet_options_without_the_ray_executor_exit_2(tmp_path: Path) -> None:
    result = run_harness("run", "--suite", suite(tmp_path, 1, '["torch"]'), "--out", tmp_path / "out",
                         "--retries", "1")
    assert result.returncode == 2 and "--retries go with --executor ray" in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()
