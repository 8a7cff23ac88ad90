"""Evidence for docs/ci.md: interleaved A/B runs (``harness ab``) vs sequential runs under a switching load.

A throwaway git repository holds a pytest-benchmark suite of two hashing benchmarks (chained
SHA-256 and BLAKE2b over a 64 KiB buffer) and the harness's fixed-work reference, in three
commits: ``base``, ``s10`` and ``s20`` (10 % and 20 % more blocks per call). A background
process burns one core for random on/off periods (each uniform in 0.5-3 s by default, seeded) during the
whole experiment, on top of whatever else the machine runs. Each repetition runs, in rotating order:

- interleaved, ``harness ab`` (ABBA, ``--rounds`` rounds): base vs base (A/A), base vs s10, and in every
  other repetition base vs s20;
- sequential: base ``--rounds`` times, then base again as many times (A/A: two CI steps one after the
  other); the first run of each alone is the two-files case (``harness compare a.json a2.json``).

Each set of runs is judged by harness compare's verdict logic on raw times, calibrated by
``test_reference`` (the fixed work in the same pytest process) and by ``harness:fixed-work`` (timed
by harness ab around each run), at thresholds of 10 % and 5 %. Not collected by pytest (no
``test_`` prefix): run it by hand, then copy the printed tables into docs/ci.md::

    .venv/bin/python benchmarks/ab_evidence.py --repetitions 20 --rounds 2 --out runs/ab-evidence
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness import ab, cli, compare

HASHWORK = """\
import hashlib

BLOCKS = {blocks}
BUFFER = bytes(range(256)) * 256


def sha256():
    digest = b""
    for _ in range(BLOCKS):
        digest = hashlib.sha256(digest + BUFFER).digest()
    return digest


def blake2b():
    digest = b""
    for _ in range(BLOCKS):
        digest = hashlib.blake2b(digest + BUFFER).digest()
    return digest
"""

SUITE = """\
import hashwork
from harness.ab import fixed_work


def test_sha256(benchmark):
    benchmark(hashwork.sha256)


def test_reference(benchmark):
    benchmark(fixed_work)


def test_blake2b(benchmark):
    benchmark(hashwork.blake2b)
"""

LOAD = """\
import random, sys, time
rng, low, high = random.Random(int(sys.argv[1])), float(sys.argv[2]), float(sys.argv[3])
while True:
    end = time.monotonic() + rng.uniform(low, high)
    while time.monotonic() < end:
        pass
    time.sleep(rng.uniform(low, high))
"""

COMMITS = {"base": 40, "s10": 44, "s20": 48}  # hash blocks per call
COMMAND = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:harness", "test_hash.py",
           "--benchmark-max-time=0.1", "--benchmark-json", "{json}"]
GATES = {  # name: (reference, fastest fraction, threshold)
    "raw 10%": (None, None, 0.10),
    "raw 5%": (None, None, 0.05),
    "fastest 10%": (None, 0.25, 0.10),
    "fastest 5%": (None, 0.25, 0.05),
    "ref 10%": ("test_reference", None, 0.10),
    "ref 5%": ("test_reference", None, 0.05),
    "fixed-work 10%": (ab.FIXED_WORK_KEY, None, 0.10),
    "fixed-work 5%": (ab.FIXED_WORK_KEY, None, 0.05),
}
EXPERIMENTS = ("interleaved A/A", "interleaved +10%", "interleaved +20%", "sequential A/A",
               "sequential A/A, 1 run each")


def make_repo(folder: Path) -> Path:
    """The throwaway repository, its commits tagged base, s10 and s20."""
    repo = folder / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=ab", "-c", "user.email=ab@example.com", "-c",
           "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "test_hash.py").write_text(SUITE)
    for tag, blocks in COMMITS.items():
        (repo / "hashwork.py").write_text(HASHWORK.format(blocks=blocks))
        subprocess.run([*git, "add", "."], check=True)
        subprocess.run([*git, "commit", "-q", "-m", tag], check=True)
        subprocess.run([*git, "tag", tag], check=True)
    return repo


def judge(runs: list[ab.Run], out: Path) -> dict[str, dict[str, Any]]:
    """Per gate: whether a hashing benchmark regressed, and each one's median ratio (candidate / baseline)."""
    found = {}
    for gate, (reference, fastest, threshold) in GATES.items():
        if reference == ab.FIXED_WORK_KEY and not all(r.fixed_work_s for r in runs):
            continue  # runs read back from files without the fixed work timed around them
        sides = ab.pooled(runs, out, reference, fastest)
        options = compare.Options(threshold=threshold, select=("*::test_sha256*", "*::test_blake2b*"))
        rows = compare.compare_sides(sides["base"], sides["candidate"], options)
        found[gate] = {"regressed": any(r.verdict == "regressed" for r in rows),
                       "ratios": {r.key.split("::")[-1].split("/")[0]: r.ratio for r in rows}}
    return found


def interleaved(repo: Path, candidate: str, rounds: int, out: Path) -> list[ab.Run]:
    """``harness ab base CANDIDATE`` through the real CLI; its runs."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        code = cli.main(["ab", "--repo", str(repo), "base", candidate, "--rounds", str(rounds), "--out", str(out),
                         "--", *COMMAND])
    if code not in (0, 1):
        raise SystemExit(f"harness ab failed ({code}): {err.getvalue()}")
    report = json.loads((out / "ab.json").read_text())
    return [ab.Run(r["round"], r["side"], Path(r["json"]), r["seconds"], r["fixed_work_s"]) for r in report["runs"]]


def sequential(repo: Path, rounds: int, out: Path) -> list[ab.Run]:
    """Base ``rounds`` times, then base again ``rounds`` times (as "candidate"), in two worktrees."""
    commit = ab.resolve(repo, "base")
    with ab.worktrees(repo, {"base": commit, "candidate": commit}) as trees:
        runs = [ab.run_once(COMMAND, side, n, trees[side], out) for side in ab.SIDES for n in range(1, rounds + 1)]
    (out / "ab.json").write_text(json.dumps({"runs": [vars(r) | {"json": str(r.json)} for r in runs]}) + "\n")
    return runs


def read_runs(folder: Path) -> list[ab.Run]:
    """The runs of one experiment, from its ab.json (or, lacking one, its files: no fixed-work times)."""
    if (folder / "ab.json").is_file():
        return [ab.Run(r["round"], r["side"], Path(r["json"]), r["seconds"], r["fixed_work_s"])
                for r in json.loads((folder / "ab.json").read_text())["runs"]]
    return [ab.Run(int(p.name[1:3]), p.stem.split("-", 1)[1], p, 0.0) for p in sorted((folder / "runs").glob("*.json"))]


def repetition(repo: Path, rounds: int, out: Path, index: int) -> dict[str, Any]:
    """One repetition: A/A and +10 % interleaved, sequential A/A, and (every other one) +20 %; order rotated."""
    steps = [("interleaved A/A", lambda o: interleaved(repo, "base", rounds, o)),
             ("interleaved +10%", lambda o: interleaved(repo, "s10", rounds, o)),
             ("sequential A/A", lambda o: sequential(repo, rounds, o))]
    if index % 2 == 0:
        steps.append(("interleaved +20%", lambda o: interleaved(repo, "s20", rounds, o)))
    steps = steps[index % len(steps):] + steps[:index % len(steps)]
    return judge_all({name: step(folder(out, index, name)) for name, step in steps}, out)


def folder(out: Path, index: int, experiment: str) -> Path:
    return out / f"rep{index:02d}-{experiment.replace(' ', '-').replace('/', '')}"


def judge_all(runs: dict[str, list[ab.Run]], out: Path) -> dict[str, Any]:
    """Every experiment's verdicts, plus the sequential A/A's first run of each side alone."""
    results = {name: judge(r, out) for name, r in runs.items()}
    results["sequential A/A, 1 run each"] = judge([r for r in runs["sequential A/A"] if r.round == 1], out)
    return results


def reanalyse(out: Path) -> list[dict[str, Any]]:
    """Judge the runs an earlier invocation left in ``out`` again (e.g. after adding a gate)."""
    results = []
    for index in range(len(list(out.glob("rep*-sequential-AA")))):
        runs = {name: read_runs(folder(out, index, name)) for name in EXPERIMENTS[:4]
                if folder(out, index, name).is_dir()}
        results.append(judge_all(runs, out))
    return results


def tables(results: list[dict[str, Any]]) -> str:
    """Markdown: how often each gate fired per experiment; the spread of the measured sha256 change."""
    lines = ["| experiment | " + " | ".join(GATES) + " |", "| --- |" + " --- |" * len(GATES)]
    for name in EXPERIMENTS:
        mine = [r[name] for r in results if name in r]
        fired = [f"{sum(r[gate]['regressed'] for r in mine)}/{len(mine)}" if gate in mine[0] else "" for gate in GATES]
        lines.append(f"| {name} | " + " | ".join(fired) + " |")
    gates = list(GATES)[::2]
    lines += ["", "| experiment | " + " | ".join(f"{g.split()[0]}: sha256, blake2b change, median (min to max)"
                                                 for g in gates) + " |", "| --- |" + " --- |" * len(gates)]
    for name in EXPERIMENTS:
        mine = [r[name] for r in results if name in r]
        cells = []
        for gate in gates:
            spans = []
            for bench in ("test_sha256", "test_blake2b"):
                if gate not in mine[0]:
                    continue
                changes = [r[gate]["ratios"][bench] - 1 for r in mine]
                spans.append(f"{statistics.median(changes):+.1%} ({min(changes):+.1%} to {max(changes):+.1%})")
            cells.append("; ".join(spans))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cpu_model() -> str:
    text = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Model name")), "?")
    return f"{model}, {os.cpu_count()} CPUs"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repetitions", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2, help="runs per side per experiment (ABBA rounds)")
    parser.add_argument("--out", type=Path, default=Path("runs/ab-evidence"))
    parser.add_argument("--seed", type=int, default=0, help="seed of the background load's on/off periods")
    parser.add_argument("--periods", default="0.5,3", help="LOW,HIGH: seconds of each on and off period (uniform)")
    parser.add_argument("--reanalyse", action="store_true", help="judge the runs already in --out again")
    args = parser.parse_args()
    if args.reanalyse:
        print(tables(reanalyse(args.out)))
        return 0
    out = args.out.resolve()
    out.mkdir(parents=True)  # a fresh folder: no stale runs
    started, load_before = time.monotonic(), os.getloadavg()
    load = subprocess.Popen([sys.executable, "-c", LOAD, str(args.seed), *args.periods.split(",")])
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="ab-evidence-") as folder:
            repo = make_repo(Path(folder))
            for i in range(args.repetitions):
                results.append(repetition(repo, args.rounds, out, i) | {"load_average": os.getloadavg()})
                (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
                elapsed = time.monotonic() - started
                print(f"repetition {i + 1}/{args.repetitions}: {elapsed:.0f} s, about "
                      f"{elapsed / (i + 1) * (args.repetitions - i - 1):.0f} s left", file=sys.stderr, flush=True)
    finally:
        load.kill()
        load.wait()
    info = {"cpu": cpu_model(), "repetitions": args.repetitions, "rounds": args.rounds, "seed": args.seed,
            "periods_s": args.periods,
            "load_average_before": load_before, "load_average_after": os.getloadavg(),
            "wall_s": time.monotonic() - started}
    (out / "summary.json").write_text(json.dumps({"info": info, "results": results}, indent=2) + "\n")
    print(json.dumps(info))
    print(tables(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
