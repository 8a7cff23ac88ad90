"""A cell's life in the runner: what a cell prints, how its process exits, what a plugin hangs on, what a killed
runner leaves behind, and executors that run several cells at once.

The cells train the inline 8 px ``tiny-net`` on generated batches (tests/helpers.py), in a second or two.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import TINY_PLUGIN, processes_of

from harness import capability, cli, launch, runner
from harness.api import CellExit, CellSpec, Recipe
from harness.hookspecs import hookimpl
from harness.plugins import ALLOW_LIST_ENV, MODULES_ENV
from harness.store import CellStore
from harness.testing import results, run_harness
from harness_plugins.local_executor import split

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups, /proc")

SUITE = """
name = "lifecycle"
epochs = 1
image_size = 8
device = "cpu"
recipe = {{ base = "default", batch_size = 8 }}
[matrix]
model = ["{model}"]
loader = {loaders}
backend = ["torch"]
precision = ["fp32"]
"""
HELD = """
[loaders.held-a]
use = "tiny"
hold = "{hold}"
[loaders.held-b]
use = "tiny"
hold = "{hold}"
"""
GARBLED = """
[loaders.garbled]
use = "tiny"
garble = 5000
"""


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "tiny_plugin.py").write_text(TINY_PLUGIN)
    return tmp_path


def suite(work: Path, loaders: str = '["tiny"]', model: str = "tiny-net") -> Path:
    path = work / "suite.toml"
    path.write_text(SUITE.format(loaders=loaders, model=model) + (GARBLED if "garbled" in loaders else "")
                    + (HELD.format(hold=work / "hold") if "held" in loaders else ""))
    return path


def run(work: Path, *args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    return run_harness("run", *args, plugin_modules=["tiny_plugin"], pythonpath=[work], env={ALLOW_LIST_ENV: "torch"},
                       timeout=120)


def test_a_cell_printing_bytes_that_are_not_utf8_finishes(work: Path) -> None:
    # 5,000 lines (110 KB) of invalid UTF-8: a relay that died on the first would leave the pipe full, the cell
    # blocked until the time limit.
    done = run(work, "--suite", suite(work, '["garbled"]'), "--out", work / "out", "--cell-timeout", "60")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert results(work / "out")["tiny-net-garbled-torch-fp32"]["status"] == "ok"
    assert "\ufffd\ufffd not UTF-8 \ufffd(" in done.stderr + done.stdout


def test_a_cell_that_recorded_its_result_stays_ok_whatever_its_exit_code(tmp_path: Path) -> None:
    cell = CellSpec(id="c", suite="s", model="m", loader="l", backend="b", precision="fp32", loader_plugin="l",
                    backend_plugin="b", epochs=1, image_size=8, data="", seed=0, recipe=Recipe())
    store = CellStore(tmp_path, cell.id)
    store.write_cell(cell)
    store.write_result(cell, {}, "ok", summary={"warnings": [{"code": "backend", "message": "kept"}]})
    said = "RuntimeError: DataLoader worker (pid 12) is killed by signal: Killed."
    runner.record(store, cell, {}, CellExit(1, [said]), None)
    result = store.result()
    assert result["status"] == "ok" and result["reason"] is None
    message = f"the cell process exited with code 1 after recording its result: {said}"
    assert result["summary"]["warnings"] == [{"code": "backend", "message": "kept"},
                                             {"code": "exit-after-result", "message": message}]
    store.result_path.unlink()  # no result: the exit code decides
    runner.record(store, cell, {}, CellExit(1, [said]), None)
    assert store.result()["status"] == "failed"


def test_scratch_folders_of_a_killed_runner_are_removed_by_the_next_run(work: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    tmp = Path(tempfile.gettempdir())
    orphan, alive = (Path(tempfile.mkdtemp(prefix=launch.SCRATCH, dir=tmp)) for _ in range(2))
    (orphan / ".pid").write_text(str(dead.pid))
    (alive / ".pid").write_text(str(os.getpid()))
    try:
        done = run(work, "--suite", suite(work), "--out", work / "out", "--json")
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        assert not orphan.exists() and alive.exists()
        summary = json.loads(done.stdout)  # --json: the summary alone on stdout, the cells' output on stderr
        assert summary["ok"] == summary["cells"] == 1 and summary["outcomes"][0]["id"] == "tiny-net-tiny-torch-fp32"
    finally:
        for folder in (orphan, alive):
            subprocess.run(["rm", "-rf", str(folder)], check=True)


class Hangs:
    """A loader whose ``can_run`` never returns (until the test ends)."""

    reads_data = False

    def __init__(self) -> None:
        self.release = threading.Event()

    def can_run(self, device: Any, params: Any) -> None:
        self.release.wait()

    def build(self, spec: Any) -> Any:
        raise AssertionError("never built")


@pytest.fixture
def hanging(harness_plugin: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Hangs]:
    loader = Hangs()

    class Plugin:
        @staticmethod
        @hookimpl
        def register_loaders(register: Any) -> None:
            register("hangs", loader)

    monkeypatch.setattr(capability, "PLUGIN_TIMEOUT_S", 0.5)
    harness_plugin(Plugin(), name="hanging-plugin")
    yield loader
    loader.release.set()


def test_a_plugin_whose_can_run_hangs_is_named_and_the_run_goes_on(work: Path, hanging: Hangs,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path, out = suite(work, '["hangs"]', model="resnet10t"), work / "out"
    assert cli.main(["run", "--suite", str(path), "--out", str(out)]) == 0
    result = results(out)["resnet10t-hangs-torch-fp32"]
    assert result["status"] == "skipped"
    assert result["reason"] == "plugin 'hanging-plugin' did not answer can_run within 0.5 s"
    assert cli.main(["env", "--suite", str(path), "--json"]) == 0
    assert "plugin 'hanging-plugin' did not answer can_run within 0.5 s" in capsys.readouterr().out


def cells_running(work: Path) -> dict[int, str]:
    """The cell processes (not the runner) whose command line names ``work``."""
    return {pid: cmd for pid, cmd in processes_of(work).items() if "harness.cell" in cmd}


def cpus_of(pid: int) -> str:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(line.split(":")[1].strip() for line in status.splitlines() if line.startswith("Cpus_allowed_list"))


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="the pool pins each of 2 workers to a CPU of its own")
def test_the_pool_runs_cells_at_once_on_their_own_cpus_and_ctrl_c_leaves_none_running(work: Path) -> None:
    (work / "hold").touch()  # both cells wait at their first epoch while it exists
    path, out = suite(work, '["held-a", "held-b"]'), work / "out"
    env = {**os.environ, MODULES_ENV: "tiny_plugin", ALLOW_LIST_ENV: "torch",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(work), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", "--suite", str(path), "--out", str(out),
                             "--executor", "pool", "--workers", "2"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while len(running := cells_running(work)) < 2:  # both cells at once: they overlap in time
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-3000:]
            time.sleep(0.1)
        assert {cpus_of(pid) for pid in running} == {str(cpu) for cpu in sorted(os.sched_getaffinity(0))[:2]}
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the runner's group only; it forwards it to both cells
        output = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, output[-3000:]
    assert {cell: r["status"] for cell, r in results(out).items()} == {
        "tiny-net-held-a-torch-fp32": "interrupted", "tiny-net-held-b-torch-fp32": "interrupted"}
    assert not processes_of(work)


def test_options_of_another_executor_are_refused(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", "--suite", str(suite(work)), "--out", str(work / "out"), "--workers", "2"]) == 2
    assert "--workers go with --executor pool" in capsys.readouterr().err
    assert not (work / "out").exists()


def test_the_pool_splits_cpus_and_gpus_into_contiguous_shares() -> None:
    assert split([0, 1, 2, 3, 4], 2) == [[0, 1, 2], [3, 4]]
    assert split(range(4), 4) == [[0], [1], [2], [3]]


def test_usable_cpus_follows_the_affinity_mask() -> None:
    one = sorted(os.sched_getaffinity(0))[:1]
    done = subprocess.run([sys.executable, "-c", "from harness.api import usable_cpus; print(usable_cpus())"],
                          capture_output=True, text=True, timeout=60, preexec_fn=lambda: os.sched_setaffinity(0, one))
    assert done.stdout.strip() == "1", done.stderr
