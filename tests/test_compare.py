"""``harness compare``: pairing, the significance + effect-size verdicts, exit codes and input errors.

Harness output directories are written with the real result store; pytest-benchmark files come
from a real pytest-benchmark run in a subprocess.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest

from harness import cli, compare
from harness.api import CellSpec, EpochRecord, Recipe
from harness.results import ResultWarning
from harness.store import CellStore

ENV = {"hostname": "ci-1", "cpu_model": "Test CPU", "torch": "2.4.0", "git_commit": "abc"}


def cell(model: str = "resnet18", backend: str = "torch") -> CellSpec:
    cell_id = f"{model}-torchvision-{backend}-fp32"
    return CellSpec(id=cell_id, suite="t", model=model, loader="torchvision", backend=backend, precision="fp32",
                    loader_plugin="torchvision", backend_plugin=backend, epochs=6, image_size=32, data="/d", seed=0,
                    recipe=Recipe())


def write_cell(out: Path, spec: CellSpec, throughput: float, *, epochs: int = 6, noise: float = 0.02,
               seed: int = 0, env: dict | None = None, status: str = "ok", reason: str | None = None) -> None:
    """A cell as the engine writes it: epochs whose throughput is ``throughput`` +- ``noise`` (epoch 1 slow)."""
    store, rng = CellStore(out, spec.id), random.Random(seed)
    for epoch in range(1, epochs + 1 if status == "ok" else 1):
        tput = throughput * (1 + rng.uniform(-noise, noise)) * (0.5 if epoch == 1 else 1.0)
        time_s = 1000 / tput
        store.append_epoch(spec, env or ENV, EpochRecord(
            epoch=epoch, train_loss=1.0, train_acc=0.5, val_loss=1.0, val_acc=0.5, lr=0.1, epoch_time_s=time_s,
            train_time_s=time_s, throughput_img_s=tput, data_wait_s=0.0, peak_mem_gb=1.0, optimizer_steps=10,
            train_images=1000, wall_time_s=time_s * epoch))
    store.write_result(spec, env or ENV, status, reason, {"epochs": epochs})


def run(*argv: str | Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = compare.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def verdicts(stdout: str) -> dict[str, str]:
    """benchmark key -> verdict, parsed from the printed table (the lines before the summary)."""
    found = {}
    for line in stdout.split("\n\n")[0].splitlines()[1:]:
        words = line.split()
        found[words[0]] = next(w for w in words if w in compare.VERDICTS)
    return found



# ---------------------------------------------------------------- harness output directories


def test_regression_improvement_and_noise_in_harness_dirs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base, cand = tmp_path / "base", tmp_path / "cand"
    for i, (model, factor) in enumerate([("slow", 1 / 1.25), ("fast", 1.30), ("same", 1.0), ("bit", 1 / 1.05)]):
        write_cell(base, cell(model), 100.0, seed=i)
        write_cell(cand, cell(model), 100.0 * factor, seed=i + 10)
    code, out, _ = run(base, cand, capsys=capsys)
    got = verdicts(out)
    assert code == 1
    assert got["slow-torchvision-torch-fp32/throughput_img_s"] == "regressed"
    assert got["slow-torchvision-torch-fp32/epoch_time_s"] == "regressed"
    assert got["fast-torchvision-torch-fp32/throughput_img_s"] == "improved"
    assert got["same-torchvision-torch-fp32/throughput_img_s"] == "unchanged"
    assert got["bit-torchvision-torch-fp32/epoch_time_s"] == "unchanged"  # 5 % < the 10 % threshold
    order = [k.split("-")[0] for k in got if k.endswith("/epoch_time_s")]  # worst first
    assert order == ["slow", "same", "bit", "fast"] or order == ["slow", "bit", "same", "fast"]
    assert "2 regressed, 2 improved" in out


def test_warmup_epoch_is_dropped(tmp_path: Path) -> None:
    write_cell(tmp_path, cell(), 100.0, epochs=4)
    side = compare.load_side(tmp_path)
    series = side.series["resnet18-torchvision-torch-fp32/throughput_img_s"]
    assert len(series.samples) == 3 and min(series.samples) > 90  # epoch 1 (half speed) left out
    kept = compare.load_side(tmp_path, compare.Options(keep_warmup=True))
    assert len(kept.series["resnet18-torchvision-torch-fp32/throughput_img_s"].samples) == 4


def test_too_few_samples_is_unchanged_even_for_a_big_change(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_cell(tmp_path / "a", cell(), 100.0, epochs=4)  # 3 samples after the warm-up epoch
    write_cell(tmp_path / "b", cell(), 50.0, epochs=4)
    code, out, _ = run(tmp_path / "a", tmp_path / "b", capsys=capsys)
    assert code == 0
    assert "too few samples" in out and "regressed" not in verdicts(out).values()


def test_new_missing_and_failed_cells(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base, cand = tmp_path / "base", tmp_path / "cand"
    write_cell(base, cell("kept"), 100.0)
    write_cell(cand, cell("kept"), 100.0, seed=1)
    write_cell(base, cell("gone"), 100.0)
    write_cell(base, cell("broke"), 100.0)
    write_cell(cand, cell("broke"), 100.0, status="failed", reason="CUDA out of memory")
    write_cell(cand, cell("added"), 100.0)
    code, out, _ = run(base, cand, capsys=capsys)
    got = verdicts(out)
    assert code == 0
    assert got["gone-torchvision-torch-fp32/throughput_img_s"] == "missing"
    assert got["broke-torchvision-torch-fp32/throughput_img_s"] == "missing"
    assert got["added-torchvision-torch-fp32/throughput_img_s"] == "new"
    assert "candidate: failed: CUDA out of memory" in out
    assert run(base, cand, "--fail-on-missing", capsys=capsys)[0] == 1


def test_per_benchmark_threshold_and_direction(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base, cand = tmp_path / "base", tmp_path / "cand"
    write_cell(base, cell("loose"), 100.0)
    write_cell(cand, cell("loose"), 80.0, seed=1)
    assert run(base, cand, capsys=capsys)[0] == 1
    code, out, _ = run(base, cand, "--threshold-for", "loose-*=30%", capsys=capsys)
    assert code == 0 and "30%" in out
    code, out, _ = run(base, cand, "--lower-is-better", "throughput_img_s", "--metric", "throughput_img_s",
                       capsys=capsys)
    assert code == 0 and verdicts(out) == {"loose-torchvision-torch-fp32/throughput_img_s": "improved"}
    code, out, _ = run(base, cand, "--select", "*/epoch_time_s", capsys=capsys)
    assert code == 1 and list(verdicts(out)) == ["loose-torchvision-torch-fp32/epoch_time_s"]


def test_environment_difference_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_cell(tmp_path / "a", cell(), 100.0)
    write_cell(tmp_path / "b", cell(), 100.0, env={**ENV, "hostname": "ci-2", "torch": "2.5.0", "git_commit": "def"})
    code, _, err = run(tmp_path / "a", tmp_path / "b", capsys=capsys)
    assert code == 0
    assert "different machines" in err and "hostname: ci-1 -> ci-2" in err and "torch: 2.4.0 -> 2.5.0" in err
    assert "git_commit" not in err  # expected to differ between a baseline and a candidate
    _, _, err = run(tmp_path / "a", tmp_path / "a", capsys=capsys)
    assert err == ""


def test_json_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--json``: the comparison as JSON alone on stdout; the table, summary and warnings on stderr."""
    write_cell(tmp_path / "a", cell(), 100.0)
    write_cell(tmp_path / "b", cell(), 70.0, seed=3, env={**ENV, "torch": "2.5.0"})
    code, out, err = run(tmp_path / "a", tmp_path / "b", "--json", capsys=capsys)
    data = json.loads(out)
    assert code == 1 and data["summary"]["regressed"] == 2
    row = next(r for r in data["rows"] if r["metric"] == "throughput_img_s")
    assert row["better"] == "higher" and row["ratio"] == pytest.approx(0.7, abs=0.03) and row["p_value"] < 0.05
    assert data["env_differences"] == [{"key": "torch", "baseline": "2.4.0", "candidate": "2.5.0"}]
    assert "2 regressed" in err and "throughput_img_s" in err and "torch: 2.4.0 -> 2.5.0" in err


def test_quiet_keeps_warnings_and_verbose_shows_what_was_read(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Through ``harness -q`` / ``-v``: the environment warning stays under -q; -v adds what each side holds."""
    write_cell(tmp_path / "a", cell(), 100.0)
    write_cell(tmp_path / "b", cell(), 100.0, env={**ENV, "torch": "2.5.0"})
    read = f"harness: {tmp_path / 'a'}: harness, 2 series"
    for flags, shown in (["-q"], False), ([], False), (["-v"], True):
        assert cli.main([*flags, "compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
        out = capsys.readouterr()
        assert "harness: warning:   torch: 2.4.0 -> 2.5.0" in out.err and "unchanged" in out.out
        assert (read in out.err) == shown, out.err


# ---------------------------------------------------------------- bad input: exit 2 and a message naming the culprit


def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_cell(tmp_path / "a", cell(), 100.0)
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"benchmarks": [{"fullname": "t.py::x", "stats": {"mean": 1.0}}]}))
    cases = [
        ((tmp_path / "nope", tmp_path / "a"), "nope: no such file or directory"),
        ((tmp_path / "a", tmp_path / "a", "--threshold", "15"), "write 15% or 0.15"),
        ((tmp_path / "a", tmp_path / "a", "--threshold-for", "x"), "expected PATTERN=PERCENT"),
        ((tmp_path / "a", bench), "no raw timings in stats.data"),
        ((tmp_path / "empty", tmp_path / "a"), "empty: no results found"),
        ((tmp_path / "a", tmp_path / "a", "--allow-different", "seed"), "--allow-different 'seed': not a compared"),
    ]
    (tmp_path / "empty").mkdir()
    for argv, message in cases:
        code, _, err = run(*argv, capsys=capsys)
        assert code == 2 and message in err, (argv, err)


def test_corrupt_epochs_line_is_skipped_loudly_and_a_newer_schema_refused(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    write_cell(tmp_path / "a", cell(), 100.0)
    epochs = tmp_path / "a" / "cells" / cell().id / "epochs.jsonl"
    lines = epochs.read_text().splitlines()
    epochs.write_text("\n".join([lines[0], "{not json", *lines[1:]]) + "\n")
    with pytest.warns(ResultWarning, match=re.escape(f"{epochs}:2: not valid JSON")):
        code, _, _ = run(tmp_path / "a", tmp_path / "a", capsys=capsys)
        side = compare.load_side(tmp_path / "a")
    assert code == 0  # every other epoch is still compared
    assert len(side.series[f"{cell().id}/throughput_img_s"].samples) == 5  # 6 epochs, the warm-up one dropped
    epochs.write_text("\n".join([*lines[:-1], '{"torn']))  # a torn last line is a killed writer
    with pytest.warns(ResultWarning, match=re.escape(f"{epochs}:6: torn last line")):
        assert run(tmp_path / "a", tmp_path / "a", capsys=capsys)[0] == 0
    epochs.write_text("\n".join(lines).replace('"schema_version": 1', '"schema_version": 2') + "\n")
    code, _, err = run(tmp_path / "a", tmp_path / "a", capsys=capsys)
    assert code == 2 and f"{epochs}:1: schema_version 2 is newer than this harness reads (1)" in err


def test_argparse_errors_exit_2(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        compare.main([str(tmp_path)])
    assert exc.value.code == 2


def test_min_p_value() -> None:
    assert compare.min_p_value(3, 3) == pytest.approx(0.1)
    assert compare.min_p_value(4, 4) == pytest.approx(2 / 70)
    assert compare.parse_fraction("10%") == pytest.approx(0.1) and compare.parse_fraction("0.25") == 0.25


# ---------------------------------------------------------------- real pytest-benchmark JSON files

BENCH_MODULE = """
import os

WORK = int(os.environ["WORK"])


def spin(n):
    total = 0
    for i in range(n):
        total += i * i
    return total


def test_spin(benchmark):
    benchmark.extra_info["work"] = WORK
    benchmark.pedantic(spin, args=(WORK,), rounds=15, iterations=1, warmup_rounds=1)


def test_fixed(benchmark):
    benchmark.pedantic(spin, args=(20_000,), rounds=15, iterations=1)


def test_ratio(benchmark):
    benchmark.extra_info["samples"] = {"spin_per_s": [WORK / 1e3, WORK / 1e3 + 1, WORK / 1e3 + 2, WORK / 1e3 + 3]}
    benchmark.pedantic(spin, args=(1000,), rounds=5, iterations=1)
"""


@pytest.fixture(scope="module")
def bench_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real pytest-benchmark JSON files: the same benchmarks with 1x and 3x the work in ``test_spin``."""
    root = tmp_path_factory.mktemp("bench")
    (root / "test_work.py").write_text(textwrap.dedent(BENCH_MODULE))
    files = {}
    for name, work in (("base", 20_000), ("slow", 60_000)):
        files[name] = root / f"{name}.json"
        subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_work.py",
             f"--benchmark-json={files[name]}"],
            cwd=root, check=True, capture_output=True, env={**os.environ, "WORK": str(work)}, timeout=120,
        )
    return files


def test_real_pytest_benchmark_json(bench_files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(bench_files["base"], bench_files["slow"], "--select", "test_work.py::test_spin", capsys=capsys)
    assert code == 1, out
    assert "test_work.py::test_spin" in out and "regressed" in out and err == ""
    code, out, _ = run(bench_files["slow"], bench_files["base"], "--select", "*test_spin", capsys=capsys)
    assert code == 0 and "improved" in out
    code, out, _ = run(bench_files["base"], bench_files["base"], capsys=capsys)  # A/A on identical files
    assert code == 0 and set(verdicts(out).values()) == {"unchanged"}


def test_real_pytest_benchmark_json_extra_samples(bench_files: dict[str, Path]) -> None:
    side = compare.load_side(bench_files["slow"])
    ratio = side.series["test_work.py::test_ratio/spin_per_s"]
    assert ratio.higher_is_better and ratio.samples == [60.0, 61.0, 62.0, 63.0]
    spin = side.series["test_work.py::test_spin"]
    assert spin.metric == "time_s" and not spin.higher_is_better and len(spin.samples) == 15
    base = compare.load_side(bench_files["base"])
    rows = {r.key: r for r in compare.compare_sides(base, side, compare.Options())}
    assert rows["test_work.py::test_ratio/spin_per_s"].verdict == "improved"  # 20 -> 60, higher is better
    assert rows["test_work.py::test_spin"].ratio > 2


def test_mixed_inputs_are_a_usage_error(bench_files: dict[str, Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    write_cell(tmp_path, cell(), 100.0)
    code, _, err = run(tmp_path, bench_files["base"], capsys=capsys)
    assert code == 2 and "cannot compare a harness input" in err


# ---------------------------------------------------------------- the gate on the real training-step benchmark

REPO = Path(__file__).resolve().parent.parent


def _train_step_json(path: Path, slowdown: float) -> Path:
    """Run benchmarks/test_train_step.py (torch fp32, a tiny timm model) in a subprocess; return its JSON."""
    env = {**os.environ, "HARNESS_BENCH_MODEL": "test_resnet", "HARNESS_BENCH_STEPS": "20",
           "HARNESS_BENCH_ROUNDS": "10", "HARNESS_BENCH_SLOWDOWN": str(slowdown), "HARNESS_BENCH_THREADS": "1"}
    subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "benchmarks/test_train_step.py",
         "-k", "torch-fp32", "-W", "ignore::UserWarning", f"--benchmark-json={path}"],
        cwd=REPO, check=True, capture_output=True, env=env, timeout=600,
    )
    return path


@pytest.mark.slow
@pytest.mark.quiet
def test_gate_ignores_a_a_and_5_percent_and_catches_20_percent(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """The CI gate (``--select time_vs_reference``, default 10 % threshold) on real benchmark runs."""
    runs = {name: _train_step_json(tmp_path / f"{name}.json", slowdown)
            for name, slowdown in (("a", 0.0), ("a2", 0.0), ("slow20", 0.2), ("slow5", 0.05))}
    gate = ("--select", "time_vs_reference")
    key = "benchmarks/test_train_step.py::test_train_step[torch-fp32]/time_vs_reference"
    code, out, _ = run(runs["a"], runs["a2"], *gate, capsys=capsys)
    assert code == 0 and verdicts(out) == {key: "unchanged"}, out
    code, out, _ = run(runs["a"], runs["slow20"], *gate, capsys=capsys)
    assert code == 1 and verdicts(out) == {key: "regressed"}, out
    code, out, _ = run(runs["a"], runs["slow5"], *gate, capsys=capsys)
    assert code == 0 and verdicts(out) == {key: "unchanged"}, out


# ---------------------------------------------------------------- like with like, big files, non-finite values


def write_many_epochs(out: Path, spec: CellSpec, count: int, env: dict | None = None) -> Path:
    """A cell whose ``epochs.jsonl`` has ``count`` records, each a line as the store writes it (cell and
    environment included, ~1.5 kB), throughput varying by a few percent; returns the file."""
    store = CellStore(out, spec.id)
    record = EpochRecord(epoch=1, train_loss=1.0, train_acc=0.5, val_loss=1.0, val_acc=0.5, lr=0.1, epoch_time_s=10.0,
                         train_time_s=9.0, throughput_img_s=100.0, data_wait_s=0.0, peak_mem_gb=1.0,
                         optimizer_steps=10, train_images=1000, wall_time_s=10.0)
    store.append_epoch(spec, env or ENV, record)
    head, tail = store.epochs_path.read_text().split('"epoch": 1, ', 1)
    before, after = tail.split('"throughput_img_s": 100.0', 1)
    with store.epochs_path.open("w") as fh:
        fh.writelines(f'{head}"epoch": {e}, {before}"throughput_img_s": {100 + e % 7}{after}'
                      for e in range(1, count + 1))
    store.write_result(spec, env or ENV, "ok", None, {"epochs": count})
    return store.epochs_path


def test_paired_cells_with_other_settings_are_refused_naming_the_fields(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    base, cand = tmp_path / "base", tmp_path / "cand"
    write_cell(base, cell(), 100.0)
    other = replace(cell(), image_size=224, recipe=Recipe(batch_size=16), data="/elsewhere")
    write_cell(cand, other, 50.0, seed=1)
    code, out, err = run(base, cand, capsys=capsys)
    assert code == 2 and out == ""
    assert (f"{cell().id}: image_size 32 -> 224, recipe.batch_size 128 -> 16, data '/d' -> '/elsewhere'" in err
            and "--allow-different data --allow-different image_size --allow-different recipe.batch_size" in err)
    code, out, _ = run(base, cand, "--allow-different", "image_size", "--allow-different", "recipe",
                       "--allow-different", "data", capsys=capsys)
    assert code == 1 and verdicts(out)[f"{cell().id}/throughput_img_s"] == "regressed"
    assert "settings differ (allowed): image_size 32 -> 224, recipe.batch_size 128 -> 16" in out
    write_cell(tmp_path / "suite", replace(cell(), suite="other"), 100.0)  # another suite, same cell id
    code, _, err = run(base, tmp_path / "suite", "--allow-different", "image_size", capsys=capsys)
    assert code == 2 and "suite 't' -> 'other'" in err and "image_size" not in err


def test_a_folder_of_result_directories_is_read_as_the_report_reads_it(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    write_cell(tmp_path / "runs" / "a", cell(), 100.0)
    write_cell(tmp_path / "runs" / "b", cell("other"), 100.0)
    write_cell(tmp_path / "cand", cell(), 100.0, seed=2)
    side = compare.load_side(tmp_path / "runs")
    assert {s.id for s in side.series.values()} == {cell().id, cell("other").id}
    code, out, _ = run(tmp_path / "runs", tmp_path / "cand", capsys=capsys)
    assert code == 0 and verdicts(out)[f"{cell('other').id}/throughput_img_s"] == "missing"


def test_epoch_files_are_read_in_linear_time(tmp_path: Path) -> None:
    """10,000 epochs (15 MB): a min() per row made this 5 * 10**7 steps (minutes on a loaded machine); streamed,
    it is well under a second. The figure for 200 MB is in docs/results.md."""
    write_many_epochs(tmp_path, cell(), 10_000)
    start = time.perf_counter()
    side = compare.load_side(tmp_path)
    assert time.perf_counter() - start < 10
    samples = side.series[f"{cell().id}/throughput_img_s"].samples
    assert len(samples) == 9_999 and samples[:3] == [102, 103, 104]  # epoch 1 left out as warm-up


def test_non_finite_values_are_missing_samples_with_a_warning(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    base, cand = tmp_path / "base", tmp_path / "cand"
    write_cell(base, cell(), 100.0, epochs=8)
    write_cell(cand, cell(), 100.0, epochs=8, seed=1)
    epochs = cand / "cells" / cell().id / "epochs.jsonl"
    lines = [json.loads(line) for line in epochs.read_text().splitlines()]
    lines[2]["throughput_img_s"], lines[3]["throughput_img_s"] = math.nan, math.inf  # json writes NaN, Infinity
    epochs.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.warns(ResultWarning) as caught:
        code, out, _ = run(base, cand, capsys=capsys)
    assert [str(w.message) for w in caught] == [
        f"{epochs}:3: field 'throughput_img_s' is not finite (NaN or inf) (and 1 more line(s)); read as empty",
        f"{epochs}: field 'throughput_img_s' missing or not a finite number in 2 of 7 epoch(s); those samples skipped"]
    assert code == 0 and "7/5" in out and "inf" not in out and "nan" not in out  # 7 timed epochs, 2 not finite
    for line in lines:  # finite values whose median overflows (the mean of the middle two is inf)
        line["throughput_img_s"] = 1.7e308
    epochs.write_text("".join(json.dumps(line) + "\n" for line in lines[:-1]))
    code, out, _ = run(base, cand, capsys=capsys)
    assert code == 0 and "inf" not in out and max(len(line) for line in out.splitlines()) < 250
    assert verdicts(out)[f"{cell().id}/throughput_img_s"] == "unchanged" and "out of range" in out


def test_the_cpu_model_has_one_name_on_both_kinds_of_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """pytest-benchmark's ``machine_info.cpu.brand_raw`` (and ``node``) read as the fingerprint's ``cpu_model``
    (and ``hostname``), so a CPU change is named alike whichever kind of input shows it."""
    def bench(path: Path, cpu: str, node: str) -> Path:
        path.write_text(json.dumps({"machine_info": {"node": node, "cpu": {"brand_raw": cpu, "count": 2}},
                                    "benchmarks": [{"fullname": "t.py::x", "stats": {"data": [1.0, 1.1, 0.9]}}]}))
        return path

    code, _, err = run(bench(tmp_path / "a.json", "AMD EPYC", "ci-1"), bench(tmp_path / "b.json", "Intel Xeon", "ci-2"),
                       capsys=capsys)
    assert code == 0 and "different machines" in err
    assert "cpu_model: AMD EPYC -> Intel Xeon" in err and "hostname: ci-1 -> ci-2" in err and "brand_raw" not in err
    write_cell(tmp_path / "h1", cell(), 100.0)
    write_cell(tmp_path / "h2", cell(), 100.0, env={**ENV, "cpu_model": "Intel Xeon"})
    assert "cpu_model: Test CPU -> Intel Xeon" in run(tmp_path / "h1", tmp_path / "h2", capsys=capsys)[2]
