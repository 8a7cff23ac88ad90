"""``harness ab`` (interleaved A/B runs of two revisions) and ``--reference`` calibration.

Each test makes a throwaway git repository in ``tmp_path`` with two commits of a tiny suite: the
candidate's ``hashwork.BLOCKS`` is 3x the base's. ``fakebench.py`` writes a pytest-benchmark-shaped
JSON at once (samples proportional to BLOCKS) and logs which side ran it with which code;
``test_bench.py`` is a real pytest-benchmark suite.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import ab, cli, compare

HASHWORK = """\
import hashlib

BLOCKS = {blocks}
BUFFER = bytes(range(256)) * 256


def work():
    digest = b""
    for _ in range(BLOCKS):
        digest = hashlib.sha256(digest + BUFFER).digest()
    return digest
"""

TEST_BENCH = """\
from harness.ab import fixed_work
from hashwork import work


def test_hash(benchmark):
    benchmark(work)


def test_reference(benchmark):
    benchmark(fixed_work)
"""

FAKEBENCH = """\
import json, os, sys, time
from pathlib import Path

import hashwork

out, log = sys.argv[1], Path(sys.argv[2])
with log.open("a") as f:
    f.write(json.dumps({"side": os.environ["HARNESS_AB_SIDE"], "blocks": hashwork.BLOCKS, "cwd": os.getcwd(),
                        "setup": os.path.exists("setup.txt"), "pid": os.getpid()}) + "\\n")
if os.environ.get("FAKE_HOLD_AT") == str(len(log.read_text().splitlines())):
    time.sleep(120)
data = [hashwork.BLOCKS * 1e-3 * (1 + 0.01 * i) for i in range(10)]
bench = {"fullname": "fake.py::test_hash", "name": "test_hash", "stats": {"data": data}}
Path(out).write_text(json.dumps({"machine_info": {}, "benchmarks": [bench]}))
"""

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false"]


def git(repo: Path, *args: str) -> str:
    return subprocess.run([*GIT, "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository whose HEAD~1 (base) hashes 4 blocks per call and HEAD (candidate) 12."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    for blocks in (4, 12):
        (repo / "hashwork.py").write_text(HASHWORK.format(blocks=blocks))
        (repo / "test_bench.py").write_text(TEST_BENCH)
        (repo / "fakebench.py").write_text(FAKEBENCH)
        git(repo, "add", ".")
        git(repo, "commit", "-q", "-m", f"{blocks} blocks")
    return repo


def worktree_count(repo: Path) -> int:
    return git(repo, "worktree", "list", "--porcelain").count("worktree ")


def fake(log: Path) -> list[str]:
    return ["--", sys.executable, "fakebench.py", "{json}", str(log)]


def run_ab(repo: Path, *args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(["ab", "--repo", str(repo), *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def log_lines(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()]


# ---------------------------------------------------------------- interleaving and worktrees


def test_order_is_abba_counterbalanced() -> None:
    assert ab.order(3) == ["base", "candidate", "candidate", "base", "base", "candidate"]
    positions = {side: [i for i, s in enumerate(ab.order(10)) if s == side] for side in ab.SIDES}
    assert sum(positions["base"]) == sum(positions["candidate"])  # neither side runs later on average


def test_runs_alternate_abba_each_with_its_own_code_and_leave_no_worktree(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log, out = tmp_path / "log.jsonl", tmp_path / "out"
    code, stdout, stderr = run_ab(repo, "HEAD~1", "HEAD", "--rounds", "3", "--out", str(out),
                                  "--setup", "echo ok > setup.txt", *fake(log), capsys=capsys)
    assert code == 1, stderr  # 3x the work: regressed
    runs = log_lines(log)
    assert [(r["side"], r["blocks"]) for r in runs] == [
        ("base", 4), ("candidate", 12), ("candidate", 12), ("base", 4), ("base", 4), ("candidate", 12)]
    assert all(r["setup"] for r in runs)
    assert "fake.py::test_hash" in stdout and "regressed" in stdout
    assert "round 1/3" in stderr and "s left" in stderr
    assert worktree_count(repo) == 1
    assert not Path(runs[0]["cwd"]).parent.exists()  # the temporary folder of both worktrees
    report = json.loads((out / "ab.json").read_text())
    assert [(r["round"], r["side"]) for r in report["runs"]] == [
        (1, "base"), (1, "candidate"), (2, "candidate"), (2, "base"), (3, "base"), (3, "candidate")]
    row = report["rows"][0]
    assert (row["n_baseline"], row["n_candidate"], row["verdict"]) == (30, 30, "regressed")
    assert row["ratio"] == pytest.approx(3.0)


def test_a_a_is_unchanged_and_fastest_keeps_the_best_samples_of_each_run(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code, stdout, stderr = run_ab(repo, "HEAD", "HEAD", "--rounds", "2", "--out", str(out), "--fastest", "50%",
                                  *fake(tmp_path / "log"), capsys=capsys)
    assert code == 0, stderr
    assert "unchanged" in stdout
    (row,) = json.loads((out / "ab.json").read_text())["rows"]
    assert (row["n_baseline"], row["n_candidate"], row["baseline_median"]) == (10, 10, pytest.approx(0.01224))
    assert worktree_count(repo) == 1


def test_a_failing_command_exits_2_and_leaves_no_worktree(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, stderr = run_ab(repo, "HEAD~1", "HEAD", "--out", str(tmp_path / "out"), "--",
                             sys.executable, "-c", "import sys; print('boom'); sys.exit(3)", "{json}", capsys=capsys)
    assert code == 2
    assert "exited with 3" in stderr and "boom" in stderr and "r01-base.log" in stderr
    assert worktree_count(repo) == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["nope", "HEAD", "--", "x", "{json}"], "'nope' is not a commit"),
        (["HEAD~1", "HEAD", "--", "pytest"], "must write its JSON to {json}"),
        (["HEAD~1", "HEAD", "--rounds", "1", "--", "x", "{json}"], "--rounds 1"),
        (["HEAD~1", "HEAD", "--threshold", "x", "--", "x", "{json}"], "--threshold 'x'"),
        (["HEAD~1", "HEAD", "--fastest", "0", "--", "x", "{json}"], "--fastest 0"),
    ],
)
def test_bad_input_exits_2(repo: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, stderr = run_ab(repo, *argv, capsys=capsys)
    assert code == 2 and message in stderr
    assert worktree_count(repo) == 1


def test_options_after_the_revisions_and_a_command_with_its_own_double_dash() -> None:
    argv = ["ab", "main", "HEAD", "--rounds", "4", "--", "tox", "-e", "bench", "--", "--benchmark-json", "{json}"]
    args = cli.parser(argv).parse_args(argv)  # only the command named is configured
    assert ab.benchmark_command(args) == ["tox", "-e", "bench", "--", "--benchmark-json", "{json}"]
    assert (args.base, args.candidate, args.rounds) == ("main", "HEAD", 4)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_run_stops_the_command_and_removes_the_worktrees(
    repo: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    log = tmp_path / "log.jsonl"
    env = {**os.environ, "FAKE_HOLD_AT": "3"}  # the third run (round 2, candidate) sleeps
    # SIG_DFL first: a background job of a non-interactive shell (as CI may run us) inherits SIGINT ignored.
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "ab", "HEAD~1", "HEAD", "--repo", str(repo),
                             "--rounds", "4", "--out", str(tmp_path / "out"), *fake(log)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 60
    while not (log.exists() and len(log.read_text().splitlines()) == 3):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.1)
    assert worktree_count(repo) == 3
    proc.send_signal(sig)
    output = proc.communicate(timeout=30)[0]
    assert proc.returncode == 128 + sig, output
    assert f"interrupted by {sig.name}" in output
    held = log_lines(log)[-1]
    with pytest.raises(ProcessLookupError):
        os.kill(held["pid"], 0)  # the sleeping benchmark command was stopped
    assert worktree_count(repo) == 1
    assert not Path(held["cwd"]).parent.exists()


def test_a_real_pytest_benchmark_suite_calibrated_by_its_reference(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code, stdout, stderr = run_ab(
        repo, "HEAD~1", "HEAD", "--rounds", "2", "--out", str(out), "--reference", "test_reference", "--",
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:harness", "test_bench.py",
        "--benchmark-max-time=0.05", "--benchmark-json", "{json}", capsys=capsys)
    assert code == 1, stderr
    rows = {r["key"]: r for r in json.loads((out / "ab.json").read_text())["rows"]}
    assert set(rows) == {"test_bench.py::test_hash/time_vs_reference"}  # the reference itself is not judged
    assert rows["test_bench.py::test_hash/time_vs_reference"]["verdict"] == "regressed"
    assert "test_bench.py::test_reference" in stdout and "calibrated by it" in stdout
    assert worktree_count(repo) == 1


# ---------------------------------------------------------------- calibration of plain pytest-benchmark files


def bench_json(path: Path, series: dict[str, list[float]], extra: dict | None = None) -> Path:
    """A pytest-benchmark JSON file (the fields compare reads) with these per-round times."""
    benchmarks = [{"fullname": name, "name": name.split("::")[-1], "stats": {"data": data},
                   "extra_info": (extra or {}).get(name, {})} for name, data in series.items()]
    path.write_text(json.dumps({"machine_info": {"node": "ci-1"}, "benchmarks": benchmarks}))
    return path


def times(median: float, n: int = 20, seed: int = 0) -> list[float]:
    """``n`` per-round times within +-3 % of ``median``."""
    return [median * (1 + 0.03 * ((i * 7 + seed) % 13 - 6) / 6) for i in range(n)]


def files(tmp_path: Path, load: float, slowdown: float) -> tuple[Path, Path]:
    """A baseline, and a candidate run on a machine ``load`` times slower with ``slowdown`` more work in test_hash."""
    base = bench_json(tmp_path / "a.json", {"t.py::test_hash": times(1e-3), "t.py::test_reference": times(2e-3, 8)})
    cand = bench_json(tmp_path / "b.json", {"t.py::test_hash": times(1e-3 * load * (1 + slowdown), seed=3),
                                            "t.py::test_reference": times(2e-3 * load, 8, seed=5)})
    return base, cand


def run_compare(*argv: str | Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = compare.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_reference_cancels_a_busier_machine(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base, cand = files(tmp_path, load=1.6, slowdown=0.0)
    code, stdout, _ = run_compare(base, cand, capsys=capsys)
    assert code == 1 and "regressed" in stdout  # raw times: a false alarm
    code, stdout, stderr = run_compare(base, cand, "--reference", "test_reference", capsys=capsys)
    assert code == 0, stdout
    assert "t.py::test_hash/time_vs_reference" in stdout and "unchanged" in stdout
    assert "t.py::test_reference " not in stdout  # the reference is not judged
    assert "reference t.py::test_reference: median 1.99 ms -> 3.192 ms (+60.4%)" in stderr


def test_reference_still_catches_a_real_slowdown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base, cand = files(tmp_path, load=1.6, slowdown=0.2)
    code, stdout, _ = run_compare(base, cand, "--reference", "t.py::test_reference", "--json", capsys=capsys)
    assert code == 1
    (row,) = json.loads(stdout)["rows"]
    assert (row["key"], row["verdict"]) == ("t.py::test_hash/time_vs_reference", "regressed")
    assert row["ratio"] == pytest.approx(1.2, abs=0.02)


def test_a_benchmark_with_its_own_time_vs_reference_keeps_it(tmp_path: Path) -> None:
    extra = {"t.py::test_step": {"samples": {"time_vs_reference": [1.0, 1.1]}}}
    path = bench_json(tmp_path / "a.json", {"t.py::test_step": [3.0, 3.0], "t.py::test_reference": [2.0]}, extra)
    side = ab.calibrate(compare.load_side(path), "test_reference")
    assert side.series["t.py::test_step/time_vs_reference"].samples == [1.0, 1.1]
    assert "t.py::test_step" not in side.series


@pytest.mark.parametrize(
    ("reference", "message"),
    [("test_nothing", "names no benchmark"), ("t.py::test_*", "matches several benchmarks")],
)
def test_a_bad_reference_exits_2(tmp_path: Path, reference: str, message: str,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    base, cand = files(tmp_path, load=1.0, slowdown=0.0)
    code, _, stderr = run_compare(base, cand, "--reference", reference, capsys=capsys)
    assert code == 2 and message in stderr and "t.py::test_hash" in stderr


def test_fastest_keeps_the_best_share_of_each_series() -> None:
    side = compare.Side(Path("x.json"), "pytest-benchmark", {
        "t.py::test_a": compare.Series("t.py::test_a", "t.py::test_a", "time_s", [5, 1, 4, 2, 3, 9, 8, 7], False),
        "t.py::test_a/img_s": compare.Series("t.py::test_a/img_s", "t.py::test_a", "img_s", [1, 5, 3, 2], True)})
    kept = ab.keep_fastest(side, 0.25)
    assert kept.series["t.py::test_a"].samples == [1, 2]
    assert kept.series["t.py::test_a/img_s"].samples == [5]  # higher is better: the highest
    assert ab.keep_fastest(side, 0.01).series["t.py::test_a"].samples == [1]  # at least one


def test_fixed_work_is_deterministic() -> None:
    assert ab.fixed_work() == ab.fixed_work() and ab.fixed_work(1) != ab.fixed_work(2)
    assert len(ab.time_fixed_work(3)) == 3
