"""Interrupts and time limits, for real: signals to `harness run`, a hung cell, a runner killed outright.

The cells train an inline 8 px model on generated batches in seconds. The loader variant ``held``
blocks at the start of epoch ``hold_epoch`` (in cells of at least ``hold_processes`` processes) for
as long as its ``hold`` file exists, so a test decides when a cell hangs and when it may go on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest
from helpers import TINY_PLUGIN as PLUGIN
from helpers import processes_of

from harness import cli
from harness.plugins import ALLOW_LIST_ENV, MODULES_ENV
from harness.store import CellStore
from harness.testing import results, run_harness

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process groups, /proc, pdeathsig")


ONLY_TORCH = "torch"  # of the built-in plugins only the backend: the processes start faster without the rest

SUITE = """
name = "signals"
epochs = 2
image_size = 8
device = "cpu"
recipe = {{ base = "default", batch_size = 8 }}
[matrix]
model = ["tiny-net"]
loader = {loaders}
backend = {backends}
precision = ["fp32"]
[loaders.held]
use = "tiny"
hold = "{hold}"
hold_epoch = {hold_epoch}
hold_processes = {hold_processes}
[backends.torch-ddp2]
use = "torch"
nproc = 2
"""


@pytest.fixture
def work(tmp_path: Path) -> Iterator[Path]:
    """A folder with the plugin module and a hold file; processes left naming it are killed afterwards."""
    (tmp_path / "signals_plugin.py").write_text(PLUGIN)
    (tmp_path / "hold").touch()
    yield tmp_path
    for pid in processes_of(tmp_path):
        os.kill(pid, signal.SIGKILL)


def suite(work: Path, loaders: str, backends: str, hold_epoch: int, hold_processes: int = 1) -> Path:
    path = work / "suite.toml"
    path.write_text(SUITE.format(loaders=loaders, backends=backends, hold=work / "hold", hold_epoch=hold_epoch,
                                 hold_processes=hold_processes))
    return path


def start(work: Path, *args: str | os.PathLike[str]) -> subprocess.Popen:
    """``harness run ARGS`` in the background, with the plugin loaded, output in ``work/run.log``."""
    env = {**os.environ, MODULES_ENV: "signals_plugin", ALLOW_LIST_ENV: ONLY_TORCH,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(work), os.environ.get("PYTHONPATH")]))}
    with (work / "run.log").open("w") as log:
        return subprocess.Popen([sys.executable, "-m", "harness.cli", "run", *map(str, args)], stdout=log,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)


def run(work: Path, *args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    return run_harness("run", *args, plugin_modules=["signals_plugin"], pythonpath=[work],
                       env={ALLOW_LIST_ENV: ONLY_TORCH}, timeout=120)


def wait_until(condition: Callable[[], bool], timeout: float, what: str, runner: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert runner.poll() is None, f"harness run exited ({runner.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.1)


def assert_all_gone(folder: Path, within: float) -> None:
    deadline = time.monotonic() + within
    while (left := processes_of(folder)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"still alive: {left}"


@pytest.mark.slow
def test_sigterm_stops_a_ddp_cell_records_it_interrupted_and_resume_finishes_it(work: Path) -> None:
    path, out = suite(work, '["held"]', '["torch", "torch-ddp2"]', hold_epoch=2, hold_processes=2), work / "out"
    done, held = CellStore(out, "tiny-net-held-torch-fp32"), CellStore(out, "tiny-net-held-torch-ddp2-fp32")
    runner = start(work, "--suite", path, "--out", out)
    wait_until(lambda: len(held.epochs()) == 1, 120, "first epoch of the held cell", runner)
    ranks = [cmd for cmd in processes_of(work).values() if "harness.cell" in cmd]
    assert len(ranks) == 2, processes_of(work)  # the two ranks are up, forked by the runner's warm interpreter
    os.kill(runner.pid, signal.SIGTERM)
    signalled = time.monotonic()
    assert runner.wait(timeout=60) == 143, (work / "run.log").read_text()
    assert_all_gone(work, within=20 - (time.monotonic() - signalled))
    assert done.result()["status"] == "ok"
    assert held.result()["status"] == "interrupted"
    assert held.result()["reason"] == "interrupted by SIGTERM after 1 of 2 epochs"
    assert "1 ok, 0 skipped, 0 failed, 1 interrupted" in (work / "run.log").read_text()
    summary = pd.read_csv(out / "summary.csv")
    assert dict(zip(summary.backend, summary.status, strict=True)) == {"torch": "ok", "torch-ddp2": "interrupted"}

    (work / "hold").unlink()
    resumed = run(work, "--suite", path, "--out", out, "--resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert {cell: r["status"] for cell, r in results(out).items()} == {done.dir.name: "ok", held.dir.name: "ok"}
    assert [e["epoch"] for e in held.epochs()] == [1, 2]  # epoch 1 from before, epoch 2 from the checkpoint on


def test_a_hung_cell_is_killed_at_its_time_limit_and_the_suite_goes_on(work: Path) -> None:
    out = work / "out"
    done = run(work, "--suite", suite(work, '["held", "tiny"]', '["torch"]', hold_epoch=1), "--out", out,
               "--cell-timeout", "8")
    assert done.returncode == 1, done.stdout + done.stderr
    hung, ok = results(out)["tiny-net-held-torch-fp32"], results(out)["tiny-net-tiny-torch-fp32"]
    assert hung["status"] == "failed" and hung["reason"] == "timeout after 8 s (0 of 2 epochs done)"
    assert ok["status"] == "ok", ok["reason"]
    assert "1 ok, 0 skipped, 1 failed, 0 interrupted" in done.stdout
    assert not processes_of(work)


def test_cell_timeout_must_be_positive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["run", "--suite", "any", "--cell-timeout", "0"])
    assert exit_.value.code == 2 and "0: give a positive number of seconds" in capsys.readouterr().err


def test_a_failing_rank_stops_its_gang_and_the_cell_fails_with_its_error(work: Path) -> None:
    """The runner watches a multi-process cell's ranks as torchrun's agent would: rank 1 raising leaves rank 0
    blocked in a collective, so the runner stops it; the cell fails with rank 1's error, well before gloo's
    30-minute timeout, and the next cell runs."""
    path = suite(work, '["tiny", "dies"]', '["torch-ddp2"]', hold_epoch=1)
    path.write_text(path.read_text() + '[loaders.dies]\nuse = "tiny"\nfail_rank = 1\n')
    started = time.monotonic()
    done = run(work, "--suite", path, "--out", work / "out")
    assert done.returncode == 1, done.stdout + done.stderr
    assert time.monotonic() - started < 100
    failed, ok = (results(work / "out")[f"tiny-net-{loader}-torch-ddp2-fp32"] for loader in ("dies", "tiny"))
    assert failed["status"] == "failed"
    assert failed["reason"].startswith("rank 1 failed: RuntimeError: planted failure on rank 1; rank 0: ")
    assert ok["status"] == "ok"
    assert not processes_of(work)


def test_cell_processes_die_with_a_killed_runner(work: Path) -> None:
    out = work / "out"
    runner = start(work, "--suite", suite(work, '["held"]', '["torch-ddp2"]', hold_epoch=2), "--out", out)
    wait_until(lambda: len(CellStore(out, "tiny-net-held-torch-ddp2-fp32").epochs()) == 1, 120, "first epoch",
               runner)
    assert len(processes_of(work)) == 4  # the runner, its warm interpreter and the two ranks it forked
    runner.kill()
    runner.wait()
    assert_all_gone(work, within=5)
