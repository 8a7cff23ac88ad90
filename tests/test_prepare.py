"""``harness data prepare flowers``: the 4:1 split of the real photos, duplicates, bad files,
unsafe archives, TFRecord + DALI index files, idempotence and crash safety.

The full real set (linked, never copied into the repo) is prepared twice (from the folder with
``--tfrecord``, and from a ``.tgz`` built here), and the shipped checksums and duplicates are
checked on real photos; the mechanics (bad files, layouts, rebuilds, archives, shards) are tested on
small folders of generated photos named as the flowers' classes, so they run without the real set.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import zipfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.datasets import DataError, discover
from harness.prepare import (
    FLOWERS_URL,
    MANIFEST,
    MARKER,
    ChecksumError,
    Options,
    Result,
    command,
    configure,
    prepare,
    read_tfrecords,
    tfrecord_files,
)
from harness.prepare.scan import check_image
from harness.prepare.sources import known_checksums, resolve_source
from harness.prepare.tfrecord import shard_ranges
from harness.testing import make_photos

# The tutorial's reported counts (train, validation) for the flowers photos at scale 4.
TUTORIAL = {"roses": (512, 129), "sunflowers": (559, 140), "tulips": (639, 160), "daisy": (506, 127),
            "dandelion": (718, 180)}
# Byte-identical pairs, from the data set's SOURCE.md.
DUPLICATE_PAIRS = {
    frozenset({"roses/15922772266_1167a06620.jpg", "tulips/15922772266_1167a06620.jpg"}),
    frozenset({"sunflowers/14889392928_9742aed45b_m.jpg", "sunflowers/15066430311_fb57fa92b0_m.jpg"}),
    frozenset({"sunflowers/15069459615_7e0fd61914_n.jpg", "sunflowers/15072973261_73e2912ef2_n.jpg"}),
}
QUIET = {"progress": False}
FLOWER_CLASSES = ("daisy", "dandelion", "roses", "sunflowers", "tulips")


def link_photos(photos: Path, dest: Path, per_class: int, classes: tuple[str, ...] = ("daisy", "roses", "tulips"),
                extra: tuple[str, ...] = ()) -> Path:
    """``dest/<class>/`` with hard links to the first ``per_class`` photos of each class of ``photos`` (+ ``extra``)."""
    for cls in classes:
        (dest / cls).mkdir(parents=True, exist_ok=True)
        for p in sorted((photos / cls).iterdir())[:per_class]:
            _link(p, dest / cls / p.name)
    for rel in extra:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        _link(photos / rel, dest / rel)
    return dest


def _link(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except OSError:
        shutil.copyfile(src, dest)


def tree(path: Path) -> set[str]:
    return {p.relative_to(path).as_posix() for p in path.rglob("*")}


def written_outside(before: set[str], after: set[str], out: str = "out") -> set[str]:
    return {p for p in after - before if p != out and not p.startswith(out + "/")}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def names(root: Path) -> dict[str, set[tuple[str, str]]]:
    """split -> {(class, file name)} as the loaders see ``root`` (prepared or raw)."""
    ds = discover(root)
    return {s: {(ds.classes[x.label], x.path.name) for x in xs} for s, xs in ds.splits.items()}


def first_photo(photos: Path, cls: str = "daisy") -> Path:
    return sorted((photos / cls).iterdir())[0]


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated photos in the flowers' five class folders, 12 per class (48 px JPEGs, 2 kB each)."""
    root = make_photos(tmp_path_factory.mktemp("generated") / "flowers", classes=len(FLOWER_CLASSES), per_class=12)
    for index, name in enumerate(FLOWER_CLASSES):
        (root / f"class_{index}").rename(root / name)
    return root


@pytest.fixture(scope="module")
def full(photos: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Result]:
    """The real photos prepared from their folder, with TFRecords (once per module)."""
    out = tmp_path_factory.mktemp("full") / "flowers"
    yield prepare(out, Options(source=str(photos), tfrecord=True), **QUIET)
    shutil.rmtree(out / "tfrecord")  # 230 MB: not worth keeping in pytest's retained temporary folders


# --- the full real set ---------------------------------------------------------------------------------------

def test_full_split_gives_the_tutorial_counts(full: Result) -> None:
    m = full.manifest
    assert full.status == "prepared"
    assert {c: (m["counts"]["train"][c], m["counts"]["validation"][c]) for c in m["classes"]} == TUTORIAL
    assert m["counts"]["total"] == {"train": 2934, "validation": 736}
    ds = discover(full.out)
    assert ds.prepared and (len(ds.splits["train"]), len(ds.splits["validation"])) == (2934, 736)
    assert (m["split"]["seed"], m["split"]["scale"]) == (0, 4)
    assert m["excluded"] == [] and m["source"]["verified"]["matched"] == 3670
    assert (full.out / "LICENSE.txt").is_file()


def test_full_split_is_the_raw_folder_split(full: Result, photos: Path) -> None:
    """A loader given the raw class folders puts every photo in the same split as the prepared folders."""
    assert names(full.out) == names(photos)


def test_full_duplicates_are_reported_and_kept(full: Result) -> None:
    dup = full.manifest["duplicates"]
    assert dup["policy"] == "keep" and dup["dropped"] == []
    assert {frozenset(g["files"]) for g in dup["groups"]} == DUPLICATE_PAIRS
    for g in dup["groups"]:
        classes = {f.split("/")[0] for f in g["files"]}
        splits = {f.split("/")[0] for f in g["placed"]}
        assert ("across_classes" in g["kinds"]) == (len(classes) > 1)
        assert ("within_class" in g["kinds"]) == (len(classes) == 1)
        assert ("across_splits" in g["kinds"]) == (len(splits) > 1)
        assert [f.split("/", 1)[1] for f in g["placed"]] == g["files"]
        assert all((full.out / f).is_file() for f in g["placed"])


def test_full_photos_are_hard_links_with_shipped_checksums(full: Result, photos: Path) -> None:
    m, known = full.manifest, known_checksums("flowers")
    assert m["placement"] == {"hardlink": 3670}
    assert len(m["files"]) == 3670
    for key, entry in m["files"].items():
        assert entry["sha256"] == known[entry["source"]]
        assert (full.out / key).stat().st_ino == (photos / entry["source"]).stat().st_ino


def test_full_tfrecords_read_back_completely(full: Result) -> None:
    ds = discover(full.out)
    for split in ("train", "validation"):
        records = read_tfrecords(full.out, split)
        assert len(records) == len(ds.splits[split]) == full.manifest["tfrecord"][split]["records"]
        assert Counter(label for label, _ in records) == Counter(s.label for s in ds.splits[split])
        in_split = [e["sha256"] for k, e in full.manifest["files"].items() if k.startswith(split + "/")]
        assert Counter(sha(data) for _, data in records) == Counter(in_split)
        files, indexes = tfrecord_files(full.out, split)
        assert [f.name for f in files] == [f"{split}-{i:05d}-of-{len(files):05d}" for i in range(len(files))]
        for f, idx in zip(files, indexes, strict=True):
            assert f.stat().st_size <= 64 << 20
            rows = [tuple(map(int, line.split())) for line in idx.read_text().splitlines()]
            assert [o for o, _ in rows] == [sum(n for _, n in rows[:i]) for i in range(len(rows))]
            assert sum(n for _, n in rows) == f.stat().st_size
    assert len(tfrecord_files(full.out, "train")[0]) == 3  # ~185 MB in shards of at most 64 MiB


def test_tfrecord_features_are_imagenet_tools_style(full: Result) -> None:
    from PIL import Image
    from tfrecord.reader import tfrecord_loader

    files, _ = tfrecord_files(full.out, "validation")
    rec = next(iter(tfrecord_loader(str(files[0]), None)))
    classes = full.manifest["classes"]
    label = int(rec["image/class/label"][0])
    assert 1 <= label <= len(classes) and rec["image/class/text"].decode() == classes[label - 1]
    assert (rec["image/format"], rec["image/colorspace"], int(rec["image/channels"][0])) == (b"JPEG", b"RGB", 3)
    photo = full.out / "validation" / classes[label - 1] / rec["image/filename"].decode()
    assert bytes(rec["image/encoded"]) == photo.read_bytes()
    with Image.open(photo) as im:
        assert (int(rec["image/width"][0]), int(rec["image/height"][0])) == im.size


def test_rerun_on_prepared_dir_verifies_and_does_nothing(full: Result, photos: Path) -> None:
    stamp = (full.out / MANIFEST).stat().st_mtime_ns
    again = prepare(full.out, Options(source=str(photos), tfrecord=True), **QUIET)
    assert again.status == "up-to-date" and again.manifest == full.manifest
    assert (full.out / MANIFEST).stat().st_mtime_ns == stamp
    assert sorted(p.name for p in full.out.parent.iterdir()) == [full.out.name]


def test_tgz_of_the_real_photos_gives_the_same_split(full: Result, photos: Path, tmp_path: Path) -> None:
    archive = tmp_path / "flower_photos.tgz"
    with tarfile.open(archive, "w:gz", compresslevel=0) as tf:  # stored gzip blocks: JPEGs do not compress
        tf.add(photos, arcname="flower_photos")
    result = prepare(tmp_path / "out", Options(source=str(archive)), **QUIET)
    m = result.manifest
    assert m["counts"] == full.manifest["counts"]
    assert m["files"] == full.manifest["files"]  # same photos, same split, same checksums
    assert m["duplicates"]["groups"] == full.manifest["duplicates"]["groups"]
    assert m["placement"] == {"move": 3670} and m["source"]["root"] == "flower_photos"
    assert m["source"]["archive_sha256"] == sha(archive.read_bytes())
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [MARKER, "LICENSE.txt", MANIFEST, "train",
                                                                    "validation"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["flower_photos.tgz", "out"]
    archive.unlink()  # 232 MB
    shutil.rmtree(tmp_path / "out")


def test_killed_prepare_is_detected_and_redone(photos: Path, tmp_path: Path) -> None:
    """A real ``python -m harness.prepare`` killed halfway leaves no OUT; the next run cleans up and completes."""
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "harness.prepare", "flowers", "--out", str(out),
                             "--source", str(photos), "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    tmp = tmp_path / f"out.tmp-{proc.pid}"
    deadline = time.monotonic() + 60
    while not (tmp / MARKER).is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, err.decode()
    assert tmp.is_dir() and not out.exists()
    result = prepare(out, Options(source=str(photos)), **QUIET)
    assert result.status == "prepared" and result.manifest["counts"]["total"] == {"train": 2934, "validation": 736}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# --- small folders of generated photos -----------------------------------------------------------------------

def test_stale_leftovers_are_removed_and_live_ones_refused(generated: Path, tmp_path: Path) -> None:
    """Marked leftovers only (tests/test_faults.py: unmarked folders of those names are never removed)."""
    src = link_photos(generated, tmp_path / "src", 5)
    dead = subprocess.Popen(["true"])
    dead.wait()  # its pid is free: a leftover of a prepare that died
    mark = {"tool": "harness data prepare", "pid": dead.pid, "host": socket.gethostname()}
    (tmp_path / f"out.tmp-{dead.pid}" / "train").mkdir(parents=True)
    (tmp_path / f"out.old-{dead.pid}").mkdir()
    for name in (f"out.tmp-{dead.pid}", f"out.old-{dead.pid}"):
        (tmp_path / name / MARKER).write_text(json.dumps(mark))
    prepare(tmp_path / "out", Options(source=str(src)), **QUIET)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]
    alive = subprocess.Popen(["sleep", "30"])
    try:
        (tmp_path / f"out2.tmp-{alive.pid}").mkdir()
        (tmp_path / f"out2.tmp-{alive.pid}" / MARKER).write_text(json.dumps({**mark, "pid": alive.pid}))
        with pytest.raises(DataError, match=f"another prepare \\(pid {alive.pid}\\)"):
            prepare(tmp_path / "out2", Options(source=str(src)), **QUIET)
    finally:
        alive.kill()
        alive.wait()


def test_changed_options_or_missing_files_rebuild(generated: Path, tmp_path: Path) -> None:
    src = link_photos(generated, tmp_path / "src", 10)
    out = tmp_path / "out"
    first = prepare(out, Options(source=str(src)), **QUIET)
    assert first.manifest["counts"]["total"] == {"train": 24, "validation": 6}
    reseeded = prepare(out, Options(source=str(src), seed=1), **QUIET)
    assert reseeded.status == "prepared" and "seed 0 -> 1" in reseeded.reason
    assert names(out) == names_with_seed(src, 1)
    victim = next((out / "train" / "roses").iterdir())
    victim.unlink()
    again = prepare(out, Options(source=str(src), seed=1), **QUIET)
    assert again.status == "prepared" and str(victim) in again.reason and victim.is_file()
    (src / "roses" / "extra.jpg").write_bytes(sorted((generated / "daisy").iterdir())[-1].read_bytes())
    assert "source changed" in prepare(out, Options(source=str(src), seed=1), **QUIET).reason
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]


def names_with_seed(root: Path, seed: int) -> dict[str, set[tuple[str, str]]]:
    ds = discover(root, seed=seed)
    return {s: {(ds.classes[x.label], x.path.name) for x in xs} for s, xs in ds.splits.items()}


def test_out_that_is_not_a_prepared_dir_is_refused(generated: Path, tmp_path: Path) -> None:
    src = link_photos(generated, tmp_path / "src", 5)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "precious.txt").write_text("mine")
    with pytest.raises(DataError, match="exists and is not a prepared directory"):
        prepare(tmp_path / "out", Options(source=str(src)), **QUIET)
    assert (tmp_path / "out" / "precious.txt").read_text() == "mine"


def test_out_and_source_must_not_nest(generated: Path, tmp_path: Path) -> None:
    src = link_photos(generated, tmp_path / "src", 5)
    for out in (src / "prepared", tmp_path):
        with pytest.raises(DataError, match="must not lie inside one another"):
            prepare(out, Options(source=str(src)), **QUIET)
    assert sorted(p.name for p in src.iterdir()) == ["daisy", "roses", "tulips"]


def bad_source(photos: Path, root: Path) -> Path:
    """Three classes of 6 photos; roses also gets every kind of bad file."""
    src = link_photos(photos, root, 6)
    real = sorted((photos / "roses").iterdir())[10].read_bytes()
    (src / "roses" / "truncated.jpg").write_bytes(real[: len(real) // 2])
    (src / "roses" / "no_eoi.jpg").write_bytes(real[:-2])
    (src / "roses" / "notes.jpg").write_text("these are not pixels\n")
    (src / "roses" / "empty.jpg").write_bytes(b"")
    (src / "roses" / ".hidden.jpg").write_bytes(real)
    (src / "roses" / "readme.txt").write_text("about roses\n")
    (src / "roses" / "nested").mkdir()
    return src


BAD = {
    "roses/.hidden.jpg": "hidden file",
    "roses/empty.jpg": "empty file (0 bytes)",
    "roses/nested": "subfolder",
    "roses/no_eoi.jpg": "truncated JPEG",
    "roses/notes.jpg": "not an image",
    "roses/readme.txt": "not an image file name (.txt)",
    "roses/truncated.jpg": "truncated JPEG",
}


def test_bad_files_are_listed_and_excluded(generated: Path, tmp_path: Path) -> None:
    src = bad_source(generated, tmp_path / "src")
    before = tree(tmp_path)
    result = prepare(tmp_path / "out", Options(source=str(src)), **QUIET)
    excluded = {e["path"]: e["reason"] for e in result.manifest["excluded"]}
    assert excluded.keys() == BAD.keys()
    assert all(excluded[k].startswith(v) for k, v in BAD.items()), excluded
    assert written_outside(before, tree(tmp_path)) == set()
    clean = tmp_path / "clean"  # the source without its bad files, as a loader would split it
    for p in src.glob("*/*"):
        if p.relative_to(src).as_posix() not in BAD:
            (clean / p.parent.name).mkdir(parents=True, exist_ok=True)
            _link(p, clean / p.parent.name / p.name)
    assert names(tmp_path / "out") == names(clean)
    assert result.manifest["counts"]["total"] == {"train": 12, "validation": 6}


def test_strict_turns_bad_files_into_an_error(generated: Path, tmp_path: Path) -> None:
    src = bad_source(generated, tmp_path / "src")
    before = tree(tmp_path)
    with pytest.raises(DataError, match=r"roses/\.hidden\.jpg: hidden file \(--strict; 7 bad files in all\)"):
        prepare(tmp_path / "out", Options(source=str(src), strict=True), **QUIET)
    assert tree(tmp_path) == before


def test_check_image_on_whole_truncated_and_damaged_bytes(generated: Path) -> None:
    jpeg = first_photo(generated).read_bytes()
    assert check_image(jpeg) is None
    assert check_image(jpeg[: len(jpeg) // 2]) == "truncated JPEG: no end-of-image marker"
    assert check_image(jpeg[:-2]) == "truncated JPEG: no end-of-image marker"
    assert check_image(b"hello") == "not an image: no known image format"
    marker = bytearray(jpeg)
    marker[len(jpeg) // 2: len(jpeg) // 2 + 2] = b"\xff\xd8"  # a start-of-image marker inside the scan data
    assert check_image(bytes(marker)) == "corrupt image: broken data stream when reading image file"
    third = len(jpeg) // 3
    scrambled = bytearray(jpeg)
    scrambled[third: 2 * third] = (bytes(range(256)) * (third // 256 + 1))[:third]
    assert check_image(bytes(scrambled)) is None  # libjpeg decodes scrambled scan data (with a warning), as loaders do


@pytest.mark.parametrize("layout,message", [
    ("empty_class", "tulips: empty class folder"),
    ("one_class", "needs at least 2 class folders of images, found 1"),
    ("no_images", "it has no class folders"),
    ("loose_images", "images lie directly in it"),
    ("only_bad", "roses: no usable images in the class folder (hidden file; not an image: no known image format)"),
    ("already_split", "already split into train/ and validation/"),
    ("too_few", "roses: 1 usable photos leave the train split empty at scale 4:1"),
])
def test_unusable_layouts_are_errors_naming_the_path(generated: Path, tmp_path: Path, layout: str,
                                                     message: str) -> None:
    src = tmp_path / "src"
    if layout in ("empty_class", "only_bad", "too_few"):
        link_photos(generated, src, 5, classes=("daisy", "dandelion"))
    if layout == "empty_class":
        (src / "tulips").mkdir()
    elif layout == "one_class":
        link_photos(generated, src, 5, classes=("daisy",))
    elif layout == "no_images":
        src.mkdir()
        (src / "notes.txt").write_text("nothing here\n")
    elif layout == "loose_images":
        src.mkdir()
        shutil.copyfile(first_photo(generated), src / "a.jpg")
    elif layout == "only_bad":
        (src / "roses").mkdir()
        (src / "roses" / "x.jpg").write_text("text")
        (src / "roses" / ".DS_Store").write_bytes(b"\0\1")
    elif layout == "already_split":
        link_photos(generated, src / "train", 5)
        link_photos(generated, src / "validation", 5)
    elif layout == "too_few":
        link_photos(generated, src, 1, classes=("roses",))
    before = tree(tmp_path)
    with pytest.raises(DataError) as info:
        prepare(tmp_path / "out", Options(source=str(src)), **QUIET)
    assert message in str(info.value) and str(src) in str(info.value)
    assert tree(tmp_path) == before


def test_photo_differing_from_shipped_checksums_is_refused(photos: Path, tmp_path: Path) -> None:
    src = link_photos(photos, tmp_path / "src", 5)
    victim = sorted((src / "tulips").iterdir())[2]
    data = bytearray(victim.read_bytes())
    victim.unlink()
    data[-100] ^= 0xFF
    victim.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match=f"{victim}: SHA-256 differs from the shipped checksum list"):
        prepare(tmp_path / "out", Options(source=str(src)), **QUIET)
    assert not (tmp_path / "out").exists()
    accepted = prepare(tmp_path / "out", Options(source=str(src), verify=False), **QUIET)
    assert accepted.manifest["source"]["verified"] is None


def test_drop_duplicates(photos: Path, tmp_path: Path) -> None:
    extra = tuple(sorted(f for pair in DUPLICATE_PAIRS for f in pair))
    src = link_photos(photos, tmp_path / "src", 6, classes=("roses", "sunflowers", "tulips"), extra=extra)
    kept = prepare(tmp_path / "keep", Options(source=str(src)), **QUIET).manifest
    assert {frozenset(g["files"]) for g in kept["duplicates"]["groups"]} == DUPLICATE_PAIRS
    dropped = prepare(tmp_path / "drop", Options(source=str(src), drop_duplicates=True), **QUIET).manifest
    gone = set(dropped["duplicates"]["dropped"])
    assert {"roses/15922772266_1167a06620.jpg", "tulips/15922772266_1167a06620.jpg"} <= gone  # labels disagree
    assert len(gone) == 4  # plus one copy of each same-class pair
    on_disk = [sha(p.read_bytes()) for p in (tmp_path / "drop").glob("*/*/*.jpg")]
    assert len(on_disk) == len(set(on_disk)) == sum(dropped["counts"]["total"].values())
    assert sum(kept["counts"]["total"].values()) - sum(dropped["counts"]["total"].values()) == 4


# --- unsafe archives ------------------------------------------------------------------------------------------

def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], photos: Path) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for cls in ("daisy", "roses"):
            for p in sorted((photos / cls).iterdir())[:5]:
                tf.add(p, arcname=f"flower_photos/{cls}/{p.name}")
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _info(name: str, data: bytes = b"", **attrs) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.size = len(data) if attrs.get("type", tarfile.REGTYPE) == tarfile.REGTYPE else 0
    for k, v in attrs.items():
        setattr(info, k, v)
    return info, (data if info.size else None)


@pytest.mark.parametrize("case", ["dotdot", "absolute", "symlink_out", "symlink_abs", "hardlink_out", "device",
                                  "zip_dotdot", "zip_absolute"])
def test_unsafe_archive_members_are_refused_and_nothing_is_written(generated: Path, tmp_path: Path, case: str) -> None:
    jpeg = first_photo(generated).read_bytes()
    absolute = str(tmp_path / "abs_evil.jpg")
    member, tar_members = {
        "dotdot": ("../../evil.jpg", [_info("../../evil.jpg", jpeg)]),
        "absolute": (absolute, [_info(absolute, jpeg)]),
        "symlink_out": ("flower_photos/roses/esc", [_info("flower_photos/roses/esc", type=tarfile.SYMTYPE,
                                                          linkname="../../../.."),
                                                    _info("flower_photos/roses/esc/evil.jpg", jpeg)]),
        "symlink_abs": ("flower_photos/roses/passwd.jpg", [_info("flower_photos/roses/passwd.jpg",
                                                                 type=tarfile.SYMTYPE, linkname="/etc/passwd")]),
        "hardlink_out": ("flower_photos/roses/h.jpg", [_info("flower_photos/roses/h.jpg", type=tarfile.LNKTYPE,
                                                             linkname="../outside.jpg")]),
        "device": ("flower_photos/roses/dev.jpg", [_info("flower_photos/roses/dev.jpg", type=tarfile.CHRTYPE,
                                                         devmajor=1, devminor=3)]),
        "zip_dotdot": ("../../evil.jpg", None),
        "zip_absolute": (absolute, None),
    }[case]
    if tar_members is None:
        archive = tmp_path / "photos.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            for p in sorted((generated / "daisy").iterdir())[:5]:
                zf.write(p, f"flower_photos/daisy/{p.name}")
            zf.writestr(zipfile.ZipInfo(member), jpeg)
    else:
        archive = _tar(tmp_path / "photos.tgz", tar_members, generated)
    before = tree(tmp_path)
    with pytest.raises(DataError, match="refusing member") as info:
        prepare(tmp_path / "out", Options(source=str(archive)), **QUIET)
    assert repr(member) in str(info.value) and str(archive) in str(info.value)
    assert tree(tmp_path) == before
    assert not (tmp_path.parent / "evil.jpg").exists() and not Path(absolute).exists()


@pytest.mark.parametrize("suffix", [".tgz", ".zip"])
def test_truncated_archive_is_an_error(generated: Path, tmp_path: Path, suffix: str) -> None:
    archive = tmp_path / f"photos{suffix}"
    if suffix == ".zip":
        with zipfile.ZipFile(archive, "w") as zf:
            for p in sorted((generated / "daisy").iterdir())[:5]:
                zf.write(p, f"flower_photos/daisy/{p.name}")
    else:
        _tar(archive, [], generated)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size * 2 // 3])
    before = tree(tmp_path)
    with pytest.raises(DataError, match=f"{archive}: (damaged archive|not a readable tar or zip archive)"):
        prepare(tmp_path / "out", Options(source=str(archive)), **QUIET)
    assert tree(tmp_path) == before


def test_zip_archive_with_a_wrapper_folder(generated: Path, tmp_path: Path) -> None:
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for cls in ("daisy", "dandelion"):
            for p in sorted((generated / cls).iterdir())[:5]:
                zf.write(p, f"flower_photos/{cls}/{p.name}")
        zf.writestr("__MACOSX/flower_photos/daisy/._x.jpg", b"\0\5\26\7")
    m = prepare(tmp_path / "out", Options(source=str(archive)), **QUIET).manifest
    assert m["counts"] == {"train": {"daisy": 4, "dandelion": 4}, "validation": {"daisy": 1, "dandelion": 1},
                           "total": {"train": 8, "validation": 2}}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "photos.zip"]


# --- TFRecord details ----------------------------------------------------------------------------------------

def test_small_shards_and_png_reencoding(generated: Path, tmp_path: Path) -> None:
    from PIL import Image

    src = link_photos(generated, tmp_path / "src", 10, classes=("daisy", "tulips"))
    with Image.open(sorted((generated / "roses").iterdir())[0]) as im:
        im.save(src / "daisy" / "zz_converted.png")
    m = prepare(tmp_path / "out", Options(source=str(src), tfrecord=True, max_shard_bytes=10_000, verify=False),
                **QUIET).manifest
    train_files, train_idx = tfrecord_files(tmp_path / "out", "train")
    assert len(train_files) == len(m["tfrecord"]["train"]["shards"]) > 3
    assert [s["records"] for s in m["tfrecord"]["train"]["shards"]] == [
        len(i.read_text().splitlines()) for i in train_idx]
    for split in ("train", "validation"):
        records = read_tfrecords(tmp_path / "out", split)
        assert len(records) == m["counts"]["total"][split]
        assert all(data[:2] == b"\xff\xd8" for _, data in records)  # the PNG became a JPEG
    assert sorted(label for label, _ in read_tfrecords(tmp_path / "out", "validation")) == [0, 0, 0, 1, 1]


def test_shard_ranges() -> None:
    assert shard_ranges([10] * 10, 1000) == [(0, 10)]
    assert shard_ranges([10] * 10, 25) == [(0, 3), (3, 5), (5, 8), (8, 10)]
    assert shard_ranges([100, 1, 1, 1], 50) == [(0, 1), (1, 4)]
    assert shard_ranges([], 10) == [(0, 0)]


def test_missing_tfrecords_are_an_error_naming_the_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=f"{tmp_path / 'tfrecord'}: no train TFRecord shards"):
        tfrecord_files(tmp_path, "train")


def test_dali_reads_the_tfrecords_on_cpu(generated: Path, tmp_path: Path) -> None:
    pytest.importorskip("nvidia.dali")
    import numpy as np
    from nvidia.dali import fn, pipeline_def
    from nvidia.dali import tfrecord as tfrec

    src = link_photos(generated, tmp_path / "src", 8)
    out = prepare(tmp_path / "out", Options(source=str(src), tfrecord=True), **QUIET).out
    for split in ("train", "validation"):
        files, indexes = tfrecord_files(out, split)

        @pipeline_def(batch_size=4, num_threads=1, device_id=None)
        def pipe(files=files, indexes=indexes):
            rec = fn.readers.tfrecord(path=[str(f) for f in files], index_path=[str(i) for i in indexes],
                                      features={"image/encoded": tfrec.FixedLenFeature((), tfrec.string, ""),
                                                "image/class/label": tfrec.FixedLenFeature([1], tfrec.int64, -1),
                                                "image/height": tfrec.FixedLenFeature([1], tfrec.int64, -1)},
                                      random_shuffle=False, name="Reader")
            return fn.decoders.image(rec["image/encoded"], device="cpu"), rec["image/class/label"], rec["image/height"]

        p = pipe()
        p.build()
        n = p.epoch_size("Reader")
        seen = []
        while len(seen) < n:
            images, labels, heights = p.run()
            for i in range(len(labels)):
                assert np.array(images[i]).shape[0] == int(np.array(heights[i])[0])
                seen.append(int(np.array(labels[i])[0]) - 1)
        assert seen[:n] == [label for label, _ in read_tfrecords(out, split)]


# --- sources and CLI -----------------------------------------------------------------------------------------

def test_default_source_is_the_tutorial_download() -> None:
    source = resolve_source(None)
    assert (source.kind, source.location) == ("url", FLOWERS_URL)
    assert len(known_checksums("flowers")) == 3670


def test_cli_prints_counts_and_errors_name_the_path(generated: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    configure(parser)
    src = link_photos(generated, tmp_path / "src", 5)
    args = parser.parse_args(["flowers", "--out", str(tmp_path / "out"), "--source", str(src), "--quiet"])
    assert command(args) == 0
    printed = capsys.readouterr().out
    assert f"flowers: prepared {tmp_path / 'out'}" in printed and "total" in printed
    assert json.loads((tmp_path / "out" / MANIFEST).read_text())["counts"]["total"] == {"train": 12, "validation": 3}
    assert command(args) == 0 and "up to date, verified" in capsys.readouterr().out
    (src / "dandelion").mkdir()
    args = parser.parse_args(["flowers", "--out", str(tmp_path / "out2"), "--source", str(src), "--quiet"])
    assert command(args) == 2  # bad input
    assert f"{src / 'dandelion'}: empty class folder" in capsys.readouterr().err


def test_a_hard_link_to_a_missing_member_is_one_line_exit_2(generated: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    archive = _tar(tmp_path / "photos.tgz", [_info("flower_photos/roses/h.jpg", type=tarfile.LNKTYPE,
                                                   linkname="flower_photos/roses/missing.jpg")], generated)
    parser = argparse.ArgumentParser()
    configure(parser)
    before = tree(tmp_path)
    assert command(parser.parse_args(["flowers", "--out", str(tmp_path / "out"), "--source", str(archive),
                                      "--quiet"])) == 2
    err = capsys.readouterr().err
    assert err == (f"harness data prepare: error: {archive}: refusing member 'flower_photos/roses/h.jpg': hard link "
                   "to 'flower_photos/roses/missing.jpg', which is not a file earlier in the archive\n")
    assert tree(tmp_path) == before


def test_member_names_with_terminal_escapes_are_printed_escaped(generated: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    jpeg = first_photo(generated, "roses").read_bytes()
    hostile = [_info(f"flower_photos/\x1b[2Jdaisy\nfake/{n}.jpg", jpeg) for n in range(2)]
    hostile.append(_info("flower_photos/roses/\x1b[31mred\u202e\nline.jpg", b"not a jpeg"))
    archive = _tar(tmp_path / "photos.tgz", hostile, generated)
    parser = argparse.ArgumentParser()
    configure(parser)
    args = ["flowers", "--out", str(tmp_path / "out"), "--source", str(archive), "--quiet", "--no-verify"]
    assert command(parser.parse_args(args)) == 0
    printed = capsys.readouterr().out
    assert "\x1b" not in printed and "\u202e" not in printed
    assert "\n  \\x1b[2Jdaisy\\nfake " in printed  # the class row
    assert "excluded roses/\\x1b[31mred\\u202e\\nline.jpg: not an image" in printed
    assert all(line.startswith(("flowers: ", "  ")) for line in printed.splitlines())  # no line a name broke
    # An error naming such a member is escaped too.
    assert command(parser.parse_args([*args[:4], str(tmp_path / "absent\x1b[2J.tgz"), "--quiet"])) == 2
    assert capsys.readouterr().err.endswith("absent\\x1b[2J.tgz: source does not exist\n")
