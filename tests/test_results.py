"""The results model (harness/results.py): its JSON Schema in the docs, observer ``extra`` fields, non-finite values,
finding cells, the warm-up rule, and the output lock (filelock). Files are written by the real store."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from harness import results
from harness.api import CellSpec, EpochRecord, Recipe
from harness.report.load import load_results
from harness.results import ResultWarning
from harness.store import CellStore, OutputLock, OutputLocked

REPO = Path(__file__).resolve().parent.parent
SPEC = CellSpec(id="m-tv-torch-fp32", suite="t", model="m", loader="tv", backend="torch", precision="fp32",
                loader_plugin="tv", backend_plugin="torch", epochs=3, image_size=32, data="/d", seed=0, recipe=Recipe())
ENV = {"hostname": "h", "cpu_model": "Test CPU", "device_type": "cpu"}


def epoch(number: int, **values: float) -> EpochRecord:
    base = dict(train_loss=1.0, train_acc=0.5, val_loss=1.0, val_acc=0.5, lr=0.1, epoch_time_s=2.0, train_time_s=1.5,
                throughput_img_s=100.0, data_wait_s=0.1, peak_mem_gb=0.5, optimizer_steps=4, train_images=150,
                wall_time_s=2.0 * number)
    return EpochRecord(epoch=number, **{**base, **values})  # type: ignore[arg-type]


def write(out: Path, records: list[EpochRecord], summary: dict | None = None) -> CellStore:
    store = CellStore(out, SPEC.id)
    store.write_cell(SPEC)
    for record in records:
        store.append_epoch(SPEC, ENV, record)
    store.write_result(SPEC, ENV, "ok", summary=summary or {"epochs": len(records)})
    return store


def test_the_json_schema_in_the_docs_is_current() -> None:
    docs = (REPO / "docs" / "results.md").read_text()
    block = re.search(r"<!-- schema: begin -->\n```json\n(.*?)\n```\n<!-- schema: end -->", docs, re.S)
    assert block, "docs/results.md has no generated schema block"
    printed = subprocess.run([sys.executable, "-m", "harness.results", "--schema"], capture_output=True, text=True,
                             check=True, cwd=REPO, timeout=60).stdout
    assert json.loads(block.group(1)) == json.loads(printed) == results.json_schema(), (
        "docs/results.md is stale: paste `python -m harness.results --schema` between the schema markers")
    epoch_fields = results.json_schema()["$defs"]["epoch"]["properties"]
    assert set(results.EPOCH_FIELDS) <= set(epoch_fields) and epoch_fields["optimizer_steps"] == {"type": "integer"}


def test_observer_extra_fields_are_read_and_bad_ones_named(tmp_path: Path) -> None:
    store = write(tmp_path, [epoch(1), epoch(2)], {"epochs": 2, "extra": {"power.joules": 12.5, "power.note": "x"}})
    lines = store.epochs_path.read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    rows[0]["extra"], rows[1]["extra"] = {"gpu.util": 0.5}, {"gpu.util": 0.75, "gpu.name": "T4"}
    store.epochs_path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.warns(ResultWarning) as caught:
        cell = results.read_cell(store.dir)
        epochs = list(cell.epochs())
    assert [e.extra for e in epochs] == [{"gpu.util": 0.5}, {"gpu.util": 0.75}]
    assert cell.summary["extra"] == {"power.joules": 12.5}
    messages = [str(w.message) for w in caught]
    assert f"{store.epochs_path}:2: field 'extra.gpu.name' must be a number, got 'T4'; ignored" in messages
    assert any("field 'summary.extra.power.note' must be a number" in m for m in messages)
    with pytest.warns(ResultWarning):
        loaded = load_results([tmp_path])
    assert loaded.epochs["extra"].tolist() == [{"gpu.util": 0.5}, {"gpu.util": 0.75}]
    assert loaded.cells["extra"][0] == {"power.joules": 12.5}


def test_non_finite_values_read_as_empty_with_one_warning_per_field(tmp_path: Path) -> None:
    store = write(tmp_path, [epoch(1, train_loss=math.nan), epoch(2, train_loss=math.nan, val_loss=math.inf),
                             epoch(3, train_loss=math.nan)])
    with pytest.warns(ResultWarning) as caught:
        epochs = list(results.iter_epochs(store.epochs_path))
    assert all(math.isnan(e.metrics["train_loss"]) for e in epochs) and math.isnan(epochs[1].metrics["val_loss"])
    assert [e.metrics["throughput_img_s"] for e in epochs] == [100.0] * 3  # the rest of each line is kept
    assert sorted(str(w.message) for w in caught) == [
        f"{store.epochs_path}:1: field 'train_loss' is not finite (NaN or inf) (and 2 more line(s)); read as empty",
        f"{store.epochs_path}:2: field 'val_loss' is not finite (NaN or inf); read as empty",
    ]


def test_find_cells_takes_any_folder_and_names_what_it_cannot_use(tmp_path: Path) -> None:
    write(tmp_path / "machine-a" / "out", [epoch(1)])
    store = write(tmp_path / "machine-b", [epoch(1)])
    store.move_aside()  # --rerun-changed: left out
    write(tmp_path / "machine-b", [epoch(1)])
    assert results.find_cells(tmp_path) == [tmp_path / "machine-a" / "out" / "cells" / SPEC.id, store.dir]
    assert results.find_cells(store.dir) == [store.dir]
    for path, message in [(tmp_path / "nope", "no such directory"), (store.result_path, "not a directory")]:
        with pytest.raises(results.StoreError, match=re.escape(f"{path}: {message}")):
            results.find_cells(path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(results.StoreError, match="empty: no results found"):
        results.find_cells(tmp_path / "empty")


def test_the_warm_up_rule_is_the_same_for_lists_and_frames() -> None:
    frame = pd.DataFrame({"epoch": [1, 2, 3]}, index=[7, 8, 9])
    assert results.timed_epochs([1, 2, 3]) == [2, 3] and results.timed_epochs([1]) == [1]
    assert results.timed_epochs(frame)["epoch"].tolist() == [2, 3]
    assert results.timed_epochs(frame.iloc[:1])["epoch"].tolist() == [1]


def test_the_first_epoch_of_every_process_of_a_cell_is_warm_up() -> None:
    """A cell resumed after epoch 2 and again after epoch 4 (a race's rungs): epochs 3 and 5 warmed a new process up.
    Records written before ``epoch_in_process`` existed (NaN, missing) leave out epoch 1 only."""
    in_process = [1, 2, 1, 2, 1, 2]
    frame = pd.DataFrame({"epoch": range(1, 7), "epoch_in_process": in_process})
    assert results.timed_epochs(frame)["epoch"].tolist() == [2, 4, 6]
    rows = [{"epoch": e, "epoch_in_process": n} for e, n in zip(range(1, 7), in_process, strict=True)]
    assert [r["epoch"] for r in results.timed_epochs(rows)] == [2, 4, 6]
    assert results.timed_epochs(["a", "b", "c"], [1, 1, 2]) == ["c"]
    assert results.timed_epochs(["a", "b"], [1, 1]) == ["b"]  # nothing but warm-ups: all but epoch 1, as before
    old = pd.DataFrame({"epoch": [1, 2, 3], "epoch_in_process": [math.nan] * 3})
    assert results.timed_epochs(old)["epoch"].tolist() == [2, 3]
    assert [r["epoch"] for r in results.timed_epochs([{"epoch": 1}, {"epoch": 2}])] == [2]


def test_a_result_in_transit_is_read_by_the_model() -> None:
    assert results.status_of(json.dumps({"schema_version": 1, "status": "ok"}).encode()) == "ok"
    assert results.status_of(b'{"status": "exploded"}') is None and results.status_of(b"{torn") is None


def test_the_output_lock_names_its_holder_and_goes_with_it(tmp_path: Path) -> None:
    with OutputLock(tmp_path, "harness run --suite held"):
        with pytest.raises(OutputLocked, match=f"pid {os.getpid()} on .*: harness run --suite held"):
            OutputLock(tmp_path, "again")
        assert "harness run --suite held" in (tmp_path / ".lock").read_text()  # a refused run leaves it as it was
        child = subprocess.run([sys.executable, "-c", "import sys; from harness.store import OutputLock; "
                                "OutputLock(sys.argv[1], 'child')", str(tmp_path)], capture_output=True, text=True,
                               cwd=REPO, timeout=60)
        assert child.returncode != 0 and "is in use by another harness run" in child.stderr
    OutputLock(tmp_path, "after release").release()
    assert (tmp_path / ".lock").exists()  # the file stays: two runs never lock two different files
