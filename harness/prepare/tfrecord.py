"""TFRecord shards and DALI index files in the imagenet-tools layout, without TensorFlow.

Shards are ``ROOT/tfrecord/{split}-{i:05d}-of-{n:05d}`` with the DALI index beside each as
``...-of-{n:05d}.idx`` (one ``offset size`` line per record, as DALI's ``tfrecord2idx``
writes). Records hold the original JPEG bytes under ``image/encoded`` and the 1-based label
(sorted class index + 1, as imagenet-tools) under ``image/class/label``. Training records are
written in a seeded shuffled order so that a reader's shuffle buffer sees every class.
Needs the ``tfrecord`` package (``pip install harness[data]``), imported lazily.
"""

from __future__ import annotations

import io
import itertools
import math
import random
import re
from pathlib import Path
from typing import Any

from harness.datasets import DataError, Dataset, Sample

TFRECORD_DIR = "tfrecord"
MAX_SHARD_BYTES = 64 << 20
#: Feature keys and the ``tfrecord`` package's type names, for readers (DALI users map them).
FEATURES = {
    "image/encoded": "byte",
    "image/class/label": "int",
    "image/class/text": "byte",
    "image/filename": "byte",
    "image/format": "byte",
    "image/height": "int",
    "image/width": "int",
    "image/channels": "int",
    "image/colorspace": "byte",
}


def shard_name(split: str, i: int, n: int) -> str:
    return f"{split}-{i:05d}-of-{n:05d}"


def write_tfrecords(dataset: Dataset, out: Path, max_shard_bytes: int = MAX_SHARD_BYTES, seed: int = 0) -> dict:
    """Write every split of ``dataset`` as shards + index files under ``out/tfrecord``.

    Returns, per split, the record count and each shard's file, index, records and bytes
    (paths relative to ``out``).
    """
    from tfrecord.tools.tfrecord2idx import create_index
    from tfrecord.writer import TFRecordWriter

    folder = Path(out) / TFRECORD_DIR
    folder.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {}
    for split, samples in dataset.splits.items():
        ordered = list(samples)
        if split == "train":
            random.Random(seed).shuffle(ordered)
        ranges = shard_ranges([s.path.stat().st_size for s in ordered], max_shard_bytes)
        shards = []
        for i, (lo, hi) in enumerate(ranges):
            path = folder / shard_name(split, i, len(ranges))
            writer = TFRecordWriter(str(path))
            try:
                for sample in ordered[lo:hi]:
                    writer.write(example(sample, dataset.classes))
            finally:
                writer.close()
            index = path.with_name(path.name + ".idx")
            create_index(str(path), str(index))
            if _index_records(index) != hi - lo:
                raise DataError(f"{index}: index lists {_index_records(index)} records, {hi - lo} were written")
            shards.append({"file": path.relative_to(out).as_posix(), "index": index.relative_to(out).as_posix(),
                           "records": hi - lo, "bytes": path.stat().st_size})
        summary[split] = {"records": len(ordered), "shards": shards}
    return summary


def shard_ranges(sizes: list[int], max_shard_bytes: int) -> list[tuple[int, int]]:
    """Contiguous ``[lo, hi)`` record ranges of about equal bytes, ``ceil(total / max)`` of them (at least 1)."""
    total = sum(sizes)
    n = max(1, min(len(sizes), math.ceil(total / max_shard_bytes))) if sizes else 1
    bounds, acc, k = [0], 0, 1
    for i, size in enumerate(sizes):
        acc += size
        if k < n and acc >= total * k / n:
            bounds.append(i + 1)
            while k < n and acc >= total * k / n:  # a large record may pass several marks
                k += 1
    bounds.append(len(sizes))
    return [(lo, hi) for lo, hi in itertools.pairwise(bounds) if hi > lo] or [(0, 0)]


def example(sample: Sample, classes: list[str]) -> dict[str, tuple[Any, str]]:
    """One record's features; non-JPEG or non-RGB photos are re-encoded as RGB JPEG (as imagenet-tools)."""
    from PIL import Image

    data = sample.path.read_bytes()
    with Image.open(io.BytesIO(data)) as im:
        width, height = im.size
        if im.format != "JPEG" or im.mode != "RGB":
            buf = io.BytesIO()
            im.convert("RGB").save(buf, format="JPEG", quality=95)
            data = buf.getvalue()
    return {
        "image/encoded": (data, "byte"),
        "image/class/label": (sample.label + 1, "int"),
        "image/class/text": (classes[sample.label].encode(), "byte"),
        "image/filename": (sample.path.name.encode(), "byte"),
        "image/format": (b"JPEG", "byte"),
        "image/height": (height, "int"),
        "image/width": (width, "int"),
        "image/channels": (3, "int"),
        "image/colorspace": (b"RGB", "byte"),
    }


def tfrecord_files(root: Path, split: str) -> tuple[list[Path], list[Path]]:
    """The ``split``'s shards and their index files under ``root/tfrecord``, in shard order."""
    folder = Path(root) / TFRECORD_DIR
    pattern = re.compile(rf"{re.escape(split)}-(\d{{5}})-of-(\d{{5}})")
    records = sorted(p for p in folder.glob(f"{split}-*-of-*") if pattern.fullmatch(p.name)) if folder.is_dir() else []
    if not records:
        raise DataError(f"{folder}: no {split} TFRecord shards ({split}-00000-of-NNNNN); "
                        "run `harness data prepare ... --tfrecord`")
    first = pattern.fullmatch(records[0].name)
    expected = int(first.group(2)) if first else 0
    if len(records) != expected:
        raise DataError(f"{folder}: {len(records)} {split} shards found, their names say {expected}")
    indexes = [p.with_name(p.name + ".idx") for p in records]
    missing = [p for p in indexes if not p.is_file()]
    if missing:
        raise DataError(f"{missing[0]}: DALI index file missing")
    return records, indexes


def read_tfrecords(root: Path, split: str) -> list[tuple[int, bytes]]:
    """Every record of ``split`` in file order as ``(0-based label, encoded image bytes)``."""
    from tfrecord.reader import tfrecord_loader

    out = []
    for path in tfrecord_files(root, split)[0]:
        for rec in tfrecord_loader(str(path), None, {"image/encoded": "byte", "image/class/label": "int"}):
            out.append((int(rec["image/class/label"][0]) - 1, bytes(rec["image/encoded"])))
    return out


def _index_records(index: Path) -> int:
    return sum(1 for line in index.read_text().splitlines() if line.strip())
