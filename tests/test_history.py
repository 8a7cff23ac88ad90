"""``harness history``: record, check (change points), page, bisect.

Histories are real git repositories in ``tmp_path`` (empty commits an hour apart) with pytest-benchmark-shaped
JSON files recorded through ``harness history record``; the synthetic series (step, drift, variance change,
A/A noise) go through exactly the code a CI job runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from report_fixtures import make_cell, make_env, make_epochs, write_cell
from test_report import PHONE_PROBE, _browse, needs_chromium

from harness import cli
from harness.history import changes, records

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false"]
BENCH = "bench.py::test_step"
RATIO = f"{BENCH}/time_vs_reference"


def git(repo: Path, *args: str, date: int | None = None) -> str:
    env = {**os.environ} if date is None else {
        **os.environ, "GIT_COMMITTER_DATE": f"{1_700_000_000 + 3600 * date} +0000",
        "GIT_AUTHOR_DATE": f"{1_700_000_000 + 3600 * date} +0000"}
    return subprocess.run([*GIT, "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env=env).stdout.strip()


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A repository of 30 empty commits, one an hour (the history's order)."""
    repo = tmp_path_factory.mktemp("repo")
    git(repo, "init", "-q")
    for i in range(30):
        git(repo, "commit", "-q", "--allow-empty", "-m", f"commit {i}", date=i)
    return repo, git(repo, "rev-list", "--reverse", "HEAD").split()


def bench_json(path: Path, commit: str, samples: list[float]) -> Path:
    """A pytest-benchmark file as benchmarks/test_train_step.py writes it: raw times and the ratio series."""
    bench = {"fullname": BENCH, "name": "test_step", "stats": {"data": [3 * s for s in samples]},
             "extra_info": {"samples": {"time_vs_reference": samples}}}
    path.write_text(json.dumps({"machine_info": {"cpu": {"brand_raw": "Test CPU", "count": 2}},
                                "commit_info": {"id": commit, "dirty": False}, "benchmarks": [bench]}))
    return path


def noisy(levels: list[float], seed: int, spread: list[float] | None = None) -> list[list[float]]:
    """Six rounds per commit around each level: 3 % noise (or ``spread``), and a tenth of the rounds off by
    5-30 %, like benchmarks/test_train_step.py's per-round time_vs_reference on this shared machine."""
    rng = np.random.default_rng(seed)
    spread = spread or [0.03] * len(levels)
    history = []
    for level, sd in zip(levels, spread, strict=True):
        rounds = level * (1 + sd * rng.standard_normal(6))
        slowed = rng.random(6) < 0.1
        rounds[slowed] *= rng.uniform(1.05, 1.3, slowed.sum())
        history.append(rounds.tolist())
    return history


def make_history(tmp_path: Path, repo: tuple[Path, list[str]], series: list[list[float]]) -> Path:
    """Record one benchmark file per commit (the newest commits get the series' values) through the CLI."""
    folder, commits = repo
    history, runs = tmp_path / "history", tmp_path / "runs"
    runs.mkdir(exist_ok=True)
    files = [str(bench_json(runs / f"{i:02d}.json", commit, samples))
             for i, (commit, samples) in enumerate(zip(commits[-len(series):], series, strict=True))]
    assert cli.main(["history", "record", str(history), *files, "--repo", str(folder)]) == 0
    return history


def check(history: Path, *options: str) -> tuple[int, list[changes.Change]]:
    code = cli.main(["history", "check", str(history), "--select", "*time_vs_reference", *options])
    found = [c for s in changes.series_of(records.load(history)) if s.key == RATIO for c in changes.change_points(s)]
    return code, found


# ---------------------------------------------------------------- change points on synthetic histories


def test_step_is_found_at_its_commit_and_fails_only_while_new(tmp_path: Path, repo: tuple[Path, list[str]],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    history = make_history(tmp_path, repo, noisy([1.0] * 25 + [1.15] * 5, seed=1))
    code, found = check(history)
    assert code == 1  # a regression past 5 % starting within the newest 5 commits
    out = capsys.readouterr().out
    assert [(c.index, c.regression) for c in found] == [(25, True)]
    assert found[0].first.commit == repo[1][25] and found[0].before.commit == repo[1][24]
    assert 0.12 < found[0].change < 0.18 and found[0].confidence > 0.9999
    assert "FAIL " in out and repo[1][25][:10] in out and "regression +1" in out
    assert check(history, "--recent", "4")[0] == 0  # an older change point is reported, no longer fails
    assert check(history, "--threshold", "20%")[0] == 0  # smaller than the stated size
    capsys.readouterr()
    assert check(history, "--json")[0] == 1
    printed = capsys.readouterr()
    machine = json.loads(printed.out)  # stdout holds the JSON alone; the readable lines went to stderr
    assert [(c["first_after"], c["fails"]) for c in machine["changes"]] == [(repo[1][25], True)]
    assert "FAIL " in printed.err and machine["threshold"] == 0.05


def test_improvement_is_reported_and_passes(tmp_path: Path, repo: tuple[Path, list[str]]) -> None:
    code, found = check(make_history(tmp_path, repo, noisy([1.0] * 27 + [0.8] * 3, seed=2)))
    assert code == 0 and [(c.index, c.regression) for c in found] == [(27, False)]


def test_slow_drift_is_found_as_regressions(tmp_path: Path, repo: tuple[Path, list[str]]) -> None:
    code, found = check(make_history(tmp_path, repo, noisy(list(np.linspace(1.0, 1.3, 30)), seed=3)),
                        "--recent", "30")
    assert code == 1 and found and all(c.regression for c in found)
    assert sum(c.change for c in found) > 0.15  # the drift's size, split into steps


def test_variance_change_alone_is_no_shift(tmp_path: Path, repo: tuple[Path, list[str]]) -> None:
    spread = [0.01] * 15 + [0.08] * 15
    code, found = check(make_history(tmp_path, repo, noisy([1.0] * 30, seed=4, spread=spread)))
    assert (code, found) == (0, [])


@pytest.mark.parametrize("seed", range(10, 20))
def test_a_a_noise_is_silent(tmp_path: Path, repo: tuple[Path, list[str]], seed: int) -> None:
    assert check(make_history(tmp_path, repo, noisy([1.0] * 30, seed=seed))) == (0, [])


# ---------------------------------------------------------------- the records


def test_record_files_a_run_under_its_commit_with_machine_and_environment(
        tmp_path: Path, repo: tuple[Path, list[str]]) -> None:
    history = make_history(tmp_path, repo, [[1.0, 1.1], [1.2, 1.3]])
    commit = repo[1][-1]
    (path,) = (history / "records").glob(f"*/{commit}/*.json")
    data = json.loads(path.read_text())
    assert (data["commit"], data["subject"], data["commit_date"], data["commit_depth"]) == (
        commit, "commit 29", "2023-11-16T03:13:20+00:00", 30)
    # pytest-benchmark's machine_info under the results model's names (harness/results.py: one name for the CPU)
    assert data["machine_info"] == {"cpu_model": "Test CPU", "cpu_count": 2} and data["machine"].startswith("m-")
    assert data["environment"]["cpu_model"] == "Test CPU"
    assert {s["key"]: s["samples"] for s in data["series"]}[RATIO] == [1.2, 1.3]
    assert (history / data["report"]).read_text() == (tmp_path / "runs" / "01.json").read_text()
    # recording the same run again adds a record (append-only) and both count for that commit
    assert cli.main(["history", "record", str(history), str(tmp_path / "runs" / "01.json"), "--repo", str(repo[0]),
                     "--machine", data["machine"]]) == 0
    assert len(list((history / "records").glob(f"*/{commit}/*.json"))) == 2
    (series,) = [s for s in changes.series_of(records.load(history)) if s.key == RATIO]
    assert [c.samples for c in series.commits] == [2, 4]


def test_a_harness_run_is_recorded_per_cell_with_its_report(tmp_path: Path, repo: tuple[Path, list[str]]) -> None:
    run = tmp_path / "run"
    write_cell(run, make_cell("fp32"), make_env("cpu"), make_epochs([2.0, 1.0, 1.1], [1.9, 0.9, 1.0], [0.3, 0.4, 0.5]))
    write_cell(run, make_cell("bf16"), make_env("cpu"), [], status="skipped", reason="no bf16 here")
    (run / "report.html").write_text("<p>report</p>")
    history = tmp_path / "history"
    path = records.record(history, run, repo[0], repo[1][3])
    data = json.loads(path.read_text())
    assert data["commit"] == repo[1][3] and data["kind"] == "harness"
    assert "hostname" not in data["machine_info"] and data["machine_info"]["cpu_count"] == make_env("cpu")["cpu_count"]
    cell = make_cell("fp32").id
    assert {s["key"]: len(s["samples"]) for s in data["series"]} == {  # epoch 1 left out as warm-up
        f"{cell}/throughput_img_s": 2, f"{cell}/epoch_time_s": 2}
    assert data["absent"] == {make_cell("bf16").id: "skipped: no bf16 here"}
    assert (history / data["report"]).read_text() == "<p>report</p>"


def test_bad_input_is_one_line_naming_the_file(tmp_path: Path, repo: tuple[Path, list[str]],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["history", "check", str(tmp_path / "none")]) == 2
    assert "no records/ folder" in capsys.readouterr().err
    history = make_history(tmp_path, repo, [[1.0]])
    (record,) = (history / "records").glob("*/*/*.json")
    record.write_text("{")
    assert cli.main(["history", "page", str(history), "--out", str(tmp_path / "page")]) == 2
    assert f"{record}: not a readable history record" in capsys.readouterr().err
    assert cli.main(["history", "record", str(history), str(tmp_path / "runs" / "00.json"), "--commit", "nope",
                     "--repo", str(repo[0])]) == 2
    assert "'nope' is not a commit" in capsys.readouterr().err


def test_concurrent_recorders_each_add_their_record(tmp_path: Path, repo: tuple[Path, list[str]]) -> None:
    run = bench_json(tmp_path / "run.json", repo[1][-1], [1.0, 1.1])
    history = tmp_path / "history"
    with ThreadPoolExecutor(6) as pool:  # one process: the same second and pid, told apart under the lock
        paths = list(pool.map(lambda _: records.record(history, run, repo[0]), range(6)))
    assert len(set(paths)) == 6 and all(p.is_file() for p in paths)
    assert len(records.load(history)) == 2 * 6


CRASH = """
import os, signal, sys
from pathlib import Path
from harness.history import records

rename = Path.replace
def crash(self, target):
    if "records" in Path(target).parts:  # the run's copy is in place, the record not yet
        os.kill(os.getpid(), signal.SIGKILL)
    return rename(self, target)
Path.replace = crash
records.record(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
"""


def test_a_crash_while_recording_loses_nothing(tmp_path: Path, repo: tuple[Path, list[str]]) -> None:
    history = make_history(tmp_path, repo, noisy([1.0] * 3, seed=5))
    before = {p: p.read_bytes() for p in (history / "records").rglob("*.json")}
    run = bench_json(tmp_path / "new.json", repo[1][-1], [2.0, 2.0])
    done = subprocess.run([sys.executable, "-c", CRASH, str(history), str(run), str(repo[0])])
    assert done.returncode == -signal.SIGKILL
    assert {p: p.read_bytes() for p in (history / "records").rglob("*.json")} == before  # untouched, none added
    assert len(list((history / "records").rglob(".*.tmp"))) == 1  # the torn write, passed over by readers
    assert len(records.load(history)) == 2 * 3
    # the lock died with the process: the next record goes through
    assert cli.main(["history", "record", str(history), str(run), "--repo", str(repo[0])]) == 0
    assert len(records.load(history)) == 2 * 4


# ---------------------------------------------------------------- the page


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory, repo: tuple[Path, list[str]]) -> Path:
    tmp_path = tmp_path_factory.mktemp("page")
    history = make_history(tmp_path, repo, noisy([1.0] * 20 + [1.3] * 10, seed=6))
    assert cli.main(["history", "page", str(history), "--out", str(tmp_path / "page"), "--title", "<b>x</b>"]) == 0
    return tmp_path / "page" / "index.html"


def test_page_marks_the_change_point_and_links_each_point(page: Path) -> None:
    text = page.read_text()
    assert "&lt;b&gt;x&lt;/b&gt;" in text and "<b>x" not in text  # escaped
    assert text.count("<svg ") == 2 and text.count("<circle ") == 2 * 30  # time_s and time_vs_reference
    assert text.count('class="change regression"') == 2  # the step, in both series
    links = [part.split('"')[0] for part in text.split('<a href="')[1:]]
    assert len(links) == 60 and all((page.parent / link).is_file() for link in links)


@needs_chromium
def test_page_fits_a_phone(page: Path) -> None:
    check = _browse(page, 420, PHONE_PROBE + "r.graphs = [...document.querySelectorAll('svg')].map("
                    "s => s.getBoundingClientRect().width); const ids = [...document.querySelectorAll('[id]')]"
                    ".map(e => e.id); r.duplicateIds = ids.filter((id, i) => ids.indexOf(id) !== i);")
    assert check["pageWidth"] <= 420 and check["widest"] <= 420 and check["duplicateIds"] == []
    assert len(check["graphs"]) == 2 and 300 < max(check["graphs"]) <= 420


# ---------------------------------------------------------------- bisect

WORK = """\
import hashlib, json, sys, time
from pathlib import Path

BLOCKS = int(Path("blocks.txt").read_text())
times = []
for _ in range(8):
    start, digest = time.perf_counter(), b""
    for _ in range(BLOCKS):
        digest = hashlib.sha256(digest + bytes(65536)).digest()
    times.append(time.perf_counter() - start)
Path(sys.argv[1]).write_text(json.dumps({"benchmarks": [{"fullname": "work", "stats": {"data": times}}]}))
"""


def test_bisect_names_the_first_slow_commit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "work.py").write_text(WORK)
    for i in range(9):  # commit 5 makes the work 4x
        (repo / "blocks.txt").write_text("8" if i < 5 else "32")
        git(repo, "add", ".")
        git(repo, "commit", "-q", "--allow-empty", "-m", f"commit {i}")
    commits = git(repo, "rev-list", "--reverse", "HEAD").split()
    out = tmp_path / "bisect"
    code = cli.main(["history", "bisect", commits[0], commits[-1], "--repo", str(repo), "--out", str(out),
                     "--threshold", "50%", "--", sys.executable, "work.py", "{json}"])
    assert code == 0
    assert f"first bad commit: {commits[5]} commit 5" in capsys.readouterr().out
    report = json.loads((out / "bisect.json").read_text())
    assert report["first_bad"] == commits[5] and len(report["steps"]) == 3  # 8 candidates: log2
    assert [s["decision"] for s in report["steps"]] == ["good", "bad", "bad"]  # commits 4, 6, 5
    assert [s["rounds"] for s in report["steps"][1:]] == [1, 1]  # 4x the work: one run a side decides
    assert len(git(repo, "worktree", "list").splitlines()) == 1  # the worktrees are gone
