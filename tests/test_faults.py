"""Results are never lost or silently wrong (issue 15).

Each test reproduces one fault: a corrupt line in a result file (readers, ``--resume``), two runs
on one output directory, counts and names that validation let through, a cell that trains
nothing, ``--resume`` after the suite changed, ``data prepare`` deleting what it did not
write, unsafe or oversized archives, inputs that made ``report``/``compare`` crash, outputs that cannot be
written (under a file, on a read-only disk), and photos no decoder can read (named, TFRecords included).
Tiny generated photos and archives only; the command line runs in real subprocesses.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import plant_code

from harness import compare, store
from harness.api import CellSpec, Recipe
from harness.datasets import DataError, check_apart
from harness.prepare import MARKER, Limits, Options, configure, prepare
from harness.prepare import command as prepare_command
from harness.report.load import load_results
from harness.results import ResultWarning
from harness.store import CellStore, OutputLock, OutputLocked
from harness.testing import make_photos, run_harness

CELL = "resnet10t-tv-torch-fp32"
SUITE = """
name = "{name}"
epochs = {epochs}
image_size = 32
recipe = {{ base = "default", optimizer = "adamw", lr = 0.002, batch_size = {batch} }}
[matrix]
model = ["resnet10t"]
loader = ["tv"]
backend = ["torch"]
precision = ["fp32"]
[loaders.tv]
use = "torchvision"
workers = 0
"""

# Kills the cell process (as the OOM killer would) right after an epoch's row and checkpoint are written.
KILL_PLUGIN = """
import os, signal
from harness.hookspecs import hookimpl

@hookimpl
def harness_epoch_end(cell, record, context):
    if str(record.epoch) == os.environ.get("FAULTS_KILL_AT_EPOCH"):
        os.kill(os.getpid(), signal.SIGKILL)
"""


def suite(folder: Path, epochs: int = 4, batch: int = 8, name: str = "faults") -> Path:
    path = folder / "suite.toml"
    path.write_text(SUITE.format(name=name, epochs=epochs, batch=batch))
    return path


def rows(out: Path, cell: str = CELL) -> list[int]:
    return [r["epoch"] for r in CellStore(out, cell).epochs()]


def tree(path: Path) -> set[str]:
    return {p.relative_to(path).as_posix() for p in path.rglob("*")}


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three classes of twelve generated photos: 27 for training, 9 for validation."""
    return make_photos(tmp_path_factory.mktemp("photos") / "photos")


@pytest.fixture(scope="module")
def killed(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-epoch cell whose process was killed after epoch 3: rows 1-3, checkpoint 3, no ok result."""
    root = tmp_path_factory.mktemp("killed")
    (root / "kill_plugin.py").write_text(KILL_PLUGIN)
    out = root / "out"
    done = run_harness("run", "--suite", suite(root), "--data", photos, "--out", out, plugin_modules=["kill_plugin"],
                       pythonpath=[root], env={"FAULTS_KILL_AT_EPOCH": "3"})
    assert done.returncode == 1, done.stdout + done.stderr
    assert rows(out) == [1, 2, 3] and CellStore(out, CELL).result()["status"] != "ok"
    return out


@pytest.fixture
def copy_of(tmp_path: Path) -> Iterator:
    yield lambda out: Path(shutil.copytree(out, tmp_path / out.name, symlinks=True))


def corrupt_line(path: Path, number: int, junk: bytes = b'{"epoch": 2, "val_acc": 0.\xff\xfe garbage') -> bytes:
    lines = path.read_bytes().split(b"\n")
    original, lines[number - 1] = lines[number - 1], junk
    path.write_bytes(b"\n".join(lines))
    return original


# ---------------------------------------------------------------- 1. one reader, tolerant and loud


def test_every_reader_keeps_the_rows_around_a_corrupt_line(killed: Path, copy_of) -> None:
    out = copy_of(killed)
    epochs = CellStore(out, CELL).epochs_path
    CellStore(out, CELL).result_path.unlink()  # a cell still running, as far as readers can tell
    corrupt_line(epochs, 2)
    where = re.escape(f"{epochs}:2: not UTF-8")
    with pytest.warns(ResultWarning, match=where):
        assert rows(out) == [1, 3]  # the store: rows after the bad line are read
    with pytest.warns(ResultWarning, match=where):
        loaded = load_results([out])
    assert loaded.epochs.epoch.tolist() == [1, 3]
    assert any("epochs.jsonl:2: not UTF-8" in w for w in loaded.cells.recorded_warnings[0])
    with pytest.warns(ResultWarning, match=where):
        side = compare.load_side(out, compare.Options(keep_warmup=True))
    assert len(side.series[f"{CELL}/throughput_img_s"].samples) == 2
    # A newer schema is refused by all of them alike, naming the file and line.
    epochs.write_text(epochs.read_text(errors="replace").replace('"schema_version": 1', '"schema_version": 9', 1))
    newer = re.escape(f"{epochs}:1: schema_version 9 is newer than this harness reads (1)")
    with pytest.raises(store.SchemaError, match=newer):
        store.read_epochs(epochs)
    with pytest.raises(ValueError, match=newer):
        load_results([out])
    with pytest.raises(ValueError, match=newer):
        compare.load_side(out)


def test_logs_with_undecodable_names_are_written(tmp_path: Path) -> None:
    name = os.fsdecode(b"photo-\xff.jpg")  # what a non-UTF-8 file name looks like to Python
    CellStore(tmp_path, "c").write_log("error.log", f"FileNotFoundError: {name}\n")
    assert (tmp_path / "cells" / "c" / "error.log").read_text() == "FileNotFoundError: photo-\\udcff.jpg\n"


# ---------------------------------------------------------------- 2. --resume on a corrupt line


@pytest.mark.slow
def test_resume_keeps_valid_rows_after_a_corrupt_line(killed: Path, photos: Path, copy_of) -> None:
    out = copy_of(killed)
    cell = CellStore(out, CELL)
    original = corrupt_line(cell.epochs_path, 2)
    done = run_harness("run", "--suite", suite(out.parent), "--data", photos, "--out", out, "--resume")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{cell.epochs_path}:2: not UTF-8; moved to epochs.corrupt.jsonl" in done.stderr
    assert rows(out) == [1, 3, 4]  # resumed from the epoch-3 checkpoint; epoch 3's row survived
    assert cell.result()["status"] == "ok"
    aside = [json.loads(line) for line in cell.corrupt_path.read_text().splitlines()]
    assert [(a["line"], a["problem"]) for a in aside] == [(2, "not UTF-8")]
    assert aside[0]["text"].startswith('{"epoch": 2, "val_acc": 0.\\xff\\xfe')
    assert original.startswith(b'{"schema_version": 1')


def test_resume_without_an_agreeing_checkpoint_restarts_and_keeps_the_old_rows(killed: Path, copy_of) -> None:
    out = copy_of(killed)
    cell = CellStore(out, CELL)
    corrupt_line(cell.epochs_path, 3)  # the checkpoint's own row: the checkpoint no longer agrees with the rows
    messages = cell.prepare_resume()
    assert any("not resumed from" in m for m in messages) and any("restarts from epoch 1" in m for m in messages)
    assert not cell.checkpoint_path.exists() and len(list(cell.dir.glob("checkpoint.pt.stale-*"))) == 1
    stale = list(cell.dir.glob("epochs.stale-*.jsonl"))
    assert [json.loads(line)["epoch"] for line in stale[0].read_text().splitlines()] == [1, 2]
    assert json.loads(cell.corrupt_path.read_text())["line"] == 3


def test_truncate_moves_corrupt_lines_aside(tmp_path: Path) -> None:
    cell = CellStore(tmp_path, "c")
    good = [json.dumps({"schema_version": 1, "epoch": e, "wall_time_s": e}) for e in (1, 2, 3)]
    cell.dir.mkdir(parents=True)
    cell.epochs_path.write_text("\n".join([good[0], "[1, 2", good[1], good[2], '{"epoch": 4, "sche']))
    messages = cell.truncate_epochs(2)
    assert [m.split(": ", 1)[0].rsplit(":", 1)[1] for m in messages] == ["2", "5"]
    assert cell.epochs_path.read_text() == good[0] + "\n" + good[1] + "\n"
    aside = [json.loads(x)["text"] for x in cell.corrupt_path.read_text().splitlines()]
    assert aside == ["[1, 2", '{"epoch": 4, "sche']


# ---------------------------------------------------------------- 3. one run per output directory


def test_a_second_run_on_a_locked_output_exits_2_naming_the_holder(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with OutputLock(out, "harness run --suite held-by-the-test"):
        with pytest.raises(OutputLocked, match=f"pid {os.getpid()} on "):
            OutputLock(out, "again")
        done = run_harness("run", "--suite", suite(tmp_path), "--data", photos, "--out", out, "--resume")
        assert done.returncode == 2, done.stdout + done.stderr
        assert f"pid {os.getpid()}" in done.stderr and "held-by-the-test" in done.stderr
        assert not (out / "cells").exists()
    OutputLock(out, "after release").release()  # released with its holder
    (tmp_path / "file").write_text("x")
    with pytest.raises(store.StoreError, match="cannot use as the output directory"):
        OutputLock(tmp_path / "file" / "out", "under a file")


# ---------------------------------------------------------------- 4. validation up front


@pytest.fixture(scope="module")
def manager():
    from harness.plugins import get_manager

    return get_manager()


def bad_suite(tmp_path: Path, old: str, new: str) -> Path:
    """The test suite (plus a DDP backend variant) with ``old`` replaced; tables after a blank line go at the end."""
    text = SUITE.format(name="faults", epochs=2, batch=8) + '[backends.ddp]\nuse = "torch"\nnproc = 2\n'
    assert old in text
    new, _, tables = new.partition("\n\n")
    path = tmp_path / "bad.toml"
    path.write_text(text.replace(old, new, 1) + tables)
    return path


@pytest.mark.parametrize("old,new,message", [
    ("epochs = 2", "epochs = 0", "key 'epochs': expected a positive integer, got 0"),
    ("image_size = 32", "image_size = 0", "key 'image_size': expected an integer from 1 to 4096, got 0"),
    ("image_size = 32", "image_size = 32\nsubset = 0", "key 'subset': expected a positive integer, got 0"),
    ("image_size = 32", "image_size = 32\nseed = -1", "key 'seed': expected an integer from 0 to 4294967295, got -1"),
    ("image_size = 32", "image_size = 32\nnproc = 0", "key 'nproc': expected a positive integer, got 0"),
    ("image_size = 32", "image_size = 32\ntimeout_s = 0", "key 'timeout_s': expected a positive number"),
    ("batch_size = 8", "batch_size = 0", "key 'recipe.batch_size': expected a positive integer, got 0"),
    ("batch_size = 8", "batch_size = 8, accumulation = 0", "key 'recipe.accumulation': expected a positive integer"),
    ("workers = 0", "workers = -1", "key 'loaders.tv.workers': expected a non-negative integer, got -1"),
    ("nproc = 2", "nproc = -2", "key 'backends.ddp.nproc': expected a positive integer, got -2"),
    ('name = "faults"', 'name = "../../x"', "key 'name': '../../x': use letters, digits and _ . + -"),
    ('name = "faults"', 'name = ".hidden"', "key 'name': '.hidden'"),
    ('backend = ["torch"]', 'backend = ["torch", "torch"]', "key 'matrix.backend': 'torch' is listed twice"),
    ('loader = ["tv"]', 'loader = ["tv/a", "tv_a"]\n\n[loaders."tv/a"]\nuse = "torchvision"\n[loaders.tv_a]\n'
                        'use = "torchvision"\n',
     "key 'matrix.loader': loader 'tv/a' and loader 'tv_a' both give the cell id 'resnet10t-tv_a-torch-fp32'"),
])
def test_bad_counts_names_and_colliding_ids_are_refused(manager, tmp_path: Path, old: str, new: str,
                                                        message: str) -> None:
    from harness.suite import SuiteError, expand

    with pytest.raises(SuiteError, match=re.escape(message)):
        expand(bad_suite(tmp_path, old, new), manager)


def test_zero_overrides_are_errors_not_the_suite_value(manager, tmp_path: Path) -> None:
    from harness.suite import SuiteError, expand

    path = bad_suite(tmp_path, "epochs = 2", "epochs = 2")
    for key, value in (("epochs", 0), ("nproc", 0), ("seed", -1)):
        with pytest.raises(SuiteError, match=f"--{key}: expected a"):
            expand(path, manager, **{key: value})
    assert {c.seed for c in expand(path, manager, seed=0).cells} == {0}
    for flag, value in (("--epochs", "0"), ("--nproc", "0"), ("--seed", "-1"), ("--epochs", "two")):
        done = run_harness("run", "--suite", path, "--out", tmp_path / "out", flag, value)
        assert done.returncode == 2 and f"argument {flag}: expected" in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_cell_that_trains_nothing_fails(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = run_harness("run", "--suite", suite(tmp_path, epochs=1, batch=32), "--data", photos, "--out", out)
    assert done.returncode == 1, done.stdout + done.stderr
    result = CellStore(out, CELL).result()
    assert result["status"] == "failed"
    assert "0 training batches: 27 photos < batch 32 with drop_last" in result["reason"]
    assert rows(out) == []


# ---------------------------------------------------------------- 5. --resume compares the settings


@pytest.mark.slow
def test_resume_refuses_changed_settings_unless_rerun_changed(killed: Path, photos: Path, copy_of) -> None:
    out = copy_of(killed)
    before = CellStore(out, CELL).epochs_path.read_bytes()
    done = run_harness("run", "--suite", suite(out.parent), "--data", photos, "--out", out, "--resume",
                       "--epochs", "1", "--seed", "3")
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"{CELL}: epochs 4 -> 1, seed 0 -> 3" in done.stderr and "--rerun-changed" in done.stderr
    assert CellStore(out, CELL).epochs_path.read_bytes() == before  # nothing touched
    done = run_harness("run", "--suite", suite(out.parent), "--data", photos, "--out", out, "--resume",
                       "--epochs", "1", "--seed", "3", "--rerun-changed")
    assert done.returncode == 0, done.stdout + done.stderr
    (old,) = (out / "cells").glob(f"{CELL}.old-*")
    assert (old / "epochs.jsonl").read_bytes() == before  # the old results, moved aside, not deleted
    assert rows(out) == [1] and CellStore(out, CELL).result()["cell"]["seed"] == 3
    assert load_results([out]).cells.cell_id.tolist() == [CELL]  # readers leave the set-aside cell out


def test_a_recipe_field_added_since_the_results_were_written_compares_as_its_default() -> None:
    from dataclasses import asdict

    from harness.api import Recipe
    from harness.store import spec_changes

    written_before = {"recipe": {k: v for k, v in asdict(Recipe()).items() if k != "min_crop_area"}, "epochs": 2}
    assert spec_changes(written_before, {"recipe": asdict(Recipe()), "epochs": 2}) == []
    assert spec_changes(written_before, {"recipe": asdict(Recipe(min_crop_area=0.5)), "epochs": 2}) == [
        "recipe.min_crop_area 0.08 -> 0.5"]


# ---------------------------------------------------------------- 6. data prepare deletes only what it wrote


def prepare_args(*argv: str):
    import argparse

    parser = argparse.ArgumentParser()
    configure(parser)
    return parser.parse_args(["flowers", "--quiet", *argv])


def test_prepare_removes_only_its_own_marked_leftovers(photos: Path, tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()  # a free pid: a prepare that died
    mine = {"tool": "harness data prepare", "pid": dead.pid, "host": os.uname().nodename}
    for name in (f"out.tmp-{dead.pid}", f"out.old-{dead.pid}"):
        (tmp_path / name / "train").mkdir(parents=True)
        (tmp_path / name / MARKER).write_text(json.dumps(mine))
    (tmp_path / "out.old-backup").mkdir()
    (tmp_path / "out.old-backup" / "precious.jpg").write_text("the user's")
    (tmp_path / "out.tmp-1").mkdir()  # unmarked: not prepare's, whatever its name says
    (tmp_path / "out.tmp-1" / "notes.txt").write_text("the user's")
    (tmp_path / f"out.tmp-{dead.pid + 100000}").mkdir()  # empty, unmarked: a prepare killed right after mkdir
    prepare(tmp_path / "out", Options(source=str(photos)), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "out.old-backup", "out.tmp-1"]
    assert (tmp_path / "out.old-backup" / "precious.jpg").read_text() == "the user's"
    alive = subprocess.Popen(["sleep", "30"])
    try:
        (tmp_path / f"out2.tmp-{alive.pid}").mkdir()
        (tmp_path / f"out2.tmp-{alive.pid}" / MARKER).write_text(json.dumps({**mine, "pid": alive.pid}))
        with pytest.raises(DataError, match=f"another prepare \\(pid {alive.pid}\\)"):
            prepare(tmp_path / "out2", Options(source=str(photos)), progress=False)
    finally:
        alive.kill()
        alive.wait()


def test_prepare_refuses_to_rebuild_over_files_it_did_not_write(photos: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    args = prepare_args("--out", str(out), "--source", str(photos))
    assert prepare_command(args) == 0
    notes = out / "notes.txt"
    notes.write_text("the user's")
    assert prepare_command(args) == 0 and notes.exists()  # up to date: nothing rebuilt, nothing removed
    mine = out / "train" / "class_0" / "mine.jpg"
    shutil.copyfile(photos / "class_1" / "0000.jpg", mine)  # the output no longer matches its manifest
    capsys.readouterr()
    assert prepare_command(args) == 2
    err = capsys.readouterr().err
    assert f"must be rebuilt ({mine}: not in the manifest)" in err
    assert f"holds {notes}, which harness data prepare did not write" in err
    assert mine.exists() and notes.exists()
    assert prepare_command(prepare_args("--out", str(out), "--source", str(photos), "--force")) == 0
    (kept,) = tmp_path.glob("out.old-*")
    assert f"kept as {kept}" in capsys.readouterr().out
    assert (kept / "train" / "class_0" / "mine.jpg").exists() and (kept / "notes.txt").exists()
    assert not (kept / MARKER).exists()  # unmarked: no later prepare removes it
    assert not (out / "train" / "class_0" / "mine.jpg").exists()
    bad = prepare_args("--out", str(tmp_path / "x"), "--source", str(tmp_path / "nowhere"))
    assert prepare_command(bad) == 2  # bad input: exit 2
    capsys.readouterr()
    assert prepare_command(prepare_args("--out", str(kept / "notes.txt" / "x"), "--source", str(photos))) == 2
    assert f"{kept / 'notes.txt'} is a file, not a folder" in capsys.readouterr().err


# ---------------------------------------------------------------- 7. archives


def tar_with(path: Path, photos: Path, members: list[tuple[str, str | bytes | None, str | None]]) -> Path:
    """A .tgz of ``photos`` under ``flowers/`` plus ``members``: (name, file data or None, symlink target)."""
    with tarfile.open(path, "w:gz") as tf:
        tf.add(photos, arcname="flowers")
        for name, data, target in members:
            info = tarfile.TarInfo(name)
            if target is not None:
                info.type, info.linkname = tarfile.SYMTYPE, target
                tf.addfile(info)
            else:
                blob = data.encode() if isinstance(data, str) else data or b""
                info.size = len(blob)
                tf.addfile(info, io.BytesIO(blob))
    return path


def test_symlink_chain_out_of_the_target_is_refused(photos: Path, tmp_path: Path) -> None:
    chain = [("a", None, "."), ("a/b", None, ".."), ("a/b/c", None, ".."), ("a/b/c/evil.txt", "owned", None)]
    archive = tar_with(tmp_path / "chain.tgz", photos, chain)
    before = tree(tmp_path)
    with pytest.raises(DataError, match=re.escape(f"{archive}: refusing member 'a/b': link to '..' leaves the "
                                                  "target folder")):
        prepare(tmp_path / "out", Options(source=str(archive)), progress=False)
    assert tree(tmp_path) == before and not (tmp_path.parent / "evil.txt").exists()
    # Through a link that stays inside, then out: still refused, with the rule.
    inside = [("flowers/up", None, ".."), ("flowers/up/x", None, "../..")]
    with pytest.raises(DataError, match=re.escape("refusing member 'flowers/up/x': link to '../..' leaves")):
        prepare(tmp_path / "out", Options(source=str(tar_with(tmp_path / "in.tgz", photos, inside))), progress=False)


def test_relative_symlinks_inside_the_archive_are_kept_as_photos(photos: Path, tmp_path: Path) -> None:
    archive = tar_with(tmp_path / "links.tgz", photos, [("flowers/class_0/link.jpg", None, "0000.jpg")])
    result = prepare(tmp_path / "out", Options(source=str(archive), verify=False), progress=False)
    placed = [k for k in result.manifest["files"] if k.endswith("/link.jpg")]
    assert len(placed) == 1 and not (tmp_path / "out" / placed[0]).is_symlink()
    assert (tmp_path / "out" / placed[0]).read_bytes() == (photos / "class_0" / "0000.jpg").read_bytes()
    folder = tar_with(tmp_path / "dir.tgz", photos, [("flowers/class_3", None, "class_0")])
    with pytest.raises(DataError, match="refusing member 'flowers/class_3': link to a folder"):
        prepare(tmp_path / "out2", Options(source=str(folder), verify=False), progress=False)


@pytest.mark.parametrize("kind", ["tgz", "zip"])
def test_archives_over_the_limits_are_refused(photos: Path, tmp_path: Path, kind: str,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    big = os.urandom(700_000)
    if kind == "zip":
        archive = tmp_path / "big.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            for p in sorted(photos.rglob("*.jpg")):
                zf.write(p, f"flowers/{p.relative_to(photos)}")
            zf.writestr("flowers/class_0/big1.jpg", big)
            zf.writestr("flowers/class_0/big2.jpg", big)
    else:
        archive = tar_with(tmp_path / "big.tgz", photos, [("flowers/class_0/big1.jpg", big, None),
                                                          ("flowers/class_0/big2.jpg", big, None)])
    before = tree(tmp_path)
    too_big = "refusing member 'flowers/class_0/big2.jpg': the archive would extract to more than 1 MiB (raise"
    with pytest.raises(DataError, match=re.escape(too_big)):
        prepare(tmp_path / "out", Options(source=str(archive)), progress=False, limits=Limits(max_bytes=1 << 20))
    with pytest.raises(DataError, match=re.escape("more than 10 members (raise the limit with --max-members)")):
        prepare(tmp_path / "out", Options(source=str(archive)), progress=False, limits=Limits(max_members=10))
    assert tree(tmp_path) == before
    assert prepare_command(prepare_args("--out", str(tmp_path / "out"), "--source", str(archive),
                                        "--max-members", "10")) == 2
    assert "--max-members" in capsys.readouterr().err
    # The defaults fit the flowers archive (~230 MB, ~3,700 members) with ample margin.
    assert Limits().max_bytes >= 10 * 230e6 and Limits().max_members >= 10 * 3700


# ---------------------------------------------------------------- 8. report and compare never crash


def test_report_and_compare_never_print_a_traceback(killed: Path, copy_of, tmp_path: Path) -> None:
    out = copy_of(killed)
    cell = CellStore(out, CELL)
    corrupt_line(cell.epochs_path, 1, b"\x00\x01 binary")
    (cell.dir / "cell.json").write_text('{"nproc": "many"}')
    cell.result_path.write_text("[1, 2, 3]")
    done = run_harness("report", out, "--out", tmp_path / "report", "--format", "csv")
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert f"harness: warning: {cell.epochs_path}:1: not valid JSON" in done.stderr
    done = run_harness("compare", out, out)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps({"machine_info": ["not", "a", "mapping"], "benchmarks": []}))
    for args in (("compare", bench, bench), ("report", bench, "--out", tmp_path / "r2")):
        done = run_harness(*args)
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


# Fills the output's file system (a real, tiny tmpfs) after the cell's first epoch: the kernel's ENOSPC, not a
# simulated one.
FILL_PLUGIN = """
import os
from harness.hookspecs import hookimpl

@hookimpl
def harness_epoch_end(cell, record, context):
    if record.epoch == 1 and "FAULTS_FILLER" in os.environ:
        with open(os.environ["FAULTS_FILLER"], "wb") as fh:
            try:
                while True:
                    fh.write(b"x" * 65536)
            except OSError:
                pass
"""


def tmpfs(mount: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at ``mount`` with ``options`` for the test's life (root only: CI runs as root)."""
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs ({options}) here: {done.stderr.decode(errors='replace').strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 192 MiB tmpfs: room for two checkpoints of the test model (~60 MB each)."""
    yield from tmpfs(tmp_path / "disk", "size=192m")


@pytest.mark.slow
def test_a_full_disk_fails_the_cell_the_run_says_so_and_resume_finishes(photos: Path, tmp_path: Path,
                                                                        small_disk: Path) -> None:
    (tmp_path / "fill_plugin.py").write_text(FILL_PLUGIN)
    out, filler = small_disk / "out", small_disk / "filler"
    plugin = {"plugin_modules": ["fill_plugin"], "pythonpath": [tmp_path]}
    full = run_harness("run", "--suite", suite(tmp_path, epochs=2), "--data", photos, "--out", out,
                       env={"FAULTS_FILLER": str(filler)}, **plugin)
    assert full.returncode == 1, full.stderr[-2000:]
    assert "1 cell: 0 ok, 0 skipped, 1 failed" in full.stdout
    # Recorded by the cell, by the runner from the cell's last words, or (no byte left) only in the runner's output.
    failed = CellStore(out, CELL).result()
    if failed is None:
        assert f"[{CELL}] failed: OSError while recording the cell: [Errno 28] No space left on device" in full.stdout
        assert full.stderr.splitlines()[-1].startswith(f"harness: could not write the report into {out}")
    else:
        assert failed["status"] == "failed"
        assert "is full: " in failed["reason"] or "No space left on device" in failed["reason"]
    assert rows(out)[0] == 1 and not list(out.rglob("*.tmp"))  # finished epochs are kept, no temporary file
    filler.unlink()  # the user frees space, and resumes
    freed = run_harness("run", "--suite", suite(tmp_path, epochs=2), "--data", photos, "--out", out, "--resume",
                        **plugin)
    assert freed.returncode == 0, freed.stdout[-3000:] + freed.stderr[-3000:]
    assert CellStore(out, CELL).result()["status"] == "ok" and rows(out) == [1, 2]
    assert (out / "summary.csv").exists()


def test_a_16_bit_png_decodes_and_a_broken_photo_is_named(tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from harness_plugins.torchvision_loader import decode

    deep = tmp_path / "deep.png"
    Image.fromarray(np.arange(600, dtype=np.uint16).reshape(20, 30) * 100).save(deep)  # mode I;16
    image = decode(deep)
    assert image.dtype.is_floating_point is False and str(image.dtype) == "torch.uint8"
    assert tuple(image.shape) == (3, 20, 30) and int(image.max()) > 200  # scaled down, not truncated
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    with pytest.raises(RuntimeError, match=re.escape(f"{broken}: cannot decode image")):
        decode(broken)


DALI_SUITE = """
name = "dali-leftovers"
epochs = 1
image_size = 32
recipe = { base = "default", batch_size = 8, randaugment = true }
[matrix]
model = ["resnet10t"]
loader = ["dali"]
backend = ["torch"]
precision = ["fp32"]
"""


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("nvidia.dali") is None, reason="nvidia-dali is not installed")
def test_a_dali_cell_leaves_nothing_in_the_temporary_folder(photos: Path, tmp_path: Path) -> None:
    """DALI's conditionals (RandAugment) write autograph files into the temporary folder: the cell's own."""
    (tmp_path / "suite.toml").write_text(DALI_SUITE)
    shared = tmp_path / "tmp"
    shared.mkdir()
    done = run_harness("run", "--suite", tmp_path / "suite.toml", "--data", photos, "--out", tmp_path / "out",
                       env={"TMPDIR": str(shared)})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert CellStore(tmp_path / "out", "resnet10t-dali-torch-fp32").result()["status"] == "ok"
    assert not list(shared.glob("**/__autograph_generated_file*")), sorted(shared.rglob("*"))


def test_bad_paths_get_one_line_errors(photos: Path, tmp_path: Path) -> None:
    (tmp_path / "latin1.toml").write_bytes('name = "fleurs \xe9"\n'.encode("latin-1"))
    a_file = tmp_path / "a-file.txt"
    a_file.write_text("not photos")
    cases = {
        ("run", "--suite", tmp_path, "--data", photos): "is a directory; expected a suite TOML file",
        ("run", "--suite", tmp_path / "latin1.toml", "--data", photos): "not UTF-8 text",
        ("run", "--suite", suite(tmp_path), "--data", a_file, "--out", tmp_path / "o"): "is a file; expected a data",
        ("env", "--results", tmp_path / "absent"): "no such result directory",
    }
    for args, message in cases.items():
        done = run_harness(*args)
        assert done.returncode == 2 and "Traceback" not in done.stderr, (args, done.stderr[-1500:])
        assert message in done.stderr.strip().splitlines()[-1], (args, done.stderr)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("nvidia.dali") is None, reason="nvidia-dali is not installed")
def test_a_photo_dali_cannot_decode_is_named(photos: Path, tmp_path: Path) -> None:
    broken = shutil.copytree(photos, tmp_path / "photos")
    victim = sorted(broken.rglob("*.jpg"))[0]
    victim.write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 64)  # a JPEG header, then nothing decodable
    suite_file = tmp_path / "suite.toml"
    suite_file.write_text(DALI_SUITE.replace("randaugment = true", "randaugment = false"))
    done = run_harness("run", "--suite", suite_file, "--data", broken, "--out", tmp_path / "out")
    assert done.returncode == 1
    reason = CellStore(tmp_path / "out", "resnet10t-dali-torch-fp32").result()["reason"]
    assert f"{victim}: " in reason, reason


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("nvidia.dali") is None or importlib.util.find_spec("tfrecord") is None,
                    reason="nvidia-dali or tfrecord is not installed")
@pytest.mark.parametrize("layout", ["prepared", "raw"])
def test_a_photo_dali_cannot_decode_from_a_tfrecord_is_named(photos: Path, tmp_path: Path, layout: str) -> None:
    """A truncated JPEG (whole header, so the TFRecord writer takes it) in a TFRecord shard: the cell's one-line
    reason names the photo it was written from, the shard and the record's number in it."""
    from harness.datasets import discover, select
    from harness.prepare.tfrecord import write_tfrecords

    raw = shutil.copytree(photos, tmp_path / "photos")
    victim = select(discover(raw), None, 0)["validation"][1].path  # validation reads every record each epoch
    victim.write_bytes(victim.read_bytes()[:-200])  # no end-of-image marker: DALI cannot decode it
    cache = tmp_path / "cache"
    if layout == "prepared":  # as `harness data prepare --tfrecord` lays it out (prepare itself would leave it out)
        data = tmp_path / "prepared"
        for split, samples in select(discover(raw), None, 0).items():
            for s in samples:
                dest = data / split / s.path.parent.name / s.path.name
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(s.path, dest)
        victim = data / "validation" / victim.parent.name / victim.name
        write_tfrecords(discover(data), data)
        shard = data / "tfrecord" / "validation-00000-of-00001"
    else:  # raw class folders: the loader writes the TFRecords once into the harness cache
        data = raw
    number = [s.path.name for s in select(discover(data), None, 0)["validation"]].index(victim.name)
    suite_file = tmp_path / "suite.toml"
    suite_file.write_text(DALI_SUITE.replace("randaugment = true", "randaugment = false")
                          + '[loaders.dali]\nreader = "tfrecord"\n')
    done = run_harness("run", "--suite", suite_file, "--data", data, "--out", tmp_path / "out",
                       env={"HARNESS_CACHE": str(cache)})
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    reason = CellStore(tmp_path / "out", "resnet10t-dali-torch-fp32").result()["reason"]
    if layout == "raw":
        (shard,) = cache.glob("tfrecord/*/tfrecord/validation-00000-of-00001")
    assert "\n" not in reason, reason
    assert f"{victim} (record {number} of {shard}): truncated JPEG: no end-of-image marker: " in reason, reason


@pytest.fixture
def read_only_disk(tmp_path: Path) -> Iterator[Path]:
    """A read-only tmpfs: a chmod 0o500 folder would not do, root writes into it anyway (CI runs as root)."""
    yield from tmpfs(tmp_path / "read-only", "ro,size=1m")


@pytest.mark.parametrize("where", ["under a file", "read-only"])
def test_an_output_that_cannot_be_written_is_one_line_exit_2(killed: Path, photos: Path, tmp_path: Path,
                                                             where: str, request: pytest.FixtureRequest) -> None:
    if where == "read-only":
        out = request.getfixturevalue("read_only_disk") / "out"
    else:
        (tmp_path / "a-file").write_text("x")
        out = tmp_path / "a-file" / "out"
    for args in (("report", killed, "--out", out, "--format", "csv"),
                 ("run", "--suite", suite(tmp_path), "--data", photos, "--out", out)):
        done = run_harness(*args)
        assert done.returncode == 2 and "Traceback" not in done.stderr, (args, done.stderr[-1500:])
        assert len(done.stderr.strip().splitlines()) == 1 and str(out) in done.stderr, (args, done.stderr)
        assert ("Read-only file system" if where == "read-only" else "Not a directory") in done.stderr, done.stderr
    assert not out.exists()


# ---------------------------------------------------------------- issue 32: untrusted checkpoints, bounded reasons


def test_a_checkpoint_that_would_run_code_is_refused_on_resume(killed: Path, photos: Path, copy_of) -> None:
    out = copy_of(killed)
    cell = CellStore(out, CELL)
    planted, marker = cell.checkpoint_path / "torch.pt", out.parent / "code-ran"
    plant_code(planted, marker)
    done = run_harness("run", "--suite", suite(out.parent), "--data", photos, "--out", out, "--resume")
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert not marker.exists()
    result = cell.result()
    assert result["status"] == "failed" and "\n" not in result["reason"], result["reason"]
    assert result["reason"].startswith(f"UnsafeCheckpoint: {planted}: refused, it holds more than weights "
                                       "(unsupported GLOBAL posix.system"), result["reason"]


def test_a_long_or_multi_line_reason_is_recorded_as_one_short_line(tmp_path: Path) -> None:
    cell = CellStore(tmp_path, "c")
    spec = CellSpec(id="c", suite="s", model="m", loader="l", backend="b", precision="fp32", loader_plugin="l",
                    backend_plugin="b", epochs=1, image_size=32, data="", seed=0, recipe=Recipe())
    traceback = "DataError: photo.jpg: truncated\n" + "  File 'x.py', line 1, in f\n" * 80
    cell.write_result(spec, {}, "failed", traceback)
    reason = cell.result()["reason"]
    assert reason == "DataError: photo.jpg: truncated [... full text: cells/c/reason.log]"
    assert (cell.dir / store.REASON_LOG).read_text() == traceback
    cell.write_result(spec, {}, "failed", "y" * 10_000)
    assert len(cell.result()["reason"]) == store.REASON_CHARS
    short = "a deliberate reason, kept as it is"
    cell.write_result(spec, {}, "skipped", short)
    assert cell.result()["reason"] == short


# Prints one 20 MiB line, then dies without a result: the runner records the cell's last words as its reason.
SHOUT_PLUGIN = """
import os
from harness.hookspecs import hookimpl

@hookimpl
def harness_run_start(cell, context):
    print("x" * (20 << 20), flush=True)
    os._exit(3)
"""


def test_a_cell_that_prints_a_20_mib_line_gives_small_results_and_report(photos: Path, tmp_path: Path) -> None:
    (tmp_path / "shout_plugin.py").write_text(SHOUT_PLUGIN)
    out = tmp_path / "out"
    done = run_harness("run", "--suite", suite(tmp_path, epochs=1), "--data", photos, "--out", out,
                       plugin_modules=["shout_plugin"], pythonpath=[tmp_path])
    assert done.returncode == 1, done.stderr[-2000:]
    cell = CellStore(out, CELL)
    reason = cell.result()["reason"]
    assert reason.startswith("cell process exited with code 3: ") and len(reason) == store.REASON_CHARS
    assert "x" * 100 in reason, reason
    assert reason.endswith(f"[... full text: cells/{CELL}/reason.log]")
    assert "x" * (20 << 20) in (cell.dir / store.REASON_LOG).read_text()
    for name in ("result.json", "summary.md", "summary.csv", "report.html"):
        path = cell.result_path if name == "result.json" else out / name
        assert path.stat().st_size < 2 << 20, name


def test_an_output_inside_the_data_or_data_inside_the_output_is_refused(photos: Path, tmp_path: Path) -> None:
    data = Path(shutil.copytree(photos, tmp_path / "photos"))
    before = tree(data)
    done = run_harness("run", "--suite", suite(tmp_path), "--data", data, "--out", data / "runs")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert f"--out {data / 'runs'} is inside --data {data}: " in done.stderr
    assert tree(data) == before  # nothing written
    (tmp_path / "link").symlink_to(data)
    with pytest.raises(DataError, match="is inside --data"):
        check_apart(data, tmp_path / "link" / "out")
    with pytest.raises(DataError, match=f"^--data {data} is inside --out {tmp_path}: "):
        check_apart(data, tmp_path)
    check_apart(data, tmp_path / "photos-out")  # a sibling whose name starts the same is apart
