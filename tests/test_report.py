"""Golden tests of the report: synthetic result directories from a "Tesla T4" and a "Tesla P40"."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from report_fixtures import TRAIN_IMAGES, make_cell, make_env, make_epochs, t4_p40_results, write_cell

from harness.devices import match_device
from harness.report import ReportError, console_table, write_report
from harness.report.compare_devices import compare
from harness.report.load import load_results
from harness.report.mfu import mfu, peak_flops
from harness.report.summary import SUMMARY_COLUMNS, derived_warnings, device_short, summarize
from harness.store import ResultWarning

REPO = Path(__file__).resolve().parents[1]
FP16 = ("flowers", "vit_tiny_patch16_224", "torchvision", "torch", "fp16")
FP32 = (*FP16[:4], "fp32")
BF16 = (*FP16[:4], "bf16")
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture
def two_machines(tmp_path: Path) -> tuple[Path, Path]:
    return t4_p40_results(tmp_path / "results")


def _row(summary: pd.DataFrame, precision: str, device: str) -> pd.Series:
    rows = summary[(summary["precision"] == precision) & (summary["device"] == device)]
    assert len(rows) == 1, rows
    return rows.iloc[0]


def test_merge_two_machines(two_machines: tuple[Path, Path]) -> None:
    results = load_results(two_machines)
    assert len(results.cells) == 5
    assert sorted(results.cells["status"]) == ["ok", "ok", "ok", "ok", "skipped"]
    assert len(results.epochs) == 4 + 4 + 3 + 3
    summary = summarize(results)
    assert set(summary["device"]) == {"Tesla T4", "Tesla P40"}
    assert set(summary["device_short"]) == {"T4", "P40"}
    # The same directory twice (or a parent and its child) is read once.
    assert len(load_results([*two_machines, two_machines[0]]).cells) == 5
    assert len(load_results([two_machines[0].parent]).cells) == 5


def test_summary_golden_values(two_machines: tuple[Path, Path]) -> None:
    summary = summarize(load_results(two_machines), target_acc=0.6)
    t4 = _row(summary, "fp16", "Tesla T4")
    assert t4["epochs"] == 4
    assert t4["epoch_time_s"] == pytest.approx(21.0)  # median of 20, 22, 21 (first epoch excluded)
    assert t4["epoch_time_p90_s"] == pytest.approx(21.8)
    assert t4["throughput_img_s"] == pytest.approx(200.0)  # 3 x 2936 images / (3 x 14.68 s)
    assert t4["throughput_ci95_low"] == pytest.approx(200.0)
    assert t4["best_val_acc"] == pytest.approx(0.62)
    assert t4["best_epoch"] == 3
    assert t4["time_to_acc_s"] == pytest.approx(30 + 20 + 22)  # wall time at the end of epoch 3
    assert t4["peak_mem_gb"] == pytest.approx(2.54)
    assert t4["optimizer_steps_per_epoch"] == 23
    assert t4["data_wait_pct"] == pytest.approx(10.0)
    assert t4["warnings"] == ""
    p40 = _row(summary, "fp16", "Tesla P40")
    assert p40["throughput_img_s"] == pytest.approx(100.0)
    assert p40["epoch_time_s"] == pytest.approx(40.0)
    assert math.isnan(p40["time_to_acc_s"])  # best 59 %: never reached 60 %
    assert "fp16 on Tesla P40 (sm_61) has no fast fp16 arithmetic" in p40["warnings"]
    assert p40["precision_support"] == "emulated" and t4["precision_support"] == "native"
    fp32 = _row(summary, "fp32", "Tesla T4")
    # Per-epoch throughputs 2936/48 and 2936/49: mean +- t(0.975, 1) * sd / sqrt(2).
    per_epoch = pd.Series([TRAIN_IMAGES / 48, TRAIN_IMAGES / 49])
    half = 12.706204736 * per_epoch.std() / math.sqrt(2)
    assert fp32["throughput_img_s"] == pytest.approx(2 * TRAIN_IMAGES / 97)
    assert fp32["throughput_ci95_low"] == pytest.approx(per_epoch.mean() - half)
    assert fp32["throughput_ci95_high"] == pytest.approx(per_epoch.mean() + half)
    assert "only 1 optimizer step(s) per epoch" in fp32["warnings"]
    skipped = _row(summary, "bf16", "Tesla P40")
    assert skipped["status"] == "skipped"
    assert skipped["reason"].startswith("bf16 needs compute capability")
    assert skipped["epochs"] == 0
    assert math.isnan(skipped["throughput_img_s"])


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
    comparison = compare(summarize(load_results(two_machines), target_acc=0.6))
    assert comparison.groups == ["P40", "T4"]
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
    assert {"T4 throughput_img_s", "T4 / P40 throughput_img_s", "flags"} <= set(flat.columns)
    reversed_ = compare(summarize(load_results(two_machines)), baseline="T4").table
    assert reversed_.loc[FP16, ("P40 / T4", "throughput_img_s")] == pytest.approx(0.5)


def test_mismatched_environments_are_flagged(tmp_path: Path) -> None:
    env = make_env("Tesla P40", torch="2.3.1", cuda_version="11.8", dali=None)
    dirs = t4_p40_results(tmp_path, p40_env=env, p40_epochs=3)
    table = compare(summarize(load_results(dirs))).table
    flags = table.loc[FP16, ("check", "flags")]
    assert "env torch 2.3.1 (P40) vs 2.1.0 (T4)" in flags
    assert "env cuda_version 11.8 (P40) vs 12.1 (T4)" in flags
    assert "env dali None (P40) vs 1.34.0 (T4)" in flags
    assert "spec epochs 3 (P40) vs 4 (T4)" in flags
    assert "spec epochs" not in table.loc[FP32, ("check", "flags")]  # the fp32 cells share their spec
    assert table.loc[BF16, ("check", "flags")] == ""  # one device only: nothing to compare
    assert table.loc[FP16, ("T4 / P40", "throughput_img_s")] == pytest.approx(2.0)  # shown, but flagged


def test_reruns_on_one_device_keep_the_latest(tmp_path: Path) -> None:
    t4, p40 = t4_p40_results(tmp_path / "a")
    rerun = tmp_path / "b"
    write_cell(
        rerun,
        make_cell("fp16"),
        make_env("Tesla T4"),
        make_epochs([30, 10, 10], [20, 7.34, 7.34], [0.3, 0.6, 0.7]),
        finished_at="2024-06-01T00:00:00+00:00",
    )
    comparison = compare(summarize(load_results([t4, p40, rerun])))
    assert comparison.table.loc[FP16, ("T4", "throughput_img_s")] == pytest.approx(400.0)
    assert "2 runs on T4: latest shown" in comparison.table.loc[FP16, ("check", "flags")]


def test_write_report_files_and_reference_row(two_machines: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "report"
    summary = write_report(list(two_machines), out, target_acc=0.6)
    assert list(summary.columns) == SUMMARY_COLUMNS
    required = [
        "suite",
        "model",
        "loader",
        "backend",
        "precision",
        "device",
        "status",
        "reason",
        "epochs",
        "epoch_time_s",
        "throughput_img_s",
        "best_val_acc",
        "best_epoch",
    ]
    csv = pd.read_csv(out / "summary.csv")
    assert set(required) <= set(csv.columns)
    assert len(csv) == 5
    assert sorted(p.name for p in (out / "plots").iterdir()) == [
        "epoch_times.png",
        "throughput_by_device.png",
        "val_acc_vs_epoch.png",
        "val_acc_vs_time.png",
    ]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in (out / "plots").iterdir())
    comparison = pd.read_csv(out / "comparison.csv")
    fp16 = comparison[comparison["precision"] == "fp16"].iloc[0]
    assert fp16["T4 / P40 throughput_img_s"] == pytest.approx(2.0)
    assert len(pd.read_csv(out / "epochs.csv")) == 14
    # The published reference is its own, clearly marked section and never a measured row.
    assert "66.62" not in (out / "summary.csv").read_text()
    assert "PUBLISHED" not in (out / "comparison.csv").read_text()
    md = (out / "summary.md").read_text()
    reference, measured = md.split("## Published reference (not measured here)")[1].split("## Summary (measured)")
    assert "PUBLISHED (not measured here)" in reference
    assert "66.62 %" in reference
    assert "| Tesla T4 | vit_tiny_patch16_224 | dali     | colossalai | fp16" in reference
    assert "< 20" in reference
    assert "PUBLISHED" not in measured and "66.62" not in measured.split("## Plots")[0]
    assert "T4 / P40 throughput_img_s" in md
    assert "| 2.00x" in md
    assert "time_to_60%_s" in md
    assert "![Validation accuracy vs epoch](plots/val_acc_vs_epoch.png)" in md
    html = (out / "report.html").read_text()
    assert '<section class="reference">' in html
    assert html.count("data:image/png;base64,") == 4
    assert 'src="plots/' not in html  # self-contained


def test_formats_subset_and_bad_arguments(two_machines: tuple[Path, Path], tmp_path: Path) -> None:
    write_report(list(two_machines), tmp_path / "csv", formats=["csv"])
    assert sorted(p.name for p in (tmp_path / "csv").iterdir()) == ["comparison.csv", "epochs.csv", "summary.csv"]
    with pytest.raises(ReportError, match="--format: unknown pdf"):
        write_report(list(two_machines), tmp_path / "x", formats=["pdf"])
    with pytest.raises(ReportError, match=re.escape("--target-acc 60.0: give a fraction")):
        write_report(list(two_machines), tmp_path / "x", target_acc=60.0)
    with pytest.raises(ReportError, match="--by 'gpu'"):
        write_report(list(two_machines), tmp_path / "x", by="gpu")


def test_group_by_host(two_machines: tuple[Path, Path]) -> None:
    comparison = compare(summarize(load_results(two_machines)), by="host")
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
    text = console_table(summarize(load_results(two_machines))[SUMMARY_COLUMNS])
    lines = text.splitlines()
    assert lines[0].split()[:6] == ["model", "loader", "backend", "precision", "device", "status"]
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
    bad_status = f"{result}: field 'status' must be one of ok, skipped, failed, interrupted, got 'exploded'"
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
    assert "5 cell run(s)" in done.stdout
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


def _render_check(html_path: Path) -> dict:
    """Load the report in headless Chromium and read back what rendered."""
    probe = html_path.with_name("probe.html")
    script = (
        '<script>window.addEventListener("load", () => { const imgs = [...document.images];'
        "const result = {images: imgs.length, loaded: imgs.filter(i => i.complete && i.naturalWidth > 0).length,"
        'tables: Object.fromEntries([...document.querySelectorAll("table")].map(t => [t.id, t.rows.length]))};'
        'const pre = document.createElement("pre"); pre.id = "render-check";'
        "pre.textContent = JSON.stringify(result); document.body.appendChild(pre); });</script>"
    )
    probe.write_text(html_path.read_text().replace("</body>", script + "</body>"))
    args = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--virtual-time-budget=10000",
        "--dump-dom",
        probe.as_uri(),
    ]
    done = subprocess.run(args, capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="render-check">(.*?)</pre>', done.stdout)
    assert found, done.stderr[-2000:]
    return json.loads(found.group(1))


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} absent: install Debian's chromium package")
def test_html_renders_in_headless_chromium(two_machines: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "report"
    write_report(list(two_machines), out, formats=["html"], target_acc=0.6)
    shutil.rmtree(out / "plots")  # the HTML must not need the PNG files next to it
    check = _render_check(out / "report.html")
    assert check["images"] == 4
    assert check["loaded"] == 4
    assert check["tables"] == {"reference": 2, "summary": 6, "comparison": 4, "devices": 3}
