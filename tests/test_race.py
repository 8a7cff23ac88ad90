"""Races (harness/race.py): planted configurations whose fate is known, raced through the real command line.

The plugin below gives a task with a known answer: ``stripes`` (dark images are class 0, bright ones class 1;
``contrast = 0`` washes the class out, so that loader variant harms accuracy) and ``paced``, the torch backend with
each optimizer step taking ``step_s`` seconds at least (``slow`` at twice ``fast``'s: a known factor of 0.5).
``fast`` and ``fast-too`` are the same configuration under two names: a tie, which must stay in.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import TINY_PLUGIN

from harness.api import CellSpec, Recipe
from harness.plugins import ALLOW_LIST_ENV, MODULES_ENV
from harness.race import RaceError, Racer, RaceSettings, rungs, verdicts
from harness.results import read_cell
from harness.store import CellStore
from harness.testing import results, run_harness

RACE_PLUGIN = '''
import time

import torch
from harness.api import DataSplits
from harness.hookspecs import hookimpl
from harness_plugins.torch_backend import TorchBackend


def stripes(count, generator, contrast):
    """Dark images are class 0, bright ones class 1, ``contrast`` apart (0: the class cannot be seen)."""
    labels = torch.randint(0, 2, (count,), generator=generator)
    noise = torch.randint(-60, 61, (count, 3, 8, 8), generator=generator)
    return (labels.view(-1, 1, 1, 1) * contrast + 120 + noise).clamp(0, 255).to(torch.uint8), labels


class Epochs:
    def __init__(self, contrast):
        self.contrast, self.epoch = contrast, 1

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return 8

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.epoch)
        return iter([stripes(16, generator, self.contrast) for _ in range(8)])


class Stripes:
    reads_data = False

    def can_run(self, device, params):
        return None

    def build(self, spec):
        contrast, generator = spec.params.get("contrast", 100), torch.Generator().manual_seed(12345)
        return DataSplits(train=Epochs(contrast), validation=[stripes(64, generator, contrast) for _ in range(4)],
                          classes=["dark", "bright"], train_size=128, validation_size=256)


class PacedBackend(TorchBackend):
    def __init__(self, device, precision, step_s):
        super().__init__(device, precision)
        self.step_s, self.last = step_s, None

    def step(self, model, optimizer, clip_grad_norm):
        super().step(model, optimizer, clip_grad_norm)
        if self.last is not None:
            time.sleep(max(0.0, self.step_s - (time.perf_counter() - self.last)))
        self.last = time.perf_counter()


class Paced:
    precisions = ("fp32",)

    def can_run(self, device, precision, nproc, params, recipe=None):
        return None

    def create(self, device, precision, params, recipe=None):
        return PacedBackend(device, precision, params["step_s"])


@hookimpl
def register_loaders(register):
    register("stripes", Stripes())


@hookimpl
def register_backends(register):
    register("paced", Paced())
'''

SUITE = """
name = "race-test"
epochs = {epochs}
image_size = 8
device = "cpu"
recipe = {{ base = "default", optimizer = "adamw", lr = 0.01, batch_size = 16 }}
{strategy}
[matrix]
model = ["tiny-net"]
loader = ["stripes", "washed-out"]
backend = ["fast", "fast-too", "slow"]
precision = ["fp32"]
exclude = [{{ loader = "washed-out", backend = ["fast-too", "slow"] }}]
[loaders.washed-out]
use = "stripes"
contrast = 0
[backends.fast]
use = "paced"
step_s = 0.02
[backends.fast-too]
use = "paced"
step_s = 0.02
[backends.slow]
use = "paced"
step_s = 0.04
"""
CELL = "tiny-net-{loader}-{backend}-fp32"
FAST, FAST_TOO, SLOW = (CELL.format(loader="stripes", backend=b) for b in ("fast", "fast-too", "slow"))
WASHED_OUT = CELL.format(loader="washed-out", backend="fast")
PLUGINS = {ALLOW_LIST_ENV: "torch"}


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "tiny_plugin.py").write_text(TINY_PLUGIN)
    (tmp_path / "race_plugin.py").write_text(RACE_PLUGIN)
    return tmp_path


def suite(work: Path, epochs: int = 8, strategy: str = "") -> Path:
    path = work / "suite.toml"
    path.write_text(SUITE.format(epochs=epochs, strategy=strategy))
    return path


def race(work: Path, *args: str | os.PathLike[str]) -> subprocess.CompletedProcess[str]:
    return run_harness("run", "--suite", suite(work), "--out", work / "out", *args,
                       plugin_modules=["tiny_plugin", "race_plugin"], pythonpath=[work], env=PLUGINS, timeout=300)


def test_planted_configurations_the_slow_and_the_inaccurate_go_at_the_first_rung_ties_stay(work: Path) -> None:
    run = race(work, "--race", "--json")
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(run.stdout)
    assert (summary["ok"], summary["eliminated"], summary["failed"]) == (2, 2, 0), summary
    found = results(work / "out")
    assert {cell: r["status"] for cell, r in found.items()} == {
        FAST: "ok", FAST_TOO: "ok", SLOW: "eliminated", WASHED_OUT: "eliminated"}
    # the slowed backend: at the first rung (4 epochs), with its measured ratio near the planted 0.5
    slow = found[SLOW]["race"]
    assert slow["stopped_at"] == 1 and slow["rungs"] == [4, 8]
    evidence = slow["evidence"]
    assert evidence["metric"] == "throughput_img_s" and evidence["epochs"] == 4
    # near 0.5, not at it: the paced step is a floor, and the loader's and the loop's own time add to both
    # backends alike; the interval's width follows the machine's load (CI saw [0.45, 0.60] around 0.52)
    assert 0.4 < evidence["low"] <= evidence["ratio"] <= evidence["high"] and 0.45 < evidence["ratio"] < 0.65, evidence
    assert evidence["high"] < 0.8, evidence  # far from a tie: the slowdown is 2x
    assert evidence["against"] in ("stripes · fast · fp32", "stripes · fast-too · fp32")
    assert found[SLOW]["reason"].startswith(f"{evidence['ratio']:.2f}x the throughput of {evidence['against']}, "
                                            "95 % interval [")
    # the loader that harms accuracy: less accurate, and not faster
    washed = found[WASHED_OUT]["race"]["evidence"]
    assert washed["metric"] == "best_val_acc" and washed["accuracy"] < 0.7 < 0.95 < washed["rival_accuracy"]
    assert found[WASHED_OUT]["reason"].startswith("less accurate than stripes · fast")
    # what each eliminated cell trained: the first rung, no more; the tie ran to the end
    assert [len(CellStore(work / "out", c).epochs()) for c in (SLOW, WASHED_OUT, FAST, FAST_TOO)] == [4, 4, 8, 8]
    assert found[FAST]["race"]["stopped_at"] is None and found[FAST]["summary"]["epochs"] == 8
    # each rung in the reverse order of the one before: the survivors' rung-2 epochs came the other way round
    rung_1, rung_2 = (re.findall(rf"^\[([^\]]+)\] epoch {epoch}/8 ", run.stderr, re.M) for epoch in (4, 5))
    assert len(rung_1) == 4 and rung_2 == [c for c in reversed(rung_1) if c in (FAST, FAST_TOO)], run.stderr[-3000:]
    # the report: no eliminated cell as a finished result; the race, its evidence and its compute
    report = (work / "out" / "summary.md").read_text()
    answer, results_part = report.split("## Results")[0], report.split("## Results")[1].split("## Race")[0]
    assert "stripes · slow" not in answer and "washed-out" not in answer
    assert "stripes · fast · fp32" in answer and "stripes · fast-too · fp32" in answer  # both survivors ranked
    assert "| slow " not in results_part and "| washed-out " not in results_part
    race_part = report.split("## Race")[1].split("## ")[0]
    assert "2 of 4 cells eliminated; the race trained 24 cell-epochs of the full matrix's 32 (75 %)" in race_part
    assert race_part.count("rung 1 (4 of 8 epochs)") == 2
    assert "Did not finish" not in report
    html = (work / "out" / "report.html").read_text()
    assert '<section id="race">' in html and "rung 1 (4 of 8 epochs)" in html


def test_a_kept_cell_runs_to_the_end_whatever_the_race_shows(work: Path) -> None:
    run = race(work, "--race", "--keep", "backend=slow", "--only", "loader=stripes")
    assert run.returncode == 0, run.stderr[-3000:]
    found = results(work / "out")
    assert {cell: r["status"] for cell, r in found.items()} == {FAST: "ok", FAST_TOO: "ok", SLOW: "ok"}
    assert found[SLOW]["race"]["kept"] is True and len(CellStore(work / "out", SLOW).epochs()) == 8


def test_keep_without_a_race_and_a_bad_race_setting_exit_2_naming_them(work: Path) -> None:
    run = race(work, "--keep", "backend=slow")
    assert run.returncode == 2 and "--keep goes with a race" in run.stderr, run.stderr
    path = suite(work, strategy='strategy = "race"\n[race]\nfirst = 2')
    run = run_harness("run", "--suite", path, "--out", work / "out2", plugin_modules=["tiny_plugin", "race_plugin"],
                      pythonpath=[work], env=PLUGINS)
    assert run.returncode == 2 and f"{path}: key 'race.first': expected an integer of at least 4" in run.stderr
    assert not (work / "out2").exists()


@pytest.mark.slow
def test_repeats_race_as_one_configuration(work: Path) -> None:
    run = race(work, "--race", "--repeat", "2", "--only", "loader=stripes", "--only", "backend=fast",
               "--only", "backend=slow")
    assert run.returncode == 0, run.stderr[-3000:]
    found = results(work / "out")
    assert {c: r["status"] for c, r in found.items()} == {FAST: "ok", f"{FAST}-r2": "ok", SLOW: "eliminated",
                                                          f"{SLOW}-r2": "eliminated"}
    assert found[SLOW]["reason"] == found[f"{SLOW}-r2"]["reason"]  # one verdict for both repeats
    assert "2 of 4 cells eliminated" in (work / "out" / "summary.md").read_text()


@pytest.mark.slow
def test_an_interrupted_race_resumes_where_it_stopped(work: Path) -> None:
    """A suite that says ``strategy = "race"`` races without --race; Ctrl-C in the second rung, then --resume goes
    on with the survivors from their checkpoints and never reruns an eliminated cell."""
    out = work / "out"
    path = suite(work, epochs=40, strategy='strategy = "race"')
    env = {**os.environ, MODULES_ENV: "tiny_plugin,race_plugin", "PYTHONPATH": str(work), **PLUGINS}
    # SIG_DFL first: a background job of a non-interactive shell (as CI may run us) inherits SIGINT ignored.
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", "--suite", str(path), "--out", str(out)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 240
        while (CellStore(out, SLOW).result() or {}).get("status") != "eliminated":
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout and proc.stdout.read()
            time.sleep(0.1)
        while len(CellStore(out, FAST).epochs()) < 6:  # the second rung is under way
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        os.killpg(proc.pid, signal.SIGINT)
        output = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, output[-3000:]
    assert CellStore(out, FAST).result()["status"] == "interrupted"
    eliminated_at = {c: CellStore(out, c).result()["finished_at"] for c in (SLOW, WASHED_OUT)}
    run = run_harness("run", "--suite", path, "--out", out, "--resume", plugin_modules=["tiny_plugin", "race_plugin"],
                      pythonpath=[work], env=PLUGINS, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    found = results(out)
    assert {c: r["status"] for c, r in found.items()} == {FAST: "ok", FAST_TOO: "ok", SLOW: "eliminated",
                                                          WASHED_OUT: "eliminated"}
    assert {c: found[c]["finished_at"] for c in (SLOW, WASHED_OUT)} == eliminated_at  # not run again
    assert [e["epoch"] for e in CellStore(out, FAST).epochs()] == list(range(1, 41))
    assert found[FAST]["race"]["rungs"] == [4, 8, 16, 32, 40]
    # --full-matrix on a resumed race trains the eliminated cells on, from their checkpoints at the rung
    run = run_harness("run", "--suite", path, "--out", out, "--resume", "--full-matrix",
                      plugin_modules=["tiny_plugin", "race_plugin"], pythonpath=[work], env=PLUGINS, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert {c: r["status"] for c, r in results(out).items()} == dict.fromkeys((FAST, FAST_TOO, SLOW, WASHED_OUT), "ok")
    assert [e["epoch"] for e in CellStore(out, SLOW).epochs()] == list(range(1, 41))


# -- the rules, on racers built here


def racer(label: str, throughputs: list[float], accuracy: float = 0.9, images: int = 1000, kept: bool = False,
          board: str = "m", unpickable: str | None = None) -> Racer:
    from harness.race import Race

    mean, low, high = Race.accuracy([accuracy], images)
    cell = CellSpec(label, "s", board, "l", "b", "fp32", "l", "b", 4, 8, "", 0, Recipe())
    return Racer(label, ("s", "cpu", board), [cell], throughputs, mean, low, high, unpickable, kept)


def test_verdicts_eliminate_only_with_confidence_beyond_the_margin() -> None:
    leader = racer("leader", [100.0, 101.0, 99.0])
    half = racer("half", [50.0, 50.5, 49.5])
    tied = racer("tied", [99.0, 102.0, 98.0])
    near = racer("near", [97.0, 97.2, 96.8])  # surely slower, but by 3 %: within the 5 % margin
    found = verdicts([leader, half, tied, near], epochs=4)
    assert set(found) == {1}
    assert found[1].against == "leader" and found[1].metric == "throughput_img_s"
    assert found[1].low < 0.5 < found[1].high < 0.95 and found[1].epochs == 4
    assert set(verdicts([leader, near], epochs=4, margin=0.0)) == {1}  # no margin: 3 % slower is slower


def test_a_slowed_epoch_weighs_by_its_time_as_in_the_report() -> None:
    """Throughput is images over seconds, as the report's: a racer with one epoch at half speed (another job
    on the machine) is judged on the time it took, not on a mean of epoch throughputs that hides part of it."""
    leader = racer("leader", [100.0, 101.0, 99.0, 100.0, 100.5, 99.5, 100.0, 100.0])
    slowed = racer("slowed", [80.0, 80.0, 40.0, 80.0, 80.0, 80.0, 80.0, 80.0])
    assert slowed.throughput == pytest.approx(8 / (7 / 80 + 1 / 40))  # 71.1 img/s: the mean of the eight is 75.0
    evidence = verdicts([leader, slowed], epochs=9)[1]
    assert evidence.ratio == pytest.approx(slowed.throughput / leader.throughput, rel=1e-3)
    assert evidence.low < evidence.ratio < evidence.high < 1


def test_verdicts_weigh_accuracy_against_speed() -> None:
    leader = racer("leader", [100.0, 101.0, 99.0], accuracy=0.60)
    slower_but_more_accurate = racer("careful", [50.0, 50.5, 49.5], accuracy=0.80)
    same_speed_less_accurate = racer("sloppy", [100.0, 100.5, 99.5], accuracy=0.40)
    faster_less_accurate = racer("hasty", [200.0, 201.0, 199.0], accuracy=0.20)
    found = verdicts([leader, slower_but_more_accurate, same_speed_less_accurate, faster_less_accurate], epochs=4)
    assert set(found) == {2}  # the careful one and the hasty one each win on an axis
    assert found[2].metric == "best_val_acc" and found[2].against == "leader"  # hasty is faster, but worse still
    assert found[2].text.startswith(f"less accurate than {found[2].against} (best validation accuracy 40.0 % [")


def test_verdicts_keep_kept_cells_separate_boards_and_drop_the_unpickable() -> None:
    leader = racer("leader", [100.0, 101.0, 99.0])
    kept = racer("kept", [10.0, 10.1, 9.9], kept=True)
    other_model = racer("other", [10.0, 10.1, 9.9], board="another model")
    flagged = racer("flagged", [500.0, 501.0, 499.0], unpickable="failed a sanity check (params-unchanged): ...")
    found = verdicts([leader, kept, other_model, flagged], epochs=4)
    assert set(found) == {3}  # the flagged one never eliminates the others either
    assert found[3].text.startswith("failed a sanity check (params-unchanged)")
    few = racer("few", [50.0, 50.5])  # two timed epochs: no interval, no verdict
    assert verdicts([leader, few], epochs=3) == {}


def test_rungs_grow_by_the_factor_to_the_full_training() -> None:
    assert rungs(16) == [4, 8, 16]
    assert rungs(12) == [4, 8, 12]
    assert rungs(4) == [4] and rungs(3) == [3]  # no room for a race: one rung, the full training
    assert rungs(24, first=4, factor=3) == [4, 12, 24]
    assert rungs(10, first=4, factor=1.5) == [4, 6, 9, 10]
    with pytest.raises(RaceError, match=r"race.first: expected an integer of at least 4 \(the warm-up epoch"):
        RaceSettings(first=3)
    with pytest.raises(RaceError, match=r"race\.factor: expected a number above 1"):
        RaceSettings(factor=1)
    with pytest.raises(RaceError, match=r"race\.margin"):
        RaceSettings(margin=1.5)


def test_an_eliminated_result_reads_back_with_its_race(work: Path) -> None:
    """The results model reads ``race``; an older reader sees an unknown status and counts the cell incomplete."""
    cell = CellSpec("c", "s", "m", "l", "b", "fp32", "l", "b", 8, 8, "", 0, Recipe())
    store = CellStore(work / "out", "c")
    store.write_cell(cell)
    store.write_result(cell, {}, "eliminated", "slower", race={"rungs": [4, 8], "stopped_at": 1})
    read = read_cell(store.dir)
    assert (read.status, read.reason, read.race["stopped_at"]) == ("eliminated", "slower", 1)
