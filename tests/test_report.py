"""Golden tests of the report: synthetic result directories from a "Tesla T4" and a "Tesla P40"."""

from __future__ import annotations

import html
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from report_fixtures import (
    COLOSSALAI_MISSING,
    DALI_MISSING,
    TRAIN_IMAGES,
    make_cell,
    make_env,
    make_epochs,
    matrix_results,
    t4_p40_results,
    write_cell,
)

from harness.api import Recipe
from harness.devices import match_device
from harness.report import ReportError, build_report, console_table, write_report
from harness.report.aggregate import SUMMARY_COLUMNS, aggregate, interval
from harness.report.compare_devices import compare
from harness.report.decision import accuracy_step
from harness.report.load import load_results
from harness.report.mfu import mfu, peak_flops
from harness.report.plots import styles
from harness.report.render import (
    Report,
    comparison_note,
    comparison_table,
    count,
    leaderboard,
    num,
    plural,
    results_table,
    skipped_table,
    to_markdown,
    with_interval,
)
from harness.report.summary import RUN_COLUMNS, derived_warnings, device_short, installed, summarize
from harness.results import ResultWarning

REPO = Path(__file__).resolve().parents[1]
FP16 = ("flowers", "vit_tiny_patch16_224", "", "torchvision", "torch", "fp16", "default")  # "": no recipe axis
FP32 = (*FP16[:5], "fp32", "default")
BF16 = (*FP16[:5], "bf16", "default")
CHROMIUM = "/usr/bin/chromium"
T95 = {2: 12.706204736, 3: 4.302652730}  # Student t, two-sided 95 %, by sample size


@pytest.fixture
def two_machines(tmp_path: Path) -> tuple[Path, Path]:
    return t4_p40_results(tmp_path / "results")


def _row(summary: pd.DataFrame, precision: str, device: str) -> pd.Series:
    rows = summary[(summary["precision"] == precision) & (summary["device"] == device)]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def _summary(dirs: list[Path] | tuple[Path, ...], target_acc: float | None = None) -> pd.DataFrame:
    return aggregate(summarize(load_results(dirs), target_acc))


def test_merge_two_machines(two_machines: tuple[Path, Path]) -> None:
    results = load_results(two_machines)
    assert len(results.cells) == 5
    assert sorted(results.cells["status"]) == ["ok", "ok", "ok", "ok", "skipped"]
    assert len(results.epochs) == 4 + 4 + 3 + 3
    runs = summarize(results)
    assert set(runs["device"]) == {"Tesla T4", "Tesla P40"}
    assert set(runs["device_short"]) == {"T4", "P40"}
    assert set(runs["environment"]) == {"default"}  # no environment name recorded
    # The same directory twice (or a parent and its child) is read once.
    assert len(load_results([*two_machines, two_machines[0]]).cells) == 5
    assert len(load_results([two_machines[0].parent]).cells) == 5
    assert len(aggregate(runs)) == 5


def test_summary_golden_values(two_machines: tuple[Path, Path]) -> None:
    runs = summarize(load_results(two_machines), target_acc=0.6)
    assert list(runs.columns[: len(RUN_COLUMNS)]) == RUN_COLUMNS
    t4 = _row(runs, "fp16", "Tesla T4")
    assert t4["epochs"] == 4 and t4["timed_epochs"] == 3
    assert t4["epoch_time_s"] == pytest.approx(21.0)  # median of 20, 22, 21 (first epoch excluded)
    assert t4["throughput_img_s"] == pytest.approx(200.0)  # 3 x 2936 images / (3 x 14.68 s)
    assert t4["best_val_acc"] == pytest.approx(0.62)
    assert t4["best_epoch"] == 3
    assert t4["time_to_acc_s"] == pytest.approx(30 + 20 + 22)  # wall time at the end of epoch 3
    assert t4["peak_mem_gb"] == pytest.approx(2.54)
    assert t4["optimizer_steps_per_epoch"] == 23
    assert t4["data_wait_pct"] == pytest.approx(10.0)
    assert t4["warnings"] == ""
    p40 = _row(runs, "fp16", "Tesla P40")
    assert p40["throughput_img_s"] == pytest.approx(100.0)
    assert p40["epoch_time_s"] == pytest.approx(40.0)
    assert math.isnan(p40["time_to_acc_s"])  # best 59 %: never reached 60 %
    assert "fp16 on Tesla P40 (sm_61) has no fast fp16 arithmetic" in p40["warnings"]
    assert p40["precision_support"] == "emulated" and t4["precision_support"] == "native"
    fp32 = _row(runs, "fp32", "Tesla T4")
    assert fp32["throughput_img_s"] == pytest.approx(2 * TRAIN_IMAGES / 97)
    assert "only 1 optimizer step(s) per epoch" in fp32["warnings"]
    skipped = _row(runs, "bf16", "Tesla P40")
    assert skipped["status"] == "skipped"
    assert skipped["reason"].startswith("bf16 needs compute capability")
    assert skipped["epochs"] == 0
    assert math.isnan(skipped["throughput_img_s"])
    # One run per cell: the summary has means and no interval.
    row = _row(aggregate(runs), "fp16", "Tesla T4")
    assert (row["runs"], row["seeds"], row["throughput_img_s"]) == (1, "0", pytest.approx(200.0))
    assert math.isnan(row["throughput_ci95_low"]) and math.isnan(row["throughput_ci95_high"])


def _repeats(root: Path, throughputs: list[float], accs: list[float], device: str = "Tesla T4") -> None:
    """One fp16 cell run once per seed, each at its own steady throughput and best accuracy."""
    for seed, (speed, acc) in enumerate(zip(throughputs, accs, strict=True)):
        cell = make_cell("fp16", seed=seed)
        cell = replace(cell, id=cell.id + (f"-r{seed + 1}" if seed else ""))
        train = TRAIN_IMAGES / speed
        epochs = make_epochs([30, train + 5, train + 5], [20, train, train], [0.3, acc, acc])
        write_cell(root, cell, make_env(device), epochs)


def test_repeats_are_aggregated_with_a_95_percent_interval(tmp_path: Path) -> None:
    _repeats(tmp_path, [200.0, 210.0, 190.0], [0.6, 0.625, 0.65])
    runs = summarize(load_results([tmp_path]), target_acc=0.6)
    assert sorted(runs["cell_id"]) == ["vit_tiny_patch16_224-torchvision-torch-fp16",
                                       "vit_tiny_patch16_224-torchvision-torch-fp16-r2",
                                       "vit_tiny_patch16_224-torchvision-torch-fp16-r3"]
    summary = aggregate(runs)
    assert len(summary) == 1
    row = summary.iloc[0]
    assert (row["runs"], row["seeds"], row["cell_id"]) == (3, "0 1 2", "vit_tiny_patch16_224-torchvision-torch-fp16")
    half = T95[3] * pd.Series([200.0, 210.0, 190.0]).std() / math.sqrt(3)
    assert row["throughput_img_s"] == pytest.approx(200.0)
    assert (row["throughput_ci95_low"], row["throughput_ci95_high"]) == (pytest.approx(200 - half),
                                                                         pytest.approx(200 + half))
    assert row["best_val_acc"] == pytest.approx(0.625)
    assert row["best_val_acc_ci95_high"] - row["best_val_acc"] == pytest.approx(T95[3] * 0.025 / math.sqrt(3))
    assert row["target_reached_runs"] == 3
    assert interval([1.0]) == (1.0, pytest.approx(math.nan, nan_ok=True), pytest.approx(math.nan, nan_ok=True))
    assert interval([1.0, 3.0])[1] == pytest.approx(2.0 - T95[2] * math.sqrt(2) / math.sqrt(2))


def test_repeat_runs_each_cell_with_consecutive_seeds(tmp_path: Path) -> None:
    from harness.plugins import get_manager
    from harness.suite import SuiteError, expand

    suite = tmp_path / "suite.toml"
    suite.write_text('name = "s"\nepochs = 1\nimage_size = 32\nseed = 5\nrepeat = 2\nrecipe = "seed"\n[matrix]\n'
                     'model = ["resnet10t"]\nloader = ["torchvision"]\nbackend = ["torch"]\n'
                     'precision = ["fp32", "bf16"]\n')
    manager = get_manager()
    cells = [(c.id, c.seed) for c in expand(suite, manager).cells]
    base = "resnet10t-torchvision-torch"
    assert cells == [(f"{base}-fp32", 5), (f"{base}-bf16", 5), (f"{base}-fp32-r2", 6), (f"{base}-bf16-r2", 6)]
    assert [c.id for c in expand(suite, manager, repeat=1).cells] == [f"{base}-fp32", f"{base}-bf16"]  # ids stable
    assert [c.seed for c in expand(suite, manager, repeat=3, seed=0).cells] == [0, 0, 1, 1, 2, 2]
    with pytest.raises(SuiteError, match="--repeat: expected a positive integer, got 0"):
        expand(suite, manager, repeat=0)


def test_an_ok_run_wins_over_a_not_installed_skip_of_the_same_cell(tmp_path: Path) -> None:
    cell = make_cell("fp32", backend="colossalai-ddp")
    epochs = make_epochs([30, 20, 20], [20, 14.68, 14.68], [0.3, 0.4, 0.5])
    main, colossal, unnamed = tmp_path / "main", tmp_path / "colossalai", tmp_path / "unnamed"
    write_cell(main, cell, make_env("Tesla T4"), [], status="skipped", reason=COLOSSALAI_MISSING,
               finished_at="2024-06-02T00:00:00+00:00")  # later than the ok run: still loses
    write_cell(colossal, cell, make_env("Tesla T4", environment="colossalai", torch="2.5.1"), epochs)
    write_cell(unnamed, cell, make_env("Tesla T4", torch="2.5.1"), epochs)
    for dirs in ([main, colossal], [colossal, main], [main, unnamed]):
        summary = _summary(dirs)
        assert list(summary["status"]) == ["ok"], dirs
        assert summary["warnings"].iloc[0] == ""  # a skip for missing software is no rerun
    # Skipped in both environments for software each lacks: one row per environment, each with its reason.
    dali = make_cell("fp32", loader="dali-file", backend="colossalai-ddp")
    write_cell(main, dali, make_env("Tesla T4"), [], status="skipped", reason=COLOSSALAI_MISSING)
    write_cell(colossal, dali, make_env("Tesla T4", environment="colossalai"), [], status="skipped",
               reason=DALI_MISSING)
    skipped = _summary([main, colossal]).query("loader == 'dali-file'")
    found = sorted(zip(skipped["environment"], skipped["reason"], strict=True))
    assert found == [("colossalai", DALI_MISSING), ("default", COLOSSALAI_MISSING)]
    # A skip for another reason (a real limitation) is kept beside a run elsewhere.
    refused = make_cell("fp16", backend="colossalai-ddp")
    write_cell(main, refused, make_env("Tesla T4"), [], status="skipped", reason="fp16 needs CUDA")
    write_cell(colossal, refused, make_env("Tesla T4", environment="colossalai"), epochs)
    assert len(_summary([main, colossal]).query("precision == 'fp16'")) == 2


def test_the_engines_step_warning_is_not_repeated_by_the_report() -> None:
    cell, env, stats = {"precision": "fp32"}, {"device_type": "cpu"}, {"optimizer_steps_per_epoch": 5.0, "epochs": 2}
    assert derived_warnings(cell, env, stats) == ["only 5 optimizer step(s) per epoch"]  # e.g. older results
    engine = "only 5.0 optimizer steps per epoch (320 images / (batch 32 x 2 processes x accumulation 1))"
    assert derived_warnings(cell, env, stats, [engine]) == []


def test_mfu_from_device_peaks(two_machines: tuple[Path, Path]) -> None:
    summary = summarize(load_results(two_machines))
    # T4 fp16: tensor-core peak 65 TFLOP/s; P40 fp16: no fast fp16, so the fp32 peak (12 TFLOP/s) is the ceiling.
    assert _row(summary, "fp16", "Tesla T4")["mfu"] == pytest.approx(200 * 3.8e9 / 65e12)
    assert _row(summary, "fp16", "Tesla P40")["mfu"] == pytest.approx(100 * 3.8e9 / 12e12)
    assert _row(summary, "fp32", "Tesla T4")["mfu"] == pytest.approx(2 * TRAIN_IMAGES / 97 * 3.8e9 / 8.1e12)
    assert math.isnan(mfu(100.0, 3.8e9, None, "fp32"))  # CPU: unknown peak
    assert math.isnan(mfu(100.0, None, "Tesla T4", "fp16"))  # FLOPs not measured
    assert mfu(100.0, 3.8e9, "NVIDIA H100 80GB HBM3", "bf16", devices=2) == pytest.approx(100 * 3.8e9 / 2 / 989.5e12)


def test_precision_warnings_follow_the_hardware(tmp_path: Path) -> None:
    epochs = make_epochs([30, 20, 20], [20, 14.68, 14.68], [0.3, 0.4, 0.5])
    write_cell(tmp_path / "t4", make_cell("bf16"), make_env("Tesla T4"), epochs)
    write_cell(tmp_path / "h100", make_cell("bf16"), make_env("NVIDIA H100 80GB HBM3"), epochs)
    summary = summarize(load_results([tmp_path]))
    t4 = _row(summary, "bf16", "Tesla T4")
    assert t4["warnings"].startswith("bf16 on Tesla T4 (sm_75) is emulated: native bf16 needs compute capability 8.0+")
    assert t4["precision_support"] == "emulated"
    assert t4["mfu"] == pytest.approx(200 * 3.8e9 / 8.1e12)  # the fp32 rate is the ceiling
    h100 = _row(summary, "bf16", "NVIDIA H100 80GB HBM3")
    assert h100["warnings"] == ""
    assert h100["mfu"] == pytest.approx(200 * 3.8e9 / 989.5e12)


def test_pivot_values_and_ratios(two_machines: tuple[Path, Path]) -> None:
    comparison = compare(_summary(two_machines, target_acc=0.6), baseline="P40")
    assert comparison.groups == ["T4", "P40"]  # the order the directories were given
    assert comparison.baseline == "P40"
    table = comparison.table
    assert table.loc[FP16, ("T4", "throughput_img_s")] == pytest.approx(200.0)
    assert table.loc[FP16, ("P40", "throughput_img_s")] == pytest.approx(100.0)
    assert table.loc[FP16, ("T4 / P40", "throughput_img_s")] == pytest.approx(2.0)
    assert table.loc[FP16, ("T4", "epoch_time_s")] == pytest.approx(21.0)
    assert table.loc[FP16, ("P40", "epoch_time_s")] == pytest.approx(40.0)
    assert table.loc[FP16, ("T4", "time_to_acc_s")] == pytest.approx(72.0)
    assert pd.isna(table.loc[FP16, ("P40", "time_to_acc_s")])
    fp32_ratio = (2 * TRAIN_IMAGES / 97) / (2 * TRAIN_IMAGES / 115)
    assert table.loc[FP32, ("T4 / P40", "throughput_img_s")] == pytest.approx(fp32_ratio)
    assert table.loc[BF16, ("P40", "status")] == "skipped"
    assert pd.isna(table.loc[BF16, ("T4", "status")])
    # same environment and cell spec everywhere; P40 fp16 (no fast fp16) is flagged, never silently compared
    assert list(table[("check", "flags")]) == ["", "EMULATED precision on P40", ""]
    flat = comparison.flat()
    assert {"T4 throughput_img_s", "T4 / P40 throughput_img_s", "flags", "T4 time_to_acc_s"} <= set(flat.columns)
    assert "T4 time_to_acc_s" not in comparison.flat(target=False).columns
    first_given = compare(_summary(two_machines))  # no --baseline: the first directory's device
    assert first_given.baseline == "T4"
    assert first_given.table.loc[FP16, ("P40 / T4", "throughput_img_s")] == pytest.approx(0.5)
    assert compare(_summary(two_machines[::-1])).baseline == "P40"
    with pytest.raises(ReportError, match="--baseline 'V100' is not among the groups"):
        compare(_summary(two_machines), baseline="V100")


def test_mismatched_environments_are_flagged(tmp_path: Path) -> None:
    env = make_env("Tesla P40", torch="2.3.1", cuda_version="11.8", dali=None)
    dirs = t4_p40_results(tmp_path, p40_env=env, p40_epochs=3)
    table = compare(_summary(dirs)).table
    flags = table.loc[FP16, ("check", "flags")]
    assert "env torch 2.1.0 (T4) vs 2.3.1 (P40)" in flags
    assert "env cuda_version 12.1 (T4) vs 11.8 (P40)" in flags
    assert "env dali 1.34.0 (T4) vs not installed (P40)" in flags
    assert "spec epochs 4 (T4) vs 3 (P40)" in flags
    assert "spec epochs" not in table.loc[FP32, ("check", "flags")]  # the fp32 cells share their spec
    assert table.loc[BF16, ("check", "flags")] == ""  # one device only: nothing to compare
    assert table.loc[FP16, ("P40 / T4", "throughput_img_s")] == pytest.approx(0.5)  # shown, but flagged


def test_reruns_are_flagged_per_device(tmp_path: Path) -> None:
    t4, p40 = t4_p40_results(tmp_path / "a")
    rerun = tmp_path / "b"
    faster = make_epochs([30, 10, 10], [20, 7.34, 7.34], [0.3, 0.6, 0.7])
    write_cell(rerun / "t4", make_cell("fp16"), make_env("Tesla T4"), faster, finished_at="2024-06-01T00:00:00+00:00")
    write_cell(rerun / "p40", make_cell("fp16"), make_env("Tesla P40"), faster,
               finished_at="2024-06-01T00:00:00+00:00")
    comparison = compare(_summary([t4, p40, rerun]))
    assert comparison.table.loc[FP16, ("T4", "throughput_img_s")] == pytest.approx(400.0)  # the latest
    flags = comparison.table.loc[FP16, ("check", "flags")]
    assert "2 runs on T4 with seed 0: latest ok shown" in flags
    assert "2 runs on P40 with seed 0: latest ok shown" in flags


def test_runs_with_other_settings_are_other_rows_not_reruns(tmp_path: Path) -> None:
    epochs = make_epochs([30, 20, 20], [20, 14.68, 14.68], [0.3, 0.4, 0.5])
    write_cell(tmp_path / "short", make_cell("fp16", epochs=3), make_env("Tesla T4"), epochs)
    write_cell(tmp_path / "long", make_cell("fp16", epochs=50), make_env("Tesla T4"), epochs)
    report = build_report(load_results([tmp_path / "short", tmp_path / "long"]), ["short", "long"])
    assert len(report.summary) == 2 and report.summary["warnings"].eq("").all()
    assert sorted(results_table(report).frame["settings"]) == ["epochs 3", "epochs 50"]


def test_write_report_files_and_reference_row(two_machines: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "report"
    summary = write_report(list(two_machines), out, target_acc=0.6, baseline="P40")
    assert list(summary.columns) == SUMMARY_COLUMNS
    csv = pd.read_csv(out / "summary.csv")
    assert list(csv.columns) == SUMMARY_COLUMNS
    assert len(csv) == 5
    assert list(pd.read_csv(out / "runs.csv").columns) == RUN_COLUMNS
    assert sorted(p.name for p in (out / "plots").iterdir()) == [
        "throughput-vit_tiny_patch16_224.svg",
        "val_acc-vit_tiny_patch16_224-torch-P40.svg",
        "val_acc-vit_tiny_patch16_224-torch-T4.svg",
    ]
    assert all("<svg" in p.read_text()[:1000] for p in (out / "plots").iterdir())
    comparison = pd.read_csv(out / "comparison.csv")
    fp16 = comparison[comparison["precision"] == "fp16"].iloc[0]
    assert fp16["T4 / P40 throughput_img_s"] == pytest.approx(2.0)
    assert fp16["T4 time_to_acc_s"] == pytest.approx(72.0)
    assert len(pd.read_csv(out / "epochs.csv")) == 14
    # The published reference is its own, clearly marked section and never a measured row.
    assert "66.62" not in (out / "summary.csv").read_text()
    assert "Tutorial" not in (out / "comparison.csv").read_text()
    md = (out / "summary.md").read_text()
    sections = [line for line in md.splitlines() if line.startswith("## ")]
    assert sections == ["## Answer", "## Results: 4 cells that ran (4 runs)", "## Not run: 1 cell",
                        "## Comparison by device (ratios against P40)", "## Plots",
                        "## Published reference (not measured here)", "## Device facts"]
    measured, reference = md.split("## Published reference (not measured here)")
    assert "| Tutorial (published) | Tesla T4 | vit_tiny_patch16_224 | dali     | colossalai | fp16" in reference
    assert "66.6 " in reference and "&lt; 20" in reference  # escaped: a Markdown viewer shows "< 20"
    assert "Tutorial" not in measured and "66.6" not in measured
    assert "T4 / P40 throughput ratio" in md and "| 2.00x [2.00, 2.00]" in md  # 3 equal timed epochs each
    assert "time to 60 % (s)" in md
    assert "![vit_tiny_patch16_224: training throughput](plots/throughput-vit_tiny_patch16_224.svg)" in md
    page = (out / "report.html").read_text()
    assert '<section class="reference" id="published">' in page
    assert page.count("data:image/svg+xml;base64,") == 3
    assert 'src="plots/' not in page  # self-contained


def test_reference_row_only_for_the_tutorials_task(tmp_path: Path) -> None:
    epochs = make_epochs([3, 2, 2], [2, 1.468, 1.468], [0.3, 0.4, 0.5])
    write_cell(tmp_path / "smoke", make_cell("fp32", suite="flowers-smoke"), make_env("cpu"), epochs)
    write_cell(tmp_path / "other", make_cell("fp32", suite="synthetic"), make_env("cpu"), epochs)
    write_cell(tmp_path / "near", make_cell("fp32", suite="flowersynth"), make_env("cpu"), epochs)
    for folder, shown in (("smoke", True), ("other", False), ("near", False)):
        report = build_report(load_results([tmp_path / folder]), [folder])
        assert bool(report.references) is shown, folder


def test_formats_subset_and_bad_arguments(two_machines: tuple[Path, Path], tmp_path: Path) -> None:
    write_report(list(two_machines), tmp_path / "csv", formats=["csv"])
    assert sorted(p.name for p in (tmp_path / "csv").iterdir()) == ["comparison.csv", "epochs.csv", "runs.csv",
                                                                    "summary.csv"]
    with pytest.raises(ReportError, match="--format: unknown pdf"):
        write_report(list(two_machines), tmp_path / "x", formats=["pdf"])
    with pytest.raises(ReportError, match=re.escape("--target-acc 60.0: give a fraction")):
        write_report(list(two_machines), tmp_path / "x", target_acc=60.0)
    with pytest.raises(ReportError, match="--by 'gpu'"):
        write_report(list(two_machines), tmp_path / "x", by="gpu")


def test_group_by_host(two_machines: tuple[Path, Path]) -> None:
    comparison = compare(aggregate(summarize(load_results(two_machines)), ["host"]), by="host")
    assert comparison.groups == ["gn7-t4", "gn8-p40"]
    assert comparison.table.loc[FP16, ("gn8-p40 / gn7-t4", "throughput_img_s")] == pytest.approx(0.5)


def test_results_written_by_the_store_are_read(tmp_path: Path) -> None:
    """The harness's own writer (harness.store), not only the test fixtures, produces readable results."""
    from harness.store import CellStore

    cell, env = make_cell("bf16", model="resnet18"), make_env("cpu")
    store = CellStore(tmp_path, cell.id)
    store.write_cell(cell)
    for record in make_epochs([12, 10, 11], [10, 8, 9], [0.3, 0.45, 0.5], steps=10):
        store.append_epoch(cell, env, record)
    summary = {
        "epochs": 3,
        "best_val_acc": 0.5,
        "best_epoch": 3,
        "optimizer_steps_per_epoch": 10.0,
        "train_flops_per_image": 0.87e9,
        "warnings": [],
    }
    store.write_result(cell, env, "ok", summary=summary, started_at="2024-05-01T11:00:00+00:00")
    row = summarize(load_results([tmp_path]), target_acc=0.45).iloc[0]
    assert row["device"] == "CPU: Intel(R) Xeon(R) CPU @ 2.20GHz"
    assert row["throughput_img_s"] == pytest.approx(2 * TRAIN_IMAGES / 17)
    assert row["time_to_acc_s"] == pytest.approx(22.0)
    assert math.isnan(row["mfu"])  # CPU: unknown peak
    assert row["warnings"] == ""


def test_console_table_and_short_device_names(two_machines: tuple[Path, Path]) -> None:
    text = console_table(_summary(two_machines)[SUMMARY_COLUMNS])
    lines = text.splitlines()
    assert lines[0].split()[:7] == ["model", "loader", "backend", "precision", "device", "status", "runs"]
    assert len(lines) == 2 + 5
    assert "nan" not in text
    assert device_short("Tesla T4") == "T4"
    assert device_short("CPU: Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz") == "CPU Intel Xeon Platinum 8375C"


def _cell_files(root: Path) -> tuple[Path, Path]:
    cell_dir = root / "cells" / "vit_tiny_patch16_224-torchvision-torch-fp16"
    return cell_dir / "result.json", cell_dir / "epochs.jsonl"


def test_unknown_fields_are_tolerated(tmp_path: Path) -> None:
    env = make_env("Tesla T4", some_plugin_version="9.9")
    write_cell(
        tmp_path,
        make_cell("fp16"),
        env,
        make_epochs([3, 2], [2, 1.468], [0.3, 0.4]),
        extra={"future_field": {"nested": 1}},
    )
    summary = summarize(load_results([tmp_path]))
    assert summary.loc[0, "throughput_img_s"] == pytest.approx(2000.0)


def test_newer_schema_version_is_refused_naming_the_file(two_machines: tuple[Path, Path]) -> None:
    result, epochs = _cell_files(two_machines[0])
    data = json.loads(result.read_text())
    result.write_text(json.dumps({**data, "schema_version": 2}))
    newer = f"{result}: schema_version 2 is newer than this harness reads (1)"
    with pytest.raises(ReportError, match=re.escape(newer)):
        load_results(two_machines)
    result.write_text(json.dumps(data))
    lines = epochs.read_text().splitlines()
    lines[1] = lines[1].replace('"schema_version": 1', '"schema_version": 3')
    epochs.write_text("\n".join(lines) + "\n")
    with pytest.raises(ReportError, match=re.escape(f"{epochs}:2: schema_version 3 is newer")):
        load_results(two_machines)


def test_corrupt_files_are_named_and_everything_readable_is_kept(two_machines: tuple[Path, Path]) -> None:
    result, epochs = _cell_files(two_machines[0])
    run = str(result.parent)
    original = result.read_text()
    result.write_text(original[:40])
    with pytest.warns(ResultWarning, match=re.escape(f"{result}: unreadable")):
        summary = summarize(load_results(two_machines))
    row = _row(summary, "fp16", "Tesla T4")
    assert row["status"] == "incomplete" and "result.json unreadable" in row["reason"]
    assert row["epochs"] == 4  # its epoch rows are all kept
    result.write_text(json.dumps({**json.loads(original), "status": "exploded"}))
    bad_status = (f"{result}: field 'status' must be one of ok, skipped, failed, interrupted, paused, eliminated, "
                  "got 'exploded'")
    with pytest.warns(ResultWarning, match=re.escape(bad_status)):
        row = _row(summarize(load_results(two_machines)), "fp16", "Tesla T4")
    assert row["status"] == "incomplete" and "got 'exploded'" in row["reason"] and "got 'exploded'" in row["warnings"]
    result.write_text(original)
    lines = epochs.read_text().splitlines()
    epochs.write_text("\n".join([lines[0], lines[1][:30], *lines[2:]]) + "\n")
    with pytest.warns(ResultWarning, match=re.escape(f"{epochs}:2: not valid JSON")):
        loaded = load_results(two_machines)
    assert loaded.epochs[loaded.epochs.run == run].epoch.tolist() == [1, 3, 4]  # rows after the bad one are kept
    assert f"{epochs}:2: not valid JSON" in _row(summarize(loaded), "fp16", "Tesla T4")["warnings"]
    record = json.loads(lines[2])
    del record["val_acc"]
    epochs.write_text("\n".join([lines[0], lines[1], json.dumps(record), lines[3]]) + "\n")
    with pytest.warns(ResultWarning, match=re.escape(f"{epochs}:3: missing field(s) 'val_acc'")):
        loaded = load_results(two_machines)
    kept = loaded.epochs[loaded.epochs.run == run]
    assert kept.epoch.tolist() == [1, 2, 3, 4] and math.isnan(kept.val_acc.iloc[2])
    record = {**json.loads(lines[2]), "epoch_time_s": "fast"}
    epochs.write_text("\n".join([lines[0], lines[1], json.dumps(record), lines[3]]) + "\n")
    with pytest.warns(ResultWarning, match=re.escape(f"{epochs}:3: field 'epoch_time_s' must be a number, got 'fast'")):
        loaded = load_results(two_machines)
    assert len(loaded.epochs[loaded.epochs.run == run]) == 4


def test_torn_last_line_and_missing_result_json(two_machines: tuple[Path, Path]) -> None:
    result, epochs = _cell_files(two_machines[0])
    lines = epochs.read_text().splitlines()
    epochs.write_text("\n".join([*lines[:3], lines[3][:25]]))  # killed while writing epoch 4
    result.unlink()  # ... so there is no result.json either
    with pytest.warns(ResultWarning, match=re.escape(f"{epochs}:4: torn last line")):
        summary = summarize(load_results(two_machines))
    row = _row(summary, "fp16", "Tesla T4")
    assert row["status"] == "incomplete"
    assert row["epochs"] == 3
    assert "no result.json" in row["reason"]


def test_missing_or_empty_directories(tmp_path: Path) -> None:
    with pytest.raises(ReportError, match=re.escape(f"{tmp_path / 'nope'}: no such directory")):
        load_results([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ReportError, match="empty: no results found"):
        load_results([tmp_path / "empty"])


def test_cli_subprocess(two_machines: tuple[Path, Path], tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    out = tmp_path / "cli"
    args = [
        sys.executable,
        "-m",
        "harness.report",
        *map(str, two_machines),
        "--out",
        str(out),
        "--format",
        "md,csv",
        "--target-acc",
        "0.6",
    ]
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "5 cell(s), 5 run(s)" in done.stdout
    assert (out / "summary.md").exists() and not (out / "report.html").exists()
    result, _ = _cell_files(two_machines[1])
    original = result.read_text()
    result.write_text("{")  # unreadable: the cell is reported incomplete, with a warning naming the file
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"harness: warning: {result}: unreadable" in done.stderr and "Traceback" not in done.stderr
    result.write_text(original.replace('"schema_version": 1', '"schema_version": 7'))  # newer: refused
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2
    assert f"harness report: error: {result}: schema_version 7 is newer than this harness reads" in done.stderr


def test_device_table_matches_torch_names() -> None:
    expected = {
        "Tesla T4": "T4",
        "Tesla P40": "P40",
        "Tesla V100-SXM2-16GB": "V100",
        "Tesla V100-PCIE-32GB": "V100-PCIe",
        "NVIDIA A10": "A10",
        "NVIDIA A100-SXM4-80GB": "A100-80GB-SXM",
        "NVIDIA A100-PCIE-40GB": "A100",
        "NVIDIA L4": "L4",
        "NVIDIA H100 80GB HBM3": "H100",
        "NVIDIA H100 PCIe": "H100-PCIe",
        "NVIDIA H200": "H200",
        "NVIDIA H200 NVL": "H200-NVL",
    }
    assert {name: (match_device(name) or {}).get("key") for name in expected} == expected
    assert match_device("NVIDIA A10G") is None  # a different chip: no guessed peak
    assert match_device("cpu") is None
    for name in expected:
        facts = match_device(name)
        assert facts is not None
        assert all(url.startswith("https://") for url in facts["sources"])
        assert facts["memory_gb"] > 0 and facts["bandwidth_gbs"] > 0
    assert peak_flops("Tesla T4", "bf16") == 8.1e12  # no native bf16: the fp32 rate is the ceiling
    assert peak_flops("NVIDIA H200", "bf16") == 989.5e12
    assert peak_flops("Intel Xeon", "fp32") is None


SHM = Path("/dev/shm")


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[Path]]]:
    """A two-device report as users meet it (see ``matrix_results``), written once for the module. Its ~650 cells
    go to a tmpfs where there is one: the store's writer fsyncs every line (~4,000 fsyncs, 12 s on a disk here)."""
    shm = SHM.is_dir() and os.access(SHM, os.W_OK)
    root = Path(tempfile.mkdtemp(prefix="harness-matrix-", dir=SHM)) if shm else tmp_path_factory.mktemp("matrix")
    dirs = matrix_results(root / "results")
    write_report(dirs, root / "report", baseline="P40")
    yield root / "report", dirs
    if shm:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def matrix_report(matrix: tuple[Path, list[Path]]) -> Report:
    return build_report(load_results(matrix[1]), [str(d) for d in matrix[1]], baseline="P40")


def test_matrix_merges_to_one_row_per_cell_device_and_environment(matrix_report: Report) -> None:
    summary = matrix_report.summary
    assert not summary.duplicated(["model", "loader", "backend", "precision", "device", "environment"]).any()
    ok = summary[summary["status"] == "ok"]
    assert set(ok["runs"]) == {3} and len(ok) == 2 * (24 + 8)  # per device: 24 main + 8 Colossal-AI cells
    console = console_table(summary[SUMMARY_COLUMNS]).splitlines()
    header = console[0].split()
    assert header[header.index("device") + 1] == "environment" and len(console) == 2 + len(summary)
    colossal = summary[(summary["backend"] == "colossalai-ddp") & (summary["loader"] == "torchvision")]
    assert set(colossal["status"]) <= {"ok", "skipped"} and "not installed" not in " ".join(colossal["reason"].dropna())
    reasons = skipped_table(matrix_report).frame
    assert reasons["reason"].is_unique
    by_reason = dict(zip(reasons["reason"], reasons["cells"], strict=True))
    assert by_reason[COLOSSALAI_MISSING] == "48"  # 2 x 36 in the main environments, less 24 run in the other
    assert all(isinstance(cells, list) for cells in reasons["which cells"])


def test_decision_never_picks_an_emulated_precision(matrix_report: Report) -> None:
    boards = {(b.device, b.model): b for b in matrix_report.boards}
    assert list(boards) == [("T4", "resnet18"), ("T4", "vit_tiny_patch16_224"), ("P40", "resnet18"),
                            ("P40", "vit_tiny_patch16_224")]
    for (device, _), board in boards.items():
        assert board.metric == "throughput_img_s" and "not significantly below" in board.rule
        ranked = [s.row["throughput_img_s"] for s in board.standings]
        assert ranked == sorted(ranked, reverse=True)  # every configuration that ran, fastest first
        emulated = [s for s in board.standings if s.row["precision_support"] == "emulated"]
        assert all(s.status == "emulated precision: never picked" and not s.tied for s in emulated)
        if device == "P40":
            assert board.standings[0] in emulated  # the P40's emulated bf16 is the fastest, and not the leader
        leader = next(s for s in board.standings if s.status in ("pick", "leader"))
        assert leader.row["precision"] == ("fp16" if device == "T4" else "fp32")
    # dali-file (1.3x) vs dali-tfrecord (1.25x) on the same backend: 4 % apart, runs +-3 %, n=3: a tie, named
    t4 = boards[("T4", "resnet18")]
    assert t4.verdict.startswith("tie between ") and "dali-file · torch-ddp2 · fp16" in t4.verdict
    assert "dali-tfrecord · torch-ddp2 · fp16" in t4.verdict and t4.best is None
    assert accuracy_step(load_results(matrix_report.sources).epochs["val_acc"]) == pytest.approx(1 / 80)


def test_factor_effects_over_matched_cells(matrix_report: Report) -> None:
    effects = {e.comparison: e for e in matrix_report.effects}
    dali = effects["dali-file vs torchvision"]
    assert dali.ratio == pytest.approx(1.3, rel=0.03) and dali.low < dali.ratio < dali.high
    assert dali.matched == 16  # 2 models x 2 torch backends x 2 precisions x 2 devices
    assert effects["torch-ddp2 vs torch"].ratio == pytest.approx(1.05, rel=0.03)
    assert effects["fp16 vs fp32 on T4"].ratio == pytest.approx(2.2, rel=0.03)
    assert effects["bf16 (emulated) vs fp32 on P40"].ratio == pytest.approx(0.75 / 0.7, rel=0.03)
    assert "colossalai vs default" not in effects  # no cell ran in both environments: nothing matched
    colossal = effects["colossalai-ddp vs torch (across environments)"]  # it runs only in its own environment
    assert colossal.ratio == pytest.approx(0.98, rel=0.03) and colossal.matched == 8
    t4 = effects["T4 / P40, fp32"]
    assert t4.ratio == pytest.approx(1 / 0.7, rel=0.03) and t4.matched == 16


def test_caveats_say_what_limits_the_numbers(matrix_report: Report) -> None:
    caveats = "\n".join(matrix_report.caveats)
    assert "3 runs per cell" in caveats
    assert "3 timed epochs per run (of 4; the first of each process" in caveats
    assert "GPU: T4, P40" in caveats
    assert "bf16 is emulated on P40 (16 cells): shown, never picked" in caveats
    (software,) = [c for c in matrix_report.caveats if c.startswith("software differs")]
    assert software == "software differs between the results compared: torch 2.1.0 (default) vs 2.5.1 (colossalai)"
    # not "dali 1.34.0 (default) vs None (colossalai)": a package a cell's environment lacks is one it does not use
    assert "1.25-point steps" in caveats


def _browse(html_path: Path, width: int, probe: str) -> dict:
    """Load the report in headless Chromium in a ``width`` x 900 px frame and return what ``probe`` (JS) reports.

    The report is shown in a same-origin frame (``srcdoc``) of that size: Chromium's window cannot be narrower
    than 500 px, a frame can.
    """
    script = (
        "<script>window.addEventListener('load', () => { const r = {width: innerWidth, height: innerHeight}; "
        + probe + "; const pre = parent.document.createElement('pre'); pre.id = 'probe';"
        " pre.textContent = JSON.stringify(r); parent.document.body.appendChild(pre); });</script>"
    )
    page = html_path.read_text().replace("</body>", script + "</body>")
    frame = html_path.with_name(f"frame-{width}.html")
    frame.write_text(f'<!DOCTYPE html><body style="margin:0"><iframe style="border:0;width:{width}px;height:900px" '
                     f'srcdoc="{html.escape(page)}"></iframe></body>')
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
            f"--window-size={max(width, 800)},1000", "--virtual-time-budget=10000", "--dump-dom", frame.as_uri()]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout)
    assert found, done.stderr[-2000:]
    result = json.loads(found.group(1))
    assert (result["width"], result["height"]) == (width, 900)
    return result


DESKTOP_PROBE = """
  const box = e => e.getBoundingClientRect();
  r.leaderboardTop = box(document.getElementById('leaderboard-1')).top + scrollY;
  r.boardBottoms = [...document.querySelectorAll('.leaderboard')].map(e => box(e).bottom + scrollY);
  r.tiedRows = document.querySelectorAll('tr.tied').length;
  const images = [...document.images];
  r.images = images.length;
  r.embedded = images.filter(i => i.src.startsWith('data:image/svg+xml;base64,') && i.naturalWidth > 0).length;
  const ids = [...document.querySelectorAll('[id]')].map(e => e.id);
  r.duplicateIds = ids.filter((id, i) => ids.indexOf(id) !== i);
  r.rows = Object.fromEntries([...document.querySelectorAll('table')].map(t => [t.id, t.tBodies[0].rows.length]));
  const table = document.getElementById('summary'), head = [...table.tHead.rows[0].cells];
  const th = head.find(c => c.textContent === 'throughput (img/s)');
  const column = () => [...table.tBodies[0].rows].map(row => Number(row.cells[th.cellIndex].dataset.v));
  r.unsorted = column(); th.click(); r.ascending = column(); th.click(); r.descending = column();
  const shown = () => head.filter(c => c.getBoundingClientRect().width > 0).length;
  r.columns = [shown()]; document.querySelector('input[data-more="summary"]').click(); r.columns.push(shown());
  const scroller = table.parentElement, first = table.tBodies[0].rows[5].cells[0];
  scroller.scrollLeft = 400; scroller.scrollTop = 300;
  r.scrolled = [scroller.scrollLeft, scroller.scrollTop];
  r.idColumnOffset = box(first).left - box(scroller).left;
  r.headerOffset = box(head[0]).top - box(scroller).top;
"""

PHONE_PROBE = """
  r.pageWidth = document.documentElement.scrollWidth;
  const outside = [...document.body.querySelectorAll('*')].filter(e => !e.parentElement.closest('.scroll'));
  r.widest = Math.max(...outside.map(e => e.getBoundingClientRect().right));  // tables scroll inside their box
  r.imageWidths = [...document.images].map(i => i.getBoundingClientRect().width);
"""

needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                    reason=f"{CHROMIUM} absent: install Debian's chromium package")


@needs_chromium
def test_answer_on_the_first_screen_and_usable_tables(matrix: tuple[Path, list[Path]], matrix_report: Report) -> None:
    html_path = matrix[0] / "report.html"
    shutil.rmtree(matrix[0] / "plots", ignore_errors=True)  # the HTML must not need the PNG files next to it
    check = _browse(html_path, 1400, DESKTOP_PROBE)
    assert check["leaderboardTop"] < 300 and check["boardBottoms"][0] <= 900  # on the first screen at 1400 x 900
    assert check["tiedRows"] >= 2  # the T4 resnet18 tie, bracketed
    assert check["columns"][0] < check["columns"][1]  # a few columns by default, the rest behind the toggle
    assert check["duplicateIds"] == []
    assert check["images"] == 2 + 2 * 8 == check["embedded"]  # throughput per model, accuracy per model x backend
    ok = matrix_report.summary["status"].eq("ok").sum()
    skipped = matrix_report.summary["status"].eq("skipped")
    reasons = matrix_report.summary.loc[skipped, "reason"].nunique()
    assert check["rows"]["summary"] == ok  # ok cells only; skipped ones are one row per reason
    assert check["rows"]["skipped"] == reasons < skipped.sum()
    assert len([t for t in check["rows"] if t.startswith("leaderboard-")]) == 4
    assert check["ascending"] == sorted(check["unsorted"]) != check["unsorted"]
    assert check["descending"] == sorted(check["unsorted"], reverse=True)
    assert check["scrolled"][0] > 0 and check["scrolled"][1] > 0
    assert abs(check["idColumnOffset"]) <= 2  # the id column stays put while the table scrolls sideways
    assert abs(check["headerOffset"]) <= 2  # and the header while it scrolls down


@needs_chromium
def test_nothing_overflows_at_phone_width(matrix: tuple[Path, list[Path]]) -> None:
    check = _browse(matrix[0] / "report.html", 420, PHONE_PROBE)
    assert check["pageWidth"] <= 420 and check["widest"] <= 420
    assert check["imageWidths"] and max(check["imageWidths"]) <= 420


@needs_chromium
def test_small_report_renders(two_machines: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "report"
    write_report(list(two_machines), out, formats=["html"], target_acc=0.6)
    check = _browse(out / "report.html", 1400, DESKTOP_PROBE.split("const table")[0])
    assert check["rows"] == {"leaderboard-1": 2, "leaderboard-2": 2, "effects": 5, "summary": 4, "skipped": 1,
                             "comparison": 2, "reference": 1, "devices": 2}
    assert max(check["boardBottoms"]) <= 900  # every leaderboard on the first screen
    assert check["images"] == check["embedded"] == 3


def test_recipe_axis_rows_and_the_suites_target_give_time_to_accuracy(tmp_path: Path) -> None:
    """Two recipes of one configuration are two rows named by recipe; the suite's own target_acc (recorded in
    the cells) makes time-to-accuracy the pick's metric without --target-acc; a row that never reaches it says so."""
    out = tmp_path / "run"
    cpu = make_env("cpu")
    for name, accs in (("tuned", [0.45, 0.58, 0.66]), ("seed", [0.2, 0.25, 0.3])):
        cell = make_cell("fp32", recipe_name=name, id=f"vit-tv-torch-fp32-{name}", suite="flowers-cpu",
                         epochs=3, options={"target_acc": 0.55})
        write_cell(out, cell, cpu, make_epochs([10.0, 10.0, 10.0], [8.0, 8.0, 8.0], accs))
    summary = write_report([out], tmp_path / "report")
    assert list(summary["recipe"]) == ["seed", "tuned"]
    assert list(summary["time_to_acc_s"].fillna(-1)) == [-1, 20.0]
    text = (tmp_path / "report" / "summary.md").read_text()
    assert "time to 55 % (s)" in text and "not reached" in text
    assert "tuned · torchvision · torch · fp32" in text  # the pick names its recipe
    assert "reaches 55.0 % validation accuracy soonest" in text
    console = console_table(summary)
    assert "recipe" in console and "time_to_acc_s" in console


def test_a_diverged_fp32_run_is_not_called_emulated(tmp_path: Path) -> None:
    """An fp32 cell whose timings are NaN (json's NaN, as a diverged run writes them) has no throughput: the pick
    says so, and never blames an emulated precision."""
    epochs = [replace(r, train_loss=math.nan, train_time_s=math.nan, throughput_img_s=math.nan)
              for r in make_epochs([30, 20, 22], [20, 14, 15], [0.1, 0.1, 0.1])]
    write_cell(tmp_path, make_cell("fp32"), make_env("Tesla T4"), epochs)
    with pytest.warns(ResultWarning) as caught:
        report = build_report(load_results([tmp_path]), [str(tmp_path)])
    named = {re.search(r"field '(\w+)' is not finite", str(w.message))[1] for w in caught}
    assert named == {"train_loss", "train_time_s", "throughput_img_s"}
    (board,) = report.boards
    assert board.best is None and "emulated" not in board.verdict
    assert board.verdict == ("no pick: no configuration that ran can be picked: "
                             "no measured throughput (timings missing or not finite)")


def _runs(root: Path, speeds: list[float], accs: list[float], device: str = "Tesla T4", **cell: Any) -> None:
    """One configuration run once per seed (ids ``-r2``, ...), each at its own steady throughput and accuracy
    (accuracies in 1/80 steps: 80 validation images), written through the result store's writer."""
    for seed, (speed, acc) in enumerate(zip(speeds, accs, strict=True)):
        spec = make_cell(**{"precision": "fp32", **cell}, seed=seed)
        spec = replace(spec, id=spec.id + (f"-r{seed + 1}" if seed else ""))
        train = TRAIN_IMAGES / speed
        epochs = make_epochs([30, train + 5, train + 5, train + 5], [20, train, train, train],
                             [0.2, acc - 0.05, acc - 0.0125, acc])
        write_cell(root, spec, make_env(device), epochs)


def _board(root: Path | list[Path], **kwargs: Any) -> Any:
    dirs = root if isinstance(root, list) else [root]
    report = build_report(load_results(dirs), [str(d) for d in dirs], **kwargs)
    assert len(report.boards) == 1, report.boards
    return report, report.boards[0]


def test_configurations_within_noise_are_a_tie_with_the_tied_set(tmp_path: Path) -> None:
    _runs(tmp_path, [200, 214, 190], [0.7, 0.7125, 0.6875])
    _runs(tmp_path, [206, 196, 211], [0.7, 0.7, 0.7125], loader="dali-file")
    report, board = _board(tmp_path)
    assert board.best is None and board.verdict.startswith("tie between 2: ")
    assert "torchvision · torch · fp32" in board.verdict and "dali-file · torch · fp32" in board.verdict
    second = board.standings[1]
    assert second.tied and second.low < 1 < second.high and second.status == "tied"
    md = to_markdown(report)
    assert md.count("| [tie ") == 2 and "not significant at 95 %" in md


def test_a_real_difference_is_a_pick_with_its_interval(tmp_path: Path) -> None:
    _runs(tmp_path, [200, 204, 197, 202, 199], [0.7] * 5)
    _runs(tmp_path, [260, 263, 257, 261, 259], [0.7] * 5, loader="dali-file")
    report, board = _board(tmp_path)
    assert board.best is not None and board.best["loader"] == "dali-file"
    runner_up = board.standings[1]
    assert runner_up.status == "slower" and runner_up.relative == pytest.approx(200.4 / 260, rel=0.01)
    assert runner_up.high < 1 and runner_up.low > 0.7  # a 1.3x difference, and its interval
    assert re.search(r"pick: dali-file · torch · fp32; runner-up torchvision · torch · fp32: 0\.77x "
                     r"\[0\.7\d, 0\.7\d\] the leader's speed, \+0\.0 points, n=5, significant", board.verdict)
    table = leaderboard(report, board).frame
    assert list(table["status"]) == ["pick", "slower"] and table["vs leader"][1].startswith("0.77x [")
    assert re.fullmatch(r"2\d\d\.\d \[2\d\d\.\d, 2\d\d\.\d\]", table["throughput (img/s)"][0])


def test_with_one_run_each_the_interval_holds_the_ratio_of_the_throughputs_shown(tmp_path: Path) -> None:
    """A run slowed down for a few epochs (another job on the machine): its throughput is its images over its
    seconds, so the slow epochs weigh by their time, and the ratio interval, over the epochs' seconds per image,
    holds the ratio printed beside it (measured on a real run here: 0.46x printed beside [0.60, 0.84] before)."""
    steady, slowed = [4.0] * 12, [2.6, 2.7, 21.0, 2.6, 2.6, 7.5, 2.7, 11.0, 2.6, 2.6, 2.7, 2.6]
    for loader, train_times in (("dali-file", steady), ("torchvision", slowed)):
        spec = make_cell(loader=loader, precision="fp32")
        epochs = make_epochs([t + 1 for t in [20.0, *train_times]], [20.0, *train_times], [0.5] + [0.7] * 12)
        write_cell(tmp_path, spec, make_env(), epochs)
    _, board = _board(tmp_path)
    slower = board.standings[1]
    assert slower.relative == pytest.approx(sum(steady) / sum(slowed), rel=1e-6)  # 0.77x: images over seconds
    assert slower.low <= slower.relative <= slower.high


def test_a_faster_configuration_excluded_by_accuracy_is_shown_with_its_cost(tmp_path: Path) -> None:
    _runs(tmp_path, [200, 204, 197, 202, 199], [0.7, 0.7125, 0.7, 0.6875, 0.7])
    _runs(tmp_path, [260, 263, 257, 261, 259], [0.5, 0.5125, 0.4875, 0.5, 0.5], loader="dali-file")
    _, board = _board(tmp_path)
    assert board.best is not None and board.best["loader"] == "torchvision"
    fast = board.standings[0]  # ranked first by throughput: never hidden
    assert fast.row["loader"] == "dali-file" and fast.status == "less accurate"
    assert "faster but less accurate: dali-file · torch · fp32: 1.30x [1.2" in board.verdict
    assert "the leader's speed, -20.0 points, n=5, significant" in board.verdict


def test_near_chance_accuracies_give_no_pick_and_say_why(tmp_path: Path) -> None:
    _runs(tmp_path, [200, 204, 197], [0.3, 0.3125, 0.2875])
    _runs(tmp_path, [260, 263, 257], [0.275, 0.3, 0.3], loader="dali-file")
    _, board = _board(tmp_path)
    assert board.best is None
    assert board.verdict == ("no pick: the best accuracy, 30.0 %, is near chance (20.0 % for 5 classes): the "
                             "ranking would rank noise")


def test_too_few_optimizer_steps_give_no_pick(tmp_path: Path) -> None:
    cell = make_cell("fp32", recipe=Recipe(accumulation=16))
    write_cell(tmp_path, cell, make_env("cpu"), make_epochs([60, 50, 52], [55, 48, 49], [0.5, 0.6, 0.7], steps=2))
    _, board = _board(tmp_path)
    assert board.verdict == ("no pick: no configuration trained enough: at most 6 optimizer steps in a run "
                             "(fewer than 20)")


def test_a_sanity_failure_is_never_picked(tmp_path: Path) -> None:
    """A recorded disqualifying warning and an MFU above 100 % each keep a faster cell from being picked."""
    _runs(tmp_path, [200, 204, 197], [0.7] * 3)
    _runs(tmp_path, [400, 404, 397], [0.7] * 3, loader="dali-file")
    bad = make_cell("fp32", loader="dali-tfrecord")
    write_cell(tmp_path, bad, make_env("Tesla T4"), make_epochs([30, 20, 20, 20], [20, 5, 5, 5], [0.2, 0.6, 0.7, 0.7]),
               warnings=[{"code": "loss-nan", "message": "loss was NaN | <b>", "disqualifies": True}])
    huge = make_cell("fp32", loader="dali-file", backend="torch-ddp2")
    write_cell(tmp_path, huge, make_env("Tesla T4"), make_epochs([30, 20, 20, 20], [20, 5, 5, 5], [0.2, 0.6, 0.7, 0.7]),
               flops_per_image=1e13)
    report, board = _board(tmp_path)
    assert board.best is not None and board.best["loader"] == "dali-file" and board.best["backend"] == "torch"
    status = {(s.row["loader"], s.row["backend"]): s.status for s in board.standings}
    assert status[("dali-tfrecord", "torch")] == "failed a sanity check: loss was NaN | <b>"
    assert status[("dali-file", "torch-ddp2")].startswith("failed a sanity check: MFU 7")
    assert "is above the device's peak" in status[("dali-file", "torch-ddp2")]
    assert "<b>" not in to_markdown(report) and "&lt;b&gt;" in to_markdown(report)


def test_mfu_for_every_native_precision_including_autocast(tmp_path: Path) -> None:
    epochs = make_epochs([30, 20, 20], [20, 14.68, 14.68], [0.3, 0.4, 0.5])
    write_cell(tmp_path, make_cell("bf16-autocast"), make_env("NVIDIA H100 80GB HBM3"), epochs)
    row = summarize(load_results([tmp_path])).iloc[0]
    assert row["mfu"] == pytest.approx(200 * 3.8e9 / 989.5e12)  # bf16-autocast computes in bf16


def test_one_suites_target_never_changes_anothers_pick(tmp_path: Path) -> None:
    """Suite a (target 60 %) and suite b (none): b's board ranks by throughput, a's by time to 60 %."""
    for suite, options in (("a", {"target_acc": 0.6}), ("b", {})):
        _runs(tmp_path / suite, [200, 204, 197], [0.7] * 3, suite=suite, options=options)
    report = build_report(load_results([tmp_path / "a", tmp_path / "b"]), ["a", "b"])
    assert report.targets == {"a": 0.6}
    assert [(b.suite, b.metric, b.target) for b in report.boards] == [("a", "time_to_acc_s", 0.6),
                                                                      ("b", "throughput_img_s", None)]
    assert list(report.summary["time_to_acc_s"].isna()) == [False, True]


def test_a_device_comparison_of_different_settings_names_the_setting(tmp_path: Path) -> None:
    _runs(tmp_path / "t4", [200, 204, 197], [0.7] * 3)
    _runs(tmp_path / "p40", [100, 104, 97], [0.7] * 3, device="Tesla P40", image_size=64)
    report = build_report(load_results([tmp_path / "t4", tmp_path / "p40"]), ["t4", "p40"])
    assert comparison_table(report).frame.empty
    assert comparison_note(report) == ("Nothing to compare by device: no configuration ran on two of them with the "
                                       "same settings: image size 224 (T4) vs 64 (P40).")
    assert "image size 224 (T4) vs 64 (P40)" in to_markdown(report)
    refused = tmp_path / "p40-refused"
    write_cell(refused, make_cell("bf16"), make_env("Tesla P40"), [], status="skipped", reason="needs sm_80",
               flops_per_image=None)
    report = build_report(load_results([tmp_path / "t4", refused]), ["t4", "p40"])
    assert comparison_note(report) == "Nothing to compare by device: only T4 has cells that ran."
    same = tmp_path / "p40-224"
    _runs(same, [100, 104, 97], [0.7] * 3, device="Tesla P40")
    report = build_report(load_results([tmp_path / "t4", same]), ["t4", "p40"])
    ratio_text = comparison_table(report).frame["P40 / T4 throughput ratio"][0]
    assert re.fullmatch(r"0\.50x \[0\.4\d, 0\.5\d\]", ratio_text)  # every device ratio carries its interval


def test_the_loader_bound_device_is_flagged(tmp_path: Path) -> None:
    _runs(tmp_path, [200, 204, 197], [0.7] * 3)  # the fixtures wait 10 % of the loop: not above the threshold
    assert not any("loader limits" in c for c in _board(tmp_path)[0].caveats)
    slow = make_cell("fp32", loader="dali-file")
    records = [replace(r, data_wait_s=0.3 * r.train_time_s) for r in make_epochs([30, 20, 20], [20, 15, 15],
                                                                                  [0.2, 0.6, 0.7])]
    write_cell(tmp_path, slow, make_env("Tesla T4"), records)
    report, board = _board(tmp_path)
    assert "the loader limits this device: T4 waits for data 10-30 % of the training loop (above 10 %)" in (
        "\n".join(report.caveats))
    assert "30.0 (loader-bound)" in list(leaderboard(report, board).frame["data wait (%)"])


def test_markdown_escapes_pipes_and_tags_in_tables_and_labels(tmp_path: Path) -> None:
    model = "vit|<script>alert(1)</script>"
    _runs(tmp_path, [200, 204, 197], [0.7] * 3, model=model, id="evil")
    write_cell(tmp_path, make_cell("bf16", model=model, id="evil-bf16"), make_env("Tesla T4"), [], status="skipped",
               reason="needs a | b <img src=x onerror=alert(1)> & more", flops_per_image=None)
    write_report([tmp_path], tmp_path / "report", formats=["md", "html"])
    md = (tmp_path / "report" / "summary.md").read_text()
    assert "<script>" not in md and "<img" not in md
    assert "vit\\|&lt;script&gt;alert(1)&lt;/script&gt;" in md and "needs a \\| b &lt;img" in md and "&amp; more" in md
    for block in re.findall(r"(?:^\|.*\n)+", md, flags=re.MULTILINE):  # every table keeps its shape
        widths = {len(re.findall(r"(?<!\\)\|", line)) for line in block.splitlines()}
        assert len(widths) == 1, block
    assert "<summary>needs a \\| b &lt;img src=x onerror=alert(1)&gt; &amp; more (1)</summary>" in md
    page = (tmp_path / "report" / "report.html").read_text()
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_formatting_intervals_numbers_and_words(tmp_path: Path) -> None:
    assert with_interval(11.57, -20.0, 43.1) == "11.6 [0.0, 43.1]"  # one style, clipped at zero
    assert with_interval(0.99, 0.95, 1.02, scale=100, upper=100) == "99.0 [95.0, 100.0]"
    assert with_interval(0.69, math.nan, math.nan, scale=100) == "69.0"  # trailing zero kept
    assert count(2.0) == "2" and count(1.43) == "1.4" and num(30.0) == "30.0" and num(2555.6) == "2,555.6"
    assert plural(1, "cell") == "1 cell" and plural(2, "run") == "2 runs"
    _runs(tmp_path, [200, 204, 197], [0.69, 0.69, 0.69])
    report = build_report(load_results([tmp_path]), ["x"])
    md = to_markdown(report)
    assert "| 69.0 [" in md and "## Results: 1 cell that ran (3 runs)" in md
    assert "| 23   " in md  # optimizer steps / epoch: an integer
    env = make_env("Tesla T4", dali=None)
    write_cell(tmp_path / "other", make_cell("fp32", model="resnet18"), env,
               make_epochs([30, 20, 20], [20, 15, 15], [0.2, 0.6, 0.7]))
    caveats = "\n".join(build_report(load_results([tmp_path, tmp_path / "other"]), ["x", "y"]).caveats)
    # a library one side lacks is one its cells do not use: no software caveat (and never "None")
    assert "software differs" not in caveats and "None" not in caveats
    assert installed(None) == "not installed" and installed("1.34.0") == "1.34.0"


def test_observer_extra_fields_are_columns_behind_the_toggle(tmp_path: Path) -> None:
    cell = make_cell("fp32")
    write_cell(tmp_path, cell, make_env("Tesla T4"), make_epochs([30, 20, 20], [20, 15, 15], [0.2, 0.6, 0.7]),
               summary={"extra": {"energy.joules": 1234.5, "energy.note": "text is not a column"}},
               extra={"extra": {"gpu_util.mean_pct": 87.5}})
    table = results_table(build_report(load_results([tmp_path]), ["x"]))
    assert {"extra.energy.joules", "extra.gpu_util.mean_pct"} <= set(table.more)
    assert "extra.energy.note" not in table.frame.columns
    assert table.frame["extra.energy.joules"][0] == "1,234.500"
    assert table.frame["extra.gpu_util.mean_pct"][0] == "87.500"
    assert "throughput (img/s)" not in table.more and "MFU (%)" in table.more
    write_report([tmp_path], tmp_path / "csv", formats=["csv"])  # the CSVs: one column per field, not a dict
    epochs, runs = (pd.read_csv(tmp_path / "csv" / name) for name in ("epochs.csv", "runs.csv"))
    assert epochs["extra.gpu_util.mean_pct"].tolist() == [87.5] * 3 and "extra" not in epochs
    assert runs[["extra.energy.joules", "extra.gpu_util.mean_pct"]].values.tolist() == [[1234.5, 87.5]]
    assert list(runs.columns[:len(RUN_COLUMNS)]) == RUN_COLUMNS and len(runs.columns) == len(RUN_COLUMNS) + 2


def test_plot_lines_differ_in_every_factor_that_differs() -> None:
    rows = pd.DataFrame([
        {"loader": "torchvision", "recipe": "", "precision": "fp32", "precision_support": "native",
         "device_short": "CPU", "environment": env, "backend": "torch", "cell": {"image_size": 64, "epochs": 3}}
        for env in ("default", "timm-1.0.9")])
    looks, labels = styles(rows)
    assert looks[0] != looks[1] and labels == ["default", "timm-1.0.9"]
    many = pd.concat([rows.assign(loader=loader, precision=p) for loader in ("a", "b") for p in ("fp32", "bf16")])
    looks, labels = styles(many)
    assert len({json.dumps(look, sort_keys=True) for look in looks}) == len(many) == len(set(labels))
    sizes = pd.concat([rows.iloc[:1].assign(cell=[{"image_size": size, "epochs": 3}]) for size in (64, 224)])
    assert styles(sizes)[1] == ["image_size 64", "image_size 224"]  # settings: only what differs, short
